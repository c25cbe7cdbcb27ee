"""The shipped default model and the installed package.

`dil-run` without `--engine` and `Forecaster.load()` without a path use the model shipped as package
data of `dil.engines`, from any working folder; pyproject's package-data and .gitignore's whitelist
name the same files; and a wheel installed (not editable) into a fresh environment without torch
forecasts from any folder, the checkout included (`dil` is a namespace package: no folder of the
checkout shadows it).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from dil.runtime import Forecaster
from dil.runtime.cli.run import main
from dil.runtime.manifest import DEFAULT_ARTIFACT, default_artifact

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def _package_data() -> set:
    return set(PYPROJECT["tool"]["setuptools"]["package-data"]["dil.engines"])


def _gitignore_whitelist() -> set:
    lines = (ROOT / ".gitignore").read_text(encoding="utf-8").splitlines()
    return {line[len("!/engines/"):] for line in lines if line.startswith("!/engines/")}


# The hours the traffic_csv fixture lacks: inside the shipped model's context (its last 336 hours).
MISSING_HOURS = pd.date_range("2018-09-25 10:00", periods=3, freq="h")


@pytest.fixture(scope="module")
def traffic_csv(tmp_path_factory):
    """The last 500 rows (date_time, traffic_volume) of the bundled metro-traffic table less the
    MISSING_HOURS: 369 of the 372 hours from 2018-09-15 12:00 on, some of them on several rows, as
    the whole file repeats and skips hours."""
    frame = pd.read_csv(ROOT / "data" / "files" / "metro_traffic.csv.gz", usecols=["date_time", "traffic_volume"])
    frame = frame.tail(500)
    frame = frame[~pd.to_datetime(frame["date_time"]).isin(MISSING_HOURS)]
    path = tmp_path_factory.mktemp("input") / "traffic.csv"
    frame.to_csv(path, index=False)
    return path


def _readme_example() -> str:
    """The README's Python quick start (its first python code block), which reads the bundled file."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    code = text.split("```python\n", 1)[1].split("```", 1)[0]
    assert '"data/files/metro_traffic.csv.gz"' in code and "forecast = Forecaster.load().predict(" in code
    return code


def _readme_history(path):
    """The history as the README's Python quick start reads it, from `path`."""
    code = _readme_example().split("forecast = ", 1)[0].replace('"data/files/metro_traffic.csv.gz"', repr(str(path)))
    scope = {}
    exec(code, scope)  # noqa: S102 - the README's own lines
    return scope["history"]


def test_package_data_and_gitignore_name_the_same_shipped_files():
    assert _package_data() == _gitignore_whitelist() - {"__init__.py"}
    assert {f"{DEFAULT_ARTIFACT}{s}" for s in (".json", ".encode.onnx", ".denoise.onnx")} <= _package_data()
    # only the shipped model's files and its teacher's (docs/distillation.md), never another export
    for name in _package_data():
        assert name == "README.md" or name.startswith((f"{DEFAULT_ARTIFACT}.", f"{DEFAULT_ARTIFACT}-teacher."))


def test_every_file_the_shipped_manifest_names_is_package_data():
    """A file the manifest refers to (graphs, and any file added later, e.g. weights) must ship too."""
    path = default_artifact()
    named = set(re.findall(rf'"({re.escape(DEFAULT_ARTIFACT)}\.[\w.-]+)"', path.read_text(encoding="utf-8")))
    assert {f"{DEFAULT_ARTIFACT}.encode.onnx", f"{DEFAULT_ARTIFACT}.denoise.onnx"} <= named
    assert named <= _package_data(), f"add {sorted(named - _package_data())} to pyproject's package-data and .gitignore"


def test_default_artifact_is_the_package_data_of_dil_engines(tmp_path, monkeypatch):
    import dil.engines

    monkeypatch.chdir(tmp_path)
    path = default_artifact()
    assert path == Path(dil.engines.__file__).resolve().parent / f"{DEFAULT_ARTIFACT}.json"
    assert path.is_absolute() and path.is_file()


