"""dil-eval on a user table: its dates read as told (--dayfirst / --date-format), repairs noted."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
from click.testing import CliRunner

from dil.evaluate.cli.eval import main


def _table(tmp_path, fmt):
    """200 hourly rows (8 days and 8 hours of July 2016: every day value <= 12) with dates in `fmt`."""
    times = pd.date_range("2016-07-01", periods=200, freq="h")
    y = 10 + np.sin(np.arange(200) / 4)
    path = tmp_path / f"mine-{len(list(tmp_path.iterdir()))}.csv"
    pd.DataFrame({"time": times.strftime(fmt), "y": y}).to_csv(path, index=False)
    return path


def test_eval_reads_dates_as_told(tiny_artifact, tmp_path):
    base = ["--engine", str(tiny_artifact), "--date-column", "time", "--samples", "2", "--steps", "2",
            "--windows", "1", "--ddpm-windows", "0"]
    res = CliRunner().invoke(main, base + ["--data", str(_table(tmp_path, "%d.%m.%Y %H:%M"))])
    assert res.exit_code != 0 and len(res.output.strip().splitlines()) == 1, res.output
    assert "read both month-first and day-first" in res.output and "--dayfirst" in res.output

    reports = {}
    for fmt, extra in (("%Y-%m-%d %H:%M", []), ("%d.%m.%Y %H:%M", ["--dayfirst"]),
                       ("%m/%d/%Y %H:%M", ["--date-format", "%m/%d/%Y %H:%M"])):
        out = tmp_path / "reports" / f"{len(reports)}.json"  # the folder is created
        res = CliRunner().invoke(main, base + ["--data", str(_table(tmp_path, fmt)), "--json", str(out)] + extra)
        assert res.exit_code == 0, res.output
        reports[fmt] = json.loads(out.read_text())
    iso, day, fmt = reports.values()
    # Hourly rows: the seasonal lag comes from the frequency (168), so the dates were read as hours.
    assert iso["protocol"]["season"] == day["protocol"]["season"] == fmt["protocol"]["season"] == 168
    assert iso["model"] == day["model"] == fmt["model"]


def _feature_table(path, date_column):
    """200 hourly rows of traffic_volume and the covariates the tiny feature model reads (temp,
    holiday, rain_1h), dates in `date_column`."""
    rng = np.random.default_rng(5)
    n = 200
    frame = pd.DataFrame({date_column: pd.date_range("2024-12-01", periods=n, freq="h").strftime("%Y-%m-%d %H:%M"),
                          "traffic_volume": np.round(3000 + 500 * np.sin(np.arange(n) / 4) + rng.normal(0, 50, n)),
                          "temp": np.round(275 + 5 * np.sin(np.arange(n) / 3), 2),
                          "holiday": ["None"] * (n - 30) + ["Christmas Day"] * 30,
                          "rain_1h": np.round(rng.uniform(0, 2, n), 2)})
    frame.to_csv(path, index=False)
    return path


def test_eval_of_a_feature_model_reads_its_training_date_column_by_default(tiny_feature_artifact, tmp_path):
    """--data without --date-column: the dates come from the column the model was trained with
    (date_time), as if named; a table without it is refused in one line naming the option."""
    base = ["--engine", str(tiny_feature_artifact), "--samples", "2", "--steps", "2", "--windows", "2"]
    data = str(_feature_table(tmp_path / "dated.csv", "date_time"))
    reports = []
    for extra in ([], ["--date-column", "date_time"]):
        out = tmp_path / f"{len(reports)}.json"
        res = CliRunner().invoke(main, base + ["--data", data, "--json", str(out)] + extra)
        assert res.exit_code == 0, res.output
        reports.append(json.loads(out.read_text()))
        assert ("note: dates from column 'date_time' (the model's training data)" in res.stderr.splitlines()) == (
            not extra), res.stderr
    default, named = reports
    assert default["protocol"]["inputs"].startswith("2 time features (hour_of_day, day_of_week)")
    assert default["protocol"]["season"] == 168  # hourly rows: the dates were read
    assert default["model"] == named["model"]

    res = CliRunner().invoke(main, base + ["--data", str(_feature_table(tmp_path / "undated.csv", "when"))])
    assert res.exit_code != 0 and len(res.output.strip().splitlines()) == 1, res.output
    assert res.output.strip() == ("Error: the model uses time features (hour_of_day, day_of_week): pass --date-column "
                                  "(it was trained with 'date_time'; undated.csv has no such column)")
