"""`TokenCache`: per row and horizon token, what the network last computed for it (keys/values,
x0_hat, eps, input, age); the sampler stores each call's outputs here and the controllers read it
(docs/sampler.md section 6)."""

from __future__ import annotations

import numpy as np

from dil.runtime.sampling.parametrisation import clip_x0, to_x0, to_x0_eps
from dil.runtime.sampling.step_plan import StepPlan


def _clip_into(a: np.ndarray, bound) -> np.ndarray:
    """clip_x0 in place on a float64 array the caller owns: what np.clip gives, bit for bit (NaN
    stays NaN), in two ufunc calls without np.clip's dispatch or a new array (control time)."""
    np.maximum(a, -bound, out=a)
    return np.minimum(a, bound, out=a)


def token_mean(a: np.ndarray, patch: int) -> np.ndarray:
    """[..., T * patch] -> [..., T]: each token's mean over its patch steps; patch 1 returns a itself."""
    return a if patch == 1 else a.reshape(a.shape[:-1] + (-1, patch)).mean(axis=-1)


class TokenCache:
    """Per row (series g, sample n) and horizon token t, what was last computed for it.

    A token is `patch` (Ph) consecutive horizon steps (the model's horizon_patch); T tokens cover the
    H = T * Ph steps. Controllers read and decide per token; the solver updates per step.

    k, v: float32 [layers, G, N, T, D], the token's keys/values per layer (fed to denoise as
    k_hor/v_hor). x0_steps, eps: float64 [G, N, H], the data and noise prediction of every step
    (what the solver reads). x0_hat, x_in, x: float64 [G, N, T], per token the mean over its steps
    of x0_steps, of the noisy input it was last computed from, and of the current noisy horizon
    (the sampler sets `x` to the step-level horizon before each plan). With Ph = 1 the token arrays
    are the step arrays themselves. age: int32 [G, N, T], steps since the token was computed. valid:
    bool [G, N, T], computed at least once. x0_clip: the guard of every x0_hat the cache forms
    (`clip_x0`; 0 = off; a per-token array for a frequency-domain model). prediction: what the network outputs ("epsilon" or "v", the engine's
    config.prediction); `store` converts it with parametrisation.to_x0_eps.

    A controller may assign `x0_hat` (core follow moves reused tokens): each token's steps then
    move by the change of its token value, so that x0_steps and x0_hat stay consistent.
    """

    def __init__(self, layers: int, G: int, N: int, T: int, D: int, keep_kv: bool = True, x0_clip: float = 0.0,
                 prediction: str = "epsilon", patch: int = 1):
        self.x0_clip = x0_clip if np.ndim(x0_clip) else float(x0_clip)
        self._clip_on = bool(np.any(x0_clip))
        self.prediction = prediction
        self.patch = int(patch)
        H = T * self.patch
        self._out = np.zeros((G, N, H))  # the network's raw outputs per step, scattered (computed tokens read)
        self._x_steps, self._x_tok = np.zeros((G, N, H)), None  # cache.x: the noisy horizon, its token means
        # keep_kv=False: the engine holds the keys/values (on its device); k, v are then None. Otherwise
        # they are allocated when first read: the plain sampler on the full-step graph never reads them.
        self._kv_shape = (layers, G, N, T, D) if keep_kv else None
        self._k = self._v = None
        self.x0_steps = np.zeros((G, N, H))  # the token means (x0_hat, x) are formed when first read
        # A full step leaves eps and x_in to be formed when first read (the plain sampler never
        # does): _pending holds (out, x, alpha, sigma) of that step.
        self._eps, self._x_in, self._pending = np.zeros((G, N, H)), np.zeros((G, N, T)), None
        self.age = np.zeros((G, N, T), dtype=np.int32)
        self.valid = np.zeros((G, N, T), dtype=bool)

    def _made(self, kv: np.ndarray | None) -> np.ndarray | None:
        """kv, or zeros of the key/value shape when it was never made (None when the engine holds them)."""
        if kv is None and self._kv_shape is not None:
            return np.zeros(self._kv_shape, dtype=np.float32)
        return kv

    @property
    def k(self) -> np.ndarray | None:
        """float32 [layers, G, N, T, D]: the keys per token (None when the engine holds them)."""
        self._k = self._made(self._k)
        return self._k

    @k.setter
    def k(self, value: np.ndarray) -> None:
        self._k = value

    @property
    def v(self) -> np.ndarray | None:
        """float32 [layers, G, N, T, D]: the values per token (None when the engine holds them)."""
        self._v = self._made(self._v)
        return self._v

    @v.setter
    def v(self, value: np.ndarray) -> None:
        self._v = value

    @property
    def eps(self) -> np.ndarray:
        """float64 [G, N, H]: the noise prediction of every step."""
        if self._pending is not None:
            self._settle()
        return self._eps

    @eps.setter
    def eps(self, value: np.ndarray) -> None:
        self._settle()
        self._eps = value

    @property
    def x_in(self) -> np.ndarray:
        """float64 [G, N, T]: per token, the (token mean of the) noisy input it was last computed from."""
        if self._pending is not None:
            self._settle()
        return self._x_in

    @x_in.setter
    def x_in(self, value: np.ndarray) -> None:
        self._settle()
        self._x_in = value

    def _settle(self) -> None:
        """Form the eps and x_in a full step left pending (to_x0_eps and token_mean of its arrays)."""
        if self._pending is not None:
            out, x, alpha, sigma = self._pending
            self._pending = None
            self._eps = to_x0_eps(out, x, alpha, sigma, self.prediction)[1]
            self._x_in = token_mean(x, self.patch)

    @property
    def horizon(self) -> int:
        """T, the number of horizon tokens."""
        return self.age.shape[2]

    # Token means are formed when a controller first reads them: the plain sampler never does.
    @property
    def x(self) -> np.ndarray:
        """float64 [G, N, T]: the current noisy horizon, per token (mean over its steps)."""
        if self._x_tok is None:
            self._x_tok = token_mean(self._x_steps, self.patch)
        return self._x_tok

    @x.setter
    def x(self, steps: np.ndarray) -> None:
        """Set from the step-level noisy horizon, float64 [G, N, H]."""
        self._x_steps, self._x_tok = steps, None

    @property
    def x0_steps(self) -> np.ndarray:
        """float64 [G, N, H]: the data prediction of every step (what the solver reads)."""
        return self._x0_steps

    @x0_steps.setter
    def x0_steps(self, steps: np.ndarray) -> None:
        self._x0_steps, self._x0_tok = steps, None

    @property
    def x0_hat(self) -> np.ndarray:
        """float64 [G, N, T]: the data prediction per token (mean over its steps of x0_steps)."""
        if self.patch == 1:
            return self._x0_steps
        if self._x0_tok is None:
            self._x0_tok = token_mean(self._x0_steps, self.patch)
        return self._x0_tok

    @x0_hat.setter
    def x0_hat(self, tokens: np.ndarray) -> None:
        if self.patch == 1:
            self.x0_steps = tokens
            return
        self.x0_steps = self._x0_steps + np.repeat(tokens - self.x0_hat, self.patch, axis=-1)
        self._x0_tok = tokens

    def steps(self, per_token: np.ndarray) -> np.ndarray:
        """[G, N, T] -> [G, N, H]: a per-token array (mask, order) repeated over each token's steps."""
        return per_token if self.patch == 1 else np.repeat(per_token, self.patch, axis=-1)

    def hor_valid(self, computed: np.ndarray) -> np.ndarray:
        """float32 [G, N, T]: 1 where a cached key may be attended to (valid, not recomputed now)."""
        return (self.valid & ~computed).astype(np.float32)

    def store(self, plan: StepPlan, computed: np.ndarray, x: np.ndarray, out_sub, k_sub, v_sub,
              alpha: float, sigma: float) -> None:
        """Scatter a denoise call's outputs into the cache and refresh x0 and eps of the computed
        tokens' steps: (x0, eps) = to_x0_eps(out, x, alpha, sigma, prediction), x0 then clipped to
        [-x0_clip, x0_clip] when the guard is on (eps is kept unclipped).

        computed: bool [G, N, T]; x: float64 [G, N, H], the current noisy horizon; out_sub f32
        [G, N, S, Ph], the network's output (eps or v) per step of each computed token;
        k_sub/v_sub f32 [layers, G, N, S, D]. alpha, sigma: the step's noise level.
        """
        if plan.full and plan.pos_sub.shape[2] > 0:
            self._store_full(out_sub, k_sub, v_sub, x, alpha, sigma)
            return
        self.age += 1
        if plan.pos_sub.shape[2] == 0:  # nothing computed: every token reused
            return
        self._settle()  # a pending eps reads _out, which the scatter below writes into
        kv = k_sub is not None  # None: the engine scattered them on its device
        Ph = self.patch
        # flat scatter: entry (g, n, s) -> token (g, n, pos_sub[g, n, s]); padding dropped
        G, N, S = plan.pos_sub.shape
        T = self.horizon
        pos = plan.pos_sub.reshape(G * N, S)
        valid = pos < T
        dense = bool(valid.all())  # no padding entry: every output row lands somewhere
        dst = (np.arange(G * N)[:, None] * T + pos).reshape(-1) if dense else (np.arange(G * N)[:, None] * T + pos)[valid]
        src = slice(None) if dense else np.flatnonzero(valid)
        for cached, new in ((self.k, k_sub), (self.v, v_sub)) if kv else ():
            layers, D = cached.shape[0], cached.shape[-1]
            cached_rows, new_rows = cached.reshape(layers, G * N * T, D), new.reshape(layers, G * N * S, D)
            for layer in range(layers):  # row copies along axis 0: numpy's fast path
                cached_rows[layer][dst] = new_rows[layer][src]
        self._out.reshape(G * N * T, Ph)[dst] = out_sub.reshape(G * N * S, Ph)[src]
        # epsilon: x0_hat = (x - sigma * eps) / alpha; v: x0_hat = alpha x - sigma v (docs/model.md 2.2).
        x0_hat, eps = to_x0_eps(self._out, x, alpha, sigma, self.prediction)
        steps = self.steps(computed)
        self.eps = np.where(steps, eps, self.eps)
        self.x0_steps = np.where(steps, clip_x0(x0_hat, self.x0_clip), self.x0_steps)
        self.x_in = np.where(computed, token_mean(x, Ph), self.x_in)
        self.age[computed] = 0
        self.valid |= computed

    def _store_full(self, out_sub, k_sub, v_sub, x: np.ndarray, alpha: float, sigma: float) -> None:
        """store for a plan computing every token (the plain sampler's every step): outputs are in
        cache order, nothing is masked, and eps and x_in are left to be formed when first read.
        Control time: the fewest array passes that give store's numbers bit for bit."""
        if k_sub is not None:
            self.k, self.v = k_sub, v_sub
        self._out = out = out_sub.reshape(self._out.shape).astype(np.float64)
        x0 = to_x0(out, x, alpha, sigma, self.prediction)  # a fresh array: clipped in place
        self.x0_steps = _clip_into(x0, self.x0_clip) if self._clip_on else x0
        self._pending = (out, x, alpha, sigma)
        self.age.fill(0)
        self.valid.fill(True)
