"""Real validation inputs: context windows and targets from a checkpoint's training data.

The checkpoint's `data` record (written by training) names a bundled dataset or a user file. The
windows come from its validation part (the rows the model was not fitted on), spread evenly over
time and cycled over the series. When the data cannot be read (a user file that is not given, or
that is gone), the caller validates on random inputs only and records the reason.
"""

from __future__ import annotations

import numpy as np

CANDIDATES = 64  # evenly spaced window origins looked at before picking the usable ones


def training_windows(data: dict, context: int, horizon: int, count: int, data_path=None):
    """Up to `count` real windows of the training data.

    data: the checkpoint's data record ("dataset", "columns", "date_column", "sha256", "splits").
    data_path: the training table file, for data that is not a bundled dataset.
    Returns (windows, info): windows = (ctx float64 [W, context], target float64 [W, horizon]) on
    the original scale (NaN = missing), or None; info is the manifest's record of what was used.
    """
    from dil.data import DATASETS, DataError, load_dataset, load_table

    name = data.get("dataset")
    columns = data.get("columns")
    try:
        if data_path is not None:
            table = load_table(data_path, data.get("date_column"), columns, date_format=data.get("date_format"),
                               dayfirst=data.get("dayfirst"))
        elif name in DATASETS:
            table = load_dataset(name)
            if columns:
                table = table.select(columns)
        else:
            reason = f"training data {name or data.get('source')!r} is not a bundled dataset and no data file was given"
            return None, {"used": False, "reason": reason}
    except DataError as exc:
        return None, {"used": False, "reason": str(exc)}

    start, end, part = _validation_rows(data, name, table.n_steps)
    windows, picked = _pick_windows(table.values, start, end, context, horizon, count)
    if windows is None:
        return None, {"used": False, "reason": f"{table.source}: no window of {context} + {horizon} steps with observed context"}
    want = data.get("sha256") or None
    info = {
        "used": True,
        "dataset": name,
        "source": table.source,
        "sha256": table.sha256,
        "matches_training_data": None if want is None else want == table.sha256,
        "part": part,
        "windows": [{"origin": int(o), "column": table.names[c]} for o, c in picked],
    }
    return windows, info


def _validation_rows(data: dict, name, T: int) -> tuple[int, int, str]:
    """Row range [start, end) to draw windows from: the validation part where it is known."""
    from dil.data import DATASETS, DataError, split_bounds

    val = (data.get("splits") or {}).get("val")
    if val is not None:
        return int(val[0]), min(int(val[1]), T), "val"
    try:
        a, b = split_bounds(DATASETS.get(name), T)["val"]
        return a, b, "val"
    except DataError:
        return 0, T, "all"


def _pick_windows(values: np.ndarray, start: int, end: int, context: int, horizon: int, count: int):
    """`count` windows spread evenly over [start, end) (the whole series when that part holds none),
    the k-th from column k % C, each at the first origin from its spot on whose context is at least
    half observed. Returns ((ctx, target), [(origin, column), ...]) or (None, [])."""
    from dil.data import gather_windows, usable_windows, window_origins

    T, C = values.shape
    origins = window_origins(T, context, horizon, start, end)
    if origins.size == 0:
        origins = window_origins(T, context, horizon)
    if origins.size == 0:
        return None, []
    origins = origins[np.unique(np.linspace(0, origins.size - 1, CANDIDATES).round().astype(np.int64))]
    ctx, tgt = gather_windows(values, origins, context, horizon)  # row = origin * C + column
    ok = usable_windows(ctx, min_context=0.5).reshape(origins.size, C)
    rows = []
    for k, spot in enumerate(np.linspace(0, origins.size - 1, count).round().astype(np.int64)):
        col = k % C
        found = np.flatnonzero(np.roll(ok[:, col], -spot))  # the first usable origin from `spot` on
        if found.size:
            rows.append(((spot + found[0]) % origins.size) * C + col)
    rows = list(dict.fromkeys(rows))
    if not rows:
        return None, []
    return (ctx[rows], tgt[rows]), [(origins[r // C], r % C) for r in rows]
