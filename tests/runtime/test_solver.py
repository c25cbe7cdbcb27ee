"""DPM-Solver++ multistep (runtime/sampling/solver.py) against float64 hand computations and known solutions."""

from __future__ import annotations

import numpy as np
import pytest

from dil.runtime.model.config import ModelConfig
from dil.runtime.backends.onnx_engine import EngineStats
from dil.runtime.sampling.rng import SeriesStreams
from dil.runtime.sampling.config import SamplerConfig
from dil.runtime.sampling.contracts import Engine
from dil.runtime.sampling.sampler import sample
from dil.runtime.sampling.schedule import NoiseSchedule
from dil.runtime.sampling.solver import DPMSolverPP

SCH = NoiseSchedule()
S_DATA = 0.5  # std of the Gaussian toy data below


def _gauss_x0(x, kappa):
    """Exact x0_hat = E[x0 | x_t] for data ~ N(0, S_DATA^2)."""
    a, s = SCH.alpha(kappa), SCH.sigma(kappa)
    return a * S_DATA**2 / (a**2 * S_DATA**2 + s**2) * x


def _gauss_flow(x_start, k_start, k):
    """Exact probability-flow ODE solution for Gaussian data: x scales with the marginal std."""
    std = lambda kk: np.sqrt(SCH.alpha(kk) ** 2 * S_DATA**2 + SCH.sigma(kk) ** 2)  # noqa: E731
    return x_start * std(k) / std(k_start)


def test_order1_is_ddim_in_x0_form():
    rng = np.random.default_rng(0)
    steps = 7
    sol = DPMSolverPP(SCH, steps)
    x = rng.standard_normal((2, 3, 5))
    for i, k in enumerate(SCH.sampling_grid(steps)):
        x0 = rng.standard_normal(x.shape)
        k_next = SCH.sampling_grid(steps)[i + 1] if i + 1 < steps else None
        got = sol.step(x, x0, order=1)
        if k_next is None:
            want = x0  # to clean data
        else:  # DDIM (eta = 0): x_t = alpha_t x0 + sigma_t eps_hat, eps_hat = (x_s - alpha_s x0) / sigma_s
            eps = (x - SCH.alpha(k) * x0) / SCH.sigma(k)
            want = SCH.alpha(k_next) * x0 + SCH.sigma(k_next) * eps
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
        x = got


def test_order2_matches_algorithm_2_by_hand():
    rng = np.random.default_rng(1)
    steps = 6
    k = SCH.sampling_grid(steps)
    lam = SCH.lam(k)
    sol = DPMSolverPP(SCH, steps)
    x = rng.standard_normal(10)
    m_prev = rng.standard_normal(10)
    x = sol.step(x, m_prev, order=2)  # first step: order 1 (no history)
    m = rng.standard_normal(10)
    got = sol.step(x, m, order=2)
    # Alg. 2 with i = 2: h = lambda_2 - lambda_1, r = h_1 / h, D = (1 + 1/2r) m_1 - 1/2r m_0
    h, h_prev = lam[2] - lam[1], lam[1] - lam[0]
    r = h_prev / h
    D = (1 + 1 / (2 * r)) * m - 1 / (2 * r) * m_prev
    want = SCH.sigma(k[2]) / SCH.sigma(k[1]) * x - SCH.alpha(k[2]) * (np.exp(-h) - 1) * D
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("order", [2, 3])
def test_higher_orders_reduce_to_order1_for_constant_history(order):
    rng = np.random.default_rng(2)
    x0 = rng.standard_normal((4, 6))
    x_hi = x_lo = rng.standard_normal((4, 6))
    hi, lo = DPMSolverPP(SCH, 8), DPMSolverPP(SCH, 8)
    for _ in range(8):
        x_hi, x_lo = hi.step(x_hi, x0, order), lo.step(x_lo, x0, 1)
        np.testing.assert_allclose(x_hi, x_lo, rtol=0, atol=1e-13)


@pytest.mark.parametrize("order", [1, 2, 3, "mixed"])
def test_exact_data_prediction_returns_the_data(order):
    """With x0_hat exact (data = a fixed point x*), every order keeps x on alpha x* + sigma eps."""
    rng = np.random.default_rng(3)
    x_star = rng.standard_normal((3, 2, 8))
    x = rng.standard_normal(x_star.shape)
    orders = np.array([1, 2, 3, 3, 2, 1, 2, 3]) if order == "mixed" else order
    sol = DPMSolverPP(SCH, 12)
    for _ in range(12):
        x = sol.step(x, x_star, orders)
    np.testing.assert_allclose(x, x_star, rtol=0, atol=1e-10)


