"""The torch weights an artifact ships (NAME.weights.safetensors): written by the export, recovered
from the graphs of an older artifact, and used by dil-validate and the torch baselines when no run
folder exists; a checkpoint that is not the exported one is refused with one line."""

from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from click.testing import CliRunner  # noqa: E402

from dil.evaluate.cli.validate import main as validate_cli  # noqa: E402
from dil.export.weights import load_torch_model, torch_model_for  # noqa: E402
from dil.runtime.manifest import ManifestError, checkpoint_run, load_manifest  # noqa: E402

VALIDATE_ARGS = ["--dataset", "exchange-rate", "--series", "2", "--samples", "8", "--steps", "6", "--quiet"]


def _sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _assert_same_state(model, reference) -> None:
    got, want = model.state_dict(), reference.state_dict()
    assert got.keys() == want.keys()
    for k in want:
        assert torch.equal(got[k], want[k]), k


@pytest.fixture(scope="module")
def other_checkpoint(tiny_model, tiny_checkpoint, tmp_path_factory):
    """A run folder of the same model config and data as tiny_checkpoint but other weights."""
    from dil.train.checkpoint import load_checkpoint, save_checkpoint

    ckpt = load_checkpoint(tiny_checkpoint)
    with torch.no_grad():
        ckpt.model.head.bias.add_(0.25)
    run = tmp_path_factory.mktemp("other") / "tiny"
    save_checkpoint(run, ckpt.model, ckpt.schedule, ckpt.data, ckpt.training)
    return run


def test_export_ships_the_checkpoint_weights(tiny_artifact, tiny_checkpoint, tiny_model):
    m = load_manifest(tiny_artifact)
    rec = m.extra["weights"]
    path = tiny_artifact.parent / rec["file"]
    assert rec["file"] == "tiny.weights.safetensors" and rec["format"] == "safetensors"
    # A byte-for-byte copy of the run's EMA weights: the manifest's sha256 is the run's.
    assert path.read_bytes() == (tiny_checkpoint / "model.safetensors").read_bytes()
    assert rec["sha256"] == _sha256(path) == _sha256(tiny_checkpoint / "model.safetensors")
    assert rec["bytes"] == path.stat().st_size
    ckpt = torch_model_for(m)
    assert ckpt.path == path and ckpt.config == m.model
    _assert_same_state(ckpt.model, tiny_model)


def test_no_run_folder_is_findable_from_the_tiny_artifact(tiny_artifact):
    # What the validate/bench tests below rely on: only the shipped weights can serve.
    with pytest.raises(ManifestError, match="not found"):
        checkpoint_run(load_manifest(tiny_artifact))


def test_weights_recovered_from_the_graphs_are_the_model(tiny_artifact, tiny_model):
    from dil.export.graph_weights import graph_uses, state_from_graphs

    m = load_manifest(tiny_artifact)
    paths = {g: m.graph_path(g) for g in ("encode", "denoise")}
    state = state_from_graphs(paths, m.model)
    want = {k: v.numpy() for k, v in tiny_model.state_dict().items()}
    assert state.keys() == want.keys()
    for k in want:
        np.testing.assert_array_equal(state[k], want[k], err_msg=k)
    # encode runs ctx_in, ctx_pos and every block up to the last one's qkv (2 layers: 5 Linears,
    # 3 LayerNorms); the fresh LayerNorms are identical, so the graph keeps one initializer for them.
    uses = graph_uses(paths["encode"])
    assert [len(uses[k]) for k in ("linear", "layer_norm", "embedding")] == [6, 3, 1]


