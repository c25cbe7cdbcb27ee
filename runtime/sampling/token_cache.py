"""`TokenCache`: per row and horizon token, what the network last computed for it (keys/values,
x0_hat, eps, input, age); the sampler stores each call's outputs here and the controllers read it
(docs/sampler.md section 6)."""

from __future__ import annotations

import numpy as np

from dil.runtime.sampling.parametrisation import to_x0_eps
from dil.runtime.sampling.step_plan import StepPlan


def clip_x0(x0_hat: np.ndarray, x0_clip: float) -> np.ndarray:
    """The data-prediction guard (docs/sampler.md section 2): x0_hat clipped to [-x0_clip, x0_clip]
    on the standardised scale; x0_clip = 0 returns x0_hat itself (off, bit for bit).

    Why: an epsilon network's data prediction (x - sigma eps) / alpha carries the network's eps
    error times sigma / alpha, about 160 at the first step of the shipped schedule, so that a small
    eps error puts x0_hat tens of context standard deviations out; the solver then writes it into
    x and later steps follow it (benchmarks/x0_error.py). A v network's x0 error is its output
    error times sigma (parametrisation.py); the guard stays as a bound on what the sampler writes.
    """
    return np.clip(x0_hat, -x0_clip, x0_clip) if x0_clip else x0_hat


class TokenCache:
    """Per row (series g, sample n) and horizon token h, what was last computed for it.

    k, v: float32 [layers, G, N, H, D], the token's keys/values per layer (fed to denoise as
    k_hor/v_hor). x0_hat, eps, x_in: float64 [G, N, H], its data prediction, noise prediction and
    the noisy input it was computed from. age: int32 [G, N, H], steps since it was computed.
    valid: bool [G, N, H], computed at least once. x: float64 [G, N, H], the current noisy horizon
    (set by the sampler before each plan, so that controllers can read it). x0_clip: the guard of
    every x0_hat the cache forms (`clip_x0`; 0 = off). prediction: what the network outputs
    ("epsilon" or "v", the engine's config.prediction); `store` converts it with
    parametrisation.to_x0_eps.
    """

    def __init__(self, layers: int, G: int, N: int, H: int, D: int, keep_kv: bool = True, x0_clip: float = 0.0,
                 prediction: str = "epsilon"):
        self.x0_clip = float(x0_clip)
        self.prediction = prediction
        self._out = np.zeros((G, N, H))  # the network's raw outputs, scattered (computed tokens read)
        self.x = np.zeros((G, N, H))
        # keep_kv=False: the engine holds the keys/values (on its device); k, v are then None.
        self.k = np.zeros((layers, G, N, H, D), dtype=np.float32) if keep_kv else None
        self.v = np.zeros_like(self.k) if keep_kv else None
        self.x0_hat = np.zeros((G, N, H))
        self.eps = np.zeros((G, N, H))
        self.x_in = np.zeros((G, N, H))
        self.age = np.zeros((G, N, H), dtype=np.int32)
        self.valid = np.zeros((G, N, H), dtype=bool)

    @property
    def horizon(self) -> int:
        return self.x0_hat.shape[2]

    def hor_valid(self, computed: np.ndarray) -> np.ndarray:
        """float32 [G, N, H]: 1 where a cached key may be attended to (valid, not recomputed now)."""
        return (self.valid & ~computed).astype(np.float32)

    def store(self, plan: StepPlan, computed: np.ndarray, x: np.ndarray, out_sub, k_sub, v_sub,
              alpha: float, sigma: float) -> None:
        """Scatter a denoise call's outputs into the cache and refresh x0_hat and eps of computed
        tokens: (x0_hat, eps) = to_x0_eps(out, x, alpha, sigma, prediction), x0_hat then clipped to
        [-x0_clip, x0_clip] when the guard is on (eps is kept unclipped).

        x: float64 [G, N, H], the current noisy horizon; out_sub f32 [G, N, S, 1], the network's
        output (eps or v); k_sub/v_sub f32 [layers, G, N, S, D]. alpha, sigma: the step's noise level.
        """
        self.age += 1
        if plan.pos_sub.shape[2] == 0:  # nothing computed: every token reused
            return
        kv = k_sub is not None  # None: the engine scattered them on its device
        if plan.full:  # pos_sub is arange(H) in every row: outputs are already in cache order
            if kv:
                self.k, self.v = k_sub, v_sub
            self._out = out_sub[..., 0].astype(np.float64)
        else:  # flat scatter: entry (g, n, s) -> token (g, n, pos_sub[g, n, s]); padding dropped
            G, N, S = plan.pos_sub.shape
            H = self.horizon
            pos = plan.pos_sub.reshape(G * N, S)
            valid = pos < H
            dense = bool(valid.all())  # no padding entry: every output row lands somewhere
            dst = (np.arange(G * N)[:, None] * H + pos).reshape(-1) if dense else (np.arange(G * N)[:, None] * H + pos)[valid]
            src = slice(None) if dense else np.flatnonzero(valid)
            for cached, new in ((self.k, k_sub), (self.v, v_sub)) if kv else ():
                layers, D = cached.shape[0], cached.shape[-1]
                cached_rows, new_rows = cached.reshape(layers, G * N * H, D), new.reshape(layers, G * N * S, D)
                for layer in range(layers):  # row copies along axis 0: numpy's fast path
                    cached_rows[layer][dst] = new_rows[layer][src]
            self._out.reshape(-1)[dst] = out_sub.reshape(-1)[src]
        # epsilon: x0_hat = (x - sigma * eps) / alpha; v: x0_hat = alpha x - sigma v (docs/model.md 2.2).
        x0_hat, eps = to_x0_eps(self._out, x, alpha, sigma, self.prediction)
        self.eps = np.where(computed, eps, self.eps)
        self.x0_hat = np.where(computed, clip_x0(x0_hat, self.x0_clip), self.x0_hat)
        self.x_in = np.where(computed, x, self.x_in)
        self.age[computed] = 0
        self.valid |= computed
