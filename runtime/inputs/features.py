"""Per-step input features beyond the target: time features and covariates (docs/model.md section 1.4).

One source of truth for training and the runtime. A table row gets
    known features  the time features of its timestamp and its known-future covariates: they exist
                    for the horizon too, so both context and horizon tokens carry them;
    past features   its past-only covariates: context tokens only.
Time features follow GluonTS (`time_features_from_frequency_str`): each calendar field scaled to
[-0.5, 0.5], chosen by the row frequency; a table without dates has none. Numeric covariates are
standardised with the training rows' mean and standard deviation (missing -> 0, the mean);
categorical covariates are one-hot over the categories seen in training (an unseen or missing
category -> all zeros). `FeatureSpec` is what a manifest records under "features".
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

from dil.runtime.inputs.scaling import context_features


class FeatureError(ValueError):
    """Bad covariate or feature input; the message is one line naming the column, row or option."""


# name -> (calendar field of a DatetimeIndex, its largest value minus its smallest)
_CALENDAR = {
    "second_of_minute": (lambda t: t.second, 59.0),
    "minute_of_hour": (lambda t: t.minute, 59.0),
    "hour_of_day": (lambda t: t.hour, 23.0),
    "day_of_week": (lambda t: t.day_of_week, 6.0),
    "day_of_month": (lambda t: t.day - 1, 30.0),
    "day_of_year": (lambda t: t.day_of_year - 1, 365.0),
    "week_of_year": (lambda t: t.isocalendar().week.to_numpy() - 1, 52.0),
    "month_of_year": (lambda t: t.month - 1, 11.0),
}
TIME_FEATURES = tuple(_CALENDAR)

# pandas rule code (before any "-" anchor) -> the GluonTS feature set of that granularity
_SUB_DAY = ("hour_of_day", "day_of_week", "day_of_month", "day_of_year")
_DAY = ("day_of_week", "day_of_month", "day_of_year")
_MONTH = ("month_of_year",)
_BY_OFFSET = {
    "s": ("second_of_minute", "minute_of_hour") + _SUB_DAY,
    "min": ("minute_of_hour",) + _SUB_DAY,
    "h": _SUB_DAY, "bh": _SUB_DAY,
    "D": _DAY, "B": _DAY, "C": _DAY,
    "W": ("day_of_month", "week_of_year"),
    "ME": _MONTH, "MS": _MONTH, "BME": _MONTH, "BMS": _MONTH, "SME": _MONTH, "SMS": _MONTH,
    "QE": _MONTH, "QS": _MONTH, "BQE": _MONTH, "BQS": _MONTH,
    "YE": (), "YS": (), "BYE": (), "BYS": (),
}
# The same granularities under pandas < 2.2's rule codes (the project supports pandas >= 2.0).
_BY_OFFSET.update({"S": _BY_OFFSET["s"], "T": _BY_OFFSET["min"], "H": _SUB_DAY, "BH": _SUB_DAY,
                   **{code: _MONTH for code in ("M", "BM", "SM", "Q", "BQ")},
                   **{code: () for code in ("A", "Y", "AS", "YS", "BA", "BY", "BAS", "BYS")}})

# Categorical covariates with more categories than this are refused (one-hot would dominate the token).
MAX_CATEGORIES = 64


def time_feature_names(freq: str | None) -> tuple[str, ...]:
    """The time features of rows of pandas frequency `freq` ("h", "10min", "B", "W-SUN", ...): the
    GluonTS set of its granularity; () without a frequency or for sub-second steps."""
    if not freq:
        return ()
    try:
        offset = pd.tseries.frequencies.to_offset(freq)
    except ValueError:
        raise FeatureError(f"unknown row frequency {freq!r}") from None
    return _BY_OFFSET.get(offset.rule_code.split("-")[0], ())


# The cycle each calendar feature repeats over, in days, and how many cycles the training rows must
# span for a run to use it: a cycle seen once names each training position once (ETTh1: one year of
# training rows made day_of_year a row index, docs/model.md section 1.4).
CYCLE_DAYS = {"second_of_minute": 1 / 1440, "minute_of_hour": 1 / 24, "hour_of_day": 1.0, "day_of_week": 7.0,
              "day_of_month": 30.44, "day_of_year": 365.25, "week_of_year": 365.25, "month_of_year": 365.25}
MIN_CYCLES = 3


def seen_time_features(names, span_days: float) -> tuple[tuple, tuple]:
    """(kept, dropped) time feature names: kept when the training rows span at least MIN_CYCLES of
    the feature's cycle (span_days: days from the first to the last training row)."""
    kept = tuple(n for n in names if span_days >= MIN_CYCLES * CYCLE_DAYS[n])
    return kept, tuple(n for n in names if n not in kept)


