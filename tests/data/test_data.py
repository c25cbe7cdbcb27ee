"""dil.data: loading and cleaning against independent pandas computations, splits, windows."""

from __future__ import annotations

import gzip

import numpy as np
import pandas as pd
import pytest

from dil.runtime.support.files import sha256_file

from dil.data import (
    DATASETS,
    DataError,
    DatasetSpec,
    Splits,
    gather_series,
    gather_windows,
    get_spec,
    load_dataset,
    load_table,
    observed_counts,
    resolve,
    split_bounds,
    test_origins,
    usable_windows,
    window_origins,
)


# -- bundled datasets -------------------------------------------------------------------------------
def test_metro_deduplicated_and_missing_hours_are_nan():
    spec = get_spec("metro-traffic")
    raw = pd.read_csv(spec.path)
    raw["t"] = pd.to_datetime(raw["date_time"])
    first = raw.drop_duplicates("t", keep="first").set_index("t")["traffic_volume"]
    full = pd.date_range(first.index.min(), first.index.max(), freq="h")
    expected = first.reindex(full).to_numpy(dtype=float)

    table = load_dataset("metro-traffic")
    assert table.names == ["traffic_volume"] and table.freq == "h"
    assert table.n_steps == len(full) == 52551
    assert int(np.isnan(table.values).sum()) == len(full) - raw["t"].nunique() == 11976
    assert len(raw) - raw["t"].nunique() == 7629  # the duplicates the README describes
    np.testing.assert_array_equal(table.values[:, 0], expected)  # NaN where NaN, never 0-filled
    np.testing.assert_array_equal(table.timestamps, full.to_numpy())
    assert table.sha256 == sha256_file(spec.path) == "07d3c0566e342648f11db21f0b12c362e6fee9e3b6aa292917cb25d3cb981d69"


def test_weather_sentinels_duplicate_and_gap():
    raw = pd.read_csv(get_spec("weather").path)
    numeric = raw.drop(columns="date")
    n_sentinel = int((numeric == -9999).to_numpy().sum())
    times = pd.to_datetime(raw["date"])
    n_full = len(pd.date_range(times.min(), times.max(), freq="10min"))
    n_missing_rows = n_full - times.nunique()
    table = load_dataset("weather")
    assert (n_sentinel, n_missing_rows) == (81, 9)
    assert table.values.shape == (n_full, 21) and table.freq == "10min"
    assert not np.any(table.values == -9999)
    assert int(np.isnan(table.values).sum()) == n_sentinel + 21 * n_missing_rows


@pytest.mark.parametrize("name", list(DATASETS))
def test_every_bundled_dataset_loads_and_splits(name):
    spec = get_spec(name)
    table = load_dataset(name)
    assert table.freq == spec.freq
    if spec.columns is not None:
        assert table.names == list(spec.columns)
    b = split_bounds(spec, table.n_steps)
    assert b["train"][0] == 0 and b["train"][1] == b["val"][0] and b["val"][1] == b["test"][0]
    assert b["test"][1] <= table.n_steps
    origins = test_origins(spec, table.n_steps)
    assert origins[0] >= b["test"][0] and origins[-1] + spec.horizon <= b["test"][1]
    assert np.all(np.diff(origins) == spec.horizon)


def test_exchange_rate_headerless_and_nips_split():
    table = load_dataset("exchange-rate")
    raw = np.loadtxt(get_spec("exchange-rate").path, delimiter=",")
    np.testing.assert_array_equal(table.values, raw)
    assert table.names[0] == "AUD" and table.timestamps is None
    origins = test_origins("exchange-rate", table.n_steps)
    np.testing.assert_array_equal(origins, [6071, 6101, 6131, 6161, 6191])  # GluonTS exchange_rate_nips


def test_ett_split_is_12_4_4_months():
    assert split_bounds("etth1", 17420) == {"train": (0, 8640), "val": (8640, 11520), "test": (11520, 14400)}


def test_unknown_dataset_lists_names():
    with pytest.raises(DataError, match="metro-traffic"):
        get_spec("nope")


