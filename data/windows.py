"""Chronological splits and forecast windows (row-index arithmetic, vectorised).

A window with origin o (the row of its first horizon step) has context rows [o - L, o) and target
rows [o, o + H). A split part [start, end) owns the windows whose targets lie inside it; their
context may reach back into earlier parts (it is history, not a target).
"""

from __future__ import annotations

import math

import numpy as np

from dil.data.registry import (PROBTS_CONTEXT, PROBTS_HORIZON, PROBTS_STRIDE, DatasetSpec, ProbTSSetup, Splits,
                               get_spec, probts_setup)
from dil.runtime.inputs.table import DataError


def _spec(spec_or_name) -> DatasetSpec | None:
    if spec_or_name is None or isinstance(spec_or_name, DatasetSpec):
        return spec_or_name
    return get_spec(spec_or_name)


def split_bounds(spec_or_name, T: int) -> dict[str, tuple[int, int]]:
    """Row ranges {"train": (0, a), "val": (a, b), "test": (b, c)} of a series of T rows.

    spec_or_name: a DatasetSpec, a bundled dataset name, a Splits, or None (70/10/20).
    Raises DataError when T is too short for the rule or a part would be empty.
    """
    if isinstance(spec_or_name, Splits):
        rule, name = spec_or_name, "data"
    else:
        spec = _spec(spec_or_name)
        rule, name = (spec.splits, spec.name) if spec is not None else (Splits(), "data")
    if rule.unit == "rows":
        a, b = int(rule.train), int(rule.train + rule.val)
        c = int(rule.train + rule.val + rule.test)
        if c > T:
            raise DataError(f"{name}: the split {rule.describe()} needs {c} rows, the series has {T}")
    else:
        a = int(round(T * rule.train))
        b = int(round(T * (rule.train + rule.val)))
        total = rule.train + rule.val + rule.test
        c = T if total >= 1.0 - 1e-9 else int(round(T * total))
    if not 0 < a < b < c <= T:
        raise DataError(f"{name}: {T} rows are too few to split {rule.describe()}")
    return {"train": (0, a), "val": (a, b), "test": (b, c)}


def window_origins(T: int, context: int, horizon: int, start: int = 0, end: int | None = None, stride: int = 1) -> np.ndarray:
    """Origins o, int64 [W], ascending: o - context >= 0, start <= o and o + horizon <= end.

    end defaults to T. Origins step by `stride` from the first admissible one.
    """
    if context < 1 or horizon < 1 or stride < 1:
        raise ValueError("context, horizon and stride must be >= 1")
    end = T if end is None else min(int(end), T)
    first = max(int(start), int(context))
    last = end - int(horizon)  # inclusive
    if last < first:
        return np.zeros(0, dtype=np.int64)
    return np.arange(first, last + 1, stride, dtype=np.int64)


def test_origins(spec, T: int, context: int | None = None, horizon: int | None = None, n_windows: int | None = None) -> np.ndarray:
    """The rolling test windows of a dataset, int64 [W].

    Protocol: origins from the start of the test part (or the first one with a full context), stride
    = horizon, so the targets tile the test part without overlap. n_windows: keep that many evenly
    spaced ones (first and last included), for quick evaluations. context/horizon default to the
    spec's. Raises DataError when the test part holds no window.
    """
    return split_origins(spec, T, context, horizon, n_windows, part="test")


def split_origins(spec, T: int, context: int | None = None, horizon: int | None = None, n_windows: int | None = None,
                  part: str = "test", say=None) -> np.ndarray:
    """The rolling windows of one split part ("train", "val" or "test"), int64 [W], by the protocol of
    test_origins (the validation windows the sampler defaults are chosen on: part="val"). say: a
    callable told, in one line, when n_windows asks for more origins than the part holds."""
    spec = _spec(spec)
    if spec is None:
        raise ValueError("split_origins needs a DatasetSpec or a bundled dataset name")
    context = spec.context_length if context is None else int(context)
    horizon = spec.horizon if horizon is None else int(horizon)
    start, end = split_bounds(spec, T)[part]
    origins = window_origins(T, context, horizon, start, end, stride=horizon)
    if origins.size == 0:
        raise DataError(
            f"{spec.name}: the {part} part (rows {start}..{end - 1}) holds no window of "
            f"context {context} + horizon {horizon}"
        )
    return evenly_spaced(origins, n_windows, say, lambda n: f"note: {spec.name}: the {part} part holds {n} origins "
                         f"of context {context} + horizon {horizon}")


