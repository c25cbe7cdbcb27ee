"""The token cache where it can pay: the fast sampler's cache settings against the plain sampler, at
equal CRPS, in wall time (docs/results.md, "Long horizons").

Run from the repository root (ONNX Runtime CPU, one thread):

    python benchmarks/cache_sweep.py --engine engines/NAME.json --windows 8
    python benchmarks/cache_sweep.py --engine engines/NAME.json --plain 5,7,10,20,50 --fast 10,20 --K 5,10 --json s.json

Every configuration forecasts exactly the same test windows of the artifact's dataset (dil-eval's
harness, every series at --windows evenly spaced origins), one series x --samples samples per
forecast (the one-window case the frontier times), with the same noise streams. Its cost is the sum
over its forecasts of the runtime's own SamplerStats: wall, engine and control seconds, tokens
computed and full steps (steps computing every token: on an artifact with denoise_full_kv the fast
sampler runs them on that lean graph). Configurations run one after the other in this process, so
compare ratios from one run, not absolute times across runs.

Rows: plain DPM-Solver++ at each of --plain steps; the fast sampler (lattice + cache) at each of
--fast steps and --K core sizes, and the same with the lattice off (cache only). "vs best plain"
is the wall time of the fastest plain row whose CRPS is no worse than the row's own, divided by the
row's wall time (above 1: the row is faster at equal or better CRPS; "-" when no plain row is as
accurate). --student adds a distilled student of the same model (`dil-train --distill`) as a row
"student NAME, N steps": its own artifact at its recorded sampler defaults, on the same windows and
noise streams, so the cache is measured against both ways of cutting steps.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys

import numpy as np


def configurations(plain: list[int], fast: list[int], cores: list[int]) -> dict:
    """{label: (steps, SamplerConfig overrides)}: the plain rows, then the fast ones."""
    rows = {f"plain {s}": (s, {"lattice": False, "cache": False}) for s in plain}
    for s in fast:
        for k in cores:
            rows[f"fast {s}, K {k}"] = (s, {"K": k})
            rows[f"cache only {s}, K {k}"] = (s, {"K": k, "lattice": False})
    return rows


def run_sweep(engine: str, rows: dict, windows: int, samples: int, seed: int, threads: int | None = 1,
              students: tuple = ()) -> dict:
    """{"protocol": ..., "rows": {label: {steps, settings, crps, coverage_50, coverage_90, token_fraction,
    full_steps (per forecast), wall_s, engine_s, control_s, forecasts}}}. students: artifacts of
    students of `engine` (same window), each a row at its own sampler defaults."""
    from dil.evaluate.engine_eval import engine_data, forecaster_fn
    from dil.evaluate.harness import EvalOptions, run_evaluation
    from dil.runtime import Forecaster
    from dil.runtime.sampling.stats import SamplerStats

    fc = Forecaster.load(engine, threads=threads)
    spec, table = engine_data(engine, fc.manifest)
    stats = {name: [] for name in rows}
    fns = {name: forecaster_fn(fc, samples, steps, seed, stats[name], **cfg) for name, (steps, cfg) in rows.items()}
    rows = dict(rows)
    for path in students:
        student = Forecaster.load(path, threads=threads)
        if (student.context_length, student.horizon) != (fc.context_length, fc.horizon):
            raise SystemExit(f"--student {path}: window {student.context_length}/{student.horizon} is not the "
                             f"teacher's {fc.context_length}/{fc.horizon}")
        config = student.default_config
        name = f"student {student.manifest.path.stem}, {config.steps} step" + "s" * (config.steps != 1)
        rows[name], stats[name] = (config.steps, {"solver_order": config.solver_order}), []
        fns[name] = forecaster_fn(student, samples, config.steps, seed, stats[name], config=config)
    first = next(iter(rows))
    options = EvalOptions(n_windows=windows, samples=samples, seed=seed, batch_size=1, progress=False)
    ev = run_evaluation(fns[first], table, spec, fc.context_length, fc.horizon, options,
                        baselines={k: v for k, v in fns.items() if k != first}, features=fc.features)
    scores = {first: ev.report["model"], **{k: ev.report["baselines"][k] for k in fns if k != first}}
    out = {}
    for name, (steps, cfg) in rows.items():
        total = SamplerStats()
        for s in stats[name][1:]:  # the first forecast carries ONNX Runtime's first-call costs
            total = total.merge(s)
        n = len(stats[name]) - 1
        out[name] = {"steps": steps, "settings": cfg, "crps": scores[name]["crps"],
                     "coverage_50": scores[name]["coverage_50"], "coverage_90": scores[name]["coverage_90"],
                     "token_fraction": total.tokens_computed / total.full_tokens,
                     "full_steps": total.full_steps / n, "wall_s": total.wall_seconds, "engine_s": total.engine_seconds,
                     "control_s": total.control_seconds, "forecasts": n}
    plain = [r for name, r in out.items() if name.startswith("plain ")]
    for r in out.values():
        as_good = [p["wall_s"] for p in plain if p["crps"] <= r["crps"]]
        r["vs_best_plain"] = min(as_good) / r["wall_s"] if as_good else None
    protocol = {k: ev.report["protocol"][k] for k in ("dataset", "series_windows", "samples", "seed")}
    protocol.update(engine=engine, threads=threads, horizon=fc.horizon,
                    horizon_tokens=fc.horizon // fc.config.horizon_patch,
                    full_step_graphs=[g for g in ("denoise_full", "denoise_full_kv") if g in fc.manifest.graphs])
    return {"protocol": protocol, "rows": out}


def markdown(result: dict, command: str) -> str:
    p = result["protocol"]
    lines = [
        f"{p['dataset']}: {p['series_windows']} test windows (one series x {p['samples']} samples per forecast), "
        f"horizon {p['horizon']} in {p['horizon_tokens']} tokens, seed {p['seed']}, ONNX Runtime CPU, "
        f"{p['threads']} thread(s); full-step graphs: {', '.join(p['full_step_graphs']) or 'none'}. Regenerate with:",
        "",
        f"    {command}",
        "",
        "| sampler | CRPS | cov 50/90 | tokens computed | full steps | wall s | engine s | control s | vs best plain |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in result["rows"].items():
        vs = "-" if r["vs_best_plain"] is None else f"{r['vs_best_plain']:.2f}x"
        lines.append(f"| {name} | {r['crps']:.4f} | {r['coverage_50']:.2f}/{r['coverage_90']:.2f} | "
                     f"{r['token_fraction']:.0%} | {r['full_steps']:.1f} / {r['steps']} | {r['wall_s']:.2f} | "
                     f"{r['engine_s']:.2f} | {r['control_s']:.2f} | {vs} |")
    return "\n".join(lines) + "\n"


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--engine", required=True)
    ap.add_argument("--windows", type=int, default=8, help="evenly spaced test origins (every series of each)")
    ap.add_argument("--samples", type=int, default=100)
    ap.add_argument("--plain", type=_ints, default=[5, 7, 10, 20, 50], help="plain sampler steps")
    ap.add_argument("--fast", type=_ints, default=[10, 20], help="fast sampler steps")
    ap.add_argument("--K", type=_ints, default=[5, 10], help="cache core sizes")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads")
    ap.add_argument("--student", action="append", default=[],
                    help="a distilled student's artifact (its NAME.json): one more row, at its own defaults (repeatable)")
    ap.add_argument("--json", help="also write the result here")
    args = ap.parse_args(argv)
    rows = configurations(args.plain, args.fast, args.K)
    result = run_sweep(args.engine, rows, args.windows, args.samples, args.seed, args.threads, tuple(args.student))
    print(markdown(result, shlex.join(["python", "benchmarks/cache_sweep.py"] + (argv or sys.argv[1:]))))
    if args.json:
        from dil.runtime.support.files import write_text

        write_text(args.json, json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
