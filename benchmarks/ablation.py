"""Ablation of the fast sampler: each mechanism off in turn, CRPS and cost on the same windows.

Run from the repository root (ONNX Runtime CPU, the shipped model by default):

    python benchmarks/ablation.py                                  # 30 windows, 100 samples, 20 steps
    python benchmarks/ablation.py --engine engines/NAME.onnx --windows 60 --markdown docs/ablation.md

Every variant forecasts exactly the same test windows with the same noise streams (the evaluation
harness of dil-eval), in batches of --batch-size windows (engine calls of at most
dil.evaluate.engine_eval.EVAL_MEMORY_BUDGET bytes: 2 windows of 100 samples); its cost is the sum
over its forecasts of the runtime's own SamplerStats (wall, engine and control seconds, tokens
computed). Variants run one after the other in this process, so compare ratios from one run, not
absolute times across runs.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys

import numpy as np

# name -> SamplerConfig overrides. "plain" is the full-recompute DPM-Solver++ 2M sampler (the
# baseline of the ratios); the others turn one mechanism of the default fast sampler off.
VARIANTS = {
    "defaults (lattice + cache)": {},
    "lattice off": {"lattice": False},
    "cache off (lattice orders only)": {"cache": False},
    "core follow off": {"core_follow": False},
    "final full step off": {"final_full": False},
    "random probes off": {"random_probe_ratio": 0.0},
    "fill off": {"fill": False},
    "plain (lattice off, cache off)": {"lattice": False, "cache": False},
}
PLAIN = "plain (lattice off, cache off)"


def run_ablation(engine: str, windows: int, samples: int, steps: int, seed: int, batch_size: int,
                 threads: int | None = None) -> dict:
    """{variant: {crps, crps_ratio, token_fraction, wall_s, engine_s, control_s, speedup}}."""
    from dil.evaluate.engine_eval import engine_data, forecaster_fn
    from dil.evaluate.harness import EvalOptions, run_evaluation
    from dil.runtime import Forecaster
    from dil.runtime.sampling.stats import SamplerStats

    fc = Forecaster.load(engine, threads=threads)
    spec, table = engine_data(engine, fc.manifest)
    stats = {name: [] for name in VARIANTS}
    fns = {name: forecaster_fn(fc, samples, steps, seed, stats[name], **cfg) for name, cfg in VARIANTS.items()}
    warm = np.sin(np.arange(fc.context_length) * 2 * np.pi / 24)[None]  # any finite context
    for name, fn in fns.items():  # session start-up and first-call costs stay out of the timings
        fn(np.repeat(warm, batch_size, axis=0), [f"warm-up {i}" for i in range(batch_size)])
        stats[name].clear()
    first = next(iter(VARIANTS))
    options = EvalOptions(n_windows=windows, samples=samples, steps=steps, seed=seed, batch_size=batch_size)
    ev = run_evaluation(fns[first], table, spec, fc.context_length, fc.horizon, options,
                        baselines={k: v for k, v in fns.items() if k != first})
    crps = {first: ev.report["model"]["crps"], **{k: ev.report["baselines"][k]["crps"] for k in fns if k != first}}
    out = {}
    for name in VARIANTS:
        total = SamplerStats()
        for s in stats[name]:
            total = total.merge(s)
        out[name] = {"crps": crps[name], "token_fraction": total.tokens_computed / total.full_tokens,
                     "wall_s": total.wall_seconds, "engine_s": total.engine_seconds,
                     "control_s": total.control_seconds, "settings": VARIANTS[name]}
    for row in out.values():
        row["crps_ratio"] = row["crps"] / out[PLAIN]["crps"]
        row["speedup"] = out[PLAIN]["wall_s"] / row["wall_s"]
    protocol = {k: ev.report["protocol"][k] for k in ("dataset", "series_windows", "samples", "steps", "seed")}
    return {"protocol": {**protocol, "batch_size": batch_size, "threads": threads}, "variants": out}


def markdown(result: dict, command: str) -> str:
    p = result["protocol"]
    lines = [
        f"{p['dataset']}: {p['series_windows']} test windows, {p['samples']} samples, {p['steps']} steps, "
        f"seed {p['seed']}, batches of {p['batch_size']} windows, ONNX Runtime CPU. Regenerate with:",
        "",
        f"    {command}",
        "",
        "| sampler | CRPS | CRPS / plain | tokens computed / full | wall s | speed-up vs plain | control share |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in result["variants"].items():
        lines.append(f"| {name} | {r['crps']:.4f} | {r['crps_ratio']:.3f} | {r['token_fraction']:.2f} | "
                     f"{r['wall_s']:.1f} | {r['speedup']:.2f}x | {r['control_s'] / r['wall_s']:.0%} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--engine", default="engines/metro-traffic.onnx")
    ap.add_argument("--windows", type=int, default=30, help="evenly spaced test origins")
    ap.add_argument("--samples", type=int, default=100)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=1, help="windows per forecast (1: one series x samples)")
    ap.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads")
    ap.add_argument("--json", help="also write the result here")
    ap.add_argument("--markdown", help="also write the table here")
    args = ap.parse_args(argv)
    result = run_ablation(args.engine, args.windows, args.samples, args.steps, args.seed, args.batch_size,
                          args.threads)
    text = markdown(result, shlex.join(["python", "benchmarks/ablation.py"] + (argv or sys.argv[1:])))
    print(text)
    from dil.runtime.support.files import write_text

    if args.json:
        write_text(args.json, json.dumps(result, indent=2) + "\n")
    if args.markdown:
        write_text(args.markdown, text)


if __name__ == "__main__":
    main()
