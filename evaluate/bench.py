"""dil-bench: accuracy and cost of the samplers of one model, measured in one run on one machine.

Samplers (run names):
    torch-full          the PyTorch module, every token recomputed, the runtime's solver and steps
                        (dil.evaluate.reference.sampler, plain DPM-Solver++ of the artifact's
                        order: 2, or 1 for a distilled student, docs/distillation.md)
    runtime-full        the runtime (ONNX Runtime), lattice and cache off
    runtime-dil         the runtime with the lattice controller and the token cache on
    reference-ddpm1000  the PyTorch module sampled by 1000-step ancestral DDPM (dil.evaluate.reference.ancestral)

Each configuration (sampler x steps x batch shape series x samples) is measured in a fresh process
(dil.evaluate.bench_worker): load, warm up, `repeats` timed forecasts (median and spread), peak RSS
of that process. CRPS is computed once per (sampler, steps) on the same W test windows for every
run (the protocol windows of dil-eval, evenly spaced), from samples the worker writes.
The timed batches are test-part windows too (rolling origins, evenly spaced), one per series.
A model with time features or covariates gets them from the table rows for every sampler
(WindowFeatures, as dil-eval; written beside the contexts for the workers).
Torch and ONNX Runtime run with the same intra-op thread count (recorded); inter-op is sequential.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from dil.evaluate import bench_worker as W
from dil.evaluate import machine
from dil.evaluate.harness import finite_or_none, protocol_windows, score_samples, subset
from dil.runtime.sampling.schedule import DEFAULT_SPACING, SPACINGS
from dil.runtime.inputs.window_features import table_features

TORCH_NAMES = ("torch-full", "reference-ddpm1000")
STEPPED_NAMES = ("torch-full", "runtime-full", "runtime-dil")


class BenchError(RuntimeError):
    """The benchmark cannot run or a worker failed. One line."""


@dataclass
class BenchConfig:
    """What dil-bench measures; the defaults keep a run near 10 minutes on 2 cores (default model).

    steps: solver steps swept for 1-series batches. large_steps: for batches of more than one
    series (the full sweep: the same as steps). series: batch shapes (series per forecast).
    samples: samples per series. repeats / large_repeats / ddpm_repeats: timed forecasts of 1-series,
    multi-series and ddpm configurations (after one warm-up). ddpm_series: the shapes ddpm runs on.
    windows: W test windows (series-windows) every CRPS is computed on. threads: intra-op threads of
    torch and ONNX Runtime (default: the cores available). names: the samplers to run.
    isolate: one fresh process per configuration (peak RSS per configuration); False runs them in
    this process (quick checks; no RSS figure). spacing: the step grid of the stepped samplers
    ("logsnr" or "time", NoiseSchedule.sampling_grid; the same for torch-full and the runtime).
    """

    engine: Path
    dataset: str | None = None
    checkpoint: Path | None = None
    steps: tuple = (5, 10, 20, 50)
    large_steps: tuple = (20,)
    series: tuple = (1, 50)
    samples: int = 100
    repeats: int = 3
    large_repeats: int = 1
    ddpm_repeats: int = 1
    ddpm_series: tuple = (1,)
    windows: int = 3
    threads: int = 0
    seed: int = 0
    names: tuple = W.NAMES
    isolate: bool = True
    spacing: str = DEFAULT_SPACING

    def __post_init__(self) -> None:
        if self.threads <= 0:
            self.threads = machine.default_threads()
        unknown = set(self.names) - set(W.NAMES)
        if unknown:
            raise BenchError(f"unknown sampler(s) {sorted(unknown)}; choose from {', '.join(W.NAMES)}")
        for label, values in (("steps", self.steps), ("large_steps", self.large_steps), ("series", self.series),
                              ("ddpm_series", self.ddpm_series)):
            if not values or min(values) < 1:
                raise BenchError(f"{label} must be positive integers, got {list(values)}")
        if self.spacing not in SPACINGS:
            raise BenchError(f"spacing must be one of {', '.join(SPACINGS)}, got {self.spacing!r}")
        if max(self.steps + self.large_steps) > 1000:
            raise BenchError("steps must be <= 1000")
        for label in ("samples", "repeats", "large_repeats", "ddpm_repeats", "windows"):
            if getattr(self, label) < 1:
                raise BenchError(f"{label} must be >= 1, got {getattr(self, label)}")


@dataclass
class BenchRun:
    """One configuration, as sent to a worker (JSON)."""

    name: str
    steps: int | None  # None: the ancestral sampler's T steps
    series: int
    samples: int
    repeats: int
    warmup: str
    threads: int
    seed: int
    engine: str
    checkpoint: str | None
    timing_ctx: str = ""
    timing_ids: list | None = None
    crps_ctx: str | None = None
    crps_ids: list | None = None
    crps_out: str | None = None
    timing_feat: str | None = None  # .npz of the windows' WindowFeatures (None: the model has none)
    crps_feat: str | None = None
    spacing: str | None = None  # the step grid of a stepped sampler (None: the sampler's default)


def plan_runs(cfg: BenchConfig) -> list[BenchRun]:
    """Every configuration, smallest batches first; ddpm last on each shape."""
    runs = []
    for g in sorted(set(cfg.series)):
        steps = cfg.steps if g == 1 else cfg.large_steps
        reps = cfg.repeats if g == 1 else cfg.large_repeats
        for name in (n for n in STEPPED_NAMES if n in cfg.names):
            for s in sorted(set(steps)):
                warm = "full" if reps > 1 else "short"  # a single timed repeat: do not pay twice
                runs.append(BenchRun(name, s, g, cfg.samples, reps, warm, cfg.threads, cfg.seed, str(cfg.engine), None,
                                     spacing=cfg.spacing))
        if "reference-ddpm1000" in cfg.names and g in cfg.ddpm_series:
            runs.append(BenchRun("reference-ddpm1000", None, g, cfg.samples, cfg.ddpm_repeats, "short", cfg.threads,
                                 cfg.seed, str(cfg.engine), None))
    return runs


def timing_windows(table, spec, context: int, horizon: int, count: int):
    """`count` test-part windows for the timed batches: contexts float64 [count, L], ids (see
    timing_rows)."""
    return timing_rows(table, spec, context, horizon, count)[:2]


def timing_rows(table, spec, context: int, horizon: int, count: int):
    """`count` test-part windows for the timed batches: contexts float64 [count, L], ids, and their
    origins int64 [count] (for their WindowFeatures).

    Rolling origins (stride 1) over the test part, every series, evenly spaced; windows whose
    context has no observed value are left out; a test part with fewer windows is cycled (the
    copies get distinct ids, hence distinct noise).
    """
    from dil.data.windows import split_bounds, window_origins
    from dil.evaluate.harness import gather

    values = np.asarray(table.values, dtype=np.float64)
    a, b = split_bounds(spec, values.shape[0])["test"]
    origins = window_origins(values.shape[0], context, horizon, a, b, stride=1)
    if origins.size == 0:
        raise BenchError(f"{spec.name}: the test part holds no window of context {context} + horizon {horizon}")
    ctx = gather(values, origins, context, 0)  # [O, C, L]
    valid = ~np.all(np.isnan(ctx), axis=-1)
    if not valid.any():
        raise BenchError(f"{spec.name}: every test window has an all-missing context")
    pairs = np.argwhere(valid)
    take = np.round(np.linspace(0, len(pairs) - 1, min(count, len(pairs)))).astype(np.int64)
    pick = pairs[np.resize(take, count)]
    ids = [f"{table.names[c]}@{int(origins[o])}" for o, c in pick]
    ids = [i if n < len(take) else f"{i}#{n // len(take)}" for n, i in enumerate(ids)]
    return ctx[pick[:, 0], pick[:, 1]], ids, origins[pick[:, 0]]


def save_features(path: Path, feats) -> str | None:
    """WindowFeatures to an .npz for a worker (W.load_features reads it); None for none."""
    if feats is None:
        return None
    np.savez(path, context_known=feats.context_known, context_past=feats.context_past,
             horizon_known=feats.horizon_known)
    return str(path)


def _launch(run: BenchRun, isolate: bool) -> dict:
    spec = asdict(run)
    if not isolate:
        return W.run(spec)
    proc = subprocess.run(
        [sys.executable, "-m", "dil.evaluate.bench_worker"], input=json.dumps(spec), capture_output=True,
        text=True, env=W.thread_env(run.threads),
    )
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
        raise BenchError(f"{run.name} ({run.series} series, steps {run.steps}) failed: {last}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _entry(run: BenchRun, res: dict, steps_of_ddpm: int, isolated: bool) -> dict:
    full = res["full_tokens"]
    return {
        "name": run.name,
        "steps": steps_of_ddpm if run.steps is None else run.steps,
        "series": run.series,
        "samples": run.samples,
        "latency_s_median": res["latency_s_median"],
        "crps": None,
        "tokens_computed": res["tokens_computed"],
        "engine_calls": res["engine_calls"],
        "control_share": res["control_share"],
        "peak_rss_mb": res["peak_rss_mb"] if isolated else None,
        "latency_s_min": res["latency_s_min"],
        "latency_s_max": res["latency_s_max"],
        "latency_s_iqr": res["latency_s_iqr"],
        "latencies_s": res["latencies_s"],
        "repeats": run.repeats,
        "warmup": run.warmup,
        "token_fraction": res["tokens_computed"] / full if full else None,
        "encode_calls": res["encode_calls"],
        "base_rss_mb": res["base_rss_mb"] if isolated else None,
        "load_s": res["load_s"],
        "loaded": {"torch": res["torch_loaded"], "onnxruntime": res["onnxruntime_loaded"]},
        **({"sampler_stats": res["sampler_stats"]} if "sampler_stats" in res else {}),
    }


def run_bench(cfg: BenchConfig, progress: bool = True, say=None) -> dict:
    """Run every configuration of `cfg`; returns the JSON-ready report
    {"runs": [...], "ratios": [...], "skipped": [...], "protocol": {...}, "import": {...},
     "machine": {...}, "versions": {...}}. say: callable for one-line notes (skipped runs)."""
    from tqdm.auto import tqdm

    from dil.evaluate.engine_eval import engine_data
    from dil.runtime.manifest import load_manifest

    say = say or (lambda line: None)
    manifest = load_manifest(cfg.engine)
    mc = manifest.model
    spec, table = engine_data(cfg.engine, manifest, cfg.dataset)
    checkpoint, reason = _torch_checkpoint(cfg)
    skipped = []
    if reason:
        say(f"torch-full and reference-ddpm1000 skipped: {reason}")
        skipped = [{"name": n, "reason": reason} for n in TORCH_NAMES if n in cfg.names]
    runs = [r for r in plan_runs(cfg) if checkpoint is not None or r.name not in TORCH_NAMES]
    if not runs:
        raise BenchError(f"nothing to run: {reason}")
    busy = machine.busy()  # after the input checks: a bad input gets its one-line error alone
    if busy:
        say(f"warning: {busy}")

    ew = protocol_windows(table, spec, mc.context_length, mc.horizon, features=manifest.features)
    mask = subset(ew.valid, cfg.windows)
    ids_all = np.array([[f"{n}@{int(o)}" for n in ew.names] for o in ew.origins], dtype=object)
    report_runs, crps_of = [], {}
    with tempfile.TemporaryDirectory(prefix="dil-bench-") as tmp:
        tmp = Path(tmp)
        np.save(tmp / "crps_ctx.npy", ew.contexts[mask], allow_pickle=False)
        crps_feat = save_features(tmp / "crps_feat.npz", None if ew.features is None
                                  else ew.features.take(np.argwhere(mask)[:, 0]))
        timing_ids, timing_feat = {}, {}
        for g in sorted(set(r.series for r in runs)):
            ctx, timing_ids[g], origins = timing_rows(table, spec, mc.context_length, mc.horizon, g)
            np.save(tmp / f"timing_{g}.npy", ctx, allow_pickle=False)
            feats = table_features(table, manifest.features, origins, mc.context_length, mc.horizon)
            timing_feat[g] = save_features(tmp / f"timing_{g}_feat.npz", feats)
        bar = tqdm(runs, desc="dil-bench", unit="run", disable=None if progress else True)
        for n, run in enumerate(bar):
            bar.set_postfix_str(f"{run.name} {run.series}x{run.samples} steps={run.steps or manifest.schedule.num_steps}")
            key = (run.name, run.steps)
            run = replace(run, checkpoint=None if checkpoint is None else str(checkpoint),
                          timing_ctx=str(tmp / f"timing_{run.series}.npy"), timing_ids=timing_ids[run.series],
                          timing_feat=timing_feat[run.series])
            if key not in crps_of:  # the first run of a (sampler, steps) also forecasts the CRPS windows
                run = replace(run, crps_ctx=str(tmp / "crps_ctx.npy"), crps_ids=list(ids_all[mask]),
                              crps_out=str(tmp / f"crps_{n}.npy"), crps_feat=crps_feat)
            res = _launch(run, cfg.isolate)
            if "skipped" in res:
                if not any(x["name"] == run.name for x in skipped):
                    say(f"{run.name} skipped: {res['skipped']}")
                skipped.append({"name": run.name, "steps": run.steps, "series": run.series, "reason": res["skipped"]})
                crps_of.setdefault(key, None)
                continue
            if run.crps_out:
                crps_of[key] = score_samples(ew, mask, np.load(run.crps_out, allow_pickle=False))
            report_runs.append(_entry(run, res, manifest.schedule.num_steps, cfg.isolate))
            report_runs[-1]["_key"] = key
    for r in report_runs:
        metrics = crps_of.get(r.pop("_key"))
        r["crps"] = None if metrics is None else metrics["crps"]
        r["metrics"] = metrics
    return finite_or_none({
        "runs": report_runs,
        "ratios": ratios(report_runs),
        "skipped": skipped,
        "protocol": {
            "engine": str(cfg.engine),
            "dataset": spec.name,
            "context": mc.context_length,
            "horizon": mc.horizon,
            "crps_windows": int(mask.sum()),
            "crps_window_ids": [str(i) for i in ids_all[mask]],
            "crps": "mean weighted quantile loss over 19 levels 0.05..0.95, normalised by sum |y| (dil-eval's)",
            "samples": cfg.samples,
            "seed": cfg.seed,
            "threads": cfg.threads,
            "busy_machine": busy,
            "load_average_at_end": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
            "isolated_processes": cfg.isolate,
            "peak_rss": "peak resident set size (VmHWM) of a fresh process per configuration (load + warm-up + timed forecasts)"
            if cfg.isolate else "not measured (in-process run)",
            "control_share": "1 - time inside the network (ONNX Runtime session.run / torch module call) / wall time",
            "checkpoint": None if checkpoint is None else checkpoint.name,
            "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()
                       if k not in ("engine", "checkpoint", "dataset")},
        },
        "import": machine.import_time(),
        "machine": machine.machine_info(cfg.threads),
        "versions": machine.versions(),
    })


def _torch_checkpoint(cfg: BenchConfig):
    """(verified checkpoint folder for the torch runs, None) or (None, why they cannot run).

    An explicit cfg.checkpoint that cannot be used is an error (BenchError); without one, the torch
    runs are skipped when torch or the manifest's run is missing.
    """
    if not any(n in cfg.names for n in TORCH_NAMES):
        return None, None
    from dil.runtime.support.deps import MissingDependency
    from dil.evaluate.torch_baselines import ReferenceUnavailable, load_reference

    try:
        return load_reference(cfg.engine, cfg.checkpoint).run, None
    except (MissingDependency, ReferenceUnavailable) as exc:
        if cfg.checkpoint is not None:
            raise BenchError(str(exc)) from None
        return None, str(exc)


def ratios(runs: list[dict]) -> list[dict]:
    """runtime-dil against each other sampler, and runtime-full against torch-full, per shape and steps
    (ddpm: its one configuration per shape). speedup = other latency / this latency; crps_change =
    this CRPS / other CRPS - 1 (negative = better)."""
    by = {(r["name"], r["series"], r["steps"]): r for r in runs}
    out = []
    pairs = [("runtime-dil", "runtime-full"), ("runtime-dil", "torch-full"), ("runtime-full", "torch-full"),
             ("runtime-dil", "reference-ddpm1000")]
    for (name, series, steps), r in sorted(by.items(), key=lambda kv: (kv[0][1], kv[0][2], kv[0][0])):
        for this, other in pairs:
            if name != this:
                continue
            o = next((x for k, x in by.items() if k[0] == other and k[1] == series), None) \
                if other == "reference-ddpm1000" else by.get((other, series, steps))
            if o is None:
                continue
            crps = r["crps"] / o["crps"] - 1.0 if r["crps"] is not None and o["crps"] else None
            out.append({"run": this, "vs": other, "series": series, "steps": steps, "vs_steps": o["steps"],
                        "speedup": o["latency_s_median"] / r["latency_s_median"], "crps_change": crps})
    return out