def test_dil_run_and_forecaster_use_the_shipped_model_from_any_folder(tmp_path, monkeypatch, traffic_csv):
    """The quick start: dil-run reads the dates from date_time (the model's training column) by
    itself; the Forecaster given the history as the README reads it makes the same forecast."""
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["--input", str(traffic_csv), "--columns", "traffic_volume", "--out", "f.csv",
                                       "--samples", "16", "--steps", "6"])
    assert result.exit_code == 0, result.output
    assert "forecast 1 series x 24 steps" in result.output
    assert "note: dates from column 'date_time' (the model's training data)" in result.stderr.splitlines()
    assert "3 missing steps of h" in result.stderr  # the MISSING_HOURS, added as missing values
    frame = pd.read_csv(tmp_path / "f.csv", parse_dates=["timestamp"])
    last = pd.Timestamp(pd.read_csv(traffic_csv)["date_time"].iloc[-1])
    assert frame["timestamp"].tolist() == list(pd.date_range(last, periods=25, freq="h")[1:])

    history = _readme_history(traffic_csv)
    assert len(history) == 372 and history.loc[MISSING_HOURS].isna().all() and history.notna().sum() == 369
    want = Forecaster.load(ROOT / "engines" / f"{DEFAULT_ARTIFACT}.onnx").predict(
        history, num_samples=16, steps=6, seed=0)
    np.testing.assert_allclose(frame["median"].to_numpy(), want.median[0], rtol=1e-12)
    np.testing.assert_array_equal(want.timestamps, frame["timestamp"].to_numpy(dtype="datetime64[ns]"))
    got = Forecaster.load().predict(history, num_samples=16, steps=6, seed=0)
    np.testing.assert_array_equal(got.samples, want.samples)


def test_help_names_the_default_model():
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    assert "the shipped metro-traffic model" in " ".join(result.output.split())


# -- the wheel, installed into a fresh environment without torch ---------------------------------------
def _build_wheel(dest: Path, work: Path) -> Path:
    """Build the wheel from a copy of what the build reads, so that nothing is written into the checkout.

    Offline (`--no-build-isolation --no-index`) when this interpreter's setuptools builds wheels by
    itself (>= 70.1, which the `test` extra installs); else pip fetches the build backend.
    """
    from importlib import metadata

    from packaging.version import Version

    src = work / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for folder in PYPROJECT["tool"]["setuptools"]["package-dir"].values():
        shutil.copytree(ROOT / folder, src / folder, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    try:
        offline = Version(metadata.version("setuptools")) >= Version("70.1")
    except metadata.PackageNotFoundError:
        offline = False
    flags = ["--no-build-isolation", "--no-index"] if offline else []
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", *flags, "-w", str(dest), str(src)],
                   check=True, cwd=work, timeout=300)
    (wheel,) = dest.glob("dil-*.whl")
    return wheel


def _borrow_dependencies(wheel: Path, dest: Path) -> set:
    """Link into `dest` the installed distributions the wheel's core requirements need, transitively.

    Returns their normalised names. Each distribution comes whole (its top-level packages and its
    .dist-info), so pip in the new environment sees the requirements as installed.
    """
    from importlib import metadata

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    with zipfile.ZipFile(wheel) as zf:
        meta = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        todo = [line.split(":", 1)[1].strip() for line in zf.read(meta).decode().splitlines()
                if line.startswith("Requires-Dist:")]
    dists = {}
    while todo:
        req = Requirement(todo.pop())
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue  # an extra's requirement, or one for another platform
        name = canonicalize_name(req.name)
        if name not in dists:
            dists[name] = metadata.distribution(req.name)
            todo.extend(dists[name].requires or [])
    for dist in dists.values():
        assert dist.files, f"{dist.metadata['Name']} has no RECORD: cannot tell its files"
        for top in {f.parts[0] for f in dist.files} - {"..", "__pycache__"}:
            link, target = dest / top, Path(dist.locate_file(top))
            if not link.exists():
                link.symlink_to(target)
    return set(dists)


