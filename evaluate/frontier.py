"""Steps from the frontier: an artifact's sampler defaults, measured on its validation windows
(docs/sampler.md section 14; `dil-bench --frontier [--write-defaults]`).

For each configuration, the plain DPM-Solver++ at PLAIN_STEPS and the fast sampler (lattice + token
cache) at FAST_STEPS, `run_frontier` scores CRPS (dil.evaluate.metrics, as dil-eval scores it) on
evenly spaced windows of the dataset's validation part (never the test part: the defaults are a
choice, made before the test) and times one window x `samples` (median of `repeats` forecasts
after a warm-up, all in this process). `choose_defaults` then applies the rule:

    reference  = the plain sampler at its most steps (50 by default)
    candidates = every configuration with CRPS <= (1 + tolerance) * reference CRPS (tolerance 1%)
    calibrated = the candidates whose 50% and 90% interval coverage are each no further from
                 nominal (0.5, 0.9) than the reference's plus CALIBRATION (2 points)
    default    = the calibrated candidate with the lowest one-window latency (ties: plain, then
                 fewer steps)

Why the calibration condition: fewer steps narrow a diffusion sampler's spread (on metro-traffic's
test windows, plain 5 steps: coverage 0.46 / 0.84, 7 steps 0.53 / 0.89, 20 steps 0.57 / 0.91) while
CRPS barely moves, and users read the intervals.

so the default is never slower than a plain configuration that is as accurate: where the token
cache cannot pay (short horizons, few tokens) the plain sampler is chosen, and its "why" says so.
The record it returns is what `dil.runtime.manifest.write_sampler_defaults` stores as the
manifest's "sampler_defaults"; the runtime (Forecaster, dil-run, dil-eval) then runs it by default.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from dil.evaluate.harness import (ALL, DEFAULT_BATCH_SIZE, EvalOptions, finite_or_none, protocol_windows,
                                  stream_forecasts)

PLAIN_STEPS = (5, 6, 7, 8, 10, 20, 50)
FAST_STEPS = (10, 20)
TOLERANCE = 0.01
CALIBRATION = 0.02  # how much further from nominal than the reference's a candidate's coverage may be
SPLIT = "val"
SAMPLERS = {"plain": (False, False), "fast": (True, True)}  # name -> (lattice, cache)


class FrontierError(ValueError):
    """The frontier cannot be measured or has no valid reference. One line."""


@dataclass(frozen=True)
class FrontierConfig:
    """What `run_frontier` measures.

    windows: validation windows (series x origin) to score, spread over as many evenly spaced origins
    as the validation part holds (spread_windows).
    samples, seed: per window, as dil-eval. plain_steps / fast_steps: the steps swept per sampler;
    the reference is the plain sampler at max(plain_steps). repeats: timed one-window forecasts per
    configuration, after one warm-up (the median counts). threads: ONNX Runtime intra-op threads
    (0: the cores available). dataset: a bundled dataset instead of the one the manifest's data
    record names; data: a table file instead (a model trained on a user's file: its training table,
    read with the dates and missing values the manifest records). tolerance: the CRPS margin of the
    rule. batch_size: windows per forecaster call.
    """

    windows: int = 48
    samples: int = 100
    seed: int = 0
    plain_steps: tuple = PLAIN_STEPS
    fast_steps: tuple = FAST_STEPS
    repeats: int = 3
    threads: int = 0
    dataset: str | None = None
    data: str | None = None
    tolerance: float = TOLERANCE
    batch_size: int = DEFAULT_BATCH_SIZE

    def __post_init__(self) -> None:
        for name in ("windows", "samples", "repeats", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise FrontierError(f"{name} must be a positive integer, got {value!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise FrontierError(f"seed must be an integer >= 0, got {self.seed!r}")
        if not isinstance(self.threads, int) or self.threads < 0:
            raise FrontierError(f"threads must be an integer >= 0 (0: the cores available), got {self.threads!r}")
        for name in ("plain_steps", "fast_steps"):
            steps = tuple(getattr(self, name))
            if any(isinstance(s, bool) or not isinstance(s, int) or not 1 <= s <= 1000 for s in steps):
                raise FrontierError(f"{name} must be integers in [1, 1000], got {list(steps)}")
            object.__setattr__(self, name, tuple(sorted(set(steps))))
        if not self.plain_steps:
            raise FrontierError("plain_steps is empty: the reference is the plain sampler at its most steps")
        if not 0 <= self.tolerance < 1:
            raise FrontierError(f"tolerance must be in [0, 1), got {self.tolerance!r}")


def label(row: dict) -> str:
    """'plain 10 steps', 'fast 20 steps'."""
    return f"{row['sampler']} {row['steps']} step" + "s" * (row["steps"] != 1)


def choose_defaults(rows: list[dict], tolerance: float = TOLERANCE) -> dict:
    """The rule of the module docstring, on measured rows (pure: no model, no clock).

    rows: dicts with "sampler" ("plain" or "fast"), "steps" (int), "crps" (float; None or NaN: not
    a candidate) and "latency_s" (one window, seconds). Returns {"lattice", "cache",
    "steps", "reference_crps", "crps", "latency_s", "reference": label, "tolerance",
    "why": one line}. Raises FrontierError without a plain row of finite CRPS at its most steps.
    """
    unknown = sorted({str(r["sampler"]) for r in rows} - set(SAMPLERS))
    if unknown:
        raise FrontierError(f"unknown sampler {unknown[0]!r} in the frontier rows (expected plain or fast)")
    plain = [r for r in rows if r["sampler"] == "plain"]
    if not plain:
        raise FrontierError("no plain-sampler row: the reference is the plain sampler at its most steps")
    ref = max(plain, key=lambda r: r["steps"])
    if not _finite(ref["crps"]):
        raise FrontierError(f"the reference ({label(ref)}) has no finite CRPS: {ref['crps']!r}")
    bound = (1.0 + tolerance) * ref["crps"]
    candidates = [r for r in rows if _finite(r["crps"]) and r["crps"] <= bound]
    calibrated = [r for r in candidates if _calibrated(r, ref)]
    best = min(calibrated or candidates, key=lambda r: (r["latency_s"], r["sampler"] != "plain", r["steps"]))
    lattice, cache = SAMPLERS[best["sampler"]]
    return {
        "lattice": lattice,
        "cache": cache,
        "steps": int(best["steps"]),
        "reference_crps": float(ref["crps"]),
        "crps": float(best["crps"]),
        "latency_s": float(best["latency_s"]),
        "reference": label(ref),
        "tolerance": float(tolerance),
        "why": _why(best, ref, rows, calibrated or candidates, tolerance)
        + ("" if calibrated or not candidates else "; no candidate had calibrated intervals"),
    }


def _calibrated(row: dict, ref: dict) -> bool:
    """Coverage of the 50% and 90% intervals at most CALIBRATION further from nominal than the
    reference's (unmeasured, here or in the reference: no objection)."""
    for k, nominal in (("coverage_50", 0.5), ("coverage_90", 0.9)):
        if row.get(k) is None or ref.get(k) is None or not _finite(ref[k]):
            continue
        if not _finite(row[k]) or abs(row[k] - nominal) > abs(ref[k] - nominal) + CALIBRATION:
            return False
    return True


