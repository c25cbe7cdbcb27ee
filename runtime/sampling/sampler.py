"""The sampling loop (docs/sampler.md section 2): encode once, then M denoise calls and solver updates.

Each step:
    plan   = controller.plan(i, cache)        which tokens to compute (pos_sub [G, N, S]) and the
                                              per-token solver order
    x_sub  = gather(x, hor_feat, plan.pos_sub) noisy values and known features of the computed
                                              tokens' steps (padding entries: value 0, features 0)
    out_sub, k_sub, v_sub = engine.denoise(x_sub, pos_sub, t_feat, k_ctx, v_ctx,
                                           cache.k, cache.v, cache.hor_valid(plan))
                                              (a full step, on an engine with the capability:
                                              engine.denoise_full, or engine.denoise_full_kv where
                                              a later step reads its keys/values)
    cache.store(...)                           (x0_hat, eps) = to_x0_eps(out, x, alpha, sigma,
                                              engine.config.prediction) for computed tokens,
                                              x0_hat clipped to [-x0_clip, x0_clip] (the guard);
                                              reused tokens keep their cached x0_hat
    controller.adjust(i, cache, computed)      may move reused tokens' x0_hat (core follow)
    x      = solver.step(x, cache.x0_steps, plan.order over each token's steps)
    controller.observe(i, cache)

A horizon token is the model's horizon_patch (Ph) consecutive steps: controllers, the token cache
and the engine's H axis count T = H / Ph tokens, the solver updates the H steps (docs/sampler.md).

The engine and the controller are used only through the contracts of contracts.py (`Engine`,
`Controller`). Controllers: `FullController` (every token, every step, one fixed order: the plain
DPM-Solver++ sampler) and `FastController` (lattice + E2-CRF token cache, specified in
docs/sampler.md), chosen by `make_controller(config)`. Control math is float64 NumPy, vectorised
over series, samples and tokens.
"""

from __future__ import annotations

import time
from functools import lru_cache
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from dil.runtime.model import frequency
from dil.runtime.sampling.rng import SeriesStreams
from dil.runtime.sampling.contracts import Controller, Engine, FullStepEngine, FullStepKVEngine
from dil.runtime.sampling.fast_controller import FastController
from dil.runtime.sampling.full_controller import FullController
from dil.runtime.sampling.schedule import NoiseSchedule, diffusion_time_features
from dil.runtime.sampling.solver import DPMSolverPP
from dil.runtime.sampling.stats import SamplerStats
from dil.runtime.sampling.token_cache import TokenCache

if TYPE_CHECKING:  # annotations only: SamplerConfig lives in config.py, not here
    from dil.runtime.sampling.config import SamplerConfig


def make_controller(config: SamplerConfig) -> Controller:
    """The controller a config asks for: FullController when lattice and cache are off, else the
    FastController (docs/sampler.md). Either draws what it needs from the streams given at start."""
    return FullController(config) if config.plain else FastController(config)


@dataclass
class SampleResult:
    """x0: float64 [G, N, H], the samples on the standardised scale; stats: what they cost."""

    x0: np.ndarray
    stats: SamplerStats = field(default_factory=SamplerStats)


