"""Dates of a table: reading a date column and repairing the time line it gives (docs/inputs.md
section 3).

`parse_dates` reads text dates (year-first as such; month- or day-first, whichever reads every row,
and an error when both do with different dates), number dates (epoch seconds or milliseconds by
their size, YYYYMMDD) and dates with UTC offsets (as the local clock they were written in).
`clean_times` sorts the rows, keeps the first row of a repeated timestamp and adds the missing steps
of a regular step as missing values, one note line per repair. Used by wide tables
(dil.runtime.inputs.table), long tables (long_table) and the library's histories (histories).
"""

from __future__ import annotations

import re
import warnings

import numpy as np
import pandas as pd

from dil.runtime.inputs.errors import DataError

# A regular step must explain at least this share of the gaps between consecutive timestamps, and
# reindexing may add at most this many rows per existing row; otherwise the timestamps stay as given.
_MIN_STEP_SHARE = 0.5
_MAX_REINDEX_GROWTH = 4.0
# Year first (2016-07-13, 2016/07/13, 20160713, with or without a time): never day-first.
_YEAR_FIRST = re.compile(r"^\s*\d{4}[-/.]?\d{1,2}[-/.]?\d{1,2}(?:\D|$)")
_DATE_OPTIONS = "pass --dayfirst, --monthfirst or --date-format (e.g. %d.%m.%Y %H:%M)"


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


def offset_text(offset: pd.Timedelta) -> str:
    minutes = int(offset / pd.Timedelta("1min"))
    sign = "-" if minutes < 0 else "+"
    return f"UTC{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"
