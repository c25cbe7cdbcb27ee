"""The seasonal-naive baseline of dil-eval's windows is the same whatever model is evaluated: its
history is everything before the origin, not the model's context (docs/model.md section 6.3)."""

from __future__ import annotations

import numpy as np
import pytest

from dil.data import DatasetSpec, SeriesTable, Splits
from dil.evaluate import harness as Hn
from dil.evaluate import metrics as M


def test_baseline_by_hand_is_the_same_for_every_context():
    # Row r holds the value r, season 4, horizon 4; the test part is rows [28, 40): origins 28, 32, 36.
    # Missing: rows 22, 25, 26 and every row of phase 3 before 32. Origin 28's lags are rows 24..27:
    # step 0 -> 24; step 1 -> row 25 missing, a season earlier 21; step 2 -> rows 26 and 22 missing,
    # 18; step 3 -> phase 3 never observed before 28: the last observed value before it, 24.
    # (A history of 4 rows read [24, 24, 24, 24], one of 8 rows [24, 21, 24, 24].) Origin 32: row 31
    # and phase 3 before it missing -> the last observed value, 30; origin 36: rows 32..35.
    values = np.arange(40.0)[:, None]
    values[[22, 25, 26], 0] = np.nan
    values[3:32:4, 0] = np.nan
    table = SeriesTable(values=values, names=["a"], source="hand")
    spec = DatasetSpec(name="hand", file="hand.csv", date_column=None, columns=None, freq=None, season=4,
                       context_length=4, horizon=4, splits=Splits(0.5, 0.2, 0.3), bundled=False)
    windows = [Hn.protocol_windows(table, spec, context, 4) for context in (4, 8, 12)]
    for w in windows:
        np.testing.assert_array_equal(w.origins, [28, 32, 36])
        np.testing.assert_array_equal(w.baseline[:, 0], [[24, 21, 18, 24], [28, 29, 30, 30], [32, 33, 34, 35]])


def test_metro_baseline_does_not_depend_on_the_models_context():
    # Context 168 read CRPS 0.0987, context 336 read 0.0973: 20 of the 437 windows have a missing
    # value one week before a target hour, which a one-week history filled with the last observed
    # hour and a two-week history with the same hour a week earlier.
    from dil.data.datasets import resolve

    spec, table = resolve("metro-traffic")
    w168, w336 = (Hn.protocol_windows(table, spec, context, 24) for context in (168, 336))
    np.testing.assert_array_equal(w168.origins, w336.origins)
    assert w168.origins.size == 437 and w168.valid.all() and w336.valid.all()
    np.testing.assert_array_equal(w168.baseline, w336.baseline)
    assert Hn.score_point(w168, w168.baseline) == Hn.score_point(w336, w336.baseline)
    # Independent: metrics.seasonal_naive on ten weeks before each origin (no window of the test
    # part needs more) gives the same forecasts.
    values = np.asarray(table.values, dtype=np.float64)
    ten_weeks = M.seasonal_naive(Hn.gather(values, w168.origins, 10 * 168, 0), 168, 24)
    np.testing.assert_array_equal(w168.baseline, ten_weeks)
    assert Hn.score_point(w168, w168.baseline)["crps"] == pytest.approx(0.0973442, abs=5e-8)


def _by_definition(values, o, lag, horizon):
    """One series, one origin: step h takes row o - lag + (h mod lag), else the same phase further
    back while missing, else the last observed row before o, else NaN."""
    out = np.full(horizon, np.nan)
    observed = np.flatnonzero(~np.isnan(values[:o]))
    for h in range(horizon):
        r = o - lag + h % lag
        while r >= 0 and np.isnan(values[r]):
            r -= lag
        if r >= 0:
            out[h] = values[r]
        elif observed.size:
            out[h] = values[observed[-1]]
    return out


def test_baseline_against_a_loop_by_its_definition():
    # Three series with 40% missing values (one missing until row 60), lag 7, horizon 10 > lag,
    # origins from 0 (no history at all) to the end.
    rng = np.random.default_rng(3)
    values = rng.normal(size=(200, 3))
    values[rng.random(values.shape) < 0.4] = np.nan
    values[:60, 2] = np.nan
    origins = np.arange(0, 191, 3)
    got = Hn.seasonal_naive_at(values, origins, 7, 10)
    assert got.shape == (origins.size, 3, 10)
    for i, o in enumerate(origins):
        for c in range(3):
            np.testing.assert_array_equal(got[i, c], _by_definition(values[:, c], o, 7, 10))
    assert np.isnan(got[0]).all() and np.isnan(got[origins < 60, 2]).all()
