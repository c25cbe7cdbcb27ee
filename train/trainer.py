"""The training loop: epsilon-prediction denoising on the standardised horizon (DESIGN section 4).

Per step: B windows from the train part, N noise draws each; the context is encoded once per window
and shared by its N draws (`ScoreNet.full_step` = `encode` + one full `denoise`, exactly the
exported computation). Loss = mean squared error of the predicted noise over observed target steps.
AdamW, linear warm-up then cosine decay, gradient clipping, EMA weights. After each epoch the EMA
model's loss on a fixed validation set with fixed noise (comparable across epochs) drives early
stopping; the best EMA weights are the checkpoint.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from dil.runtime.files import write_text
from dil.data.registry import DatasetSpec
from dil.runtime.table import DataError, SeriesTable
from dil.data.windows import split_bounds
from dil.runtime.model_config import ModelConfig
from dil.runtime.sampling.schedule import NoiseSchedule
from dil.train.checkpoint import CheckpointError, save_checkpoint, save_tensors
from dil.train.dataset import WindowSet, draw_noise
from dil.train.model import ScoreNet


@dataclass
class TrainConfig:
    """Training hyper-parameters. The defaults are the bundled metro-traffic preset, sized to
    finish in well under 10 minutes on 2 CPU cores.

    epochs: maximum epochs. steps_per_epoch: optimizer steps per epoch (windows are drawn at random
    with replacement, so an epoch is a fixed amount of work, not a pass over the data).
    batch_size: windows per step. noise_draws: N noise levels per window (they share one encode).
    lr: peak AdamW learning rate after `warmup` (share of all steps); cosine decay to lr * min_lr_ratio.
    weight_decay: AdamW decoupled weight decay. grad_clip: max global gradient norm.
    ema_decay: EMA of the weights (with the usual (1+n)/(10+n) warm-up); the checkpoint holds it.
    patience: stop after this many epochs without a better validation loss.
    val_windows: validation windows (evenly spaced over the val part), each with noise_draws draws.
    min_observed: share of context steps that must be observed for a window to be trained on.
    time_init: start the position embeddings as sinusoids of time (see init_time_embeddings).
    seed: seeds the initial weights, the batches and the noise. device: "auto" | "cpu" | "cuda".
    """

    epochs: int = 18
    steps_per_epoch: int = 60
    batch_size: int = 64
    noise_draws: int = 4
    lr: float = 2e-3
    weight_decay: float = 1e-2
    warmup: float = 0.05
    min_lr_ratio: float = 0.05
    grad_clip: float = 1.0
    ema_decay: float = 0.995
    patience: int = 4
    val_windows: int = 256
    min_observed: float = 0.5
    time_init: bool = True
    seed: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        for name in ("epochs", "steps_per_epoch", "batch_size", "noise_draws", "patience", "val_windows"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if not 0 < self.min_observed <= 1:
            raise ValueError(f"min_observed must be in (0, 1], got {self.min_observed}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be auto, cpu or cuda, got {self.device!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def init_time_embeddings(model: ScoreNet, season: int, amplitude: float = 1.0) -> None:
    """Start the position embeddings as sinusoids of one shared timeline (context step p at time
    p - L, horizon step j at time j), with harmonics of the seasonal period among the frequencies.

    Why: with the default small random embeddings the network first learns to ignore the context
    (the loss plateaus at the "forecast the mean" solution for hundreds of steps). Sinusoids of time
    let attention express "same phase of the season" from the first step, which is what a forecast
    of a seasonal series needs. The embeddings stay trainable; the computation is unchanged.
    """
    L, H = model.config.context_length, model.config.horizon
    D = model.config.d_model
    n_freq = D // 2
    n_harm = min(n_freq // 2, max(season // 2, 0)) if season > 1 else 0
    harmonics = np.arange(1, n_harm + 1, dtype=np.float64) / season
    geometric = 1.0 / np.geomspace(2.0, 2.0 * (L + H), n_freq - n_harm) if n_freq > n_harm else np.zeros(0)
    freqs = np.concatenate([harmonics, geometric])
    t = np.concatenate([np.arange(-L, 0), np.arange(H)]).astype(np.float64)[:, None]
    emb = np.concatenate([np.sin(2 * np.pi * freqs * t), np.cos(2 * np.pi * freqs * t)], axis=1)
    emb = np.pad(emb, ((0, 0), (0, D - emb.shape[1]))) * amplitude
    with torch.no_grad():
        model.ctx_pos.weight.copy_(torch.from_numpy(emb[:L]).float())
        model.hor_pos.weight.copy_(torch.from_numpy(emb[L:]).float())


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available to torch")
    return torch.device(name)


def lr_at(step: int, total: int, cfg: TrainConfig) -> float:
    """Linear warm-up over warmup * total steps, then cosine decay to lr * min_lr_ratio."""
    warm = max(1, int(round(cfg.warmup * total)))
    if step < warm:
        return cfg.lr * (step + 1) / warm
    progress = min(1.0, (step - warm) / max(1, total - warm))
    floor = cfg.lr * cfg.min_lr_ratio
    return floor + (cfg.lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def data_record(spec: DatasetSpec, table: SeriesTable, context: int, horizon: int, bounds: dict) -> dict:
    """The checkpoint's description of the training data (read by export, runtime and eval)."""
    return {
        "dataset": spec.name,
        "source": table.source,
        "sha256": table.sha256,
        "columns": list(table.names),
        "date_column": spec.date_column,
        "freq": table.freq or spec.freq,
        "season": spec.season,
        "context_length": context,
        "horizon": horizon,
        "scaling": "context-mean-std",
        "splits": {k: [int(a), int(b)] for k, (a, b) in bounds.items()},
    }


