"""The torch weights an artifact ships: NAME.weights.safetensors beside its graphs (engines/README.md).

The file holds the state_dict of `dil.train.model.ScoreNet` (the EMA weights the graphs were
exported from: the run's model.safetensors, copied byte for byte), in safetensors (no pickle). The
manifest's "weights" record names it with its sha256; with the manifest's model config and schedule
that is all that rebuilding the torch module takes, so `dil-validate` and the torch baselines of
`dil-bench`/`dil-eval` work from the artifact alone, without the training run folder.

    torch_model_for(manifest)              # the artifact's own weights (or the run, for older artifacts)
    torch_model_for(manifest, "runs/x")    # refused unless runs/x is the run it was exported from
"""

from __future__ import annotations

from pathlib import Path

from dil.runtime.support.files import sha256_file
from dil.runtime.manifest import Manifest, ManifestError, checkpoint_run, load_manifest
from dil.train.checkpoint import Checkpoint, CheckpointError, load_checkpoint, load_weights

WEIGHTS_SUFFIX = ".weights.safetensors"
MODULE = "dil.train.model.ScoreNet"


def weights_file_name(artifact: str) -> str:
    """NAME.weights.safetensors for the artifact NAME."""
    return artifact + WEIGHTS_SUFFIX


def weights_record(path: Path, source: str) -> dict:
    """The manifest's "weights" section for the weights file `path`; source: where they came from."""
    return {"file": path.name, "sha256": sha256_file(path), "bytes": path.stat().st_size, "format": "safetensors",
            "module": MODULE, "source": source}


def load_artifact_model(manifest: Manifest) -> Checkpoint:
    """The torch module of an artifact from its shipped weights (eval mode, float32, CPU).

    Checks the file against the manifest's sha256. Checkpoint.path is the weights file; data and
    training are the manifest's records. Raises CheckpointError (one line).
    """
    record = manifest.extra.get("weights")
    if not isinstance(record, dict) or not record.get("file"):
        raise CheckpointError(f"artifact {manifest.path} ships no torch weights (exported by an older dil-export): "
                              "pass --checkpoint runs/NAME or re-export it")
    try:  # the same confinement as the graphs: no absolute path, no '..', no symlink leading out
        path = manifest.member(record["file"], "weights.file")
    except ManifestError as exc:
        raise CheckpointError(str(exc)) from None
    if not path.is_file():
        raise CheckpointError(f"weights file {path} named by {manifest.path} is missing")
    if not isinstance(record.get("sha256"), str):  # like a graph's, the hash is always checked
        raise CheckpointError(f"manifest {manifest.path} lacks the field 'weights.sha256'")
    if sha256_file(path) != record["sha256"]:
        raise CheckpointError(f"weights file {path} does not match its manifest {manifest.path} (sha256 differs)")
    model = load_weights(path, manifest.model)
    training = (manifest.extra.get("checkpoint") or {}).get("training") or {}
    return Checkpoint(model, manifest.model, manifest.schedule, dict(manifest.data), dict(training), path,
                      manifest.features)


def check_exported_from(manifest: Manifest, run_dir) -> None:
    """Refuse a run folder whose model.safetensors is not the artifact's weights (sha256 compared).

    Artifacts without a weights record say nothing here (the callers' other checks apply).
    """
    want = (manifest.extra.get("weights") or {}).get("sha256")
    weights = Path(run_dir) / "model.safetensors"
    if not want or not weights.is_file():
        return  # a missing file is load_checkpoint's one-line error
    have = sha256_file(weights)
    if have != want:
        raise CheckpointError(f"checkpoint {run_dir} is not the one this artifact was exported from "
                              f"(weights sha256 {have[:12]}... vs {want[:12]}... in {Path(manifest.path).name})")


def torch_model_for(manifest: Manifest, checkpoint=None) -> Checkpoint:
    """The torch module behind an artifact, for the PyTorch checks and baselines.

    checkpoint: a dil-train run folder, which must hold the exported weights (check_exported_from).
    Without it: the artifact's own weights, or for an artifact that ships none, the run its manifest
    names (runs/RUN, see dil.runtime.manifest.checkpoint_run). The model config must equal the
    manifest's. Raises CheckpointError or ManifestError (one line).
    """
    if checkpoint is None and manifest.extra.get("weights"):
        ckpt = load_artifact_model(manifest)
    else:
        run = checkpoint_run(manifest, checkpoint)
        check_exported_from(manifest, run)
        ckpt = load_checkpoint(run)
    if ckpt.config != manifest.model:
        raise CheckpointError(f"checkpoint {ckpt.path} has another model config than the artifact {manifest.path}")
    return ckpt


def load_torch_model(source) -> Checkpoint:
    """A run folder, or an artifact (its weights file, NAME.json or any path naming it): the torch
    module either way (what `torch_model_for` returned, found again from its Checkpoint.path)."""
    path = Path(source)
    if path.is_dir():
        return load_checkpoint(path)
    if path.name.endswith(WEIGHTS_SUFFIX):
        path = path.with_name(path.name[: -len(WEIGHTS_SUFFIX)] + ".json")
    return load_artifact_model(load_manifest(path))
