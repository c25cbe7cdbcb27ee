"""What `dil-validate` needs besides the artifact: the torch module and real context windows.

The torch module comes from the artifact's own weights (NAME.weights.safetensors), or from
`--checkpoint`, which must be the run the artifact was exported from (its model.safetensors sha256
equals the manifest's weights sha256); an artifact exported before weights shipped falls back to
the run its manifest names (`runs/RUN` in the working folder or beside the artifact's folder), see
`dil.export.weights.torch_model_for`. The windows are real context windows of the manifest's dataset
(or `--dataset`, a bundled name or a table file), taken from its validation part as the exporter's
real-input validation does (`dil.export.real_data`). `prepare_inputs` turns them into the
sampler's inputs; a model's time features and covariates are random stand-ins there (the windows
carry neither), the same for the runtime and the reference.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dil.runtime.manifest import ManifestError
from dil.runtime.sampling.rng import SeriesStreams
from dil.runtime.inputs.scaling import context_features, context_scale, standardise


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


def random_features(model_config, G: int, seed: int):
    """(ctx_extra float32 [G, L, Fc - 2] or None, hor_feat float32 [G, H, Fk] or None): random
    stand-ins for a model's known features and past-only covariates, uniform in [-0.5, 0.5] (the
    range of the time features) from their own generator of `seed` (not the sampler's streams)."""
    cfg = model_config
    Fk, extra = cfg.horizon_features - 1, cfg.context_features - 2
    if extra == 0 and Fk == 0:
        return None, None
    rng = np.random.default_rng([seed, 0x5EED])
    ctx_extra = (rng.random((G, cfg.context_length, extra)) - 0.5).astype(np.float32) if extra else None
    hor_feat = (rng.random((G, cfg.horizon, Fk)) - 0.5).astype(np.float32) if Fk else None
    return ctx_extra, hor_feat


def prepare_inputs(contexts: np.ndarray, model_config, samples: int, seed: int, keys=None):
    """(ctx float32 [G, L, Fc], hor_feat float32 [G, H, Fk] or None, x_T float64 [G, N, H], streams)
    from raw context windows float [G, L'] (NaN = missing), standardised per window as the runtime
    does, and, for a model with features, `random_features`; streams: the SeriesStreams of (seed,
    keys; default 0..G-1), x_T drawn from them. model_config: the model's ModelConfig."""
    L, H = model_config.context_length, model_config.horizon
    ctx = np.ascontiguousarray(np.asarray(contexts, dtype=np.float64)[:, -L:])
    streams = SeriesStreams(seed, range(ctx.shape[0]) if keys is None else keys)
    loc, scale = context_scale(ctx)
    x_T = streams.initial_noise(samples, H)
    features = context_features(standardise(ctx, loc, scale))
    ctx_extra, hor_feat = random_features(model_config, ctx.shape[0], seed)
    if ctx_extra is not None:
        features = np.concatenate([features, ctx_extra], axis=-1)
    return features, hor_feat, x_T, streams
