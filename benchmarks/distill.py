"""A distilled student against its teacher (docs/distillation.md): accuracy and cost in one run.

Run from the repository root (ONNX Runtime CPU):

    python benchmarks/distill.py --teacher runs/engines/metro-teacher.json --student engines/metro-traffic.json \
        --split val --windows 48 --json docs/results/distill.json --markdown docs/results/distill.md

Every row forecasts the same evenly spaced windows of --split with the same noise streams (dil-eval's
harness) and is scored by CRPS and 50%/90% interval coverage; its cost is the median latency of one
window x --samples after a warm-up (the rows take turns, dil.evaluate.frontier) and the wall time of
forecasting all the rows' windows (--batch-size windows per call, as dil-eval). Rows:

    teacher plain 50 (order 2)   the reference of the frontier rule (docs/sampler.md section 14)
    teacher plain T (order 2)    the teacher's own default steps (its manifest's sampler_defaults)
    teacher plain K, order 2/1   the teacher at the student's steps without distillation
    student K (order 1)          the student's default

and the CRPS of each against the reference's (the rule asks for <= 1.01).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time

import numpy as np

REFERENCE_STEPS = 50


def measure(teacher, student, split: str, windows: int | None, samples: int, seed: int, repeats: int, threads: int,
            batch_size: int, progress: bool) -> dict:
    from dil.evaluate.engine_eval import engine_data
    from dil.evaluate.frontier import _latencies, _timing_window, score_samplers
    from dil.evaluate.harness import EvalOptions, protocol_windows
    from dil.runtime import Forecaster

    fcs = {"teacher": Forecaster.load(teacher, threads=threads), "student": Forecaster.load(student, threads=threads)}
    t_default, s_default = fcs["teacher"].default_config, fcs["student"].default_config
    K = s_default.steps
    spec, table = engine_data(teacher, fcs["teacher"].manifest)
    fc = fcs["teacher"]
    w = protocol_windows(table, spec, fc.context_length, fc.horizon, windows, features=fc.features, part=split)
    options = EvalOptions(samples=samples, seed=seed, batch_size=batch_size, progress=progress)
    runs = {"teacher": [("plain", REFERENCE_STEPS, 2), ("plain", t_default.steps, t_default.solver_order),
                        ("plain", K, 2), ("plain", K, 1)],
            "student": [("plain", K, s_default.solver_order)]}
    rows = []
    for model, model_runs in runs.items():
        seen = []
        for run in model_runs:
            if run in seen:
                continue
            seen.append(run)
            start = time.perf_counter()
            (row,), (config,) = score_samplers(fcs[model], w, options, [run])
            row.update(model=model, wall_s=time.perf_counter() - start, config=config)
            rows.append(row)
    timing = _timing_window(w)
    for model in fcs:
        mine = [r for r in rows if r["model"] == model]
        cfg = argparse.Namespace(samples=samples, seed=seed, repeats=repeats)
        for row, times in zip(mine, _latencies(fcs[model], timing, [r["config"] for r in mine], cfg)):
            row["latency_s"] = float(np.median(times))
    ref = rows[0]
    for row in rows:
        row["crps_ratio"] = row["crps"] / ref["crps"]
        del row["config"]
    return {"teacher": str(teacher), "student": str(student), "dataset": spec.name, "split": split,
            "windows": int(w.valid.sum()), "origins": int(w.origins.size), "samples": samples, "seed": seed,
            "threads": threads, "batch_size": batch_size, "repeats": repeats,
            "distill": fcs["student"].manifest.extra.get("checkpoint", {}).get("training", {}).get("distill"),
            "rows": rows}


def _name(r: dict) -> str:
    return f"{r['model']} plain {r['steps']} (order {r['solver_order']})"


def format_report(m: dict) -> str:
    lines = [f"{m['windows']} {m['split']} windows of {m['dataset']}, {m['samples']} samples, {m['threads']} thread(s)",
             f"{'row':<30} {'crps':>8} {'/ ref':>6} {'cov 50/90':>10} {'1 window s':>11} {'all s':>8}"]
    for r in m["rows"]:
        lines.append(f"{_name(r):<30} {r['crps']:>8.4f} {r['crps_ratio']:>6.3f} "
                     f"{r['coverage_50']:>4.2f}/{r['coverage_90']:.2f} {r['latency_s']:>11.4f} {r['wall_s']:>8.1f}")
    return "\n".join(lines)


def markdown(m: dict, command: str) -> str:
    lines = ["<!-- distill:start -->", "## Distilled student vs its teacher", "",
             f"`{command}` ({m['windows']} {m['split']} windows of {m['dataset']}, {m['samples']} samples, "
             f"{m['threads']} thread(s); one window: median of {m['repeats']}; all: every window, {m['batch_size']} per "
             "call; docs/distillation.md).", "",
             "| model | steps | order | CRPS | / teacher plain 50 | cov 50/90 | one window s | all windows s |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in m["rows"]:
        lines.append(f"| {r['model']} | {r['steps']} | {r['solver_order']} | {r['crps']:.4f} | {r['crps_ratio']:.3f} | "
                     f"{r['coverage_50']:.2f}/{r['coverage_90']:.2f} | {r['latency_s']:.4f} | {r['wall_s']:.1f} |")
    return "\n".join(lines + ["<!-- distill:end -->"]) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--teacher", required=True, help="the teacher's artifact (NAME.json or any of its files)")
    ap.add_argument("--student", required=True, help="the student's artifact (dil-train --distill, then dil-export)")
    ap.add_argument("--split", choices=["test", "val"], default="val", help="the windows' split part [val]")
    ap.add_argument("--windows", type=int, default=None, help="evenly spaced origins [all]")
    ap.add_argument("--samples", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=5, help="timed one-window forecasts per row [5]")
    ap.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads [1]")
    ap.add_argument("--batch-size", type=int, default=4, help="windows per forecaster call [4, as dil-eval]")
    ap.add_argument("--json", default=None)
    ap.add_argument("--markdown", default=None)
    ap.add_argument("--quiet", action="store_true")
    a = ap.parse_args(argv)
    from dil.runtime.manifest import load_manifest

    s_manifest = load_manifest(a.student)
    if "distill" not in (s_manifest.extra.get("checkpoint", {}).get("training") or {}):
        ap.error(f"--student {a.student} is not a distilled student (dil-train --distill)")
    m = measure(a.teacher, a.student, a.split, a.windows, a.samples, a.seed, a.repeats, a.threads, a.batch_size,
                not a.quiet)
    command = "python benchmarks/distill.py " + " ".join(shlex.quote(x) for x in (argv or sys.argv[1:]))
    m["command"] = command
    print(format_report(m))
    if a.json:
        from dil.runtime.support.files import write_text

        write_text(a.json, json.dumps(m, indent=1) + "\n")
    if a.markdown:
        from dil.runtime.support.files import write_text

        write_text(a.markdown, markdown(m, command))
    return 0


if __name__ == "__main__":
    sys.exit(main())
