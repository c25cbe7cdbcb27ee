"""The data-prediction guard (`x0_clip`, docs/sampler.md section 2): its formula in float64 NumPy,
its effect on a hand-made high-noise error, the guard-off setting as the unguarded sampler bit for
bit, and the runtime and the PyTorch reference applying it identically where it binds."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from dil.runtime.sampling.rng import SeriesStreams
from dil.runtime.sampling.config import X0_CLIP_DEFAULT, SamplerConfig, sampler_config
from dil.runtime.sampling.sampler import sample
from dil.runtime.sampling.schedule import NoiseSchedule, diffusion_time_features
from dil.runtime.sampling.solver import DPMSolverPP
from dil.runtime.sampling.parametrisation import clip_x0

STEPS, H, N = 10, 8, 4
BAD = (0, 1, 2)  # (series, sample, token) whose eps is wrong at the highest noise levels
PLAIN = dict(lattice=False, cache=False)
# (settings, wrong steps, eps error): at kappa = 999, sigma / alpha = 157, so an eps error of -8 puts
# x0_hat about +1260 standard deviations out. On the default (logsnr) grid, where consecutive lambda
# steps are equal (r = 1), 2M's multistep difference over-corrects a one-step error: the unguarded
# sample ends on the other side (about -11 for an error of -20; a two-step error, as the shipped
# network's in benchmarks/x0_error.py trajectories, largely cancels there), so 2M gets a larger one.
CASES = {"plain DDIM": ({**PLAIN, "solver_order": 1}, 1, -8.0), "plain 2M": (PLAIN, 1, -20.0), "fast": ({}, 1, -8.0)}


class GaussianEngine:
    """An engine (contracts.Engine) whose network is the exact noise prediction of data x0 ~ N(0, 1)
    per token: eps_hat = sigma * x, so x0_hat = alpha x; `error` is added to eps_hat of token BAD
    at the first `wrong_steps` evaluation times (the highest noise levels)."""

    max_batch = None

    def __init__(self, schedule: NoiseSchedule, steps: int, error: float = 0.0, wrong_steps: int = 1):
        self.wrong_steps = wrong_steps
        self.config = SimpleNamespace(num_layers=1, d_model=2, time_embed_dim=8)
        self.stats = SimpleNamespace(encode_calls=0, denoise_calls=0, seconds=0.0)
        self.kappas = schedule.sampling_grid(steps)
        self.sigmas = schedule.sigma(self.kappas)
        self.t_table = diffusion_time_features(self.kappas, 8).astype(np.float32)
        self.error = error

    def encode(self, ctx):
        self.stats.encode_calls += 1
        return None, None

    def device_cache(self, G, N, H):
        return None

    def denoise(self, x_sub, pos_sub, t_feat, k_ctx, v_ctx, k_hor, v_hor, hor_valid):
        self.stats.denoise_calls += 1
        i = int(np.abs(self.t_table - t_feat[0, 0]).sum(axis=1).argmin())  # which step this is
        eps = self.sigmas[i] * x_sub.astype(np.float64)
        if i < self.wrong_steps:
            g, n, h = BAD
            eps[g, n, pos_sub[g, n] == h] += self.error
        kv = np.zeros((1,) + pos_sub.shape + (2,), dtype=np.float32)
        return eps.astype(np.float32), kv, kv


def run(error: float, wrong_steps: int = 1, **settings) -> np.ndarray:
    schedule = NoiseSchedule()
    streams = SeriesStreams(0, [0, 1])
    x_T = streams.initial_noise(N, H)
    ctx = np.zeros((2, 4, 2), dtype=np.float32)
    config = SamplerConfig(steps=STEPS, **settings)
    return sample(GaussianEngine(schedule, STEPS, error, wrong_steps), schedule, ctx, x_T, config, streams).x0


def test_clip_formula_in_float64():
    """clip_x0 against min(max(v, -c), c) written out; x0_clip = 0 returns its input untouched."""
    v = np.array([-1e6, -6.000000001, -6.0, -5.999, -0.25, 0.0, 3.5, 6.0, 6.5, 812.25])
    want = np.array([max(min(a, 6.0), -6.0) for a in v.tolist()])
    np.testing.assert_array_equal(clip_x0(v, 6.0), want)
    assert clip_x0(v, 0.0) is v


def test_torch_reference_guard_is_the_same_formula():
    torch = pytest.importorskip("torch")
    from dil.evaluate.reference.sampler import guard_x0

    v = np.random.default_rng(1).standard_normal(200) * 20
    np.testing.assert_array_equal(guard_x0(torch.from_numpy(v), 4.5).numpy(), clip_x0(v, 4.5))
    np.testing.assert_array_equal(guard_x0(torch.from_numpy(v), 0.0).numpy(), v)


@pytest.mark.parametrize("case", list(CASES))
def test_high_noise_error_leaves_the_range_without_the_guard_only(case):
    """A wrong eps at the highest noise puts x0_hat ~1000 out. Without the guard the solver writes
    it into x and the sample ends beyond the clip; with the default guard every sample stays inside
    and within 0.2 of the error-free one (the error is gone, not merely cut at the end)."""
    settings, wrong_steps, error = CASES[case]
    clean = run(0.0, **settings)
    off = run(error, wrong_steps, x0_clip=0.0, **settings)
    guarded = run(error, wrong_steps, **settings)  # the default settings
    c = X0_CLIP_DEFAULT
    assert np.abs(clean).max() < c
    assert abs(off[BAD]) > c + 1.0 and abs(off[BAD] - clean[BAD]) > 5.0
    assert np.abs(guarded).max() <= c
    assert np.abs(guarded - clean).max() < 0.2


def test_guard_off_is_the_unguarded_solver_bit_for_bit():
    """x0_clip = 0: the plain sampler is DPM-Solver++ on x0_hat = (x - sigma eps) / alpha, no clip,
    bit for bit (a loop written here against the solver alone), even with the far-out error."""
    schedule = NoiseSchedule()
    settings, wrong_steps, error = CASES["plain 2M"]
    engine = GaussianEngine(schedule, STEPS, error, wrong_steps)
    x = SeriesStreams(0, [0, 1]).initial_noise(N, H)
    solver = DPMSolverPP(schedule, STEPS)
    pos = np.broadcast_to(np.arange(H), x.shape)
    for i in range(STEPS):
        t = np.broadcast_to(engine.t_table[i], (2, N, 8))
        eps = engine.denoise(x[..., None].astype(np.float32), pos, t, None, None, None, None, None)[0][..., 0]
        x0_hat = (x - solver.sigmas[i] * eps.astype(np.float64)) / solver.alphas[i]
        x = solver.step(x, x0_hat, 2)
    np.testing.assert_array_equal(run(error, wrong_steps, x0_clip=0.0, **settings), x)
    assert np.abs(x).max() > X0_CLIP_DEFAULT  # the case the guard is for


def test_guard_off_fast_sampler_equals_a_clip_that_never_binds():
    """With every x0_hat inside [-1000, 1000], x0_clip = 1000 and x0_clip = 0 run the same numbers
    (np.clip is exact inside its range), decisions included."""
    np.testing.assert_array_equal(run(0.0, x0_clip=0.0), run(0.0, x0_clip=1000.0))


def test_setting_range_and_merge():
    assert SamplerConfig().x0_clip == X0_CLIP_DEFAULT
    assert sampler_config(None, x0_clip=None).x0_clip == X0_CLIP_DEFAULT  # an option left unset
    assert sampler_config(None, x0_clip=0).x0_clip == 0
    for bad in (0.5, -3.0, 1001.0, float("nan"), float("inf"), True, "6"):
        with pytest.raises(ValueError, match=r"x0_clip must be 0 \(off\) or a number in \[1, 1000\], got"):
            SamplerConfig(x0_clip=bad)


CLIP = 50.0  # binds on part of the tiny model's data predictions (its untrained x0_hat reach ~400)
# Partial steps on the tiny model (H = 8): a small core, no change-triggered or fallback full steps.
FAST_PARTIAL = dict(K=2, bucket=1, max_age=2, tau_0=1000.0, tau_warn=1000.0, probe_warn=1000.0, full_fraction=1.0,
                    R=1000, final_full=False)


@pytest.mark.parametrize("fast", [False, True], ids=["plain", "fast"])
def test_runtime_and_reference_clip_alike_where_it_binds(tiny_artifact, tiny_model, tiny_config, fast):
    """The Forecaster (ONNX Runtime) and reference_forecast (torch) with the same x0_clip agree within
    1e-4 on samples of which some lie on the clip and some inside it."""
    pytest.importorskip("torch")
    from dil.evaluate.reference.sampler import reference_forecast
    from dil.runtime import Forecaster

    rng = np.random.default_rng(11)
    ctx = 5.0 + rng.standard_normal((3, tiny_config.context_length)).cumsum(axis=1)
    keys = ["north", "south", 7]
    config = SamplerConfig(steps=6, x0_clip=CLIP, **(FAST_PARTIAL if fast else PLAIN))
    rt = Forecaster.load(tiny_artifact, threads=1).predict_windows(ctx, 8, seed=5, series_ids=keys, config=config)
    if fast:
        ref = reference_forecast(tiny_model, NoiseSchedule(), ctx, 8, 6, seed=5, series_ids=keys, config=config)
        assert rt.stats.token_fraction < 1.0
    else:
        ref = reference_forecast(tiny_model, NoiseSchedule(), ctx, 8, 6, seed=5, series_ids=keys, x0_clip=CLIP)
    z = rt.standardised()
    on_clip = np.isclose(np.abs(ref.samples_std), CLIP, rtol=0, atol=1e-9)
    assert on_clip.any() and (np.abs(ref.samples_std) < CLIP - 1.0).any()
    assert np.abs(ref.samples_std).max() <= CLIP
    assert np.abs(z - ref.samples_std).max() <= 1e-4


def test_dil_run_exposes_the_setting():
    from dil.runtime.cli.options import ADVANCED_SAMPLER_OPTIONS as SAMPLER_OPTIONS

    assert ("--x0-clip", "x0_clip") in [(flag, name) for flag, name, _, _ in SAMPLER_OPTIONS]