def test_per_token_order_equals_separate_runs():
    rng = np.random.default_rng(4)
    x_T = rng.standard_normal((2, 3))
    orders = np.array([1, 2, 3])
    steps = 9
    mixed = DPMSolverPP(SCH, steps)
    singles = [DPMSolverPP(SCH, steps) for _ in orders]
    x, xs = x_T.copy(), [x_T[:, j].copy() for j in range(3)]
    for k in SCH.sampling_grid(steps):
        x = mixed.step(x, _gauss_x0(x, k), orders)
        xs = [s.step(xj, _gauss_x0(xj, k), int(o)) for s, xj, o in zip(singles, xs, orders)]
        np.testing.assert_allclose(x, np.stack(xs, axis=1), rtol=0, atol=1e-14)


def test_order_is_lowered_on_first_and_last_steps():
    sol = DPMSolverPP(SCH, 5)
    assert [sol.max_order(i) for i in range(5)] == [1, 2, 3, 3, 1]
    rng = np.random.default_rng(5)
    a, b = DPMSolverPP(SCH, 5), DPMSolverPP(SCH, 5)
    x, x0 = rng.standard_normal(4), rng.standard_normal(4)
    np.testing.assert_array_equal(a.step(x, x0, 3), b.step(x, x0, 1))  # first step: order 1
    for _ in range(3):
        a.step(x, rng.standard_normal(4), 3)
    last = rng.standard_normal(4)
    np.testing.assert_array_equal(a.step(x, last, 3), last)  # to clean data: x = x0_hat
    with pytest.raises(RuntimeError):
        a.step(x, last, 1)


@pytest.mark.parametrize("order,expected", [(1, 4.0), (2, 8.0), (3, 16.0)])
def test_local_error_has_the_order_of_the_method(order, expected):
    """One update from exact history on a lambda-uniform grid: local error O(h^(order+1))."""
    x_T = np.linspace(-3.0, 3.0, 7)

    def local_error(h):
        kappas = SCH.kappa_of_lambda(-1.0 + h * np.arange(5))
        sol = DPMSolverPP(SCH, kappas=kappas)
        for i in range(4):  # the 4th update uses a full history of exact x0_hat
            x_i = _gauss_flow(x_T, 999.0, kappas[i])
            out = sol.step(x_i, _gauss_x0(x_i, kappas[i]), order)
        return np.abs(out - _gauss_flow(x_T, 999.0, kappas[4])).max()

    ratio = local_error(0.0125) / local_error(0.00625)
    assert expected * 0.9 < ratio < expected * 1.15, ratio


def test_global_error_decreases_with_order_on_gaussian_data():
    """Full trajectories on the default grid; compared at the last evaluation time."""
    steps = 40
    x_T = np.linspace(-3.0, 3.0, 7)
    errors = []
    for order in (1, 2, 3):
        sol = DPMSolverPP(SCH, steps)
        x = x_T.copy()
        for k in sol.kappas[:-1]:
            x = sol.step(x, _gauss_x0(x, k), order)
        errors.append(np.abs(x - _gauss_flow(x_T, 999.0, sol.kappas[-1])).max())
    assert errors[0] > errors[1] > errors[2], errors


def test_grid_validation():
    with pytest.raises(ValueError):
        DPMSolverPP(SCH)
    with pytest.raises(ValueError):
        DPMSolverPP(SCH, kappas=[10.0, 20.0])
    with pytest.raises(ValueError, match="spacing must be one of logsnr, time"):
        DPMSolverPP(SCH, 5, spacing="linear")


def test_solver_grid_follows_the_spacing():
    """Default: uniform in lambda from T-1 (lambda steps (lambda(0) - lambda(T-1)) / M); "time":
    kappa_i = (T-1)(1 - i/M)."""
    steps = 8
    default, logsnr = DPMSolverPP(SCH, steps), DPMSolverPP(SCH, steps, spacing="logsnr")
    time = DPMSolverPP(SCH, steps, spacing="time")
    assert np.array_equal(default.kappas, logsnr.kappas)
    assert default.kappas[0] == 999.0
    np.testing.assert_allclose(np.diff(default.lambdas), (SCH.lam(0.0) - SCH.lam(999.0)) / steps, rtol=0, atol=1e-9)
    np.testing.assert_allclose(time.kappas, 999.0 * (1.0 - np.arange(steps) / steps), rtol=1e-14)
    np.testing.assert_allclose(time.lambdas, SCH.lam(time.kappas), rtol=0, atol=0)


