"""The sampling loop (DESIGN section 6): encode once, then M denoise calls and solver updates.

Each step:
    plan   = controller.plan(i, cache)        which tokens to compute (pos_sub [G, N, S]) and the
                                              per-token solver order
    x_sub  = gather(x, plan.pos_sub)           noisy inputs of the computed tokens
    eps_sub, k_sub, v_sub = engine.denoise(x_sub, pos_sub, t_feat, k_ctx, v_ctx,
                                           cache.k, cache.v, cache.hor_valid(plan))
    cache.store(...)                           x0_hat = (x - sigma eps) / alpha for computed tokens;
                                              reused tokens keep their cached x0_hat
    controller.adjust(i, cache, computed)      optional: may move reused tokens' x0_hat (core follow)
    x      = solver.step(x, cache.x0_hat, plan.order)
    controller.observe(i, cache)

Controllers: `FullController` (every token, every step: S = H, hor_valid all zero, one fixed
order: the plain DPM-Solver++ sampler) and `dil.runtime.sampling.fast_controller.FastController` (lattice +
E2-CRF token cache, specified in docs/sampler.md), chosen by `make_controller(config)`.
Control math is float64 NumPy, vectorised over series, samples and tokens.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, fields

import numpy as np

from dil.runtime.sampling.config import SamplerConfig, _check_int  # noqa: F401 - re-exported
from dil.runtime.sampling.schedule import NoiseSchedule, diffusion_time_features
from dil.runtime.sampling.solver import DPMSolverPP


@dataclass
class SamplerStats:
    """What one forecast cost. Tokens count (series, sample, horizon step) network evaluations.

    tokens_computed: horizon tokens the network computed (padding excluded); slots_computed: the
        same with padding entries (what the engine actually evaluated).
    full_tokens: what a full sampler computes (G * N * H * steps); tokens_computed / full_tokens is
        the share of network work done, reuse_ratio the share served from the token cache.
    full_steps: steps in which every row computed every token; series_full_steps: (series, step)
        pairs computed in full. probes: random probe tokens. order_histogram: token updates at
        effective solver order 1, 2, 3. refinements, merges: lattice node splits and merges.
    engine_seconds: inside session.run (encode + denoise). control_seconds: the rest of the loop
        (planning, gather/scatter, solver). wall_seconds: the whole sampler.
    """

    series: int = 0
    samples: int = 0
    steps: int = 0
    full_steps: int = 0
    series_full_steps: int = 0
    encode_calls: int = 0
    engine_calls: int = 0
    tokens_computed: int = 0
    full_tokens: int = 0
    slots_computed: int = 0
    probes: int = 0
    refinements: int = 0
    merges: int = 0
    order_histogram: list = field(default_factory=lambda: [0, 0, 0])
    engine_seconds: float = 0.0
    control_seconds: float = 0.0
    wall_seconds: float = 0.0

    def merge(self, other: "SamplerStats") -> "SamplerStats":
        """Totals over two batches of series (same samples and steps)."""
        out = SamplerStats()
        for f in fields(self):
            a, b = getattr(self, f.name), getattr(other, f.name)
            setattr(out, f.name, [x + y for x, y in zip(a, b)] if isinstance(a, list) else a + b)
        out.samples, out.steps = max(self.samples, other.samples), max(self.steps, other.steps)
        return out

    @property
    def token_fraction(self) -> float:
        return self.tokens_computed / self.full_tokens if self.full_tokens else 0.0

    @property
    def reuse_ratio(self) -> float:
        return 1.0 - self.token_fraction if self.full_tokens else 0.0

    def to_dict(self) -> dict:
        d = asdict(self)
        d["token_fraction"] = self.token_fraction
        d["reuse_ratio"] = self.reuse_ratio
        return d


@dataclass
class StepPlan:
    """A controller's decision for one step.

    pos_sub: int64 [G, N, S], the horizon positions computed now; H marks a padding entry (S may be
        0: no call this step). order: int or int array broadcastable to [G, N, H], the solver order
        per token. full: True when every token is computed (pos_sub is arange(H) in every row).
    mask: optional bool [G, N, H], the computed tokens (derived from pos_sub when absent).
    series_full: optional bool [G], the series computed in full this step.
    """

    pos_sub: np.ndarray
    order: np.ndarray | int
    full: bool = False
    mask: np.ndarray | None = None
    series_full: np.ndarray | None = None

    def computed(self, horizon: int) -> np.ndarray:
        """bool [G, N, H]: True where a token is computed this step."""
        if self.mask is not None:
            return self.mask
        G, N, _ = self.pos_sub.shape
        mask = np.zeros((G, N, horizon + 1), dtype=bool)  # last column swallows padding entries
        np.put_along_axis(mask, self.pos_sub, True, axis=2)
        return mask[:, :, :horizon]


def subset_positions(computed: np.ndarray, bucket: int = 1) -> np.ndarray:
    """pos_sub int64 [G, N, S] for a computed mask bool [G, N, H] (docs/sampler.md section 2).

    Each row's computed positions in ascending order, then padding entries H; S = the largest row
    count rounded up to a multiple of `bucket`, at most H (0 when nothing is computed).
    """
    G, N, H = computed.shape
    need = int(computed.sum(axis=2).max()) if computed.size else 0
    S = min(H, -(-need // bucket) * bucket)
    key = np.where(computed, np.arange(H, dtype=np.int64), H)
    return np.sort(key, axis=2)[:, :, :S]


class TokenCache:
    """Per row (series g, sample n) and horizon token h, what was last computed for it.

    k, v: float32 [layers, G, N, H, D], the token's keys/values per layer (fed to denoise as
    k_hor/v_hor). x0_hat, eps, x_in: float64 [G, N, H], its data prediction, noise prediction and
    the noisy input it was computed from. age: int32 [G, N, H], steps since it was computed.
    valid: bool [G, N, H], computed at least once. x: float64 [G, N, H], the current noisy horizon
    (set by the sampler before each plan, so that controllers can read it).
    """

    def __init__(self, layers: int, G: int, N: int, H: int, D: int, keep_kv: bool = True):
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

    def store(self, plan: StepPlan, computed: np.ndarray, x: np.ndarray, eps_sub, k_sub, v_sub,
              alpha: float, sigma: float) -> None:
        """Scatter a denoise call's outputs into the cache and refresh x0_hat of computed tokens.

        x: float64 [G, N, H], the current noisy horizon; eps_sub f32 [G, N, S, 1];
        k_sub/v_sub f32 [layers, G, N, S, D]. alpha, sigma: the step's noise level.
        """
        self.age += 1
        if plan.pos_sub.shape[2] == 0:  # nothing computed: every token reused
            return
        kv = k_sub is not None  # None: the engine scattered them on its device
        if plan.full:  # pos_sub is arange(H) in every row: outputs are already in cache order
            if kv:
                self.k, self.v = k_sub, v_sub
            self.eps = eps_sub[..., 0].astype(np.float64)
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
            self.eps.reshape(-1)[dst] = eps_sub.reshape(-1)[src]
        # x0_hat = (x - sigma * eps) / alpha: the data prediction of an epsilon network (DESIGN 4).
        self.x0_hat = np.where(computed, (x - sigma * self.eps) / alpha, self.x0_hat)
        self.x_in = np.where(computed, x, self.x_in)
        self.age[computed] = 0
        self.valid |= computed


class FullController:
    """Every token at every step with one solver order: the plain DPM-Solver++ sampler."""

    counters: dict = {}

    def __init__(self, config: SamplerConfig):
        self.config = config

    def start(self, G: int, N: int, H: int, solver: DPMSolverPP) -> None:
        self._pos = np.ascontiguousarray(np.broadcast_to(np.arange(H, dtype=np.int64), (G, N, H)))

    def plan(self, i: int, cache: TokenCache) -> StepPlan:
        return StepPlan(pos_sub=self._pos, order=self.config.solver_order, full=True)

    def observe(self, i: int, cache: TokenCache) -> None:
        """Feedback after step i (the lattice/cache controllers adapt here)."""


def make_controller(config: SamplerConfig, seed: int = 0, keys=None):
    """The controller a config asks for: FullController when lattice and cache are off, else the
    FastController (docs/sampler.md) with per-series control streams from (seed, keys)."""
    if config.plain:
        return FullController(config)
    from dil.runtime.sampling.fast_controller import FastController

    return FastController(config, seed=seed, keys=keys)


@dataclass
class SampleResult:
    """x0: float64 [G, N, H], the samples on the standardised scale; stats: what they cost."""

    x0: np.ndarray
    stats: SamplerStats = field(default_factory=SamplerStats)


def sample(engine, schedule: NoiseSchedule, ctx: np.ndarray, x_T: np.ndarray, config: SamplerConfig,
           controller=None, progress=None, seed: int = 0, keys=None) -> SampleResult:
    """Run the sampler for G contexts and N samples each.

    engine: an OnnxEngine (or anything with encode/denoise/stats/config). ctx: float32 [G, L, F]
    context features (dil.runtime.scaling.context_features). x_T: float64 [G, N, H] initial noise.
    controller: decides the tokens and orders per step (default: make_controller(config, seed,
    keys), keys = the G series keys of the control streams, default 0..G-1). progress: optional
    callable, called with 1 after every step.
    """
    wall0 = time.perf_counter()
    if config.num_diffusion_steps != schedule.num_steps:
        raise ValueError(f"num_diffusion_steps must equal the model's training steps ({schedule.num_steps}), "
                         f"got {config.num_diffusion_steps}")
    engine_s0, encode0, denoise0 = engine.stats.seconds, engine.stats.encode_calls, engine.stats.denoise_calls
    G, N, H = x_T.shape
    cfg = engine.config
    controller = controller or make_controller(config, seed, keys)
    solver = DPMSolverPP(schedule, config.steps)
    controller.start(G, N, H, solver)
    # An engine that can keep the token cache's keys/values on its device (TensorRT with a
    # cache_update plan) does so: no per-step copy of [layers, G, N, H, D] through the host.
    device_kv = engine.device_cache(G, N, H) if getattr(engine, "has_device_cache", False) else None
    cache = TokenCache(cfg.num_layers, G, N, H, cfg.d_model, keep_kv=device_kv is None)
    stats = SamplerStats(series=G, samples=N, steps=config.steps, full_tokens=G * N * H * config.steps)

    k_ctx, v_ctx = engine.encode(ctx)
    # One feature row per step; the same diffusion time for every (series, sample) row.
    t_table = diffusion_time_features(solver.kappas, cfg.time_embed_dim).astype(np.float32)
    x = np.array(x_T, dtype=np.float64)
    x_pad = np.zeros((G, N, H + 1))  # padding entries (pos_sub == H) read a 0
    for i in range(config.steps):
        cache.x = x
        plan = controller.plan(i, cache)
        computed = plan.computed(H)
        if plan.pos_sub.shape[2] > 0:
            x_pad[:, :, :H] = x
            x_sub = np.take_along_axis(x_pad, plan.pos_sub, axis=2)[..., None].astype(np.float32)
            t_feat = np.broadcast_to(t_table[i], (G, N, t_table.shape[1]))
            if device_kv is not None:  # keys/values stay on the device; only eps comes back
                eps_sub = engine.denoise_cached(x_sub, plan.pos_sub, t_feat, k_ctx, v_ctx, device_kv,
                                                cache.hor_valid(computed))
                k_sub = v_sub = None
            else:
                eps_sub, k_sub, v_sub = engine.denoise(
                    x_sub, plan.pos_sub, t_feat, k_ctx, v_ctx, cache.k, cache.v, cache.hor_valid(computed)
                )
            stats.slots_computed += plan.pos_sub.size
        else:
            eps_sub = k_sub = v_sub = None
        cache.store(plan, computed, x, eps_sub, k_sub, v_sub, solver.alphas[i], solver.sigmas[i])
        if hasattr(controller, "adjust"):  # a controller may move reused tokens' x0_hat
            controller.adjust(i, cache, computed)
        _count_orders(stats, plan.order, solver.max_order(i), (G, N, H))
        x = solver.step(x, cache.x0_hat, plan.order)
        controller.observe(i, cache)
        stats.tokens_computed += int(np.count_nonzero(computed))
        stats.full_steps += int(plan.full)
        stats.series_full_steps += G if plan.full else int(np.count_nonzero(plan.series_full)) if plan.series_full is not None else 0
        if progress is not None:
            progress(1)

    for name, value in getattr(controller, "counters", {}).items():
        setattr(stats, name, value)
    stats.encode_calls = engine.stats.encode_calls - encode0
    stats.engine_calls = engine.stats.denoise_calls - denoise0
    stats.engine_seconds = engine.stats.seconds - engine_s0
    stats.wall_seconds = time.perf_counter() - wall0
    stats.control_seconds = stats.wall_seconds - stats.engine_seconds
    return SampleResult(x0=x, stats=stats)


def _count_orders(stats: SamplerStats, order, cap: int, shape) -> None:
    """Add one step's effective orders (clipped to the solver's cap) to the order histogram."""
    if np.ndim(order) == 0:
        stats.order_histogram[min(max(int(order), 1), cap) - 1] += int(np.prod(shape))
        return
    counts = np.bincount(np.clip(np.broadcast_to(order, shape), 1, cap).ravel(), minlength=4)
    for k in range(3):
        stats.order_histogram[k] += int(counts[k + 1])
