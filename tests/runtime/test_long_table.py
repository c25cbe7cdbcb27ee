"""`dil-run --id-column`: long tables (one row per series and timestamp) in one process.

The reference is the wide-table path: the same series as columns of a wide table must get the very
same forecast (the series' noise streams are keyed by its name), bit for bit.
"""

from __future__ import annotations

import sys

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from dil.runtime.cli.run import main

from builders import NAMES, to_long, wide_frame  # noqa: E402
RUN = ["--samples", 6, "--threads", 1]


def _run(args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_long_csv_equals_wide_table(tmp_path):
    wide = wide_frame()
    wide.to_csv(tmp_path / "wide.csv", index=False)
    to_long(wide).to_csv(tmp_path / "long.csv", index=False)
    r = _run(["--input", tmp_path / "wide.csv", "--columns", ",".join(NAMES), "--out", tmp_path / "w.parquet"] + RUN)
    assert r.exit_code == 0, r.output
    r = _run(["--input", tmp_path / "long.csv", "--id-column", "id", "--out", tmp_path / "l.parquet"] + RUN)
    assert r.exit_code == 0, r.output
    assert "forecast 3 series of long.csv" in r.output
    w, lg = pd.read_parquet(tmp_path / "w.parquet"), pd.read_parquet(tmp_path / "l.parquet")
    assert list(lg.columns) == list(w.columns) and list(lg.columns)[:2] == ["series", "timestamp"]
    assert len(lg) == 3 * 24 and lg["timestamp"].iloc[0] == pd.Timestamp("2018-01-17 16:00")
    pd.testing.assert_frame_equal(lg, w, check_exact=True)


def test_parquet_folder_and_csv_give_the_same_forecast(tmp_path):
    long = to_long(wide_frame())
    long.to_csv(tmp_path / "long.csv.gz", index=False)
    folder = tmp_path / "parts"
    folder.mkdir()
    # Both files hold rows of every series: a series' rows are gathered across files.
    long.iloc[:500].to_parquet(folder / "a.parquet", index=False)
    long.iloc[500:].assign(date_time=pd.to_datetime(long["date_time"].iloc[500:])).to_parquet(folder / "b.parquet",
                                                                                               index=False)
    outs = []
    for i, src in enumerate([tmp_path / "long.csv.gz", folder]):
        out = tmp_path / f"o{i}.csv"
        r = _run(["--input", src, "--id-column", "id", "--target-column", "value", "--out", out] + RUN)
        assert r.exit_code == 0, r.output
        outs.append(pd.read_csv(out))
    pd.testing.assert_frame_equal(outs[0], outs[1], check_exact=True)


def test_stdout_skip_bad_series_and_numeric_ids(tmp_path):
    wide = wide_frame(names=["7", "12"])
    wide.loc[wide.index[-340:], "12"] = np.nan  # nothing observed in the model's 336-row context
    long = to_long(wide)
    long["id"] = long["id"].astype(int)  # numeric ids are text in the output ("7"), as a wide header
    long.to_parquet(tmp_path / "long.parquet", index=False)
    args = ["--input", tmp_path / "long.parquet", "--id-column", "id"] + RUN
    r = _run(args)
    assert r.exit_code == 1 and "series '12' has no observed value in the last 336 rows" in r.output
    r = _run(args + ["--skip-bad-series"])
    assert r.exit_code == 0, r.output
    assert "warning: skipped 1 of 2 series" in r.stderr and "forecast 1 series" in r.stderr
    printed = pd.read_csv(__import__("io").StringIO(r.stdout))
    assert printed["series"].unique().tolist() == [7] and len(printed) == 24


@pytest.mark.parametrize("edit, extra, message", [
    (lambda f: pd.concat([f, f.iloc[:1]]), [], "2 rows share a timestamp (first 2018-01-"),
    (lambda f: f.assign(value=f["value"].astype(object).where(f.index != 5, "n/a?")), [], "is not numeric (at "),
    (lambda f: f.rename(columns={"date_time": "when"}), [], "needs --date-column"),
    (lambda f: f.assign(other=1.0), [], "pass --target-column (the columns besides the id, date and covariates: "
                                        "value, other)"),
    (lambda f: f, ["--target-column", "nope"], "unknown target column 'nope'"),
    (lambda f: f, ["--columns", "a"], "--columns: not available with --id-column"),
    (lambda f: f, ["--actors", 2], "--actors needs --ray"),
])
def test_bad_long_input_is_one_line_and_writes_nothing(tmp_path, edit, extra, message):
    src = tmp_path / "long.csv"
    edit(to_long(wide_frame(rows=340))).to_csv(src, index=False)
    out = tmp_path / "new" / "f.csv"
    r = _run(["--input", src, "--id-column", "id", "--out", out] + RUN + extra)
    assert r.exit_code == 1 and message in r.output, r.output
    lines = [line for line in r.output.splitlines() if not line.startswith("note: ")]  # the dates' note
    assert len(lines) == 1 and lines[0].startswith("Error: ")
    assert not out.parent.exists()


def test_ray_option_needs_a_long_table_and_names_the_missing_extra(tmp_path, monkeypatch):
    src = tmp_path / "long.csv"
    to_long(wide_frame(rows=340)).to_csv(src, index=False)
    r = _run(["--input", src, "--ray", "--out", tmp_path / "o"])
    assert r.exit_code == 1 and "--ray forecasts a long table: pass --id-column" in r.output
    r = _run(["--input", src, "--id-column", "id", "--ray"])
    assert r.exit_code == 1 and "--ray needs --out FOLDER" in r.output
    monkeypatch.setitem(sys.modules, "ray", None)  # as if the extra were not installed
    r = _run(["--input", src, "--id-column", "id", "--ray", "--out", tmp_path / "o"])
    assert r.exit_code == 1, r.output
    assert r.output.strip() == "Error: ray is not installed: pip install 'dil[ray]'"
    assert not (tmp_path / "o").exists()
