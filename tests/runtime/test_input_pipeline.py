"""The one input pipeline (docs/inputs.md): a wide table, a long table, a Ray block of that long table
and the library's DataFrame become the same per-series histories, and the rules that follow
(usable, build_windows) treat them alike.

The Ray entry is the function Ray runs on each group of a long table's rows
(dil.runtime.jobs.ray_job._history_row, whose result crosses to the actors pickled); the whole
job on a Ray cluster is tests/runtime/test_ray_job.py's.
"""

from __future__ import annotations

import pickle

import numpy as np
import pandas as pd
import pytest

from dil.runtime.inputs.errors import DataError, ForecastError
from dil.runtime.inputs.histories import frame_histories, table_histories
from dil.runtime.inputs.long_table import histories as long_histories
from dil.runtime.inputs.long_table import long_spec, read_long
from dil.runtime.inputs.rules import build_windows, usable
from dil.runtime.inputs.table import load_table
from dil.runtime.jobs.ray_job import _history_row

TIMES = pd.date_range("2024-01-01", periods=12, freq="h")


def _wide(tmp_path, frame: pd.DataFrame, covariates=()):
    path = tmp_path / "wide.csv"
    frame.to_csv(path, index=False)
    return path, load_table(path, date_column="time", covariates=list(covariates) or None)


def _long_frame(wide: pd.DataFrame, series, covariates=()) -> pd.DataFrame:
    parts = [pd.DataFrame({"id": s, "time": wide["time"], "value": wide[s],
                           **{c: wide[c] for c in covariates}}) for s in series]
    return pd.concat(parts, ignore_index=True)


def _entries(tmp_path, wide: pd.DataFrame, series, covariates=(), known=()):
    """{entry: histories} of the same data through every entry."""
    _, table = _wide(tmp_path, wide, covariates)
    wide_h, _ = table_histories(table.select(list(series)), known)
    long_path = tmp_path / "long.csv"
    _long_frame(wide, series, covariates).sample(frac=1.0, random_state=0).to_csv(long_path, index=False)
    spec = long_spec(long_path, "id", "time", "value", covariates, known_covariates=known)
    rows = read_long(long_path, spec)
    long_h = long_histories(rows, spec, "long.csv")
    ray_h = []
    for sid, group in rows.groupby("id", sort=True):
        out = _history_row(group, spec, "long.csv")
        ray_h.append(pickle.loads(out["history"].iloc[0]))
    return {"wide": wide_h, "long": long_h, "ray": ray_h}


def _same(a, b) -> None:
    assert [str(h.id) for h in a] == [str(h.id) for h in b]
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.values, y.values)  # NaN where NaN
        np.testing.assert_array_equal(x.timestamps, y.timestamps)
        assert x.freq == y.freq
        if x.covariates is None:
            assert y.covariates is None
        else:
            pd.testing.assert_frame_equal(x.covariates.reset_index(drop=True), y.covariates.reset_index(drop=True))


def _table(**cols) -> pd.DataFrame:
    return pd.DataFrame({"time": TIMES.strftime("%Y-%m-%d %H:%M"), **cols})


def test_dates_missing_steps_and_missing_values_give_the_same_histories(tmp_path):
    a = np.arange(12.0)
    a[3] = np.nan  # an empty cell
    wide = _table(a=a, b=np.arange(12.0) * 2).drop(index=[5]).iloc[::-1]  # a missing step, rows backwards
    got = _entries(tmp_path, wide, ["a", "b"])
    _same(got["wide"], got["long"])
    _same(got["long"], got["ray"])
    h = got["wide"][0]
    assert h.freq == "h" and len(h.values) == 12  # the missing step is back, as a missing value
    assert np.isnan(h.values[[3, 5]]).all() and h.values[11] == 11.0
    # The library's DataFrame of the same rows, one row per hour, gives the same histories.
    frame = pd.DataFrame({"a": h.values, "b": got["wide"][1].values}, index=pd.DatetimeIndex(h.timestamps, freq="h"))
    _same(got["wide"], frame_histories(frame))


