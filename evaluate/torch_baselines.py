"""The PyTorch baselines of an exported model: the same weights, sampled by the torch samplers.

    ref = load_reference("engines/metro-traffic.onnx")            # the weights the artifact ships
    fn = ddpm_forecast_fn(ref, num_samples=100, seed=0)           # a harness forecast_fn

`reference-ddpm1000`: 1000-step ancestral DDPM sampling (dil.evaluate.reference.ancestral), the classic
diffusion-forecaster cost. `torch-full`: the runtime's solver and steps in PyTorch, every token
recomputed (dil.evaluate.reference.sampler). Both run the torch module of the engine, rebuilt from
the weights the artifact ships (NAME.weights.safetensors), or from `checkpoint`, which must be the
run the artifact was exported from (`dil.export.weights.torch_model_for`). torch is imported only
here, on first use; a missing torch gives a one-line MissingDependency naming the `train` extra.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dil.runtime.support.deps import require
from dil.runtime.manifest import ManifestError, load_manifest

# Max abs difference of the context keys/values between the checkpoint (torch) and the engine (ONNX)
# on a fixed input: float32 exports agree to ~1e-6; other weights differ by O(0.1).
SAME_MODEL_TOLERANCE = 1e-3


class ReferenceUnavailable(ValueError):
    """The torch baseline cannot run (no checkpoint, a checkpoint of another model, ...). One line."""


@dataclass
class Reference:
    """The torch module of an engine. model: ScoreNet (eval, float32, CPU); schedule; run: where its
    weights came from (the artifact's weights file, or a run folder), which
    `dil.export.weights.load_torch_model` loads again (the bench workers do)."""

    model: object
    schedule: object
    run: Path

    @property
    def name(self) -> str:
        return f"reference-ddpm{self.schedule.num_steps}"


def load_reference(engine, checkpoint=None, onnx_engine=None) -> Reference:
    """Load the torch module behind `engine` and check that it is the same model.

    checkpoint: a run folder, refused unless it holds the exported weights (sha256); default: the
    artifact's own weights. The model config and schedule must equal the manifest's, and the context
    keys/values must match the engine's on a fixed input (SAME_MODEL_TOLERANCE; this also catches a
    checkpoint trained further after an export that recorded no weights hash).
    onnx_engine: an already loaded OnnxEngine. Raises MissingDependency (no torch) or ReferenceUnavailable.
    """
    require("torch", "train")
    from dil.export.weights import torch_model_for
    from dil.runtime.backends.onnx_engine import OnnxEngine
    from dil.train.checkpoint import CheckpointError

    manifest = load_manifest(engine)
    try:
        ckpt = torch_model_for(manifest, checkpoint)
    except (CheckpointError, ManifestError) as exc:
        raise ReferenceUnavailable(str(exc).splitlines()[0]) from None
    run = ckpt.path
    if ckpt.config != manifest.model or ckpt.schedule != manifest.schedule:
        raise ReferenceUnavailable(f"checkpoint {run} holds another model than {manifest.path.name} (config or schedule differ)")
    err = _encode_difference(ckpt.model, onnx_engine or OnnxEngine.load(engine))
    if not err <= SAME_MODEL_TOLERANCE:
        raise ReferenceUnavailable(
            f"checkpoint {run} does not match {manifest.path.name} (context keys differ by {err:.3g}): pass the run it was exported from"
        )
    return Reference(model=ckpt.model, schedule=ckpt.schedule, run=run)


def _encode_difference(model, onnx_engine) -> float:
    import torch

    cfg = model.config
    rng = np.random.default_rng(0)
    L, extra = cfg.context_length, cfg.context_features - 2  # known features and past covariates per step
    ctx = np.concatenate([rng.standard_normal((2, L, 1)), np.ones((2, L, 1)), rng.uniform(-0.5, 0.5, (2, L, extra))],
                         axis=-1).astype(np.float32)
    k_onnx, v_onnx = onnx_engine.encode(ctx)
    with torch.no_grad():
        k_t, v_t = model.encode(torch.from_numpy(ctx))
    return float(max(np.abs(k_onnx - k_t.numpy()).max(), np.abs(v_onnx - v_t.numpy()).max()))


def _bar(progress: bool, total: int, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="step", disable=None if progress else True, leave=False)


def feature_arguments(features) -> dict:
    """The torch samplers' ctx_extra [G, L', Fk + Fp] and hor_feat [G, H, Fk] of a harness batch's
    WindowFeatures (None: {}, a model without features)."""
    if features is None:
        return {}
    extra = np.concatenate([np.asarray(features.context_known, dtype=np.float64),
                            np.asarray(features.context_past, dtype=np.float64)], axis=-1)
    return {"ctx_extra": extra if extra.shape[-1] else None,
            "hor_feat": features.horizon_known if features.horizon_known.shape[-1] else None}


def ddpm_forecast_fn(ref: Reference, num_samples: int = 100, seed: int = 0, progress: bool = True):
    """A harness forecast_fn: T-step ancestral sampling of the torch module, each window's noise
    from the runtime stream of its id (the same x_T as the runtime's forecast of that window),
    with the batch's features (WindowFeatures) when the model has any."""
    from dil.evaluate.reference.ancestral import ancestral_forecast

    def fn(contexts, ids, features=None):
        bar = _bar(progress, ref.schedule.num_steps, ref.name)
        try:
            out = ancestral_forecast(ref.model, ref.schedule, contexts, num_samples, seed, list(ids), bar.update,
                                     **feature_arguments(features))
        finally:
            bar.close()
        return out.samples

    return fn


def torch_full_forecast_fn(ref: Reference, num_samples: int = 100, steps: int = 20, seed: int = 0,
                           spacing: str | None = None):
    """A harness forecast_fn: the runtime's plain DPM-Solver++ sampler in PyTorch (torch-full), with
    the batch's features (WindowFeatures) when the model has any. spacing: the step grid ("logsnr"
    or "time"; None: the sampler's default)."""
    from dil.evaluate.reference.sampler import reference_forecast

    extra = {} if spacing is None else {"spacing": spacing}

    def fn(contexts, ids, features=None):
        return reference_forecast(ref.model, ref.schedule, contexts, num_samples, steps, seed, list(ids),
                                  **feature_arguments(features), **extra).samples

    return fn
