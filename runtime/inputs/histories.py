"""Per-series histories: the one internal shape of every input (docs/inputs.md).

A wide table (each column a series: dil-run, dil-eval), a long table (one row per series id and
timestamp: dil-run --id-column), a Ray block of one (dil-run --ray) and the library's DataFrame,
Series or array (Forecaster.predict) each become a list of `SeriesHistory` here; dil.runtime.inputs.rules
then turns histories into the model's windows the same way whichever entry they came from, as
GluonTS turns its dataset entries into instances.

The future rows (a model with known covariates, docs/model.md section 5.4): the rows after the
last row with an observed value are the forecast steps, whose known covariates the forecast uses.
`split_future` finds them once per table: over all columns of a wide table (its series share one
time line) and over one series' rows of a long table (each series has its own). The history keeps
the rows before them; its covariates keep every row, history then future.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from dil.runtime.inputs.errors import ForecastError


@dataclass
class SeriesHistory:
    """One series to forecast.

    id: the series id (text for a table's series, any name or non-negative int from the library);
    it keys the series' random streams (dil.runtime.sampling.rng) and labels its forecast.
    values: float64 [T], NaN = missing. timestamps: datetime64[ns] [T] or None (no dates).
    freq: pandas frequency alias of the rows, or None when unknown. covariates: the raw covariate
    columns (pandas DataFrame [T + F, k], RangeIndex; the T history rows, then F future rows) or
    None. notes: the repairs made while reading it (missing steps added, rows sorted), one line each.
    """

    id: object
    values: np.ndarray
    timestamps: np.ndarray | None = None
    freq: str | None = None
    covariates: object = None
    notes: list[str] = field(default_factory=list)


def split_future(values: np.ndarray, known_covariates: bool) -> int:
    """The number of history rows of a table whose rows are `values` float [T, C] (C = 1 for one
    long-table series): for a model with known covariates the rows after the last one with an
    observed value are future steps; otherwise (or when no value is observed) every row is history
    (trailing empty rows are then missing context values)."""
    T = values.shape[0]
    if not known_covariates:
        return T
    observed = np.flatnonzero(~np.isnan(values).all(axis=1))
    return int(observed[-1]) + 1 if observed.size else T


def future_note(source: str, n_future: int, first_future, known: tuple) -> str:
    """The note line saying which rows are the forecast steps."""
    when = f" (from {_time_text(first_future)})" if first_future is not None else ""
    return (f"note: the last {n_future} rows of {source}{when}, after the last observed value, are the forecast "
            f"steps: their known covariates ({', '.join(known)}) are used")


def trailing_note(source: str, values: np.ndarray, timestamps) -> str | None:
    """For a model without known covariates: the note saying that the table's last rows hold no
    observed value (they stay missing context values and the forecast starts after them), or None."""
    observed = np.flatnonzero(~np.isnan(values).all(axis=1))
    empty = values.shape[0] - (int(observed[-1]) + 1 if observed.size else 0)
    if not empty or not observed.size:
        return None
    when = f" (from {_time_text(timestamps[-empty])})" if timestamps is not None else ""
    return (f"note: the last {empty} row{'s' if empty > 1 else ''} of {source}{when} hold no observed value: they are "
            "missing values of the context, and the forecast starts after them")


def _time_text(t) -> str:
    import pandas as pd

    return str(pd.Timestamp(t))


def table_histories(table, known_covariates: tuple = ()) -> tuple[list[SeriesHistory], list[str]]:
    """(one SeriesHistory per column of a wide SeriesTable, note lines). The columns share the
    table's timestamps, freq and covariates; with known covariates the table's future rows
    (split_future over all columns) leave the histories and stay in their covariates."""
    T = table.n_steps
    end = split_future(table.values, bool(known_covariates))
    notes = []
    if end < T:
        first = table.timestamps[end] if table.timestamps is not None else None
        notes.append(future_note(table.source, T - end, first, known_covariates))
    elif not known_covariates:
        notes += [n for n in [trailing_note(table.source, table.values, table.timestamps)] if n]
    times = None if table.timestamps is None else table.timestamps[:end]
    values = table.values[:end]
    histories = [SeriesHistory(id=name, values=values[:, j], timestamps=times, freq=table.freq,
                               covariates=table.covariates)
                 for j, name in enumerate(table.names)]
    return histories, notes


def long_series_history(sid: str, values: np.ndarray, timestamps: np.ndarray, freq, covariates, notes: list,
                        known_covariates: tuple, source: str) -> SeriesHistory:
    """One long-table series (its rows sorted and reindexed: dil.runtime.inputs.long_table) as a
    SeriesHistory, its future rows split off as for a wide table of one column."""
    end = split_future(values[:, None], bool(known_covariates))
    notes = list(notes)
    if end < len(values):
        notes.append(future_note(f"{source}: series {sid!r}", len(values) - end, timestamps[end], known_covariates))
    elif not known_covariates:
        notes += [n for n in [trailing_note(f"{source}: series {sid!r}", values[:, None], timestamps)] if n]
    return SeriesHistory(id=sid, values=np.ascontiguousarray(values[:end]), timestamps=timestamps[:end], freq=freq,
                         covariates=covariates, notes=notes)


def frame_histories(history, series_ids=None, timestamps=None, freq=None, covariates=None) -> list[SeriesHistory]:
    """SeriesHistory per column of Forecaster.predict's `history`: a float array [T] or [T, C], a
    pandas DataFrame (columns = series; a DatetimeIndex gives the dates) or Series. series_ids: C
    names overriding the column names (default: the names, or 0..C-1 for an array); timestamps,
    freq: the dates [T] and their alias for an array (freq None: inferred where needed).
    covariates: the raw covariate columns, history rows then future rows (shared by all series).
    ForecastError (one line) for a non-numeric column, a bad shape or mismatched lengths."""
    values, names, times, freq = _as_table(history, series_ids, timestamps, freq)
    if times is not None and len(times) != values.shape[0]:
        raise ForecastError(f"timestamps has {len(times)} entries for {values.shape[0]} history rows")
    if times is not None:
        times, values, freq, covariates = _clean(times, values, freq, covariates)
    return [SeriesHistory(id=name, values=values[:, j], timestamps=times, freq=freq, covariates=covariates)
            for j, name in enumerate(names)]


def _clean(times, values: np.ndarray, freq, covariates):
    """The library's history under dil-run's rules for a table's dates (dil.runtime.inputs.dates
    .clean_times): rows sorted by time, a repeated timestamp's first row kept, the missing steps of a
    regular step added as missing values; each repair is a UserWarning of dil-run's note line. The
    covariates' history rows follow the same repairs (their future rows stay after them)."""
    import warnings

    import pandas as pd

    from dil.runtime.inputs.dates import clean_times

    index = pd.DatetimeIndex(times).as_unit("ns")
    T = len(index)
    cleaned, values, found, notes, rows = clean_times(index, values, "history")
    for line in notes:
        warnings.warn(line, UserWarning, stacklevel=4)
    if covariates is not None and not np.array_equal(rows, np.arange(T)):
        frame = covariates if isinstance(covariates, pd.DataFrame) else pd.DataFrame(covariates)
        frame = frame.reset_index(drop=True)
        history = frame.iloc[:T].reindex(rows).reset_index(drop=True)
        covariates = pd.concat([history, frame.iloc[T:]], ignore_index=True)
    return cleaned.to_numpy(dtype="datetime64[ns]"), np.ascontiguousarray(values), freq or found, covariates


