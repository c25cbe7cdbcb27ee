"""Metrics against hand-worked examples and independent float64 computations."""

from __future__ import annotations

import numpy as np
import pytest

from dil.evaluate import metrics as M
from dil.runtime.outputs.quantiles import QUANTILE_LEVELS


def test_weighted_quantile_loss_hand_example():
    # y = [2, 4]; levels 0.25, 0.75; quantiles q.25 = [1, 5], q.75 = [3, 5].
    # level .25: |(2-1)(0-.25)| + |(4-5)(1-.25)| = .25 + .75 = 1.0 -> x2 = 2.0
    # level .75: |(2-3)(1-.75)| + |(4-5)(1-.75)| = .25 + .25 = 0.5 -> x2 = 1.0
    # mean over levels 1.5, / sum|y| = 6 -> 0.25
    y = np.array([2.0, 4.0])
    q = np.array([[1.0, 5.0], [3.0, 5.0]])
    assert M.weighted_quantile_loss(y, q, levels=[0.25, 0.75]) == pytest.approx(0.25, abs=1e-15)


def test_quantile_loss_of_point_forecast_is_normalised_mae():
    rng = np.random.default_rng(0)
    y = rng.normal(5.0, 2.0, size=(4, 3, 12))
    point = y + rng.normal(0.0, 1.0, size=y.shape)
    q = np.repeat(point[..., None, :], QUANTILE_LEVELS.size, axis=-2)
    nmae = np.abs(y - point).sum() / np.abs(y).sum()
    assert M.weighted_quantile_loss(y, q) == pytest.approx(nmae, rel=1e-12)
    # The same point forecast as one sample: both CRPS estimators reduce to the normalised MAE.
    assert M.crps_quantile(y, point[..., None, :]) == pytest.approx(nmae, rel=1e-12)
    assert M.crps_sample(y, point[..., None, :]) == pytest.approx(nmae, rel=1e-12)


def test_crps_pointwise_hand_example():
    # samples {0, 2}, y = 1: E|X-y| = 1, E|X-X'| = (0+2+2+0)/4 = 1 -> CRPS = 1 - 0.5 = 0.5
    # (= integral of (F(x) - 1{x >= 1})^2: 0.25 on [0, 1) + 0.25 on [1, 2)).
    assert M.crps_pointwise(np.array([1.0]), np.array([[0.0], [2.0]]))[0] == pytest.approx(0.5)


def test_crps_sorted_formula_matches_pairwise_definition():
    rng = np.random.default_rng(1)
    y = rng.normal(size=(3, 5, 7))
    s = rng.standard_t(3, size=(3, 5, 40, 7)) * 2.0 + 1.0
    # Independent O(N^2) definition: E|X - y| - 0.5 E|X - X'|.
    term1 = np.abs(s - y[..., None, :]).mean(axis=-2)
    term2 = np.abs(s[..., :, None, :] - s[..., None, :, :]).mean(axis=(-3, -2))
    expected = term1 - 0.5 * term2
    np.testing.assert_allclose(M.crps_pointwise(y, s), expected, rtol=1e-12, atol=1e-13)
    yz = y + 10.0  # keep sum |y| away from 0 for the normalised figure
    exp_norm = (np.abs(s + 10.0 - yz[..., None, :]).mean(axis=-2) - 0.5 * term2).sum() / np.abs(yz).sum()
    assert M.crps_sample(yz, s + 10.0) == pytest.approx(exp_norm, rel=1e-12)


def test_quantile_crps_approaches_sample_crps_on_a_fine_grid():
    # Both estimate the same integral; with many samples and a fine grid they agree closely.
    rng = np.random.default_rng(2)
    y = rng.normal(10.0, 1.0, size=(20, 6))
    s = rng.normal(10.0, 1.0, size=(20, 2000, 6))
    fine = np.arange(1, 200) / 200.0
    a, b = M.crps_quantile(y, s, levels=fine), M.crps_sample(y, s)
    assert a == pytest.approx(b, rel=0.02)
    # The 19-level grid is a coarser estimate of the same quantity.
    assert M.crps_quantile(y, s) == pytest.approx(b, rel=0.1)


