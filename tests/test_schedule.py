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


def test_sampling_grid_is_time_uniform_from_T_minus_1():
    sch = NoiseSchedule()
    np.testing.assert_allclose(sch.sampling_grid(4), [999.0, 749.25, 499.5, 249.75])
    assert sch.sampling_grid(1).tolist() == [999.0]
    with pytest.raises(ValueError):
        sch.sampling_grid(0)


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