# -- loader on small files ------------------------------------------------------------------------
def test_dates_sorted_deduplicated_and_reindexed(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text(
        "date,a,b\n"
        "2024-01-01 03:00,4,40\n"
        "2024-01-01 00:00,1,10\n"
        "2024-01-01 01:00,2,\n"
        "2024-01-01 01:00,99,99\n"  # duplicate hour: the first row wins
        "2024-01-01 04:00,5,50\n"
    )
    t = load_table(path, date_column="date")
    assert t.freq == "h" and t.names == ["a", "b"]
    np.testing.assert_array_equal(t.values, [[1, 10], [2, np.nan], [np.nan, np.nan], [4, 40], [5, 50]])
    assert t.timestamps[2] == np.datetime64("2024-01-01T02:00")
    # One line per repair, with its count and the rule applied.
    assert t.notes == [
        "note: t.csv: column 'date': rows are not in time order (data row 2 goes back in time); sorted by time",
        "warning: t.csv: column 'date': 1 row repeats the timestamp of an earlier row (1 timestamp, first "
        "2024-01-01 01:00:00); the first row in the file of each timestamp is kept",
        "note: t.csv: column 'date': 1 missing step of h between the first and last timestamp added as missing values",
    ]
    assert load_dataset("metro-traffic").notes == []  # bundled cleaning is documented in PROVENANCE.md


def _dated(tmp_path, dates, name="d.csv"):
    path = tmp_path / name
    pd.DataFrame({"when": dates, "x": np.arange(len(dates), dtype=float)}).to_csv(path, index=False)
    return path


HOURS_12_DAYS = pd.date_range("2016-07-01", periods=12 * 24, freq="h")  # day values 1..12: ambiguous
HOURS_20_DAYS = pd.date_range("2016-07-01", periods=20 * 24, freq="h")  # days 13..20 exist: day-first only


@pytest.mark.parametrize(
    "dates, kwargs, first, freq",
    [
        (HOURS_12_DAYS.strftime("%d.%m.%Y %H:%M"), {"dayfirst": True}, "2016-07-01T00:00", "h"),
        (HOURS_12_DAYS.strftime("%d.%m.%Y %H:%M"), {"date_format": "%d.%m.%Y %H:%M"}, "2016-07-01T00:00", "h"),
        (HOURS_20_DAYS.strftime("%d.%m.%Y %H:%M"), {}, "2016-07-01T00:00", "h"),
        (HOURS_20_DAYS.strftime("%m/%d/%Y %H:%M"), {}, "2016-07-01T00:00", "h"),
        (HOURS_12_DAYS.strftime("%Y-%m-%d %H:%M"), {"dayfirst": True}, "2016-07-01T00:00", "h"),  # ISO: year first
        (["01/02/2016", "01/03/2016", "01/04/2016"], {"dayfirst": True}, "2016-02-01", "MS"),
        (["01/02/2016", "01/03/2016", "01/04/2016"], {"dayfirst": False}, "2016-01-02", "D"),
    ],
)
def test_date_reading(tmp_path, dates, kwargs, first, freq):
    t = load_table(_dated(tmp_path, list(dates)), "when", **kwargs)
    assert t.timestamps[0] == np.datetime64(first) and t.freq == freq and t.n_steps == len(dates)
    np.testing.assert_array_equal(t.values[:, 0], np.arange(len(dates)))


@pytest.mark.parametrize(
    "dates, kwargs, message",
    [
        (HOURS_12_DAYS.strftime("%d.%m.%Y %H:%M"), {},
         r"d.csv: the dates of column 'when' read both month-first and day-first \('01.07.2016 00:00' is 2016-01-07 "
         r"or 2016-07-01\); pass --dayfirst, --monthfirst or --date-format"),
        (["01/02/2016"], {}, r"'01/02/2016' is 2016-01-02 or 2016-02-01"),
        (HOURS_12_DAYS.strftime("%d.%m.%Y"), {"date_format": "%Y-%m-%d"},
         r"column 'when' has an unparseable date at data row 1: '01.07.2016' \(--date-format '%Y-%m-%d'\)"),
    ],
)
def test_ambiguous_or_unreadable_dates_are_refused(tmp_path, dates, kwargs, message):
    with pytest.raises(DataError, match=message) as info:
        load_table(_dated(tmp_path, list(dates)), "when", **kwargs)
    assert "\n" not in str(info.value)


def test_date_options_need_a_date_column(tmp_path):
    path = _dated(tmp_path, ["2016-01-01", "2016-01-02"])
    with pytest.raises(DataError, match="needs a date column"):
        load_table(path, date_format="%Y-%m-%d")
    with pytest.raises(DataError, match="--date-format applies to a data file"):
        resolve(dataset="etth1", date_format="%Y")
    spec, table = resolve(data=_dated(tmp_path, list(HOURS_12_DAYS.strftime("%d.%m.%Y %H:%M"))), date_column="when",
                          dayfirst=True)
    assert (spec.dayfirst, spec.date_format, spec.freq, spec.season) == (True, None, "h", 168)


def test_text_columns_skipped_unless_requested(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("kind,x\nfoo,1\nbar,2\nbaz,3\n")
    assert load_table(path).names == ["x"]
    with pytest.raises(DataError, match=r"column 'kind' is not numeric \(data row 1"):
        load_table(path, columns=["kind"])


def test_csv_and_parquet_round_trip(tmp_path):
    pytest.importorskip("pyarrow")
    times = pd.date_range("2024-03-01", periods=30, freq="15min")
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"date": times, "u": rng.normal(size=30), "v": rng.normal(size=30)})
    frame.loc[[3, 17], "u"] = np.nan
    frame.to_csv(tmp_path / "t.csv.gz", index=False)
    frame.to_parquet(tmp_path / "t.parquet")
    a = load_table(tmp_path / "t.csv.gz", date_column="date")
    b = load_table(tmp_path / "t.parquet", date_column="date")
    for t in (a, b):
        np.testing.assert_allclose(t.values, frame[["u", "v"]].to_numpy(), rtol=0, atol=1e-15)
        np.testing.assert_array_equal(t.timestamps, times.to_numpy())
        assert t.freq == "15min"
    assert np.isnan(a.values[3, 0]) and np.isnan(b.values[17, 0])


