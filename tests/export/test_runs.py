"""dil-export and the state of the training run: a run killed before its planned epochs is refused
(unless --allow-incomplete), an early-stopped or finished one is exported; and the export's progress
stages are the declared list the CLI counts."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
from click.testing import CliRunner  # noqa: E402

from dil.export.artifact import ExportOptions, export_artifact, export_stages  # noqa: E402
from dil.export.cli import main as export_cli  # noqa: E402
from dil.runtime.manifest import load_manifest  # noqa: E402
from dil.train.run_state import TrainingProgress, training_progress  # noqa: E402

TINY_MODEL = dict(context_length=16, horizon=8, d_model=16, num_heads=2, num_layers=2, ffn_dim=32)
STEPS = 3


def _train(out, killed_in_epoch=None, monkeypatch=None, **train):
    """Train a tiny metro-traffic run into `out`; killed_in_epoch: interrupt it (as a kill would)
    at the first step of that epoch. Returns the trainer's summary (None when killed)."""
    import dil.train.trainer as trainer
    from dil.data.datasets import resolve
    from dil.runtime.model.config import ModelConfig

    spec, table = resolve("metro-traffic")
    cfg = trainer.TrainConfig(steps_per_epoch=STEPS, batch_size=8, noise_draws=2, val_windows=16, **train)
    if killed_in_epoch is not None:
        real, calls = trainer.draw_noise, []

        def draw_noise(*args, **kwargs):  # one call for the validation set, then one per step
            calls.append(1)
            if len(calls) == 2 + STEPS * (killed_in_epoch - 1):
                raise KeyboardInterrupt
            return real(*args, **kwargs)

        monkeypatch.setattr(trainer, "draw_noise", draw_noise)
        with pytest.raises(KeyboardInterrupt):
            trainer.train(spec, table, ModelConfig(**TINY_MODEL), cfg, out, progress=False)
        monkeypatch.setattr(trainer, "draw_noise", real)
        return None
    return trainer.train(spec, table, ModelConfig(**TINY_MODEL), cfg, out, progress=False)


@pytest.fixture(scope="module")
def killed_run(tmp_path_factory):
    """A run of 3 planned epochs killed in epoch 2."""
    out = tmp_path_factory.mktemp("killed") / "run"
    with pytest.MonkeyPatch.context() as mp:
        _train(out, killed_in_epoch=2, monkeypatch=mp, epochs=3)
    return out


def test_killed_run_progress(killed_run):
    assert (killed_run / "config.json").is_file()  # epoch 1 was a complete checkpoint
    assert json.loads((killed_run / "state.json").read_text())["epoch"] == 1
    p = training_progress(killed_run)
    assert (p.epochs_done, p.epochs_planned, p.stopped_early, p.finished) == (1, 3, False, False)


def test_training_progress_of_finished_and_early_stopped_runs(tmp_path):
    done = _train(tmp_path / "done", epochs=2)
    assert training_progress(tmp_path / "done") == TrainingProgress(2, 2, False)
    # A learning rate far too high: the validation loss stops improving and patience 1 ends it.
    early = _train(tmp_path / "early", epochs=12, patience=1, lr=3.0, seed=1)
    assert early["stopped_early"] and early["epochs"] < 12 and done["epochs"] == 2
    p = training_progress(tmp_path / "early")
    assert (p.epochs_done, p.epochs_planned, p.stopped_early, p.finished) == (early["epochs"], 12, True, True)


@pytest.mark.parametrize(
    "files, expect",
    [
        ({}, (None, None, False, None)),  # nothing recorded: unknown, not refused
        ({"config.json": {"training": {"epochs": 5, "epoch": 2, "patience": 4}}}, (2, 5, False, False)),
        # The kill fell after the checkpoint of epoch 3 but before state.json: the most recorded counts.
        ({"config.json": {"training": {"epochs": 3, "epoch": 3, "patience": 4}},
          "state.json": {"epoch": 2, "bad_epochs": 0, "train": {"epochs": 3, "patience": 4}}}, (3, 3, False, True)),
        # No state.json: early stopping read from the log (2 epochs without a better loss, patience 2).
        ({"config.json": {"training": {"epochs": 9, "epoch": 1, "patience": 2}},
          "log.jsonl": [{"epoch": 1, "best": True}, {"epoch": 2, "best": False}, {"epoch": 3, "best": False}]},
         (3, 9, True, True)),
    ],
)
def test_training_progress_from_partial_records(tmp_path, files, expect):
    for name, content in files.items():
        text = "\n".join(json.dumps(r) for r in content) if name.endswith(".jsonl") else json.dumps(content)
        (tmp_path / name).write_text(text + "\n")
    p = training_progress(tmp_path)
    assert (p.epochs_done, p.epochs_planned, p.stopped_early, p.finished) == expect


def test_export_refuses_a_run_that_did_not_finish(killed_run, tmp_path):
    out = tmp_path / "engines"
    result = CliRunner().invoke(export_cli, ["--no-frontier", "--checkpoint", str(killed_run), "--out", str(out), "--quiet"])
    assert result.exit_code != 0
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: the training of ")
    assert "did not finish: 1 of 3 epochs done" in lines[0] and "--allow-incomplete" in lines[0]
    assert not out.exists()


@pytest.mark.slow
def test_export_of_an_incomplete_run_when_allowed(killed_run, tmp_path):
    out = tmp_path / "engines"
    result = CliRunner().invoke(export_cli, ["--no-frontier", "--checkpoint", str(killed_run), "--out", str(out), "--name", "part",
                                             "--allow-incomplete", "--quiet"])
    assert result.exit_code == 0, result.output
    m = load_manifest(out / "part.json")
    assert m.extra["checkpoint"]["progress"] == {"epochs_done": 1, "epochs_planned": 3, "stopped_early": False,
                                                 "finished": False}


def test_export_stages_are_the_declared_list(tiny_export):
    _, stages = tiny_export  # the session's tiny artifact, exported with the default options
    assert stages == export_stages(ExportOptions(name="tiny"))
    assert stages == ["load", "export encode", "export denoise", "export denoise_full", "export denoise_full_kv",
                      "validate", "write fp32"]
    with_all = export_stages(ExportOptions(fp16=True, tensorrt=True))
    assert with_all[:9] == ["load", "export encode", "export denoise", "export denoise_full", "export denoise_full_kv",
                            "validate", "fp16 convert", "fp16 validate", "tensorrt fp32 build encode"]
    assert len(with_all) == 7 + 3 + 2 * 4 and with_all[-2:] == ["write fp32", "write fp16"]


@pytest.mark.slow
def test_export_stages_with_fp16_and_no_validation(tiny_checkpoint, tmp_path):
    options = ExportOptions(name="t", fp16=True, validate=False)
    stages = []
    m = export_artifact(tiny_checkpoint, tmp_path, options, progress=lambda stage, message: stages.append(stage))
    assert stages == export_stages(options) == ["load", "export encode", "export denoise", "export denoise_full",
                                                "export denoise_full_kv", "fp16 convert", "write fp32", "write fp16"]
    assert m.validation == {"skipped": True, "passed": None}
    assert m.variants[0].extra["weights"] == m.extra["weights"]  # the FP16 artifact names the same weights
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "t.denoise.onnx", "t.denoise_full.onnx", "t.denoise_full_kv.onnx", "t.encode.onnx", "t.fp16.denoise.onnx",
        "t.fp16.denoise_full.onnx", "t.fp16.denoise_full_kv.onnx", "t.fp16.encode.onnx", "t.fp16.json", "t.json", "t.weights.safetensors"]
