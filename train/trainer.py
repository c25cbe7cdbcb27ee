"""The training loop: denoising on the standardised horizon (docs/model.md sections 2 and 4).

Per step: B windows from the train part, N noise draws each; the context is encoded once per window
and shared by its N draws (`ScoreNet.full_step` = `encode` + one full `denoise`, exactly the
exported computation). Loss = mean squared error of the network output against its training target
(eps or v, `dil.runtime.sampling.parametrisation.training_target`) over observed target steps.
AdamW, linear warm-up then cosine decay, gradient clipping, EMA weights. After each epoch the EMA
model's loss on a fixed validation set with fixed noise (comparable across epochs) drives early
stopping; the best EMA weights are the checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from dil.runtime.inputs.features import FeatureSpec
from dil.runtime.support.files import write_text
from dil.data.registry import DatasetSpec
from dil.runtime.inputs.table import DataError, SeriesTable
from dil.runtime.model.config import ModelConfig
from dil.runtime.sampling.schedule import NoiseSchedule
from dil.train.checkpoint import CheckpointError, save_checkpoint
from dil.train.dataset import NoiseDraw, SplitWindows, WindowSet, data_record, draw_noise
from dil.train.model import ScoreNet
from dil.runtime.inputs.scaling import LEGACY_SCALING_RULE
from dil.train.progress import LossGuard, progress_bar
from dil.train.run_state import load_state, read_resume_meta, save_state, stored_scaling


@dataclass
class TrainConfig:
    """Training hyper-parameters. The defaults are the bundled metro-traffic preset (with its
    336-step context in day tokens), sized to finish within 10 minutes on 2 CPU cores
    (docs/model.md section 4).

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

    epochs: int = 20
    steps_per_epoch: int = 150
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
    """Start the position embeddings as sinusoids of one shared timeline (context token j, steps
    [jP, (j+1)P), at the time of its middle step jP + (P-1)/2 - L; horizon token j, steps
    [j Ph, (j+1) Ph), at the time of its middle step j Ph + (Ph-1)/2), with
    harmonics of the seasonal period among the frequencies.

    Why: with the default small random embeddings the network first learns to ignore the context
    (the loss plateaus at the "forecast the mean" solution for hundreds of steps). Sinusoids of time
    let attention express "same phase of the season" from the first step, which is what a forecast
    of a seasonal series needs. The embeddings stay trainable; the computation is unchanged.
    """
    L, H, P = model.config.context_length, model.config.horizon, model.config.context_patch
    Ph = model.config.horizon_patch
    D = model.config.d_model
    n_freq = D // 2
    n_harm = min(n_freq // 2, max(season // 2, 0)) if season > 1 else 0
    harmonics = np.arange(1, n_harm + 1, dtype=np.float64) / season
    geometric = 1.0 / np.geomspace(2.0, 2.0 * (L + H), n_freq - n_harm) if n_freq > n_harm else np.zeros(0)
    freqs = np.concatenate([harmonics, geometric])
    t_ctx = np.arange(L // P) * P + (P - 1) / 2.0 - L
    t_hor = np.arange(H // Ph) * Ph + (Ph - 1) / 2.0
    t = np.concatenate([t_ctx, t_hor]).astype(np.float64)[:, None]
    emb = np.concatenate([np.sin(2 * np.pi * freqs * t), np.cos(2 * np.pi * freqs * t)], axis=1)
    emb = np.pad(emb, ((0, 0), (0, D - emb.shape[1]))) * amplitude
    with torch.no_grad():
        model.ctx_pos.weight.copy_(torch.from_numpy(emb[: L // P]).float())
        model.hor_pos.weight.copy_(torch.from_numpy(emb[L // P :]).float())


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


def masked_squared_error(model: ScoreNet, ctx, x, t_feat, hor_feat, target, mask) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of squared errors of the network output against `target` over observed target steps,
    their count): the training loss is their ratio. ctx [B, L, Fc], x/target [B, N, H] (target: eps
    or v, NoiseDraw.net_target), t_feat [B, N, E], hor_feat [B, H, Fk], mask [B, H] (1 = observed) or a
    weight per row [B, N, H] (a distillation's, NoiseDraw.mask)."""
    out = model.full_step(ctx, x.unsqueeze(-1), t_feat, hor_feat if hor_feat.shape[-1] else None).squeeze(-1)
    w = mask.unsqueeze(1).expand_as(target) if mask.dim() == 2 else mask
    return ((out - target) ** 2 * w).sum(), w.sum()


def masked_mse(model: ScoreNet, ctx, x, t_feat, hor_feat, target, mask) -> torch.Tensor:
    """Masked MSE of one batch (shapes as masked_squared_error)."""
    sse, count = masked_squared_error(model, ctx, x, t_feat, hor_feat, target, mask)
    return sse / count.clamp_min(1.0)


def batch_tensors(batch, noise, device) -> tuple:
    """masked_squared_error's tensor arguments (after the model) for a WindowBatch and its NoiseDraw."""
    mask = batch.mask if noise.mask is None else noise.mask
    arrays = (batch.ctx, noise.x, noise.t_feat, batch.hor_feat, noise.net_target, mask)
    return tuple(torch.from_numpy(np.ascontiguousarray(a)).to(device) for a in arrays)


class ForwardProcess:
    """The denoising targets of training: draw(rng, batch) -> NoiseDraw of the forward process
    (draw_noise), `draws` noise levels per window. (train/distill.py's TeacherTrajectories is the
    other source: a teacher's sampler steps.)"""

    def __init__(self, schedule: NoiseSchedule, config: ModelConfig, draws: int):
        self.schedule, self.config, self.draws = schedule, config, draws

    def draw(self, rng: np.random.Generator, batch) -> NoiseDraw:
        return draw_noise(rng, self.schedule, batch.target, self.draws, self.config.time_embed_dim,
                          self.config.prediction, batch.gains)


class TargetSource(Protocol):
    """What a training step learns for a batch of windows: the network's inputs and targets."""

    def draw(self, rng: np.random.Generator, batch) -> NoiseDraw: ...


class _ValSet:
    """Fixed validation windows and fixed noise, so val losses are comparable across epochs."""

    def __init__(self, windows: WindowSet, source: TargetSource, cfg: TrainConfig, device, chunk=256):
        batch = windows.batch(windows.evenly_spaced(cfg.val_windows))
        noise = source.draw(np.random.default_rng([cfg.seed, 7]), batch)
        whole = batch_tensors(batch, noise, device)
        self.parts = [tuple(a[i : i + chunk] for a in whole) for i in range(0, batch.ctx.shape[0], chunk)]

    @torch.no_grad()
    def loss(self, model: ScoreNet, dist=None) -> float:
        """The masked MSE over all validation windows (chunks summed before dividing). dist: a
        dil.train.distributed.DataParallel: each rank sums its share, every rank gets the total."""
        num = den = 0.0
        for part in self.parts if dist is None else dist.val_parts(self.parts):
            sse, count = masked_squared_error(model, *part)
            num += float(sse)
            den += float(count)
        if dist is not None:  # the same number on every rank: early stopping must agree
            num, den = dist.sum_floats(num, den)
        return num / max(den, 1.0)


@dataclass
class TrainProgress:
    """Where a run stands; saved in state.json and config.json's "training" after each epoch."""

    epoch: int = 0
    step: int = 0
    best_val_loss: float | None = None
    best_epoch: int = 0
    bad_epochs: int = 0
    seconds: float = 0.0

    def record(self, epoch: int, val_loss: float, seconds: float) -> bool:
        """Book a finished epoch; True when its validation loss is the best so far."""
        self.seconds += seconds
        self.epoch = epoch
        improved = self.best_val_loss is None or val_loss < self.best_val_loss
        if improved:
            self.best_val_loss, self.best_epoch, self.bad_epochs = val_loss, epoch, 0
        else:
            self.bad_epochs += 1
        return improved


@dataclass
class _Networks:
    """The trained model, its EMA copy (what the checkpoint holds) and the optimizer."""

    model: ScoreNet
    ema: ScoreNet
    opt: torch.optim.Optimizer
    ddp: object = None  # under torchrun: the model's full_step through DDP (gradients averaged)

    @classmethod
    def build(cls, config: ModelConfig, cfg: TrainConfig, season: int, device) -> "_Networks":
        """Fresh networks from cfg.seed (the EMA starts as a copy of the model)."""
        torch.manual_seed(cfg.seed)
        model = ScoreNet(config)
        if cfg.time_init:
            init_time_embeddings(model, season)
        model = model.to(device)
        ema = ScoreNet(config).to(device)  # drawn after the model: the seed's weights stay what they were
        ema.load_state_dict(model.state_dict())
        ema.requires_grad_(False).eval()
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        return cls(model, ema, opt)

    def step(self, batch: tuple, lr: float, step: int, cfg: TrainConfig) -> float:
        """One optimizer step on a batch of tensors (masked_mse's arguments) and the EMA update;
        returns the batch loss."""
        for group in self.opt.param_groups:
            group["lr"] = lr
        loss = masked_mse(self.model if self.ddp is None else self.ddp, *batch)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        params = list(self.model.parameters())
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        self.opt.step()
        decay = min(cfg.ema_decay, (1.0 + step) / (10.0 + step))
        with torch.no_grad():
            torch._foreach_lerp_(list(self.ema.parameters()), [p.detach() for p in params], 1.0 - decay)
        return loss.detach().item()


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


class _Run:
    """One call of `train`: the data, networks and progress of a run folder, and its epoch steps."""

    def __init__(self, spec: DatasetSpec, table: SeriesTable, config: ModelConfig, cfg: TrainConfig, run_dir: Path,
                 resume: bool, features: FeatureSpec, dist=None, distill=None):
        self.cfg, self.config, self.run_dir, self.features = cfg, config, run_dir, features
        self.distill = distill  # a train.distill.Distillation: the student of a teacher, else None
        self.dist = dist  # dil.train.distributed.DataParallel under torchrun, else None
        # A resumed run keeps the scaling rule it was started with (one made before the floor has none).
        # A student scales as its teacher did.
        floored = not resume or stored_scaling(run_dir) != LEGACY_SCALING_RULE
        if distill is not None:
            floored = distill.scaling != LEGACY_SCALING_RULE
        self.windows = SplitWindows(spec, table, config, cfg.min_observed, features, floored=floored)
        self.guard = LossGuard(self.windows.train, list(table.names), table.source)
        self.data = data_record(spec, table, config.context_length, config.horizon, self.windows.bounds, features,
                                self.windows.floors)
        # refuses another model, other data or other features before any work
        meta = read_resume_meta(run_dir, config, self.data, features) if resume else None
        self.device = resolve_device(cfg.device) if dist is None else dist.device
        n = len(self.windows.train)  # the train windows this process draws from: all, or its rank's shard
        self.shard = np.arange(n) if dist is None else dist.shard(n)
        self.schedule = NoiseSchedule()
        self.nets = _Networks.build(config, cfg, spec.season, self.device)
        if distill is None:
            self.source: TargetSource = ForwardProcess(self.schedule, config, cfg.noise_draws)
        else:  # the student starts as the teacher
            self.source = distill.start(self.nets.model, self.nets.ema, self.schedule, cfg.noise_draws, self.device)
        self.val = _ValSet(self.windows.val, self.source, cfg, self.device)
        self.progress = TrainProgress()
        self.log_lines: list[str] = []
        if meta is not None:
            self._restore()
        if dist is not None:
            self.nets.ddp = dist.wrap(self.nets.model)
        self.total_steps = cfg.epochs * cfg.steps_per_epoch

    def _restore(self) -> None:
        """Continue from the run folder's state (--resume): weights, optimizer, progress, log."""
        meta = load_state(self.run_dir, self.nets.model, self.nets.ema, self.nets.opt)
        names = {f.name for f in fields(TrainProgress)}
        self.progress = TrainProgress(**{k: v for k, v in meta.items() if k in names})
        log_path = self.run_dir / "log.jsonl"
        if log_path.is_file():
            self.log_lines = [ln for ln in log_path.read_text(encoding="utf-8").splitlines() if ln.strip()]

    def train_epoch(self, epoch: int, bar) -> tuple[float, float]:
        """cfg.steps_per_epoch optimizer steps, batches and noise from the epoch's own seed stream.
        Returns (mean training loss, last learning rate)."""
        cfg = self.cfg
        rng = np.random.default_rng([cfg.seed, epoch]) if self.dist is None else self.dist.epoch_rng(cfg.seed, epoch)
        self.nets.model.train()
        running = lr = 0.0
        for _ in range(cfg.steps_per_epoch):
            step = self.progress.step
            lr = lr_at(step, self.total_steps, cfg)
            if self.dist is not None:
                self.dist.test_exit(step)
            index = self.shard[rng.integers(0, len(self.shard), size=cfg.batch_size)]
            batch = self.windows.train.batch(index)
            noise = self.source.draw(rng, batch)
            loss = self.nets.step(batch_tensors(batch, noise, self.device), lr, step, cfg)
            self.guard.check(loss, step, index, batch, self.progress.epoch)
            self.progress.step = step + 1
            running += loss
            bar.update(1)
            bar.set_postfix(epoch=epoch, loss=f"{loss:.4f}")
        if self.dist is not None:  # the mean over all ranks' batches
            return self.dist.mean_float(running / cfg.steps_per_epoch), lr
        return running / cfg.steps_per_epoch, lr

    def end_epoch(self, epoch: int, train_loss: float, val_loss: float, lr: float, seconds: float) -> bool:
        """Book the epoch and write the run folder: checkpoint (when best), state, log line.
        Returns True when early stopping ends the run."""
        improved = self.progress.record(epoch, val_loss, seconds)
        if self.dist is not None and not self.dist.is_main:  # rank 0 alone writes the run folder
            return self.progress.bad_epochs >= self.cfg.patience
        world = {} if self.dist is None else {"world_size": self.dist.world_size}
        distill = {} if self.distill is None else {"distill": self.distill.spec.to_dict()}
        if improved:
            training = dict(self.cfg.to_dict(), **asdict(self.progress), torch_version=torch.__version__, **world,
                            **distill)
            save_checkpoint(self.run_dir, self.nets.ema, self.schedule, self.data, training, self.features)
        save_state(self.run_dir, self.nets.model, self.nets.ema, self.nets.opt,
                   dict(asdict(self.progress), model=self.config.to_dict(), data=self.data, train=self.cfg.to_dict(),
                        features=self.features.to_dict(), **distill))
        self.log_lines.append(json.dumps({
            "epoch": epoch, "train_loss": train_loss, "val_loss": val_loss, "lr": lr,
            "seconds": round(seconds, 3), "best": improved, **world,
        }))
        write_text(self.run_dir / "log.jsonl", "\n".join(self.log_lines) + "\n")
        return self.progress.bad_epochs >= self.cfg.patience

    def summary(self, seconds: float, stopped_early: bool) -> dict:
        p = self.progress
        return {
            "run_dir": str(self.run_dir),
            "epochs": p.epoch,
            "best_val_loss": p.best_val_loss,
            "best_epoch": p.best_epoch,
            "steps": p.step,
            "seconds": seconds,
            "stopped_early": stopped_early,
            "windows": {"train": len(self.windows.train), "val": len(self.windows.val)},
            "world_size": 1 if self.dist is None else self.dist.world_size,
        }


def train(
    spec: DatasetSpec,
    table: SeriesTable,
    model_config: ModelConfig,
    train_config: TrainConfig,
    out_dir,
    resume: bool = False,
    progress: bool = True,
    overwrite: bool = False,
    features: FeatureSpec | None = None,
    dist=None,
    distill=None,
) -> dict:
    """Train a ScoreNet on `table` and write the run folder `out_dir` (see dil.train.checkpoint).

    features: what the tokens carry beyond the target (dil.train.dataset.fit_feature_spec; None:
    nothing); model_config's context_features / horizon_features must be its widths.
    dist: a dil.train.distributed.DataParallel to train as one rank of a torchrun job (each rank on
    its shard, gradients averaged, rank 0 writing the run folder); None: this process alone.
    distill: a dil.train.distill.Distillation: train a few-step student of its teacher (same model
    config and features) instead of a denoiser from scratch; None: the usual training.

    Returns a summary: run_dir, epochs (completed in total), best_val_loss, best_epoch, steps,
    seconds (this call), stopped_early, windows (train/val counts), world_size.
    Raises dil.train.distributed.DistributedError when another rank dies or stops responding.
    """
    main = dist is None or dist.is_main
    # rank 0 checks (the others would race with it making the folder) and stops the job when it refuses
    run_dir = check_run_dir(out_dir, resume, overwrite) if main else Path(out_dir)
    stopped_early = False
    bar = None
    try:
        with contextlib.nullcontext() if dist is None else dist.guard():
            run = _Run(spec, table, model_config, train_config, run_dir, resume, features or FeatureSpec(), dist,
                       distill)
            if main:
                run_dir.mkdir(exist_ok=True)
            started = time.perf_counter()
            bar = progress_bar(run.total_steps, run.progress.step, progress and main)
            for epoch in range(run.progress.epoch + 1, train_config.epochs + 1):
                t0 = time.perf_counter()
                train_loss, lr = run.train_epoch(epoch, bar)
                val_loss = run.val.loss(run.nets.ema, dist)
                bar.set_postfix(epoch=epoch, loss=f"{train_loss:.4f}", val=f"{val_loss:.4f}")
                # a launcher's stop waits until the run folder's files are all written
                with contextlib.nullcontext() if dist is None else dist.shielded():
                    stop = run.end_epoch(epoch, train_loss, val_loss, lr, time.perf_counter() - t0)
                if stop:
                    stopped_early = True
                    break
            if dist is not None:
                dist.barrier()  # rank 0 has written the run folder before the others look at it
    finally:
        if bar is not None:
            bar.close()
    if not (run_dir / "config.json").is_file():
        raise CheckpointError(f"{run_dir}: no epoch completed, nothing to save")
    return run.summary(time.perf_counter() - started, stopped_early)
