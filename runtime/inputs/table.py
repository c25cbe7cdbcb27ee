"""Tables of time series: rows are time steps, columns are series (the input of dil-run and dil-train).

`load_table` reads .csv / .csv.gz / .txt / .txt.gz (comma separated; .txt files have no header)
and .parquet into a `SeriesTable` of float64 values with NaN = missing. With a date column the rows
are sorted by time, duplicate timestamps are dropped (the first row wins) and, where the timestamps
follow a regular step, the table is reindexed to the full regular range so that missing steps
become NaN rows. Nothing is ever filled with zeros. Each such repair is reported in one line of
`SeriesTable.notes` (the CLIs print them on stderr).

Dates: ISO dates (year first) are read as such; other text dates are read month-first or
day-first, whichever reads every row. When both do but disagree (every day value is at most 12,
e.g. `01/02/2016`, or a `01.07.2016`-style file shorter than 13 days) the table is refused rather
than guessed: pass `dayfirst` (--dayfirst / --monthfirst) or `date_format` (--date-format, strptime).

Covariates (`covariates=[names]`, docs/model.md section 1.4) are read raw into
`SeriesTable.covariates`, row for row with `values`: a column whose non-empty cells are all numbers
becomes float64 (empty = NaN); any other column keeps every non-empty cell as its text (pandas' NA
spellings such as "None" or "NA" are not missing here: metro's `holiday` is "None" on ordinary
days) and only an empty cell is missing. Whether such a text column is categorical or numbers with
NA words is decided by dil.runtime.inputs.features. Covariates are never forecast targets.
"""

from __future__ import annotations

import re
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from dil.runtime.inputs.errors import DataError
from dil.runtime.inputs.scaling import unscalable, unscalable_text
from dil.runtime.support.files import sha256_file

# A regular step must explain at least this share of the gaps between consecutive timestamps, and
# reindexing may add at most this many rows per existing row; otherwise the timestamps stay as given.
_MIN_STEP_SHARE = 0.5
_MAX_REINDEX_GROWTH = 4.0
# Year first (2016-07-13, 2016/07/13, 20160713, with or without a time): never day-first.
_YEAR_FIRST = re.compile(r"^\s*\d{4}[-/.]?\d{1,2}[-/.]?\d{1,2}(?:\D|$)")
_DATE_OPTIONS = "pass --dayfirst, --monthfirst or --date-format (e.g. %d.%m.%Y %H:%M)"


@dataclass
class SeriesTable:
    """A table of C series over T time steps.

    values: float64 [T, C], NaN = missing. names: the C column names.
    timestamps: datetime64[ns] [T] or None (equally spaced rows without dates).
    freq: pandas frequency alias of the rows (e.g. "h", "10min") or None when unknown/irregular.
    source: the file name. sha256: hex digest of the file's bytes.
    notes: one line per repair made while reading (duplicate timestamps dropped, rows sorted,
    missing steps added, no regular step), each starting "warning:" or "note:".
    covariates: the raw covariate columns (pandas DataFrame [T, k], float64 or text, missing =
    NaN / NA; RangeIndex 0..T-1, the same rows as `values`), or None when none were read.
    """

    values: np.ndarray
    names: list[str]
    timestamps: np.ndarray | None = None
    freq: str | None = None
    source: str = ""
    sha256: str = ""
    notes: list[str] = field(default_factory=list)
    covariates: pd.DataFrame | None = None
    # the UTC offset of the last row's date, for a table whose dates carry offsets (its timestamps are
    # then the local clock as written, docs/inputs.md section 3), else None
    utc_offset: pd.Timedelta | None = None

    @property
    def n_steps(self) -> int:
        return int(self.values.shape[0])

    @property
    def n_series(self) -> int:
        return int(self.values.shape[1])

    @property
    def observed(self) -> np.ndarray:
        """bool [T, C], True where a value is present."""
        return ~np.isnan(self.values)

    def select(self, columns) -> "SeriesTable":
        """The table restricted to `columns` (names, in the given order)."""
        index = {n: i for i, n in enumerate(self.names)}
        missing = [c for c in columns if c not in index]
        if missing:
            raise DataError(f"{self.source}: unknown column {missing[0]!r}; columns are {', '.join(self.names)}")
        cols = [index[c] for c in columns]
        return replace(self, values=self.values[:, cols], names=list(columns))

    def slice(self, start: int, end: int) -> "SeriesTable":
        """Rows [start, end) (the covariates' too, renumbered from 0)."""
        ts = None if self.timestamps is None else self.timestamps[start:end]
        cov = None if self.covariates is None else self.covariates.iloc[start:end].reset_index(drop=True)
        return replace(self, values=self.values[start:end], timestamps=ts, covariates=cov)

    def to_frame(self) -> pd.DataFrame:
        index = pd.DatetimeIndex(self.timestamps) if self.timestamps is not None else None
        return pd.DataFrame(self.values, columns=self.names, index=index)


