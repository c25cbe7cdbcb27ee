"""The quantile grid used for every forecast and every CRPS figure (DESIGN section 11)."""

from __future__ import annotations

import numpy as np

# 19 levels 0.05, 0.10, ..., 0.95 (GluonTS convention).
QUANTILE_LEVELS = np.round(np.arange(1, 20, dtype=np.float64) * 0.05, 2)


def quantile_column(level: float) -> str:
    """Output column name of a quantile level: 0.05 -> 'q05', 0.5 -> 'q50'."""
    return f"q{int(round(level * 100)):02d}"


def sample_quantiles(samples: np.ndarray, axis: int = 1, levels: np.ndarray = QUANTILE_LEVELS) -> np.ndarray:
    """Empirical quantiles (linear interpolation, numpy's default) along `axis`.

    samples: float [G, N, H] by default (axis=1 is the sample axis).
    Returns float64 [Q, ...] with the sample axis replaced by the leading quantile axis.
    """
    return np.quantile(np.asarray(samples, dtype=np.float64), levels, axis=axis)
