"""dil-eval on a user table: its dates read as told (--dayfirst / --date-format), repairs noted."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
from click.testing import CliRunner

from dil.evaluate.cli import main


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
