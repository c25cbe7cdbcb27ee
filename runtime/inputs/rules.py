"""The input rules: from per-series histories to the model's windows (docs/inputs.md).

One module for every entry (dil-run on a wide or long table, dil-run --ray, dil-eval on a user's
file, Forecaster.predict): which date column a table's dates come from (`date_column_default`),
which values are missing (`missing_values`), which columns are forecast (`series_to_forecast`), which series cannot be forecast (`usable`: too
few rows or no observed value in the context; an error, or skipped with a warning), and what each
window feeds the model (`build_windows`: the last context_length values, the dates of the future
steps, the time features and covariates of the context and horizon rows). Errors are DataError or
ForecastError (dil.runtime.inputs.errors), one line each.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dil.runtime.inputs.errors import DataError, ForecastError
from dil.runtime.inputs.histories import SeriesHistory
from dil.runtime.inputs.window_features import FeatureInputError, WindowFeatures, future_dates, history_features

SKIP_HINT = "--skip-bad-series forecasts the others"


def name_list(names, most: int = 10) -> str:
    """Up to `most` names, comma-separated, with the total when there are more."""
    names = list(names)
    shown = ", ".join(str(n) for n in names[:most])
    return shown + (f", ... ({len(names)} in all)" if len(names) > most else "")


def date_column_default(columns, manifest, source: str) -> tuple[str | None, str | None]:
    """(date column, note line) for a table read without --date-column, given its column names:
    the column the model's training data took its dates from (the manifest's data.date_column) when
    the model uses time features and the table has it; (None, None) for a model without time
    features. A model with time features and no such column: a DataError naming the option."""
    feats = manifest.features.time_features
    if not feats:
        return None, None
    trained = (manifest.data or {}).get("date_column")
    need = f"the model uses time features ({', '.join(feats)}): pass --date-column"
    if not trained:
        raise DataError(need)
    if str(trained) not in columns:
        raise DataError(f"{need} (it was trained with {trained!r}; {source} has no such column)")
    return str(trained), f"note: dates from column {trained!r} (the model's training data)"


def missing_values(given, manifest) -> tuple[tuple, str | None]:
    """(the values read as missing, a note line or None): `given` (--missing-value) and those the
    model's training data was read with (the manifest's data.missing_values, e.g. weather's -9999),
    with a note naming the latter when they were not given."""
    given = tuple(float(v) for v in given or ())
    trained = tuple(float(v) for v in ((manifest.data or {}).get("missing_values") or ()) if float(v) not in given)
    note = None
    if trained:
        note = (f"note: reading {', '.join(f'{v:g}' for v in trained)} as missing (the model's training data was read "
                "so)")
    return given + trained, note


def table_date_column(path, manifest) -> tuple[str | None, str | None]:
    """date_column_default for a wide table file, reading its header alone."""
    from dil.runtime.inputs.table import table_columns

    return date_column_default(table_columns(path), manifest, Path(path).name)


def series_to_forecast(header, trained, source: str) -> tuple[list | None, str | None]:
    """(the columns to read as series, or None for every numeric column; a note line or None saying
    why), from a table's column names when --columns was not given: the series the model was
    trained on (`trained`, the manifest's training columns), found by name; when the table has none
    of them, every numeric column. Only the columns read are parsed (a huge cell elsewhere costs
    nothing)."""
    trained = [str(c) for c in (trained or [])]
    present = [c for c in trained if c in header]
    if present == trained and trained:
        return trained, None
    if present:
        missing = [c for c in trained if c not in header]
        return present, (f"note: forecasting {name_list(present)}, the model's training series in {source} (not "
                         f"found: {name_list(missing)}); --columns picks others")
    why = (f"the model's training series ({name_list(trained)}) are not in it" if trained
           else "the model records no training series")
    return None, f"note: forecasting every numeric column of {source}: {why}; --columns picks the series"


def usable(histories: list[SeriesHistory], context: int, skip: bool, source: str = "",
           hint: str = SKIP_HINT, whole: bool = True) -> tuple[list[SeriesHistory], str | None]:
    """(the histories that can be forecast, a warning line or None).

    A series cannot be forecast with fewer than `context` rows or with no observed value in its
    last `context` rows (the model's context). Such series are an error (ForecastError naming them;
    `hint` says how to forecast the others) unless `skip`, which drops them with a warning; when
    no series is left, an error either way (whole=False: `histories` are a part of the run's
    series, and an empty part is no error).
    """
    where = f"{source}: " if source else ""
    short = [h for h in histories if len(h.values) < context]
    empty = [h for h in histories if len(h.values) >= context and np.isnan(h.values[-context:]).all()]
    if not short and not empty:
        return histories, None
    bad_ids = {id(h) for h in short + empty}
    bad = [h.id for h in histories if id(h) in bad_ids]
    what = (f"fewer than {context} rows or no observed value in the last {context}" if short and empty else
            f"fewer than {context} rows (the model's context_length)" if short else
            f"no observed value in the last {context} rows (the model's context)")
    if skip and (len(bad) < len(histories) or not whole):
        kept = [h for h in histories if id(h) not in bad_ids]
        return kept, f"warning: skipped {len(bad)} of {len(histories)} series with {what}: {name_list(bad)}"
    if whole and len(short) == len(histories) and len({len(h.values) for h in short}) == 1:
        raise ForecastError(f"{where}history has {len(short[0].values)} rows, the model needs at least {context} "
                            "(context_length)")
    if whole and len(bad) == len(histories) and len(bad) > 1:
        raise ForecastError(f"{where}every series has {what}: nothing to forecast")
    which = f"series {bad[0]!r} has" if len(bad) == 1 else f"series {name_list([repr(b) for b in bad])} have"
    raise ForecastError(f"{where}{which} {what}" + (f"; {hint}" if hint and len(bad) < len(histories) else ""))


@dataclass
class Windows:
    """What G series feed the model.

    ids: the G series ids (random-stream keys and labels). contexts: float64 [G, L], NaN = missing.
    features: WindowFeatures (context_known [G, L, Fk], context_past [G, L, Fp], horizon_known
    [G, H, Fk]) or None for a model without features. futures: G arrays datetime64[ns] [H] of the
    future steps' times, or None for a series without dates or a regular step. histories: the G
    SeriesHistory the windows come from (a model with a scale floor takes the floor of a series it
    was not trained on from its whole history: Forecaster.scale_floors).
    """

    ids: list
    contexts: np.ndarray
    features: WindowFeatures | None
    futures: list
    histories: list | None = None

    @property
    def shared_future(self):
        """The future steps' times when every series has the same ones (a wide table), else None."""
        first = self.futures[0] if self.futures else None
        if first is None or any(f is None or not np.array_equal(f, first) for f in self.futures[1:]):
            return None
        return first


def build_windows(histories: list[SeriesHistory], spec, context: int, horizon: int,
                  name_series: bool = False) -> Windows:
    """The Windows of histories that `usable` kept (each has >= context rows).

    spec: the model's FeatureSpec. The future steps follow each history's last timestamp at its
    freq (inferred when None; dil.runtime.inputs.window_features.future_dates); the features are
    computed for the rows the model reads only (the last `context` rows and the `horizon` future
    rows), once per distinct (dates, covariates) that series share (a wide table's columns share
    theirs). name_series: prefix a feature error with the series it concerns (a long table, whose
    series have their own dates); otherwise the error is the table's. ForecastError (one line).
    """
    shared: dict = {}
    contexts, feats, futures = [], [], []
    for h in histories:
        key = (id(h.timestamps), id(h.covariates), len(h.values), h.freq)
        if key not in shared:
            try:
                shared[key] = _features(h, spec, context, horizon)
            except FeatureInputError as exc:
                raise ForecastError(f"series {h.id!r}: {exc}" if name_series else str(exc)) from None
        future, f = shared[key]
        contexts.append(h.values[len(h.values) - context:])
        futures.append(future)
        feats.append(f)
    ctx = np.stack(contexts) if contexts else np.zeros((0, context))
    features = None
    if feats and feats[0] is not None:
        features = WindowFeatures(*(np.concatenate([getattr(f, name) for f in feats]) for name in
                                    ("context_known", "context_past", "horizon_known")))
    return Windows(ids=[h.id for h in histories], contexts=ctx, features=features, futures=futures,
                   histories=list(histories))


def _features(h: SeriesHistory, spec, context: int, horizon: int):
    """(future datetime64[ns] [H] or None, WindowFeatures [1, ...] or None) of one history. Time
    features are computed for the context rows only; with covariates every row is encoded, so that
    an error names the row of the table (the encoding is per row: the window's values are the same)."""
    T = len(h.values)
    future = future_dates(spec, h.timestamps, h.freq, horizon)
    if spec.covariates:
        return future, history_features(spec, T, context, horizon, h.timestamps, future, h.covariates)
    times = None if h.timestamps is None else h.timestamps[T - context:]
    return future, history_features(spec, context, context, horizon, times, future, None)