def _kind(path: Path) -> str:
    name = path.name.lower()
    for suffix, kind in ((".parquet", "parquet"), (".csv.gz", "csv"), (".csv", "csv"), (".txt.gz", "txt"), (".txt", "txt")):
        if name.endswith(suffix):
            return kind
    raise DataError(f"{path.name}: unsupported file type (use .csv, .csv.gz, .txt, .txt.gz or .parquet)")


_DECIMAL_COMMA = re.compile(r"^\s*-?\d+,\d+\s*$")


def csv_dialect(path: Path) -> dict:
    """read_csv's sep and decimal for a CSV file, from its first lines: ";"-separated when its first
    line has more semicolons than commas, and then decimal commas when a cell reads like "3,14"
    (European spreadsheets write both); otherwise "," and ".". (A comma-separated file cannot use
    decimal commas.)"""
    try:
        import gzip

        opener = gzip.open if path.name.lower().endswith(".gz") else open
        with opener(path, "rt", encoding="utf-8", errors="replace") as f:
            lines = [f.readline() for _ in range(20)]
    except OSError:  # reported by the real read
        return {"sep": ",", "decimal": "."}
    first = lines[0]
    if first.count(";") <= first.count(","):
        return {"sep": ",", "decimal": "."}
    cells = [c for line in lines[1:] for c in line.rstrip("\n").split(";")]
    return {"sep": ";", "decimal": "," if any(_DECIMAL_COMMA.match(c) for c in cells) else "."}


def dialect_note(path: Path, dialect: dict) -> list[str]:
    """The note saying that a file was read as ";"-separated (with decimal commas)."""
    if dialect["sep"] == ",":
        return []
    commas = " with decimal commas" if dialect["decimal"] == "," else ""
    return [f"note: {path.name}: read as a ';'-separated table{commas}"]


def _first_line_is_numeric(path: Path, dialect: dict | None = None) -> bool:
    """True when the first CSV row parses as numbers (a headerless table)."""
    try:
        head = pd.read_csv(path, header=None, nrows=1, dtype=str, sep=(dialect or {}).get("sep", ","))
    except Exception:  # noqa: BLE001 - unreadable files are reported by the real read
        return False
    decimal = (dialect or {}).get("decimal", ".")
    cells = head.iloc[0].str.replace(",", ".", regex=False) if decimal == "," else head.iloc[0]
    return bool(pd.to_numeric(cells, errors="coerce").notna().all())


@contextmanager
def read_errors(path: Path):
    """Any failure of reading `path` (pandas and pyarrow raise many types) as one DataError line."""
    try:
        yield
    except DataError:
        raise
    except ImportError as exc:
        raise DataError(str(exc)) from None
    except pd.errors.EmptyDataError:
        raise DataError(f"{path.name}: the file has no rows") from None
    except Exception as exc:  # noqa: BLE001 - pandas/pyarrow raise many types; report one line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"{path.name}: cannot read the file ({first})") from None