def test_add_weights_to_an_older_artifact(tiny_artifact_without_weights, tiny_checkpoint, tmp_path):
    from dil.export.graph_weights import REPRODUCE_TOLERANCE, GraphWeightsError, main

    for p in tiny_artifact_without_weights.parent.iterdir():
        shutil.copy(p, tmp_path / p.name)
    graphs = {p.name: p.read_bytes() for p in tmp_path.glob("*.onnx")}
    result = CliRunner().invoke(main, [str(tmp_path / "tiny.json")])
    assert result.exit_code == 0, result.output
    m = load_manifest(tmp_path / "tiny.json")
    rec = m.extra["weights"]
    # Recovered and re-serialised: the same bytes as the run's model.safetensors.
    assert rec["sha256"] == _sha256(tiny_checkpoint / "model.safetensors")
    errs = rec["reproduces_graphs"]["max_abs_err"]
    assert errs["encode"] <= REPRODUCE_TOLERANCE and errs["denoise"] <= REPRODUCE_TOLERANCE
    assert {p.name: p.read_bytes() for p in tmp_path.glob("*.onnx")} == graphs  # graphs untouched
    before = json.loads(tiny_artifact_without_weights.read_text())
    after = json.loads((tmp_path / "tiny.json").read_text())
    assert {k: v for k, v in after.items() if k != "weights"} == before
    with pytest.raises(GraphWeightsError, match="already ships its weights"):
        from dil.export.graph_weights import add_weights

        add_weights(tmp_path / "tiny.json")


