"""One training epoch in one process vs `torchrun --nproc-per-node N` on CPU (gloo), same samples seen.

    python benchmarks/ddp_epoch.py                          # metro-traffic preset model, 100 steps, all cores
    python benchmarks/ddp_epoch.py --steps 40 --nproc 2 --threads 2

Both runs do the same optimizer steps on the same number of windows: the single process draws
N x batch-size windows per step, each of the N ranks batch-size windows of its own shard (the global
batch of docs/scale-out.md), so the learning-rate schedule and the samples seen are the same. The
cores are shared alike: the single process runs with --threads torch threads (and, for reference,
with 1), each rank with --threads / N (what dil-train sets under torchrun when --threads is the
machine's core count). On a loaded machine a multi-threaded process loses much more to the load
than single-threaded ones (its threads wait for each other): compare the 1-thread row too.

Prints, for each run: the epoch's wall time (training and validation, from the run's log.jsonl),
the whole command's wall time and CPU time (with start-up), the validation loss after the epoch;
then the speed-ups (single / data-parallel epoch time) and the validation-loss gap next to the
seed-to-seed gap of two single-process runs (the noise it should be compared with;
--no-noise-check skips it).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _train(out: Path, args, batch: int, seed: int, nproc: int, threads: int) -> dict:
    """One 1-epoch dil-train run (under torchrun when nproc > 1): epoch seconds, wall seconds, val loss."""
    train = ["-m", "dil.train.cli", "--dataset", args.dataset, "--epochs", "1", "--steps-per-epoch", str(args.steps),
             "--batch-size", str(batch), "--seed", str(seed), "--device", "cpu", "--quiet", "--out", str(out)]
    if nproc > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc), *train]
    else:
        cmd = [sys.executable, *train]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    env.pop("WORLD_SIZE", None)
    t0, cpu0 = time.perf_counter(), _children_cpu()
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall, cpu = time.perf_counter() - t0, _children_cpu() - cpu0
    if res.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{res.stdout}{res.stderr}")
    log = json.loads((out / "log.jsonl").read_text().splitlines()[-1])
    return {"epoch_s": log["seconds"], "wall_s": wall, "cpu_s": cpu, "val_loss": log["val_loss"],
            "train_loss": log["train_loss"]}


def _children_cpu() -> float:
    """CPU seconds (user + system) of the finished child processes and theirs (torchrun's ranks)."""
    use = resource.getrusage(resource.RUSAGE_CHILDREN)
    return use.ru_utime + use.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dataset", default="metro-traffic")
    ap.add_argument("--steps", type=int, default=100, help="Optimizer steps of the epoch [100].")
    ap.add_argument("--batch-size", type=int, default=64, help="Windows per step per rank [64].")
    ap.add_argument("--nproc", type=int, default=2, help="torchrun processes [2].")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                    help="Torch threads of the single process; each rank gets threads / nproc [all cores].")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-noise-check", action="store_true", help="Skip the second single-process seed.")
    args = ap.parse_args()
    per_rank = max(1, args.threads // args.nproc)
    batch = args.nproc * args.batch_size
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        singles = {t: _train(tmp / f"single{t}", args, batch, args.seed, 1, t) for t in sorted({args.threads, 1})}
        ddp = _train(tmp / "ddp", args, args.batch_size, args.seed, args.nproc, per_rank)
        other = None if args.no_noise_check else _train(tmp / "seed", args, batch, args.seed + 1, 1, 1)
    samples = args.steps * batch
    print(f"{args.dataset}, preset model, 1 epoch of {args.steps} steps = {samples} windows seen "
          f"(CPU, {args.threads} threads in all; a shared machine: loaded as it was)")
    rows = [(f"1 process, batch {batch}, {t} thread(s)", r) for t, r in singles.items()]
    rows.append((f"torchrun {args.nproc} processes (gloo), batch {args.nproc} x {args.batch_size}, "
                 f"{per_rank} thread(s) each", ddp))
    if other is not None:
        rows.append((f"1 process, 1 thread, seed {args.seed + 1} (noise reference)", other))
    for name, r in rows:
        print(f"  {name:<68} epoch {r['epoch_s']:6.1f} s  wall {r['wall_s']:6.1f} s  cpu {r['cpu_s']:6.1f} s  "
              f"val loss {r['val_loss']:.4f}")
    for t, r in singles.items():
        print(f"speed-up vs 1 process with {t} thread(s) (its time / data-parallel time): epoch "
              f"{r['epoch_s'] / ddp['epoch_s']:.2f}x, wall {r['wall_s'] / ddp['wall_s']:.2f}x")
    single = singles[1]
    gap = abs(ddp["val_loss"] - single["val_loss"])
    line = f"val loss gap data-parallel vs single: {gap:.4f} ({gap / single['val_loss']:.1%})"
    if other is not None:
        noise = abs(other["val_loss"] - single["val_loss"])
        line += f"; seed-to-seed gap of the single process: {noise:.4f} ({noise / single['val_loss']:.1%})"
    print(line)

if __name__ == "__main__":
    main()
