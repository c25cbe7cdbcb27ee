"""The frequency domain in the runtime and the training data (docs/frequency.md), checked against
the time domain: noising the spectrum with the gains is noising in time, the loss weights give the
time-domain loss, an exact Gaussian denoiser samples the same forecast in either domain, and the
controller's core is the K lowest frequencies."""

from __future__ import annotations

import numpy as np
import pytest

from dil.runtime.model import frequency as sp
from dil.runtime.backends.onnx_engine import EngineStats
from dil.runtime.model.config import ModelConfig
from dil.runtime.sampling.rng import SeriesStreams
from dil.runtime.sampling.config import SamplerConfig
from dil.runtime.sampling.fast_controller import FastController
from dil.runtime.sampling.sampler import sample
from dil.runtime.sampling.schedule import NoiseSchedule
from dil.runtime.sampling.solver import DPMSolverPP

SCH = NoiseSchedule()


def _spectral_matrix(H: int) -> np.ndarray:
    """A [H, H] with y = A x (to_spectrum is linear); A A^T = diag(G^2)."""
    return sp.to_spectrum(np.eye(H)).T


def test_model_config_domain_rules():
    assert ModelConfig().domain == "time"
    assert ModelConfig.from_dict({k: v for k, v in ModelConfig().to_dict().items() if k != "domain"}).domain == "time"
    with pytest.raises(ValueError, match="--domain must be time or frequency"):
        ModelConfig(domain="wavelet")
    with pytest.raises(ValueError, match="--domain frequency needs a horizon of at least 2"):
        ModelConfig(horizon=1, domain="frequency")
    with pytest.raises(ValueError, match="--horizon-patch must be 1 with --domain frequency"):
        ModelConfig(horizon=24, horizon_patch=4, domain="frequency")


@pytest.mark.parametrize("H", [6, 7])
def test_spectral_noising_is_time_noising(H):
    """draw_noise with the gains: the inverse transform of the noisy spectrum is the time target
    noised with white noise (the same alpha, sigma), and the epsilon/v targets are in y units."""
    from dil.train.dataset import draw_noise

    target_time = np.random.default_rng(0).standard_normal((3, H))
    y0 = sp.to_spectrum(target_time)
    G = sp.noise_gains(H)
    draw = draw_noise(np.random.default_rng(1), SCH, y0, 40_000, 8, "v", gains=G)
    alpha, sigma = SCH.alpha(draw.k)[..., None], SCH.sigma(draw.k)[..., None]
    noise_time = (sp.from_spectrum(draw.x.astype(np.float64)) - alpha * target_time[:, None]) / sigma
    assert np.allclose(np.cov(noise_time.reshape(-1, H).T), np.eye(H), atol=0.02)  # white, variance 1
    v = alpha * draw.eps.astype(np.float64) - sigma * y0[:, None]
    assert np.allclose(draw.net_target, v, atol=1e-5)
    # the same draws of the generator as the time domain: eps is the white draw times G
    white = draw_noise(np.random.default_rng(1), SCH, y0, 40_000, 8, "v")
    assert np.allclose(draw.eps, white.eps * G, atol=1e-6)


def test_frequency_windows_and_loss_weights():
    """A frequency WindowSet's batch is the time batch's spectrum; its loss weights 1/G^2 make the
    masked loss the time-domain loss (up to the constant H / sum(1/G^2))."""
    from dil.train.dataset import WindowSet

    rng = np.random.default_rng(2)
    values = 10 + rng.standard_normal((300, 2)).cumsum(axis=0)
    values[40, 0] = np.nan  # a missing target step: not a frequency-domain window
    L, H = 24, 9
    time = WindowSet(values, L, H, 0, 300, domain="time")
    freq = WindowSet(values, L, H, 0, 300, domain="frequency")
    assert len(freq) == len(time) - H  # the windows with row 40 in their target are dropped
    keep = np.isin(time.origins * 2 + time.channels, freq.origins * 2 + freq.channels)
    t_batch = time.batch(np.flatnonzero(keep)[:16])
    f_batch = freq.batch(np.arange(16))
    np.testing.assert_allclose(sp.from_spectrum(f_batch.target), t_batch.target, atol=1e-5)
    np.testing.assert_allclose(f_batch.gains, sp.noise_gains(H))
    out = rng.standard_normal(f_batch.target.shape)  # any network output
    freq_loss = (f_batch.mask * (out - f_batch.target) ** 2).sum() / f_batch.mask.sum()
    time_loss = ((sp.from_spectrum(out) - t_batch.target) ** 2).mean()
    assert freq_loss == pytest.approx(time_loss * H / np.sum(1 / sp.noise_gains(H) ** 2), rel=1e-5)


