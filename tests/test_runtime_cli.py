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

from dil.runtime.cli import main
from dil.runtime.files import sha256_file
from dil.runtime.quantiles import QUANTILE_LEVELS, quantile_column

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
        "import sys; from dil.runtime.cli import main; main(sys.argv[1:], standalone_mode=False);"
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
    for suffix in (".json", ".encode.onnx", ".denoise.onnx"):
        shutil.copy(tiny_artifact.with_name("tiny" + suffix), dest / ("tiny" + suffix))
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
    ("--out", "missing/f.csv", "does not exist"),
    ("--plot", "missing/f.png", "does not exist"),
    ("--out", "f.xlsx", "unsupported file type"),
    ("--steps", None, "steps must be an integer"),
])
def test_bad_options_exit_with_one_line(tiny_artifact, table_csv, tmp_path, opt, name, match):
    value = "0" if name is None else tmp_path / name
    result = _run(["--engine", tiny_artifact, "--input", table_csv, "--samples", 2, opt, value])
    _assert_clean_failure(result, match)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]


def _assert_clean_failure(result, match):
    assert result.exit_code != 0
    text = result.output.strip()
    assert len(text.splitlines()) == 1, text
    assert "Traceback" not in text and match in text, text