def _as_table(history, series_ids, timestamps, freq):
    """(values float64 [T, C], names, history timestamps or None, freq or None) from any accepted input."""
    names = None
    if hasattr(history, "columns") and hasattr(history, "to_numpy"):  # pandas DataFrame
        import pandas as pd

        for c in history.columns:
            if not (pd.api.types.is_numeric_dtype(history[c]) or history[c].isna().all()):
                raise ForecastError(f"column {c!r} is not numeric")
        names = list(history.columns)
        values = history.to_numpy(dtype=np.float64, na_value=np.nan)
        if isinstance(history.index, pd.DatetimeIndex) and timestamps is None:
            timestamps, freq = history.index, freq or history.index.freqstr
    elif hasattr(history, "to_numpy") and hasattr(history, "name"):  # pandas Series
        import pandas as pd

        if not pd.api.types.is_numeric_dtype(history):
            raise ForecastError(f"series {history.name!r} is not numeric")
        names = [history.name if history.name is not None else 0]
        values = history.to_numpy(dtype=np.float64, na_value=np.nan)[:, None]
        if isinstance(history.index, pd.DatetimeIndex) and timestamps is None:
            timestamps, freq = history.index, freq or history.index.freqstr
    else:
        try:
            values = np.asarray(history, dtype=np.float64)
        except (TypeError, ValueError):
            raise ForecastError("history is not numeric (expected a float array or a DataFrame)") from None
        if values.ndim == 1:
            values = values[:, None]
        if values.ndim != 2:
            raise ForecastError(f"history must be 1-D [T] or 2-D [T, C], got shape {values.shape}")
    if series_ids is not None:
        names = list(series_ids)
        if len(names) != values.shape[1]:
            raise ForecastError(f"series_ids has {len(names)} names for {values.shape[1]} series")
    if names is None:
        names = list(range(values.shape[1]))
    return values, names, timestamps, freq
