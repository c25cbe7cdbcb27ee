"""PyTorch reference of the runtime sampler (DESIGN section 9).

Calls the torch ScoreNet directly (`full_step`: every token, every step), draws its noise from the
same NumPy streams as the runtime (dil.runtime.rng) and takes the schedule, time features and scaling
from dil.runtime (one source of truth). The DPM-Solver++ update is written here again, independently
of dil.runtime.solver, in torch float64 and in the paper's own form, so that the runtime is checked
against a second implementation rather than against itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from dil.runtime.rng import initial_noise, series_key
from dil.runtime.scaling import context_features, context_scale, standardise, unstandardise
from dil.runtime.schedule import NoiseSchedule, diffusion_time_features
from dil.train.model import ScoreNet


@dataclass
class ReferenceForecast:
    """samples_std: float64 [G, N, H] on the standardised scale; samples: the same on the original
    scale; loc, scale: float64 [G], the per-window scaling."""

    samples_std: np.ndarray
    samples: np.ndarray
    loc: np.ndarray
    scale: np.ndarray


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
                     solver_order: int = 2) -> np.ndarray:
    """The plain sampler in torch. ctx: float32 [G, L, 2] context features; x_T: float64 [G, N, H].
    Returns x0: float64 [G, N, H] on the standardised scale."""
    model = model.eval()
    dtype = next(model.parameters()).dtype
    G, N, H = x_T.shape
    kappas = schedule.sampling_grid(steps)
    f64 = lambda a: torch.tensor(np.asarray(a, dtype=np.float64), dtype=torch.float64)  # noqa: E731
    alphas, sigmas, lambdas = f64(schedule.alpha(kappas)), f64(schedule.sigma(kappas)), f64(schedule.lam(kappas))
    t_feats = torch.from_numpy(diffusion_time_features(kappas, model.config.time_embed_dim)).to(dtype)
    ctx_t = torch.from_numpy(np.asarray(ctx)).to(dtype)
    x = torch.from_numpy(np.array(x_T, dtype=np.float64))
    history, lam_hist = [], []
    for i in range(steps):
        t_feat = t_feats[i].expand(G, N, -1)
        eps = model.full_step(ctx_t, x.to(dtype)[..., None], t_feat)[..., 0].to(torch.float64)
        x0 = (x - sigmas[i] * eps) / alphas[i]
        history, lam_hist = [x0] + history[:2], [lambdas[i]] + lam_hist[:2]
        if i == steps - 1:
            x = x0  # last update to clean data: alpha = 1, sigma = 0
            break
        order = min(solver_order, i + 1)
        x = dpm_solver_pp_update(x, history, lambdas[i + 1], lam_hist, alphas[i + 1], sigmas[i + 1], sigmas[i], order)
    return x.numpy()


def reference_forecast(model: ScoreNet, schedule: NoiseSchedule, contexts, num_samples: int, steps: int,
                       seed: int = 0, series_keys=None, solver_order: int = 2) -> ReferenceForecast:
    """Forecast G context windows with the torch module and the torch solver.

    contexts: float [G, L'] (NaN = missing; the last context_length values are used);
    series_keys: G series names/keys for the noise streams (default 0..G-1), as in the runtime.
    """
    L = model.config.context_length
    ctx = np.ascontiguousarray(np.asarray(contexts, dtype=np.float64)[:, -L:])
    G = ctx.shape[0]
    keys = list(range(G)) if series_keys is None else [series_key(k) for k in series_keys]
    loc, scale = context_scale(ctx)
    z = standardise(ctx, loc, scale)
    x_T = initial_noise(seed, keys, num_samples, model.config.horizon)
    x0 = reference_sample(model, schedule, context_features(z), x_T, steps, solver_order)
    return ReferenceForecast(samples_std=x0, samples=unstandardise(x0, loc, scale), loc=loc, scale=scale)
