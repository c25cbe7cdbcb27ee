"""Chronological splits and forecast windows (row-index arithmetic, vectorised).

A window with origin o (the row of its first horizon step) has context rows [o - L, o) and target
rows [o, o + H). A split part [start, end) owns the windows whose targets lie inside it; their
context may reach back into earlier parts (it is history, not a target).
"""

from __future__ import annotations

import numpy as np

from dil.data.registry import DatasetSpec, Splits, get_spec
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
    if n_windows is not None and n_windows > origins.size and say is not None:
        say(f"note: {spec.name}: the {part} part holds {origins.size} origins of context {context} + horizon "
            f"{horizon}, fewer than the {n_windows} asked for: all of them are used")
    if n_windows is not None and n_windows < origins.size:
        if n_windows < 1:
            raise ValueError("n_windows must be >= 1")
        pick = np.unique(np.round(np.linspace(0, origins.size - 1, int(n_windows))).astype(np.int64))
        origins = origins[pick]
    return origins


test_origins.__test__ = False  # a library function whose name pytest would otherwise collect


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
