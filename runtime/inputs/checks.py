"""Suspicious values of a table, reported before training (docs/inputs.md).

A sentinel (a code such as -9999 standing for "no reading") or a gross outlier sets a window's
scale and target far from the series' own range and can dominate a training run. Two signs, per
series, over its observed values:
- a sentinel: one value repeated at least SENTINEL_REPEATS times far outside the series' range;
- outliers: values far outside the range.
"Far outside" is more than FAR spreads beyond the inter-quartile range [q1, q3], the spread being
q3 - q1 (or, for a series that is mostly one value, such as rain, p99 - p1, else its standard
deviation). The report is one line per series; nothing is changed: --missing-value V reads V as
missing.
"""

from __future__ import annotations

import numpy as np

FAR = 20.0
SENTINEL_REPEATS = 3


def _spread(x: np.ndarray, q1: float, q3: float) -> float:
    if q3 > q1:
        return q3 - q1
    p1, p99 = np.percentile(x, [1, 99])
    return float(p99 - p1) if p99 > p1 else float(np.std(x))


def suspicious_values(values: np.ndarray, names, source: str) -> list[str]:
    """One warning line per series with a sentinel-like repeated value or far outliers.

    values: float [T, C], NaN = missing; names: the C series names."""
    lines = []
    for j, name in enumerate(names):
        x = values[:, j]
        x = x[~np.isnan(x)]
        if x.size < 10:
            continue
        q1, q3 = np.percentile(x, [25, 75])
        spread = _spread(x, q1, q3)
        if spread <= 0:
            continue
        low, high = q1 - FAR * spread, q3 + FAR * spread
        far = (x < low) | (x > high)
        if not far.any():
            continue
        vals, counts = np.unique(x[far], return_counts=True)
        repeated = counts >= SENTINEL_REPEATS
        parts = []
        if repeated.any():
            top = np.argsort(-counts[repeated])[:3]
            shown = ", ".join(f"{vals[repeated][i]:g} ({counts[repeated][i]} times)" for i in top)
            parts.append(f"repeats {shown}, far outside its range (a code for a missing reading? --missing-value "
                         f"{vals[repeated][top[0]]:g} reads it as missing)")
        single = int(far.sum() - counts[repeated].sum())
        if single:
            worst = x[far][np.argmax(np.abs(x[far] - (q1 + q3) / 2))]
            parts.append(f"has {single} value{'s' if single > 1 else ''} far outside its range (most extreme {worst:g})")
        lines.append(f"warning: {source}: series {name!r} {'; '.join(parts)}; its inter-quartile range is "
                     f"[{q1:g}, {q3:g}]")
    return lines
