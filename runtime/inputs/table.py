"""Tables of time series: rows are time steps, columns are series (the input of dil-run and dil-train).

`load_table` reads .csv / .csv.gz / .txt / .txt.gz (comma separated; .txt files have no header)
and .parquet into a `SeriesTable` of float64 values with NaN = missing. With a date column the rows
are sorted by time, duplicate timestamps are dropped (the first row wins) and, where the timestamps
follow a regular step, the table is reindexed to the full regular range so that missing steps
become NaN rows. Nothing is ever filled with zeros. Each such repair is reported in one line of
`SeriesTable.notes` (the CLIs print them on stderr).

Dates are read and repaired by dil.runtime.inputs.dates (ISO as such; other text month- or
day-first, refused when ambiguous: --dayfirst, --monthfirst or --date-format say which).

Covariates (`covariates=[names]`, docs/model.md section 1.4) are read raw into
`SeriesTable.covariates`, row for row with `values`: a column whose non-empty cells are all numbers
becomes float64 (empty = NaN); any other column keeps every non-empty cell as its text (pandas' NA
spellings such as "None" or "NA" are not missing here: metro's `holiday` is "None" on ordinary
days) and only an empty cell is missing. Whether such a text column is categorical or numbers with
NA words is decided by dil.runtime.inputs.features. Covariates are never forecast targets.
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from dil.runtime.inputs.dates import clean_times, offset_text, parse_dates, utc_offsets
from dil.runtime.inputs.errors import DataError
from dil.runtime.inputs.scaling import unscalable, unscalable_text
from dil.runtime.support.files import sha256_file



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


def _dialect(path: Path) -> dict:
    """read_csv's sep and decimal for a table file: csv_dialect's for a CSV, the defaults otherwise."""
    return csv_dialect(path) if _kind(path) == "csv" else {"sep": ",", "decimal": "."}


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


def _read_frame(path: Path, names, raw: bool = False, usecols=None, dialect: dict | None = None) -> pd.DataFrame:
    """The file as a DataFrame; raw: CSV cells as text, with no NA spelling recognised (the
    covariates' reading, see the module docstring). usecols: the column names to read (None: all);
    the others are never parsed, whatever they hold. dialect: _dialect(path), when the caller has it."""
    kind = _kind(path)
    text = dict(dtype=str, keep_default_na=False) if raw else {}
    with read_errors(path):
        if kind == "parquet":
            from dil.runtime.support.deps import require

            require("pyarrow", "parquet")
            return pd.read_parquet(path, columns=None if usecols is None else list(usecols))
        dialect = dialect or _dialect(path)
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


def table_columns(path, dialect: dict | None = None) -> list[str]:
    """The column names load_table sees in a table file, read from its header alone (a CSV's first
    row, a Parquet file's schema): a CLI can pick a default column before reading a large file.
    Raises DataError (one line) as load_table does for a missing, unsupported or unreadable file.
    dialect: _dialect(path), when the caller has it."""
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
        dialect = dialect or _dialect(path)
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


def _covariates(path: Path, frame: pd.DataFrame, names, covariates, source: str, dialect: dict) -> pd.DataFrame:
    """The covariate columns [T, k] in file order, read raw (see covariate_column)."""
    raw = frame if _kind(path) == "parquet" else _read_frame(path, names, raw=True, usecols=list(covariates),
                                                                  dialect=dialect)
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
    dialect = _dialect(path)  # sniffed once for every read of the file below
    header = list(names) if names is not None else table_columns(path, dialect)
    if columns is not None:  # only the columns the run uses are read (a huge cell elsewhere costs nothing)
        used = [c for c in header if c in {str(x) for x in [date_column, *columns, *(covariates or ())]}]
        frame = _read_frame(path, names, usecols=used if set(used) >= {str(x) for x in columns} else None,
                            dialect=dialect)
    else:
        frame = _read_frame(path, names, dialect=dialect)
    if len(frame) == 0:
        raise DataError(f"{source}: the file has no rows")
    frame.columns = [str(c) for c in frame.columns]
    notes = dialect_note(path, dialect)
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

    cov = _covariates(path, frame, names, covariates, source, dialect) if covariates else None

    timestamps, freq = None, None
    offset = None
    if date_column is not None:
        times = parse_dates(frame, date_column, source, date_format, dayfirst)
        offsets = utc_offsets(frame[date_column])
        if offsets is not None:
            offset = offsets[int(np.argmax(times.asi8))]  # the latest row's
            notes.append(f"note: {source}: the dates of column {date_column!r} state UTC offsets; the time features "
                         f"and the forecast's dates follow the table's local clock (the forecast is labelled "
                         f"{offset_text(offset)}, the last row's offset)")
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
