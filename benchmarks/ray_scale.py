"""Many series on one machine: `dil-run --id-column` in one process against `dil-run --ray` (docs/scale-out.md).

    OMP_NUM_THREADS=1 python benchmarks/ray_scale.py --series 2000 --samples 20 --actors 2

Builds a synthetic long table in a temporary folder (deleted at the end, never committed): SERIES
series of ROWS hourly rows, each a window of the bundled metro-traffic data (at a random offset,
with less than 5% missing) scaled, shifted and with Gaussian noise added, written as a folder of
4 Parquet files. Then, in one run, with the shipped model:

  1. single process: dil-run --input DATA --id-column id --out single.parquet --threads CORES
  2. Ray:            dil-run --input DATA --id-column id --ray --actors ACTORS --out ray --threads 1

(same seed and samples), checks that the two outputs are identical (every value, every series)
and prints the wall time of each command (process start to exit: reading, the engine load, Ray's
local cluster start for 2), their ratio and the Ray job's throughput per actor in series per
second (what a cluster multiplies). The commands share the machine with whatever else runs on it:
compare the ratio, not the absolute times, across runs.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd


def synthetic_long(n_series: int, rows: int, seed: int = 0) -> pd.DataFrame:
    """Long frame (id, date_time, value) of n_series windows of metro-traffic, scaled, shifted, noised."""
    from dil.data.datasets import resolve_table

    table = resolve_table("metro-traffic")
    v, times = table.values[:, 0], table.timestamps[-rows:]
    rng = np.random.default_rng(seed)
    ok = np.convolve(np.isnan(v), np.ones(rows), "valid") < 0.05 * rows  # windows [i, i + rows)
    starts = rng.choice(np.flatnonzero(ok), n_series)
    values = np.stack([v[s:s + rows] for s in starts])  # [S, rows]
    values = values * rng.uniform(0.3, 3.0, (n_series, 1)) + rng.uniform(-1000, 1000, (n_series, 1))
    values += rng.normal(0.0, 50.0, values.shape)
    ids = np.repeat([f"s{i:06d}" for i in range(n_series)], rows)
    return pd.DataFrame({"id": ids, "date_time": np.tile(times, n_series), "value": values.reshape(-1)})


def _timed(cmd: list[str]) -> float:
    print("$ " + " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode:
        sys.exit(f"failed ({proc.returncode}):\n" + "\n".join(proc.stderr.strip().splitlines()[-5:]))
    summary = [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("forecast ")]
    print("  " + (summary[-1] if summary else "(no summary)") + f"  [wall {wall:.1f} s]", flush=True)
    return wall


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--series", type=int, default=2000, help="synthetic series [default: 2000]")
    ap.add_argument("--rows", type=int, default=360, help="rows per series (>= the model's 336) [default: 360]")
    ap.add_argument("--samples", type=int, default=20, help="samples per series [default: 20]")
    ap.add_argument("--actors", type=int, default=2, help="Ray actors [default: 2]")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                    help="ONNX Runtime threads of the single process [default: the machine's cores]")
    args = ap.parse_args(argv)
    run = shutil.which("dil-run") or sys.exit("dil-run is not on PATH (pip install -e '.[ray]')")
    with tempfile.TemporaryDirectory(prefix="dil-ray-scale-") as tmp:
        tmp = Path(tmp)
        data = tmp / "data"
        data.mkdir()
        frame = synthetic_long(args.series, args.rows)
        for i, part in enumerate(np.array_split(np.arange(len(frame)), 4)):
            frame.iloc[part].to_parquet(data / f"part-{i}.parquet", index=False)
        print(f"data: {args.series} series x {args.rows} rows ({len(frame)} rows, 4 Parquet files); "
              f"{args.samples} samples per series; {os.cpu_count()} cores", flush=True)
        common = [run, "--input", str(data), "--id-column", "id", "--samples", str(args.samples), "--seed", "0"]
        single = _timed(common + ["--out", str(tmp / "single.parquet"), "--threads", str(args.threads)])
        ray = _timed(common + ["--ray", "--actors", str(args.actors), "--out", str(tmp / "ray"), "--threads", "1"])
        a = pd.read_parquet(tmp / "single.parquet")
        b = pd.read_parquet(tmp / "ray").sort_values(["series", "timestamp"]).reset_index(drop=True)
        same = a.shape == b.shape and list(a.columns) == list(b.columns) and all(
            np.array_equal(a[c].to_numpy(), b[c].to_numpy()) for c in a.columns)
        print(f"identical output: {same} ({a['series'].nunique()} series, {len(a)} rows)")
        print(f"wall: single process {single:.1f} s, --ray {args.actors} actors {ray:.1f} s; "
              f"ratio ray / single = {ray / single:.2f}x")
        print(f"throughput: single process {args.series / single:.1f} series/s; "
              f"--ray {args.series / ray:.1f} series/s = {args.series / ray / args.actors:.1f} series/s per actor")
        if not same:
            sys.exit(1)


if __name__ == "__main__":
    main()
