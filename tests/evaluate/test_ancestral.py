"""The 1000-step ancestral DDPM baseline (dil.evaluate.reference.ancestral) against an independent float64 NumPy
implementation, an exact data predictor, and the runtime's noise streams."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from dil.runtime.sampling.rng import SeriesStreams, series_stream  # noqa: E402
from dil.runtime.inputs.scaling import context_features, context_scale, standardise  # noqa: E402
from dil.runtime.sampling.schedule import NoiseSchedule, diffusion_time_features  # noqa: E402
from dil.evaluate.reference.ancestral import ancestral_forecast, ancestral_loop, ancestral_sample  # noqa: E402


def numpy_ddpm(eps_of, T: int, beta_start: float, beta_end: float, seed: int, keys, N: int, H: int):
    """Independent float64 DDPM: posterior mean in the x0 form of Ho et al. eq. (7),
    mu = sqrt(abar_{t-1}) beta_t / (1 - abar_t) x0 + sqrt(a_t) (1 - abar_{t-1}) / (1 - abar_t) x_t,
    with x0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t); t = 1..T (1-based, as in the paper)."""
    beta = np.linspace(beta_start, beta_end, T)
    a = 1.0 - beta
    abar = np.cumprod(a)
    gens = [series_stream(seed, k, "noise") for k in keys]
    x = np.stack([g.standard_normal((N, H)) for g in gens])
    for t in range(T, 0, -1):
        ab_t, ab_prev = abar[t - 1], (abar[t - 2] if t > 1 else 1.0)
        eps = eps_of(x, t - 1)
        x0 = (x - np.sqrt(1.0 - ab_t) * eps) / np.sqrt(ab_t)
        x = np.sqrt(ab_prev) * beta[t - 1] / (1.0 - ab_t) * x0 + np.sqrt(a[t - 1]) * (1.0 - ab_prev) / (1.0 - ab_t) * x
        if t > 1:
            var = (1.0 - ab_prev) / (1.0 - ab_t) * beta[t - 1]
            x = x + np.sqrt(var) * np.stack([g.standard_normal((N, H)) for g in gens])
    return x


def _ctx(tiny_config, G, seed=1):
    rng = np.random.default_rng(seed)
    raw = 5.0 + rng.standard_normal((G, tiny_config.context_length))
    loc, scale = context_scale(raw)
    return raw, context_features(standardise(raw, loc, scale))


def test_tiny_model_matches_float64_numpy(tiny_model, tiny_config):
    """A 6-step schedule (the same code path as T = 1000, every step checked) with the tiny model."""
    schedule = NoiseSchedule(num_steps=6, beta_start=0.05, beta_end=0.4)
    _, ctx = _ctx(tiny_config, 3)
    keys, N, H, E = [4, 11, 7], 5, tiny_config.horizon, tiny_config.time_embed_dim
    got = ancestral_sample(tiny_model, schedule, ctx, seed=2, keys=keys, num_samples=N)

    def eps_of(x, k):  # the network on the same inputs, in torch
        t_feat = torch.from_numpy(diffusion_time_features(np.full((3, N), float(k)), E)).float()
        with torch.no_grad():
            out = tiny_model.full_step(torch.from_numpy(ctx), torch.from_numpy(x).float()[..., None], t_feat)
        return out[..., 0].double().numpy()

    want = numpy_ddpm(eps_of, 6, 0.05, 0.4, 2, keys, N, H)
    assert got.shape == (3, N, H)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    # The network's output matters (not a pure-noise identity): a zero predictor gives other samples.
    zero = numpy_ddpm(lambda x, k: np.zeros_like(x), 6, 0.05, 0.4, 2, keys, N, H)
    assert np.abs(zero - want).max() > 1e-2


def test_exact_data_predictor_returns_the_data_after_1000_steps():
    schedule = NoiseSchedule()  # T = 1000, linear 1e-4 .. 2e-2
    data = np.random.default_rng(0).standard_normal((2, 1, 6)) * 3.0  # one clean series per row
    alpha, sigma = schedule.alpha(np.arange(1000)), schedule.sigma(np.arange(1000))
    calls = []

    def exact_eps(x, k):  # eps such that the data prediction (x - sigma eps) / alpha equals `data`
        calls.append(k)
        return (x - alpha[k] * data) / sigma[k]

    gens = [series_stream(0, k, "noise") for k in (0, 1)]
    x0 = ancestral_loop(exact_eps, schedule, gens, 4, 6)
    assert calls == list(range(999, -1, -1))
    np.testing.assert_allclose(x0, np.broadcast_to(data, (2, 4, 6)), rtol=0, atol=1e-9)


def test_noise_streams_x_T_first_and_batch_independent(tiny_model, tiny_config):
    schedule = NoiseSchedule(num_steps=4)
    seen = []

    def record(x, k):
        seen.append(x.copy())
        return np.zeros_like(x)

    ancestral_loop(record, schedule, [series_stream(9, k, "noise") for k in (3, 5)], 2, 8)
    np.testing.assert_array_equal(seen[0], SeriesStreams(9, [3, 5]).initial_noise(2, 8))  # the fast sampler's x_T

    raw, _ = _ctx(tiny_config, 3, seed=4)
    both = ancestral_forecast(tiny_model, schedule, raw, 6, seed=1, series_ids=["a", "b", "c"])
    alone = ancestral_forecast(tiny_model, schedule, raw[2:], 6, seed=1, series_ids=["c"])
    swapped = ancestral_forecast(tiny_model, schedule, raw[[2, 0]], 6, seed=1, series_ids=["c", "a"])
    np.testing.assert_allclose(alone.samples[0], both.samples[2], rtol=0, atol=1e-5)
    np.testing.assert_allclose(swapped.samples[1], both.samples[0], rtol=0, atol=1e-5)
    # Original scale = standardised scale * scale + loc.
    np.testing.assert_allclose(both.samples, both.samples_std * both.scale[:, None, None] + both.loc[:, None, None])


def test_v_model_with_features_matches_float64_numpy():
    """A v-prediction model with context patches and known features: its output v becomes
    eps = sigma_k x + alpha_k v (written out here, not through the parametrisation module)."""
    from dil.runtime.model.config import ModelConfig
    from dil.train.model import ScoreNet

    torch.manual_seed(1)
    model = ScoreNet(ModelConfig(context_length=8, horizon=4, d_model=8, num_heads=2, num_layers=1, ffn_dim=8,
                                 time_embed_dim=4, context_features=4, horizon_features=2, prediction="v",
                                 context_patch=2)).eval()
    with torch.no_grad():
        model.head.weight.normal_(0.0, 0.3)
    schedule = NoiseSchedule(num_steps=6, beta_start=0.05, beta_end=0.4)
    rng = np.random.default_rng(3)
    ctx = rng.standard_normal((2, 8, 4)).astype(np.float32)
    feat = rng.uniform(-0.5, 0.5, (2, 4, 1)).astype(np.float32)
    alpha, sigma = schedule.alpha(np.arange(6)), schedule.sigma(np.arange(6))
    got = ancestral_sample(model, schedule, ctx, seed=2, keys=[0, 1], num_samples=3, hor_feat=feat)

    def eps_of(x, k):
        t_feat = torch.from_numpy(diffusion_time_features(np.full((2, 3), float(k)), 4)).float()
        x_in = torch.cat([torch.from_numpy(x).float()[..., None],
                          torch.from_numpy(np.broadcast_to(feat[:, None], (2, 3, 4, 1)).copy())], -1)
        with torch.no_grad():
            k_ctx, v_ctx = model.encode(torch.from_numpy(ctx))
            zeros = torch.zeros(1, 2, 3, 4, 8)
            v, _, _ = model.denoise(x_in, torch.arange(4).expand(2, 3, 4), t_feat, k_ctx, v_ctx, zeros, zeros,
                                    torch.zeros(2, 3, 4))
        return sigma[k] * x + alpha[k] * v[..., 0].double().numpy()

    want = numpy_ddpm(eps_of, 6, 0.05, 0.4, 2, [0, 1], 3, 4)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="pass hor_feat"):
        ancestral_sample(model, schedule, ctx, seed=2, keys=[0, 1], num_samples=3)