def time_features(timestamps, names) -> np.ndarray:
    """float64 [T, len(names)]: each named calendar field of `timestamps` ([T] datetime64 or a
    DatetimeIndex) scaled to [-0.5, 0.5] as value / (max - min) - 0.5."""
    index = pd.DatetimeIndex(timestamps)
    out = np.empty((len(index), len(names)))
    for j, name in enumerate(names):
        if name not in _CALENDAR:
            raise FeatureError(f"unknown time feature {name!r}; known: {', '.join(TIME_FEATURES)}")
        value, span = _CALENDAR[name]
        out[:, j] = np.asarray(value(index), dtype=np.float64) / span - 0.5
    return out


@dataclass(frozen=True)
class Covariate:
    """One covariate column. kind: "numeric" (standardised by mean, std) or "categorical" (one-hot
    over `categories`). known: its future values are known when forecasting (True) or it is
    past-only (False)."""

    name: str
    kind: str
    known: bool
    mean: float = 0.0
    std: float = 1.0
    categories: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise FeatureError(f"a covariate name must be non-empty text, got {self.name!r}")
        if self.kind not in ("numeric", "categorical"):
            raise FeatureError(f"covariate {self.name!r}: kind must be numeric or categorical, got {self.kind!r}")
        if not (np.isfinite(self.mean) and np.isfinite(self.std) and self.std > 0):
            raise FeatureError(f"covariate {self.name!r}: mean and std must be finite with std > 0")
        if len(set(self.categories)) != len(self.categories):
            raise FeatureError(f"covariate {self.name!r}: repeated categories")

    @property
    def width(self) -> int:
        return len(self.categories) if self.kind == "categorical" else 1