def _read_frame(path: Path, names, raw: bool = False, usecols=None) -> pd.DataFrame:
    """The file as a DataFrame; raw: CSV cells as text, with no NA spelling recognised (the
    covariates' reading, see the module docstring). usecols: the column names to read (None: all);
    the others are never parsed, whatever they hold."""
    kind = _kind(path)
    text = dict(dtype=str, keep_default_na=False) if raw else {}
    with read_errors(path):
        if kind == "parquet":
            from dil.runtime.support.deps import require

            require("pyarrow", "parquet")
            return pd.read_parquet(path, columns=None if usecols is None else list(usecols))
        dialect = csv_dialect(path) if kind == "csv" else {"sep": ",", "decimal": "."}
        headerless = kind == "txt" or names is not None or _first_line_is_numeric(path, dialect)
        if headerless:
            frame = pd.read_csv(path, header=None, **text, **dialect)
            frame.columns = list(names) if names is not None else [str(i) for i in range(frame.shape[1])]
            return frame if usecols is None else frame[list(usecols)]
        if usecols is not None:
            wanted = set(usecols)
            frame = pd.read_csv(path, usecols=lambda c: str(c) in wanted, **text, **dialect)
            return frame
        return pd.read_csv(path, **text, **dialect)


def table_columns(path) -> list[str]:
    """The column names load_table sees in a table file, read from its header alone (a CSV's first
    row, a Parquet file's schema): a CLI can pick a default column before reading a large file.
    Raises DataError (one line) as load_table does for a missing, unsupported or unreadable file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    kind = _kind(path)
    with read_errors(path):
        if kind == "parquet":
            from dil.runtime.support.deps import require

            require("pyarrow", "parquet")
            import pyarrow.parquet as pq

            schema = pq.read_schema(path)
            index = (schema.pandas_metadata or {}).get("index_columns", [])  # restored as the index by pandas
            return [str(n) for n in schema.names if n not in index]
        dialect = csv_dialect(path) if kind == "csv" else {"sep": ",", "decimal": "."}
        if kind == "txt" or _first_line_is_numeric(path, dialect):
            return [str(i) for i in range(pd.read_csv(path, header=None, nrows=1, sep=dialect["sep"]).shape[1])]
        return [str(c) for c in pd.read_csv(path, nrows=0, sep=dialect["sep"]).columns]


def covariate_column(s: pd.Series, name: str, source: str) -> pd.Series:
    """One raw covariate column (file order): float64 (NaN = missing) when every non-empty cell is a
    number, else text ("string" dtype, NA = missing: an empty or blank cell) keeping every other
    cell as written."""
    if pd.api.types.is_bool_dtype(s) or pd.api.types.is_numeric_dtype(s):
        x = s.to_numpy(dtype=np.float64, na_value=np.nan)
    else:
        text = s.astype("string")
        empty = text.isna() | (text.str.strip() == "")
        parsed = pd.to_numeric(text[~empty].str.strip(), errors="coerce")
        if parsed.isna().any() or not len(parsed):
            return text.mask(empty).reset_index(drop=True)
        x = np.full(len(s), np.nan)
        x[np.flatnonzero(~empty.to_numpy())] = parsed.to_numpy(dtype=np.float64)
    inf = np.isinf(x)
    if inf.any():
        raise DataError(f"{source}: covariate {name!r} has an infinite value at data row {int(np.argmax(inf)) + 1}")
    return pd.Series(x, name=name)


def _covariates(path: Path, frame: pd.DataFrame, names, covariates, source: str) -> pd.DataFrame:
    """The covariate columns [T, k] in file order, read raw (see covariate_column)."""
    raw = frame if _kind(path) == "parquet" else _read_frame(path, names, raw=True, usecols=list(covariates))
    raw.columns = [str(c) for c in raw.columns]
    return pd.DataFrame({c: covariate_column(raw[c], c, source) for c in covariates})


def _numeric_column(frame: pd.DataFrame, col: str, source: str, explicit: bool) -> np.ndarray | None:
    """The column as float64, None for a text column when not asked for explicitly."""
    s = frame[col]
    if pd.api.types.is_bool_dtype(s):
        return s.to_numpy(dtype=np.float64) if explicit else None
    if pd.api.types.is_numeric_dtype(s):
        return s.to_numpy(dtype=np.float64, na_value=np.nan)
    parsed = pd.to_numeric(s, errors="coerce")
    bad = parsed.isna() & s.notna()
    # Mostly numbers with a few stray strings: a broken numeric column, not a text column.
    mostly_numeric = parsed.notna().sum() >= max(1, 0.5 * s.notna().sum())
    if explicit or mostly_numeric:
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise DataError(
                f"{source}: column {col!r} is not numeric (data row {row + 1}: {str(s.iloc[row])!r})"
            )
        return parsed.to_numpy(dtype=np.float64, na_value=np.nan)
    return None


def _to_datetime(raw: pd.Series, **how) -> pd.Series:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pandas' format-inference chatter; failures come back as NaT
        return pd.to_datetime(raw, errors="coerce", utc=True, **how)


def _text_dates(raw: pd.Series, col: str, source: str, dayfirst: bool | None) -> pd.Series:
    """Text dates read year-first, or month-/day-first as `dayfirst` says; with dayfirst None,
    whichever reads every row, and DataError when both do with different dates."""
    present = raw.dropna().astype(str)
    if len(present) and present.str.match(_YEAR_FIRST).all():
        return _to_datetime(raw, dayfirst=False)
    if dayfirst is not None:
        return _to_datetime(raw, dayfirst=dayfirst)
    month, day = _to_datetime(raw, dayfirst=False), _to_datetime(raw, dayfirst=True)
    month_ok, day_ok = month.notna().all(), day.notna().all()
    if month_ok and day_ok:
        differ = (month != day).to_numpy()
        if differ.any():
            i = int(np.flatnonzero(differ)[0])
            raise DataError(
                f"{source}: the dates of column {col!r} read both month-first and day-first "
                f"({raw.iloc[i]!r} is {month.iloc[i]:%Y-%m-%d} or {day.iloc[i]:%Y-%m-%d}); {_DATE_OPTIONS}"
            )
        return month
    return day if day_ok or day.notna().sum() > month.notna().sum() else month


# Number dates: epoch seconds or milliseconds by their size (1973..2286 either way), and 8-digit
# integers 19000101..22001231 as YYYYMMDD; any other number is refused rather than read as nanoseconds.
_EPOCH_UNITS = (("s", 1e8, 1e10), ("ms", 1e11, 1e13))


def _number_dates(raw: pd.Series, col: str, source: str) -> pd.Series:
    x = pd.to_numeric(raw, errors="coerce")
    present = x.dropna()
    if not len(present):
        return _to_datetime(raw)
    whole = bool((present == present.round()).all())
    if whole and present.between(19000101, 22001231).all():
        return _to_datetime(present.astype("int64").astype(str).reindex(raw.index), format="%Y%m%d")
    for unit, low, high in _EPOCH_UNITS:
        if present.abs().between(low, high).all():
            return _to_datetime(x, unit=unit)
    raise DataError(f"{source}: column {col!r} holds numbers that are neither epoch seconds nor milliseconds nor "
                    f"YYYYMMDD dates (first {present.iloc[0]!r}): pass --date-format (%s for epoch seconds)")


def parse_dates(frame: pd.DataFrame, col: str, source: str, date_format: str | None = None,
                 dayfirst: bool | None = None) -> pd.DatetimeIndex:
    """The dates of column `col`: text as the module docstring says; numbers as epoch seconds or
    milliseconds (by their size) or YYYYMMDD; date_format "%s" reads epoch seconds."""
    raw = frame[col]
    numbers = pd.api.types.is_numeric_dtype(raw) and not pd.api.types.is_bool_dtype(raw)
    if date_format == "%s":  # pandas' strptime has no %s
        parsed = _to_datetime(pd.to_numeric(raw, errors="coerce"), unit="s")
    elif date_format is not None:
        parsed = _to_datetime(raw.astype(str) if numbers else raw, format=date_format)
    elif pd.api.types.is_object_dtype(raw) or pd.api.types.is_string_dtype(raw):
        parsed = _text_dates(raw, col, source, dayfirst)
    elif numbers:
        parsed = _number_dates(raw, col, source)
    else:  # datetimes (Parquet): nothing to choose
        parsed = _to_datetime(raw)
    bad = parsed.isna()
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        how = f"--date-format {date_format!r}" if date_format is not None else "--date-format gives the format"
        raise DataError(
            f"{source}: column {col!r} has an unparseable date at data row {row + 1}: {raw.iloc[row]!r} ({how})"
        )
    utc = pd.DatetimeIndex(parsed).tz_convert(None).as_unit("ns")
    offsets = utc_offsets(raw)
    return utc if offsets is None else (utc + offsets).as_unit("ns")


_OFFSET = re.compile(r"(Z|[+-]\d{2}:?\d{2})\s*$")


def utc_offsets(raw: pd.Series):
    """The UTC offset each text date states ("...+01:00", "...+0200", "...Z"), as a TimedeltaIndex,
    or None when the column is not text or its dates state no offset. Dates with offsets are read
    as the local clock they were written in: the time features then follow the table's clock (an
    8:00 reading is hour 8), not UTC's."""
    if not (pd.api.types.is_object_dtype(raw) or pd.api.types.is_string_dtype(raw)):
        return None
    found = raw.astype(str).str.extract(_OFFSET, expand=False)
    if found.isna().any():
        return None
    text = found.str.replace("Z", "+00:00", regex=False).str.replace(r"^([+-]\d{2})(\d{2})$", r"\1:\2", regex=True)
    sign = np.where(text.str[0] == "-", -1, 1)
    minutes = text.str[1:3].astype(int) * 60 + text.str[4:6].astype(int)
    return pd.to_timedelta(sign * minutes.to_numpy(), unit="min")