def _finite(x) -> bool:
    return x is not None and bool(np.isfinite(x))


def _why(best: dict, ref: dict, rows: list, candidates: list, tolerance: float) -> str:
    """One line: why `best` won, and whether the token cache paid."""
    pct = f"{tolerance * 100:g}%"
    if best is ref:
        head = f"{label(best)}: the reference; no faster configuration is within {pct} of its CRPS"
    else:
        head = f"{label(best)}: CRPS within {pct} of {label(ref)}, fastest"
    other = "plain" if best["sampler"] == "fast" else "fast"
    near = [r for r in candidates if r["sampler"] == other]
    if near:
        rival = min(near, key=lambda r: (r["latency_s"], r["steps"]))
        slower = f"{label(rival)}: {rival['latency_s'] / best['latency_s']:.2f}x slower"
        return head + (f"; the token cache paid ({slower})" if other == "plain" else
                       f"; the token cache did not pay ({slower})")
    far = [r for r in rows if r["sampler"] == other and _finite(r["crps"])]
    if other == "fast" and far:
        rival = min(far, key=lambda r: (r["crps"], r["steps"]))
        change = f"CRPS {rival['crps'] / ref['crps'] - 1:+.1%}"
        if rival["crps"] <= (1.0 + tolerance) * ref["crps"]:  # close enough, but its intervals are not
            return head + (f"; the token cache did not pay (no fast configuration within {pct} with calibrated "
                           f"intervals: {label(rival)}, {change}, coverage {rival['coverage_50']:.2f}/"
                           f"{rival['coverage_90']:.2f} vs {ref['coverage_50']:.2f}/{ref['coverage_90']:.2f})")
        return head + f"; the token cache did not pay (no fast configuration within {pct}: {label(rival)}, {change})"
    return head


