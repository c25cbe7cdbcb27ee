"""Data a user brings (docs/model.md sections 1.3 and 4, docs/inputs.md): intermittent series and
sentinels train with a bounded loss and are reported, a run that blows up stops in one line and
stays resumable, --missing-value reads a sentinel as missing everywhere."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("torch")
from click.testing import CliRunner  # noqa: E402

from dil.runtime.inputs.scaling import SCALE_FLOOR_REL, context_scale, series_floor, window_series  # noqa: E402
from dil.train.cli import main as train_main  # noqa: E402

TINY = ["--context", "16", "--horizon", "8", "--d-model", "16", "--heads", "2", "--layers", "1", "--ffn-dim", "16",
        "--batch-size", "16", "--noise-draws", "1", "--quiet"]


def test_scale_floor_hand_worked():
    """A dry spell of a rain gauge: the context is all zeros, the target 11 mm."""
    train = np.array([0.0, 0.0, 0.0, 2.0, 0.0, 0.0, 4.0, 0.0])  # mean 0.75, variance 1.9375
    floor = series_floor(train[:, None])
    assert floor == pytest.approx([SCALE_FLOOR_REL * np.sqrt(1.9375)], rel=1e-15)
    loc, scale = context_scale(np.zeros((1, 6)), floor)
    assert (loc[0], scale[0]) == (0.0, floor[0])  # without the floor: 1e-8
    assert 11.0 / scale[0] == pytest.approx(11.0 / (0.3 * 1.3919410907075054))  # 26.3 standard deviations, not 1.1e9
    assert context_scale(np.zeros((1, 6)))[1][0] == 1e-8
    # a window whose own spread is above the floor keeps it
    x = np.array([[1.0, 3.0, 1.0, 3.0]])
    assert context_scale(x, floor)[1][0] == 1.0
    assert series_floor(np.array([[np.nan], [5.0]]))[0] == 0.0  # one observed value: no floor
    assert window_series("rain (mm)@4032") == "rain (mm)" and window_series(7) == "7"


def _user_table(tmp_path, sentinel_rows=()):
    """40 days of hourly rows: rain (mostly 0, a few showers: all-zero contexts) and wind (with
    -9999 where a reading failed)."""
    rng = np.random.default_rng(0)
    T = 40 * 24
    rain = np.zeros(T)
    showers = rng.choice(T, 12, replace=False)
    rain[showers] = rng.uniform(0.5, 11.0, 12)
    wind = 3 + np.sin(np.arange(T) / 24 * 2 * np.pi) + 0.3 * rng.standard_normal(T)
    wind[list(sentinel_rows)] = -9999.0
    times = pd.date_range("2024-03-01", periods=T, freq="h").strftime("%Y-%m-%d %H:%M")
    path = tmp_path / "station.csv"
    pd.DataFrame({"time": times, "rain": rain, "wind": wind}).to_csv(path, index=False)
    return path


def _losses(run) -> list[float]:
    return [json.loads(line)["train_loss"] for line in (run / "log.jsonl").read_text().splitlines()]


def test_intermittent_series_and_sentinels_train_bounded_and_are_reported(tmp_path):
    sentinels = list(range(100, 700, 30))  # 20 failed readings, in the train part
    path = _user_table(tmp_path, sentinels)
    run = tmp_path / "runs" / "station"
    args = TINY + ["--data", str(path), "--date-column", "time", "--epochs", "1", "--steps-per-epoch", "40",
                   "--out", str(run)]
    res = CliRunner().invoke(train_main, args)
    assert res.exit_code == 0, res.output + res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("warning:")]
    assert len(lines) == 1 and "series 'wind' repeats -9999 (20 times)" in lines[0]
    assert "--missing-value -9999" in lines[0]
    loss = _losses(run)
    assert np.isfinite(loss).all() and max(loss) < 1e3  # the rain windows' targets stay bounded
    floors = json.loads((run / "config.json").read_text())["data"]["scale_floors"]
    assert floors["rain"] > 0 and set(floors) == {"rain", "wind"}

    # --missing-value: the sentinels are missing values, nothing is reported, the run records it
    run2 = tmp_path / "runs" / "station2"
    res = CliRunner().invoke(train_main, args[:-1] + [str(run2), "--missing-value", "-9999"])
    assert res.exit_code == 0, res.output + res.stderr
    assert "warning:" not in res.stderr
    data = json.loads((run2 / "config.json").read_text())["data"]
    assert data["missing_values"] == [-9999.0]
    assert data["scale_floors"]["wind"] < floors["wind"] / 10  # the sentinels no longer set its spread


def test_a_run_that_blows_up_stops_in_one_line_and_stays_resumable(tmp_path):
    path = _user_table(tmp_path)
    run = tmp_path / "run"
    base = TINY + ["--data", str(path), "--date-column", "time", "--steps-per-epoch", "12", "--out", str(run)]
    assert CliRunner().invoke(train_main, base + ["--epochs", "1"]).exit_code == 0
    state = (run / "state.json").read_bytes()
    res = CliRunner().invoke(train_main, base + ["--epochs", "2", "--resume", "--lr", "1e12"])
    assert res.exit_code == 1 and res.output.count("\n") == 1, res.output
    line = res.output
    # epoch 2 starts at step 13; the first step with the huge rate makes the next loss non-finite
    assert line.startswith("Error: training stopped at step 14: the batch loss nan is not finite")
    assert "its worst window is series" in line
    assert "data rows" in line and "of station.csv" in line and "the run folder keeps epoch 1" in line
    assert (run / "state.json").read_bytes() == state  # nothing of the failed epoch was written
    res = CliRunner().invoke(train_main, base + ["--epochs", "2", "--resume"])
    assert res.exit_code == 0, res.output
    assert json.loads((run / "state.json").read_text())["epoch"] == 2


def test_missing_value_in_dil_run_and_dil_eval(tiny_artifact, tmp_path):
    from dil.evaluate.cli.eval import main as eval_main
    from dil.runtime.cli.run import main as run_main

    rng = np.random.default_rng(2)
    T = 400
    values = 10 + rng.standard_normal((T, 2)).cumsum(axis=0) * 0.1
    times = pd.date_range("2016-07-01", periods=T, freq="h").strftime("%Y-%m-%d %H:%M")
    cells = [3, 40, 200, T - 5, T - 2]  # in the context of the last window too
    blank, coded = values.copy(), values.copy()
    blank[cells, 0] = np.nan
    coded[cells, 0] = -9999.0
    for name, v in (("blank", blank), ("coded", coded)):
        pd.DataFrame({"date": times, "a": v[:, 0], "b": v[:, 1]}).to_csv(tmp_path / f"{name}.csv", index=False)
    out = {}
    for name, extra in (("blank", []), ("coded", ["--missing-value", "-9999"])):
        res = CliRunner().invoke(run_main, ["--engine", str(tiny_artifact), "--input", str(tmp_path / f"{name}.csv"),
                                            "--samples", "8", "--out", str(tmp_path / f"{name}.fc.csv"), *extra])
        assert res.exit_code == 0, res.output
        out[name] = pd.read_csv(tmp_path / f"{name}.fc.csv")
    pd.testing.assert_frame_equal(out["blank"], out["coded"])
    reports = {}
    for name, extra in (("blank", []), ("coded", ["--missing-value", "-9999"])):
        js = tmp_path / f"{name}.json"
        res = CliRunner().invoke(eval_main, ["--engine", str(tiny_artifact), "--data", str(tmp_path / f"{name}.csv"),
                                             "--date-column", "date", "--samples", "4", "--windows", "3", "--json", str(js),
                                             *extra])
        assert res.exit_code == 0, res.output
        reports[name] = json.loads(js.read_text())["model"]
    assert reports["blank"] == reports["coded"]


def test_resume_reads_the_runs_own_table(tmp_path):
    """kill -9 during `dil-train --data FILE ...`, then the README's `dil-train --out runs/NAME --resume`:
    the run's table and reading options come from the run folder."""
    path = _user_table(tmp_path)
    run = tmp_path / "run"
    base = TINY + ["--steps-per-epoch", "4", "--out", str(run)]
    res = CliRunner().invoke(train_main, base + ["--data", str(path), "--date-column", "time", "--epochs", "1"])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(train_main, base + ["--resume", "--epochs", "2"])
    assert res.exit_code == 0, res.output
    assert json.loads((run / "state.json").read_text())["epoch"] == 2
    path.unlink()
    res = CliRunner().invoke(train_main, base + ["--resume", "--epochs", "3"])
    assert res.exit_code == 1 and res.output.count("\n") == 1
    assert "was trained on the local table station.csv" in res.output and "is gone" in res.output


