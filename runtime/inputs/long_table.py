"""Long-format tables: one row per (series id, timestamp, value [, covariates]) (docs/scale-out.md).

Many-series data is stored this way (a wide table with a million columns is not). The input is a
CSV file (.csv, .csv.gz) or Parquet: a file or a folder of .parquet files (read together). A CSV
is read as text, every cell as written, so that the single-process reading and the Ray
pipeline's (dil.runtime.jobs.ray_job, which reads the same cells with pyarrow) convert the very same
strings the very same way.

Each series becomes a `SeriesHistory` through `series_history`, from its rows alone: the target
as float64 (NaN = missing: an empty cell or one of pandas' NA spellings such as "NA", "nan"), the
dates parsed as load_table parses a date column, the rows sorted by time and, where the times
follow a regular step, reindexed to the full range (missing steps become NaN rows). Two rows of
one series with the same timestamp are an error: the table does not say which one counts, and a
distributed read has no "first row in the file". Because a series' history depends on its rows
only, it is the same whichever process builds it, in whatever order the rows arrive.

Series ids are text: an id read as a number is written as Python's str() writes it (7, 7.5). The
id keys the series' random streams (dil.runtime.sampling.rng.series_key of the text), so a series of a
long table gets the same forecast as the column of that name of a wide table.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from dil.runtime.inputs.histories import SeriesHistory, long_series_history
from dil.runtime.inputs.scaling import unscalable, unscalable_text
from dil.runtime.inputs.dates import clean_times, parse_dates
from dil.runtime.inputs.table import DataError, covariate_column, read_errors

LONG_SUFFIXES = (".csv", ".csv.gz", ".parquet")
# pandas' default NA spellings: such a target cell is missing, as in a wide table's numeric column.
_NA_TEXT = frozenset(["", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN",
                      "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null"])


@dataclass(frozen=True)
class LongSpec:
    """How to read a long table: the column names, and the date options of load_table."""

    id_column: str
    date_column: str
    target_column: str
    covariates: tuple = ()
    date_format: str | None = None
    dayfirst: bool | None = None
    # the model's known covariates: with some, a series' rows after its last observed value are its
    # forecast steps (dil.runtime.inputs.histories.split_future)
    known_covariates: tuple = ()
    # target values read as missing (--missing-value)
    missing_values: tuple = ()

    @property
    def columns(self) -> list[str]:
        return [self.id_column, self.date_column, self.target_column, *self.covariates]


def long_kind(path) -> str:
    """'csv' or 'parquet' for a long table's path (a folder is a folder of Parquet files)."""
    path = Path(path)
    if path.is_dir():
        return "parquet"
    name = path.name.lower()
    for suffix in LONG_SUFFIXES:
        if name.endswith(suffix):
            return "parquet" if suffix == ".parquet" else "csv"
    raise DataError(f"{path.name}: unsupported file type for a long table (use .csv, .csv.gz, .parquet or a folder "
                    "of .parquet files)")


