"""The inputs of the PyTorch reference samplers: the runtime's preparation of context windows and
the model's feature inputs, in NumPy and torch (shared by the plain, fast and ancestral references).
"""

from __future__ import annotations

import numpy as np
import torch

from dil.runtime.inputs.scaling import context_features, context_scale, standardise
from dil.evaluate.reference.frequency import is_frequency, to_spectrum
from dil.train.model import ScoreNet, horizon_inputs


def standardised_contexts(model: ScoreNet, contexts):
    """The runtime's preparation of G context windows: (z float64 [G, L] standardised, NaN kept as
    missing; loc, scale [G]). contexts: float [G, L'] with L' >= context_length."""
    L = model.config.context_length
    ctx = np.ascontiguousarray(np.asarray(contexts, dtype=np.float64)[:, -L:])
    loc, scale = context_scale(ctx)
    return standardise(ctx, loc, scale), loc, scale


def network_context(model: ScoreNet, z: np.ndarray, ctx_extra=None) -> np.ndarray:
    """ctx float32 [G, L, Fc]: (value, observed mask) of the standardised context z [G, L], then
    ctx_extra [G, L', Fc - 2] (known features and past-only covariates per step, in the order of
    dil.runtime.inputs.features.context_inputs; the last L steps are used). ValueError (one line) when the
    widths do not add up to the model's context_features."""
    base = context_features(z)
    Fc, L = model.config.context_features, z.shape[1]
    if ctx_extra is None:
        if Fc != 2:
            raise ValueError(f"the model takes {Fc - 2} context features besides (value, mask): pass ctx_extra "
                             f"[G, L, {Fc - 2}]")
        return base
    extra = np.asarray(ctx_extra, dtype=np.float32)
    if extra.ndim != 3 or extra.shape[0] != z.shape[0] or extra.shape[1] < L or extra.shape[2] != Fc - 2:
        raise ValueError(f"ctx_extra has shape {list(extra.shape)}, expected [G, >= {L}, {Fc - 2}]")
    return np.concatenate([base, extra[:, -L:]], axis=-1)


def horizon_features_tensor(model: ScoreNet, hor_feat, G: int, H: int) -> torch.Tensor | None:
    """hor_feat float [G, H, Fk] as a float32 tensor (None for a model without known features);
    ValueError (one line) when it is missing or misshapen for the model. A frequency-domain model
    gets each feature's horizon trajectory as its spectral coordinates (docs/frequency.md)."""
    Fk = model.config.horizon_features - 1
    if hor_feat is None and Fk == 0:
        return None
    feat = None if hor_feat is None else torch.from_numpy(np.ascontiguousarray(hor_feat, dtype=np.float32))
    horizon_inputs(model.config, feat, G, 1, H)  # the shape check
    if feat is not None and is_frequency(model):
        feat = to_spectrum(feat, dim=1).to(torch.float32)
    return feat


def check_context(model: ScoreNet, ctx) -> None:
    """ValueError (one line) unless ctx is [G, L, Fc] with L a positive multiple of context_patch."""
    shape, cfg = np.shape(ctx), model.config
    if len(shape) != 3 or shape[2] != cfg.context_features:
        raise ValueError(f"ctx has shape {list(shape)}, expected [G, L, {cfg.context_features}]")
    if shape[1] < 1 or shape[1] % cfg.context_patch:
        raise ValueError(f"the context length {shape[1]} is not a positive multiple of the model's context_patch "
                         f"{cfg.context_patch}")
