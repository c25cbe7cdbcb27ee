"""Time vs frequency domain (docs/frequency.md): CRPS, tokens computed and the lattice + cache vs
plain frontier at equal CRPS, for a time-domain and a frequency-domain artifact of each dataset.

Run from the repository root (ONNX Runtime CPU), one --pair per dataset, all in one command:

    python benchmarks/domains.py \
        --pair metro-traffic=engines/metro-time.json,engines/metro-freq.json \
        --pair etth1-96=engines/etth1-96-time.json,engines/etth1-96-freq.json \
        --json docs/results/domains.json --markdown docs/results/domains.md

Per domain, every configuration of the sweep (the plain DPM-Solver++ and the fast sampler, lattice
+ E2-CRF token cache, each at --steps) forecasts the same evenly spaced windows of the --split part
with the same noise streams (the evaluation harness of dil-eval, dil.evaluate.harness) and is
scored by CRPS; its cost is counted twice: tokens computed (the network's token evaluations per
sample, from the runtime's SamplerStats: deterministic) and the median latency of one window x
--samples after a warm-up (the configurations take turns, dil.evaluate.frontier). Then, at equal
CRPS (within --tolerance, 1%, of the plain sampler at its most steps, the reference):

    plain  = the cheapest plain configuration within the tolerance
    fast   = the cheapest fast configuration within the tolerance
    speedup_tokens  = tokens(plain) / tokens(fast);  speedup_latency = latency(plain) / latency(fast)

("cheapest" by latency for the latency ratio and by tokens for the token ratio). A domain without a
fast configuration within the tolerance reports the fast configuration nearest in CRPS instead.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dil.evaluate.frontier import SAMPLERS  # plain: lattice and cache off; fast: both on

STEPS = (5, 6, 8, 10, 14, 20, 30, 50)
TOLERANCE = 0.01


@dataclass(frozen=True)
class Sweep:
    """What each domain runs: windows (evenly spaced origins of `split`), samples, seed, steps (the
    sweep, both samplers), repeats (timed one-window forecasts), threads (ONNX Runtime), batch_size
    (windows per forecaster call), dataset (a bundled dataset instead of the manifest's)."""

    windows: int = 48
    samples: int = 100
    seed: int = 0
    steps: tuple = STEPS
    repeats: int = 3
    threads: int = 1
    batch_size: int = 4
    split: str = "test"
    dataset: str | None = None


def measure(engine, sweep: Sweep, progress: bool = False) -> dict:
    """{"domain", "horizon", "horizon_tokens", "rows": [{"sampler", "steps", "crps", "coverage_50",
    "coverage_90", "tokens", "token_fraction", "latency_s"}]} of one artifact; tokens = network token
    evaluations per sample (steps x tokens x the computed fraction)."""
    from dil.evaluate.engine_eval import engine_data
    from dil.evaluate.frontier import _latencies, _timing_window, score_samplers
    from dil.evaluate.harness import EvalOptions, protocol_windows
    from dil.runtime import Forecaster

    fc = Forecaster.load(engine, threads=sweep.threads)
    spec, table = engine_data(engine, fc.manifest, sweep.dataset)
    L, H = fc.context_length, fc.horizon
    T = fc.config.horizon_tokens
    w = protocol_windows(table, spec, L, H, sweep.windows, features=fc.features, part=sweep.split)
    options = EvalOptions(samples=sweep.samples, seed=sweep.seed, batch_size=sweep.batch_size, progress=progress)
    rows, configs = score_samplers(fc, w, options, [(sampler, steps) for sampler in SAMPLERS for steps in sweep.steps])
    for row in rows:
        row["tokens"] = row["token_fraction"] * row["steps"] * T
    for row, times in zip(rows, _latencies(fc, _timing_window(w), configs, sweep)):
        row["latency_s"] = float(np.median(times))
    return {"engine": str(engine), "domain": fc.config.domain, "dataset": spec.name, "horizon": H,
            "horizon_tokens": T, "windows": int(w.valid.sum()), "rows": rows}


def compare(rows: list[dict], tolerance: float = TOLERANCE) -> dict:
    """The equal-CRPS comparison of the module docstring on one domain's rows (pure)."""
    plain = [r for r in rows if r["sampler"] == "plain"]
    ref = max(plain, key=lambda r: r["steps"])
    bound = (1.0 + tolerance) * ref["crps"]
    ok = [r for r in rows if np.isfinite(r["crps"]) and r["crps"] <= bound]
    out = {"reference": f"plain {ref['steps']}", "reference_crps": ref["crps"], "reference_tokens": ref["tokens"],
           "tolerance": tolerance}
    for key in ("tokens", "latency_s"):
        best = {s: min((r for r in ok if r["sampler"] == s), key=lambda r: r[key], default=None) for s in SAMPLERS}
        if best["fast"] is None:  # none within the tolerance: the nearest in CRPS, marked
            best["fast"] = min((r for r in rows if r["sampler"] == "fast"), key=lambda r: r["crps"])
            out[f"fast_within_tolerance_{key}"] = False
        p, f = best["plain"], best["fast"]
        name = "tokens" if key == "tokens" else "latency"
        out[f"by_{name}"] = {"plain": f"plain {p['steps']}", "plain_crps": p["crps"], "plain_cost": p[key],
                             "fast": f"fast {f['steps']}", "fast_crps": f["crps"], "fast_cost": f[key],
                             "speedup": p[key] / f[key] if f[key] else None}
    return out


def format_domain(m: dict, c: dict) -> str:
    """One domain as text: the rows, then the equal-CRPS comparison."""
    lines = [f"{m['domain']} domain: {Path(m['engine']).name} on {m['windows']} windows of {m['dataset']}, horizon "
             f"{m['horizon']} in {m['horizon_tokens']} tokens; reference {c['reference']} CRPS {c['reference_crps']:.4f}",
             f"{'sampler':<7} {'steps':>5} {'crps':>8} {'/ ref':>6} {'cov 50/90':>10} {'tokens':>8} {'latency s':>10}"]
    for r in m["rows"]:
        lines.append(f"{r['sampler']:<7} {r['steps']:>5} {r['crps']:>8.4f} {r['crps'] / c['reference_crps']:>6.3f} "
                     f"{r['coverage_50']:>4.2f}/{r['coverage_90']:.2f} {r['tokens']:>8.1f} {r['latency_s']:>10.4f}")
    for key in ("tokens", "latency"):
        b = c[f"by_{key}"]
        flag = "" if c.get(f"fast_within_tolerance_{'tokens' if key == 'tokens' else 'latency_s'}", True) else \
            " (no fast configuration within the tolerance: the nearest shown)"
        lines.append(f"equal CRPS by {key}: {b['plain']} ({b['plain_cost']:.4g}) vs {b['fast']} ({b['fast_cost']:.4g}): "
                     f"{b['speedup']:.2f}x{flag}")
    return "\n".join(lines)


def markdown(report: dict) -> str:
    """The section for docs/results.md: per pair, a table of both domains' rows and the comparison."""
    lines = ["## Time vs frequency domain", "",
             f"`{report['command']}` ({report['sweep']['windows']} evenly spaced {report['sweep']['split']} origins, "
             f"{report['sweep']['samples']} samples; tokens = network token evaluations per sample; latency: one "
             f"window, median of {report['sweep']['repeats']}, {report['sweep']['threads']} thread(s); "
             "docs/frequency.md).", ""]
    for label, pair in report["pairs"].items():
        lines += [f"### {label}", "", "| domain | sampler | steps | CRPS | / plain 50 | cov 50/90 | tokens | latency s |",
                  "|---|---|---:|---:|---:|---:|---:|---:|"]
        for name, d in pair.items():
            ref = d["comparison"]["reference_crps"]
            for r in d["rows"]:
                lines.append(f"| {name} | {r['sampler']} | {r['steps']} | {r['crps']:.4f} | {r['crps'] / ref:.3f} | "
                             f"{r['coverage_50']:.2f}/{r['coverage_90']:.2f} | {r['tokens']:.0f} | {r['latency_s']:.4f} |")
        lines.append("")
        for name, d in pair.items():
            c = d["comparison"]
            for key in ("tokens", "latency"):
                b = c[f"by_{key}"]
                lines.append(f"- {name}, equal CRPS (within {c['tolerance']:.0%} of {c['reference']}) by {key}: "
                             f"{b['plain']} vs {b['fast']}: **{b['speedup']:.2f}x**")
        lines.append("")
    return "\n".join(lines)


def _pair(text: str) -> tuple[str, str, str]:
    """LABEL=TIME,FREQUENCY -> (label, time artifact, frequency artifact); ValueError otherwise."""
    label, _, paths = text.partition("=")
    parts = paths.split(",")
    if not label or len(parts) != 2 or not all(parts):
        raise ValueError(text)
    return label, parts[0], parts[1]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pair", action="append", required=True, metavar="LABEL=TIME,FREQUENCY",
                    help="a dataset's time-domain and frequency-domain artifacts (NAME.json or any of their files); "
                         "repeat for several datasets")
    ap.add_argument("--windows", type=int, default=Sweep.windows, help="evenly spaced origins [48]")
    ap.add_argument("--samples", type=int, default=Sweep.samples, help="samples per window [100]")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", default=",".join(map(str, STEPS)), help="steps swept for both samplers")
    ap.add_argument("--repeats", type=int, default=Sweep.repeats, help="timed one-window forecasts [3]")
    ap.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads [1]")
    ap.add_argument("--split", choices=["test", "val"], default="test", help="the windows' split part [test]")
    ap.add_argument("--dataset", default=None, help="a bundled dataset instead of the manifests'")
    ap.add_argument("--tolerance", type=float, default=TOLERANCE, help="equal CRPS: within this share [0.01]")
    ap.add_argument("--json", default=None, help="write the measurements and comparisons here")
    ap.add_argument("--markdown", default=None, help="write the docs/results.md section here")
    ap.add_argument("--quiet", action="store_true")
    a = ap.parse_args(argv)
    try:
        steps = tuple(sorted({int(s) for s in a.steps.split(",") if s.strip()}))
        if not steps or min(steps) < 1:
            raise ValueError
    except ValueError:
        ap.error(f"--steps must be positive integers separated by commas, got {a.steps!r}")
    try:
        pairs = [_pair(p) for p in a.pair]
    except ValueError as exc:
        ap.error(f"--pair must be LABEL=TIME_ARTIFACT,FREQUENCY_ARTIFACT, got {exc}")
    sweep = Sweep(a.windows, a.samples, a.seed, steps, a.repeats, a.threads, split=a.split, dataset=a.dataset)
    report = {"command": "python benchmarks/domains.py " + " ".join(shlex.quote(x) for x in (argv or sys.argv[1:])),
              "sweep": {**sweep.__dict__, "steps": list(steps)}, "pairs": {}}
    from dil.runtime.manifest import load_manifest

    for label, *engines in pairs:  # every artifact's domain checked before any forecast
        for name, engine in zip(("time", "frequency"), engines):
            domain = load_manifest(engine).model.domain
            if domain != name:
                ap.error(f"--pair {label}: {engine} is a {domain}-domain model, expected {name}")
    for label, *engines in pairs:
        report["pairs"][label] = {}
        for name, engine in zip(("time", "frequency"), engines):
            m = measure(engine, sweep, progress=not a.quiet)
            c = compare(m["rows"], a.tolerance)
            report["pairs"][label][name] = {**m, "comparison": c}
            print(f"[{label}] " + format_domain(m, c), flush=True)
    from dil.runtime.support.files import write_text

    if a.json:
        write_text(Path(a.json), json.dumps(report, indent=2) + "\n")
    if a.markdown:
        write_text(Path(a.markdown), markdown(report) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