def _regular_step(times: pd.DatetimeIndex) -> tuple[str | None, pd.DatetimeIndex | None]:
    """(freq alias, full regular range) for sorted unique times, or (None, None) if irregular."""
    if len(times) < 3:
        return None, None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        inferred = pd.infer_freq(times)
    if inferred is not None:  # already regular (covers calendar steps like "B" or "MS")
        return str(pd.tseries.frequencies.to_offset(inferred).freqstr), None
    diffs = np.diff(times.asi8)
    values, counts = np.unique(diffs, return_counts=True)
    step = int(values[np.argmax(counts)])
    if counts.max() < _MIN_STEP_SHARE * len(diffs) or np.any(diffs % step):
        return None, None
    n_full = (times.asi8[-1] - times.asi8[0]) // step + 1
    if n_full > _MAX_REINDEX_GROWTH * len(times):
        return None, None
    alias = pd.tseries.frequencies.to_offset(pd.Timedelta(step)).freqstr
    return alias, pd.date_range(times[0], times[-1], freq=pd.Timedelta(step))


def load_table(path, date_column=None, columns=None, *, names=None, missing_values=(), date_format=None,
               dayfirst=None, covariates=None) -> SeriesTable:
    """Read a table file into a SeriesTable (see the module docstring for the cleaning).

    date_column: name of the timestamp column, or None. columns: the target columns (None: every
    numeric column). names: column names for a headerless file. missing_values: sentinel values
    that mean "missing" (become NaN). date_format: strptime format of the date column (e.g.
    "%d.%m.%Y %H:%M"). dayfirst: True reads text dates day-first, False month-first, None decides
    from the data and refuses an ambiguous column (ISO dates are always year-first). covariates:
    names of covariate columns, read raw into SeriesTable.covariates (see the module docstring);
    they are never targets. Raises DataError with a one-line message.
    """
    path = Path(path)
    source = path.name
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    if date_column is None and (date_format is not None or dayfirst is not None):
        raise DataError(f"{source}: a date format or --dayfirst/--monthfirst needs a date column (--date-column)")
    header = list(names) if names is not None else table_columns(path)
    if columns is not None:  # only the columns the run uses are read (a huge cell elsewhere costs nothing)
        used = [c for c in header if c in {str(x) for x in [date_column, *columns, *(covariates or ())]}]
        frame = _read_frame(path, names, usecols=used if set(used) >= {str(x) for x in columns} else None)
    else:
        frame = _read_frame(path, names)
    if len(frame) == 0:
        raise DataError(f"{source}: the file has no rows")
    frame.columns = [str(c) for c in frame.columns]
    notes = dialect_note(path, csv_dialect(path)) if _kind(path) == "csv" else []
    if date_column is not None and date_column not in header:
        raise DataError(f"{source}: unknown date column {date_column!r}; columns are {', '.join(header)}")
    if columns is not None:
        columns = [str(c) for c in columns]
        for c in columns:
            if c not in header:
                raise DataError(f"{source}: unknown column {c!r}; columns are {', '.join(header)}")
            if c == date_column:
                raise DataError(f"{source}: column {c!r} is the date column, not a series")
    covariates = [str(c) for c in covariates or ()]
    for c in covariates:
        if c not in header:
            raise DataError(f"{source}: the covariate column {c!r} is missing; columns are {', '.join(header)}")
        if c == date_column:
            raise DataError(f"{source}: covariate {c!r} is the date column")
        if columns is not None and c in columns:
            raise DataError(f"{source}: column {c!r} is a covariate, not a series to forecast")
    candidates = columns if columns is not None else [c for c in header if c != date_column and c not in covariates]

    kept, arrays = [], []
    for c in candidates:
        arr = _numeric_column(frame, c, source, explicit=columns is not None)
        if arr is not None:
            kept.append(c)
            arrays.append(arr)
    if not kept:
        raise DataError(f"{source}: no numeric column to forecast")
    values = np.stack(arrays, axis=1)
    for sentinel in missing_values:
        values[values == sentinel] = np.nan
    bad = unscalable(values)
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise DataError(f"{source}: column {kept[col]!r} has {unscalable_text(values[row, col])} at data row {row + 1}")

    cov = _covariates(path, frame, names, covariates, source) if covariates else None

    timestamps, freq = None, None
    offset = None
    if date_column is not None:
        times = parse_dates(frame, date_column, source, date_format, dayfirst)
        offsets = utc_offsets(frame[date_column])
        if offsets is not None:
            offset = offsets[int(np.argmax(times.asi8))]  # the latest row's
            notes.append(f"note: {source}: the dates of column {date_column!r} state UTC offsets; the time features "
                         f"and the forecast's dates follow the table's local clock (the forecast is labelled "
                         f"{_offset_text(offset)}, the last row's offset)")
        times, values, freq, repairs, rows = clean_times(times, values, f"{source}: column {date_column!r}")
        notes += repairs
        timestamps = times.to_numpy(dtype="datetime64[ns]")
        if cov is not None:  # the same rows as the values; an added step (-1) has missing covariates
            cov = cov.reindex(rows).reset_index(drop=True)
    return SeriesTable(
        values=np.ascontiguousarray(values, dtype=np.float64),
        names=kept,
        timestamps=timestamps,
        freq=freq,
        source=source,
        sha256=sha256_file(path),
        notes=notes,
        covariates=cov,
        utc_offset=offset,
    )