class _GaussianOracle:
    """An exact denoiser of Gaussian data x0 ~ N(mu, S) (time domain), in either domain: it returns
    eps = (x - alpha E[x0 | x]) / sigma, in the frequency domain for y = A x with noise G eps."""

    def __init__(self, mu, S, steps, domain):
        H = len(mu)
        self.mu, self.S, self.A, self.kappas = mu, S, _spectral_matrix(H), SCH.sampling_grid(steps)
        self.config = ModelConfig(context_length=3, horizon=H, d_model=4, num_heads=1, num_layers=1, ffn_dim=4,
                                  time_embed_dim=4, domain=domain)
        self.stats, self.call, self.max_batch = EngineStats(), 0, None

    def device_cache(self, G, N, H):
        return None

    def encode(self, ctx):
        z = np.zeros((1, ctx.shape[0], ctx.shape[1], 4), np.float32)
        return z, z

    def denoise(self, x_sub, pos_sub, t_feat, k_ctx, v_ctx, k_hor, v_hor, hor_valid):
        k = self.kappas[self.call]
        self.call += 1
        a, s = SCH.alpha(k), SCH.sigma(k)
        x = x_sub[..., 0].astype(np.float64)
        freq = self.config.domain == "frequency"
        xt = x @ np.linalg.inv(self.A).T if freq else x  # the time-domain noisy value
        H = len(self.mu)
        gain = np.linalg.inv(a * a * self.S + s * s * np.eye(H))
        x0 = self.mu + (xt - a * self.mu) @ (a * self.S @ gain).T
        if freq:
            x0 = x0 @ self.A.T
        eps = (x - a * x0) / s
        shape = (1,) + pos_sub.shape + (4,)
        return eps[..., None].astype(np.float32), np.zeros(shape, np.float32), np.zeros(shape, np.float32)


@pytest.mark.parametrize("H", [8, 9])
def test_exact_denoiser_samples_the_same_forecast_in_either_domain(H):
    """The probability-flow ODE commutes with the linear map: the frequency sampler from the prior
    G e gives the time sampler's result from the prior from_spectrum(G e), both float64 solvers."""
    rng = np.random.default_rng(H)
    B = rng.standard_normal((H, H))
    mu, S = rng.standard_normal(H), B @ B.T / H + 0.1 * np.eye(H)
    steps, G, N = 12, 2, 5
    e = rng.standard_normal((G, N, H))
    config = SamplerConfig(steps=steps, lattice=False, cache=False, x0_clip=0.0)
    ctx = np.zeros((G, 3, 2), np.float32)
    freq = sample(_GaussianOracle(mu, S, steps, "frequency"), SCH, ctx, e, config, SeriesStreams(0, range(G))).x0
    time = sample(_GaussianOracle(mu, S, steps, "time"), SCH, ctx, sp.from_spectrum(sp.noise_gains(H) * e), config,
                  SeriesStreams(0, range(G))).x0
    np.testing.assert_allclose(freq, time, atol=2e-5)  # float32 network inputs and outputs
    # without the gains on the prior the spectral run would be another forecast
    wrong = sample(_GaussianOracle(mu, S, steps, "time"), SCH, ctx, sp.from_spectrum(e), config,
                   SeriesStreams(0, range(G))).x0
    assert np.abs(wrong - freq).max() > 1e-2


def test_fast_controller_core_is_the_lowest_frequencies():
    H = 10
    ctl = FastController(SamplerConfig(steps=4, K=3))
    ctl.start(1, 2, H, DPMSolverPP(SCH, 4), SeriesStreams(0, [0]), domain="frequency")
    assert sorted(ctl.core.tolist()) == [0, 1, 2, 6, 7]
    assert ctl.follow_weights is None  # core follow interpolates in time: off
    ctl.start(1, 2, H, DPMSolverPP(SCH, 4), SeriesStreams(0, [0]))
    assert ctl.core.tolist() == [1, 5, 8]  # time: segment centres
