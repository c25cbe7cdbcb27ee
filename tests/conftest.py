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
    from dil.runtime.model.config import ModelConfig

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
    for g in ("denoise_full", "denoise_full_kv"):  # nor had it these optional graphs
        del manifest["graphs"][g], manifest["io"][g]
    (out / "tiny.json").write_text(json.dumps(manifest, indent=2))
    return out / "tiny.json"


# The tiny feature model's inputs, named after metro-traffic's columns: 2 time features of hourly
# rows, known covariates temp (numeric, kelvin) and holiday (categorical, "None" on ordinary days),
# past-only covariate rain_1h. Fk = 2 + 1 + 2 = 5, Fp = 1: context_features 8, horizon_features 6.
FEATURE_SPEC = dict(
    freq="h", time_features=("hour_of_day", "day_of_week"),
    covariates=(dict(name="temp", kind="numeric", known=True, mean=280.0, std=12.0),
                dict(name="holiday", kind="categorical", known=True, categories=("Christmas Day", "None")),
                dict(name="rain_1h", kind="numeric", known=False, mean=0.5, std=2.0)),
)


@pytest.fixture(scope="session")
def tiny_feature_artifact(tmp_path_factory):
    """The manifest path of a tiny exported model with time features and covariates (FEATURE_SPEC),
    v-prediction, context patches of 2 steps, "trained on" metro-traffic's traffic_volume;
    randomly initialised like tiny_model (~20 s, once)."""
    torch = pytest.importorskip("torch")
    from dil.export.artifact import ExportOptions, export_artifact
    from dil.runtime.inputs.features import FeatureSpec
    from dil.runtime.model.config import ModelConfig
    from dil.runtime.sampling.schedule import NoiseSchedule
    from dil.train.checkpoint import save_checkpoint
    from dil.train.model import ScoreNet

    spec = FeatureSpec.from_dict(FEATURE_SPEC)
    config = ModelConfig(**TINY, context_features=spec.context_width, horizon_features=spec.horizon_width,
                         prediction="v", context_patch=2)
    torch.manual_seed(1)
    model = ScoreNet(config)
    with torch.no_grad():
        model.head.weight.normal_(0.0, 0.2)
        model.head.bias.normal_(0.0, 0.1)
    run = tmp_path_factory.mktemp("feature-runs") / "tinyfeat"
    data = {"dataset": "metro-traffic", "columns": ["traffic_volume"], "date_column": "date_time", "freq": "h",
            "season": 168, "context_length": config.context_length, "horizon": config.horizon,
            "scaling": "context-mean-std"}
    save_checkpoint(run, model.eval(), NoiseSchedule(), data, {"epochs": 0}, features=spec)
    out = tmp_path_factory.mktemp("feature-engines")
    return export_artifact(run, out, ExportOptions(name="tinyfeat")).path