def test_truncated_weights_and_state_are_one_line(tmp_path):
    from dil.export.cli import main as export_main

    path = _user_table(tmp_path)
    run = tmp_path / "run"
    base = TINY + ["--data", str(path), "--date-column", "time", "--steps-per-epoch", "4", "--out", str(run)]
    assert CliRunner().invoke(train_main, base + ["--epochs", "1"]).exit_code == 0
    for name in ("state.safetensors", "model.safetensors"):
        data = (run / name).read_bytes()
        (run / name).write_bytes(data[: len(data) // 2])
    res = CliRunner().invoke(train_main, base + ["--epochs", "2", "--resume"])
    assert res.exit_code == 1 and res.output.count("\n") == 1, res.output
    assert "state.safetensors is damaged or truncated" in res.output
    res = CliRunner().invoke(export_main, ["--checkpoint", str(run), "--out", str(tmp_path / "eng"), "--no-frontier"])
    assert res.exit_code == 1 and res.output.count("\n") == 1, res.output
    assert "model.safetensors is damaged or truncated" in res.output and not (tmp_path / "eng").exists()


def test_all_missing_column_and_one_line_per_epoch_in_a_log(tmp_path):
    import subprocess
    import sys

    frame = pd.read_csv(_user_table(tmp_path))
    frame["dead"] = np.nan
    frame.to_csv(tmp_path / "dead.csv", index=False)
    base = TINY[:-1] + ["--data", str(tmp_path / "dead.csv"), "--date-column", "time", "--steps-per-epoch", "3"]
    res = CliRunner().invoke(train_main, TINY + base[len(TINY) - 1:] + ["--epochs", "1", "--out", str(tmp_path / "r")])
    assert res.exit_code == 1 and res.output.count("\n") == 1, res.output
    assert "column 'dead' has no observed value in the train part" in res.output
    # stderr to a file (not a terminal): one progress line per epoch, no tqdm bar
    log = tmp_path / "train.log"
    with open(log, "w") as err:
        done = subprocess.run([sys.executable, "-m", "dil.train.cli", *base, "--columns", "rain,wind", "--epochs", "2",
                               "--out", str(tmp_path / "r2")], stderr=err, stdout=subprocess.DEVNULL, timeout=300)
    assert done.returncode == 0, log.read_text()
    lines = log.read_text().splitlines()
    epochs = [ln for ln in lines if ln.startswith("train: step")]
    assert len(epochs) == 2 and "epoch 2" in epochs[1] and "val" in epochs[1], lines
    assert "\r" not in log.read_text() and "it/s" not in log.read_text() and "step/s" not in log.read_text()