def test_coverage_counts():
    # 101 samples 0..100: q.25 = 25, q.75 = 75, q.05 = 5, q.95 = 95 (bounds included).
    y = np.array([0.0, 5.0, 25.0, 50.0, 75.0, 80.0, 95.0, 100.0])
    s = np.repeat(np.arange(101.0)[:, None], y.size, axis=1)
    assert M.coverage(y, s, 0.5) == pytest.approx(3 / 8)  # 25, 50, 75
    assert M.coverage(y, s, 0.9) == pytest.approx(6 / 8)  # 5, 25, 50, 75, 80, 95
    with pytest.raises(ValueError):
        M.coverage(y, s, 1.0)


def test_mae_mse_hand_example():
    y = np.array([[1.0, 2.0, 3.0]])
    p = np.array([[2.0, 2.0, 0.0]])
    assert M.mae(y, p) == pytest.approx((1 + 0 + 3) / 3)
    assert M.mse(y, p) == pytest.approx((1 + 0 + 9) / 3)


@pytest.mark.parametrize(
    "metric",
    [
        lambda y, s, m=None: M.crps_quantile(y, s, mask=m),
        lambda y, s, m=None: M.crps_sample(y, s, mask=m),
        lambda y, s, m=None: M.mae(y, M.median_forecast(s), mask=m),
        lambda y, s, m=None: M.mse(y, M.median_forecast(s), mask=m),
        lambda y, s, m=None: M.coverage(y, s, 0.5, mask=m),
        lambda y, s, m=None: M.coverage(y, s, 0.9, mask=m),
    ],
)
def test_missing_steps_are_excluded(metric):
    rng = np.random.default_rng(3)
    y = rng.normal(3.0, 1.0, size=(2, 6))
    s = rng.normal(3.0, 1.5, size=(2, 50, 6))
    keep = np.ones((2, 6), dtype=bool)
    keep[0, 1] = keep[1, 4] = keep[1, 5] = False
    # Reference: the observed steps only, as flat [1, K] arrays.
    ref = metric(y[keep][None, :], np.moveaxis(s, 1, 2)[keep].T[None])
    y_nan = np.where(keep, y, np.nan)
    s_junk = np.where(keep[:, None, :], s, 1e9)  # forecasts at missing steps must not matter
    assert metric(y_nan, s_junk) == pytest.approx(ref, rel=1e-12)
    assert metric(y, s_junk, keep) == pytest.approx(ref, rel=1e-12)
    assert np.isnan(metric(np.full_like(y, np.nan), s))


def test_crps_sum_hand_example():
    # Two series, one step: y = 1 + 2 = 3; samples {0, 2} + {1, 3} -> sums {1, 5}.
    # Levels .25/.75 on {1, 5} (linear): 2 and 4. Level .25: 2|(3-2)(0-.25)| = .5;
    # level .75: 2|(3-4)(1-.75)| = .5; mean .5 / |3| = 1/6.
    y = np.array([[[1.0], [2.0]]])
    s = np.array([[[[0.0], [2.0]], [[1.0], [3.0]]]])
    assert M.crps_sum(y, s, levels=[0.25, 0.75]) == pytest.approx(1 / 6)


def test_crps_sum_excludes_steps_with_any_missing_series():
    rng = np.random.default_rng(4)
    y = rng.normal(5.0, 1.0, size=(3, 2, 4))
    s = rng.normal(5.0, 1.0, size=(3, 2, 30, 4))
    y_nan = y.copy()
    y_nan[1, 0, 2] = np.nan  # the aggregate of window 1, step 2 is unobserved
    keep = np.ones((3, 4), dtype=bool)
    keep[1, 2] = False
    ref = M.crps_quantile(y.sum(axis=1), s.sum(axis=1), mask=keep)
    assert M.crps_sum(y_nan, s) == pytest.approx(ref, rel=1e-12)
    # One series: CRPS-sum is the CRPS.
    assert M.crps_sum(y[:, :1], s[:, :1]) == pytest.approx(M.crps_quantile(y[:, 0], s[:, 0]), rel=1e-12)


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError):
        M.crps_quantile(np.zeros((2, 5)), np.zeros((2, 10, 4)))
    with pytest.raises(ValueError):
        M.weighted_quantile_loss(np.zeros(5), np.zeros((3, 5)), levels=[0.5])