def long_files(path) -> list[Path]:
    """The files of a long table: the file itself, or a folder's .parquet files in name order."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"data file not found: {path}")
    if not path.is_dir():
        long_kind(path)
        return [path]
    files = sorted(p for p in path.iterdir() if p.is_file() and p.name.lower().endswith(".parquet")
                   and not p.name.startswith((".", "_")))
    if not files:
        raise DataError(f"{path}: the folder has no .parquet file")
    return files


def long_columns(path) -> list[str]:
    """The column names of a long table, from its (first file's) header alone."""
    first = long_files(path)[0]
    with read_errors(first):
        if long_kind(first) == "parquet":
            from dil.runtime.support.deps import require

            require("pyarrow", "parquet")
            import pyarrow.parquet as pq

            schema = pq.read_schema(first)
            index = (schema.pandas_metadata or {}).get("index_columns", [])
            return [str(n) for n in schema.names if n not in index]
        return [str(c) for c in pd.read_csv(first, nrows=0).columns]


def long_spec(path, id_column: str, date_column: str | None, target_column: str | None, covariates=(),
              date_format=None, dayfirst=None, known_covariates=(), missing_values=()) -> LongSpec:
    """The LongSpec of a long table, its columns checked against the header (DataError, one line).

    date_column is required (a series' rows are ordered by it); target_column defaults to the one
    column that is neither the id, the date nor a covariate.
    """
    source = Path(path).name
    header = long_columns(path)
    if date_column is None:
        raise DataError(f"{source}: a long table needs --date-column (the rows of a series are ordered by it)")
    covariates = tuple(str(c) for c in covariates or ())
    roles = {id_column: "the id column", date_column: "the date column"}
    if id_column == date_column:
        raise DataError(f"{source}: column {id_column!r} cannot be both the id and the date column")
    for c, what in ((id_column, "id"), (date_column, "date")):  # before the target's default, which needs them
        if c not in header:
            raise DataError(f"{source}: unknown {what} column {c!r}; columns are {', '.join(header)}")
    if target_column is None:
        rest = [c for c in header if c not in roles and c not in covariates]
        if len(rest) != 1:
            found = ", ".join(rest) if rest else "none"
            raise DataError(f"{source}: pass --target-column (the columns besides the id, date and covariates: "
                            f"{found})")
        target_column = rest[0]
    if target_column not in header:
        raise DataError(f"{source}: unknown target column {target_column!r}; columns are {', '.join(header)}")
    if target_column in roles:
        raise DataError(f"{source}: column {target_column!r} is {roles[target_column]}, not the target")
    for c in covariates:
        if c not in header:
            raise DataError(f"{source}: the covariate column {c!r} is missing; columns are {', '.join(header)}")
        if c in roles or c == target_column:
            raise DataError(f"{source}: covariate {c!r} is {roles.get(c, 'the target column')}")
    return LongSpec(id_column, date_column, target_column, covariates, date_format, dayfirst,
                    tuple(known_covariates), tuple(float(v) for v in missing_values))


def read_long(path, spec: LongSpec) -> pd.DataFrame:
    """The spec's columns of every row (CSV: every cell as text, as written; Parquet: as stored)."""
    frames = []
    for f in long_files(path):
        with read_errors(f):
            if long_kind(f) == "parquet":
                from dil.runtime.support.deps import require

                require("pyarrow", "parquet")
                frames.append(pd.read_parquet(f, columns=spec.columns))
            else:
                frames.append(pd.read_csv(f, usecols=spec.columns, dtype=str, keep_default_na=False))
    frame = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    if len(frame) == 0:
        raise DataError(f"{Path(path).name}: the table has no rows")
    return frame


def series_id(value, source: str) -> str:
    """A series id as text (see the module docstring); a missing id is a DataError."""
    missing = not value.strip() if isinstance(value, str) else value is None or pd.isna(value)
    if missing:
        raise DataError(f"{source}: a row has no series id")
    if isinstance(value, (np.integer, np.floating, np.bool_)):
        value = value.item()
    return str(value)


def histories(frame: pd.DataFrame, spec: LongSpec, source: str) -> list[SeriesHistory]:
    """Every series of a long table's rows, in id order (text order)."""
    ids = frame[spec.id_column]
    text = pd.Series([series_id(v, source) for v in ids.to_numpy()], index=frame.index)
    groups = frame.groupby(text.to_numpy(), sort=True)
    return [series_history(str(key), rows, spec, source) for key, rows in groups]


def _target(raw: pd.Series, sid: str, spec: LongSpec, times: pd.DatetimeIndex, source: str) -> np.ndarray:
    """float64 [T] of a series' target cells (file order)."""
    if pd.api.types.is_bool_dtype(raw) or pd.api.types.is_numeric_dtype(raw):
        values = raw.to_numpy(dtype=np.float64, na_value=np.nan)
    else:
        cells = raw.astype(object).to_numpy()
        missing = np.array([c is None or (isinstance(c, float) and np.isnan(c)) or str(c).strip() in _NA_TEXT
                            for c in cells], dtype=bool)
        values = np.full(len(cells), np.nan)
        given = pd.Series([str(c).strip() for c in cells[~missing]], dtype=object)
        parsed = pd.to_numeric(given, errors="coerce").to_numpy(dtype=np.float64)
        bad = np.isnan(parsed)
        if bad.any():
            i = int(np.flatnonzero(~missing)[np.argmax(bad)])
            raise DataError(f"{source}: series {sid!r}: column {spec.target_column!r} is not numeric "
                            f"(at {times[i]}: {cells[i]!r})")
        values[~missing] = parsed
    if spec.missing_values:
        values = np.where(np.isin(values, spec.missing_values), np.nan, values)
    bad = unscalable(values)
    if bad.any():
        i = int(np.argmax(bad))
        raise DataError(f"{source}: series {sid!r}: column {spec.target_column!r} has {unscalable_text(values[i])} at "
                        f"{times[i]}")
    return values


def series_history(sid: str, rows: pd.DataFrame, spec: LongSpec, source: str) -> SeriesHistory:
    """One series' SeriesHistory from its rows (any order; see the module docstring)."""
    where = f"{source}: series {sid!r}"
    rows = rows.reset_index(drop=True)
    times = parse_dates(rows, spec.date_column, where, spec.date_format, spec.dayfirst)
    dup = times.duplicated(keep=False)
    if dup.any():
        raise DataError(f"{where}: {int(dup.sum())} rows share a timestamp (first {times[dup][0]}); a long table "
                        "needs one row per series and timestamp")
    order = np.argsort(times.asi8, kind="stable")
    times, rows = times[order], rows.iloc[order].reset_index(drop=True)
    values = _target(rows[spec.target_column], sid, spec, times, source)
    cov = None
    if spec.covariates:
        cov = pd.DataFrame({c: covariate_column(rows[c], c, where) for c in spec.covariates})
    times, grid, freq, notes, kept = clean_times(times, values[:, None], f"{where}: column {spec.date_column!r}")
    if cov is not None:
        cov = cov.reindex(kept).reset_index(drop=True)  # an added step (-1) has missing covariates
    return long_series_history(sid, grid[:, 0], times.to_numpy(dtype="datetime64[ns]"), freq, cov, notes,
                               spec.known_covariates, source)
