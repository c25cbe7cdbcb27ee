"""Few-step students (train/distill.py, dil-train --distill): targets, teacher, CLI and artifact."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

torch = pytest.importorskip("torch")
from click.testing import CliRunner  # noqa: E402

from dil.runtime.sampling.schedule import NoiseSchedule  # noqa: E402
from dil.runtime.sampling.solver import DPMSolverPP  # noqa: E402
from dil.train.dataset import WindowBatch  # noqa: E402
from dil.train.distill import DistillConfig, TeacherTrajectories, default_teacher_steps  # noqa: E402

TINY_MODEL = ["--context", "16", "--horizon", "8", "--d-model", "16", "--heads", "2", "--layers", "1", "--ffn-dim", "16"]
TINY_TRAIN = ["--epochs", "1", "--steps-per-epoch", "2", "--batch-size", "4", "--noise-draws", "2", "--quiet"]


def _batch(model, B=3, seed=0) -> WindowBatch:
    cfg = model.config
    rng = np.random.default_rng(seed)
    ctx = rng.standard_normal((B, cfg.context_length, cfg.context_features)).astype(np.float32)
    ctx[..., 1] = 1.0  # observed
    return WindowBatch(ctx=ctx, hor_feat=np.zeros((B, cfg.horizon, cfg.horizon_features - 1), np.float32),
                       target=np.zeros((B, cfg.horizon), np.float32), mask=np.ones((B, cfg.horizon), np.float32),
                       loc=np.zeros(B), scale=np.ones(B))


def _source(model, K=2, M=6, draws=2, x0_clip=0.0):
    # the random tiny model's data predictions lie beyond the default guard: off, so that values are compared
    spec = DistillConfig("tiny", "0" * 64, student_steps=K, teacher_steps=M, x0_clip=x0_clip)
    return TeacherTrajectories(model.eval(), model.config, NoiseSchedule(), spec, draws, torch.device("cpu"))


def test_teacher_is_the_plain_sampler(tiny_model):
    """The teacher's sample equals the PyTorch reference of the plain DPM-Solver++ (order 2, M steps)."""
    from dil.evaluate.reference.sampler import reference_sample

    src = _source(tiny_model)
    batch = _batch(tiny_model)
    x_T = np.random.default_rng(1).standard_normal((3, 2, tiny_model.config.horizon))
    starts, final = src.trajectories(batch, x_T)
    ref = reference_sample(tiny_model, NoiseSchedule(), batch.ctx, x_T, 6, solver_order=2, x0_clip=0.0)
    assert np.abs(ref).max() > 1.0  # real values, not a constant
    np.testing.assert_allclose(final, ref, rtol=1e-5, atol=1e-5)
    clipped = _source(tiny_model, x0_clip=2.0).trajectories(batch, x_T)[1]
    np.testing.assert_allclose(clipped, reference_sample(tiny_model, NoiseSchedule(), batch.ctx, x_T, 6, x0_clip=2.0),
                               rtol=1e-5, atol=1e-5)
    assert starts.shape == (2, 3, 2, tiny_model.config.horizon) and np.array_equal(starts[0], x_T)
    # the state at the student's second time is the reference's 3 steps of the 6-step run
    assert not np.allclose(starts[1], starts[0])


def test_one_student_step_with_the_target_lands_on_the_teacher(tiny_model):
    """The defining property (Salimans & Ho, Algorithm 2): one first-order step of the runtime's
    DPMSolverPP on the K-step grid, fed the target's x0, reaches the teacher's state; float64."""
    from dil.runtime.sampling.parametrisation import to_x0_eps

    K, draws, H = 3, 2, tiny_model.config.horizon
    src = _source(tiny_model, K=K, M=9, draws=draws)
    batch = _batch(tiny_model, B=2)
    rng_a, rng_b = np.random.default_rng(5), np.random.default_rng(5)
    draw = src.draw(rng_a, batch)
    starts, final = src.trajectories(batch, rng_b.standard_normal((2, draws, H)))
    ends = np.concatenate([starts[1:], final[None]])
    solver = DPMSolverPP(NoiseSchedule(), K)
    net = draw.net_target.astype(np.float64).reshape(2, K, draws, H)
    shift = np.zeros(K)  # how far x_s moves per unit of network-output error, per student step
    for j in range(K):
        x_t = starts[j]
        x_s = []
        for e in (0.0, 1e-3):
            x0, _ = to_x0_eps(net[:, j] + e, x_t, solver.alphas[j], solver.sigmas[j], tiny_model.config.prediction)
            solver.step_index = j
            x_s.append(solver.step(x_t, x0, order=1))
        np.testing.assert_allclose(x_s[0], ends[j], atol=2e-5)  # the target was cast to float32
        shift[j] = np.abs(x_s[1] - x_s[0]).mean() / 1e-3
    np.testing.assert_array_equal(draw.x.reshape(2, K, draws, H), starts.transpose(1, 0, 2, 3).astype(np.float32))
    # the loss weights make it the mean squared error of x_s: weight_j proportional to shift_j^2, mean 1
    weights = draw.mask.reshape(2, K, draws, H)
    assert np.all(weights == weights[:1, :, :1, :1])
    np.testing.assert_allclose(weights[0, :, 0, 0], shift**2 / np.mean(shift**2), rtol=1e-4)


