"""`dil-run --ray`: the long table's forecast on a local Ray cluster started here (2 CPUs).

The reference is the single-process `dil-run --id-column` output: --ray must equal it bit for bit,
whatever the actors and blocks, also when an actor dies mid-job; a failed job leaves no output.
"""

from __future__ import annotations

import pandas as pd
import pytest
from click.testing import CliRunner
from builders import to_long, wide_frame

from dil.runtime.cli.run import main
from dil.runtime.jobs.ray_job import FAULT_MARKER_ENV

ray = pytest.importorskip("ray", reason="the 'ray' extra is not installed (pip install 'dil[ray]')")
pytestmark = pytest.mark.slow  # a local Ray cluster: about a minute for the module

NAMES = [f"s{i:02d}" for i in range(10)]
# --batch-series 2: five actor calls, so that the two actors share the work.
RUN = ["--id-column", "id", "--samples", 4, "--threads", 1, "--batch-series", 2]


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}})
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A folder of two Parquet files of 10 series (rows of each series in both) and the single-process
    forecast of it."""
    root = tmp_path_factory.mktemp("ray")
    long = to_long(wide_frame(rows=360, names=NAMES))
    folder = root / "parts"
    folder.mkdir()
    long.iloc[::2].to_parquet(folder / "a.parquet", index=False)
    long.iloc[1::2].to_parquet(folder / "b.parquet", index=False)
    r = _run(["--input", folder, "--out", root / "single.parquet"] + RUN)
    assert r.exit_code == 0, r.output
    return folder, pd.read_parquet(root / "single.parquet")


def _run(args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _read(folder) -> pd.DataFrame:
    return pd.read_parquet(folder).sort_values(["series", "timestamp"]).reset_index(drop=True)


def test_ray_output_equals_single_process(cluster, data, tmp_path):
    folder, single = data
    out = tmp_path / "forecast"
    r = _run(["--input", folder, "--ray", "--actors", 2, "--out", out] + RUN)
    assert r.exit_code == 0, r.output
    assert "forecast 10 series of parts on Ray (2 actors" in r.output
    files = sorted(out.glob("*.parquet"))
    assert len(files) > 1  # blocks were forecast apart, by two actors
    assert [p.name for p in tmp_path.iterdir()] == ["forecast"]  # no temporary folder left beside it
    pd.testing.assert_frame_equal(_read(out), single, check_exact=True)
    r = _run(["--input", folder, "--ray", "--out", out] + RUN)  # never over an earlier output
    assert r.exit_code == 1 and "already exists" in r.output


def test_killed_actor_is_retried_and_the_output_is_complete(cluster, data, tmp_path, monkeypatch):
    folder, single = data
    marker = tmp_path / "kill-one-actor"
    marker.touch()
    monkeypatch.setenv(FAULT_MARKER_ENV, str(marker))  # the first actor call deletes it and exits
    out = tmp_path / "forecast"
    r = _run(["--input", folder, "--ray", "--actors", 2, "--out", out] + RUN)
    assert r.exit_code == 0, r.output
    assert not marker.exists()  # an actor did die
    pd.testing.assert_frame_equal(_read(out), single, check_exact=True)


def _broken(long: pd.DataFrame) -> pd.DataFrame:
    """A word among one series' numbers: the grouping task that reads it fails."""
    long["value"] = long["value"].astype(object)
    long.loc[(long["id"] == "s07") & (long["date_time"] == "2018-01-05 00:00:00"), "value"] = "broken"
    return long


def _short(long: pd.DataFrame) -> pd.DataFrame:
    """One series shorter than the model's context: the actor that forecasts it fails."""
    return long[(long["id"] != "s03") | (long["date_time"] >= "2018-01-03 12:00:00")]


@pytest.mark.parametrize("edit, message", [
    (_broken, "long.csv: series 's07': column 'value' is not numeric (at 2018-01-05 00:00:00: 'broken')"),
    (_short, "series 's03' has fewer than 336 rows (the model's context_length); --skip-bad-series forecasts the others"),
])
def test_failed_job_leaves_no_output_folder(cluster, tmp_path, edit, message):
    edit(to_long(wide_frame(rows=360, names=NAMES))).to_csv(tmp_path / "long.csv", index=False)
    out = tmp_path / "nested" / "forecast"
    r = _run(["--input", tmp_path / "long.csv", "--ray", "--actors", 2, "--out", out] + RUN)
    assert r.exit_code == 1
    assert r.output.strip().splitlines()[-1] == f"Error: {message}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["long.csv"]  # neither the folder nor a temporary one
    r = _run(["--input", tmp_path / "long.csv", "--ray", "--out", tmp_path] + RUN)
    assert r.exit_code == 1 and "already exists" in r.output


def test_a_successful_ray_run_prints_no_ray_logging(data, tmp_path):
    """Run as a user runs it (its own Ray, started by dil-run): the summary on stdout and nothing on
    stderr, not Ray's INFO lines nor its core worker's error-level line about actor arguments."""
    import subprocess
    import sys

    folder, _ = data
    done = subprocess.run([sys.executable, "-m", "dil.runtime.cli.run", "--input", str(folder), "--ray", "--actors", "1",
                           "--out", str(tmp_path / "out"), *[str(a) for a in RUN]],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    # dil's own note (the date column it took) is the only line
    assert done.stderr == "note: dates from column 'date_time' (the model's training data)\n", done.stderr
    assert done.stdout.startswith("forecast 10 series of parts on Ray")
