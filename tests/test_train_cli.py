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