class _Windows:
    """Train/val window sets of a table, validated up front (bad data fails before any write)."""

    def __init__(self, spec: DatasetSpec, table: SeriesTable, config: ModelConfig, cfg: TrainConfig):
        L, H = config.context_length, config.horizon
        T = table.n_steps
        if T < L + H:
            raise DataError(f"{table.source}: {T} rows, but one window needs context {L} + horizon {H} = {L + H}")
        self.bounds = split_bounds(spec, T)
        self.train = WindowSet(table.values, L, H, *self.bounds["train"], min_observed=cfg.min_observed)
        self.val = WindowSet(table.values, L, H, *self.bounds["val"], min_observed=cfg.min_observed)
        for part, ws in (("train", self.train), ("val", self.val)):
            if len(ws) == 0:
                a, b = self.bounds[part]
                raise DataError(
                    f"{table.source}: the {part} part (rows {a}..{b - 1}) holds no usable window of "
                    f"context {L} + horizon {H}; use a shorter --context/--horizon or more rows"
                )


def _loss(model: ScoreNet, ctx, x, t_feat, eps, mask) -> torch.Tensor:
    """Masked epsilon MSE. ctx [B, L, 2], x/eps [B, N, H], t_feat [B, N, E], mask [B, H]."""
    eps_hat = model.full_step(ctx, x.unsqueeze(-1), t_feat).squeeze(-1)
    w = mask.unsqueeze(1).expand_as(eps)
    return ((eps_hat - eps) ** 2 * w).sum() / w.sum().clamp_min(1.0)


class _ValSet:
    """Fixed validation windows and fixed noise, so val losses are comparable across epochs."""

    def __init__(self, windows: WindowSet, schedule, cfg: TrainConfig, config: ModelConfig, device, chunk=256):
        batch = windows.batch(windows.evenly_spaced(cfg.val_windows))
        noise = draw_noise(np.random.default_rng([cfg.seed, 7]), schedule, batch.target, cfg.noise_draws, config.time_embed_dim)
        as_t = lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(device)  # noqa: E731
        self.parts = [
            tuple(as_t(a[i : i + chunk]) for a in (batch.ctx, noise.x, noise.t_feat, noise.eps, batch.mask))
            for i in range(0, batch.ctx.shape[0], chunk)
        ]

    @torch.no_grad()
    def loss(self, model: ScoreNet) -> float:
        num = den = 0.0
        for ctx, x, t_feat, eps, mask in self.parts:
            eps_hat = model.full_step(ctx, x.unsqueeze(-1), t_feat).squeeze(-1)
            w = mask.unsqueeze(1).expand_as(eps)
            num += float(((eps_hat - eps) ** 2 * w).sum())
            den += float(w.sum())
        return num / max(den, 1.0)


