"""dil-eval as a user runs it, in a fresh interpreter with piped output: what a default run costs
(no torch, bounded memory) and the progress it shows."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _run_piped(args, cwd):
    """dil-eval in a fresh interpreter, stdout and stderr pipes (not terminals); it reports whether
    torch was imported."""
    code = ("import sys; from dil.evaluate.cli.eval import main; main(sys.argv[1:], standalone_mode=False); "
            "import resource; print('torch imported:', 'torch' in sys.modules, "
            "'peak KiB:', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, cwd=cwd,
                          timeout=600)


def test_dil_eval_default_runs_no_torch_and_shows_progress_when_piped(tiny_artifact, tmp_path):
    """Defect 10: the 1000-step PyTorch DDPM reference is opt-in (--ddpm-windows N), so a default run
    never imports torch; with stderr not a terminal, progress is one line per batch of windows."""
    res = _run_piped(["--engine", tiny_artifact, "--windows", 2, "--samples", 4, "--steps", 2, "--batch-size", 5],
                     tmp_path)
    assert res.returncode == 0, res.stderr
    assert "torch imported: False" in res.stdout and "ddpm" not in res.stdout + res.stderr
    progress = [line.split(" windows")[0] for line in res.stderr.splitlines() if line.startswith("forecast: ")]
    assert progress == ["forecast: 5/14", "forecast: 10/14", "forecast: 14/14"]  # 7 series x 2 origins


@pytest.mark.skipif(sys.platform != "linux", reason="ru_maxrss is in KiB on Linux")
def test_dil_eval_peak_memory_on_the_shipped_model(tmp_path):
    """Defect 6: dil-eval's peak RSS stays under 1 GB at the default 100 samples and batch size. Its
    engine no longer runs every window of a batch in one call: that took 1.5 GB here (12 windows x
    100 samples) and 4.5 GB on longer runs (32 windows per call, the default batch)."""
    res = _run_piped(["--engine", ROOT / "engines" / "metro-traffic.onnx", "--windows", 12, "--steps", 4], tmp_path)
    assert res.returncode == 0, res.stderr
    peak_kib = int(res.stdout.split("peak KiB:")[1])
    assert peak_kib < 1e6, f"peak RSS {peak_kib / 1024:.0f} MiB"


def test_dil_eval_without_engine_scores_the_shipped_model(tmp_path):
    """Like dil-run, dil-eval without --engine evaluates the shipped default model: the same report
    as naming its artifact explicitly, from a folder that is not the checkout."""
    import json

    args = ["--windows", 2, "--samples", 4, "--steps", 2]
    implicit = _run_piped([*args, "--json", tmp_path / "implicit.json"], tmp_path)
    explicit = _run_piped([*args, "--engine", ROOT / "engines" / "metro-traffic.onnx", "--json",
                           tmp_path / "explicit.json"], tmp_path)
    assert implicit.returncode == 0 and explicit.returncode == 0, implicit.stderr + explicit.stderr
    a, b = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("implicit", "explicit"))
    assert a["model"] == b["model"] and a["protocol"]["windows"] == b["protocol"]["windows"]
    shipped = json.loads((ROOT / "engines" / "metro-traffic.json").read_text())
    assert a["protocol"]["context"] == shipped["model"]["context_length"]