class _OracleEngine:
    """The engine contract in NumPy with the exact eps for data x*: eps = (x - alpha x*) / sigma.

    Not a stand-in for ONNX Runtime's numerics: it lets the sampler loop (gather, scatter, x0_hat,
    solver) be checked against a known answer; the real graphs are checked in test_reference.py.
    """

    def __init__(self, x_star, steps, layers=1, D=4, E=4, spacing="logsnr"):
        self.x_star, self.kappas = x_star, SCH.sampling_grid(steps, spacing)
        self.t_feats = []  # the time features of every denoise call
        self.config = ModelConfig(context_length=3, horizon=x_star.shape[2], d_model=D, num_heads=1,
                                  num_layers=layers, ffn_dim=4, time_embed_dim=E)
        self.stats, self.call = EngineStats(), 0

    max_batch = call_tokens = None

    def device_cache(self, G, N, H):
        return None

    def denoise_cached(self, *args):
        raise AssertionError("no device cache")

    def encode(self, ctx):
        self.stats.encode_calls += 1
        G, L = ctx.shape[:2]
        z = np.zeros((self.config.num_layers, G, L, self.config.d_model), np.float32)
        return z, z

    def denoise(self, x_sub, pos_sub, t_feat, k_ctx, v_ctx, k_hor, v_hor, hor_valid):
        self.stats.denoise_calls += 1
        self.t_feats.append(np.array(t_feat))
        k = self.kappas[self.call]
        self.call += 1
        a, s = SCH.alpha(k), SCH.sigma(k)
        target = np.take_along_axis(self.x_star, pos_sub, axis=2)
        eps = (x_sub[..., 0].astype(np.float64) - a * target) / s
        shape = (self.config.num_layers,) + pos_sub.shape + (self.config.d_model,)
        return eps[..., None], np.ones(shape, np.float32), np.ones(shape, np.float32)


@pytest.mark.parametrize("order", [1, 2, 3])
def test_sampler_loop_returns_the_data_for_an_exact_network(order):
    rng = np.random.default_rng(6)
    steps = 10
    # Values on the float32 grid so that the engine's f32 input cast is exact.
    x_star = rng.standard_normal((2, 3, 5)).astype(np.float32).astype(np.float64)
    engine = _OracleEngine(x_star, steps)
    x_T = rng.standard_normal(x_star.shape)
    assert isinstance(engine, Engine)
    result = sample(engine, SCH, np.zeros((2, 3, 2), np.float32), x_T,
                    SamplerConfig(steps=steps, solver_order=order), SeriesStreams(0, range(2)))
    np.testing.assert_allclose(result.x0, x_star, rtol=0, atol=1e-6)
    assert result.stats.engine_calls == steps and result.stats.encode_calls == 1
    assert result.stats.tokens_computed == result.stats.full_tokens == 2 * 3 * 5 * steps


@pytest.mark.parametrize("spacing", ["logsnr", "time"])
def test_sampler_evaluates_the_network_on_the_configs_grid(spacing):
    """SamplerConfig.spacing picks the grid: the time features of every call are those of
    sampling_grid(M, spacing), and an exact network for that grid gives back the data."""
    from dil.runtime.sampling.schedule import diffusion_time_features

    rng = np.random.default_rng(7)
    steps = 6
    x_star = rng.standard_normal((1, 2, 4)).astype(np.float32).astype(np.float64)
    engine = _OracleEngine(x_star, steps, spacing=spacing)
    result = sample(engine, SCH, np.zeros((1, 3, 2), np.float32), rng.standard_normal(x_star.shape),
                    SamplerConfig(steps=steps, spacing=spacing, lattice=False, cache=False),
                    SeriesStreams(0, range(1)))
    want = diffusion_time_features(SCH.sampling_grid(steps, spacing), 4).astype(np.float32)
    assert len(engine.t_feats) == steps
    for i, t_feat in enumerate(engine.t_feats):
        np.testing.assert_array_equal(t_feat, np.broadcast_to(want[i], t_feat.shape))
    np.testing.assert_allclose(result.x0, x_star, rtol=0, atol=1e-6)
