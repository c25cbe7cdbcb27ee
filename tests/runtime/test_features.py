"""dil.runtime.inputs.features: calendar features against hand-worked timestamps, covariate encoding with
training-row statistics, the feature record's round trip, and the one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from dil.runtime.inputs.features import (
    MAX_CATEGORIES,
    TIME_FEATURES,
    Covariate,
    FeatureError,
    FeatureSpec,
    context_inputs,
    covariate_kind,
    fit_covariates,
    row_features,
    time_feature_names,
    time_features,
)

nan = np.nan
HOURLY = ("hour_of_day", "day_of_week", "day_of_month", "day_of_year")
DAILY = ("day_of_week", "day_of_month", "day_of_year")


# -- time features ----------------------------------------------------------------------------------
def test_hourly_rows_across_midnight_and_a_month_end():
    # Sunday 2021-01-31 22:00 .. Monday 2021-02-01 01:00 (naive timestamps: no DST).
    ts = pd.date_range("2021-01-31 22:00", periods=4, freq="h")
    assert time_feature_names("h") == HOURLY
    want = np.array([
        # hour/23 - .5, weekday/6 - .5 (Sun 6, Mon 0), (day-1)/30 - .5, (day of year-1)/365 - .5
        [22 / 23 - 0.5, 0.5, 0.5, 30 / 365 - 0.5],
        [0.5, 0.5, 0.5, 30 / 365 - 0.5],
        [-0.5, -0.5, -0.5, 31 / 365 - 0.5],
        [1 / 23 - 0.5, -0.5, -0.5, 31 / 365 - 0.5],
    ])
    np.testing.assert_allclose(time_features(ts, HOURLY), want, rtol=0, atol=1e-15)
    # datetime64 arrays (what SeriesTable.timestamps holds) give the same numbers
    np.testing.assert_array_equal(time_features(ts.to_numpy(), HOURLY), time_features(ts, HOURLY))


def test_daily_rows_across_a_leap_year_end():
    ts = pd.to_datetime(["2020-12-30", "2020-12-31", "2021-01-01"])  # Wed, Thu, Fri; 2020 has 366 days
    assert time_feature_names("D") == DAILY
    want = np.array([
        [2 / 6 - 0.5, 29 / 30 - 0.5, 364 / 365 - 0.5],
        [3 / 6 - 0.5, 0.5, 0.5],  # day 366 of a leap year is the top of the range
        [4 / 6 - 0.5, -0.5, -0.5],
    ])
    np.testing.assert_allclose(time_features(ts, DAILY), want, rtol=0, atol=1e-15)


def test_business_days_skip_the_weekend():
    assert time_feature_names("B") == DAILY
    ts = pd.date_range("2021-01-29", periods=3, freq="B")  # Fri 29 Jan, Mon 1 Feb, Tue 2 Feb
    want = np.array([
        [4 / 6 - 0.5, 28 / 30 - 0.5, 28 / 365 - 0.5],
        [-0.5, -0.5, 31 / 365 - 0.5],
        [1 / 6 - 0.5, 1 / 30 - 0.5, 32 / 365 - 0.5],
    ])
    np.testing.assert_allclose(time_features(ts, DAILY), want, rtol=0, atol=1e-15)


def test_weekly_and_monthly_rows():
    assert time_feature_names("W-SUN") == ("day_of_month", "week_of_year")
    ts = pd.to_datetime(["2021-01-03", "2021-01-10"])  # ISO week 53 of 2020, then week 1
    np.testing.assert_allclose(time_features(ts, ("day_of_month", "week_of_year")),
                               [[2 / 30 - 0.5, 0.5], [9 / 30 - 0.5, -0.5]], rtol=0, atol=1e-15)
    assert time_feature_names("MS") == time_feature_names("ME") == ("month_of_year",)
    months = pd.date_range("2021-01-01", periods=12, freq="MS")
    np.testing.assert_allclose(time_features(months, ("month_of_year",))[:, 0], np.arange(12) / 11 - 0.5, atol=1e-15)


@pytest.mark.parametrize("freq, names", [
    ("10min", ("minute_of_hour",) + HOURLY), ("s", ("second_of_minute", "minute_of_hour") + HOURLY),
    ("2h", HOURLY), ("YE", ()), ("ms", ()), (None, ()), ("", ()),
])
def test_feature_sets_by_frequency(freq, names):
    assert time_feature_names(freq) == names


def test_features_span_exactly_minus_half_to_half():
    ts = pd.date_range("2019-01-01", "2021-12-31 23:59:59", freq="s")[::997]  # every calendar field's full range
    f = time_features(ts, TIME_FEATURES)
    np.testing.assert_allclose(f.min(axis=0), -0.5, atol=1e-12)
    np.testing.assert_allclose(f.max(axis=0), 0.5, atol=1e-12)


def test_a_table_without_dates_has_no_features():
    spec = FeatureSpec(freq=None, time_features=time_feature_names(None))
    rf = row_features(spec, None, None, rows=5)
    assert rf.known.shape == (5, 0) and rf.past.shape == (5, 0) and rf.known_missing.shape == (5, 0)
    assert (spec.context_width, spec.horizon_width) == (2, 1)
    with pytest.raises(FeatureError, match="no dates"):
        row_features(FeatureSpec(freq="h", time_features=HOURLY), None, None, rows=5)


def test_unknown_frequency_and_feature_are_one_line_errors():
    with pytest.raises(FeatureError, match="unknown row frequency 'fortnightly'"):
        time_feature_names("fortnightly")
    with pytest.raises(FeatureError, match="unknown time feature 'hour'"):
        time_features(pd.date_range("2021-01-01", periods=2, freq="h"), ("hour",))


# -- covariates -------------------------------------------------------------------------------------
def _frame():
    return pd.DataFrame({
        "temp": [1.0, 2.0, 3.0, nan, 10.0],
        "weather": ["rain", "sun", "rain", "snow", None],  # snow is never seen in the training rows
        "load": [5.0, 5.0, 5.0, 6.0, 7.0],  # constant in the training rows
    })


def test_numeric_standardised_with_training_rows_and_categorical_one_hot():
    frame = _frame()
    covs = fit_covariates(frame, ["temp", "weather"], ["load"], slice(0, 3))
    std = np.sqrt(2.0 / 3.0)  # population std of 1, 2, 3
    assert covs[0].std == pytest.approx(std, rel=1e-15)
    assert covs == (Covariate("temp", "numeric", True, 2.0, covs[0].std),
                    Covariate("weather", "categorical", True, categories=("rain", "sun")),
                    Covariate("load", "numeric", False, 5.0, 1.0))  # zero spread: std 1, not 0
    ts = pd.date_range("2021-01-31 22:00", periods=5, freq="h")
    spec = FeatureSpec("h", HOURLY, covs)
    assert (spec.known_width, spec.past_width, spec.context_width, spec.horizon_width) == (7, 1, 10, 8)
    assert spec.known_covariates == ("temp", "weather") and spec.past_covariates == ("load",)
    rf = row_features(spec, ts, frame)
    np.testing.assert_array_equal(rf.known[:, :4], time_features(ts, HOURLY))
    np.testing.assert_allclose(rf.known[:, 4], [-1 / std, 0.0, 1 / std, 0.0, 8 / std], rtol=1e-15)
    np.testing.assert_array_equal(rf.known[:, 5:], [[1, 0], [0, 1], [1, 0], [0, 0], [0, 0]])  # unseen, empty: 0
    np.testing.assert_array_equal(rf.past[:, 0], [0.0, 0.0, 0.0, 1.0, 2.0])
    # missing: temp's NaN and weather's empty cell; an unseen category is not missing
    np.testing.assert_array_equal(rf.known_missing, [[0, 0], [0, 0], [0, 0], [1, 0], [0, 1]])


def test_text_where_numbers_are_expected_names_column_and_row():
    frame = pd.DataFrame({"temp": ["1.5", "2", "", "NA", "3..1", "4"]})  # empty and NA cells are missing
    with pytest.raises(FeatureError) as err:
        fit_covariates(frame, ["temp"], [], slice(0, 3))
    assert str(err.value) == "covariate 'temp' is text where numbers are expected: data row 5 holds '3..1'"
    # the same check holds for rows outside the training part and for a table read later
    good = pd.DataFrame({"temp": ["1.5", "2", "", "NA", "3.5", "4"]})
    covs = fit_covariates(good, ["temp"], [], slice(0, 2))
    assert covs == (Covariate("temp", "numeric", True, 1.75, 0.25),)
    rf = row_features(FeatureSpec(covariates=covs), None, good)
    np.testing.assert_allclose(rf.known[:, 0], [-1.0, 1.0, 0.0, 0.0, 7.0, 9.0])
    np.testing.assert_array_equal(rf.known_missing[:, 0], [0, 0, 1, 1, 0, 0])
    with pytest.raises(FeatureError, match="data row 2 holds 'n.a.'"):
        row_features(FeatureSpec(covariates=covs), None, pd.DataFrame({"temp": ["1", "n.a.", "3"]}))


def test_text_column_is_categorical_with_na_words_as_categories():
    # metro's holiday column: the word "None" on ordinary days is a category, not a missing cell
    holiday = pd.Series(["None", "None", "Christmas Day", "None", "Labor Day", ""])
    assert covariate_kind("holiday", holiday) == "categorical"
    (cov,) = fit_covariates(pd.DataFrame({"holiday": holiday}), [], ["holiday"], slice(0, 4))
    assert cov == Covariate("holiday", "categorical", False, categories=("Christmas Day", "None"))
    rf = row_features(FeatureSpec(covariates=(cov,)), None, pd.DataFrame({"holiday": holiday}))
    np.testing.assert_array_equal(rf.past, [[0, 1], [0, 1], [1, 0], [0, 1], [0, 0], [0, 0]])
    assert rf.known.shape == (6, 0) and rf.known_missing.shape == (6, 0)
    # fewer numbers than words: codes, not a broken numeric column
    assert covariate_kind("code", pd.Series(["a", "b", "3", "c"])) == "categorical"
    with pytest.raises(FeatureError, match="'n' is text where numbers are expected: data row 3 holds 'x'"):
        covariate_kind("n", pd.Series(["1", "2", "x"]))


def test_bad_covariate_columns_are_one_line_errors():
    with pytest.raises(FeatureError, match="covariate 'rain' is not a column; columns are temp"):
        fit_covariates(pd.DataFrame({"temp": [1.0]}), ["rain"], [], slice(0, 1))
    with pytest.raises(FeatureError, match="'temp' has an infinite value at data row 2"):
        fit_covariates(pd.DataFrame({"temp": [1.0, np.inf]}), ["temp"], [], slice(0, 2))
    with pytest.raises(FeatureError, match="'temp' is named twice"):
        fit_covariates(pd.DataFrame({"temp": [1.0]}), ["temp"], ["temp"], slice(0, 1))
    with pytest.raises(FeatureError, match="'temp' has no value in the training rows \\(data rows 1..2\\)"):
        fit_covariates(pd.DataFrame({"temp": [nan, nan, 1.0]}), ["temp"], [], slice(0, 2))
    with pytest.raises(FeatureError, match="'temp' has no value in the training rows"):
        fit_covariates(pd.DataFrame({"temp": ["NA", "", "1.5"]}), ["temp"], [], slice(0, 2))
    with pytest.raises(FeatureError, match="'kind' has no value in the training rows"):
        fit_covariates(pd.DataFrame({"kind": ["", " ", "a"]}), [], ["kind"], slice(0, 2))
    many = pd.DataFrame({"id": [f"x{i}" for i in range(MAX_CATEGORIES + 1)]})
    with pytest.raises(FeatureError, match=f"{MAX_CATEGORIES + 1} categories"):
        fit_covariates(many, ["id"], [], slice(0, MAX_CATEGORIES + 1))
    spec = FeatureSpec(covariates=(Covariate("temp", "numeric", True),))
    with pytest.raises(FeatureError, match="trained with covariate 'temp' but the table has no such column"):
        row_features(spec, None, pd.DataFrame({"rain": [1.0]}))


def test_feature_spec_round_trips_through_json():
    spec = FeatureSpec("h", HOURLY, (Covariate("temp", "numeric", True, 281.5, 12.25),
                                     Covariate("holiday", "categorical", False, categories=("None", "X"))))
    d = json.loads(json.dumps(spec.to_dict()))
    assert d == {"freq": "h", "time_features": list(HOURLY), "covariates": [
        {"name": "temp", "kind": "numeric", "known": True, "mean": 281.5, "std": 12.25, "categories": []},
        {"name": "holiday", "kind": "categorical", "known": False, "mean": 0.0, "std": 1.0,
         "categories": ["None", "X"]}]}
    assert FeatureSpec.from_dict(d) == spec
    assert FeatureSpec.from_dict(None) == FeatureSpec.from_dict({}) == FeatureSpec()


@pytest.mark.parametrize("record, message", [
    ({"freq": "h", "extra": 1}, "unknown keys"),
    ({"time_features": ["hour"]}, "unknown time feature 'hour'"),
    ({"covariates": [{"name": "t", "kind": "text", "known": True}]}, "kind must be numeric or categorical"),
    ({"covariates": [{"name": "t", "kind": "numeric", "known": True, "std": 0.0}]}, "std > 0"),
    ({"covariates": [{"name": "t", "kind": "numeric"}]}, "invalid features record"),
])
def test_malformed_feature_record_is_a_feature_error(record, message):
    with pytest.raises(FeatureError, match=message):
        FeatureSpec.from_dict(record)


def test_context_inputs_layout():
    z = np.array([[0.5, nan, -1.0]])
    known = np.array([[[0.1, 0.2], [0.3, 0.4], [0.5, 0.6]]])
    past = np.array([[[7.0], [8.0], [9.0]]])
    out = context_inputs(z, known, past)
    assert out.dtype == np.float32 and out.shape == (1, 3, 5)
    np.testing.assert_array_equal(out[0], np.array([[0.5, 1, 0.1, 0.2, 7], [0, 0, 0.3, 0.4, 8], [-1, 1, 0.5, 0.6, 9]],
                                                   dtype=np.float32))
    np.testing.assert_array_equal(context_inputs(z), out[..., :2])  # no features: (value, observed)
