"""Tables of time series: rows are time steps, columns are series (the input of dil-run and dil-train).

`load_table` reads .csv / .csv.gz / .txt / .txt.gz (comma separated; .txt files have no header)
and .parquet into a `SeriesTable` of float64 values with NaN = missing. With a date column the rows
are sorted by time, duplicate timestamps are dropped (the first row wins) and, where the timestamps
follow a regular step, the table is reindexed to the full regular range so that missing steps
become NaN rows. Nothing is ever filled with zeros.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from dil.runtime.files import sha256_file

# A regular step must explain at least this share of the gaps between consecutive timestamps, and
# reindexing may add at most this many rows per existing row; otherwise the timestamps stay as given.
_MIN_STEP_SHARE = 0.5
_MAX_REINDEX_GROWTH = 4.0


class DataError(ValueError):
    """Bad input data. The message is one line naming the file, column or row."""


@dataclass
class SeriesTable:
    """A table of C series over T time steps.

    values: float64 [T, C], NaN = missing. names: the C column names.
    timestamps: datetime64[ns] [T] or None (equally spaced rows without dates).
    freq: pandas frequency alias of the rows (e.g. "h", "10min") or None when unknown/irregular.
    source: the file name. sha256: hex digest of the file's bytes.
    """

    values: np.ndarray
    names: list[str]
    timestamps: np.ndarray | None = None
    freq: str | None = None
    source: str = ""
    sha256: str = ""

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
        """Rows [start, end)."""
        ts = None if self.timestamps is None else self.timestamps[start:end]
        return replace(self, values=self.values[start:end], timestamps=ts)

    def to_frame(self) -> pd.DataFrame:
        index = pd.DatetimeIndex(self.timestamps) if self.timestamps is not None else None
        return pd.DataFrame(self.values, columns=self.names, index=index)


def _kind(path: Path) -> str:
    name = path.name.lower()
    for suffix, kind in ((".parquet", "parquet"), (".csv.gz", "csv"), (".csv", "csv"), (".txt.gz", "txt"), (".txt", "txt")):
        if name.endswith(suffix):
            return kind
    raise DataError(f"{path.name}: unsupported file type (use .csv, .csv.gz, .txt, .txt.gz or .parquet)")


def _first_line_is_numeric(path: Path) -> bool:
    """True when the first CSV row parses as numbers (a headerless table)."""
    try:
        head = pd.read_csv(path, header=None, nrows=1, dtype=str)
    except Exception:  # noqa: BLE001 - unreadable files are reported by the real read
        return False
    return bool(pd.to_numeric(head.iloc[0], errors="coerce").notna().all())


def _read_frame(path: Path, names) -> pd.DataFrame:
    kind = _kind(path)
    try:
        if kind == "parquet":
            from dil.runtime.deps import require

            require("pyarrow", "parquet")
            return pd.read_parquet(path)
        headerless = kind == "txt" or names is not None or _first_line_is_numeric(path)
        if headerless:
            frame = pd.read_csv(path, header=None)
            frame.columns = list(names) if names is not None else [str(i) for i in range(frame.shape[1])]
            return frame
        return pd.read_csv(path)
    except DataError:
        raise
    except ImportError as exc:
        raise DataError(str(exc)) from None
    except pd.errors.EmptyDataError:
        raise DataError(f"{path.name}: the file has no rows") from None
    except Exception as exc:  # noqa: BLE001 - pandas/pyarrow raise many types; report one line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"{path.name}: cannot read the file ({first})") from None


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


def _parse_dates(frame: pd.DataFrame, col: str, source: str) -> pd.DatetimeIndex:
    raw = frame[col]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        parsed = pd.to_datetime(raw, errors="coerce", utc=True)
    bad = parsed.isna()
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise DataError(f"{source}: column {col!r} has an unparseable date at data row {row + 1}: {raw.iloc[row]!r}")
    return pd.DatetimeIndex(parsed).tz_convert(None).as_unit("ns")


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


def load_table(path, date_column=None, columns=None, *, names=None, missing_values=()) -> SeriesTable:
    """Read a table file into a SeriesTable (see the module docstring for the cleaning).

    date_column: name of the timestamp column, or None. columns: the target columns (None: every
    numeric column). names: column names for a headerless file. missing_values: sentinel values
    that mean "missing" (become NaN). Raises DataError with a one-line message.
    """
    path = Path(path)
    source = path.name
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    frame = _read_frame(path, names)
    if len(frame) == 0:
        raise DataError(f"{source}: the file has no rows")
    header = [str(c) for c in frame.columns]
    frame.columns = header
    if date_column is not None and date_column not in header:
        raise DataError(f"{source}: unknown date column {date_column!r}; columns are {', '.join(header)}")
    if columns is not None:
        columns = [str(c) for c in columns]
        for c in columns:
            if c not in header:
                raise DataError(f"{source}: unknown column {c!r}; columns are {', '.join(header)}")
            if c == date_column:
                raise DataError(f"{source}: column {c!r} is the date column, not a series")
    candidates = columns if columns is not None else [c for c in header if c != date_column]

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
    inf = np.isinf(values)
    if inf.any():
        row, col = np.argwhere(inf)[0]
        raise DataError(f"{source}: column {kept[col]!r} has an infinite value at data row {row + 1}")

    timestamps, freq = None, None
    if date_column is not None:
        times = _parse_dates(frame, date_column, source)
        order = np.argsort(times.asi8, kind="stable")
        times, values = times[order], values[order]
        first = ~times.duplicated(keep="first")
        times, values = times[first], values[first]
        freq, full = _regular_step(times)
        if full is not None and len(full) != len(times):
            pos = full.get_indexer(times)
            grid = np.full((len(full), values.shape[1]), np.nan)
            grid[pos] = values
            times, values = full, grid
        timestamps = times.to_numpy(dtype="datetime64[ns]")
    return SeriesTable(
        values=np.ascontiguousarray(values, dtype=np.float64),
        names=kept,
        timestamps=timestamps,
        freq=freq,
        source=source,
        sha256=sha256_file(path),
    )
