"""What `dil-validate` needs besides the artifact: the torch module and real context windows.

The torch module comes from the artifact's own weights (NAME.weights.safetensors), or from
`--checkpoint`, which must be the run the artifact was exported from (its model.safetensors sha256
equals the manifest's weights sha256); an artifact exported before weights shipped falls back to
the run its manifest names (`runs/RUN` in the working folder or beside the artifact's folder), see
`dil.export.weights.torch_model_for`. The windows are real context windows of the manifest's dataset
(or `--dataset`, a bundled name or a table file), taken from its validation part as the exporter's
real-input validation does (`dil.export.real_data`).
"""

from __future__ import annotations

from pathlib import Path

from dil.runtime.manifest import ManifestError


class ValidationInputError(ValueError):
    """Something dil-validate needs is missing or does not match. The message is one line."""


def load_model(manifest, checkpoint=None):
    """(ScoreNet, where its weights came from: the artifact's weights file or the run folder)."""
    from dil.export.weights import torch_model_for
    from dil.train.checkpoint import CheckpointError

    try:
        ckpt = torch_model_for(manifest, checkpoint)
    except (CheckpointError, ManifestError) as exc:
        raise ValidationInputError(str(exc).splitlines()[0]) from None
    return ckpt.model, ckpt.path


def validation_windows(manifest, count: int, dataset: str | None = None):
    """Up to `count` real context windows float64 [W, L] and their targets [W, H] (original scale).

    dataset: a bundled dataset name or a table file (default: the manifest's training data).
    Returns ((ctx, target), info) where info records the source and windows.
    """
    from dil.data import DATASETS
    from dil.export.real_data import training_windows

    cfg = manifest.model
    data, data_path = manifest.data, None
    if dataset is not None:
        if dataset in DATASETS:
            data = {"dataset": dataset}
        elif Path(dataset).is_file():
            data, data_path = {"source": str(dataset)}, Path(dataset)
        else:
            raise ValidationInputError(
                f"--dataset {dataset}: not a bundled dataset ({', '.join(DATASETS)}) nor an existing file"
            )
    windows, info = training_windows(data, cfg.context_length, cfg.horizon, count, data_path)
    if windows is None:
        raise ValidationInputError(f"no real windows to validate on: {info.get('reason')} (pass --dataset)")
    return windows, info
