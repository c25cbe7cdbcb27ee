"""The classic diffusion-forecaster sampler: ancestral DDPM sampling over all T training steps.

This is what TimeGrad / CSDI-style forecasters run at inference (Ho et al. 2020, Algorithm 2):
for k = T-1 down to 0 (0-based; the paper's t = k + 1),

    x_{k-1} = (x_k - beta_k / sqrt(1 - abar_k) * eps_hat(x_k, k)) / sqrt(1 - beta_k) + s_k * z_k   (eq. 11)

with the posterior standard deviation s_k = sqrt(beta_tilde_k),
beta_tilde_k = (1 - abar_{k-1}) / (1 - abar_k) * beta_k (eq. 7; abar_{-1} = 1, so s_0 = 0 and the
last update adds no noise). One network evaluation per training step: T = 1000 calls of the torch
ScoreNet's `full_step` (every token recomputed), the baseline cost the fast sampler is measured
against (`reference-ddpm1000` in dil-eval and dil-bench). A v-prediction network's output is
turned into eps_hat with dil.runtime.sampling.parametrisation.to_x0_eps at step k's alpha, sigma.

Randomness comes from the runtime's per-series NumPy streams, so the result of a series does not
depend on the batch: series g draws from `series_stream(seed, key_g, "noise")` first x_T
(num_samples x H, the same values as `SeriesStreams.initial_noise`, i.e. the same x_T as the fast
sampler), then
one z_k of the same shape per step, for k = T-1 down to 1, in that order. The schedule and the time
features come from dil.runtime (one source of truth); the update is float64, the network float32.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from dil.runtime.sampling.rng import SeriesStreams, series_stream
from dil.runtime.sampling.parametrisation import to_x0_eps
from dil.runtime.inputs.scaling import unstandardise
from dil.runtime.sampling.schedule import NoiseSchedule, diffusion_time_features
from dil.train.model import ScoreNet
from dil.evaluate.reference import frequency as sp
from dil.evaluate.reference.inputs import check_context, horizon_features_tensor, network_context, standardised_contexts


@dataclass(frozen=True)
class DDPMCoefficients:
    """Per-step coefficients of eq. 11, float64 [T], indexed by k = 0..T-1.

    x_{k-1} = x_scale[k] * (x_k - eps_scale[k] * eps) + noise_std[k] * z.
    """

    x_scale: np.ndarray  # 1 / sqrt(1 - beta_k)
    eps_scale: np.ndarray  # beta_k / sqrt(1 - abar_k)
    noise_std: np.ndarray  # sqrt(beta_tilde_k), 0 at k = 0

    @classmethod
    def from_schedule(cls, schedule: NoiseSchedule) -> "DDPMCoefficients":
        betas, abar = schedule.betas, schedule.alphas_cumprod
        abar_prev = np.concatenate([[1.0], abar[:-1]])
        beta_tilde = (1.0 - abar_prev) / (1.0 - abar) * betas
        return cls(
            x_scale=1.0 / np.sqrt(1.0 - betas),
            eps_scale=betas / np.sqrt(1.0 - abar),
            noise_std=np.sqrt(beta_tilde),
        )


def ancestral_loop(eps_fn, schedule: NoiseSchedule, generators, num_samples: int, horizon: int,
                   progress=None, gains=1.0) -> np.ndarray:
    """Ancestral sampling with any noise predictor; returns x0, float64 [G, N, H].

    eps_fn(x float64 [G, N, H], k int) -> eps float [G, N, H], the predicted noise at step k.
    generators: G NumPy Generators, one per series (x_T first, then z_k for k = T-1..1).
    progress: optional callable, called with 1 after every step. gains: float [H], the scale of
    every white draw (a frequency-domain model's noise gains G, docs/frequency.md; 1 = time).
    """
    c = DDPMCoefficients.from_schedule(schedule)
    gens = list(generators)
    x = gains * np.stack([g.standard_normal((num_samples, horizon)) for g in gens])
    for k in range(schedule.num_steps - 1, -1, -1):
        eps = np.asarray(eps_fn(x, k), dtype=np.float64)
        x = c.x_scale[k] * (x - c.eps_scale[k] * eps)
        if k > 0:
            x += c.noise_std[k] * gains * np.stack([g.standard_normal((num_samples, horizon)) for g in gens])
        if progress is not None:
            progress(1)
    return x


@torch.no_grad()
def ancestral_sample(model: ScoreNet, schedule: NoiseSchedule, ctx: np.ndarray, seed: int, keys,
                     num_samples: int, progress=None, hor_feat=None) -> np.ndarray:
    """T-step ancestral sampling of the torch module. ctx: float32 [G, L, Fc] context features;
    keys: G non-negative stream keys; hor_feat: float [G, H, Fk], the horizon steps' known features
    (None when the model has none). Returns x0: float64 [G, N, H] on the standardised scale."""
    model = model.eval()
    dtype = next(model.parameters()).dtype
    cfg = model.config
    G = np.shape(ctx)[0]
    check_context(model, ctx)
    ctx_t = torch.from_numpy(np.asarray(ctx)).to(dtype)
    feat = horizon_features_tensor(model, hor_feat, G, cfg.horizon)
    feat = None if feat is None else feat.to(dtype)
    t_table = torch.from_numpy(diffusion_time_features(np.arange(schedule.num_steps), cfg.time_embed_dim)).to(dtype)
    alphas, sigmas = schedule.alpha(np.arange(schedule.num_steps)), schedule.sigma(np.arange(schedule.num_steps))

    def eps_fn(x, k):
        t_feat = t_table[k].expand(G, num_samples, -1)
        out = model.full_step(ctx_t, torch.from_numpy(x).to(dtype)[..., None], t_feat, feat)
        out = out[..., 0].to(torch.float64).numpy()
        return to_x0_eps(out, x, float(alphas[k]), float(sigmas[k]), cfg.prediction)[1]

    gens = [series_stream(seed, k, "noise") for k in keys]
    if not sp.is_frequency(model):
        return ancestral_loop(eps_fn, schedule, gens, num_samples, cfg.horizon, progress)
    # spectral coordinates: white draws scaled by G, the samples transformed back (docs/frequency.md)
    y = ancestral_loop(eps_fn, schedule, gens, num_samples, cfg.horizon, progress, sp.gains(cfg.horizon).numpy())
    return sp.from_spectrum(torch.from_numpy(y)).numpy()


@dataclass
class AncestralForecast:
    """samples_std: float64 [G, N, H] on the standardised scale; samples: the same on the original
    scale; loc, scale: float64 [G], the per-window scaling."""

    samples_std: np.ndarray
    samples: np.ndarray
    loc: np.ndarray
    scale: np.ndarray


def ancestral_forecast(model: ScoreNet, schedule: NoiseSchedule, contexts, num_samples: int, seed: int,
                       series_ids=None, progress=None, ctx_extra=None, hor_feat=None) -> AncestralForecast:
    """Forecast G context windows by T-step ancestral sampling of the torch module.

    contexts: float [G, L'] (NaN = missing; the last context_length values are used).
    seed, series_ids: the noise streams (dil.runtime.sampling.rng.SeriesStreams; keys default 0..G-1), as
    in the runtime. ctx_extra, hor_feat: a model's features, as in reference_forecast.
    """
    z, loc, scale = standardised_contexts(model, contexts)
    streams = SeriesStreams(seed, range(z.shape[0]) if series_ids is None else series_ids)
    x0 = ancestral_sample(model, schedule, network_context(model, z, ctx_extra), streams.seed, streams.keys,
                          num_samples, progress, hor_feat)
    return AncestralForecast(samples_std=x0, samples=unstandardise(x0, loc, scale), loc=loc, scale=scale)
