"""The sampling loop (DESIGN section 6): encode once, then M denoise calls and solver updates.

Each step:
    plan   = controller.plan(i, cache)        which tokens to compute (pos_sub [G, N, S]) and the
                                              per-token solver order
    x_sub  = gather(x, plan.pos_sub)           noisy inputs of the computed tokens
    eps_sub, k_sub, v_sub = engine.denoise(x_sub, pos_sub, t_feat, k_ctx, v_ctx,
                                           cache.k, cache.v, cache.hor_valid(plan))
    cache.store(...)                           x0_hat = (x - sigma eps) / alpha for computed tokens;
                                              reused tokens keep their cached x0_hat
    x      = solver.step(x, cache.x0_hat, plan.order)
    controller.observe(i, cache)

This version ships `FullController` (every token, every step: S = H, hor_valid all zero, one fixed
order). The lattice controller and the E2-CRF refresh policy of the next capability plug in as
other controllers with the same two methods; the loop, the cache and the solver stay as they are.
Control math is float64 NumPy, vectorised over series, samples and tokens.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, fields

import numpy as np

from dil.runtime.schedule import NoiseSchedule, diffusion_time_features
from dil.runtime.solver import MAX_ORDER, DPMSolverPP


@dataclass(frozen=True)
class SamplerConfig:
    """Settings of the sampler; the defaults below are the documented defaults.

    steps: M, network evaluations per forecast (1..1000; default 20).
    solver_order: DPM-Solver++ multistep order (1..3; default 2, "2M"). Lowered automatically on the
        first steps (not enough history) and on the last step (to clean data).
    """

    steps: int = 20
    solver_order: int = 2

    def __post_init__(self) -> None:
        _check_int("steps", self.steps, 1, 1000)
        _check_int("solver_order", self.solver_order, 1, MAX_ORDER)


def _check_int(name: str, value, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not low <= value <= high:
        raise ValueError(f"{name} must be an integer in [{low}, {high}], got {value!r}")


@dataclass
class SamplerStats:
    """What one forecast cost. Tokens count (series, sample, horizon step) network evaluations.

    tokens_computed: horizon tokens the network computed (padding excluded).
    full_tokens: what a full sampler computes (G * N * H * steps); tokens_computed / full_tokens is
        the share of network work done.
    engine_seconds: inside session.run (encode + denoise). control_seconds: the rest of the loop
        (planning, gather/scatter, solver). wall_seconds: the whole sampler.
    """

    series: int = 0
    samples: int = 0
    steps: int = 0
    full_steps: int = 0
    encode_calls: int = 0
    engine_calls: int = 0
    tokens_computed: int = 0
    full_tokens: int = 0
    engine_seconds: float = 0.0
    control_seconds: float = 0.0
    wall_seconds: float = 0.0

    def merge(self, other: "SamplerStats") -> "SamplerStats":
        """Totals over two batches of series (same samples and steps)."""
        out = SamplerStats(**{f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)})
        out.samples, out.steps = max(self.samples, other.samples), max(self.steps, other.steps)
        return out

    @property
    def token_fraction(self) -> float:
        return self.tokens_computed / self.full_tokens if self.full_tokens else 0.0

    def to_dict(self) -> dict:
        d = asdict(self)
        d["token_fraction"] = self.token_fraction
        return d


@dataclass
class StepPlan:
    """A controller's decision for one step.

    pos_sub: int64 [G, N, S], the horizon positions computed now; H marks a padding entry.
    order: int or int array broadcastable to [G, N, H], the solver order per token.
    full: True when every token is computed (pos_sub is arange(H) in every row).
    """

    pos_sub: np.ndarray
    order: np.ndarray | int
    full: bool = False

    def computed(self, horizon: int) -> np.ndarray:
        """bool [G, N, H]: True where a token is computed this step."""
        G, N, _ = self.pos_sub.shape
        mask = np.zeros((G, N, horizon + 1), dtype=bool)  # last column swallows padding entries
        np.put_along_axis(mask, self.pos_sub, True, axis=2)
        return mask[:, :, :horizon]


class TokenCache:
    """Per row (series g, sample n) and horizon token h, what was last computed for it.

    k, v: float32 [layers, G, N, H, D], the token's keys/values per layer (fed to denoise as
    k_hor/v_hor). x0_hat, eps, x_in: float64 [G, N, H], its data prediction, noise prediction and
    the noisy input it was computed from. age: int32 [G, N, H], steps since it was computed.
    valid: bool [G, N, H], computed at least once.
    """

    def __init__(self, layers: int, G: int, N: int, H: int, D: int):
        self.k = np.zeros((layers, G, N, H, D), dtype=np.float32)
        self.v = np.zeros_like(self.k)
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
        if plan.full:  # pos_sub is arange(H) in every row: outputs are already in cache order
            self.k, self.v = k_sub, v_sub
            self.eps = eps_sub[..., 0].astype(np.float64)
        else:
            g, n, s = np.nonzero(plan.pos_sub < self.horizon)
            h = plan.pos_sub[g, n, s]
            self.k[:, g, n, h] = k_sub[:, g, n, s]
            self.v[:, g, n, h] = v_sub[:, g, n, s]
            self.eps[g, n, h] = eps_sub[g, n, s, 0]
        # x0_hat = (x - sigma * eps) / alpha: the data prediction of an epsilon network (DESIGN 4).
        self.x0_hat = np.where(computed, (x - sigma * self.eps) / alpha, self.x0_hat)
        self.x_in = np.where(computed, x, self.x_in)
        self.age[computed] = 0
        self.valid |= computed


class FullController:
    """Every token at every step with one solver order: the plain DPM-Solver++ sampler."""

    def __init__(self, config: SamplerConfig):
        self.config = config

    def start(self, G: int, N: int, H: int, solver: DPMSolverPP) -> None:
        self._pos = np.ascontiguousarray(np.broadcast_to(np.arange(H, dtype=np.int64), (G, N, H)))

    def plan(self, i: int, cache: TokenCache) -> StepPlan:
        return StepPlan(pos_sub=self._pos, order=self.config.solver_order, full=True)

    def observe(self, i: int, cache: TokenCache) -> None:
        """Feedback after step i (the lattice/cache controllers adapt here)."""


@dataclass
class SampleResult:
    """x0: float64 [G, N, H], the samples on the standardised scale; stats: what they cost."""

    x0: np.ndarray
    stats: SamplerStats = field(default_factory=SamplerStats)


def sample(engine, schedule: NoiseSchedule, ctx: np.ndarray, x_T: np.ndarray, config: SamplerConfig,
           controller=None, progress=None) -> SampleResult:
    """Run the sampler for G contexts and N samples each.

    engine: an OnnxEngine (or anything with encode/denoise/stats/config). ctx: float32 [G, L, F]
    context features (dil.runtime.scaling.context_features). x_T: float64 [G, N, H] initial noise.
    controller: decides the tokens and orders per step (default FullController). progress: optional
    callable, called with 1 after every step.
    """
    wall0 = time.perf_counter()
    engine_s0, encode0, denoise0 = engine.stats.seconds, engine.stats.encode_calls, engine.stats.denoise_calls
    G, N, H = x_T.shape
    cfg = engine.config
    controller = controller or FullController(config)
    solver = DPMSolverPP(schedule, config.steps)
    controller.start(G, N, H, solver)
    cache = TokenCache(cfg.num_layers, G, N, H, cfg.d_model)
    stats = SamplerStats(series=G, samples=N, steps=config.steps, full_tokens=G * N * H * config.steps)

    k_ctx, v_ctx = engine.encode(ctx)
    # One feature row per step; the same diffusion time for every (series, sample) row.
    t_table = diffusion_time_features(solver.kappas, cfg.time_embed_dim).astype(np.float32)
    x = np.array(x_T, dtype=np.float64)
    for i in range(config.steps):
        plan = controller.plan(i, cache)
        computed = plan.computed(H)
        x_pad = np.concatenate([x, np.zeros((G, N, 1))], axis=2)  # padding entries read a 0
        x_sub = np.take_along_axis(x_pad, plan.pos_sub, axis=2)[..., None].astype(np.float32)
        t_feat = np.broadcast_to(t_table[i], (G, N, t_table.shape[1]))
        eps_sub, k_sub, v_sub = engine.denoise(
            x_sub, plan.pos_sub, t_feat, k_ctx, v_ctx, cache.k, cache.v, cache.hor_valid(computed)
        )
        cache.store(plan, computed, x, eps_sub, k_sub, v_sub, solver.alphas[i], solver.sigmas[i])
        x = solver.step(x, cache.x0_hat, plan.order)
        controller.observe(i, cache)
        stats.tokens_computed += int(computed.sum())
        stats.full_steps += int(plan.full)
        if progress is not None:
            progress(1)

    stats.encode_calls = engine.stats.encode_calls - encode0
    stats.engine_calls = engine.stats.denoise_calls - denoise0
    stats.engine_seconds = engine.stats.seconds - engine_s0
    stats.wall_seconds = time.perf_counter() - wall0
    stats.control_seconds = stats.wall_seconds - stats.engine_seconds
    return SampleResult(x0=x, stats=stats)
