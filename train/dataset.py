"""Training and validation windows, scaled exactly as the runtime scales them.

Channel-independent: one network row is one (origin, series) window. Every window is scaled from its
own context by `dil.runtime.scaling` (the single source of truth), so training sees the inputs the
runtime will feed. Missing target steps are masked out of the loss, never treated as zeros.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dil.data.windows import gather_series, observed_counts, window_origins
from dil.runtime.scaling import context_features, context_scale, standardise


@dataclass
class WindowBatch:
    """A batch of B scaled windows.

    ctx: float32 [B, L, 2] context features (value, observed mask) on the standardised scale.
    target: float32 [B, H] standardised target with missing steps set to 0.
    mask: float32 [B, H], 1 where the target is observed (the loss weight).
    loc, scale: float64 [B] the per-window scaling (for turning predictions back).
    """

    ctx: np.ndarray
    target: np.ndarray
    mask: np.ndarray
    loc: np.ndarray
    scale: np.ndarray


class WindowSet:
    """The usable (origin, series) windows whose targets lie in rows [start, end).

    A window is usable when at least `min_observed` of its context steps are observed (a share in
    (0, 1], at least one step) and at least one target step is observed: a context with almost no
    data gives a degenerate scale, and a target with no data gives no loss.
    values: float64 [T, C] with NaN = missing.
    """

    def __init__(self, values: np.ndarray, context: int, horizon: int, start: int, end: int, min_observed: float = 0.5):
        self.values = np.asarray(values, dtype=np.float64)
        self.context, self.horizon = int(context), int(horizon)
        origins = window_origins(self.values.shape[0], self.context, self.horizon, start, end)
        if origins.size == 0:
            self.origins = self.channels = np.zeros(0, dtype=np.int64)
            return
        ctx_count, tgt_count = observed_counts(self.values, origins, self.context, self.horizon)
        need = max(1.0, min_observed * self.context)
        w, c = np.nonzero((ctx_count >= need) & (tgt_count > 0))
        self.origins, self.channels = origins[w], c.astype(np.int64)

    def __len__(self) -> int:
        return int(self.origins.size)

    def batch(self, index: np.ndarray) -> WindowBatch:
        """The windows at positions `index` (int [B]) of this set, scaled."""
        ctx, tgt = gather_series(self.values, self.origins[index], self.channels[index], self.context, self.horizon)
        loc, scale = context_scale(ctx)
        z_ctx = standardise(ctx, loc, scale)
        y = standardise(tgt, loc, scale)
        observed = ~np.isnan(y)
        return WindowBatch(
            ctx=context_features(z_ctx),
            target=np.where(observed, y, 0.0).astype(np.float32),
            mask=observed.astype(np.float32),
            loc=loc,
            scale=scale,
        )

    def sample(self, rng: np.random.Generator, batch_size: int) -> WindowBatch:
        """B windows drawn uniformly with replacement."""
        return self.batch(rng.integers(0, len(self), size=batch_size))

    def evenly_spaced(self, n: int) -> np.ndarray:
        """Positions of n windows spread over the whole set (all of them if n >= len)."""
        if n >= len(self):
            return np.arange(len(self))
        return np.unique(np.round(np.linspace(0, len(self) - 1, n)).astype(np.int64))


@dataclass
class NoiseDraw:
    """Forward-process draws for a batch: N per window.

    k: int64 [B, N] diffusion steps; eps: float32 [B, N, H] the noise;
    x: float32 [B, N, H] noisy horizon alpha_k * y + sigma_k * eps; t_feat: float32 [B, N, E].
    """

    k: np.ndarray
    eps: np.ndarray
    x: np.ndarray
    t_feat: np.ndarray


def draw_noise(rng: np.random.Generator, schedule, target: np.ndarray, n_draws: int, time_dim: int) -> NoiseDraw:
    """k ~ U{0..T-1}, eps ~ N(0, I), x_k = alpha_k y + sigma_k eps (float64, cast once at the end)."""
    from dil.runtime.sampling.schedule import diffusion_time_features

    B, H = target.shape
    k = rng.integers(0, schedule.num_steps, size=(B, n_draws))
    eps = rng.standard_normal((B, n_draws, H))
    alpha = schedule.alpha(k)[..., None]
    sigma = schedule.sigma(k)[..., None]
    x = alpha * target[:, None, :].astype(np.float64) + sigma * eps
    return NoiseDraw(
        k=k,
        eps=eps.astype(np.float32),
        x=x.astype(np.float32),
        t_feat=diffusion_time_features(k, time_dim).astype(np.float32),
    )
