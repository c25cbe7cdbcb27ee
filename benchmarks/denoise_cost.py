"""Cost of one `denoise` call against the number of computed tokens S (ONNX Runtime CPU).

    python benchmarks/denoise_cost.py [--engine engines/metro-traffic.onnx] [--repeats 7]

Prints, for 1 x 100 and 50 x 100 (series x samples) rows, the median time of a denoise call with
S = 4, 8, 12, 16, H computed tokens per row and its ratio to the full call (S = H). This is the
ceiling of what reusing tokens can save per step: a partial step can only be as much cheaper than a
full step as the engine call is.
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def denoise_cost(engine: str, rows=((1, 100), (50, 100)), repeats: int = 7, threads: int | None = None) -> list[dict]:
    from dil.runtime import Forecaster

    fc = Forecaster.load(engine, threads=threads)
    eng, cfg = fc.engine, fc.engine.config
    H, L, D, layers = cfg.horizon, cfg.context_length, cfg.d_model, cfg.num_layers
    rng = np.random.default_rng(0)
    sizes = sorted({4, 8, 12, 16, H})
    out = []
    for G, N in rows:
        ctx = np.stack([rng.standard_normal((G, L)), np.ones((G, L))], -1).astype(np.float32)
        k_ctx, v_ctx = eng.encode(ctx)
        k_hor = rng.standard_normal((layers, G, N, H, D)).astype(np.float32)
        v_hor = rng.standard_normal(k_hor.shape).astype(np.float32)
        t_feat = rng.standard_normal((G, N, cfg.time_embed_dim)).astype(np.float32)
        for S in sizes:
            pos = np.broadcast_to(np.arange(S, dtype=np.int64), (G, N, S)).copy()
            x = rng.standard_normal((G, N, S, 1)).astype(np.float32)
            valid = np.ones((G, N, H), np.float32)
            valid[..., :S] = 0
            eng.denoise(x, pos, t_feat, k_ctx, v_ctx, k_hor, v_hor, valid)  # warm-up
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                eng.denoise(x, pos, t_feat, k_ctx, v_ctx, k_hor, v_hor, valid)
                times.append(time.perf_counter() - t0)
            out.append({"series": G, "samples": N, "S": S, "seconds": float(np.median(times))})
        for r in out[-len(sizes):]:  # the last one is S = H
            r["vs_full"] = r["seconds"] / out[-1]["seconds"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--engine", default="engines/metro-traffic.onnx")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    print("| series x samples | S | denoise ms (median) | vs S = H |\n|---|---|---|---|")
    for r in denoise_cost(args.engine, repeats=args.repeats, threads=args.threads):
        print(f"| {r['series']} x {r['samples']} | {r['S']} | {r['seconds'] * 1e3:.1f} | {r['vs_full']:.2f} |")


if __name__ == "__main__":
    main()
