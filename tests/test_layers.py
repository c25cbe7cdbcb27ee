"""Import contracts (pyproject's [tool.importlinter]): the runtime never imports torch or the layers
above it, the layers go one way, the sampler stands below the engines and the Forecaster, and the
runtime's modules import each other without cycles, and no library module imports a command-line module."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
CONTRACTS = {c["name"]: c["type"] for c in PYPROJECT["tool"]["importlinter"]["contracts"]}


def _lint_imports(cwd: Path, pythonpath: str | None = None) -> subprocess.CompletedProcess:
    """lint-imports run in `cwd`, which holds the pyproject.toml it reads."""
    exe = Path(sys.executable).with_name("lint-imports")
    cmd = [str(exe)] if exe.is_file() else [shutil.which("lint-imports") or "lint-imports"]
    env = None if pythonpath is None else {**os.environ, "PYTHONPATH": pythonpath}
    return subprocess.run([*cmd, "--no-cache", "--no-logo"], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


def _verdicts(output: str) -> dict:
    """{contract name: 'KEPT' or 'BROKEN'} from lint-imports' summary lines."""
    found = {}
    for line in output.splitlines():
        for name in CONTRACTS:
            verdict = line[len(name) + 1:].split()[:1] if line.startswith(name + " ") else []
            if verdict and verdict[0] in ("KEPT", "BROKEN"):  # "KEPT (3 ignored imports)" too
                found[name] = verdict[0]
    return found


def test_import_contracts_hold():
    result = _lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert set(_verdicts(result.stdout).values()) == {"KEPT"} and len(_verdicts(result.stdout)) == len(CONTRACTS)


def test_every_contract_catches_a_planted_violation(tmp_path):
    """The same contracts, run on a copy of the sources with one violation per contract planted.

    The copy comes first on PYTHONPATH, so `dil.runtime` etc. are read from it (the namespace
    package `dil` takes its portions in path order). Imports inside functions count too.
    """
    for folder in ("runtime", "data", "train", "export", "evaluate", "engines"):
        shutil.copytree(ROOT / folder, tmp_path / "dil" / folder, ignore=shutil.ignore_patterns("__pycache__", "*.onnx"))
    plants = {
        "runtime/support/files.py": "def _plant():\n    import torch\n",
        "runtime/inputs/table.py": "def _plant():\n    from dil.data import datasets\n",
        "engines/__init__.py": "from dil.runtime.support import files\n",
        "runtime/sampling/schedule.py": "def _plant():\n    from dil.runtime import forecaster\n",
        "runtime/_plant_a.py": "from dil.runtime import _plant_b\n",
        "runtime/_plant_b.py": "def _plant():\n    from dil.runtime import _plant_a\n",
        "evaluate/harness.py": "def _plant():\n    from dil.evaluate.cli import eval\n",
    }
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    for rel, code in plants.items():
        with open(tmp_path / "dil" / rel, "a", encoding="utf-8") as f:
            f.write("\n\n" + code)
    result = _lint_imports(tmp_path, pythonpath=str(tmp_path))
    verdicts = _verdicts(result.stdout)
    assert result.returncode != 0
    assert verdicts == {name: "BROKEN" for name in CONTRACTS}, result.stdout + result.stderr


def test_runtime_modules_import_without_cycles():
    """No chain of imports leads from a runtime module back to itself (package __init__ modules included).

    Lists every cycle found as `a -> b -> ... -> a`.
    """
    grimp = pytest.importorskip("grimp")
    graph = grimp.build_graph("dil.runtime", cache_dir=None)
    cycles = set()
    for importer in sorted(graph.modules):
        for imported in sorted(graph.find_modules_directly_imported_by(importer)):
            if imported == importer or imported not in graph.modules:
                continue
            back = graph.find_shortest_chain(importer=imported, imported=importer)
            if back:
                cycle = (importer, *back)
                i = cycle.index(min(cycle[:-1]))  # one spelling per cycle
                cycles.add(" -> ".join(cycle[i:-1] + cycle[:i] + (cycle[i],)))
    assert not cycles, "import cycles in dil.runtime:\n" + "\n".join(sorted(cycles))