def test_steps_are_checked():
    assert default_teacher_steps(4) == 12 and default_teacher_steps(5) == 15 and default_teacher_steps(8) == 16
    for K, M in ((4, 10), (4, 4), (0, 4)):
        with pytest.raises(ValueError, match="steps"):
            DistillConfig("t", "0", student_steps=K, teacher_steps=M)
    record = DistillConfig("t", "0", 4, 12).sampler_defaults()
    assert (record["steps"], record["solver_order"], record["lattice"], record["cache"]) == (4, 1, False, False)


# -- dil-train --distill, dil-export, dil-run ---------------------------------------------------------
@pytest.fixture(scope="module")
def student(tmp_path_factory):
    from dil.train.cli import main

    tmp = tmp_path_factory.mktemp("distill")
    teacher, out = tmp / "runs" / "teacher", tmp / "runs" / "student"
    res = CliRunner().invoke(main, TINY_MODEL + TINY_TRAIN + ["--dataset", "metro-traffic", "--out", str(teacher)])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(main, TINY_TRAIN + ["--distill", str(teacher), "--student-steps", "2", "--out", str(out)])
    assert res.exit_code == 0, res.output
    return teacher, out, res.output


def test_student_run_records_its_teacher(student):
    from dil.runtime.support.files import sha256_file

    teacher, out, output = student
    assert "student of teacher: 2 first-order steps" in output and "12 steps of order 2" in output
    t_cfg, s_cfg = (json.loads((p / "config.json").read_text()) for p in (teacher, out))
    assert s_cfg["model"] == t_cfg["model"] and s_cfg["features"] == t_cfg["features"]
    assert s_cfg["data"]["sha256"] == t_cfg["data"]["sha256"]
    d = s_cfg["training"]["distill"]
    assert (d["student_steps"], d["teacher_steps"], d["teacher"]) == (2, 12, "teacher")
    assert d["teacher_sha256"] == sha256_file(teacher / "model.safetensors")
    assert (s_cfg["training"]["lr"], s_cfg["training"]["batch_size"]) == (1e-3, 4)  # default lr, given batch
    assert json.loads((out / "state.json").read_text())["distill"] == d


