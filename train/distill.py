"""Few-step students: trajectory distillation of a trained run (docs/distillation.md).

The teacher is a trained run sampled as `dil-run` samples it: the plain DPM-Solver++ of order 2 on
the M-step grid of `NoiseSchedule.sampling_grid`, with the data-prediction guard, all through the
runtime's own `DPMSolverPP`, `to_x0_eps` and `clip_x0` (the network in float32, the control in
float64). The student has the teacher's architecture and starts from its weights. It is trained so
that ONE first-order step (DDIM, the solver's order 1) between consecutive times of the K-step grid
lands where the teacher's c = M / K steps land (Salimans & Ho 2022, "Progressive Distillation for Fast
Sampling of Diffusion Models", Algorithm 2, with a teacher of c steps instead of 2, and the teacher's
states as the student's inputs). The K-step grid is every c-th time of the M-step grid (both are
uniform in log-SNR, or both in time).

For a student step from time t to time s < t (alpha, sigma of the schedule), the DDIM update is
    x_s = (sigma_s / sigma_t) x_t + (alpha_s - (sigma_s / sigma_t) alpha_t) x0_hat,
so the data prediction that reaches the teacher's x_s is (Algorithm 2's target)
    x0_tilde = (x_s - (sigma_s / sigma_t) x_t) / (alpha_s - (sigma_s / sigma_t) alpha_t),
and for the last step, to clean data (alpha_s = 1, sigma_s = 0), x0_tilde is the teacher's sample.
The network is trained on the output that gives x0_tilde at x_t (`training_target` with
eps_tilde = (x_t - alpha_t x0_tilde) / sigma_t): for a v network that is the usual v loss, which
weighs the x0 error by 1 + SNR (the "SNR+1" weighting of the paper).

A student runs as `dil-run` runs any model, with K steps of solver order 1: dil-export writes that
into the artifact's sampler defaults.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from dil.runtime.model import frequency
from dil.runtime.model.config import ModelConfig
from dil.runtime.sampling.config import X0_CLIP_DEFAULT
from dil.runtime.inputs.scaling import LEGACY_SCALING_RULE
from dil.runtime.sampling.parametrisation import clip_x0, to_x0_eps, training_target
from dil.runtime.sampling.schedule import DEFAULT_SPACING, NoiseSchedule, diffusion_time_features
from dil.runtime.sampling.solver import DPMSolverPP
from dil.train.dataset import NoiseDraw, WindowBatch

# Teacher steps per run by default: the smallest multiple of K that is at least this many. Twelve
# steps of the plain sampler are within noise of fifty on metro-traffic (docs/results.md, frontier).
MIN_TEACHER_STEPS = 12
TEACHER_ORDER = 2  # the plain sampler's order (SamplerConfig.solver_order)
# The student's steps by default. Two: with the default recipe the 2-step students of metro-traffic
# and etth2 scored 1.004x and 0.998x their teachers' test CRPS with the same coverage, in 2 network
# calls per forecast where 4-step students take 4 (docs/distillation.md section 6).
DEFAULT_STUDENT_STEPS = 2


def default_teacher_steps(student_steps: int) -> int:
    """The smallest multiple of student_steps that is >= MIN_TEACHER_STEPS (and >= 2 x student_steps)."""
    return student_steps * max(2, math.ceil(MIN_TEACHER_STEPS / student_steps))


@dataclass(frozen=True)
class DistillConfig:
    """What a student learns. teacher: the teacher run folder's name (a record, not a path);
    teacher_sha256: sha256 of its model.safetensors. student_steps: K, the student's first-order
    steps; teacher_steps: M, a multiple of K (>= 2K), the teacher's steps of order teacher_order;
    spacing: both grids' spacing; x0_clip: the guard of the teacher's steps (the runtime default)."""

    teacher: str
    teacher_sha256: str
    student_steps: int = DEFAULT_STUDENT_STEPS
    teacher_steps: int = 12
    teacher_order: int = TEACHER_ORDER
    spacing: str = DEFAULT_SPACING
    x0_clip: float = X0_CLIP_DEFAULT

    def __post_init__(self) -> None:
        K, M = self.student_steps, self.teacher_steps
        if isinstance(K, bool) or not isinstance(K, int) or not 1 <= K <= 100:
            raise ValueError(f"--student-steps must be an integer in [1, 100], got {K!r}")
        if isinstance(M, bool) or not isinstance(M, int) or M < 2 * K or M % K or M > 1000:
            raise ValueError(f"--teacher-steps must be a multiple of --student-steps {K} of at least {2 * K} "
                             f"(and at most 1000), got {M!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "DistillConfig":
        return cls(**{k: d[k] for k in ("teacher", "teacher_sha256", "student_steps", "teacher_steps",
                                        "teacher_order", "spacing", "x0_clip") if k in d})

    def sampler_defaults(self) -> dict:
        """The artifact's "sampler_defaults" record for this student (runtime/manifest.py)."""
        return {"lattice": False, "cache": False, "steps": self.student_steps, "solver_order": 1,
                "why": f"distilled student: {self.student_steps} first-order step{'s' * (self.student_steps != 1)}, "
                       "trained to match "
                       f"{self.teacher_steps} steps of order {self.teacher_order} of the run {self.teacher} "
                       "(dil-train --distill, docs/distillation.md)"}


