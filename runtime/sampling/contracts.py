"""What the sampler needs from an engine and from a controller, written down as typing Protocols.

`dil.runtime.sampling.sampler.sample` calls nothing else: any object with these members works
(OnnxEngine, TrtEngine, the validation's lockstep engine; FullController, FastController, the
validation's recording controller). `isinstance(x, Engine)` checks that the members exist.
`FullStepEngine` and `FullStepKVEngine` are optional capabilities on top of Engine (OnnxEngine has
them; TrtEngine not).

Shapes: G series, N samples per series, H horizon tokens, S computed tokens per row (padding
entries have position H), L context steps, P = context_patch (context steps per context token),
Lp = L / P context tokens, Fc = context_features (per step), Fh = horizon_features = 1 + Fk,
D = d_model, E = time_embed_dim, layers = num_layers.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np

from dil.runtime.model.config import ModelConfig
from dil.runtime.sampling.rng import SeriesStreams
from dil.runtime.sampling.solver import DPMSolverPP
from dil.runtime.sampling.step_plan import StepPlan
from dil.runtime.sampling.token_cache import TokenCache


class CallStats(Protocol):
    """An engine's running totals; the sampler reports the difference over one forecast."""

    encode_calls: int
    denoise_calls: int
    seconds: float  # inside the engine's graph runs


@runtime_checkable
class Engine(Protocol):
    """The two graphs of an artifact. config: the model (num_layers, d_model, time_embed_dim,
    prediction, context_patch, horizon_features, ...). max_batch: the most series one call may
    carry (a TensorRT profile's G max), None without limit. call_tokens: the most token rows
    (series x samples x horizon tokens) one call should carry for speed (an engine on the CPU:
    chunks.CPU_CALL_TOKENS), None without limit."""

    config: ModelConfig
    stats: CallStats
    max_batch: int | None
    call_tokens: int | None

    def encode(self, ctx: np.ndarray) -> tuple[Any, Any]:
        """ctx f32 [G, L, Fc] (L a multiple of P) -> (k_ctx, v_ctx) [layers, G, Lp, D], in whatever
        form denoise takes back. The graph groups P consecutive steps into one context token."""

    def denoise(self, x_sub, pos_sub, t_feat, k_ctx, v_ctx, k_hor, v_hor, hor_valid) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """x_sub f32 [G, N, S, Fh] (x_sub[..., 0] the noisy value, x_sub[..., 1:] the token's Fk
        known features; padding entries all 0), pos_sub i64 [G, N, S], t_feat f32 [G, N, E],
        k_hor/v_hor f32 [layers, G, N, H, D], hor_valid f32 [G, N, H] -> out_sub f32 [G, N, S, 1]
        (eps or v as config.prediction says; the graph output keeps the name eps_sub),
        k_sub/v_sub f32 [layers, G, N, S, D]."""

    def device_cache(self, G: int, N: int, H: int) -> Any | None:
        """A zeroed token cache for G x N x H tokens kept inside the engine (TensorRT: on the GPU),
        or None when the engine keeps none (the sampler then holds keys/values on the host)."""

    def denoise_cached(self, x_sub, pos_sub, t_feat, k_ctx, v_ctx, cache: Any, hor_valid) -> np.ndarray:
        """denoise attending to `cache` (from device_cache), whose computed tokens' keys/values the
        engine then updates itself; returns out_sub f32 [G, N, S, 1] (eps or v). Called only with a cache."""


@runtime_checkable
class FullStepEngine(Engine, Protocol):
    """An Engine that can also run a full step lean (docs/architecture.md section 4): every horizon
    token of every row, no token cache in, no keys/values out. Optional: the sampler uses it where
    `isinstance(engine, FullStepEngine) and engine.full_step` and the step's plan is full and needs
    no keys/values (StepPlan.needs_kv False), else `denoise`. full_step: False when the capability
    is declared but this artifact lacks the graph (one exported before it existed)."""

    full_step: bool

    def denoise_full(self, x_hor, t_feat, k_ctx, v_ctx) -> np.ndarray:
        """x_hor f32 [G, N, T, Ph * Fh] (token t's steps' noisy values and known features, token t at
        position t), t_feat f32 [G, N, E], k_ctx/v_ctx from encode -> out f32 [G, N, T, Ph] (eps or
        v), equal to denoise's out_sub with pos_sub = arange(T) and hor_valid all 0."""


@runtime_checkable
class FullStepKVEngine(FullStepEngine, Protocol):
    """A FullStepEngine whose lean full step can also return the tokens' keys/values. Optional: the
    sampler uses it where `isinstance(engine, FullStepKVEngine) and engine.full_step_kv` and a full
    step's plan needs keys/values (the fast sampler's full steps, whose keys/values its later cached
    steps attend to), else `denoise`. full_step_kv: False when this artifact lacks the graph."""

    full_step_kv: bool

    def denoise_full_kv(self, x_hor, t_feat, k_ctx, v_ctx) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """denoise_full's inputs -> (out f32 [G, N, T, Ph], k, v f32 [layers, G, N, T, D]), equal to
        denoise's (out_sub, k_sub, v_sub) with pos_sub = arange(T) and hor_valid all 0."""


@runtime_checkable
class Controller(Protocol):
    """Decides per step which tokens the network computes and each token's solver order.

    counters: name -> count of the forecast's events (probes, refinements, merges: SamplerStats
    fields), read after the last step.
    """

    counters: dict[str, int]

    def start(self, G: int, N: int, H: int, solver: DPMSolverPP, streams: SeriesStreams, domain: str = "time") -> None:
        """A new forecast of G series x N samples x H tokens; streams: its G series' random streams.
        domain: the model's ("frequency": tokens are spectral coordinates, docs/frequency.md); the
        sampler passes it only for a frequency-domain model."""

    def plan(self, i: int, cache: TokenCache) -> StepPlan:
        """Step i's plan, from what the cache holds after step i-1 and the noisy horizon cache.x."""

    def adjust(self, i: int, cache: TokenCache, computed: np.ndarray) -> None:
        """After step i's outputs are stored, before the solver update: may move reused tokens' x0_hat."""

    def observe(self, i: int, cache: TokenCache) -> None:
        """After step i's solver update: feedback for the next plan."""