@dataclass(frozen=True)
class FeatureSpec:
    """What a model's tokens carry beyond the target (recorded in the manifest under "features").

    freq: the row frequency the time features were derived from (None: no dates).
    time_features: names from TIME_FEATURES. covariates: known-future and past-only covariates.
    """

    freq: str | None = None
    time_features: tuple[str, ...] = ()
    covariates: tuple[Covariate, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        unknown = [n for n in self.time_features if n not in _CALENDAR]
        if unknown:
            raise FeatureError(f"unknown time feature {unknown[0]!r}; known: {', '.join(TIME_FEATURES)}")
        names = [c.name for c in self.covariates]
        if len(set(names)) != len(names):
            raise FeatureError("a covariate is listed twice")

    @property
    def known_covariates(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.covariates if c.known)

    @property
    def past_covariates(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.covariates if not c.known)

    @property
    def known_width(self) -> int:
        """Fk: time features plus known-covariate columns (one-hot widths counted)."""
        return len(self.time_features) + sum(c.width for c in self.covariates if c.known)

    @property
    def past_width(self) -> int:
        """Fp: past-only covariate columns."""
        return sum(c.width for c in self.covariates if not c.known)

    @property
    def context_width(self) -> int:
        """Fc per context step: value, observed mask, known features, past features."""
        return 2 + self.known_width + self.past_width

    @property
    def horizon_width(self) -> int:
        """Fh per horizon step: noisy value, known features."""
        return 1 + self.known_width

    def to_dict(self) -> dict:
        d = asdict(self)
        d["time_features"] = list(self.time_features)
        d["covariates"] = [{**c, "categories": list(c["categories"])} for c in d["covariates"]]
        return d

    @classmethod
    def from_dict(cls, d: dict | None) -> "FeatureSpec":
        """The inverse of to_dict; None or {} is FeatureSpec(). A malformed record (it comes from
        a manifest or a run folder: untrusted) is a one-line FeatureError."""
        if not d:
            return cls()
        try:
            unknown = set(d) - {"freq", "time_features", "covariates"}
            if unknown:
                raise FeatureError(f"unknown keys {sorted(unknown)}")
            covs = tuple(Covariate(**{**c, "categories": tuple(c.get("categories", ()))})
                         for c in d.get("covariates", ()))
            return cls(freq=d.get("freq"), time_features=tuple(d.get("time_features", ())), covariates=covs)
        except (TypeError, AttributeError, ValueError) as exc:
            raise FeatureError(f"invalid features record: {str(exc).splitlines()[0] if str(exc) else exc!r}") from None


# Text that marks a missing number (pandas' default NA strings): missing in a numeric covariate,
# but an ordinary category of a text covariate (metro's `holiday` is "None" on ordinary days).
_NA_TEXT = frozenset({"", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN",
                      "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null"})


def _is_number_dtype(col: pd.Series) -> bool:
    return pd.api.types.is_bool_dtype(col) or pd.api.types.is_numeric_dtype(col)


def _text(col: pd.Series) -> pd.Series:
    """The cells as text (pandas string dtype), NA where a cell is empty (None, NaN or blank)."""
    text = col.astype("string")
    return text.mask(text.str.strip() == "")


def _parse_numbers(col: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """(float64 [T], NaN where a cell is empty, an NA marker or not a number; bool [T], True where a
    cell holds text that is not a number)."""
    if _is_number_dtype(col):
        return col.to_numpy(dtype=np.float64, na_value=np.nan), np.zeros(len(col), dtype=bool)
    text = _text(col).str.strip()
    marker = text.isna() | text.isin(_NA_TEXT)
    parsed = pd.to_numeric(text.mask(marker), errors="coerce")
    bad = (parsed.isna() & ~marker).to_numpy(dtype=bool)
    return parsed.to_numpy(dtype=np.float64, na_value=np.nan), bad


def _numeric_values(name: str, col: pd.Series) -> np.ndarray:
    """float64 [T] of a numeric covariate (NaN = missing); FeatureError naming the first data row
    (1-based) holding text that is not a number or an infinite value."""
    x, bad = _parse_numbers(col)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise FeatureError(f"covariate {name!r} is text where numbers are expected: data row {row + 1} "
                           f"holds {col.iloc[row]!r}")
    if np.isinf(x).any():
        row = int(np.flatnonzero(np.isinf(x))[0])
        raise FeatureError(f"covariate {name!r} has an infinite value at data row {row + 1}")
    return x


def covariate_kind(name: str, col: pd.Series) -> str:
    """"numeric" or "categorical" for a raw covariate column [T] (all of its rows).

    Numeric: a number dtype, or text of which at least half the non-empty cells are numbers (the
    others must be NA markers such as "NA": a stray word among numbers is a FeatureError naming the
    first such data row, never a silent switch to categories). Categorical: any other text.
    """
    if _is_number_dtype(col):
        return "numeric"
    x, bad = _parse_numbers(col)
    numbers = int(np.isfinite(x).sum() + np.isinf(x).sum())
    if numbers == 0 or numbers < bad.sum():
        return "categorical"
    _numeric_values(name, col)  # raises on the first stray text or infinity
    return "numeric"


def fit_covariates(frame: pd.DataFrame, known, past, rows: slice) -> tuple[Covariate, ...]:
    """Covariate specs: the kind of each column from all its rows (see covariate_kind), its
    statistics from the training rows `rows` only: numeric columns their mean and population std
    (NaN ignored; std 1 when constant), text columns their sorted categories. A column without a
    value in the training rows is a FeatureError.
    frame: the raw covariate columns [T, k]; known, past: column names (known-future, past-only)."""
    out = []
    seen = set()
    for names, is_known in ((known, True), (past, False)):
        for name in names:
            if name in seen:
                raise FeatureError(f"covariate {name!r} is named twice")
            seen.add(name)
            if name not in frame.columns:
                raise FeatureError(f"covariate {name!r} is not a column; columns are "
                                   f"{', '.join(map(str, frame.columns))}")
            col = frame[name].reset_index(drop=True)
            start, stop, _ = rows.indices(len(col))
            empty = FeatureError(f"covariate {name!r} has no value in the training rows "
                                 f"(data rows {start + 1}..{stop})")
            if covariate_kind(name, col) == "numeric":
                x = _numeric_values(name, col)[rows]
                if not np.isfinite(x).any():  # nothing to learn from: a typo'd column or a wrong split
                    raise empty
                mean, std = float(np.nanmean(x)), float(np.nanstd(x))
                out.append(Covariate(name, "numeric", is_known, mean, std if std > 0 else 1.0))
                continue
            cats = tuple(sorted(_text(col.iloc[rows]).dropna().unique()))
            if not cats:
                raise empty
            if len(cats) > MAX_CATEGORIES:
                raise FeatureError(f"covariate {name!r} has {len(cats)} categories in the training rows "
                                   f"(at most {MAX_CATEGORIES}); is it text where numbers are expected?")
            out.append(Covariate(name, "categorical", is_known, categories=cats))
    return tuple(out)


@dataclass
class RowFeatures:
    """Per-row features of a table. known: float64 [T, Fk]; past: float64 [T, Fp];
    known_missing: bool [T, number of known covariates], True where a known covariate is empty."""

    known: np.ndarray
    past: np.ndarray
    known_missing: np.ndarray


def _encode(cov: Covariate, col: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """(float64 [T, width], missing bool [T]) for one covariate column."""
    if cov.kind == "numeric":
        x = _numeric_values(cov.name, col)
        missing = np.isnan(x)
        return np.where(missing, 0.0, (x - cov.mean) / cov.std)[:, None], missing
    text = _text(col)
    missing = text.isna().to_numpy(dtype=bool)
    codes = pd.Index(list(cov.categories), dtype=object).get_indexer(text.to_numpy(dtype=object, na_value=None))
    codes[missing] = -1  # -1: missing or unseen
    onehot = np.zeros((len(col), len(cov.categories)))
    hit = codes >= 0
    onehot[np.flatnonzero(hit), codes[hit]] = 1.0
    return onehot, missing


def row_features(spec: FeatureSpec, timestamps=None, covariates: pd.DataFrame | None = None,
                 rows: int | None = None) -> RowFeatures:
    """The known and past features of every row of a table (shapes in RowFeatures).

    timestamps: [T] of the rows (needed when spec has time features); covariates: the raw covariate
    columns [T, k] (needed when spec has covariates); rows: T when neither is given.
    """
    T = len(timestamps) if timestamps is not None else len(covariates) if covariates is not None else int(rows or 0)
    if timestamps is not None and covariates is not None and len(covariates) != T:
        raise FeatureError(f"{len(covariates)} covariate rows for {T} timestamps")
    if spec.time_features and timestamps is None:
        raise FeatureError("the model uses time features but the table has no dates: pass the date column")
    parts = {True: [time_features(timestamps, spec.time_features)] if spec.time_features else [], False: []}
    missing = []
    for cov in spec.covariates:
        if covariates is None or cov.name not in covariates.columns:
            raise FeatureError(f"the model was trained with covariate {cov.name!r} but the table has no such column")
        values, miss = _encode(cov, covariates[cov.name].reset_index(drop=True))
        parts[cov.known].append(values)
        if cov.known:
            missing.append(miss)
    known = np.concatenate(parts[True], axis=1) if parts[True] else np.zeros((T, 0))
    past = np.concatenate(parts[False], axis=1) if parts[False] else np.zeros((T, 0))
    known_missing = np.stack(missing, axis=1) if missing else np.zeros((T, 0), dtype=bool)
    return RowFeatures(known=known, past=past, known_missing=known_missing)


def context_inputs(z: np.ndarray, known: np.ndarray | None = None, past: np.ndarray | None = None) -> np.ndarray:
    """Network input for the context: float32 [G, L, 2 + Fk + Fp] = (value, observed, known, past).

    z: standardised context [G, L], NaN = missing (value and observed as in
    dil.runtime.inputs.scaling.context_features). known: [G, L, Fk], past: [G, L, Fp] (None: width 0).
    """
    parts = [context_features(z)]
    parts += [a.astype(np.float32) for a in (known, past) if a is not None and a.shape[-1]]
    return np.concatenate(parts, axis=-1)
