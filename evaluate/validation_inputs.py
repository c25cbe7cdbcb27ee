"""What `dil-validate` needs besides the artifact: the torch module and real context windows.

The torch module comes from `--checkpoint`, or from the run the manifest names (its `checkpoint.run`,
looked for as `runs/RUN` in the working folder and beside the artifact's folder). The windows are real
context windows of the manifest's dataset (or `--dataset`, a bundled name or a table file), taken from
its validation part as the exporter's real-input validation does (`dil.export.real_data`).
"""

from __future__ import annotations

from pathlib import Path

from dil.runtime.manifest import ManifestError, checkpoint_run


class ValidationInputError(ValueError):
    """Something dil-validate needs is missing or does not match. The message is one line."""


def load_model(manifest, checkpoint=None):
    """(ScoreNet, run folder) for the artifact; its config must equal the manifest's."""
    from dil.train.checkpoint import CheckpointError, load_checkpoint

    try:
        path = checkpoint_run(manifest, checkpoint)
    except ManifestError as exc:
        raise ValidationInputError(str(exc)) from None
    try:
        ckpt = load_checkpoint(path)
    except CheckpointError as exc:
        raise ValidationInputError(str(exc).splitlines()[0]) from None
    if ckpt.config != manifest.model:
        raise ValidationInputError(f"checkpoint {path} has another model config than the artifact {manifest.path}")
    return ckpt.model, path


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
