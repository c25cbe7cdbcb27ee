"""The noise schedule and time features against float64 hand computations (docs/model.md section 2)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dil.runtime.sampling.schedule import NoiseSchedule, diffusion_time_features


def _hand_alphas_cumprod(T=1000, b0=1e-4, b1=2e-2):
    """abar_k = prod_{j<=k} (1 - beta_j) with a Python loop over math floats."""
    out, prod = [], 1.0
    for k in range(T):
        beta = b0 + (b1 - b0) * k / (T - 1)
        prod *= 1.0 - beta
        out.append(prod)
    return np.array(out)


def test_linear_tables_match_hand_computation():
    sch = NoiseSchedule()
    abar = _hand_alphas_cumprod()
    np.testing.assert_allclose(sch.alphas_cumprod, abar, rtol=1e-12, atol=0)
    k = np.arange(1000, dtype=np.float64)
    np.testing.assert_allclose(sch.alpha(k), np.sqrt(abar), rtol=1e-12)
    np.testing.assert_allclose(sch.sigma(k), np.sqrt(1.0 - abar), rtol=1e-10)
    np.testing.assert_allclose(sch.lam(k), np.log(np.sqrt(abar) / np.sqrt(1.0 - abar)), rtol=1e-10, atol=1e-12)
    # VP: alpha^2 + sigma^2 = 1 at every real kappa, not just the integers.
    kappa = np.linspace(0, 999, 777)
    np.testing.assert_allclose(sch.alpha(kappa) ** 2 + sch.sigma(kappa) ** 2, 1.0, atol=1e-14)
    # Hand-worked values at the ends: abar_0 = 1 - 1e-4; lambda decreasing.
    assert sch.alphas_cumprod[0] == pytest.approx(1.0 - 1e-4, rel=1e-15)
    assert np.all(np.diff(sch.lam(k)) < 0)


def test_interpolation_is_linear_in_log_alpha_between_steps():
    sch = NoiseSchedule()
    log_a = 0.5 * np.log(_hand_alphas_cumprod())
    for k in (0, 17, 500, 998):
        mid = sch.log_alpha(k + 0.25)
        assert mid == pytest.approx(0.75 * log_a[k] + 0.25 * log_a[k + 1], rel=1e-12)
    with pytest.raises(ValueError):
        sch.alpha(1000.0)
    with pytest.raises(ValueError):
        sch.alpha(-0.5)


def test_inverse_lambda_round_trip():
    sch = NoiseSchedule()
    kappa = np.concatenate([np.linspace(0, 999, 101), np.random.default_rng(0).uniform(0, 999, 200)])
    np.testing.assert_allclose(sch.kappa_of_lambda(sch.lam(kappa)), kappa, atol=1e-7)
    # And the other way round for lambdas inside the table's range.
    lam = np.linspace(sch.lam(999.0), sch.lam(0.0), 50)
    np.testing.assert_allclose(sch.lam(sch.kappa_of_lambda(lam)), lam, rtol=1e-9, atol=1e-9)


def test_cosine_schedule_matches_closed_form():
    sch = NoiseSchedule(kind="cosine")
    T, s = 1000, 0.008
    f = [math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2 for t in range(T + 1)]
    abar = np.array([f[k + 1] / f[0] for k in range(T)])
    unclipped = slice(0, 900)  # beta is clipped at 0.999 only at the very end
    np.testing.assert_allclose(sch.alphas_cumprod[unclipped], abar[unclipped], rtol=1e-10)


def test_time_grid_is_the_time_uniform_formula_bit_for_bit():
    sch = NoiseSchedule()
    np.testing.assert_allclose(sch.sampling_grid(4, "time"), [999.0, 749.25, 499.5, 249.75], rtol=1e-15)
    assert sch.sampling_grid(1, "time").tolist() == [999.0]
    for steps in (1, 2, 7, 20, 999, 1000):
        old = np.linspace(999, 0.0, steps + 1, dtype=np.float64)[:-1]  # the grid before spacings existed
        assert np.array_equal(sch.sampling_grid(steps, "time"), old)
        np.testing.assert_allclose(old, 999.0 * (1.0 - np.arange(steps) / steps), rtol=1e-13, atol=1e-12)
    with pytest.raises(ValueError):
        sch.sampling_grid(0, "time")


def _hand_kappa_of_lambda(lam: float, log_a: np.ndarray) -> float:
    """kappa whose linearly interpolated log alpha gives lambda, by a search over the table."""
    la = -0.5 * math.log1p(math.exp(-2.0 * lam))  # log alpha = -0.5 log(1 + e^(-2 lambda))
    j = 0
    while j + 1 < len(log_a) and log_a[j + 1] >= la:  # log_a decreasing: the segment [j, j+1] holds la
        j += 1
    if j + 1 == len(log_a):
        return float(j)
    return j + (log_a[j] - la) / (log_a[j] - log_a[j + 1])


def test_logsnr_grid_against_float64_hand_computation():
    sch = NoiseSchedule()
    abar = _hand_alphas_cumprod()
    lam = 0.5 * np.log(abar / (1.0 - abar))
    lo, hi = lam[-1], lam[0]
    assert (lo, hi) == (pytest.approx(-5.058837, abs=1e-6), pytest.approx(0.5 * math.log((1 - 1e-4) / 1e-4), rel=1e-12))
    log_a = 0.5 * np.log(abar)
    for steps in (1, 4, 20, 97):
        lams = [lo + i / steps * (hi - lo) for i in range(steps)]
        want = [999.0] + [_hand_kappa_of_lambda(x, log_a) for x in lams[1:]]
        got = sch.sampling_grid(steps)  # logsnr is the default
        assert got[0] == 999.0
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-9)
        np.testing.assert_allclose(sch.lam(got), lams, rtol=0, atol=1e-9)  # lambda equally spaced
        assert np.all(np.diff(got) < 0)
    # 20 steps: the last network call is at sigma ~ 0.016 (the time grid's at kappa 49.95: sigma ~ 0.17).
    assert sch.sigma(sch.sampling_grid(20)[-1]) == pytest.approx(0.0162, abs=1e-4)
    assert sch.sigma(sch.sampling_grid(20, "time")[-1]) == pytest.approx(0.173, abs=1e-3)


@pytest.mark.parametrize("sch", [NoiseSchedule(), NoiseSchedule(kind="cosine"), NoiseSchedule(num_steps=50, kind="cosine")],
                         ids=["linear", "cosine", "cosine-T50"])
def test_logsnr_grid_strictly_decreasing_for_every_step_count_up_to_1000(sch):
    """No two kappas of the interpolated inverse collide, at any M <= 1000 (the closest pair at
    T = 1000 is > 0.004 apart)."""
    T = sch.num_steps
    lo, hi = float(sch.lam(T - 1.0)), float(sch.lam(0.0))
    for steps in range(1, 1001):
        k = sch.sampling_grid(steps, "logsnr")
        assert k.shape == (steps,) and k[0] == T - 1 and k[-1] > 0.0
        assert np.all(np.diff(k) < 0), steps
    np.testing.assert_allclose(np.diff(sch.lam(k)), (hi - lo) / 1000, rtol=0, atol=1e-9)


def test_sampling_grid_refuses_a_bad_spacing_and_a_schedule_without_finite_lambda():
    with pytest.raises(ValueError, match=r"^spacing must be one of logsnr, time, got 'uniform'$"):
        NoiseSchedule().sampling_grid(4, "uniform")
    with pytest.raises(ValueError, match=r"^steps must be >= 1"):
        NoiseSchedule().sampling_grid(0)
    # beta_start = 0: sigma(0) = 0, lambda(0) = inf; the time grid still works.
    sch = NoiseSchedule(beta_start=0.0)
    with pytest.raises(ValueError, match="spacing 'logsnr' needs a finite lambda"):
        sch.sampling_grid(4)
    assert sch.sampling_grid(2, "time").tolist() == [999.0, 499.5]


def test_time_features_hand_worked_example():
    # dim 4: frequencies 10000^(-j/2), j = 0, 1 -> 1 and 0.01; features [sin, sin, cos, cos].
    got = diffusion_time_features(np.array([0.0, 1.0, 250.0]), 4)
    want = np.array(
        [
            [0.0, 0.0, 1.0, 1.0],
            [math.sin(1.0), math.sin(0.01), math.cos(1.0), math.cos(0.01)],
            [math.sin(250.0), math.sin(2.5), math.cos(250.0), math.cos(2.5)],
        ]
    )
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-15)
    assert got.dtype == np.float64
    assert diffusion_time_features(np.zeros((2, 3)), 8).shape == (2, 3, 8)
    with pytest.raises(ValueError):
        diffusion_time_features(1.0, 5)


def test_schedule_validation_and_round_trip_dict():
    with pytest.raises(ValueError):
        NoiseSchedule(kind="quadratic")
    with pytest.raises(ValueError):
        NoiseSchedule(num_steps=1)
    sch = NoiseSchedule(num_steps=500, kind="cosine")
    assert NoiseSchedule.from_dict(sch.to_dict()) == sch
