"""A run folder's resumable state and training progress (see dil.train.checkpoint for the layout).

state.safetensors holds flat tensors (raw weights "model.*", EMA weights "ema.*", optimizer state
"optim.IDX.KEY"); state.json holds the scalars: progress (epoch, step, best_val_loss, best_epoch,
bad_epochs, seconds), the model config, the data record, the training config ("train"), the features
("features": FeatureSpec.to_dict()) and the optimizer's param groups. Both are rewritten after every
epoch, so together with log.jsonl they say how far a run got: `training_progress` reads them
(dil-export refuses a run that did not finish).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from dil.runtime.support.files import write_text
from dil.runtime.model.config import ModelConfig
from dil.train.checkpoint import CheckpointError, read_tensors, save_tensors


def save_state(run_dir: Path, model, ema, opt, meta: dict) -> None:
    """Write state.safetensors and state.json (meta + the optimizer's param groups)."""
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    tensors.update({f"ema.{k}": v for k, v in ema.state_dict().items()})
    opt_state = opt.state_dict()
    for idx, st in opt_state["state"].items():
        for key, val in st.items():
            tensors[f"optim.{idx}.{key}"] = val if torch.is_tensor(val) else torch.tensor(val)
    save_tensors(run_dir / "state.safetensors", tensors)
    meta = dict(meta, optimizer_param_groups=opt_state["param_groups"])
    write_text(run_dir / "state.json", json.dumps(meta, indent=2) + "\n")


def load_state(run_dir: Path, model, ema, opt) -> dict:
    """Restore model, EMA and optimizer from the run folder; returns state.json's content."""
    meta = json.loads((run_dir / "state.json").read_text(encoding="utf-8"))
    tensors = read_tensors(run_dir / "state.safetensors")
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    ema.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("ema.")})
    state: dict = {}
    for name, val in tensors.items():
        if name.startswith("optim."):
            _, idx, key = name.split(".", 2)
            state.setdefault(int(idx), {})[key] = val
    opt.load_state_dict({"state": state, "param_groups": meta["optimizer_param_groups"]})
    return meta


def stored_scaling(run_dir: Path) -> str | None:
    """The scaling rule of a run folder's state.json (its data record; a run made before the rule
    was recorded used dil.runtime.inputs.scaling.LEGACY_SCALING_RULE), or None when unreadable."""
    from dil.runtime.inputs.scaling import LEGACY_SCALING_RULE

    try:
        meta = json.loads((Path(run_dir) / "state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return (meta.get("data") or {}).get("scaling", LEGACY_SCALING_RULE)


def read_resume_meta(run_dir: Path, config: ModelConfig, data: dict, features=None) -> dict:
    """state.json of a run folder, refusing one trained with another model, other data or other
    features (a dil.runtime.inputs.features.FeatureSpec; a run without the record had none)."""
    from dil.runtime.inputs.features import FeatureSpec

    path = run_dir / "state.json"
    if not path.is_file() or not (run_dir / "state.safetensors").is_file():
        raise CheckpointError(f"cannot resume: {run_dir} has no state.json/state.safetensors")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"cannot resume: {path} is not valid JSON ({exc})") from None
    old = meta.get("data", {})
    for key in ("sha256", "columns", "context_length", "horizon"):
        if old.get(key) != data[key]:
            raise CheckpointError(f"cannot resume: {run_dir} was trained on other data ({key} differs)")
    old_f, new_f = (meta.get("features") or FeatureSpec().to_dict()), (features or FeatureSpec()).to_dict()
    if old_f != new_f:  # before the model config: other features also change the model's input widths
        diff = ", ".join(f"{k} {_brief(old_f.get(k))} (run) vs {_brief(v)}"
                         for k, v in new_f.items() if old_f.get(k) != v)
        raise CheckpointError(f"cannot resume {run_dir}: the features differ: {diff}")
    old_model, new_model = _with_defaults(meta.get("model") or {}), config.to_dict()
    if old_model != new_model:
        diff = ", ".join(f"{k} {old_model.get(k)!r} (run) vs {v!r}" for k, v in new_model.items() if old_model.get(k) != v)
        raise CheckpointError(f"cannot resume {run_dir}: the model config differs: {diff}")
    return meta


def _brief(value) -> str:
    """A feature record's field for a one-line message: covariates by name (and kind), else repr."""
    if isinstance(value, list) and value and isinstance(value[0], dict):
        return "[" + ", ".join(f"{c.get('name')} ({'known' if c.get('known') else 'past'})" for c in value) + "]"
    return repr(value)


# -- how far a run got ------------------------------------------------------------------------------
@dataclass(frozen=True)
class TrainingProgress:
    """How far the training of a run folder got.

    epochs_done / epochs_planned: completed and planned epochs (None when the folder does not say).
    stopped_early: early stopping ended it (that counts as finished).
    """

    epochs_done: int | None
    epochs_planned: int | None
    stopped_early: bool = False

    @property
    def finished(self) -> bool | None:
        """True: ran all planned epochs or stopped early; False: it did not; None: unknown."""
        if self.stopped_early:
            return True
        if self.epochs_done is None or self.epochs_planned is None:
            return None
        return self.epochs_done >= self.epochs_planned

    def to_dict(self) -> dict:
        return {"epochs_done": self.epochs_done, "epochs_planned": self.epochs_planned,
                "stopped_early": self.stopped_early, "finished": self.finished}


def _json(path: Path) -> dict:
    try:
        out = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return out if isinstance(out, dict) else {}


def _log_records(path: Path) -> list[dict]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        try:
            rec = json.loads(line)
        except ValueError:
            continue  # a line cut by a kill
        if isinstance(rec, dict) and isinstance(rec.get("epoch"), int):
            out.append(rec)
    return out


def _int(value) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def training_progress(run_dir) -> TrainingProgress:
    """Epochs done and planned, and early stopping, from state.json, log.jsonl and config.json.

    After each epoch the trainer writes config.json (only when the epoch improved: its "epoch" is
    the best epoch), then state.json, then a log.jsonl line; a kill can fall between them, so the
    epochs done are the most any of them records. The plan and the patience come from state.json's
    training config (the one of the latest epoch, also after a --resume with new --epochs), else
    from config.json's.
    """
    run_dir = Path(run_dir)
    state, training = _json(run_dir / "state.json"), _json(run_dir / "config.json").get("training") or {}
    log = _log_records(run_dir / "log.jsonl")
    train_cfg = state.get("train") if isinstance(state.get("train"), dict) else training
    done = [d for d in (_int(state.get("epoch")), _int(training.get("epoch")), log[-1]["epoch"] if log else None)
            if d is not None]
    planned, patience = _int(train_cfg.get("epochs")), _int(train_cfg.get("patience"))
    bad = _int(state.get("bad_epochs"))
    if bad is None and log:  # epochs since the last improvement
        bad = next((i for i, rec in enumerate(reversed(log)) if rec.get("best")), len(log))
    stopped = patience is not None and bad is not None and bad >= patience
    return TrainingProgress(max(done) if done else None, planned, stopped)


def _with_defaults(model: dict) -> dict:
    """A stored model config with the keys added since it was written at their defaults (which
    reproduce the old model: context_patch 1, horizon_patch 1, ...); as stored if it does not load."""
    try:
        return ModelConfig.from_dict(model).to_dict()
    except (TypeError, ValueError):
        return model