def sample(engine: Engine, schedule: NoiseSchedule, ctx: np.ndarray, x_T: np.ndarray, config: SamplerConfig,
           streams: SeriesStreams, controller: Controller | None = None, progress=None,
           hor_feat: np.ndarray | None = None) -> SampleResult:
    """Run the sampler for G contexts and N samples each.

    engine: see contracts.Engine. ctx: float32 [G, L, Fc] context features (value, observed mask,
    known features, past-only covariates per step; L a multiple of the model's context_patch).
    x_T: float64 [G, N, H] initial noise (H steps, a multiple of the model's horizon_patch); the caller draws it from the same streams
    (streams.initial_noise(N, H)) so that a forecast can draw all its samples once and run them in
    blocks; tests may pass any x_T. streams: the G series' random streams (rng.SeriesStreams),
    handed to the controller at start. controller: decides the tokens and orders per step
    (default: make_controller(config)). progress: optional callable, called with 1 after every
    step. hor_feat: float32 [G, H, Fk], the known features of the horizon steps (the same for
    every sample of a series), Fk = the model's horizon_features - 1; None only when Fk = 0.
    Bad shapes raise ValueError before any engine call.

    A frequency-domain model (engine.config.domain, docs/frequency.md): the sampler runs on the
    horizon's spectral coordinates: its prior is G * x_T (x_T white, G = frequency.noise_gains), the
    known features enter per coordinate (frequency.to_spectrum along the horizon), the guard is the
    per-coordinate bound of the time clip (frequency.clip_bound), and SampleResult.x0 is mapped back
    to the time domain (frequency.from_spectrum): callers see time-domain samples either way.
    """
    wall0 = time.perf_counter()
    if config.num_diffusion_steps != schedule.num_steps:
        raise ValueError(f"num_diffusion_steps must equal the model's training steps ({schedule.num_steps}), "
                         f"got {config.num_diffusion_steps}")
    engine_s0, encode0, denoise0 = engine.stats.seconds, engine.stats.encode_calls, engine.stats.denoise_calls
    G, N, H = x_T.shape
    Ph = getattr(engine.config, "horizon_patch", 1)
    if H % Ph:
        raise ValueError(f"x_T has {H} horizon steps, not a multiple of the model's horizon_patch {Ph}")
    T = H // Ph
    if len(streams) != G:
        raise ValueError(f"got the random streams of {len(streams)} series for a batch of {G} series")
    cfg = engine.config
    _check_context(ctx, cfg, G)
    feat_pad = _padded_features(hor_feat, cfg, G, H, Ph)
    freq = getattr(cfg, "domain", "time") == "frequency"
    if freq and feat_pad is not None:  # Ph == 1: token t is coordinate t of every feature's trajectory
        feat_pad[:, :T, 0] = frequency.to_spectrum(feat_pad[:, :T, 0], axis=1)
    controller = controller or make_controller(config)
    solver = DPMSolverPP(schedule, config.steps, spacing=config.spacing)
    controller.start(G, N, T, solver, streams, domain="frequency" if freq else "time")
    # An engine that can keep the token cache's keys/values on its device (TensorRT with a
    # cache_update plan) does so: no per-step copy of [layers, G, N, T, D] through the host.
    device_kv = engine.device_cache(G, N, T)
    # A full step whose keys/values no later step reads runs the engine's lean full-step graph; one
    # whose keys/values the cache keeps runs its lean variant returning them, where the artifact has it.
    lean = device_kv is None and isinstance(engine, FullStepEngine) and engine.full_step
    lean_kv = device_kv is None and isinstance(engine, FullStepKVEngine) and engine.full_step_kv
    x0_clip = frequency.clip_bound(config.x0_clip, H) if freq else config.x0_clip
    cache = TokenCache(cfg.num_layers, G, N, T, cfg.d_model, keep_kv=device_kv is None, x0_clip=x0_clip,
                       prediction=getattr(cfg, "prediction", "epsilon"), patch=Ph)
    stats = SamplerStats(series=G, samples=N, steps=config.steps, full_tokens=G * N * T * config.steps)

    k_ctx, v_ctx = engine.encode(ctx)
    # One feature row per step; the same diffusion time for every (series, sample) row.
    t_table = _time_table(tuple(solver.kappas), cfg.time_embed_dim)
    x = np.array(x_T, dtype=np.float64)
    if freq:
        x *= frequency.noise_gains(H)
    x_pad = np.zeros((G, N, T + 1, Ph))  # padding entries (pos_sub == T) read a 0
    # Per-step engine inputs go into buffers made once (the features never change across steps);
    # each step writes only what changed: the diffusion time and the noisy values.
    t_feat = np.empty((G, N, t_table.shape[1]), dtype=np.float32)
    x_hor = FullInputs(feat_pad, G, N, T, Ph) if lean or lean_kv else None
    rows_tokens = G * N * T
    for i in range(config.steps):
        cache.x = x
        plan = controller.plan(i, cache)
        computed = plan.computed(T)
        if plan.pos_sub.shape[2] > 0:
            t_feat[...] = t_table[i]
            if lean and plan.full and not plan.needs_kv:  # no masks, no cache in, no keys/values out
                out_sub = engine.denoise_full(x_hor(x), t_feat, k_ctx, v_ctx)
                k_sub = v_sub = None
            elif lean_kv and plan.full:  # no masks, no cache in; keys/values out for later cached steps
                out_sub, k_sub, v_sub = engine.denoise_full_kv(x_hor(x), t_feat, k_ctx, v_ctx)
            else:
                x_pad[:, :, :T] = x.reshape(G, N, T, Ph)
                x_sub = gather_inputs(x_pad, feat_pad, plan.pos_sub)
                if device_kv is not None:  # keys/values stay on the device; only the output comes back
                    out_sub = engine.denoise_cached(x_sub, plan.pos_sub, t_feat, k_ctx, v_ctx, device_kv,
                                                    cache.hor_valid(computed))
                    k_sub = v_sub = None
                else:
                    out_sub, k_sub, v_sub = engine.denoise(
                        x_sub, plan.pos_sub, t_feat, k_ctx, v_ctx, cache.k, cache.v, cache.hor_valid(computed)
                    )
            stats.slots_computed += plan.pos_sub.size
        else:
            out_sub = k_sub = v_sub = None
        cache.store(plan, computed, x, out_sub, k_sub, v_sub, solver.alphas[i], solver.sigmas[i])
        controller.adjust(i, cache, computed)
        scalar_order = np.ndim(plan.order) == 0
        if scalar_order:  # one order for every token: the histogram needs no array
            stats.order_histogram[min(max(int(plan.order), 1), solver.max_order(i)) - 1] += rows_tokens
        else:
            _count_orders(stats, plan.order, solver.max_order(i), (G, N, T))
        order = plan.order if scalar_order else cache.steps(np.broadcast_to(plan.order, (G, N, T)))
        x = solver.step(x, cache.x0_steps, order)
        controller.observe(i, cache)
        stats.tokens_computed += rows_tokens if plan.full else int(np.count_nonzero(computed))
        stats.full_steps += int(plan.full)
        stats.series_full_steps += G if plan.full else int(np.count_nonzero(plan.series_full)) if plan.series_full is not None else 0
        if progress is not None:
            progress(1)

    for name, value in controller.counters.items():
        setattr(stats, name, value)
    stats.encode_calls = engine.stats.encode_calls - encode0
    stats.engine_calls = engine.stats.denoise_calls - denoise0
    stats.engine_seconds = engine.stats.seconds - engine_s0
    stats.wall_seconds = time.perf_counter() - wall0
    stats.control_seconds = stats.wall_seconds - stats.engine_seconds
    return SampleResult(x0=frequency.from_spectrum(x) if freq else x, stats=stats)