def run_frontier(engine, cfg: FrontierConfig = FrontierConfig(), progress: bool = True, say=None) -> dict:
    """Measure every configuration of `cfg` on the artifact `engine` (any path naming it) and choose.

    Returns {"rows": [...], "choice": record, "protocol": {...}}: each row {"sampler", "lattice",
    "cache", "steps", "crps", "crps_sample", "coverage_90", "latency_s" (median), "latencies_s",
    "token_fraction"}; `choice` the choose_defaults record plus how it was measured ("windows"
    scored, "origins", "samples", "seed", "split": "val", "dataset", "val_rows", "threads") and a
    compact "table" of the rows: the manifest's "sampler_defaults" as written by --write-defaults.
    say: callable for one-line notes (None: silent). Raises FrontierError, ManifestError, DataError
    or EvaluationError (one line) before any forecast when the inputs are wrong.
    """
    from dil.evaluate import machine
    from dil.evaluate.engine_eval import engine_data
    from dil.runtime import Forecaster

    say = say or (lambda line: None)
    threads = cfg.threads or machine.default_threads()
    fc = Forecaster.load(engine, threads=threads)
    trained = fc.manifest.data or {}
    dates = {} if cfg.data is None else {k: trained.get(k) for k in ("date_column", "date_format", "dayfirst")}
    spec, table = engine_data(engine, fc.manifest, cfg.dataset, cfg.data, columns=trained.get("columns") if cfg.data
                              else None, **dates)
    L, H = fc.context_length, fc.horizon
    w = spread_windows(protocol_windows(table, spec, L, H, cfg.windows, features=fc.features, part=SPLIT),
                       cfg.windows)
    if w.valid.sum() < cfg.windows:
        say(f"note: {spec.name}: the validation part holds {int(w.valid.sum())} windows ({w.origins.size} origins "
            f"x {len(w.names)} series), fewer than the {cfg.windows} asked for: all of them are used")
    busy = machine.busy()
    if busy:
        say(f"warning: {busy}, and the choice of the default rests on them")
    timing = _timing_window(w)
    options = EvalOptions(samples=cfg.samples, seed=cfg.seed, batch_size=cfg.batch_size, progress=progress)
    runs = [("plain", s) for s in cfg.plain_steps] + [("fast", s) for s in cfg.fast_steps]
    rows, configs = score_samplers(fc, w, options, runs)
    for row, latencies in zip(rows, _latencies(fc, timing, configs, cfg)):
        row["latency_s"], row["latencies_s"] = float(np.median(latencies)), latencies
    from dil.data.windows import split_bounds

    val_rows = [int(x) for x in split_bounds(spec, np.asarray(table.values).shape[0])[SPLIT]]
    choice = {
        **choose_defaults(rows, cfg.tolerance),
        "windows": int(w.valid.sum()), "origins": int(w.origins.size), "samples": cfg.samples, "seed": cfg.seed,
        "split": SPLIT, "dataset": spec.name, "val_rows": val_rows, "threads": threads,
        "table": [{k: r[k] for k in ("sampler", "steps", "crps", "coverage_50", "coverage_90", "latency_s",
                                     "token_fraction")} for r in rows],
    }
    protocol = {**asdict(cfg), "engine": str(engine), "dataset": spec.name, "context": L, "horizon": H,
                "horizon_tokens": H // fc.config.horizon_patch, "split": SPLIT, "val_rows": val_rows,
                "timing_window": timing[0], "busy_machine": busy, "threads": threads}
    protocol["plain_steps"], protocol["fast_steps"] = list(cfg.plain_steps), list(cfg.fast_steps)
    return finite_or_none({"rows": rows, "choice": choice, "protocol": protocol})


