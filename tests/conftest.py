"""Shared fixtures: a tiny score network, its checkpoint and its exported ONNX artifact.

The tiny model is randomly initialised (its output head too, so eps is not identically zero):
equivalence tests need real numbers, not a trained model.
"""

from __future__ import annotations

import pytest

TINY = dict(
    context_length=16,
    horizon=8,
    d_model=16,
    num_heads=2,
    num_layers=2,
    ffn_dim=32,
    time_embed_dim=8,
)


@pytest.fixture(scope="session")
def tiny_config():
    from dil.runtime.model_config import ModelConfig

    return ModelConfig(**TINY)


@pytest.fixture(scope="session")
def tiny_model(tiny_config):
    torch = pytest.importorskip("torch")
    from dil.train.model import ScoreNet

    torch.manual_seed(0)
    model = ScoreNet(tiny_config)
    with torch.no_grad():
        model.head.weight.normal_(0.0, 0.2)
        model.head.bias.normal_(0.0, 0.1)
    return model.eval()


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_model, tmp_path_factory):
    """A run folder holding the tiny model (as if trained on the 'etth1' columns)."""
    from dil.runtime.sampling.schedule import NoiseSchedule
    from dil.train.checkpoint import save_checkpoint

    run = tmp_path_factory.mktemp("runs") / "tiny"
    data = {
        "dataset": "etth1",
        "source": "ETTh1.csv.gz",
        "sha256": "",
        "columns": None,
        "date_column": "date",
        "freq": "h",
        "season": 24,
        "context_length": tiny_model.config.context_length,
        "horizon": tiny_model.config.horizon,
        "scaling": "context-mean-std",
    }
    save_checkpoint(run, tiny_model, NoiseSchedule(), data, {"epochs": 0})
    return run


@pytest.fixture(scope="session")
def tiny_export(tiny_checkpoint, tmp_path_factory):
    """(manifest, progress stages reported) of engines/tiny.{json,encode.onnx,denoise.onnx,
    weights.safetensors} exported from the tiny checkpoint. Exported once per test session (~20 s).

    The engines folder has no runs/ beside it: the run is not findable from the artifact, so the
    PyTorch checks must use the weights it ships.
    """
    from dil.export.artifact import ExportOptions, export_artifact

    out = tmp_path_factory.mktemp("engines")
    stages = []
    manifest = export_artifact(tiny_checkpoint, out, ExportOptions(name="tiny"),
                               progress=lambda stage, message: stages.append(stage))
    return manifest, stages


@pytest.fixture(scope="session")
def tiny_artifact(tiny_export):
    """The manifest path of the tiny artifact (see tiny_export)."""
    return tiny_export[0].path


@pytest.fixture(scope="session")
def tiny_artifact_without_weights(tiny_artifact, tmp_path_factory):
    """A copy of the tiny artifact as dil-export wrote it before weights shipped (graphs and
    manifest only, no "weights" record). Returns its manifest path."""
    import json
    import shutil

    out = tmp_path_factory.mktemp("old-engines")
    for name in ("tiny.encode.onnx", "tiny.denoise.onnx"):
        shutil.copy(tiny_artifact.parent / name, out / name)
    manifest = json.loads(tiny_artifact.read_text())
    del manifest["weights"]
    (out / "tiny.json").write_text(json.dumps(manifest, indent=2))
    return out / "tiny.json"