@lru_cache(maxsize=64)
def _time_table(kappas: tuple, dim: int) -> np.ndarray:
    """float32 [M, dim], read-only: the diffusion-time features of a grid's M times, made once per grid
    (every forecast of a model runs the same grid; control time)."""
    table = diffusion_time_features(np.array(kappas), dim).astype(np.float32)
    table.flags.writeable = False
    return table


def _check_context(ctx, cfg, G: int) -> None:
    """ValueError unless ctx is [G, L, Fc] with L a multiple of the model's context_patch. Checked
    where the engine's config says (test engines may carry a partial config)."""
    shape = np.shape(ctx)
    Fc, P = getattr(cfg, "context_features", None), getattr(cfg, "context_patch", 1)
    if len(shape) != 3 or shape[0] != G or (Fc is not None and shape[2] != Fc):
        want = "Fc" if Fc is None else Fc
        raise ValueError(f"ctx has shape {list(shape)}, expected [G, L, Fc] = [{G}, L, {want}]")
    if shape[1] < 1 or shape[1] % P:
        raise ValueError(f"the context length {shape[1]} is not a positive multiple of the model's context_patch {P}")


def _padded_features(hor_feat, cfg, G: int, H: int, Ph: int = 1) -> np.ndarray | None:
    """float32 [G, T + 1, Ph, Fk]: hor_feat per token (T = H / Ph) with a zero token at position T
    (what padding entries read);
    None for a model without known features. ValueError (one line) for a missing or misshapen
    hor_feat, or non-finite values."""
    Fk = getattr(cfg, "horizon_features", 1) - 1
    if hor_feat is None:
        if Fk:
            raise ValueError(f"the model takes {Fk} known features per horizon step: pass hor_feat [G, H, Fk] = "
                             f"[{G}, {H}, {Fk}]")
        return None
    feat = np.asarray(hor_feat)
    if feat.shape != (G, H, Fk):
        raise ValueError(f"hor_feat has shape {list(feat.shape)}, expected [G, H, Fk] = [{G}, {H}, {Fk}] "
                         f"(Fk = the model's horizon_features - 1)")
    if not np.isfinite(feat).all():
        raise ValueError("hor_feat has NaN or infinite values: known features must be given for every horizon step")
    if Fk == 0:
        return None
    T = H // Ph
    pad = np.zeros((G, T + 1, Ph, Fk), dtype=np.float32)
    pad[:, :T] = feat.reshape(G, T, Ph, Fk)
    return pad