def test_validate_works_from_the_artifact_alone(tiny_artifact, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no runs/ here either
    json_path = tmp_path / "v.json"
    result = CliRunner().invoke(validate_cli, ["--engine", str(tiny_artifact), "--json", str(json_path)] + VALIDATE_ARGS)
    assert result.exit_code == 0, result.output
    report = json.loads(json_path.read_text())
    assert report["checkpoint"] == str(tiny_artifact.parent / "tiny.weights.safetensors")
    assert report["encode_max_abs_err"] <= 1e-4 and report["denoise_max_abs_err"] <= 1e-4
    assert report["controller_agreement"] == 1.0 and report["passed"]


def test_validate_refuses_a_checkpoint_the_artifact_was_not_exported_from(tiny_artifact, other_checkpoint, tmp_path):
    json_path = tmp_path / "v.json"
    result = CliRunner().invoke(validate_cli, ["--engine", str(tiny_artifact), "--checkpoint", str(other_checkpoint),
                                               "--json", str(json_path)] + VALIDATE_ARGS)
    assert result.exit_code != 0
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    have = _sha256(other_checkpoint / "model.safetensors")[:12]
    want = load_manifest(tiny_artifact).extra["weights"]["sha256"][:12]
    assert lines == [f"Error: checkpoint {other_checkpoint} is not the one this artifact was exported from "
                     f"(weights sha256 {have}... vs {want}... in tiny.json)"]
    assert not json_path.exists()  # no parity report


def test_torch_baselines_from_the_artifact_alone(tiny_artifact, tiny_checkpoint, other_checkpoint):
    from dil.evaluate.torch_baselines import ReferenceUnavailable, load_reference, torch_full_forecast_fn

    ref = load_reference(tiny_artifact)
    assert ref.run == tiny_artifact.parent / "tiny.weights.safetensors"
    from_run = load_reference(tiny_artifact, tiny_checkpoint)
    _assert_same_state(ref.model, from_run.model)
    # The bench workers load the module again from Reference.run.
    _assert_same_state(load_torch_model(ref.run).model, from_run.model)
    rng = np.random.default_rng(4)
    contexts = rng.standard_normal((2, ref.model.config.context_length)).cumsum(1)
    a = torch_full_forecast_fn(ref, num_samples=4, steps=3, seed=1)(contexts, ["a", "b"])
    b = torch_full_forecast_fn(from_run, num_samples=4, steps=3, seed=1)(contexts, ["a", "b"])
    assert a.shape == (2, 4, ref.model.config.horizon) and np.isfinite(a).all()
    np.testing.assert_array_equal(a, b)
    with pytest.raises(ReferenceUnavailable, match="is not the one this artifact was exported from"):
        load_reference(tiny_artifact, other_checkpoint)


def test_damaged_weights_file_is_refused(tiny_artifact, tmp_path):
    from dil.train.checkpoint import CheckpointError

    for p in tiny_artifact.parent.glob("tiny.*"):
        shutil.copy(p, tmp_path / p.name)
    weights = tmp_path / "tiny.weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="does not match its manifest"):
        torch_model_for(load_manifest(tmp_path / "tiny.json"))
    weights.unlink()
    with pytest.raises(CheckpointError, match="is missing"):
        torch_model_for(load_manifest(tmp_path / "tiny.json"))


@pytest.mark.parametrize("change, message", [
    ({"file": "../tiny.weights.safetensors"}, "not inside the artifact's folder"),
    ({"file": "/etc/passwd"}, "not inside the artifact's folder"),
    ({"sha256": None}, "lacks the field 'weights.sha256'"),
])
def test_weights_record_is_confined_and_always_hashed(tiny_artifact, tmp_path, change, message):
    """The weights file goes through the graphs' rules: inside the artifact's folder, sha256 required."""
    from dil.train.checkpoint import CheckpointError

    for p in tiny_artifact.parent.glob("tiny.*"):
        shutil.copy(p, tmp_path / p.name)
    shutil.copy(tmp_path / "tiny.weights.safetensors", tmp_path.parent / "tiny.weights.safetensors")
    manifest = json.loads((tmp_path / "tiny.json").read_text())
    manifest["weights"].update(change)
    (tmp_path / "tiny.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match=message):
        torch_model_for(load_manifest(tmp_path / "tiny.json"))


def test_shipped_weights_reproduce_the_shipped_graphs():
    """The shipped metro-traffic weights (recovered from its graphs) rebuild a torch module that
    reproduces both shipped ONNX graphs (ONNX Runtime, CPU) within 1e-5."""
    from importlib.resources import files

    import onnxruntime as ort

    from dil.export.onnx_export import example_inputs
    from dil.runtime.manifest import DENOISE_INPUTS

    m = load_manifest(str(files("dil.engines").joinpath("metro-traffic.json")))
    rec = m.extra["weights"]
    assert _sha256(m.path.parent / rec["file"]) == rec["sha256"]
    model = torch_model_for(m).model
    ctx, args = example_inputs(model, G=2, N=3, S=m.model.horizon, seed=5)
    sessions = {g: ort.InferenceSession(str(m.graph_path(g)), providers=["CPUExecutionProvider"])
                for g in ("encode", "denoise")}
    with torch.no_grad():
        want = {"encode": model.encode(ctx), "denoise": model.denoise(*args)}
    got = {"encode": sessions["encode"].run(None, {"ctx": ctx.numpy()}),
           "denoise": sessions["denoise"].run(None, {n: a.numpy() for n, a in zip(DENOISE_INPUTS, args)})}
    for g in ("encode", "denoise"):
        for a, b in zip(got[g], want[g]):
            assert np.abs(a - b.numpy()).max() <= 1e-5, g


def test_dil_bench_torch_runs_from_the_artifact_alone(tiny_artifact, tiny_checkpoint, tmp_path, monkeypatch):
    from dil.evaluate.cli.bench import main as bench_cli

    monkeypatch.chdir(tmp_path)
    base = ["--engine", str(tiny_artifact), "--only", "torch-full", "--steps", "2", "--series", "1", "--samples", "4",
            "--repeats", "1", "--windows", "2", "--threads", "1"]  # isolated worker: it loads the weights itself
    reports = {}
    for label, extra in (("artifact", []), ("run", ["--checkpoint", str(tiny_checkpoint)])):
        result = CliRunner().invoke(bench_cli, base + extra + ["--json", str(tmp_path / f"{label}.json")])
        assert result.exit_code == 0, result.output
        reports[label] = json.loads((tmp_path / f"{label}.json").read_text())
    runs = {k: [(r["name"], r["crps"]) for r in rep["runs"]] for k, rep in reports.items()}
    assert [name for name, _ in runs["artifact"]] == ["torch-full"]
    assert runs["artifact"] == runs["run"]  # the same weights either way
    assert reports["artifact"]["protocol"]["checkpoint"] == "tiny.weights.safetensors"