# -- resumable state: flat tensors in state.safetensors, scalars in state.json ---------------------
def _save_state(run_dir: Path, model, ema, opt, meta: dict) -> None:
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    tensors.update({f"ema.{k}": v for k, v in ema.state_dict().items()})
    opt_state = opt.state_dict()
    for idx, st in opt_state["state"].items():
        for key, val in st.items():
            tensors[f"optim.{idx}.{key}"] = val if torch.is_tensor(val) else torch.tensor(val)
    save_tensors(run_dir / "state.safetensors", tensors)
    meta = dict(meta, optimizer_param_groups=opt_state["param_groups"])
    write_text(run_dir / "state.json", json.dumps(meta, indent=2) + "\n")


def _load_state(run_dir: Path, model, ema, opt) -> dict:
    meta = json.loads((run_dir / "state.json").read_text(encoding="utf-8"))
    tensors = load_file(str(run_dir / "state.safetensors"))
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    ema.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("ema.")})
    state: dict = {}
    for name, val in tensors.items():
        if name.startswith("optim."):
            _, idx, key = name.split(".", 2)
            state.setdefault(int(idx), {})[key] = val
    opt.load_state_dict({"state": state, "param_groups": meta["optimizer_param_groups"]})
    return meta


def _read_resume_meta(run_dir: Path, config: ModelConfig, data: dict) -> dict:
    """state.json of a run folder, refusing one trained with another model or other data."""
    path = run_dir / "state.json"
    if not path.is_file() or not (run_dir / "state.safetensors").is_file():
        raise CheckpointError(f"cannot resume: {run_dir} has no state.json/state.safetensors")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"cannot resume: {path} is not valid JSON ({exc})") from None
    old_model, new_model = meta.get("model") or {}, config.to_dict()
    if old_model != new_model:
        diff = ", ".join(f"{k} {old_model.get(k)!r} (run) vs {v!r}" for k, v in new_model.items() if old_model.get(k) != v)
        raise CheckpointError(f"cannot resume {run_dir}: the model config differs: {diff}")
    old = meta.get("data", {})
    for key in ("sha256", "columns", "context_length", "horizon"):
        if old.get(key) != data[key]:
            raise CheckpointError(f"cannot resume: {run_dir} was trained on other data ({key} differs)")
    return meta


def check_run_dir(out_dir, resume: bool, overwrite: bool = False) -> Path:
    """Validate --out before anything is written: its parent must exist; an existing run needs
    --resume (or overwrite)."""
    run_dir = Path(out_dir)
    if not run_dir.parent.is_dir():
        raise DataError(f"--out: parent directory {run_dir.parent} does not exist")
    if run_dir.exists() and not run_dir.is_dir():
        raise DataError(f"--out: {run_dir} exists and is not a directory")
    existing = any((run_dir / n).exists() for n in ("config.json", "state.json"))
    if existing and not (resume or overwrite):
        raise DataError(f"--out: {run_dir} already holds a run; pass --resume to continue it or choose another --out")
    return run_dir


