"""PyTorch reference of the runtime sampler (docs/model.md section 7).

Calls the torch ScoreNet directly (`full_step`: every token, every step), draws its noise from the
same NumPy streams as the runtime (dil.runtime.sampling.rng) and takes the schedule, time features and scaling
from dil.runtime (one source of truth). The DPM-Solver++ update is written here again, independently
of dil.runtime.sampling.solver, in torch float64 and in the paper's own form, so that the runtime is checked
against a second implementation rather than against itself.

Two samplers live here:
- `reference_sample` / `reference_forecast`: the plain sampler (every token, every step, one order),
  through the module's `full_step`.
- `ReferenceSampler`: the whole fast sampler (docs/sampler.md) through `encode` / `denoise` with the same
  subset, cache and padding semantics as the runtime, driven by a controller from
  `dil.evaluate.reference.controller`. It records every step's decisions (`StepDecision`: tokens
  computed, per-token solver order, full steps) so that `dil-validate` can compare them with the
  runtime's. It can be advanced one step at a time (`step()`), which lets the validation feed the
  runtime the very network outputs the reference computed (the controller check).

Both turn the network's output (eps or v, the model's config.prediction) into x0_hat with
dil.runtime.sampling.parametrisation.to_x0_eps (on torch tensors: the one definition), and give
each horizon step its known features (hor_feat [G, H, Fk]) next to its noisy value; context patches
are the module's own business (`encode`). A horizon token is the model's horizon_patch (Ph)
consecutive steps: `ReferenceSampler`'s controller, cache and decisions count T = H / Ph tokens, its
solver updates the H steps (dil.evaluate.reference.cache).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from dil.runtime.sampling.rng import SeriesStreams
from dil.runtime.sampling.chunks import sample_blocks
from dil.runtime.sampling.config import X0_CLIP_DEFAULT
from dil.runtime.sampling.parametrisation import to_x0_eps
from dil.runtime.inputs.scaling import unstandardise
from dil.runtime.sampling.schedule import DEFAULT_SPACING, NoiseSchedule, diffusion_time_features
from dil.train.model import ScoreNet
from dil.evaluate.reference.cache import (
    ReferenceCache,
    guard_x0,
    subset_positions,
    token_inputs,
    token_steps,
    token_values,
)
from dil.evaluate.reference import frequency as sp
from dil.evaluate.reference.inputs import check_context, horizon_features_tensor, network_context, standardised_contexts


@dataclass
class ReferenceForecast:
    """samples_std: float64 [G, N, H] on the standardised scale; samples: the same on the original
    scale; loc, scale: float64 [G], the per-window scaling."""

    samples_std: np.ndarray
    samples: np.ndarray
    loc: np.ndarray
    scale: np.ndarray


def settings_x0_clip(settings) -> float:
    """The guard of a settings object (a SamplerConfig or any object with its attribute names);
    the SamplerConfig default when it has none."""
    return float(getattr(settings, "x0_clip", X0_CLIP_DEFAULT))


def settings_spacing(settings) -> str:
    """The step spacing of a settings object ("logsnr" or "time", NoiseSchedule.sampling_grid);
    the SamplerConfig default when it has none."""
    return str(getattr(settings, "spacing", DEFAULT_SPACING))


def dpm_solver_pp_update(x, m, lam_t, lam_s, alpha_t, sigma_t, sigma_s, order):
    """One DPM-Solver++ multistep update from time s to t (float64 tensors).

    m: data predictions, newest first (m[0] at s, m[1] and m[2] at the two earlier times);
    lam_s: their lambdas in the same order. order: 1, 2 or 3 (len(m) >= order).
    """
    h = lam_t - lam_s[0]
    if order == 1:  # DPM-Solver++ Sec. 4.1: DDIM in data-prediction form
        return (sigma_t / sigma_s) * x - alpha_t * torch.expm1(-h) * m[0]
    if order == 2:  # Alg. 2 (DPM-Solver++(2M)): D = (1 + 1/(2r)) m0 - 1/(2r) m1
        r = (lam_s[0] - lam_s[1]) / h
        d = (1.0 + 1.0 / (2.0 * r)) * m[0] - (1.0 / (2.0 * r)) * m[1]
        return (sigma_t / sigma_s) * x - alpha_t * torch.expm1(-h) * d
    # Order 3: integrate the exact solution x_t = (sigma_t/sigma_s) x_s + sigma_t int e^lambda x0_hat dlambda
    # (Sec. 4.1) exactly over the quadratic through the last three data predictions, Newton form in
    # u = lambda - lambda_s: p(u) = m0 + f01 u + c u (u + h0) = m0 + b u + c u^2.
    h0, h1 = lam_s[0] - lam_s[1], lam_s[1] - lam_s[2]
    f01, f12 = (m[0] - m[1]) / h0, (m[1] - m[2]) / h1
    c = (f01 - f12) / (h0 + h1)
    b = f01 + c * h0  # p'(0)
    e = torch.exp(-h)
    # sigma_t * int_0^h e^(lambda_s + u) u^k du, k = 0, 1, 2 (with sigma_t e^lambda_t = alpha_t)
    i0 = alpha_t * (1.0 - e)
    i1 = alpha_t * (h - 1.0 + e)
    i2 = alpha_t * (h**2 - 2.0 * h + 2.0 - 2.0 * e)
    return (sigma_t / sigma_s) * x + i0 * m[0] + i1 * b + i2 * c


@torch.no_grad()
def reference_sample(model: ScoreNet, schedule: NoiseSchedule, ctx: np.ndarray, x_T: np.ndarray, steps: int,
                     solver_order: int = 2, x0_clip: float = X0_CLIP_DEFAULT, hor_feat=None,
                     spacing: str = DEFAULT_SPACING) -> np.ndarray:
    """The plain sampler in torch. ctx: float32 [G, L, Fc] context features; x_T: float64 [G, N, H];
    x0_clip: the data-prediction guard (0 = off); hor_feat: float [G, H, Fk] known features of the
    horizon steps (None when the model has none); spacing: the step grid ("logsnr" or "time",
    NoiseSchedule.sampling_grid). Returns x0: float64 [G, N, H] on the standardised scale (a
    frequency-domain model samples the spectrum from G x_T and returns its inverse transform)."""
    model = model.eval()
    dtype = next(model.parameters()).dtype
    G, N, H = x_T.shape
    prediction = model.config.prediction
    check_context(model, ctx)
    feat = horizon_features_tensor(model, hor_feat, G, H)
    feat = None if feat is None else feat.to(dtype)
    kappas = schedule.sampling_grid(steps, spacing)
    f64 = lambda a: torch.tensor(np.asarray(a, dtype=np.float64), dtype=torch.float64)  # noqa: E731
    alphas, sigmas, lambdas = f64(schedule.alpha(kappas)), f64(schedule.sigma(kappas)), f64(schedule.lam(kappas))
    t_feats = torch.from_numpy(diffusion_time_features(kappas, model.config.time_embed_dim)).to(dtype)
    ctx_t = torch.from_numpy(np.asarray(ctx)).to(dtype)
    x = torch.from_numpy(np.array(x_T, dtype=np.float64))
    freq = sp.is_frequency(model)
    if freq:  # spectral coordinates: the prior G x_T, the guard's per-position bound (docs/frequency.md)
        x, x0_clip = x * sp.gains(H), sp.clip_bound(x0_clip, H)
    history, lam_hist = [], []
    for i in range(steps):
        t_feat = t_feats[i].expand(G, N, -1)
        out = model.full_step(ctx_t, x.to(dtype)[..., None], t_feat, feat)[..., 0].to(torch.float64)
        x0 = guard_x0(to_x0_eps(out, x, alphas[i], sigmas[i], prediction)[0], x0_clip)
        history, lam_hist = [x0] + history[:2], [lambdas[i]] + lam_hist[:2]
        if i == steps - 1:
            x = x0  # last update to clean data: alpha = 1, sigma = 0
            break
        order = min(solver_order, i + 1)
        x = dpm_solver_pp_update(x, history, lambdas[i + 1], lam_hist, alphas[i + 1], sigmas[i + 1], sigmas[i], order)
    return (sp.from_spectrum(x) if freq else x).numpy()


def reference_forecast(model: ScoreNet, schedule: NoiseSchedule, contexts, num_samples: int, steps: int,
                       seed: int, series_ids=None, solver_order: int = 2, config=None,
                       x0_clip: float = X0_CLIP_DEFAULT, ctx_extra=None, hor_feat=None,
                       spacing: str = DEFAULT_SPACING) -> ReferenceForecast:
    """Forecast G context windows with the torch module and the torch solver.

    contexts: float [G, L'] (NaN = missing; the last context_length values are used);
    seed, series_ids: the random streams (dil.runtime.sampling.rng.SeriesStreams; keys default 0..G-1), as
    in the runtime. config: None for the plain sampler (every token, `solver_order`), or sampler
    settings (a dil.runtime SamplerConfig, or any object with its attribute names) for the whole
    fast sampler through ReferenceSampler and dil.evaluate.reference.controller, run in the
    runtime's sample blocks (dil.runtime.sampling.chunks); its steps, x0_clip and spacing override
    `steps`, `x0_clip` (the data-prediction guard of the plain sampler, 0 = off) and `spacing` (the
    step grid, "logsnr" or "time", NoiseSchedule.sampling_grid). A model with features
    takes ctx_extra [G, L', Fc - 2] (per context step: known features, then past-only covariates)
    and hor_feat [G, H, Fk] (the horizon steps' known features), see `network_context`.
    """
    z, loc, scale = standardised_contexts(model, contexts)
    ctx = network_context(model, z, ctx_extra)
    streams = SeriesStreams(seed, range(z.shape[0]) if series_ids is None else series_ids)
    x_T = streams.initial_noise(num_samples, model.config.horizon)
    if config is None:
        x0 = reference_sample(model, schedule, ctx, x_T, steps, solver_order, x0_clip, hor_feat=hor_feat,
                              spacing=spacing)
    else:
        from dil.evaluate.reference.controller import ReferenceController

        x0 = np.empty_like(x_T)
        for n0, n1 in sample_blocks(num_samples):
            x0[:, n0:n1] = ReferenceSampler(model, schedule, ctx, x_T[:, n0:n1], config.steps,
                                            streams.from_sample(n0), ReferenceController(config),
                                            bucket=getattr(config, "bucket", 1), hor_feat=hor_feat,
                                            spacing=settings_spacing(config)).run()
    return ReferenceForecast(samples_std=x0, samples=unstandardise(x0, loc, scale), loc=loc, scale=scale)


# ---------------------------------------------------------------------------------------------
# The whole sampler through encode/denoise: token subsets, the token cache, per-token orders.
@dataclass
class StepDecision:
    """What a controller decided at one step (NumPy, for comparison with the runtime's).

    computed: bool [G, N, T], tokens the network computed. order: int64 [G, N, T], the solver order
    each token's steps' update used (after the history cap; 1 on the last step). full: bool [G], the
    series' step was computed in full. margins: name -> float64 array, the distance of the quantity
    behind a decision from its threshold (reference only; see dil.evaluate.reference.controller).
    scale: int64 [G, N, T], the scale of the lattice node holding each token after this step's
    adapt (None for a controller without a lattice): not a decision unit, but where two controllers'
    partitions part, later decisions of the row follow from that (dil-validate lists it).
    """

    computed: np.ndarray
    order: np.ndarray
    full: np.ndarray
    margins: dict = field(default_factory=dict)
    scale: np.ndarray | None = None


@dataclass
class ReferencePlan:
    """A reference controller's plan for one step (torch).

    computed: bool [G, N, T]; order: int64 [G, N, T] (requested; the sampler caps it by the
    history); full: bool [G]; margins: as in StepDecision (NumPy arrays).
    """

    computed: torch.Tensor
    order: torch.Tensor
    full: torch.Tensor
    margins: dict = field(default_factory=dict)


class ReferenceFullController:
    """Every token at every step with one order: the plain DPM-Solver++ sampler."""

    def __init__(self, solver_order: int = 2):
        self.solver_order = int(solver_order)

    def start(self, sampler: "ReferenceSampler", streams: SeriesStreams) -> None:
        pass

    def plan(self, i: int, sampler: "ReferenceSampler") -> ReferencePlan:
        G, N, T = sampler.shape
        return ReferencePlan(
            computed=torch.ones((G, N, T), dtype=torch.bool),
            order=torch.full((G, N, T), self.solver_order, dtype=torch.int64),
            full=torch.ones(G, dtype=torch.bool),
        )

    def observe(self, i: int, sampler: "ReferenceSampler") -> None:
        pass


def multistep_update(x, history, lam_t, lam_hist, alpha_t, sigma_t, sigma_s, order: torch.Tensor):
    """DPM-Solver++ update with a per-step order (int64 tensor like x, already capped by the
    history): each order's update on every step, then picked per step."""
    out = dpm_solver_pp_update(x, history, lam_t, lam_hist, alpha_t, sigma_t, sigma_s, 1)
    for k in (2, 3):
        if bool((order == k).any()):
            out = torch.where(order == k, dpm_solver_pp_update(x, history, lam_t, lam_hist, alpha_t, sigma_t, sigma_s, k), out)
    return out


class ReferenceSampler:
    """The fast sampler in torch, one step at a time (docs/sampler.md).

    model: the ScoreNet; ctx: float32 [G, L, F] context features; x_T: float64 [G, N, H] (H horizon
    steps, T = H / Ph tokens of the model's horizon_patch Ph); steps: M; streams: the G series'
    random streams (dil.runtime.sampling.rng.SeriesStreams), handed to the controller at start; controller: a
    reference controller (start/plan/observe; default: every token with `solver_order`); bucket: S
    is rounded up to a multiple of it (it changes no result: padding entries are masked). Each step
    plans per token, calls `denoise` once on the computed tokens, stores the outputs in the cache,
    lets the controller adjust reused tokens' x0_hat (if it has `adjust`), updates every step with
    its token's order and lets the controller observe.
    `shape` is (G, N, T), what controllers plan on; `x` float64 [G, N, H] the noisy horizon per step
    and `x_tokens` its token values (each token's mean).
    x0_clip: the data-prediction guard of the cache (0 = off); None: the controller's settings'
    (`controller.cfg.x0_clip`), else the SamplerConfig default, as the runtime would run them.
    spacing: the step grid ("logsnr" or "time", NoiseSchedule.sampling_grid); None: the controller's
    settings' (`controller.cfg.spacing`), else the SamplerConfig default.
    hor_feat: float [G, H, Fk], the horizon steps' known features (None when the model has none);
    a computed token's input is its steps' (noisy value, features), a padding entry's all zeros.
    After a step, `last_out` (float32 [G, N, H], the network's outputs per step, eps or v) and
    `cache.k/v` hold the fresh outputs of the computed tokens, and `decisions` its StepDecision.
    """

    def __init__(self, model: ScoreNet, schedule: NoiseSchedule, ctx: np.ndarray, x_T: np.ndarray, steps: int,
                 streams: SeriesStreams, controller=None, solver_order: int = 2, bucket: int = 1,
                 x0_clip: float | None = None, hor_feat=None, spacing: str | None = None):
        self.model = model.eval()
        self.schedule = schedule
        self.steps = int(steps)
        self.bucket = int(bucket)
        if spacing is None:
            spacing = settings_spacing(getattr(controller, "cfg", None))
        self.kappas = schedule.sampling_grid(self.steps, spacing)
        f64 = lambda a: torch.tensor(np.asarray(a, dtype=np.float64), dtype=torch.float64)  # noqa: E731
        self.alphas, self.sigmas = f64(schedule.alpha(self.kappas)), f64(schedule.sigma(self.kappas))
        self.lambdas = f64(schedule.lam(self.kappas))
        cfg = model.config
        self.patch = cfg.horizon_patch
        self.t_feats = torch.from_numpy(diffusion_time_features(self.kappas, cfg.time_embed_dim).astype(np.float32))
        self.ctx = torch.from_numpy(np.ascontiguousarray(ctx, dtype=np.float32))
        self.x = torch.from_numpy(np.array(x_T, dtype=np.float64))
        G, N, H = self.x.shape
        if H % self.patch:
            raise ValueError(f"x_T has {H} horizon steps, not a multiple of the model's horizon_patch {self.patch}")
        self.shape = (G, N, H // self.patch)
        check_context(model, ctx)
        self.feat = horizon_features_tensor(model, hor_feat, G, H)
        if x0_clip is None:
            x0_clip = settings_x0_clip(getattr(controller, "cfg", None))
        # a frequency-domain model: x holds spectral coordinates from the prior G x_T (docs/frequency.md)
        self.freq = sp.is_frequency(model)
        if self.freq:
            self.x, x0_clip = self.x * sp.gains(H), sp.clip_bound(x0_clip, H)
        self.cache = ReferenceCache(cfg.num_layers, G, N, H, cfg.d_model, x0_clip, cfg.prediction, self.patch)
        self.history: list[torch.Tensor] = []  # x0 per step [G, N, H], newest first
        self.lam_hist: list[torch.Tensor] = []
        self.decisions: list[StepDecision] = []
        self.step_index = 0
        self.k_ctx = self.v_ctx = None
        self.last_out = None
        self.last_pos_sub = None
        self.controller = controller if controller is not None else ReferenceFullController(solver_order)
        if len(streams) != G:
            raise ValueError(f"got the random streams of {len(streams)} series for a batch of {G} series")
        self.controller.start(self, streams)

    @property
    def x_tokens(self) -> torch.Tensor:
        """float64 [G, N, T]: the current noisy horizon per token (the mean of its steps)."""
        return token_values(self.x, self.patch)

    @torch.no_grad()
    def encode(self):
        """Context keys/values (once per forecast): float32 [layers, G, L/P, D] each, as NumPy."""
        if self.k_ctx is None:
            self.k_ctx, self.v_ctx = self.model.encode(self.ctx)
        return self.k_ctx.numpy(), self.v_ctx.numpy()

    def max_order(self, i: int) -> int:
        """The history cap of step i (1 on the last step, to clean data)."""
        return 1 if i == self.steps - 1 else min(3, i + 1)

    @torch.no_grad()
    def step(self) -> StepDecision:
        i = self.step_index
        if i >= self.steps:
            raise RuntimeError(f"the reference sampler already took its {self.steps} steps")
        self.encode()
        G, N, _ = self.shape
        plan = self.controller.plan(i, self)
        computed = plan.computed
        pos_sub = subset_positions(computed, self.bucket)
        x_sub = self.inputs(pos_sub)
        t_feat = self.t_feats[i].expand(G, N, -1)
        hor_valid = (self.cache.valid & ~computed).to(torch.float32)
        out_sub, k_sub, v_sub = self.model.denoise(x_sub, pos_sub, t_feat, self.k_ctx, self.v_ctx,
                                                   self.cache.k, self.cache.v, hor_valid)
        alpha, sigma = self.alphas[i], self.sigmas[i]
        self.cache.store(computed, pos_sub, self.x, out_sub, k_sub, v_sub, alpha, sigma)
        self.last_out = self.cache.out.to(torch.float32)
        self.last_pos_sub = pos_sub
        if hasattr(self.controller, "adjust"):  # a controller may move reused tokens' x0_hat
            self.controller.adjust(i, self, computed)

        order = plan.order.clamp(1, self.max_order(i))
        m0 = self.cache.x0_steps
        self.history, self.lam_hist = [m0] + self.history[:2], [self.lambdas[i]] + self.lam_hist[:2]
        if i == self.steps - 1:
            self.x = m0.clone()  # the last update, to clean data (alpha = 1, sigma = 0)
        else:
            self.x = multistep_update(self.x, self.history, self.lambdas[i + 1], self.lam_hist,
                                      self.alphas[i + 1], self.sigmas[i + 1], sigma, token_steps(order, self.patch))
        lvl = getattr(self.controller, "lvl", None)
        decision = StepDecision(computed.numpy().copy(), order.numpy().copy(), plan.full.numpy().copy(), plan.margins,
                                None if lvl is None else lvl.numpy().copy())
        self.decisions.append(decision)
        self.controller.observe(i, self)
        self.step_index = i + 1
        return decision

    def inputs(self, pos_sub: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
        """x_sub float32 [G, N, S, Ph * (1 + Fk)] of the tokens pos_sub [G, N, S] (cache.token_inputs)
        at the noisy horizon x float64 [G, N, H] (default: the current one)."""
        return token_inputs(self.x if x is None else x, self.feat, pos_sub, self.patch)

    def run(self) -> np.ndarray:
        """The remaining steps; returns x0: float64 [G, N, H] on the standardised scale (in the time
        domain: a frequency-domain model's spectrum is transformed back)."""
        while self.step_index < self.steps:
            self.step()
        return (sp.from_spectrum(self.x) if self.freq else self.x).numpy()
