"""Presets of a new run: what dil-train chooses when an option is not given (docs/model.md section 4).

`run_configs` resolves a run's ModelConfig, TrainConfig and FeatureSpec from the command's options,
the stored values of a resumed run and these defaults; dil-train (dil.train.cli) only parses.
"""

from __future__ import annotations

# Options that default to the run's stored value on --resume and to the library default otherwise.
MODEL_OPTIONS = {"context": "context_length", "horizon": "horizon", "d_model": "d_model", "heads": "num_heads",
                 "layers": "num_layers", "ffn_dim": "ffn_dim", "prediction": "prediction",
                 "context_patch": "context_patch", "horizon_patch": "horizon_patch", "domain": "domain"}
TRAIN_OPTIONS = ("epochs", "steps_per_epoch", "batch_size", "noise_draws", "lr", "seed", "device", "patience")
# What a new run predicts (docs/model.md section 2.2); runs keep what they were trained with.
DEFAULT_PREDICTION = "v"
# Context steps per context token (docs/model.md section 4): a day for hourly rows, else the largest
# of these dividing the context length.
HOURLY_PATCH = 24
PATCHES = (12, 8, 6, 4, 2, 1)
# Horizon steps per horizon token for hourly rows (docs/model.md section 4): on metro-traffic 4-hour
# tokens forecast as well as 1-hour ones (docs/results.md) at a quarter of the tokens per call.
HOURLY_HORIZON_PATCH = 4
# What a new run diffuses (docs/frequency.md): the horizon's steps ("time") or its orthonormal real
# DFT ("frequency"). Time: more accurate on metro-traffic (CRPS 0.0557 vs 0.0612) and ETTh1 at
# horizon 96 (0.297 vs 0.356), docs/results.md "Time vs frequency domain".
DEFAULT_DOMAIN = "time"


def _hourly(freq: str | None) -> bool:
    if not freq:
        return False
    import pandas as pd

    try:
        return pd.tseries.frequencies.to_offset(freq) == pd.tseries.frequencies.to_offset("h")
    except ValueError:
        return False


def default_context_patch(context_length: int, freq: str | None) -> int:
    """The context patch of a new run: 24 (a day) for hourly rows when it divides the context
    length, else the largest of 12, 8, 6, 4, 2, 1 that does."""
    if context_length % HOURLY_PATCH == 0 and _hourly(freq):
        return HOURLY_PATCH
    return next(p for p in PATCHES if context_length % p == 0)


def default_horizon_patch(horizon: int, freq: str | None) -> int:
    """The horizon patch of a new run: 4 for hourly rows when it divides the horizon, else 1."""
    return HOURLY_HORIZON_PATCH if horizon % HOURLY_HORIZON_PATCH == 0 and _hourly(freq) else 1


def run_configs(opts: dict, spec, table, stored: dict, known, past):
    """(ModelConfig, TrainConfig, FeatureSpec) of the run: options, else the run's values on
    --resume, else the defaults; the features fitted on the table's train part."""
    from dil.data.windows import split_bounds
    from dil.runtime.model.config import ModelConfig
    from dil.train.dataset import fit_feature_spec
    from dil.train.trainer import TrainConfig

    model = dict(stored.get("model") or {})
    if not model:
        model = dict(ModelConfig().to_dict(), context_length=spec.context_length, horizon=spec.horizon,
                     prediction=DEFAULT_PREDICTION)
    model.update({field: opts[opt] for opt, field in MODEL_OPTIONS.items() if opts[opt] is not None})
    freq = table.freq or spec.freq
    L, P = model["context_length"], model.get("context_patch")
    if opts["context_patch"] is None and not stored.get("model"):
        model["context_patch"] = P = default_context_patch(L, freq) if L >= 1 else 1
    if P is not None and P >= 1 and L % P:
        raise ValueError(f"--context-patch {P} does not divide --context-length {L}")
    H, Ph = model["horizon"], model.get("horizon_patch", 1)
    model.setdefault("domain", DEFAULT_DOMAIN)
    if opts["horizon_patch"] is None and not stored.get("model"):
        frequency = model["domain"] == "frequency"  # one token per spectral coordinate
        model["horizon_patch"] = Ph = 1 if frequency else default_horizon_patch(H, freq) if H >= 1 else 1
    if Ph is not None and Ph >= 1 and H % Ph:
        raise ValueError(f"--horizon-patch {Ph} does not divide --horizon {H}")
    time_features = opts["time_features"]
    if time_features is None and stored:
        time_features = bool((stored.get("features") or {}).get("time_features"))
    features = fit_feature_spec(table, freq, known, past, time_features, split_bounds(spec, table.n_steps)["train"])
    model.update(context_features=features.context_width, horizon_features=features.horizon_width)
    train = dict(stored.get("train") or {})
    train.update({k: opts[k] for k in TRAIN_OPTIONS if opts[k] is not None})
    return ModelConfig.from_dict(model), TrainConfig.from_dict(train), features