def test_headerless_txt_gz(tmp_path):
    path = tmp_path / "x.txt.gz"
    with gzip.open(path, "wt") as fh:
        fh.write("0.5,1.5\n0.25,2.5\n0.125,3.5\n")
    t = load_table(path)
    assert t.names == ["0", "1"] and t.timestamps is None
    np.testing.assert_array_equal(t.values, [[0.5, 1.5], [0.25, 2.5], [0.125, 3.5]])
    np.testing.assert_array_equal(load_table(path, columns=["1"]).values[:, 0], [1.5, 2.5, 3.5])


@pytest.mark.parametrize(
    "name, text, kwargs, message",
    [
        ("a.csv", "x,y\n1,2\ninf,3\n", {}, r"a.csv: column 'x' has an infinite value at data row 2"),
        ("b.csv", "x,y\n1,2\n2,oops\n3,4\n4,5\n", {}, r"b.csv: column 'y' is not numeric \(data row 2: 'oops'\)"),
        ("c.csv", "x,y\n", {}, r"c.csv: the file has no rows"),
        ("d.csv", "x,y\n1,2\n", {"columns": ["z"]}, r"d.csv: unknown column 'z'"),
        ("e.csv", "x,y\n1,2\n", {"date_column": "when"}, r"e.csv: unknown date column 'when'"),
        ("f.csv", "d,y\n2024-01-01,2\nnot a date,3\n", {"date_column": "d"}, r"f.csv: column 'd' has an unparseable date at data row 2"),
        ("g.xlsx", "x\n1\n", {}, r"g.xlsx: unsupported file type"),
        ("h.csv.gz", "this is not gzip", {}, r"h.csv.gz: cannot read the file"),
        ("i.csv", "a,b\nfoo,bar\n", {}, r"i.csv: no numeric column"),
    ],
)
def test_bad_inputs_one_line_errors(tmp_path, name, text, kwargs, message):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(DataError, match=message) as info:
        load_table(path, **kwargs)
    assert "\n" not in str(info.value)


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="data file not found"):
        load_table(tmp_path / "absent.csv")


