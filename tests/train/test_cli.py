"""dil-train's options: missing --out folders are created, user tables' dates read as told."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("torch")
from click.testing import CliRunner  # noqa: E402

from dil.train.cli import main  # noqa: E402

TINY = ["--context", "16", "--horizon", "8", "--d-model", "16", "--heads", "2", "--layers", "1", "--ffn-dim", "16",
        "--epochs", "1", "--steps-per-epoch", "1", "--batch-size", "4", "--noise-draws", "1", "--quiet"]


def _day_first_table(tmp_path):
    """12 days of hourly rows with 01.07.2016-style dates (every day value <= 12: ambiguous)."""
    times = pd.date_range("2016-07-01", periods=12 * 24, freq="h")
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"time": times.strftime("%d.%m.%Y %H:%M"), "load": 10 + rng.standard_normal(len(times))})
    path = tmp_path / "meter.csv"
    frame.to_csv(path, index=False)
    return path


def test_out_in_missing_folders_is_created(tmp_path):
    out = tmp_path / "runs" / "metro-traffic"  # as in the README, on a fresh clone: runs/ does not exist
    res = CliRunner().invoke(main, TINY + ["--dataset", "metro-traffic", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()


def test_dayfirst_file_needs_the_option_and_the_run_records_it(tmp_path):
    path = _day_first_table(tmp_path)
    out = tmp_path / "runs" / "meter"
    res = CliRunner().invoke(main, TINY + ["--data", str(path), "--date-column", "time", "--out", str(out)])
    assert res.exit_code != 0 and res.output.count("\n") == 1, res.output
    assert "read both month-first and day-first" in res.output and "--dayfirst" in res.output
    assert not (tmp_path / "runs").exists()
    res = CliRunner().invoke(main, TINY + ["--data", str(path), "--date-column", "time", "--dayfirst", "--out", str(out)])
    assert res.exit_code == 0, res.output
    data = json.loads((out / "config.json").read_text())["data"]
    assert (data["freq"], data["dayfirst"], data["date_format"], data["season"]) == ("h", True, None, 168)


# -- time features and covariates ------------------------------------------------------------------
HOURLY = ["hour_of_day", "day_of_week", "day_of_month", "day_of_year"]


def _covariate_table(tmp_path, bad_temp: str | None = None):
    """20 days of hourly rows: load (target), temp (numbers, some empty), day_type (text)."""
    times = pd.date_range("2024-01-25", periods=20 * 24, freq="h")  # crosses a month end
    rng = np.random.default_rng(1)
    temp = np.round(5 + 3 * np.sin(np.arange(len(times)) / 24 * 2 * np.pi) + rng.standard_normal(len(times)), 2)
    temp_text = [f"{t}" for t in temp]
    temp_text[10] = temp_text[400] = ""  # missing cells (row 11 of the train part, row 401 of the test part)
    if bad_temp is not None:
        temp_text[200] = bad_temp
    day_type = np.where(times.day_of_week >= 5, "weekend", "workday")
    day_type[-24:] = "holiday"  # a category the train part never sees
    frame = pd.DataFrame({"time": times.strftime("%Y-%m-%d %H:%M"), "load": 10 + temp + (day_type == "weekend"),
                          "temp": temp_text, "day_type": day_type})
    path = tmp_path / "site.csv"
    frame.to_csv(path, index=False)
    return path, frame


@pytest.fixture(scope="module")
def covariate_run(tmp_path_factory):
    """(run folder, table file, its frame, dil-train's output) of a tiny run with a known-future
    categorical covariate (day_type), a past-only numeric one (temp) and hourly time features."""
    tmp = tmp_path_factory.mktemp("cov")
    path, frame = _covariate_table(tmp)
    out = tmp / "runs" / "site"
    # --time-features: all four hourly features, though 14 days of training rows span fewer than 3 of
    # some of their cycles (the default would leave those out)
    res = CliRunner().invoke(main, TINY + ["--data", str(path), "--date-column", "time", "--columns", "load",
                                           "--covariates", "day_type", "--past-covariates", "temp", "--time-features",
                                           "--out", str(out)])
    assert res.exit_code == 0, res.output
    return out, path, frame, res.output


def test_covariates_and_time_features_end_to_end(covariate_run):
    from dil.runtime.inputs.features import FeatureSpec, row_features, time_features
    from dil.runtime.inputs.table import load_table
    from dil.train.checkpoint import load_checkpoint
    from dil.train.dataset import WindowSet

    out, path, frame, output = covariate_run
    assert "features: time features hour_of_day" in output and "day_type (known, 2 categories)" in output
    config = json.loads((out / "config.json").read_text())
    # the statistics of the train part only: rows [0, 336) of 480 (70/10/20), the empty cell ignored
    temp = pd.to_numeric(frame["temp"][:336], errors="coerce").to_numpy()
    temp = temp[~np.isnan(temp)]
    assert config["features"] == {"freq": "h", "time_features": HOURLY, "covariates": [
        {"name": "day_type", "kind": "categorical", "known": True, "mean": 0.0, "std": 1.0,
         "categories": ["weekend", "workday"]},
        {"name": "temp", "kind": "numeric", "known": False, "mean": pytest.approx(temp.mean(), rel=1e-12),
         "std": pytest.approx(temp.std(), rel=1e-12), "categories": []}]}
    # Fc = value, observed, 4 time features, 2 one-hot day types, temp; Fh = noisy value, 4 + 2 known
    model = config["model"]
    assert (model["context_features"], model["horizon_features"]) == (9, 7)
    assert (model["prediction"], model["context_patch"]) == ("v", 1)  # 16 context steps are within the token budget
    assert json.loads((out / "state.json").read_text())["features"] == config["features"]
    assert config["data"]["covariates"] == ["day_type", "temp"]
    assert load_checkpoint(out).features == FeatureSpec.from_dict(config["features"])

    # One training window, hand-built from the raw file: origin 100 (context rows 84..99, target 100..107).
    spec = FeatureSpec.from_dict(config["features"])
    table = load_table(path, "time", ["load"], covariates=["day_type", "temp"])
    ws = WindowSet(table.values, 16, 8, 0, 336, features=row_features(spec, table.timestamps, table.covariates))
    b = ws.batch(np.flatnonzero(ws.origins == 100))
    assert b.ctx.shape == (1, 16, 9) and b.hor_feat.shape == (1, 8, 6)
    times = pd.DatetimeIndex(pd.to_datetime(frame["time"]))
    tf = time_features(times, HOURLY)
    onehot = np.stack([frame["day_type"] == "weekend", frame["day_type"] == "workday"], axis=1).astype(float)
    z_temp = (pd.to_numeric(frame["temp"], errors="coerce").to_numpy() - temp.mean()) / temp.std()
    np.testing.assert_allclose(b.ctx[0, :, 2:6], tf[84:100], atol=1e-7)
    np.testing.assert_array_equal(b.ctx[0, :, 6:8], onehot[84:100])
    np.testing.assert_allclose(b.ctx[0, :, 8], z_temp[84:100], rtol=1e-6)
    np.testing.assert_allclose(b.hor_feat[0], np.concatenate([tf, onehot], axis=1)[100:108], atol=1e-7)
    # the unseen category of the last day is all zeros; the empty temp cell is 0
    rf = row_features(spec, table.timestamps, table.covariates)
    np.testing.assert_array_equal(rf.known[-24:, 4:], 0.0)
    assert rf.past[10, 0] == 0.0 and rf.past[400, 0] == 0.0


def test_covariate_run_exports_its_features(covariate_run, tmp_path):
    from dil.export.cli import main as export_main
    from dil.runtime.manifest import load_manifest

    out, path, _, _ = covariate_run
    res = CliRunner().invoke(export_main, ["--no-frontier", "--checkpoint", str(out), "--out", str(tmp_path / "engines"),
                                           "--data", str(path)])
    assert res.exit_code == 0, res.output
    config = json.loads((out / "config.json").read_text())
    manifest = load_manifest(tmp_path / "engines" / "site.json")  # checks the widths against the features
    assert manifest.features.to_dict() == config["features"]
    assert manifest.model.to_dict() == config["model"]
    assert (manifest.model.context_features, manifest.model.horizon_features) == (9, 7)
    assert manifest.validation["passed"] and manifest.validation["real_data"]["used"]


def test_resume_refuses_other_features_and_keeps_the_runs(covariate_run, tmp_path):
    import shutil

    src, path, _, _ = covariate_run
    out = tmp_path / "site"
    shutil.copytree(src, out)
    snapshot = {p.name: p.read_bytes() for p in out.iterdir()}
    for extra, message in (([], "covariates [day_type (known), temp (past)] (run) vs [temp (past)]"),
                           (["--no-time-features"], "time_features")):
        res = CliRunner().invoke(main, ["--data", str(path), "--date-column", "time", "--columns", "load",
                                        "--past-covariates", "temp", "--covariates", "day_type" if extra else "",
                                        "--out", str(out), "--resume", "--epochs", "2", "--quiet", *extra])
        assert res.exit_code != 0 and res.output.count("\n") == 1, res.output
        assert res.output.startswith(f"Error: cannot resume {out}: the features differ") and message in res.output
        assert {p.name: p.read_bytes() for p in out.iterdir()} == snapshot
    # without feature options the run's own are used
    res = CliRunner().invoke(main, ["--data", str(path), "--date-column", "time", "--columns", "load",
                                    "--out", str(out), "--resume", "--epochs", "2", "--quiet"])
    assert res.exit_code == 0, res.output
    assert json.loads((out / "state.json").read_text())["epoch"] == 2


@pytest.mark.parametrize("extra, message", [
    (["--covariates", "nope"], "covariate column 'nope'"),
    (["--bad-temp", "--"], "covariate 'temp' is text where numbers are expected: data row 201 holds '--'"),
    (["--columns", "load,temp"], "'temp' is both a covariate and a target column"),
    (["--context-patch", "5"], "--context-patch 5 does not divide --context-length 16"),
    (["--undated", "--time-features"], "--time-features: the table has no dates"),
])
def test_bad_feature_input_one_line_nothing_written(tmp_path, extra, message):
    bad = extra[extra.index("--bad-temp") + 1] if "--bad-temp" in extra else None
    path, _ = _covariate_table(tmp_path, bad_temp=bad)
    extra = [a for a in extra if a not in ("--bad-temp", bad)]
    dates = [] if "--undated" in extra else ["--date-column", "time"]
    extra = [a for a in extra if a != "--undated"]
    columns = [] if "--columns" in extra else ["--columns", "load"]
    out = tmp_path / "runs" / "x"
    res = CliRunner().invoke(main, TINY + ["--data", str(path), *dates, *columns, "--past-covariates", "temp",
                                           "--out", str(out), *extra])
    assert res.exit_code != 0
    assert res.output.startswith("Error: ") and res.output.count("\n") == 1, res.output
    assert message in res.output
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("freq, window, patches, preset", [
    # (row frequency, its preset window, its patches: context <= 16 tokens, horizon <= 6 tokens)
    ("10min", (288, 144), (18, 24), "10-minute"),
    ("15min", (192, 96), (12, 16), "15-minute"),
    ("30min", (336, 48), (24, 8), "30-minute"),
    ("h", (336, 24), (24, 4), "hourly"),  # the measured metro-traffic preset
    ("D", (56, 14), (7, 7), "daily"),
    ("B", (60, 10), (5, 5), "business-day"),
    ("W-SUN", (104, 8), (13, 2), "weekly"),
])
def test_preset_rule_for_each_frequency(freq, window, patches, preset):
    from dil.data.registry import file_spec, frequency_preset
    from dil.runtime.inputs.table import SeriesTable
    from dil.train.presets import CONTEXT_TOKENS, HORIZON_TOKENS, default_context_patch, default_horizon_patch

    p = frequency_preset(freq)
    assert p.name == preset and (p.context_length, p.horizon) == window
    L, H = window
    P, Ph = default_context_patch(L, freq), default_horizon_patch(H, freq)
    assert (P, Ph) == patches
    assert L % P == 0 and L // P <= CONTEXT_TOKENS and H % Ph == 0 and H // Ph <= HORIZON_TOKENS
    # the smallest natural group within the budget: the next smaller one would exceed it
    smaller = [g for g in p.groups if g < P and L % g == 0]
    assert not smaller or L // max(smaller) > CONTEXT_TOKENS
    # a user's file of that frequency gets the preset's window
    table = SeriesTable(values=np.zeros((10, 1)), names=["y"], freq=freq)
    spec = file_spec("x.csv", table)
    assert (spec.context_length, spec.horizon) == window


def test_preset_rule_off_the_presets():
    from dil.train.presets import default_context_patch, default_horizon_patch

    assert default_context_patch(168, "h") == 12  # 14 half-day tokens (a day would be 7)
    assert default_context_patch(100, "h") == 10  # no hourly group gives <= 16 tokens: the smallest divisor that does
    assert default_context_patch(96, "D") == 6 and default_horizon_patch(96, "D") == 16  # no week divides 96
    assert default_context_patch(16, None) == 1 and default_context_patch(7, None) == 1
    assert default_horizon_patch(96, "h") == 24 and default_horizon_patch(7, "h") == 7  # one token of 7 steps
    assert default_context_patch(48, "2h") == 3  # rows without a preset: any divisor up to 24 steps


@pytest.mark.parametrize("rows, schedule", [(28_000, (20, 4)), (29_000, (40, 8))])
def test_schedule_rule_by_training_rows(rows, schedule):
    """70% of 28,000 rows (19,600) trains on the short schedule, 70% of 29,000 (20,300) on the long
    one; a given option wins; a resumed run keeps its stored schedule."""
    from dil.data.registry import file_spec
    from dil.runtime.inputs.table import SeriesTable
    from dil.train.presets import (LONG_HISTORY_ROWS, MODEL_OPTIONS, TRAIN_OPTIONS, describe_choices,
                                   run_configs, train_rows)

    table = SeriesTable(values=np.random.default_rng(0).standard_normal((rows, 1)), names=["y"], freq="h")
    spec = file_spec("x.csv", table)
    n = train_rows(spec, table)
    assert n == int(rows * 0.7) and (n >= LONG_HISTORY_ROWS) == (schedule == (40, 8))
    opts = {**{k: None for k in (*MODEL_OPTIONS, *TRAIN_OPTIONS)}, "time_features": False}
    model, train, features = run_configs(opts, spec, table, {}, [], [])
    assert (train.epochs, train.patience) == schedule
    side = ">=" if schedule == (40, 8) else "<"
    assert describe_choices(model, "h", features, train, n).endswith(
        f"; {schedule[0]} epochs at most, patience {schedule[1]} ({n} training rows {side} {LONG_HISTORY_ROWS})")
    _, given, _ = run_configs({**opts, "epochs": 7}, spec, table, {}, [], [])
    assert (given.epochs, given.patience) == (7, schedule[1])
    assert "training rows" not in describe_choices(model, "h", features, given, n)  # not the rule's: no reason
    stored = {"model": model.to_dict(), "features": features.to_dict(), "train": {"epochs": 3, "patience": 1}}
    _, kept, _ = run_configs(opts, spec, table, stored, [], [])
    assert (kept.epochs, kept.patience) == (3, 1)