@pytest.mark.slow
def test_the_wheel_installed_without_torch_forecasts_from_any_folder(tmp_path, traffic_csv):
    """Build the wheel, install it (not editable) into a fresh venv with no torch, run the quick start.

    The venv is plain (no --system-site-packages: the interpreter running the tests has torch). Its
    dependencies are not downloaded (26 s from PyPI when measured, and only where PyPI is reachable):
    the distributions the wheel requires (numpy, onnxruntime, pandas, click, tqdm and what they require,
    found from the wheel's own metadata) are linked from the interpreter running the tests into a
    folder the venv reads through a .pth file. `pip install --no-index` then installs the wheel and
    checks its requirements against them, so an undeclared dependency fails here, and torch, which
    no runtime requirement pulls in, is absent. The venv gets no pip of its own: this interpreter's
    pip (>= 22.3, `--python`) installs into it.
    """
    wheel = _build_wheel(tmp_path / "wheels", tmp_path)
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
    engines = {n.split("/", 2)[2] for n in names if n.startswith("dil/engines/")}
    assert engines == {n for n in _package_data() if (ROOT / "engines" / n).is_file()} | {"__init__.py"}
    assert "dil/evaluate/reference/__init__.py" in names
    assert "dil/__init__.py" not in names  # a namespace package, like the checkout

    borrowed = tmp_path / "borrowed"
    borrowed.mkdir()
    dists = _borrow_dependencies(wheel, borrowed)
    assert {"numpy", "onnxruntime", "pandas"} <= dists and "torch" not in dists

    # Without a pip of its own (ensurepip takes seconds); this interpreter's pip installs into it.
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    bindir = venv / ("Scripts" if os.name == "nt" else "bin")
    python = bindir / "python"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON") and k != "VIRTUAL_ENV"}
    env.update(PYTHONNOUSERSITE="1", PATH=f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}")
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True, env=env).stdout.strip()
    (Path(site) / "dil-test-borrowed.pth").write_text(f"{borrowed}\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-index",
                    "--no-cache-dir", str(wheel)], check=True, env=env, timeout=300)

    # The quick start, verbatim but for the input's path, from a folder that is not the checkout.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copy(traffic_csv, elsewhere / "traffic.csv")
    run = subprocess.run([bindir / "dil-run", "--input", "traffic.csv", "--columns", "traffic_volume", "--out", "f.csv"],
                         cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "forecast 1 series x 24 steps" in run.stdout
    assert "note: dates from column 'date_time' (the model's training data)" in run.stderr.splitlines()
    cli = pd.read_csv(elsewhere / "f.csv")
    assert len(cli) == 24 and cli["series"].eq("traffic_volume").all()

    # The README's library example, verbatim but for the input's path, with the checkout as the
    # working folder: the installed package is imported.
    example = _readme_example().replace('"data/files/metro_traffic.csv.gz"', repr(str(traffic_csv))) + """
import importlib.util, json, sys
import dil.engines
print(json.dumps({"runtime": sys.modules["dil.runtime"].__file__, "engines": dil.engines.__file__,
                  "torch_importable": importlib.util.find_spec("torch") is not None,
                  "torch_imported": "torch" in sys.modules, "median": forecast.median[0].tolist()}))
"""
    lib = subprocess.run([python, "-c", example], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert lib.returncode == 0, lib.stderr
    got = json.loads(lib.stdout.splitlines()[-1])
    for key in ("runtime", "engines"):
        assert Path(got[key]).resolve().is_relative_to(Path(site).resolve()), got[key]
    assert not got["torch_importable"] and not got["torch_imported"]
    # Same model, same seed, same series name: the library and dil-run agree, and so does the
    # checkout's artifact run in this process.
    np.testing.assert_allclose(got["median"], cli["median"].to_numpy(), rtol=1e-12)
    here = Forecaster.load(ROOT / "engines" / f"{DEFAULT_ARTIFACT}.json").predict(
        _readme_history(traffic_csv), num_samples=100, seed=0)
    np.testing.assert_allclose(here.median[0], cli["median"].to_numpy(), rtol=1e-9)