def test_student_artifact_runs_its_steps(student, tmp_path):
    from dil.export.cli import main as export_main
    from dil.runtime.cli.run import main as run_main
    from dil.runtime.manifest import load_manifest

    _, out, _ = student
    res = CliRunner().invoke(export_main, ["--no-frontier", "--checkpoint", str(out), "--out", str(tmp_path / "engines"),
                                           "--name", "student", "--quiet"])
    assert res.exit_code == 0, res.output
    manifest = load_manifest(tmp_path / "engines" / "student.json")
    config = manifest.default_sampler()
    assert (config.steps, config.solver_order, config.plain) == (2, 1, True)
    assert "distilled student" in manifest.sampler_defaults["why"]
    times = pd.date_range("2024-05-01", periods=20, freq="h").strftime("%Y-%m-%d %H:%M")
    pd.DataFrame({"date": times, "traffic_volume": np.linspace(3000.0, 4000.0, 20)}).to_csv(tmp_path / "in.csv",
                                                                                         index=False)
    run = ["--engine", str(tmp_path / "engines" / "student.json"), "--samples", "4", "--input", str(tmp_path / "in.csv"),
           "--date-column", "date", "--stats"]
    res = CliRunner().invoke(run_main, run + ["--out", str(tmp_path / "fc.csv")])
    assert res.exit_code == 0, res.output
    assert "plain DPM-Solver++ of order 1, 2 steps (artifact default: distilled student" in res.output
    # other steps keep the student's order (at 3 steps order 2 would show in the histogram)
    res = CliRunner().invoke(run_main, run + ["--steps", "3", "--out", str(tmp_path / "fc3.csv")])
    assert res.exit_code == 0, res.output
    assert "plain DPM-Solver++ of order 1, 3 steps (--steps given; otherwise the artifact default" in res.output
    assert "[48, 0, 0]" in res.output  # the order histogram: 3 steps x 4 samples x 4 tokens, all first order
    from dil.evaluate.cli.bench import main as bench_main

    # dil-bench runs the student's order in the runtime and in torch (at 3 steps, order 2 would show)
    res = CliRunner().invoke(bench_main, ["--engine", str(tmp_path / "engines" / "student.json"), "--only",
                                          "torch-full,runtime-full", "--steps", "3", "--series", "1", "--samples",
                                          "4", "--repeats", "1", "--windows", "2", "--threads", "1", "--in-process",
                                          "--json", str(tmp_path / "bench.json")])
    assert res.exit_code == 0, res.output
    runs = {r["name"]: r for r in json.loads((tmp_path / "bench.json").read_text())["runs"]}
    assert runs["torch-full"]["crps"] == pytest.approx(runs["runtime-full"]["crps"], rel=1e-4)
    histogram = runs["runtime-full"]["sampler_stats"]["order_histogram"]
    assert histogram[0] > 0 and histogram[1:] == [0, 0]  # first order only
    # the frontier's choice would replace the student's steps and order: refused, nothing written

    before = (tmp_path / "engines" / "student.json").read_bytes()
    res = CliRunner().invoke(bench_main, ["--engine", str(tmp_path / "engines" / "student.json"), "--frontier",
                                          "--write-defaults"])
    assert res.exit_code != 0 and "is a distilled student" in res.output and res.output.count("\n") == 1, res.output
    assert (tmp_path / "engines" / "student.json").read_bytes() == before


@pytest.mark.parametrize("extra, message", [
    (["--student-steps", "2"], "--student-steps and --teacher-steps go with --distill"),
    (["--distill", "{teacher}", "--d-model", "32"], "drop --d-model"),
    (["--distill", "{teacher}", "--student-steps", "4", "--teacher-steps", "10"], "multiple of --student-steps 4"),
    (["--distill", "{student}"], "is itself a student"),
    (["--distill", "{missing}"], "missing config.json"),
])
def test_bad_distill_options_one_line_nothing_written(student, tmp_path, extra, message):
    from dil.train.cli import main

    teacher, out, _ = student
    args = [a.format(teacher=teacher, student=out, missing=tmp_path / "nope") for a in extra]
    res = CliRunner().invoke(main, TINY_TRAIN + args + ["--out", str(tmp_path / "runs" / "s")])
    assert res.exit_code != 0 and res.output.count("\n") == 1, res.output
    assert message in res.output
    assert not (tmp_path / "runs").exists()


def test_sampler_defaults_solver_order_is_checked():
    from dil.runtime.manifest import ManifestError, check_sampler_defaults

    record = {"lattice": False, "cache": False, "steps": 4}
    assert check_sampler_defaults(dict(record, solver_order=1), "m") == dict(record, solver_order=1)
    for bad in (0, 4, 1.0, True):
        with pytest.raises(ManifestError, match=r"sampler_defaults.solver_order' must be an integer in \[1, 3\]"):
            check_sampler_defaults(dict(record, solver_order=bad), "m")


def test_a_student_resumes_only_with_its_teacher(student, tmp_path):
    import shutil

    from dil.train.cli import main

    teacher, out, _ = student
    run = tmp_path / "student"
    shutil.copytree(out, run)  # the module's student stays as it was for the other tests
    res = CliRunner().invoke(main, ["--out", str(run), "--resume", "--epochs", "2", "--quiet"])
    assert res.exit_code != 0 and "is a student of 'teacher': resume it with --distill" in res.output, res.output
    res = CliRunner().invoke(main, ["--distill", str(teacher), "--out", str(run), "--resume", "--epochs", "2",
                                    "--quiet"])
    assert res.exit_code == 0, res.output
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2]
    assert json.loads((run / "config.json").read_text())["training"]["distill"]["student_steps"] == 2
