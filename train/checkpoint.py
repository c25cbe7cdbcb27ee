"""Checkpoints: safetensors weights + a JSON config, written atomically (never pickle).

A run folder runs/NAME/ holds
    config.json        {"format_version", "model", "schedule", "data", "training", "features"}
                       ("features": dil.runtime.inputs.features.FeatureSpec.to_dict(), what the tokens carry
                       beyond the target; absent in runs from before it existed = none)
    model.safetensors  the EMA weights of the ScoreNet (what export and inference use)
    state.safetensors  + state.json: raw weights, optimizer and progress, for --resume
    log.jsonl          one line per epoch
config.json is written last, so a folder with config.json holds a complete checkpoint.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from dil.runtime.inputs.features import FeatureError, FeatureSpec
from dil.runtime.support.files import atomic_path, write_text
from dil.runtime.model.config import ModelConfig
from dil.runtime.sampling.schedule import NoiseSchedule
from dil.train.model import ScoreNet

FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint is missing, incomplete, or does not match the expected model."""


@dataclass
class Checkpoint:
    model: ScoreNet
    config: ModelConfig
    schedule: NoiseSchedule
    data: dict = field(default_factory=dict)  # dataset name, sha256, columns, freq, splits, scaling
    training: dict = field(default_factory=dict)  # epochs, lr, seed, best val loss, ...
    path: Path | None = None
    features: FeatureSpec = field(default_factory=FeatureSpec)  # time features and covariates


def save_tensors(path, tensors: dict) -> None:
    """safetensors file written atomically. Tensors are made contiguous CPU copies."""
    clean = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(clean, str(tmp))


def save_checkpoint(run_dir, model: ScoreNet, schedule: NoiseSchedule, data: dict, training: dict,
                    features: FeatureSpec | None = None) -> None:
    """Write model.safetensors then config.json (last) into run_dir (created if missing).
    features: the model's FeatureSpec (None: none); its widths must be the model config's."""
    features = features or FeatureSpec()
    cfg = model.config
    if (cfg.context_features, cfg.horizon_features) != (features.context_width, features.horizon_width):
        raise CheckpointError(f"model widths context_features {cfg.context_features}, horizon_features "
                              f"{cfg.horizon_features} do not match the features ({features.context_width}, "
                              f"{features.horizon_width})")
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_tensors(run_dir / "model.safetensors", model.state_dict())
    cfg = {
        "format_version": FORMAT_VERSION,
        "model": model.config.to_dict(),
        "schedule": schedule.to_dict(),
        "data": data,
        "training": training,
        "features": features.to_dict(),
    }
    write_text(run_dir / "config.json", json.dumps(cfg, indent=2) + "\n")


def read_config(run_dir) -> dict:
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise CheckpointError(f"no checkpoint in {run_dir} (missing config.json)")
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path} is not valid JSON: {exc}") from None
    if cfg.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: unsupported format_version {cfg.get('format_version')!r}")
    return cfg


def load_checkpoint(run_dir, expect: ModelConfig | None = None) -> Checkpoint:
    """Load a run folder into an eval-mode ScoreNet (EMA weights, float32, CPU).

    expect: if given, the checkpoint's model config must equal it (else CheckpointError).
    """
    run_dir = Path(run_dir)
    cfg = read_config(run_dir)
    try:
        config = ModelConfig.from_dict(cfg["model"])
        schedule = NoiseSchedule.from_dict(cfg["schedule"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{run_dir}/config.json: invalid model config: {exc}") from None
    try:
        features = FeatureSpec.from_dict(cfg.get("features"))
    except FeatureError as exc:
        raise CheckpointError(f"{run_dir}/config.json: {exc}") from None
    if (config.context_features, config.horizon_features) != (features.context_width, features.horizon_width):
        raise CheckpointError(f"{run_dir}/config.json: the model's input widths ({config.context_features}, "
                              f"{config.horizon_features}) are not what its features make ({features.context_width}, "
                              f"{features.horizon_width})")
    if expect is not None and config != expect:
        raise CheckpointError(f"checkpoint {run_dir} has model config {config}, expected {expect}")
    weights = run_dir / "model.safetensors"
    if not weights.is_file():
        raise CheckpointError(f"no weights in {run_dir} (missing model.safetensors)")
    model = load_weights(weights, config)
    return Checkpoint(model, config, schedule, cfg.get("data", {}), cfg.get("training", {}), run_dir, features)


def read_tensors(path) -> dict:
    """The tensors of a safetensors file; CheckpointError (one line) for a truncated or damaged one
    (safetensors raises its own error type, not an OSError)."""
    from safetensors import SafetensorError

    try:
        return load_file(str(path))
    except SafetensorError as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise CheckpointError(f"{path} is damaged or truncated ({first}); train or copy it again") from None


def load_weights(path, config: ModelConfig) -> ScoreNet:
    """A ScoreNet of `config` holding the state_dict in the safetensors file `path` (eval mode).

    Raises CheckpointError (one line) when the file is unreadable or does not fit the config.
    """
    model = ScoreNet(config)
    try:
        state = read_tensors(path)
        model.load_state_dict(state, strict=True)
    except (RuntimeError, OSError, ValueError) as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()] or [type(exc).__name__]
        # torch's first line is only "Error(s) in loading state_dict for ScoreNet:"; the cause follows.
        first = lines[1] if len(lines) > 1 and lines[0].startswith("Error(s) in loading") else lines[0]
        raise CheckpointError(f"weights in {path} do not match the model config: {first}") from None
    return model.eval()