def train(
    spec: DatasetSpec,
    table: SeriesTable,
    model_config: ModelConfig,
    train_config: TrainConfig,
    out_dir,
    resume: bool = False,
    progress: bool = True,
    overwrite: bool = False,
) -> dict:
    """Train a ScoreNet on `table` and write the run folder `out_dir` (see dil.train.checkpoint).

    Returns a summary: run_dir, epochs (completed in total), best_val_loss, best_epoch, steps,
    seconds (this call), stopped_early, windows (train/val counts).
    """
    cfg, config = train_config, model_config
    run_dir = check_run_dir(out_dir, resume, overwrite)
    windows = _Windows(spec, table, config, cfg)
    data = data_record(spec, table, config.context_length, config.horizon, windows.bounds)
    meta = _read_resume_meta(run_dir, config, data) if resume else None
    device = resolve_device(cfg.device)

    torch.manual_seed(cfg.seed)
    schedule = NoiseSchedule()
    model = ScoreNet(config)
    if cfg.time_init:
        init_time_embeddings(model, spec.season)
    model = model.to(device)
    ema = ScoreNet(config).to(device)
    ema.load_state_dict(model.state_dict())
    ema.requires_grad_(False).eval()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    val = _ValSet(windows.val, schedule, cfg, config, device)

    progress_state = {"epoch": 0, "step": 0, "best_val_loss": None, "best_epoch": 0, "bad_epochs": 0, "seconds": 0.0}
    log_lines: list[str] = []
    if meta is not None:
        meta = _load_state(run_dir, model, ema, opt)
        progress_state.update({k: meta[k] for k in progress_state if k in meta})
        log_path = run_dir / "log.jsonl"
        if log_path.is_file():
            log_lines = [ln for ln in log_path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    run_dir.mkdir(exist_ok=True)

    total_steps = cfg.epochs * cfg.steps_per_epoch
    params = list(model.parameters())
    ema_params = list(ema.parameters())
    first_epoch = progress_state["epoch"] + 1
    started = time.perf_counter()
    stopped_early = False
    bar = _progress_bar(total_steps, progress_state["step"], progress)
    try:
        for epoch in range(first_epoch, cfg.epochs + 1):
            t0 = time.perf_counter()
            rng = np.random.default_rng([cfg.seed, epoch])
            model.train()
            running = 0.0
            for _ in range(cfg.steps_per_epoch):
                step = progress_state["step"]
                lr = lr_at(step, total_steps, cfg)
                for group in opt.param_groups:
                    group["lr"] = lr
                batch = windows.train.sample(rng, cfg.batch_size)
                noise = draw_noise(rng, schedule, batch.target, cfg.noise_draws, config.time_embed_dim)
                t = [torch.from_numpy(a).to(device) for a in (batch.ctx, noise.x, noise.t_feat, noise.eps, batch.mask)]
                loss = _loss(model, *t)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                opt.step()
                decay = min(cfg.ema_decay, (1.0 + step) / (10.0 + step))
                with torch.no_grad():
                    torch._foreach_lerp_(ema_params, [p.detach() for p in params], 1.0 - decay)
                progress_state["step"] = step + 1
                loss_value = loss.detach().item()
                running += loss_value
                bar.update(1)
                bar.set_postfix(epoch=epoch, loss=f"{loss_value:.4f}")
            train_loss = running / cfg.steps_per_epoch
            val_loss = val.loss(ema)
            seconds = time.perf_counter() - t0
            progress_state["seconds"] += seconds
            progress_state["epoch"] = epoch
            best = progress_state["best_val_loss"]
            improved = best is None or val_loss < best
            if improved:
                progress_state.update(best_val_loss=val_loss, best_epoch=epoch, bad_epochs=0)
            else:
                progress_state["bad_epochs"] += 1
            bar.set_postfix(epoch=epoch, loss=f"{train_loss:.4f}", val=f"{val_loss:.4f}")
            training = dict(cfg.to_dict(), **progress_state, torch_version=torch.__version__)
            if improved:
                save_checkpoint(run_dir, ema, schedule, data, training)
            _save_state(run_dir, model, ema, opt, dict(progress_state, model=config.to_dict(), data=data, train=cfg.to_dict()))
            log_lines.append(json.dumps({
                "epoch": epoch, "train_loss": train_loss, "val_loss": val_loss, "lr": lr,
                "seconds": round(seconds, 3), "best": improved,
            }))
            write_text(run_dir / "log.jsonl", "\n".join(log_lines) + "\n")
            if progress_state["bad_epochs"] >= cfg.patience:
                stopped_early = True
                break
    finally:
        bar.close()
    if not (run_dir / "config.json").is_file():
        raise CheckpointError(f"{run_dir}: no epoch completed, nothing to save")
    return {
        "run_dir": str(run_dir),
        "epochs": progress_state["epoch"],
        "best_val_loss": progress_state["best_val_loss"],
        "best_epoch": progress_state["best_epoch"],
        "steps": progress_state["step"],
        "seconds": time.perf_counter() - started,
        "stopped_early": stopped_early,
        "windows": {"train": len(windows.train), "val": len(windows.val)},
    }


def _progress_bar(total: int, initial: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc="train", unit="step", file=sys.stderr, disable=not enabled, dynamic_ncols=True)
