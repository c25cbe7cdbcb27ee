"""Data-parallel training under torchrun (docs/scale-out.md, "Training on several processes or GPUs").

`torchrun --nproc-per-node N $(which dil-train) ...` starts N copies of dil-train with WORLD_SIZE,
RANK and LOCAL_RANK set. Each copy (a rank) holds the whole model; every optimizer step, rank r
trains on batch_size windows of its own shard of the train windows (positions r, r + N, r + 2N, ...),
drawn from its own seed stream (seed, epoch, r), and DistributedDataParallel averages the gradients,
so a step sees a global batch of N x batch_size windows and every rank ends it with the same weights.
The learning rate stays as configured. The validation loss is summed over the ranks (each takes its
share of the fixed validation windows) so every rank gets the same number and makes the same early
stopping decision. Rank 0 alone writes the run folder.

WORLD_SIZE unset or 1: `start` returns None and the trainer runs its single-process path untouched
(no process group, the same batches, bit-identical weights).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
from dataclasses import dataclass, field
from datetime import timedelta

import numpy as np
import torch

DEFAULT_TIMEOUT_S = 300.0
# Test hook: "RANK:STEP" makes that rank exit abruptly when it reaches that optimizer step, so the
# tests can check what the surviving ranks do when a peer dies.
TEST_EXIT_ENV = "DIL_TEST_RANK_EXIT"


class DistributedError(RuntimeError):
    """Data-parallel training stopped: a peer rank died, timed out, or the launcher stopped this one."""


class _Terminated(Exception):
    """SIGTERM arrived (torchrun sends it to the other ranks when one fails)."""


def torchrun_env() -> tuple[int, int, int, int] | None:
    """(rank, world_size, local_rank, local_world_size) from torchrun's environment; None when
    WORLD_SIZE is unset or 1 (a plain single-process run)."""
    if os.environ.get("WORLD_SIZE", "").strip() in ("", "1"):
        return None
    names = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")
    try:
        rank, world, local = (int(os.environ[n]) for n in names[:3])
        local_world = int(os.environ.get(names[3], world))
    except (KeyError, ValueError):
        raise ValueError("WORLD_SIZE is set but RANK/LOCAL_RANK are missing or not integers: "
                         "start data-parallel training with torchrun") from None
    if not (world > 1 and 0 <= rank < world and 0 <= local < local_world):
        raise ValueError(f"inconsistent torchrun environment: RANK {rank}, WORLD_SIZE {world}, LOCAL_RANK {local}")
    return rank, world, local, local_world


class _FullStep(torch.nn.Module):
    """ScoreNet.full_step as a module's forward: DDP synchronises gradients of what runs through
    its forward, and the network has no forward of its own."""

    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.net = net

    def forward(self, ctx, x, t_feat, hor_feat):
        return self.net.full_step(ctx, x, t_feat, hor_feat)


class _DDPNet:
    """Stands in for the ScoreNet in the training loss: `full_step` runs through DDP."""

    def __init__(self, ddp: torch.nn.Module):
        self.ddp = ddp

    def full_step(self, ctx, x, t_feat, hor_feat=None):
        return self.ddp(ctx, x, t_feat, hor_feat)


@dataclass
class DataParallel:
    """This process's place in a torchrun job, with the process group already initialised.

    rank / world_size: this process and the number of processes; local_rank: its index on this
    node (the CUDA device it uses); device: where its tensors live; backend: "gloo" or "nccl".
    """

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str
    _pending_term: bool = field(default=False, repr=False)
    _shielded: bool = field(default=False, repr=False)
    _stopping: bool = field(default=False, repr=False)

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that writes the run folder and prints."""
        return self.rank == 0

    # -- setup -------------------------------------------------------------------------------------
    @classmethod
    def start(cls, device: str = "auto", timeout_s: float = DEFAULT_TIMEOUT_S) -> "DataParallel | None":
        """Join the torchrun job: None outside torchrun (WORLD_SIZE unset or 1). device: "auto"
        (CUDA when available), "cpu" (gloo) or "cuda" (NCCL, GPU LOCAL_RANK). timeout_s: how long
        a collective waits for the other ranks before it fails."""
        env = torchrun_env()
        if env is None:
            return None
        if not timeout_s > 0:
            raise ValueError(f"--dist-timeout must be > 0 seconds, got {timeout_s}")
        rank, world, local, local_world = env
        import torch.distributed as dist

        if not dist.is_available():
            raise ValueError("this torch build has no torch.distributed: data-parallel training needs it")
        cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
        if cuda:
            if not torch.cuda.is_available():
                raise ValueError("--device cuda: no CUDA device is available to torch")
            count = torch.cuda.device_count()
            if local >= count:
                raise ValueError(f"rank {rank}: LOCAL_RANK {local} but {count} CUDA device(s) are visible; "
                                 f"start at most {count} processes per node (--nproc-per-node)")
            where, backend = torch.device("cuda", local), "nccl"
            torch.cuda.set_device(where)
        else:
            where, backend = torch.device("cpu"), "gloo"
            # the node's cores split among its ranks, so N ranks do not oversubscribe them
            torch.set_num_threads(max(1, _cores() // local_world))
        try:
            dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
        except (RuntimeError, ValueError) as exc:
            raise DistributedError(f"rank {rank}: could not join the other {world - 1} processes: "
                                   f"{_first_line(exc)}") from None
        out = cls(rank, world, local, where, backend)
        out._handle_sigterm()
        return out

    def close(self) -> None:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()

    def wrap(self, model: torch.nn.Module) -> _DDPNet:
        """The training stand-in for `model` (its full_step through DistributedDataParallel);
        `model` itself stays what the EMA, checkpoints and validation use."""
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [self.device.index] if self.device.type == "cuda" else None
        return _DDPNet(DDP(_FullStep(model), device_ids=ids))

    # -- sharding ----------------------------------------------------------------------------------
    def shard(self, n: int) -> np.ndarray:
        """Positions of this rank's train windows among n: r, r + N, ... (spread over the whole
        period, so every shard sees every season)."""
        if n < self.world_size:
            raise ValueError(f"{n} train windows cannot be shared among {self.world_size} processes")
        return np.arange(self.rank, n, self.world_size)

    def epoch_rng(self, seed: int, epoch: int) -> np.random.Generator:
        """This rank's batch and noise stream for an epoch."""
        return np.random.default_rng([seed, epoch, self.rank])

    def val_parts(self, parts: list[tuple]) -> list[tuple]:
        """This rank's share of the validation chunks (every N-th window of each chunk)."""
        mine = [tuple(a[self.rank :: self.world_size] for a in part) for part in parts]
        return [part for part in mine if part[0].shape[0]]

    # -- collectives -------------------------------------------------------------------------------
    def sum_floats(self, *values: float) -> tuple[float, ...]:
        """The sums over all ranks (float64), the same on every rank."""
        import torch.distributed as dist

        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return tuple(float(v) for v in t.cpu())

    def mean_float(self, value: float) -> float:
        return self.sum_floats(value)[0] / self.world_size

    def barrier(self) -> None:
        import torch.distributed as dist

        if self.backend == "nccl":
            dist.barrier(device_ids=[self.device.index])
        else:
            dist.barrier()

    # -- faults ------------------------------------------------------------------------------------
    def test_exit(self, step: int) -> None:
        """Exit abruptly at `step` when the test hook (TEST_EXIT_ENV) names this rank."""
        want = os.environ.get(TEST_EXIT_ENV)
        if want and want == f"{self.rank}:{step}":
            os._exit(3)

    @contextlib.contextmanager
    def guard(self):
        """Turn a failed collective (a dead or stuck peer: gloo and NCCL raise RuntimeError, also
        from inside backward) and the launcher's SIGTERM into one DistributedError."""
        try:
            yield
        except _Terminated:
            self._stopping = True
            raise DistributedError(f"rank {self.rank} of {self.world_size} was stopped by torchrun "
                                   "(another rank failed)") from None
        except RuntimeError as exc:
            self._stopping = True  # torchrun's SIGTERM may follow: this rank is already stopping
            raise DistributedError(f"rank {self.rank} of {self.world_size}: {_first_line(exc)}") from None

    @contextlib.contextmanager
    def shielded(self):
        """Hold off SIGTERM while the run folder is written, so a stop never falls between its files."""
        self._shielded = True
        try:
            yield
        finally:
            self._shielded = False
        if self._pending_term:
            raise _Terminated()

    def _handle_sigterm(self) -> None:
        import threading

        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread

        def on_term(signum, frame):
            if self._stopping:
                return  # already on its way out with its own message
            if self._shielded:
                self._pending_term = True
            else:
                raise _Terminated()

        signal.signal(signal.SIGTERM, on_term)


def start(device: str = "auto", timeout_s: float = DEFAULT_TIMEOUT_S) -> DataParallel | None:
    """DataParallel.start: the torchrun job this process belongs to, or None (single process)."""
    return DataParallel.start(device, timeout_s)


def stopped_message(exc: DistributedError, run_dir) -> str:
    """One line: why training stopped, how far the run folder got, and the command that resumes it
    (with this node's process count)."""
    from dil.train.run_state import training_progress

    nproc = os.environ.get("LOCAL_WORLD_SIZE") or os.environ.get("WORLD_SIZE") or "N"
    done = training_progress(run_dir).epochs_done if (run_dir / "state.json").is_file() else None
    saved = (f"{run_dir} holds epoch {done} and resumes" if done
             else f"no epoch finished, so {run_dir} holds nothing to resume; start it again")
    return (f"data-parallel training stopped: {exc}. {saved} with: torchrun --standalone --nproc-per-node "
            f"{nproc} $(which dil-train) --out {run_dir}{' --resume' if done else ''}")


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _first_line(exc: BaseException) -> str:
    """The gist of a torch error: its first line, without gloo's source location and its advice."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    line = re.sub(r"^\[[^\]]*\.(cc|cpp|h):\d+\]\s*", "", lines[0]) if lines else type(exc).__name__
    return line.split(" This is typically caused")[0].rstrip(". ")