def segment_weights(a_t, s_t, a_s, s_s, prediction: str = "v") -> np.ndarray:
    """float64 [K], mean 1: the loss weight of each student step, so that the loss is the mean
    squared error of the state the step reaches, x_s (what the forecast inherits), not of the
    network output.

    A v network's output error e moves x0_hat by sigma_t e and x_s by c sigma_t e, with
    c = alpha_s - (sigma_s / sigma_t) alpha_t (the DDIM update); an epsilon network's moves x_s by
    c (sigma_t / alpha_t) e. Unweighted, the v loss would weigh the steps' x_s errors by
    1 / (c sigma_t)^2: on metro-traffic at K = 4 that is 240 for the first step and 2 for the third,
    whose x_s error was then the largest (0.026 against 0.001 on the validation windows).
    """
    c = a_s - (s_s / s_t) * a_t
    w = (c * s_t) ** 2 if prediction == "v" else (c * s_t / a_t) ** 2
    return w / w.mean()


class TeacherTrajectories:
    """Distillation targets for a batch of windows: draw(rng, batch) -> NoiseDraw whose N axis holds
    K x n rows per window (segment-major: segment j's n trajectories, then j + 1's), n = draws.

    teacher: the teacher ScoreNet (eval mode, on `device`); config: its ModelConfig.
    """

    def __init__(self, teacher, config: ModelConfig, schedule: NoiseSchedule, spec: DistillConfig, draws: int,
                 device):
        self.teacher, self.config, self.spec, self.draws, self.device = teacher, config, spec, draws, device
        K, M = spec.student_steps, spec.teacher_steps
        self.teacher_kappas = schedule.sampling_grid(M, spec.spacing)
        self.student_kappas = student = schedule.sampling_grid(K, spec.spacing)
        if not np.allclose(self.teacher_kappas[:: M // K], student, rtol=0, atol=1e-6):
            raise ValueError(f"the {K}-step grid is not every {M // K}-th time of the {M}-step grid")
        self.schedule = schedule
        # a_t, s_t at the student's times; a_s, s_s at the next one (clean data after the last)
        self.a_t, self.s_t = schedule.alpha(student), schedule.sigma(student)
        self.a_s = np.append(self.a_t[1:], 1.0)
        self.s_s = np.append(self.s_t[1:], 0.0)
        self.weights = segment_weights(self.a_t, self.s_t, self.a_s, self.s_s, config.prediction)
        self.t_feat = diffusion_time_features(student, config.time_embed_dim).astype(np.float32)  # [K, E]
        self.teacher_feat = diffusion_time_features(self.teacher_kappas, config.time_embed_dim).astype(np.float32)
        in_frequency = config.domain == "frequency"
        self.gains = frequency.noise_gains(config.horizon) if in_frequency else None
        self.clip = frequency.clip_bound(spec.x0_clip, config.horizon) if in_frequency else spec.x0_clip

    def draw(self, rng: np.random.Generator, batch: WindowBatch) -> NoiseDraw:
        """The student's inputs and targets for `batch` (shapes: NoiseDraw with N = K * draws)."""
        B, H = batch.target.shape
        K, n = self.spec.student_steps, self.draws
        x_T = rng.standard_normal((B, n, H))
        if self.gains is not None:
            x_T = x_T * self.gains
        starts, final = self.trajectories(batch, x_T)  # [K, B, n, H], [B, n, H]
        ends = np.concatenate([starts[1:], final[None]])
        shape = (K, 1, 1, 1)
        a_t, s_t, a_s, s_s = (a.reshape(shape) for a in (self.a_t, self.s_t, self.a_s, self.s_s))
        ratio = s_s / s_t
        x0 = (ends - ratio * starts) / (a_s - ratio * a_t)  # Algorithm 2's x0_tilde
        eps = (starts - a_t * x0) / s_t
        target = training_target(x0, eps, a_t, s_t, self.config.prediction)

        def rows(a):  # [K, B, n, ...] -> [B, K * n, ...]
            return np.moveaxis(a, 0, 1).reshape((B, K * n) + a.shape[3:])

        t_feat = np.broadcast_to(self.t_feat[:, None, None, :], (K, B, n, self.t_feat.shape[1]))
        per_step = np.ones(H) if self.gains is None else 1.0 / self.gains**2
        mask = np.broadcast_to(self.weights[:, None, None, None] * per_step, (K, B, n, H))
        kappa = np.broadcast_to(self.student_kappas[:, None, None], (K, B, n))
        return NoiseDraw(k=rows(kappa), eps=rows(eps).astype(np.float32), x=rows(starts).astype(np.float32),
                         t_feat=rows(t_feat), net_target=rows(target).astype(np.float32),
                         mask=rows(mask).astype(np.float32))

    @torch.no_grad()
    def trajectories(self, batch: WindowBatch, x_T: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The teacher's plain DPM-Solver++ from x_T float64 [B, n, H]: (its states at the student's
        K times, float64 [K, B, n, H]; its sample, float64 [B, n, H])."""
        net, cfg = self.teacher, self.config
        B, n, H = x_T.shape
        to = {"device": self.device}
        ctx = torch.from_numpy(np.ascontiguousarray(batch.ctx)).to(**to)
        hor = torch.from_numpy(np.ascontiguousarray(batch.hor_feat)).to(**to) if cfg.horizon_features > 1 else None
        k_ctx, v_ctx = net.encode(ctx)
        solver = DPMSolverPP(self.schedule, kappas=self.teacher_kappas)
        c = self.spec.teacher_steps // self.spec.student_steps
        x, starts = np.array(x_T, dtype=np.float64), []
        for i in range(self.spec.teacher_steps):
            if i % c == 0:
                starts.append(x)
            x_in = net.horizon_tokens(torch.from_numpy(x.astype(np.float32)).to(**to).unsqueeze(-1), hor)
            t_feat = torch.from_numpy(np.broadcast_to(self.teacher_feat[i], (B, n, self.teacher_feat.shape[1])).copy())
            out = net.denoise_full(x_in, t_feat.to(**to), k_ctx, v_ctx).reshape(B, n, H)
            x0, _ = to_x0_eps(out.double().cpu().numpy(), x, solver.alphas[i], solver.sigmas[i], cfg.prediction)
            x = solver.step(x, clip_x0(x0, self.clip), self.spec.teacher_order)
        return np.stack(starts), x


@dataclass
class Distillation:
    """A student to train (dil.train.trainer.train's `distill`): what it learns and its teacher
    (a ScoreNet of the student's model config, e.g. dil.train.checkpoint.load_checkpoint(...).model)."""

    spec: DistillConfig
    teacher: torch.nn.Module
    # the teacher's scaling rule (its data record's "scaling"): the student scales its windows alike
    scaling: str = LEGACY_SCALING_RULE

    def start(self, model, ema, schedule: NoiseSchedule, draws: int, device) -> TeacherTrajectories:
        """Copy the teacher's weights into the student `model` and its EMA copy; the teacher's
        targets for batches of windows, `draws` trajectories per window."""
        state = self.teacher.state_dict()
        model.load_state_dict(state)
        ema.load_state_dict(state)
        teacher = self.teacher.to(device).eval().requires_grad_(False)
        return TeacherTrajectories(teacher, teacher.config, schedule, self.spec, draws, device)


def student_defaults(training: dict) -> dict | None:
    """The "sampler_defaults" of a run's artifact from its config.json "training" record: a
    student's own steps and order (DistillConfig.sampler_defaults), None for a run that is no student."""
    record = training.get("distill") if isinstance(training, dict) else None
    return None if record is None else DistillConfig.from_dict(record).sampler_defaults()


# dil-train's training options for a student when not given (docs/distillation.md section 5): the
# recipe of the shipped metro-traffic student at half its 48 epochs. Measured on the test windows
# against the teacher's default sampler: metro-traffic 1.002x in 645 s, etth2 0.998x in 629 s (2
# cores). The shipped student's 48 epochs gave 0.995x its teacher's plain 50 on validation windows;
# 12 epochs at lr 5e-4 and batch 32 gave 1.046 after 7, 24 epochs at batch 32 gave 1.012.
STUDENT_TRAINING = {"epochs": 24, "steps_per_epoch": 150, "batch_size": 64, "noise_draws": 4, "lr": 1e-3,
                    "patience": 4}


def load_distillation(teacher_run, student_steps: int | None = None, teacher_steps: int | None = None):
    """(Distillation, the teacher's config.json content) for dil-train --distill TEACHER_RUN.
    CheckpointError / ValueError (one line) for a folder that holds no finished run or bad steps."""
    from dil.runtime.support.files import sha256_file
    from dil.train.checkpoint import load_checkpoint, read_config

    ckpt = load_checkpoint(teacher_run)
    if "distill" in ckpt.training:
        raise ValueError(f"--distill {teacher_run}: that run is itself a student; distil its teacher "
                         f"{ckpt.training['distill'].get('teacher')!r} with fewer --student-steps instead")
    K = student_steps or DEFAULT_STUDENT_STEPS
    spec = DistillConfig(teacher=Path(teacher_run).resolve().name,
                         teacher_sha256=sha256_file(Path(teacher_run) / "model.safetensors"),
                         student_steps=K, teacher_steps=teacher_steps or default_teacher_steps(K))
    config = read_config(teacher_run)
    scaling = (config.get("data") or {}).get("scaling", LEGACY_SCALING_RULE)
    return Distillation(spec, ckpt.model, scaling), config