def evenly_spaced(origins: np.ndarray, n_windows: int | None, say=None, holds=None) -> np.ndarray:
    """origins, or n_windows of them evenly spaced (first and last kept) when there are more. When
    fewer than n_windows exist, all are kept and say (if given) gets holds(count) + ", fewer than
    the N asked for: all of them are used". ValueError for n_windows < 1."""
    if n_windows is not None and n_windows > origins.size and say is not None:
        say(f"{holds(origins.size)}, fewer than the {n_windows} asked for: all of them are used")
    if n_windows is not None and n_windows < origins.size:
        if n_windows < 1:
            raise ValueError("n_windows must be >= 1")
        pick = np.unique(np.round(np.linspace(0, origins.size - 1, int(n_windows))).astype(np.int64))
        origins = origins[pick]
    return origins


test_origins.__test__ = False  # a library function whose name pytest would otherwise collect


# --- the ProbTS long-term setting (dil-eval --protocol probts, docs/probts.md) --------------------

def probts_bounds(setup: ProbTSSetup, n_rows: int) -> dict[str, tuple[int, int]]:
    """ProbTS's parts {"train": (0, a), "val": (a, b), "test": (b, c)} in rows of the raw file of n_rows
    rows (probts/data/data_utils/get_datasets.py, get_dataset_borders). Raises DataError when the
    file is too short for them."""
    if setup.ett_rows is not None:
        a, b, c = (int(x) for x in setup.ett_rows)
    else:
        num_train, num_test = int(n_rows * setup.train_ratio), int(n_rows * setup.test_ratio)
        a, b, c = num_train, n_rows - num_test, n_rows
    if not 0 < a < b < c <= n_rows:
        raise DataError(f"{setup.describe()}: {n_rows} rows are too few")
    return {"train": (0, a), "val": (a, b), "test": (b, c)}


def probts_raw_origins(setup: ProbTSSetup, n_rows: int, horizon: int = PROBTS_HORIZON,
                       stride: int = PROBTS_STRIDE) -> np.ndarray:
    """ProbTS's test origins in rows of the raw file, int64 [W]: the test part's first row b, then every
    `stride` rows, ceil((c - b - horizon) / stride) of them (probts/data/data_utils/data_utils.py,
    get_rolling_test: the i-th test series ends at b + horizon + i * stride, its last `horizon` rows
    the target). The count can leave the test part's last rows unscored (ETTh: 29 windows, the last
    target ending 96 rows before the part's end)."""
    b, c = probts_bounds(setup, n_rows)["test"]
    count = max(0, math.ceil((c - b - horizon) / stride))
    return b + stride * np.arange(count, dtype=np.int64)


def raw_timestamps(spec: DatasetSpec) -> np.ndarray | None:
    """The date column of a bundled dataset's file as it is (no sorting, de-duplication or
    reindexing): datetime64[ns] [rows], None for a file without dates."""
    if spec.date_column is None:
        return None
    import pandas as pd

    col = pd.read_csv(spec.path, usecols=[spec.date_column])[spec.date_column]
    return pd.to_datetime(col).to_numpy(dtype="datetime64[ns]")


