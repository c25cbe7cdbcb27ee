"""Every console script answers --help with only the core dependencies (no torch, onnx, matplotlib)."""

from __future__ import annotations

import subprocess
import sys

import pytest

# Installed into sys.meta_path of a fresh interpreter: importing any of these fails as if the
# package were not installed, whether or not it is present in the test environment.
BLOCKER = """
import sys
BLOCKED = {"torch", "onnx", "onnxscript", "safetensors", "matplotlib", "tensorrt", "pyarrow"}

class _Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"No module named {name!r} (blocked by the test)")
        return None

sys.meta_path.insert(0, _Blocker())
"""

SCRIPTS = {
    "dil-train": ("dil.train.cli", ["--dataset", "--data", "--date-format", "--dayfirst", "--out"]),
    "dil-export": ("dil.export.cli", ["--checkpoint", "--out"]),
    "dil-run": ("dil.runtime.cli.run", ["--input", "--date-format", "--dayfirst", "--skip-bad-series", "--out",
                                    "--spacing logsnr|time"]),
    "dil-eval": ("dil.evaluate.cli.eval", ["--data", "--date-format", "--dayfirst", "--json", "--plots", "--spacing logsnr|time"]),
    "dil-bench": ("dil.evaluate.cli.bench", ["--engine", "--json", "--plot", "--spacing logsnr|time"]),
    "dil-validate": ("dil.evaluate.cli.validate", ["--engine", "--json"]),
}


def _run_script(script: str, args: list[str]) -> subprocess.CompletedProcess:
    """`script args` as its console-script wrapper runs it (argv[0] = the script's name), torch blocked."""
    module = SCRIPTS[script][0]
    code = BLOCKER + f"sys.argv = [{script!r}, *{args!r}]\nfrom {module} import main\nsys.exit(main())\n"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("script", list(SCRIPTS))
def test_help_without_optional_dependencies(script):
    proc = _run_script(script, ["--help"])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"Usage: {script} [OPTIONS]"), proc.stdout
    for option in SCRIPTS[script][1]:
        assert option in proc.stdout, option
    assert proc.stderr == ""


def test_train_without_torch_names_the_extra_and_writes_nothing(tmp_path):
    out = tmp_path / "runs" / "m"
    proc = _run_script("dil-train", ["--out", str(out)])
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == ["Error: torch is not installed: pip install 'dil[train]'"]
    assert list(tmp_path.iterdir()) == []
