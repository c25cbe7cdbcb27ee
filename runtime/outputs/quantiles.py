"""The quantile grid used for every forecast and every CRPS figure (docs/model.md section 6.2)."""

from __future__ import annotations

import numpy as np

# 19 levels 0.05, 0.10, ..., 0.95 (GluonTS convention).
QUANTILE_LEVELS = np.round(np.arange(1, 20, dtype=np.float64) * 0.05, 2)


def quantile_column(level: float) -> str:
    """Output column name of a quantile level: 0.05 -> 'q05', 0.5 -> 'q50'."""
    return f"q{int(round(level * 100)):02d}"


def sample_quantiles(samples: np.ndarray, axis: int = 1, levels: np.ndarray = QUANTILE_LEVELS) -> np.ndarray:
    """Empirical quantiles along `axis`, numpy's default 'linear' method (Hyndman & Fan type 7).

    samples: float [G, N, H] by default (axis=1 is the sample axis).
    Returns float64 [Q, ...] with the sample axis replaced by the leading quantile axis.
    Sorting once and interpolating between order statistics gives np.quantile's values several
    times faster than np.quantile along a middle axis.
    """
    x = np.sort(np.moveaxis(np.asarray(samples, dtype=np.float64), axis, 0), axis=0)
    pos = np.asarray(levels, dtype=np.float64) * (x.shape[0] - 1)
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, x.shape[0] - 1)
    w = (pos - lo).reshape((-1,) + (1,) * (x.ndim - 1))
    return x[lo] + w * (x[hi] - x[lo])