def gather_inputs(x_pad: np.ndarray, feat_pad: np.ndarray | None, pos_sub: np.ndarray) -> np.ndarray:
    """x_sub f32 [G, N, S, Ph * (1 + Fk)]: per token of pos_sub [G, N, S], its Ph steps' noisy
    values x_pad [G, N, T + 1, Ph] (float64, 0 at token T) and known features feat_pad
    [G, T + 1, Ph, Fk] (None: Fk = 0), step-major (step 0's value and features, then step 1's, ...)."""
    G, N, S = pos_sub.shape
    Ph = x_pad.shape[3]
    values = np.take_along_axis(x_pad, pos_sub[..., None], axis=2)[..., None].astype(np.float32)  # [G, N, S, Ph, 1]
    if feat_pad is not None:
        feats = feat_pad[np.arange(G)[:, None, None], pos_sub]  # [G, N, S, Ph, Fk]
        values = np.concatenate([values, feats], axis=-1)
    return values.reshape(G, N, S, Ph * values.shape[-1])


class FullInputs:
    """The lean graph's x_hor f32 [G, N, T, Ph * (1 + Fk)] (what gather_inputs gives for pos_sub =
    arange(T) in every row, bit for bit) in one buffer: the known features are written once, each call writes the noisy values of x
    float64 [G, N, T * Ph] (cast to float32) into it and returns the buffer (valid until the next
    call; engines read their inputs during the call)."""

    def __init__(self, feat_pad: np.ndarray | None, G: int, N: int, T: int, Ph: int):
        Fk = 0 if feat_pad is None else feat_pad.shape[3]
        self._buf = np.zeros((G, N, T, Ph, 1 + Fk), dtype=np.float32)
        if Fk:
            self._buf[..., 1:] = feat_pad[:, None, :T]
        self._values = self._buf[..., 0]  # [G, N, T, Ph] view
        self._x_hor = self._buf.reshape(G, N, T, Ph * (1 + Fk))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        self._values[...] = x.reshape(self._values.shape)
        return self._x_hor


def _count_orders(stats: SamplerStats, order, cap: int, shape) -> None:
    """Add one step's effective orders (clipped to the solver's cap) to the order histogram."""
    if np.ndim(order) == 0:
        stats.order_histogram[min(max(int(order), 1), cap) - 1] += int(np.prod(shape))
        return
    counts = np.bincount(np.clip(np.broadcast_to(order, shape), 1, cap).ravel(), minlength=4)
    for k in range(3):
        stats.order_histogram[k] += int(counts[k + 1])