# The frontier dil-export measures (docs/sampler.md section 14): dil-bench --frontier's windows and
# samples, two plain step counts and one timing repeat fewer. On the shipped teacher it picks what the
# full frontier picked (plain, 10 steps) in 53 s on 2 busy cores; with 32 or 16 windows it did not
# (fast 10, plain 20): the coverage and latency differences it decides on are a few points. The
# default models of etth1, etth2, weather and exchange-rate take 22-28 s on 2 cores.
EXPORT_FRONTIER = dict(windows=48, samples=100, plain_steps=(5, 7, 10, 20, 50), fast_steps=(10, 20), repeats=2)


def spread_windows(w, n: int):
    """About n of w's valid windows (EvalWindows, O origins x C series), one per origin where w has n
    origins or more, else n // O or n // O + 1 per origin; each origin's series continue the previous
    origin's turn through its valid series, so every series gets its share.

    Why not every series of fewer origins: the windows of one origin share its days, so their
    coverages move together (the measurement on etth1 is in docs/sampler.md section 14)."""
    O = w.origins.size
    keep = np.zeros_like(w.valid)
    turn = 0
    for i in range(O):
        series = np.flatnonzero(w.valid[i])
        count = min(n // O + (i < n % O), series.size)
        if count:
            keep[i, series[(turn + np.arange(count)) % series.size]] = True
        turn += count
    return replace(w, valid=keep)


def score_samplers(fc, w, options, runs) -> tuple[list[dict], list]:
    """Score each (sampler, steps) or (sampler, steps, solver_order) of `runs` ("plain" or "fast",
    see SAMPLERS; the order defaults to SamplerConfig's) on the windows w with the forecaster fc:
    (rows, their SamplerConfigs); a row holds sampler, lattice, cache, steps, solver_order, crps,
    crps_sample, coverage_50, coverage_90 and token_fraction (network tokens computed / all)."""
    from dil.evaluate.engine_eval import forecaster_fn
    from dil.runtime.sampling.config import SamplerConfig

    rows, configs = [], []
    for sampler, steps, *order in runs:
        lattice, cache = SAMPLERS[sampler]
        config = SamplerConfig(steps=steps, lattice=lattice, cache=cache,
                               solver_order=order[0] if order else SamplerConfig.solver_order)
        configs.append(config)
        costs = []
        fn = forecaster_fn(fc, options.samples, steps, options.seed, costs, config=config)
        scores = stream_forecasts(fn, w, w.valid, replace(options, steps=steps), desc=f"{sampler} {steps} steps")
        metrics = scores.scores(ALL)
        full = sum(c.full_tokens for c in costs)
        rows.append({
            "sampler": sampler, "lattice": lattice, "cache": cache, "steps": steps,
            "solver_order": config.solver_order, "crps": metrics["crps"],
            "crps_sample": metrics["crps_sample"], "coverage_50": metrics["coverage_50"],
            "coverage_90": metrics["coverage_90"],
            "token_fraction": sum(c.tokens_computed for c in costs) / full if full else 1.0,
        })
    return rows, configs


def _timing_window(w):
    """(id, context [1, L], WindowFeatures of it or None): the first scored validation window."""
    from dil.evaluate.harness import window_ids

    o, c = np.argwhere(w.valid)[0]
    ident = window_ids(w.names, w.origins)[o][c]
    feats = None if w.features is None else w.features.take(np.array([o]))
    return ident, w.contexts[o, c][None], feats


def _latencies(fc, timing, configs: list, cfg: FrontierConfig) -> list[list[float]]:
    """Per config, the seconds of `cfg.repeats` one-window forecasts of cfg.samples samples, after
    one warm-up each. The configurations take turns within every repeat, so that a change of the
    machine's load hits all of them alike (the choice compares them)."""
    ident, ctx, feats = timing
    out = [[] for _ in configs]
    for n in range(cfg.repeats + 1):
        for times, config in zip(out, configs):
            start = time.perf_counter()
            fc.predict_windows(ctx, num_samples=cfg.samples, seed=cfg.seed, series_ids=[ident], config=config,
                               features=feats)
            if n:  # the first round is the warm-up (ONNX Runtime's first call of a shape allocates)
                times.append(time.perf_counter() - start)
    return out


def format_frontier(report: dict) -> str:
    """The frontier as a text table: CRPS / reference and latency / the chosen default, then the choice."""
    p, c = report["protocol"], report["choice"]
    threads = f"{p['threads']} thread" + "s" * (p["threads"] != 1)
    chosen = next(r for r in report["rows"] if (r["sampler"], r["steps"]) == (
        "fast" if c["cache"] else "plain", c["steps"]))
    lines = [
        f"frontier of {Path(p['engine']).name} on {c['origins']} validation origins of {p['dataset']} "
        f"(rows {p['val_rows'][0]}..{p['val_rows'][1] - 1}) = {c['windows']} windows, {c['samples']} samples, "
        f"seed {c['seed']}; horizon {p['horizon']} in {p['horizon_tokens']} tokens; latency: 1 window x "
        f"{c['samples']} samples, median of {p['repeats']} after a warm-up, {threads}",
        f"{'sampler':<7} {'steps':>5} {'crps':>8} {'/ reference':>11} {'cov 50/90':>10} {'latency s':>10} "
        f"{'/ default':>9} {'tokens':>7}",
    ]
    for r in report["rows"]:
        mark = "  <- default" if r is chosen else ("  (reference)" if label(r) == c["reference"] else "")
        ratio = r["crps"] / c["reference_crps"] if _finite(r["crps"]) and c["reference_crps"] else None
        tokens = "-" if r["token_fraction"] is None else f"{r['token_fraction']:.0%}"
        cov = f"{_num(r.get('coverage_50'), '{:.2f}')}/{_num(r.get('coverage_90'), '{:.2f}')}"
        lines.append(f"{r['sampler']:<7} {r['steps']:>5} {_num(r['crps'], '{:.4f}'):>8} {_num(ratio, '{:.3f}'):>11} {cov:>10} "
                     f"{r['latency_s']:>10.4f} {r['latency_s'] / chosen['latency_s']:>8.2f}x {tokens:>7}{mark}")
    lines.append(f"default: lattice {'on' if c['lattice'] else 'off'}, cache {'on' if c['cache'] else 'off'}, "
                 f"{c['steps']} steps ({c['why']})")
    return "\n".join(lines)


def _num(v, fmt: str) -> str:
    return "-" if not _finite(v) else fmt.format(v)


def check_write_defaults(engine) -> None:
    """ManifestError (one line) when the frontier's choice could not be recorded in the artifact
    `engine`: its folder is not writable, or it is a distilled student (which runs the steps it was
    trained for). Checked before the frontier runs, not after minutes of it."""
    from dil.runtime.manifest import ManifestError, load_manifest
    from dil.runtime.support.files import folder_problem

    manifest = load_manifest(engine)
    problem = folder_problem(manifest.path.parent)
    if problem:
        raise ManifestError(f"--write-defaults: {problem}")
    if "distill" in ((manifest.extra.get("checkpoint") or {}).get("training") or {}):
        raise ManifestError("--write-defaults: this artifact is a distilled student; it runs the steps it was trained "
                            "for (compare it with its teacher: benchmarks/distill.py, docs/distillation.md)")


def measure_defaults(engine, data=None, progress: bool = False, say=None,
                     config: FrontierConfig | None = None) -> tuple[dict | None, str]:
    """The frontier dil-export runs after writing an artifact (EXPORT_FRONTIER, on the validation
    windows of the data it was trained on), recorded as its "sampler_defaults".

    engine: any path naming the artifact. data: the training table file, for a model trained on a
    user's file (a bundled dataset is found by name). config: the frontier to measure (default:
    EXPORT_FRONTIER; its data is replaced by `data`). Returns (the recorded choice or None, one line
    saying what was recorded or why nothing was). Raises what run_frontier raises.
    """
    from dil.data.registry import DATASETS
    from dil.runtime.manifest import load_manifest, write_sampler_defaults

    manifest = load_manifest(engine)
    if manifest.sampler_defaults is not None:
        return None, "sampler defaults: the artifact's own (a distilled student runs the steps it was trained for)"
    if (manifest.data or {}).get("dataset") not in DATASETS and data is None:
        return None, ("sampler defaults: not measured: the model was trained on a local table; pass --data FILE "
                      "(or run dil-bench --engine ... --frontier --data FILE --write-defaults)")
    config = config or FrontierConfig(**EXPORT_FRONTIER)
    config = replace(config, data=None if data is None else str(data))
    report = run_frontier(engine, config, progress=progress, say=say)
    choice = report["choice"]
    path = write_sampler_defaults(engine, choice)
    return choice, (f"sampler defaults: {choice['why']} (on {choice['windows']} validation windows; written to "
                    f"{path.name})")
