"""`dil-run` end to end on small tables, and every bad input it must refuse cleanly."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from dil.runtime.cli.run import main
from dil.runtime.support.files import sha256_file
from dil.runtime.outputs.quantiles import QUANTILE_LEVELS, quantile_column

QCOLS = [quantile_column(q) for q in QUANTILE_LEVELS]


@pytest.fixture()
def table_csv(tmp_path):
    """40 hourly rows of three series (one with a gap) and a date column."""
    rng = np.random.default_rng(2)
    frame = pd.DataFrame(50 + rng.standard_normal((40, 3)).cumsum(axis=0), columns=["north", "south", "east"])
    frame.loc[28, "south"] = np.nan
    frame.insert(0, "date", pd.date_range("2024-05-01", periods=40, freq="h").strftime("%Y-%m-%d %H:%M"))
    path = tmp_path / "in" / "table.csv"
    path.parent.mkdir()
    frame.to_csv(path, index=False)
    return path


def _run(args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_csv_and_plot_end_to_end(tiny_artifact, table_csv, tmp_path):
    out, plot = tmp_path / "forecast.csv", tmp_path / "forecast.png"
    result = _run(["--engine", tiny_artifact, "--input", table_csv, "--date-column", "date", "--samples", 8,
                   "--steps", 4, "--threads", 1, "--out", out, "--plot", plot, "--stats"])
    assert result.exit_code == 0, result.output
    assert "forecast 3 series x 8 steps" in result.output and "tokens_computed" in result.output
    frame = pd.read_csv(out, parse_dates=["timestamp"])
    assert list(frame.columns) == ["series", "timestamp", "mean", "median"] + QCOLS
    assert len(frame) == 3 * 8 and frame["series"].unique().tolist() == ["north", "south", "east"]
    assert frame["timestamp"].iloc[0] == pd.Timestamp("2024-05-02 16:00")
    assert (frame[QCOLS].diff(axis=1).iloc[:, 1:] >= 0).all().all()
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_parquet_output_and_stdout_mode(tiny_artifact, table_csv, tmp_path):
    out = tmp_path / "forecast.parquet"
    args = ["--engine", tiny_artifact, "--input", table_csv, "--columns", "east,north", "--samples", 4, "--steps", 3]
    result = _run(args + ["--out", out])
    assert result.exit_code == 0, result.output
    frame = pd.read_parquet(out)
    assert list(frame.columns) == ["series", "step", "mean", "median"] + QCOLS  # no --date-column
    assert frame["series"].unique().tolist() == ["east", "north"]
    # Without --out the table goes to stdout (same numbers) and the summary to stderr.
    result = _run(args)
    assert result.exit_code == 0
    printed = pd.read_csv(__import__("io").StringIO(result.stdout))
    np.testing.assert_allclose(printed["median"], frame["median"])
    assert "forecast 2 series" in result.stderr


def test_full_run_never_imports_torch(tiny_artifact, table_csv, tmp_path):
    out = tmp_path / "f.csv"
    code = (
        "import sys; from dil.runtime.cli.run import main; main(sys.argv[1:], standalone_mode=False);"
        "assert 'torch' not in sys.modules, 'torch was imported'"
    )
    args = ["--engine", str(tiny_artifact), "--input", str(table_csv), "--samples", "2", "--steps", "2",
            "--out", str(out), "--plot", str(tmp_path / "f.png")]
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert out.is_file()


def _bad_artifact(tiny_artifact, tmp_path, kind):
    """A copy of the tiny artifact broken in one way; returns the path to pass as --engine."""
    dest = tmp_path / "eng"
    dest.mkdir()
    for path in tiny_artifact.parent.glob("tiny.*"):  # the manifest and every graph it names
        shutil.copy(path, dest / path.name)
    manifest = dest / "tiny.json"
    d = json.loads(manifest.read_text())
    if kind == "not-onnx":  # a graph file that is not ONNX, with a manifest that vouches for it
        (dest / "tiny.denoise.onnx").write_text("not an onnx model\n")
        d["graphs"]["denoise"]["sha256"] = sha256_file(dest / "tiny.denoise.onnx")
    elif kind == "model-mismatch":
        d["model"]["num_layers"] = 3
    elif kind == "hash-mismatch":
        (dest / "tiny.encode.onnx").write_bytes((dest / "tiny.encode.onnx").read_bytes() + b"\0")
    elif kind == "plain-file":
        (dest / "model.onnx").write_text("hello\n")
        return dest / "model.onnx"
    manifest.write_text(json.dumps(d))
    return dest / "tiny.onnx"


def _write(path, frame):
    frame.to_csv(path, index=False)
    return path


BAD_INPUTS = {
    "missing file": (lambda p: p.parent / "nope.csv", {}, "not found"),
    "non-numeric column": (
        lambda p: _write(p, pd.read_csv(p).assign(south=lambda f: f["south"].astype(object).where(f.index != 5, "abc"))),
        {}, "not numeric",
    ),
    "text column asked for": (lambda p: p, {"--columns": "date"}, "date"),
    "inf value": (lambda p: _write(p, pd.read_csv(p).assign(east=lambda f: f["east"].where(f.index != 30, np.inf))), {}, "infinite"),
    "all-missing context": (
        lambda p: _write(p, pd.read_csv(p).assign(north=lambda f: f["north"].where(f.index < 20))), {}, "no observed value",
    ),
    "too few rows": (lambda p: _write(p, pd.read_csv(p).head(10)), {}, "at least 16"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_exits_with_one_line_and_writes_nothing(tiny_artifact, table_csv, tmp_path, case):
    make, extra, match = BAD_INPUTS[case]
    path = make(table_csv)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    args = ["--engine", tiny_artifact, "--input", path, "--samples", 2, "--steps", 2,
            "--out", out_dir / "f.csv", "--plot", out_dir / "f.png"]
    for k, v in extra.items():
        args += [k, v]
    result = _run(args)
    _assert_clean_failure(result, match)
    assert list(out_dir.iterdir()) == []


@pytest.mark.parametrize("kind,match", [
    ("not-onnx", "not a loadable ONNX model"),
    ("model-mismatch", "does not match its manifest"),
    ("hash-mismatch", "does not match its manifest"),
    ("plain-file", "no manifest"),
])
def test_bad_engine_exits_with_one_line_and_writes_nothing(tiny_artifact, table_csv, tmp_path, kind, match):
    engine = _bad_artifact(tiny_artifact, tmp_path, kind)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    result = _run(["--engine", engine, "--input", table_csv, "--samples", 2, "--steps", 2, "--out", out_dir / "f.csv"])
    _assert_clean_failure(result, match)
    assert list(out_dir.iterdir()) == []


@pytest.mark.parametrize("opt,name,match", [
    ("--out", "in/table.csv/f.csv", "table.csv is not a folder"),
    ("--plot", "in/table.csv/sub/f.png", "table.csv is not a folder"),
    ("--out", "in", "is a folder"),
    ("--out", "f.xlsx", "unsupported file type"),
    ("--steps", None, "steps must be an integer"),
])
def test_bad_options_exit_with_one_line(tiny_artifact, table_csv, tmp_path, opt, name, match):
    value = "0" if name is None else tmp_path / name
    result = _run(["--engine", tiny_artifact, "--input", table_csv, "--samples", 2, opt, value])
    _assert_clean_failure(result, match)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]


def _assert_clean_failure(result, match):
    """One error line, last; any line before it is a one-line note or warning about the input."""
    assert result.exit_code != 0
    lines = result.output.strip().splitlines()
    assert lines[-1].startswith("Error: ") and match in lines[-1], result.output
    assert all(line.startswith(("note: ", "warning: ")) for line in lines[:-1]), result.output
    assert "Traceback" not in result.output


# -- output folders, date formats, which series, repaired input (the house's user-input defects) ----
ROOT = __import__("pathlib").Path(__file__).resolve().parents[2]
FAST = ["--samples", 4, "--steps", 3, "--threads", 1]


def _lines(text, prefix):
    return [line for line in text.splitlines() if line.startswith(prefix)]


def test_missing_output_folders_are_created(tiny_artifact, table_csv, tmp_path):
    out, plot = tmp_path / "runs" / "a" / "f.csv", tmp_path / "plots" / "f.png"
    result = _run(["--engine", tiny_artifact, "--input", table_csv, "--date-column", "date", *FAST,
                   "--out", out, "--plot", plot])
    assert result.exit_code == 0, result.output
    assert len(pd.read_csv(out)) == 3 * 8 and plot.read_bytes()[:4] == b"\x89PNG"


def test_failed_run_creates_no_folders(tiny_artifact, table_csv, tmp_path):
    short = _write(tmp_path / "in" / "short.csv", pd.read_csv(table_csv).head(10))
    result = _run(["--engine", tiny_artifact, "--input", short, *FAST, "--out", tmp_path / "new" / "f.csv",
                   "--plot", tmp_path / "new2" / "f.png"])
    _assert_clean_failure(result, "at least 16")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]


def _day_first(table_csv, tmp_path, fmt="%d.%m.%Y %H:%M"):
    """table_csv with its dates written day-first: 40 hours of 1-2 May, every day value <= 12."""
    frame = pd.read_csv(table_csv)
    frame["date"] = pd.to_datetime(frame["date"]).dt.strftime(fmt)
    return _write(tmp_path / "in" / "dayfirst.csv", frame)


def test_ambiguous_dates_stop_with_the_options(tiny_artifact, table_csv, tmp_path):
    path = _day_first(table_csv, tmp_path)
    result = _run(["--engine", tiny_artifact, "--input", path, "--date-column", "date", *FAST,
                   "--out", tmp_path / "f.csv"])
    _assert_clean_failure(result, "read both month-first and day-first ('01.05.2024 00:00' is 2024-01-05 or 2024-05-01)")
    assert "--dayfirst" in result.output and "--date-format" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]


@pytest.mark.parametrize("how", [["--dayfirst"], ["--date-format", "%d.%m.%Y %H:%M"]])
def test_dayfirst_and_date_format_read_the_dates(tiny_artifact, table_csv, tmp_path, how):
    ref, out = tmp_path / "iso.csv", tmp_path / "f.csv"
    assert _run(["--engine", tiny_artifact, "--input", table_csv, "--date-column", "date", *FAST,
                 "--out", ref]).exit_code == 0
    result = _run(["--engine", tiny_artifact, "--input", _day_first(table_csv, tmp_path), "--date-column", "date",
                   *how, *FAST, "--out", out])
    assert result.exit_code == 0, result.output
    got, want = pd.read_csv(out), pd.read_csv(ref)
    assert got["timestamp"].iloc[0] == "2024-05-02 16:00:00"  # 40 hourly rows from 1 May 00:00: next is 2 May 16:00
    pd.testing.assert_frame_equal(got, want)


def _artifact_trained_on(tiny_artifact, tmp_path, columns):
    """A copy of the tiny artifact whose manifest records `columns` as its training series."""
    dest = tmp_path / "eng"
    dest.mkdir()
    for path in tiny_artifact.parent.glob("tiny.*"):
        shutil.copy(path, dest / path.name)
    d = json.loads(tiny_artifact.read_text())
    d["data"]["columns"] = columns
    (dest / "tiny.json").write_text(json.dumps(d))
    return dest / "tiny.onnx"


def test_default_series_are_the_training_series(tiny_artifact, table_csv, tmp_path):
    engine = _artifact_trained_on(tiny_artifact, tmp_path, ["south", "north"])
    out, ref = tmp_path / "f.csv", tmp_path / "ref.csv"
    result = _run(["--engine", engine, "--input", table_csv, *FAST, "--out", out])
    assert result.exit_code == 0, result.output
    assert result.stderr == ""  # no note: the table has the model's series
    assert pd.read_csv(out)["series"].unique().tolist() == ["south", "north"]
    assert _run(["--engine", engine, "--input", table_csv, "--columns", "south,north", *FAST, "--out", ref]).exit_code == 0
    pd.testing.assert_frame_equal(pd.read_csv(out), pd.read_csv(ref))


def test_without_the_training_series_every_numeric_column_with_a_note(tiny_artifact, table_csv, tmp_path):
    engine = _artifact_trained_on(tiny_artifact, tmp_path, ["traffic_volume"])
    result = _run(["--engine", engine, "--input", table_csv, *FAST, "--out", tmp_path / "f.csv"])
    assert result.exit_code == 0, result.output
    assert result.stderr.splitlines() == [
        "note: forecasting every numeric column of table.csv (north, south, east): the model's training series "
        "(traffic_volume) are not in it; --columns picks the series"
    ]
    assert pd.read_csv(tmp_path / "f.csv")["series"].unique().tolist() == ["north", "south", "east"]


def test_shipped_model_forecasts_only_traffic_volume_of_the_metro_table(tmp_path):
    out = tmp_path / "f.csv"
    result = _run(["--engine", ROOT / "engines" / "metro-traffic.onnx", "--input",
                   ROOT / "data" / "files" / "metro_traffic.csv.gz", "--date-column", "date_time",
                   "--samples", 2, "--steps", 2, "--out", out])
    assert result.exit_code == 0, result.output
    frame = pd.read_csv(out, parse_dates=["timestamp"])
    assert frame["series"].unique().tolist() == ["traffic_volume"] and len(frame) == 24  # not temp, rain_1h, ...
    last = pd.to_datetime(pd.read_csv(ROOT / "data" / "files" / "metro_traffic.csv.gz")["date_time"]).max()
    assert frame["timestamp"].iloc[0] == last + pd.Timedelta(hours=1)
    # What reading the file repaired (counts as in test_data's pandas reference), and no column note.
    assert [line.split(": ")[3].split(" (")[0] for line in result.stderr.splitlines()] == [
        "7629 rows repeat the timestamp of an earlier row", "11976 missing steps of h between the first and last "
        "timestamp added as missing values"]


def test_plot_says_how_many_series_it_drew(tiny_artifact, table_csv, tmp_path):
    frame = pd.read_csv(table_csv).assign(west=lambda f: f["north"] * 2, up=lambda f: f["east"] + 1)
    path = _write(tmp_path / "in" / "five.csv", frame)
    result = _run(["--engine", tiny_artifact, "--input", path, "--columns", "north,south,east,west,up", *FAST,
                   "--out", tmp_path / "f.csv", "--plot", tmp_path / "f.png"])
    assert result.exit_code == 0, result.output
    assert f"fan chart of the first 4 of 5 series (north, south, east, west) -> {tmp_path / 'f.png'}" in result.output
    result = _run(["--engine", tiny_artifact, "--input", path, "--columns", "north,up", *FAST,
                   "--out", tmp_path / "g.csv", "--plot", tmp_path / "g.png"])
    assert f"fan chart of 2 series -> {tmp_path / 'g.png'}" in result.output


def test_duplicate_and_unsorted_timestamps_one_line_each(tiny_artifact, table_csv, tmp_path):
    clean = pd.read_csv(table_csv)
    repeats = clean.iloc[[3, 7, 7]].assign(north=-1e6)  # later rows of the same hours: the first rows win
    messy = pd.concat([clean.iloc[[1, 0]], clean.iloc[2:], repeats], ignore_index=True)  # rows 0 and 1 swapped
    path = _write(tmp_path / "in" / "messy.csv", messy)
    out, ref = tmp_path / "f.csv", tmp_path / "ref.csv"
    result = _run(["--engine", tiny_artifact, "--input", path, "--date-column", "date", "--columns", "north,south,east",
                   *FAST, "--out", out])
    assert result.exit_code == 0, result.output
    warnings = _lines(result.stderr, "warning:")
    assert warnings == ["warning: messy.csv: column 'date': 3 rows repeat the timestamp of an earlier row "
                        "(2 timestamps, first 2024-05-01 03:00:00); the first row in the file of each timestamp is kept"]
    assert _lines(result.stderr, "note:") == [
        "note: messy.csv: column 'date': rows are not in time order (data row 2 goes back in time); sorted by time"]
    assert _run(["--engine", tiny_artifact, "--input", table_csv, "--date-column", "date", *FAST,
                 "--out", ref]).exit_code == 0
    pd.testing.assert_frame_equal(pd.read_csv(out), pd.read_csv(ref))


def test_all_missing_series_stops_or_is_skipped(tiny_artifact, table_csv, tmp_path):
    frame = pd.read_csv(table_csv)
    frame.insert(2, "dead", np.nan)
    frame["gone"] = frame["east"].where(frame.index < 10)  # nothing in the last 16 rows
    path = _write(tmp_path / "in" / "dead.csv", frame)
    args = ["--engine", tiny_artifact, "--input", path, "--date-column", "date", *FAST]
    result = _run(args + ["--out", tmp_path / "f.csv"])
    _assert_clean_failure(result, "dead.csv: series 'dead', 'gone' have no observed value in the last 16 rows "
                                  "(the model's context); --skip-bad-series forecasts the others")
    assert not (tmp_path / "f.csv").exists()
    out, ref = tmp_path / "g.csv", tmp_path / "ref.csv"
    result = _run(args + ["--skip-bad-series", "--out", out])
    assert result.exit_code == 0, result.output
    assert _lines(result.stderr, "warning:") == [
        "warning: skipped 2 of 5 series with no observed value in the last 16 rows (the model's context): dead, gone"]
    assert _run(["--engine", tiny_artifact, "--input", table_csv, "--date-column", "date", *FAST,
                 "--out", ref]).exit_code == 0
    pd.testing.assert_frame_equal(pd.read_csv(out), pd.read_csv(ref))


# -- a model with time features and covariates (conftest FEATURE_SPEC) ---------------------------------
@pytest.fixture()
def feature_csv(tmp_path):
    """40 hourly rows of north and south, then 8 future rows (series empty, covariates filled):
    temp (numeric), holiday (text, "None" on ordinary days), rain_1h (past-only: empty in the
    future) and a text column the model does not use."""
    rng = np.random.default_rng(3)
    T, H = 40, 8
    frame = pd.DataFrame({"date": pd.date_range("2024-12-23", periods=T + H, freq="h").strftime("%Y-%m-%d %H:%M")})
    frame["north"] = np.r_[300 + rng.standard_normal(T).cumsum(), [np.nan] * H]
    frame["south"] = np.r_[280 + rng.standard_normal(T).cumsum(), [np.nan] * H]
    frame["temp"] = np.round(275 + 5 * np.sin(np.arange(T + H) / 3), 2)
    frame["holiday"] = ["None"] * (T + 2) + ["Christmas Day"] * (H - 2)
    frame["rain_1h"] = np.r_[np.round(rng.uniform(0, 2, T), 2), [np.nan] * H]
    frame["remark"] = "ok"
    path = tmp_path / "in" / "features.csv"
    path.parent.mkdir()
    frame.to_csv(path, index=False)
    return path


def test_dil_run_feeds_a_feature_model_the_future_covariates(tiny_feature_artifact, feature_csv, tmp_path):
    """The rows after the last observed value are the forecast steps: the forecast starts there and
    equals Forecaster.predict given the history and the covariate rows read independently."""
    from dil.runtime import Forecaster

    out, plot = tmp_path / "f.csv", tmp_path / "f.png"
    result = _run(["--engine", tiny_feature_artifact, "--input", feature_csv, "--date-column", "date", *FAST,
                   "--out", out, "--plot", plot])
    assert result.exit_code == 0, result.output
    assert ("model inputs: 2 time features (hour_of_day, day_of_week), known covariates temp, holiday, past "
            "covariate rain_1h)") in result.output
    assert ("note: the last 8 rows of features.csv (from 2024-12-24 16:00:00), after the last observed value, are "
            "the forecast steps: their known covariates (temp, holiday) are used") in result.output
    frame = pd.read_csv(out, parse_dates=["timestamp"])
    assert frame["series"].unique().tolist() == ["north", "south"]  # covariates are never forecast
    assert frame["timestamp"].iloc[0] == pd.Timestamp("2024-12-24 16:00") and len(frame) == 2 * 8

    raw = pd.read_csv(feature_csv, keep_default_na=False, na_values={"north": [""], "south": [""], "temp": [""],
                                                                       "rain_1h": [""]})
    history = raw[["north", "south"]].iloc[:40].set_axis(pd.DatetimeIndex(raw["date"].iloc[:40]))
    ref = Forecaster.load(tiny_feature_artifact, threads=1).predict(
        history, num_samples=4, steps=3, covariates=raw[["temp", "holiday", "rain_1h"]])
    np.testing.assert_allclose(frame["mean"].to_numpy(), ref.mean.reshape(-1), rtol=1e-12)


FEATURE_BAD_INPUTS = {
    "future gap": (lambda f: f.assign(temp=f["temp"].where(~f.index.isin([42, 43, 44]))), ["--date-column", "date"],
                   "covariate 'temp' is empty in future rows 3-5 of 8: the model needs the known covariates"),
    "no future rows": (lambda f: f.head(40), ["--date-column", "date"],
                       "covariate 'temp' is empty in future rows 1-8 of 8 (covariates has 0 rows after the history)"),
    "missing column": (lambda f: f.drop(columns="holiday"), ["--date-column", "date"],
                       "features.csv: the covariate column 'holiday' is missing"),
    "no dates": (lambda f: f, [], "the model uses time features (hour_of_day, day_of_week): pass --date-column (it "
                                  "was trained with 'date_time'; features.csv has no such column)"),
    "covariate as series": (lambda f: f, ["--date-column", "date", "--columns", "north,temp"],
                            "column 'temp' is a covariate, not a series to forecast"),
}


@pytest.mark.parametrize("case", list(FEATURE_BAD_INPUTS))
def test_feature_model_bad_input_exits_with_one_line_and_writes_nothing(tiny_feature_artifact, feature_csv,
                                                                        tmp_path, case):
    make, extra, match = FEATURE_BAD_INPUTS[case]
    _write(feature_csv, make(pd.read_csv(feature_csv, keep_default_na=False, na_values={"temp": [""]})))
    out_dir = tmp_path / "out"
    result = _run(["--engine", tiny_feature_artifact, "--input", feature_csv, *FAST, *extra,
                   "--out", out_dir / "f.csv", "--plot", out_dir / "f.png"])
    _assert_clean_failure(result, match)
    assert not out_dir.exists()


@pytest.mark.parametrize("suffix", [".csv.gz", ".parquet"])
def test_a_feature_model_reads_its_training_date_column_by_default(tiny_feature_artifact, feature_csv, tmp_path,
                                                                   suffix):
    """Without --date-column the dates come from the column the model was trained with (date_time,
    found in the header of a CSV or the schema of a Parquet file): the same forecast as naming it."""
    frame = pd.read_csv(feature_csv, keep_default_na=False, na_values={"north": [""], "south": [""], "temp": [""],
                                                                        "rain_1h": [""]})
    frame = frame.rename(columns={"date": "date_time"})
    path = tmp_path / "in" / f"dated{suffix}"  # beside feature_csv
    frame.to_parquet(path, index=False) if suffix == ".parquet" else frame.to_csv(path, index=False)
    named = _run(["--engine", tiny_feature_artifact, "--input", path, "--date-column", "date_time", *FAST,
                  "--out", tmp_path / "named.csv"])
    assert named.exit_code == 0, named.output
    result = _run(["--engine", tiny_feature_artifact, "--input", path, *FAST, "--out", tmp_path / "f.csv"])
    assert result.exit_code == 0, result.output
    assert result.stderr.splitlines()[0] == "note: dates from column 'date_time' (the model's training data)"
    assert result.stderr.splitlines()[1:] == named.stderr.splitlines()
    got = pd.read_csv(tmp_path / "f.csv", parse_dates=["timestamp"])
    assert got["timestamp"].iloc[0] == pd.Timestamp("2024-12-24 16:00")  # the first row after the history
    pd.testing.assert_frame_equal(got, pd.read_csv(tmp_path / "named.csv", parse_dates=["timestamp"]))


def test_model_without_covariates_keeps_trailing_empty_rows_as_missing_context(tiny_artifact, table_csv, tmp_path):
    """As before covariates: for a model without known covariates, trailing rows with empty series
    are missing context steps and the forecast starts after the table's last row."""
    frame = pd.read_csv(table_csv)
    dates = pd.date_range("2024-05-02 16:00", periods=3, freq="h").strftime("%Y-%m-%d %H:%M")
    frame = pd.concat([frame, pd.DataFrame({"date": dates})], ignore_index=True)
    path = _write(tmp_path / "in" / "trailing.csv", frame)
    out = tmp_path / "f.csv"
    result = _run(["--engine", tiny_artifact, "--input", path, "--date-column", "date", *FAST, "--out", out])
    assert result.exit_code == 0, result.output
    assert "model inputs: the series only" in result.output
    assert pd.read_csv(out, parse_dates=["timestamp"])["timestamp"].iloc[0] == pd.Timestamp("2024-05-02 19:00")