def _offset_text(offset: pd.Timedelta) -> str:
    minutes = int(offset / pd.Timedelta("1min"))
    sign = "-" if minutes < 0 else "+"
    return f"UTC{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def clean_times(times: pd.DatetimeIndex, values: np.ndarray, where: str):
    """Sort by time, keep the first row of each timestamp, reindex a regular step.

    times [T] in file order, values [T, C]. Returns (times, values, freq, notes, rows) with one note
    line per repair made; rows: int64 [T'], the file row (0-based) of each returned row, -1 for an
    added missing step.
    """
    notes = []
    earlier = np.flatnonzero(np.diff(times.asi8) < 0)
    if earlier.size:
        row = int(earlier[0]) + 2  # 1-based data row of the first timestamp earlier than its predecessor
        notes.append(f"note: {where}: rows are not in time order (data row {row} goes back in time); sorted by time")
    order = np.argsort(times.asi8, kind="stable")
    times, values, rows = times[order], values[order], order.astype(np.int64)
    first = ~times.duplicated(keep="first")
    dropped = int((~first).sum())
    if dropped:
        repeated = int(times[~first].nunique())
        verb = "repeats" if dropped == 1 else "repeat"
        notes.append(f"warning: {where}: {_count(dropped, 'row')} {verb} the timestamp of an earlier row "
                     f"({_count(repeated, 'timestamp')}, first {times[~first][0]}); the first row in the file of "
                     "each timestamp is kept")
    times, values, rows = times[first], values[first], rows[first]
    freq, full = _regular_step(times)
    if full is not None and len(full) != len(times):
        pos = full.get_indexer(times)
        grid = np.full((len(full), values.shape[1]), np.nan)
        grid[pos] = values
        rows, kept = np.full(len(full), -1, dtype=np.int64), rows
        rows[pos] = kept
        notes.append(f"note: {where}: {_count(len(full) - len(times), 'missing step')} of {freq} between the first "
                     "and last timestamp added as missing values")
        times, values = full, grid
    if freq is None and len(times) >= 3:
        notes.append(f"note: {where}: the timestamps follow no regular step; the rows are used as equally "
                     "spaced steps")
    return times, values, freq, notes, rows
