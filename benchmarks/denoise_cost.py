"""Cost of one `denoise` call (ONNX Runtime CPU): a proposed model configuration against today's.

    python benchmarks/denoise_cost.py --context-length 336 --context-patch 24 --horizon-patch 4 --known-features 4
    python benchmarks/denoise_cost.py --engine engines/metro-traffic.onnx      # S sweep of one artifact

Default mode: two random-initialised ScoreNets, "today" (the shipped configuration: d_model 64,
3 layers, 4 heads, MLP 128, context 168 in one-step tokens, no features) and "new" (the options),
exported to a temporary folder and run in this one process, so both are measured on the same
machine under the same load (their calls alternate within each repeat). For 1 x 100 and 50 x 100
(series x samples) rows it prints the median time of a full denoise call (S = T, every horizon
token; T = horizon / horizon_patch) and of the encode call, and the ratio new / today. The weights are random: the cost of a
graph does not depend on their values.

--engine mode: for one exported artifact, the median time of a denoise call with S = 4, 8, 12, 16,
H computed tokens per row and its ratio to the full call (S = H): the ceiling of what reusing tokens
can save per step.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

ROWS = ((1, 100), (50, 100))
TODAY = dict(context_length=168, horizon=24, d_model=64, num_heads=4, num_layers=3, ffn_dim=128, time_embed_dim=32)


def _median_seconds(fns: dict, repeats: int) -> dict:
    """{name: median seconds} of the calls `fns` ({name: callable}), after one warm-up each. The
    calls alternate within every repeat, so that a change of machine load hits all of them alike."""
    for fn in fns.values():
        fn()
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return {k: float(np.median(v)) for k, v in times.items()}


def call_inputs(cfg, G: int, N: int, S: int, rng: np.random.Generator) -> dict:
    """Random inputs of one call: ctx [G, L, Fc] and the denoise arguments for S tokens per row
    (positions 0..S-1; the other tokens cached and valid; H = the horizon's tokens)."""
    H, L, D, layers = cfg.horizon_tokens, cfg.context_length, cfg.d_model, cfg.num_layers
    ctx = rng.standard_normal((G, L, cfg.context_features)).astype(np.float32)
    ctx[..., 1] = 1.0  # observed mask
    valid = np.ones((G, N, H), np.float32)
    valid[..., :S] = 0
    return {
        "ctx": ctx,
        "x_sub": rng.standard_normal((G, N, S, cfg.horizon_patch * cfg.horizon_features)).astype(np.float32),
        "pos_sub": np.broadcast_to(np.arange(S, dtype=np.int64), (G, N, S)).copy(),
        "t_feat": rng.standard_normal((G, N, cfg.time_embed_dim)).astype(np.float32),
        "k_hor": rng.standard_normal((layers, G, N, H, D)).astype(np.float32),
        "v_hor": rng.standard_normal((layers, G, N, H, D)).astype(np.float32),
        "hor_valid": valid,
    }


def calls(engine, cfg, G: int, N: int, S: int, seed: int = 0) -> dict:
    """{"encode": callable, "denoise": callable}: one call each on fixed random inputs, S tokens per row."""
    a = call_inputs(cfg, G, N, S, np.random.default_rng(seed))
    k_ctx, v_ctx = engine.encode(a["ctx"])

    def denoise():
        engine.denoise(a["x_sub"], a["pos_sub"], a["t_feat"], k_ctx, v_ctx, a["k_hor"], a["v_hor"], a["hor_valid"])

    return {"encode": lambda: engine.encode(a["ctx"]), "denoise": denoise}


def random_engine(config, folder: Path, name: str, threads: int | None, seed: int = 0):
    """An OnnxEngine of a random-initialised ScoreNet of `config`, exported into `folder`."""
    import torch

    from dil.export.onnx_export import export_onnx
    from dil.runtime.backends.onnx_engine import OnnxEngine
    from dil.runtime.manifest import Manifest
    from dil.runtime.sampling.schedule import NoiseSchedule
    from dil.train.model import ScoreNet

    torch.manual_seed(seed)
    model = ScoreNet(config).eval()
    with torch.no_grad():  # a zero head would make every output 0; not that it changes the cost
        model.head.weight.normal_(0.0, 0.1)
    paths = export_onnx(model, folder, name)
    manifest = Manifest(name=name, model=config, schedule=NoiseSchedule(), data={},
                        graphs={g: {"file": p.name} for g, p in paths.items()}, path=folder / f"{name}.json")
    return OnnxEngine(manifest, threads=threads)


def compare(new: dict, repeats: int = 7, threads: int | None = None, rows=ROWS) -> list[dict]:
    """Full-call (S = T, every token) cost of today's configuration and of `new` (ModelConfig fields), per row."""
    from dil.runtime.model.config import ModelConfig

    configs = {"today": ModelConfig(**TODAY), "new": ModelConfig(**{**TODAY, **new})}
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        engines = {k: random_engine(c, Path(tmp), k, threads) for k, c in configs.items()}
        for G, N in rows:
            fns = {f"{k}_{call}": fn for k, c in configs.items()
                   for call, fn in calls(engines[k], c, G, N, c.horizon_tokens).items()}
            t = _median_seconds(fns, repeats)
            out.append({"series": G, "samples": N, **t, "ratio_denoise": t["new_denoise"] / t["today_denoise"],
                        "ratio_encode": t["new_encode"] / t["today_encode"]})
    return out


def denoise_cost(engine: str, rows=ROWS, repeats: int = 7, threads: int | None = None) -> list[dict]:
    """--engine mode: per row, the denoise time at S = 4, 8, 12, 16, H and its ratio to S = H."""
    from dil.runtime.backends.onnx_engine import OnnxEngine

    eng = OnnxEngine.load(engine, threads=threads)
    cfg = eng.config
    sizes = sorted({s for s in (4, 8, 12, 16) if s < cfg.horizon_tokens} | {cfg.horizon_tokens})
    out = []
    for G, N in rows:
        t = _median_seconds({S: calls(eng, cfg, G, N, S)["denoise"] for S in sizes}, repeats)
        found = [{"series": G, "samples": N, "S": S, "seconds": t[S]} for S in sizes]
        for r in found:  # the last one is S = H
            r["vs_full"] = r["seconds"] / found[-1]["seconds"]
        out.extend(found)
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="\n\n".join(__doc__.split("\n\n")[2:]))
    ap.add_argument("--engine", default=None, metavar="PATH",
                    help="S sweep of this exported artifact instead of the today/new comparison.")
    ap.add_argument("--context-length", type=int, default=TODAY["context_length"], help="new: context steps L.")
    ap.add_argument("--context-patch", type=int, default=1, help="new: context steps per context token P.")
    ap.add_argument("--horizon-patch", type=int, default=1, help="new: horizon steps per horizon token Ph.")
    ap.add_argument("--d-model", type=int, default=TODAY["d_model"], help="new: token width D.")
    ap.add_argument("--layers", type=int, default=TODAY["num_layers"], help="new: transformer blocks.")
    ap.add_argument("--ffn", type=int, default=TODAY["ffn_dim"], help="new: MLP width.")
    ap.add_argument("--heads", type=int, default=TODAY["num_heads"], help="new: attention heads.")
    ap.add_argument("--known-features", type=int, default=0,
                    help="new: known features per step Fk (time features, known covariates): Fc = 2 + Fk, Fh = 1 + Fk.")
    ap.add_argument("--repeats", type=int, default=7, help="Timed calls per measurement (median; after one warm-up).")
    ap.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads (default: one per core).")
    a = ap.parse_args(argv)
    if a.engine:
        print("| series x samples | S | denoise ms (median) | vs S = H |\n|---|---|---|---|")
        for r in denoise_cost(a.engine, repeats=a.repeats, threads=a.threads):
            print(f"| {r['series']} x {r['samples']} | {r['S']} | {r['seconds'] * 1e3:.1f} | {r['vs_full']:.2f} |")
        return
    new = dict(context_length=a.context_length, context_patch=a.context_patch, horizon_patch=a.horizon_patch,
               d_model=a.d_model,
               num_layers=a.layers, ffn_dim=a.ffn, num_heads=a.heads,
               context_features=2 + a.known_features, horizon_features=1 + a.known_features)
    from dil.runtime.model.config import ModelConfig

    try:  # a bad option fails here, in one line, before any export
        ModelConfig(**{**TODAY, **new})
    except ValueError as exc:
        ap.error(str(exc))
    print(f"today: {TODAY} (patch 1, no features)\nnew:   {new}")
    print("| series x samples | denoise ms today | denoise ms new | new / today | encode ms today | encode ms new |"
          "\n|---|---|---|---|---|---|")
    for r in compare(new, a.repeats, a.threads):
        print(f"| {r['series']} x {r['samples']} | {r['today_denoise'] * 1e3:.2f} | {r['new_denoise'] * 1e3:.2f} | "
              f"{r['ratio_denoise']:.2f} | {r['today_encode'] * 1e3:.2f} | {r['new_encode'] * 1e3:.2f} |")


if __name__ == "__main__":
    main()