def test_resolve_user_file_and_conflicts(tmp_path):
    path = tmp_path / "u.csv"
    path.write_text("date,a,b\n" + "".join(f"2024-01-{d:02d},{d},{2 * d}\n" for d in range(1, 29)))
    spec, table = resolve(data=path, date_column="date", columns="b")
    assert table.names == ["b"] and spec.freq == "D" and spec.season == 7 and not spec.bundled
    with pytest.raises(DataError, match="not both"):
        resolve(dataset="etth1", data=path)
    with pytest.raises(DataError, match="date-column"):
        resolve(dataset="etth1", date_column="date")
    spec, table = resolve(dataset="etth1", columns="OT,HUFL")
    assert table.names == ["OT", "HUFL"] and spec.columns == ("OT", "HUFL")


def test_resolve_reads_covariates_beside_the_targets(tmp_path):
    raw = pd.read_csv(get_spec("metro-traffic").path, keep_default_na=False)
    spec, table = resolve(dataset="metro-traffic", covariates="holiday,temp")
    assert table.names == ["traffic_volume"] and list(table.covariates.columns) == ["holiday", "temp"]
    assert table.covariates.shape[0] == table.n_steps
    # the first row is the file's first: an ordinary day is the category "None", not a missing cell
    assert (table.covariates["holiday"][0], table.covariates["temp"][0]) == (raw["holiday"][0], raw["temp"][0])
    path = tmp_path / "u.csv"
    path.write_text("date,a,b\n" + "".join(f"2024-01-{d:02d},{d},{2 * d}\n" for d in range(1, 29)))
    spec, table = resolve(data=path, date_column="date", covariates=["b"])
    assert table.names == ["a"] and table.covariates["b"].tolist() == [2.0 * d for d in range(1, 29)]
    with pytest.raises(DataError, match="'b' is both a covariate and a target column"):
        resolve(data=path, date_column="date", columns="a,b", covariates="b")
    with pytest.raises(DataError, match="'nope'"):
        resolve(data=path, date_column="date", covariates="nope")


# -- splits and windows -----------------------------------------------------------------------------
def test_made_folders_removed_again_on_failure(tmp_path):
    from dil.runtime.support.files import folder_problem, made_folders

    (tmp_path / "file").write_text("x")
    assert folder_problem(tmp_path / "a" / "b") is None
    assert folder_problem(tmp_path / "file" / "b") == f"{tmp_path / 'file'} is not a folder"
    with pytest.raises(RuntimeError):
        with made_folders(tmp_path / "a" / "b", tmp_path / "c"):
            assert (tmp_path / "a" / "b").is_dir() and (tmp_path / "c").is_dir()
            (tmp_path / "c" / "kept.txt").write_text("written before the failure")
            raise RuntimeError
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c", "file"]  # "a", "a/b" removed; "c" holds a file
    with made_folders(tmp_path / "a" / "b"):
        pass
    assert (tmp_path / "a" / "b").is_dir()


def test_fraction_split_hand_computed():
    spec = DatasetSpec("x", "x.csv", None, None, None, 1, 4, 2, splits=Splits(0.7, 0.1, 0.2))
    assert split_bounds(spec, 101) == {"train": (0, 71), "val": (71, 81), "test": (81, 101)}
    assert split_bounds(None, 10) == {"train": (0, 7), "val": (7, 8), "test": (8, 10)}
    with pytest.raises(DataError, match="too few"):
        split_bounds(None, 3)
    with pytest.raises(DataError, match="needs 14400 rows"):
        split_bounds("etth1", 14000)