def test_future_rows_and_covariates_split_alike(tmp_path):
    a = np.arange(12.0)
    a[9:] = np.nan  # the last 3 rows: the forecast steps of a model with known covariates
    wide = _table(a=a, hol=["x", "y"] * 6, temp=np.linspace(0, 1, 12))
    got = _entries(tmp_path, wide, ["a"], covariates=("hol", "temp"), known=("hol",))
    _same(got["wide"], got["long"])
    _same(got["long"], got["ray"])
    h = got["wide"][0]
    assert len(h.values) == 9 and len(h.covariates) == 12  # history rows; covariates keep the future rows
    assert list(h.covariates["hol"][-3:]) == ["y", "x", "y"]
    assert any("forecast steps" in n for n in got["long"][0].notes)
    # Without known covariates the trailing empty rows are missing context values, in every entry.
    got = _entries(tmp_path, wide, ["a"], covariates=("temp",))
    _same(got["wide"], got["ray"])
    assert len(got["wide"][0].values) == 12


def test_duplicate_timestamps_wide_keeps_the_first_long_refuses(tmp_path):
    wide = _table(a=np.arange(12.0))
    wide = pd.concat([wide, wide.iloc[[4]].assign(a=99.0)], ignore_index=True)
    _, table = _wide(tmp_path, wide)
    hist, _ = table_histories(table)
    assert hist[0].values[4] == 4.0 and any("repeats the timestamp" in n for n in table.notes)
    with pytest.raises(DataError, match="rows share a timestamp"):
        _entries(tmp_path, wide, ["a"])


@pytest.mark.parametrize("skip", [False, True])
def test_unusable_series_same_rule_in_every_entry(tmp_path, skip):
    """An all-missing context and a too-short series: the same error (or, skipped, the same kept
    series) whichever entry the histories came from."""
    wide = _table(a=np.arange(12.0), e=np.r_[np.arange(6.0), np.full(6, np.nan)])
    got = _entries(tmp_path, wide, ["a", "e"])
    outcomes = set()
    for entry, hist in got.items():
        if skip:
            kept, warning = usable(hist, 4, skip=True)
            outcomes.add((tuple(str(h.id) for h in kept), warning))
        else:
            with pytest.raises(ForecastError) as err:
                usable(hist, 4, skip=False)
            outcomes.add(str(err.value))
    assert len(outcomes) == 1, outcomes
    (only,) = outcomes
    if skip:
        assert only[0] == ("a",) and "skipped 1 of 2 series" in only[1]
    else:
        assert only == ("series 'e' has no observed value in the last 4 rows (the model's context); "
                        "--skip-bad-series forecasts the others")
    # A series shorter than the context is skippable as well (a long table's series have their own lengths).
    short = got["long"][:1] + [type(got["long"][0])(id="s", values=np.ones(3))]
    kept, warning = usable(short, 4, skip=True)
    assert [h.id for h in kept] == ["a"] and "fewer than 4 rows" in warning


def test_windows_are_the_last_context_rows_with_features_of_those_rows(tmp_path):
    from dil.runtime.inputs.features import FeatureSpec

    spec = FeatureSpec(time_features=("hour_of_day",), freq="h")
    wide = _table(a=np.arange(12.0), b=np.arange(12.0) + 100)
    got = _entries(tmp_path, wide, ["a", "b"])
    w_wide = build_windows(got["wide"], spec, 4, 2)
    w_long = build_windows(got["long"], spec, 4, 2, name_series=True)
    np.testing.assert_array_equal(w_wide.contexts, [[8, 9, 10, 11], [108, 109, 110, 111]])
    np.testing.assert_array_equal(w_wide.contexts, w_long.contexts)
    for name in ("context_known", "context_past", "horizon_known"):
        np.testing.assert_array_equal(getattr(w_wide.features, name), getattr(w_long.features, name))
    # hour_of_day of hours 8..11 and of the future hours 12, 13 (GluonTS scaling: hour / 23 - 0.5)
    np.testing.assert_allclose(w_wide.features.context_known[0, :, 0], np.arange(8, 12) / 23 - 0.5)
    np.testing.assert_allclose(w_wide.features.horizon_known[1, :, 0], np.arange(12, 14) / 23 - 0.5)
    assert w_wide.shared_future is not None and str(w_wide.shared_future[0])[:13] == "2024-01-01T12"