def probts_origins(spec, table, n_windows: int | None = None, context: int = PROBTS_CONTEXT,
                   horizon: int = PROBTS_HORIZON, say=None, raw=None) -> tuple[np.ndarray, dict]:
    """The ProbTS test windows of a bundled dataset in rows of its cleaned table: (origins int64 [W], info).

    spec: the dataset's DatasetSpec (or name); table: its SeriesTable (dil.data.load_dataset).
    ProbTS's origins are rows of the raw file (probts_raw_origins); each is mapped onto the table by
    its timestamp, and its ProbTS window (the `context` rows before it and the `horizon` from it) must
    be the same rows in the table (no duplicate or gap of the file inside it), else DataError. A file
    without dates is the table row for row. n_windows: keep that many evenly spaced origins (first and
    last included), as split_origins does. raw: the file's timestamps (default: read by
    raw_timestamps). info: the raw row count, ProbTS's parts in raw and in table rows, the count.
    """
    spec = _spec(spec)
    setup = probts_setup(spec.name)
    raw_ts = raw_timestamps(spec) if raw is None else np.asarray(raw, dtype="datetime64[ns]")
    n_rows = table.n_steps if raw_ts is None else int(raw_ts.size)
    bounds = probts_bounds(setup, n_rows)
    raw_origins = probts_raw_origins(setup, n_rows, horizon)
    if raw_origins.size == 0:
        raise DataError(f"{setup.describe()}: the test part holds no window of horizon {horizon}")
    if raw_ts is None:  # the file's rows are the table's
        rows = raw_origins.copy()

        def to_table(r):
            return int(r)
    else:
        table_ts = np.asarray(table.timestamps, dtype="datetime64[ns]")

        def to_table(r):
            return np.searchsorted(table_ts, raw_ts[r])

        rows = to_table(raw_origins)
        span = np.arange(-context, horizon)
        raw_idx, tab_idx = raw_origins[:, None] + span, rows[:, None] + span
        ok = (raw_idx.min() >= 0) & (tab_idx.min() >= 0) & (tab_idx.max() < table_ts.size)
        same = ok and np.array_equal(raw_ts[raw_idx], table_ts[np.clip(tab_idx, 0, table_ts.size - 1)])
        if not same:
            raise DataError(f"{spec.name}: a ProbTS window spans a duplicate or missing row of the file; the cleaned "
                            "table cannot reproduce it")
    info = {
        "dataset": setup.probts_name,
        "rule": setup.describe(),
        "file_rows": n_rows,
        "raw_parts": {k: [int(a), int(b)] for k, (a, b) in bounds.items()},
        "test_rows": [int(to_table(bounds["test"][0])), int(to_table(bounds["test"][1] - 1)) + 1],
        "raw_first_origin": int(raw_origins[0]),
        "raw_last_origin": int(raw_origins[-1]),
        "origins_all": int(raw_origins.size),
    }
    origins = evenly_spaced(np.asarray(rows, dtype=np.int64), n_windows, say,
                            lambda n: f"note: {spec.name}: ProbTS's test part holds {n} origins")
    return origins, info


def _offsets(origins: np.ndarray, start: int, length: int) -> np.ndarray:
    return np.asarray(origins, dtype=np.int64)[:, None] + np.arange(start, start + length, dtype=np.int64)


def gather_windows(values: np.ndarray, origins, context: int, horizon: int) -> tuple[np.ndarray, np.ndarray]:
    """Every series' window at every origin: ctx float64 [W*C, L], target float64 [W*C, H].

    values: [T, C]. Row r = w * C + c (window-major, series-minor). NaN = missing.
    """
    values = np.asarray(values, dtype=np.float64)
    ctx = values[_offsets(origins, -context, context)]  # [W, L, C]
    tgt = values[_offsets(origins, 0, horizon)]  # [W, H, C]
    return ctx.transpose(0, 2, 1).reshape(-1, context), tgt.transpose(0, 2, 1).reshape(-1, horizon)


def gather_series(values: np.ndarray, origins, channels, context: int, horizon: int) -> tuple[np.ndarray, np.ndarray]:
    """One window per (origin, channel) pair: ctx float64 [W, L], target float64 [W, H]."""
    values = np.asarray(values, dtype=np.float64)
    ch = np.asarray(channels, dtype=np.int64)[:, None]
    return values[_offsets(origins, -context, context), ch], values[_offsets(origins, 0, horizon), ch]


def observed_counts(values: np.ndarray, origins, context: int, horizon: int) -> tuple[np.ndarray, np.ndarray]:
    """Observed steps per window without gathering it: (context count, target count), int64 [W, C]."""
    observed = ~np.isnan(np.asarray(values, dtype=np.float64))
    cs = np.concatenate([np.zeros((1, observed.shape[1]), np.int64), np.cumsum(observed, axis=0)])
    o = np.asarray(origins, dtype=np.int64)
    return cs[o] - cs[o - context], cs[o + horizon] - cs[o]


def usable_windows(ctx: np.ndarray, target: np.ndarray | None = None, min_context: float = 1) -> np.ndarray:
    """bool [W]: the context has >= min_context observed steps (a count, or a share when < 1) and,
    when a target is given, at least one observed target step. Others cannot be scaled or scored."""
    ctx = np.asarray(ctx)
    need = min_context * ctx.shape[-1] if 0 < min_context < 1 else max(min_context, 1)
    ok = (~np.isnan(ctx)).sum(axis=-1) >= need
    if target is not None:
        ok &= (~np.isnan(np.asarray(target))).any(axis=-1)
    return ok
