"""Inputs a new user meets first: each forecast right or refused in one line (docs/inputs.md).

Every case here gave a wrong result or a wrong refusal before the one input pipeline; the wide,
long and library entries are run where the rule is shared.
"""

from __future__ import annotations

import os
import time
import warnings

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from dil.runtime.cli.run import main as run_main


def _table(rows: int = 60, freq: str = "h", seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    times = pd.date_range("2024-01-01", periods=rows, freq=freq).strftime("%Y-%m-%d %H:%M")
    return pd.DataFrame({"date": times, "a": 10 + rng.standard_normal(rows).cumsum(),
                         "b": 5 + rng.standard_normal(rows)})


def _run(engine, *args):
    return CliRunner().invoke(run_main, ["--engine", str(engine), "--samples", "4", *[str(a) for a in args]])


def _one_line_error(res) -> str:
    lines = [ln for ln in res.output.splitlines() if ln.startswith("Error:")]
    assert res.exit_code == 1 and len(lines) == 1, res.output
    return lines[0]


def test_the_output_cannot_replace_the_input(tiny_artifact, tmp_path):
    path = tmp_path / "g.csv"
    _table().to_csv(path, index=False)
    before = path.read_bytes()
    line = _one_line_error(_run(tiny_artifact, "--input", path, "--out", path))
    assert "is the input table" in line and path.read_bytes() == before
    os.symlink(path, tmp_path / "link.csv")  # the same file under another name
    assert "is the input table" in _one_line_error(_run(tiny_artifact, "--input", path, "--out", tmp_path / "link.csv"))


def test_huge_values_are_refused_naming_the_row(tiny_artifact, tmp_path):
    frame = _table()
    frame.loc[41, "a"] = 1e300
    frame.to_csv(tmp_path / "h.csv", index=False)
    line = _one_line_error(_run(tiny_artifact, "--input", tmp_path / "h.csv"))
    assert "column 'a' has a value too large to scale (1e+300" in line and "data row 42" in line
    from dil.runtime import ForecastError, Forecaster

    with pytest.raises(ForecastError, match="too large to scale"):
        Forecaster.load(tiny_artifact).predict(frame[["a", "b"]].to_numpy(), num_samples=2)


def test_trailing_empty_rows_are_named(tiny_artifact, tmp_path):
    frame = _table()
    frame.loc[55:, ["a", "b"]] = np.nan
    frame.to_csv(tmp_path / "t.csv", index=False)
    res = _run(tiny_artifact, "--input", tmp_path / "t.csv", "--date-column", "date", "--out", tmp_path / "f.csv")
    assert res.exit_code == 0, res.output
    assert "the last 5 rows of t.csv (from 2024-01-03 07:00:00) hold no observed value" in res.output
    # the forecast starts after the table's last row, as the note says
    assert pd.read_csv(tmp_path / "f.csv")["timestamp"].iloc[0] == "2024-01-03 12:00:00"


def test_a_short_long_series_is_skippable_as_in_a_wide_table(tiny_artifact, tmp_path):
    wide = _table()
    long = pd.concat([pd.DataFrame({"id": s, "date": wide["date"], "v": wide[s]}) for s in ("a", "b")])
    long = pd.concat([long, pd.DataFrame({"id": "s", "date": wide["date"][:10], "v": 1.0})])  # 10 rows < 16
    long.to_csv(tmp_path / "l.csv", index=False)
    args = ["--input", tmp_path / "l.csv", "--id-column", "id", "--date-column", "date"]
    line = _one_line_error(_run(tiny_artifact, *args))
    assert "series 's' has fewer than 16 rows" in line and "--skip-bad-series" in line
    res = _run(tiny_artifact, *args, "--skip-bad-series", "--out", tmp_path / "f.csv")
    assert res.exit_code == 0, res.output
    assert "skipped 1 of 3 series" in res.output
    assert sorted(pd.read_csv(tmp_path / "f.csv")["series"].unique()) == ["a", "b"]


def test_unknown_id_column_is_named(tiny_artifact, tmp_path):
    wide = _table()
    pd.DataFrame({"id": "a", "date": wide["date"], "v": wide["a"]}).to_csv(tmp_path / "l.csv", index=False)
    line = _one_line_error(_run(tiny_artifact, "--input", tmp_path / "l.csv", "--id-column", "idx",
                                "--date-column", "date"))
    assert "unknown id column 'idx'" in line and "--target-column" not in line


def test_semicolons_and_decimal_commas(tiny_artifact, tmp_path):
    frame = _table()
    frame.to_csv(tmp_path / "c.csv", index=False)
    text = frame.to_csv(index=False, sep=";", decimal=",")
    (tmp_path / "e.csv").write_text(text)
    outs = {}
    for name in ("c", "e"):
        res = _run(tiny_artifact, "--input", tmp_path / f"{name}.csv", "--date-column", "date",
                   "--out", tmp_path / f"{name}.fc.csv")
        assert res.exit_code == 0, res.output
        outs[name] = pd.read_csv(tmp_path / f"{name}.fc.csv")
    assert "read as a ';'-separated table with decimal commas" in res.output
    pd.testing.assert_frame_equal(outs["c"], outs["e"])


def test_stale_temporary_of_a_killed_run_is_removed(tiny_artifact, tmp_path):
    _table().to_csv(tmp_path / "g.csv", index=False)
    stale = tmp_path / ".f.csv.abc123.tmp"  # what a run killed while writing f.csv leaves
    stale.write_text("")
    old = time.time() - 3600
    os.utime(stale, (old, old))
    res = _run(tiny_artifact, "--input", tmp_path / "g.csv", "--out", tmp_path / "f.csv")
    assert res.exit_code == 0, res.output
    assert not stale.exists() and "removed the unfinished temporary file of f.csv" in res.output


def test_ray_output_must_be_a_folder(tiny_artifact, tmp_path):
    line = _one_line_error(_run(tiny_artifact, "--input", tmp_path / "x.csv", "--id-column", "id", "--ray",
                                "--out", tmp_path / "r4.csv"))
    assert "--ray writes a folder of Parquet files, not a .csv file" in line


def test_library_applies_the_table_rules(tiny_artifact):
    """Forecaster.predict on a history with a missing, a repeated or an unsorted row: the rows are
    repaired as dil-run repairs them (with its note as a warning), so the forecast equals the one of
    the repaired history."""
    from dil.runtime import Forecaster

    fc = Forecaster.load(tiny_artifact)
    index = pd.date_range("2024-01-01", periods=40, freq="15min")
    clean = pd.Series(np.sin(np.arange(40) / 3.0), index=index, name="s")
    want = fc.predict(clean, num_samples=4, seed=1)
    broken = pd.concat([clean.iloc[:30], clean.iloc[[12]] + 7.0, clean.iloc[31:]])  # row 30 missing, 12 repeated
    broken = broken.iloc[::-1]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = fc.predict(broken, num_samples=4, seed=1)
    messages = [str(w.message) for w in caught]
    assert any("not in time order" in m for m in messages) and any("repeats the timestamp" in m for m in messages)
    assert any("1 missing step of 15min" in m for m in messages)
    missing = clean.copy()
    missing.iloc[30] = np.nan
    np.testing.assert_array_equal(got.samples, fc.predict(missing, num_samples=4, seed=1).samples)
    assert np.array_equal(got.timestamps, want.timestamps)


@pytest.mark.parametrize("dates, how", [
    (lambda t: (t - pd.Timestamp("1970-01-01")) // pd.Timedelta("1s"), []),  # epoch seconds
    (lambda t: (t - pd.Timestamp("1970-01-01")) // pd.Timedelta("1ms"), []),  # epoch milliseconds
    (lambda t: (t - pd.Timestamp("1970-01-01")) // pd.Timedelta("1s"), ["--date-format", "%s"]),
])
def test_number_dates_are_epoch_seconds_or_milliseconds(tiny_artifact, tmp_path, dates, how):
    frame = _table()
    times = pd.to_datetime(frame["date"])
    frame.to_csv(tmp_path / "iso.csv", index=False)
    frame.assign(date=dates(times)).to_csv(tmp_path / "num.csv", index=False)
    outs = []
    for name, extra in (("iso", []), ("num", how)):
        res = _run(tiny_artifact, "--input", tmp_path / f"{name}.csv", "--date-column", "date", *extra,
                   "--out", tmp_path / f"{name}.fc.csv")
        assert res.exit_code == 0, res.output
        outs.append(pd.read_csv(tmp_path / f"{name}.fc.csv"))
    pd.testing.assert_frame_equal(*outs)  # the same dates: 2024-01-03 12:00 onwards, not 1970
    assert outs[0]["timestamp"].iloc[0] == "2024-01-03 12:00:00"


def test_compact_dates_and_flags_in_one_line(tiny_artifact, tmp_path):
    frame = _table(rows=40, freq="D")
    frame.assign(date=pd.to_datetime(frame["date"]).dt.strftime("%Y%m%d").astype(int)).to_csv(tmp_path / "d.csv",
                                                                                                index=False)
    res = _run(tiny_artifact, "--input", tmp_path / "d.csv", "--date-column", "date", "--out", tmp_path / "f.csv")
    assert res.exit_code == 0, res.output
    assert pd.read_csv(tmp_path / "f.csv")["timestamp"].iloc[0] == "2024-02-10"
    res = _run(tiny_artifact, "--input", tmp_path / "d.csv", "--samples", "0")  # click's usage error: exit 2
    errors = [ln for ln in res.output.splitlines() if ln.startswith("Error:")]
    assert res.exit_code == 2 and len(errors) == 1 and "'--samples'" in errors[0] and "num_samples" not in res.output


def test_dates_with_utc_offsets_keep_the_local_clock(tmp_path):
    """Hourly rows written in local time with their offsets (+01:00, then +02:00 after the change to
    summer time): hour-of-day features follow the local clock, and the forecast is labelled in it."""
    from dil.runtime import Forecaster
    from dil.runtime.inputs.table import load_table

    local = pd.date_range("2024-03-17", "2024-03-31 23:00", freq="h", tz="Europe/Berlin")  # 15 days
    text = [t.isoformat() for t in local]  # 2024-03-31T01:00:00+01:00, 2024-03-31T03:00:00+02:00, ...
    frame = pd.DataFrame({"date": text, "load": np.arange(len(local), dtype=float)})
    frame.to_csv(tmp_path / "tz.csv", index=False)
    table = load_table(tmp_path / "tz.csv", date_column="date")
    wall = pd.DatetimeIndex(table.timestamps)
    assert wall[0] == pd.Timestamp("2024-03-17 00:00") and wall[-1] == pd.Timestamp("2024-03-31 23:00")  # not UTC
    assert np.isnan(table.values[list(wall).index(pd.Timestamp("2024-03-31 02:00")), 0])  # the skipped hour: missing
    assert table.utc_offset == pd.Timedelta("2h")
    assert any("the forecast is labelled UTC+02:00" in n for n in table.notes)
    # the shipped model (hourly time features): its forecast starts at the next local hour
    res = CliRunner().invoke(run_main, ["--input", str(tmp_path / "tz.csv"), "--date-column", "date", "--columns",
                                        "load", "--samples", "4", "--out", str(tmp_path / "f.csv")])
    assert res.exit_code == 0, res.output
    assert pd.read_csv(tmp_path / "f.csv")["timestamp"].iloc[0] == "2024-04-01 00:00:00+02:00"
    assert Forecaster.load().features.time_features[0] == "hour_of_day"


def _peak_rss_mb(args) -> float:
    """Peak resident memory (MB) of a dil-run process."""
    import resource
    import subprocess
    import sys

    script = ("import resource, sys; from dil.runtime.cli.run import main\n"
              "try:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
              "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")
    done = subprocess.run([sys.executable, "-c", script, *[str(a) for a in args]], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    return int(done.stdout.strip().splitlines()[-1]) / 1024


def test_a_huge_cell_in_an_unused_column_costs_no_memory(tiny_artifact, tmp_path):
    frame = _table()
    frame["comment"] = ""
    frame.to_csv(tmp_path / "small.csv", index=False)
    frame.loc[3, "comment"] = "x" * 200_000_000  # a 200 MB cell in a column the run does not use
    frame.to_csv(tmp_path / "big.csv", index=False)
    run = ["--engine", tiny_artifact, "--columns", "a,b", "--samples", "2", "--date-column", "date"]
    small = _peak_rss_mb(run + ["--input", tmp_path / "small.csv", "--out", tmp_path / "s.csv"])
    big = _peak_rss_mb(run + ["--input", tmp_path / "big.csv", "--out", tmp_path / "b.csv"])
    assert big < small + 100, (small, big)  # the cell is never held as a value (it was: +400 MB)


def test_irregular_dates_note_does_not_promise_step_numbers(tiny_artifact, tmp_path):
    frame = _table()
    times = pd.to_datetime(frame["date"]) + pd.to_timedelta(np.random.default_rng(1).integers(0, 50, 60), unit="min")
    frame.assign(date=times.dt.strftime("%Y-%m-%d %H:%M")).to_csv(tmp_path / "j.csv", index=False)
    res = _run(tiny_artifact, "--input", tmp_path / "j.csv", "--date-column", "date", "--out", tmp_path / "f.csv")
    assert res.exit_code == 0, res.output
    assert "follow no regular step" in res.output and "step numbers" not in res.output


def test_many_series_report_progress(tiny_artifact, tmp_path):
    from dil.runtime.jobs import forecast as jobs_forecast

    wide = _table(rows=30)
    n = jobs_forecast.CHUNK_SERIES + 20
    long = pd.DataFrame({"id": np.repeat(np.arange(n), 30), "date": np.tile(wide["date"], n),
                         "v": np.tile(wide["a"], n)})
    long.to_csv(tmp_path / "many.csv", index=False)
    res = _run(tiny_artifact, "--input", tmp_path / "many.csv", "--id-column", "id", "--date-column", "date",
               "--samples", "2", "--out", tmp_path / "f.csv")
    assert res.exit_code == 0, res.output
    progress = [ln for ln in res.output.splitlines() if ln.startswith("forecast ") and "series," in ln]
    assert progress[0].startswith(f"forecast {jobs_forecast.CHUNK_SERIES}/{n} series")
    assert progress[-1].startswith(f"forecast {n}/{n} series")