def test_seasonal_naive_hand_examples():
    h = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    np.testing.assert_array_equal(M.seasonal_naive(h, 3, 5), [4, 5, 6, 4, 5])
    # A missing lag value comes from the same phase one season earlier ...
    h1 = np.array([1.0, 2.0, 3.0, 4.0, np.nan, 6.0])
    np.testing.assert_array_equal(M.seasonal_naive(h1, 3, 4), [4, 2, 6, 4])
    # ... or, if that phase is never observed, from the last observed value (6).
    h2 = np.array([1.0, np.nan, 3.0, 4.0, np.nan, 6.0])
    np.testing.assert_array_equal(M.seasonal_naive(h2, 3, 3), [4, 6, 6])
    # Batched, with a history that is not a whole number of seasons (the oldest step is unused).
    hb = np.stack([np.arange(7.0), np.arange(7.0) * 10])
    np.testing.assert_array_equal(M.seasonal_naive(hb, 2, 3), [[5, 6, 5], [50, 60, 50]])
    with pytest.raises(ValueError):
        M.seasonal_naive(h, 7, 2)


def test_coverage_curve_matches_single_widths():
    rng = np.random.default_rng(5)
    y = rng.normal(size=(4, 9))
    s = rng.normal(size=(4, 60, 9))
    widths = [0.1, 0.5, 0.8, 0.9]
    assert M.coverages(y, s, widths) == [M.coverage(y, s, w) for w in widths]
    # Hand check on the 101-sample ladder: y = 50 is inside every central interval.
    ladder = np.arange(101.0)[:, None]
    assert M.coverages(np.array([50.0]), ladder, widths) == [1.0] * 4
    assert M.coverages(np.array([44.0]), ladder, widths) == [0.0, 1.0, 1.0, 1.0]  # q.45 = 45


def _direct(y, s, mask):
    """The figures of StreamedScores.scores, computed at once from every window's samples."""
    m = mask[..., None] & ~np.isnan(y)
    median = M.median_forecast(s)
    cov50, cov90 = M.coverages(y, s, (0.5, 0.9), mask=m)
    return {"crps": M.crps_quantile(y, s, mask=m), "crps_sample": M.crps_sample(y, s, mask=m),
            "crps_sum": M.crps_sum(y, s, mask=m), "mae": M.mae(y, median, mask=m), "mse": M.mse(y, median, mask=m),
            "coverage_50": cov50, "coverage_90": cov90}


@pytest.mark.parametrize("batch", [1, 4, 7, 1000])
def test_streamed_scores_equal_the_metrics_on_all_samples(batch):
    """Fed a batch at a time, StreamedScores gives exactly (==) the figures of the functions above on
    the full sample array, for any batch size and any scope (window subset)."""
    rng = np.random.default_rng(6)
    o, c, n, h = 6, 4, 30, 5
    y = rng.normal(5.0, 2.0, size=(o, c, h))
    y[1, 2, 3] = y[4, 0, :2] = np.nan  # missing targets
    s = y[:, :, None, :] + rng.normal(0.5, 1.5, size=(o, c, n, h))
    valid = np.ones((o, c), dtype=bool)
    valid[2, 1] = valid[5, 3] = False  # windows never forecast
    s[~valid] = np.nan
    some = valid & np.isin(np.arange(o), [1, 3, 4])[:, None]  # whole origins: a finite CRPS-sum
    some[3, 2] = False  # ... but for origin 3
    widths = np.round(np.arange(1, 10) * 0.1, 1)
    scores = M.StreamedScores(y, n, widths, {"all": valid, "some": some})
    pairs = np.argwhere(valid)
    for a in range(0, len(pairs), batch):
        scores.add(pairs[a : a + batch, 0], pairs[a : a + batch, 1], s[tuple(pairs[a : a + batch].T)])
    for name, mask in (("all", valid), ("some", some)):
        expected = _direct(y, s, mask)
        assert scores.scores(name) == expected, name
        assert all(np.isfinite(v) for v in expected.values())
        m = mask[..., None] & ~np.isnan(y)
        assert scores.coverages(name, widths) == M.coverages(y, s, widths, mask=m)
    np.testing.assert_array_equal(scores.quantiles_at([0.25, 0.5])[valid],
                                  np.moveaxis(np.quantile(s[valid], [0.25, 0.5], axis=1), 0, 1))
    with pytest.raises(ValueError, match="not all among"):
        scores.quantiles_at([0.33])