def test_window_origins_hand_worked():
    # T=20, L=5, H=3, targets inside [8, 15): o in {8, 10, 12} with stride 2 (12 + 3 = 15 <= 15).
    np.testing.assert_array_equal(window_origins(20, 5, 3, 8, 15, stride=2), [8, 10, 12])
    # start before the first full context: the first origin is L.
    np.testing.assert_array_equal(window_origins(10, 5, 3), [5, 6, 7])
    assert window_origins(7, 5, 3).size == 0


def test_test_origins_protocol_and_subset():
    spec = DatasetSpec("x", "x.csv", None, None, None, 1, 4, 2, splits=Splits(0.6, 0.2, 0.2))
    full = test_origins(spec, 100)  # test part rows 80..99
    np.testing.assert_array_equal(full, np.arange(80, 99, 2))
    np.testing.assert_array_equal(test_origins(spec, 100, n_windows=3), [80, 88, 98])
    np.testing.assert_array_equal(test_origins(spec, 100, context=90, horizon=5), [90, 95])
    with pytest.raises(DataError, match="holds no window"):
        test_origins(spec, 100, context=97, horizon=5)


def test_gather_windows_and_counts():
    T, C, L, H = 12, 3, 4, 2
    values = np.arange(T * C, dtype=float).reshape(T, C)
    values[5, 1] = np.nan
    origins = np.array([4, 7])
    ctx, tgt = gather_windows(values, origins, L, H)
    assert ctx.shape == (6, 4) and tgt.shape == (6, 2)
    for w, o in enumerate(origins):
        for c in range(C):
            np.testing.assert_array_equal(ctx[w * C + c], values[o - L : o, c])
            np.testing.assert_array_equal(tgt[w * C + c], values[o : o + H, c])
    c1, t1 = gather_series(values, origins, [1, 2], L, H)
    np.testing.assert_array_equal(c1[0], values[0:4, 1])
    np.testing.assert_array_equal(t1[1], values[7:9, 2])
    ctx_n, tgt_n = observed_counts(values, origins, L, H)
    np.testing.assert_array_equal(ctx_n, (~np.isnan(ctx)).sum(1).reshape(2, C))
    np.testing.assert_array_equal(tgt_n, (~np.isnan(tgt)).sum(1).reshape(2, C))
    assert ctx_n[1, 1] == 3 and tgt_n[0, 1] == 1


def test_window_rows_context_and_horizon():
    """Training and the runtime take a window's feature rows from the same WindowFeatures.from_rows."""
    from dil.runtime.inputs.features import RowFeatures
    from dil.runtime.inputs.window_features import WindowFeatures

    rows = np.arange(10 * 2, dtype=float).reshape(10, 2)  # row t holds (2t, 2t + 1)
    w = WindowFeatures.from_rows(RowFeatures(known=rows, past=rows, known_missing=np.zeros((10, 0), bool)), [4, 7], 3, 2)
    ctx, hor = w.context_known, w.horizon_known
    np.testing.assert_array_equal(w.context_past, ctx)
    assert ctx.shape == (2, 3, 2) and hor.shape == (2, 2, 2)
    np.testing.assert_array_equal(ctx[1, :, 0], [8.0, 10.0, 12.0])  # rows 4, 5, 6
    np.testing.assert_array_equal(hor[0, :, 1], [9.0, 11.0])  # rows 4, 5


def test_usable_windows_skips_empty_context_and_target():
    ctx = np.array([[np.nan, np.nan, np.nan, np.nan], [1, np.nan, np.nan, np.nan], [1, 2, 3, np.nan]])
    tgt = np.array([[1.0, 2.0], [1.0, 2.0], [np.nan, np.nan]])
    np.testing.assert_array_equal(usable_windows(ctx), [False, True, True])
    np.testing.assert_array_equal(usable_windows(ctx, tgt), [False, True, False])
    np.testing.assert_array_equal(usable_windows(ctx, min_context=0.5), [False, False, True])
