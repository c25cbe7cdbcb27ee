"""benchmarks/cache_sweep.py: its rows score what dil-eval scores for the same sampler, and its
"vs best plain" is the hand-worked rule of its docstring."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "cache_sweep.py"


@pytest.fixture(scope="module")
def sweep():
    spec = importlib.util.spec_from_file_location("cache_sweep_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def test_rows_are_dil_evals_scores_and_the_ratio_is_the_rule(sweep, tiny_artifact):
    from dil.evaluate.engine_eval import evaluate_engine
    from dil.evaluate.harness import EvalOptions

    rows = sweep.configurations([3, 6], [6], [1])
    assert list(rows) == ["plain 3", "plain 6", "fast 6, K 1", "cache only 6, K 1"]
    result = sweep.run_sweep(str(tiny_artifact), rows, windows=2, samples=8, seed=0, threads=1)
    got = result["rows"]
    assert result["protocol"]["full_step_graphs"] == ["denoise_full", "denoise_full_kv"]
    for steps in (3, 6):  # the plain rows: dil-eval's scores of the plain sampler at those steps
        ev = evaluate_engine(tiny_artifact, EvalOptions(n_windows=2, samples=8, steps=steps, progress=False,
                                                        batch_size=1), sampler={"lattice": False, "cache": False})
        model = ev.report["model"]
        row = got[f"plain {steps}"]
        assert (row["crps"], row["coverage_50"], row["coverage_90"]) == \
            (model["crps"], model["coverage_50"], model["coverage_90"])
        assert row["token_fraction"] == 1.0 and row["full_steps"] == steps
    assert got["fast 6, K 1"]["settings"] == {"K": 1}
    for name, row in got.items():  # the fastest plain row at least as accurate, over the row's wall time
        as_good = [p["wall_s"] for n, p in got.items() if n.startswith("plain") and p["crps"] <= row["crps"]]
        assert row["vs_best_plain"] == (min(as_good) / row["wall_s"] if as_good else None)
    text = sweep.markdown(result, "python benchmarks/cache_sweep.py --engine E")
    assert text.count("\n| ") == 1 + 4 and "| plain 3 |" in text


def test_a_student_row_is_its_artifact_at_its_own_defaults(sweep, tiny_artifact, tmp_path):
    """--student: a row scored as dil-eval scores that artifact with its recorded defaults (here a
    copy of the tiny model recording a student's record: 2 first-order steps), never a plain row."""
    import shutil

    from dil.evaluate.engine_eval import evaluate_engine
    from dil.evaluate.harness import EvalOptions
    from dil.runtime.manifest import write_sampler_defaults

    for f in tiny_artifact.parent.glob("tiny.*"):
        shutil.copy(f, tmp_path / f.name)
    student = tmp_path / "tiny.json"
    write_sampler_defaults(student, {"lattice": False, "cache": False, "steps": 2, "solver_order": 1})
    result = sweep.run_sweep(str(tiny_artifact), sweep.configurations([3], [], []), windows=2, samples=8, seed=0,
                             threads=1, students=(str(student),))
    row = result["rows"]["student tiny, 2 steps"]
    model = evaluate_engine(student, EvalOptions(n_windows=2, samples=8, progress=False, batch_size=1)).report["model"]
    assert (row["crps"], row["coverage_50"], row["coverage_90"]) == (model["crps"], model["coverage_50"],
                                                                      model["coverage_90"])
    assert row["settings"] == {"solver_order": 1} and row["steps"] == 2 and row["full_steps"] == 2
    plain = result["rows"]["plain 3"]  # the ratio compares plain rows only, the student among the compared
    assert row["vs_best_plain"] == (plain["wall_s"] / row["wall_s"] if plain["crps"] <= row["crps"] else None)
