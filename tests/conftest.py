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
def tiny_artifact(tiny_checkpoint, tmp_path_factory):
    """engines/tiny.{json,encode.onnx,denoise.onnx} exported from the tiny checkpoint.

    Returns the path of the manifest. Exported once per test session (the exporter takes ~20 s).
    """
    from dil.export.artifact import export_artifact

    out = tmp_path_factory.mktemp("engines")
    manifest = export_artifact(tiny_checkpoint, out, "tiny")
    return manifest.path
