"""Per-window scaling and the context input features (docs/model.md section 1.3).

One source of truth for training and the runtime. A window's location and scale come from the
observed values of its context; missing values (NaN) are excluded, never treated as zeros.

The scale has a floor per series (rule "context-mean-std-floor"): SCALE_FLOOR_REL times the
standard deviation of the series' observed values in the training part, recorded in the run and
the artifact (a series the model was not trained on: of the history given). Without it a context
with (almost) no variation, such as a dry spell of a rain gauge, got a scale near 1e-8 and its
targets reached 1e9 standard deviations (the weather and ETTh2 trainings diverged). 0.3 was
measured on the bundled datasets' training windows (docs/model.md section 1.3): the smallest tried
that leaves no window with a mean squared standardised target above 1e3 (0.1 left 0.08% of weather's).
"""

from __future__ import annotations

import numpy as np

# scale = max(std, MIN_SCALE_REL * mean |x|, MIN_SCALE_ABS): keeps near-constant contexts finite.
MIN_SCALE_REL = 1e-3
MIN_SCALE_ABS = 1e-8
# Scale floor of a series, relative to the standard deviation of its training values (see above).
SCALE_FLOOR_REL = 0.3
SCALING_RULE = "context-mean-std-floor"
# The rule of runs and artifacts made before the floor (no floor).
LEGACY_SCALING_RULE = "context-mean-std"


# The largest magnitude a value may have: the scaling squares deviations, and a square beyond
# float64's range (1.8e308) would make the scale infinite and the forecast -inf / NaN.
MAX_ABS_VALUE = 1e150


def unscalable(values: np.ndarray) -> np.ndarray:
    """bool, where a value is infinite or beyond MAX_ABS_VALUE (NaN is missing, not unscalable)."""
    with np.errstate(invalid="ignore"):
        return np.abs(np.asarray(values, dtype=np.float64)) > MAX_ABS_VALUE


def unscalable_text(value: float) -> str:
    """How a DataError names such a value."""
    return "an infinite value" if np.isinf(value) else f"a value too large to scale ({value:g}; at most {MAX_ABS_VALUE:g})"


class ScalingError(ValueError):
    """A window cannot be scaled (no observed value in its context)."""


def context_scale(context: np.ndarray, floor=None) -> tuple[np.ndarray, np.ndarray]:
    """Location and scale per window from the observed context values.

    context: float [..., L] on the original scale, NaN = missing. floor: None, or float [...] (or a
    scalar): the smallest scale of each window, in the series' units (series_floor).
    Returns (loc, scale), float64 [...]. Raises ScalingError if a window has no observed value.
    """
    x = np.asarray(context, dtype=np.float64)
    observed = ~np.isnan(x)
    count = observed.sum(axis=-1)
    if np.any(count == 0):
        bad = np.argwhere(count == 0)
        raise ScalingError(f"context has no observed value (window index {tuple(bad[0])})")
    xz = np.where(observed, x, 0.0)
    loc = xz.sum(axis=-1) / count
    var = (np.where(observed, x - loc[..., None], 0.0) ** 2).sum(axis=-1) / count
    mean_abs = np.abs(xz).sum(axis=-1) / count
    scale = np.maximum(np.maximum(np.sqrt(var), MIN_SCALE_REL * mean_abs), MIN_SCALE_ABS)
    if floor is not None:
        scale = np.maximum(scale, np.asarray(floor, dtype=np.float64))
    return loc, scale


def series_floor(values: np.ndarray, rel: float = SCALE_FLOOR_REL) -> np.ndarray:
    """The scale floor of each series: rel x the standard deviation of its observed values.

    values: float [T, C] (or [T]), NaN = missing. Returns float64 [C] (or a scalar); 0 for a series
    with fewer than two observed values (no floor).
    """
    x = np.asarray(values, dtype=np.float64)
    observed = ~np.isnan(x)
    count = observed.sum(axis=0)
    safe = np.maximum(count, 1)
    mean = np.where(observed, x, 0.0).sum(axis=0) / safe
    var = (np.where(observed, x - mean, 0.0) ** 2).sum(axis=0) / safe
    return np.where(count >= 2, rel * np.sqrt(var), 0.0)


def window_series(series_id) -> str:
    """The series a window id names: the text before the last "@" of "<series>@<origin row>" (the
    evaluation's window ids), else the id itself, as text."""
    text = str(series_id)
    return text.rpartition("@")[0] if "@" in text else text


def standardise(x: np.ndarray, loc: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """(x - loc) / scale with loc, scale broadcast over the last axis. NaN stays NaN."""
    return (np.asarray(x, dtype=np.float64) - loc[..., None]) / scale[..., None]


def unstandardise(z: np.ndarray, loc: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Inverse of standardise; loc/scale [G] broadcast over every trailing axis of z [G, ...]."""
    z = np.asarray(z, dtype=np.float64)
    shape = loc.shape + (1,) * (z.ndim - loc.ndim)
    return z * scale.reshape(shape) + loc.reshape(shape)


CONTEXT_FEATURES = ("value", "observed")


def context_features(z: np.ndarray) -> np.ndarray:
    """Network input for the context: float32 [..., L, 2] = (value, observed mask).

    z: standardised context [..., L], NaN = missing. A missing step has value 0 and mask 0, so the
    network can tell it from an observed 0.
    """
    observed = ~np.isnan(z)
    value = np.where(observed, z, 0.0)
    return np.stack([value, observed.astype(np.float64)], axis=-1).astype(np.float32)
