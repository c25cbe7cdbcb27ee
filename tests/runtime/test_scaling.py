"""dil.runtime.inputs.scaling against float64 hand computations (missing values included)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dil.runtime.inputs.scaling import ScalingError, context_features, context_scale, standardise, unstandardise

nan = np.nan


def test_scale_ignores_missing_values():
    # observed 1, 3, 5: mean 3, population variance (4 + 0 + 4) / 3
    loc, scale = context_scale(np.array([[1.0, nan, 3.0, 5.0]]))
    assert loc[0] == 3.0
    assert scale[0] == pytest.approx(math.sqrt(8.0 / 3.0), rel=1e-15)
    z = standardise(np.array([[1.0, nan, 3.0, 5.0]]), loc, scale)
    np.testing.assert_allclose(z[0], [-2 / math.sqrt(8 / 3), nan, 0.0, 2 / math.sqrt(8 / 3)], rtol=1e-15)


def test_scale_floor_for_constant_context():
    loc, scale = context_scale(np.array([[2.0, 2.0, nan], [0.0, 0.0, 0.0]]))
    np.testing.assert_array_equal(loc, [2.0, 0.0])
    np.testing.assert_array_equal(scale, [2e-3, 1e-8])  # 1e-3 * mean |x|, then the absolute floor


def test_batched_shapes_match_per_window():
    rng = np.random.default_rng(3)
    x = rng.normal(5.0, 2.0, size=(2, 3, 10))
    x[0, 1, [2, 7]] = nan
    loc, scale = context_scale(x)
    assert loc.shape == scale.shape == (2, 3)
    for i in range(2):
        for j in range(3):
            obs = x[i, j][~np.isnan(x[i, j])]
            assert loc[i, j] == pytest.approx(obs.mean(), rel=1e-14)
            assert scale[i, j] == pytest.approx(obs.std(), rel=1e-14)
    y = rng.normal(size=(2, 3, 4))
    np.testing.assert_allclose(unstandardise(standardise(y, loc, scale), loc, scale), y, rtol=1e-13)


def test_all_missing_context_is_rejected():
    with pytest.raises(ScalingError, match="no observed value"):
        context_scale(np.array([[1.0, 2.0], [nan, nan]]))


def test_context_features_mark_missing_steps():
    f = context_features(np.array([[0.5, nan, -1.25]]))
    assert f.dtype == np.float32 and f.shape == (1, 3, 2)
    np.testing.assert_array_equal(f[0], [[0.5, 1.0], [0.0, 0.0], [-1.25, 1.0]])
