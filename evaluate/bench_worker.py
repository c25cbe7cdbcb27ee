"""One dil-bench configuration, measured in a fresh process (`python -m dil.evaluate.bench_worker`).

A configuration is one sampler (name) at one number of steps on one batch shape (series x samples).
The process loads only what that sampler needs (the runtime never imports torch; the torch
samplers never load ONNX Runtime), so its peak resident set size (VmHWM; see peak_rss_mb) is the memory
a user of that sampler pays: interpreter, libraries, weights, allocator arenas and working arrays.

Protocol per configuration: load, one warm-up forecast ("full": the same forecast; "short": the
same batch with 2 steps, which initialises the engine's kernels, threads and memory arena for
that batch), then `repeats` timed forecasts, then (optionally, after the peak RSS is read, so it
does not count) the forecasts of the CRPS windows, saved for the parent to score.

stdin: a JSON spec (see BenchRun in dil.evaluate.bench). stdout: one JSON line (the result).
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
import resource
import sys
import time

import numpy as np

NAMES = ("torch-full", "runtime-full", "runtime-dil", "reference-ddpm1000")
WARMUP_STEPS = 2
CRPS_CHUNK = 50  # windows per forecast call when forecasting the CRPS windows


class Skip(Exception):
    """This configuration cannot run in this build (e.g. the runtime has no lattice/cache yet)."""


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, MiB.

    Linux: VmHWM of /proc/self/status, the high-water mark of this process's own address space.
    getrusage's ru_maxrss is not used there: Linux carries it over from the parent across fork and
    exec, so a worker started by a 400 MB parent would report at least 400 MB. Elsewhere ru_maxrss
    (bytes on macOS, KiB otherwise).
    """
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except (OSError, ValueError, IndexError):
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024.0 * 1024.0) if sys.platform == "darwin" else peak / 1024.0


class _Timed:
    """Wraps a module method: counts calls and accumulates the seconds spent inside."""

    def __init__(self, fn):
        self.fn, self.calls, self.seconds = fn, 0, 0.0

    def __call__(self, *args, **kw):
        t0 = time.perf_counter()
        try:
            return self.fn(*args, **kw)
        finally:
            self.seconds += time.perf_counter() - t0
            self.calls += 1


def _runtime_options(lattice: bool, cache: bool, predict) -> dict:
    """Keyword arguments of Forecaster.predict_windows that select the sampler, or Skip.

    Written against SamplerConfig(lattice=..., cache=...): a build whose SamplerConfig has no such
    fields has only the plain full-recompute sampler.
    """
    from dil.runtime.sampling.config import SamplerConfig

    fields = {f.name for f in dataclasses.fields(SamplerConfig)}
    if not {"lattice", "cache"} <= fields:
        if lattice or cache:
            raise Skip("this build's SamplerConfig has no lattice/cache settings (runtime-dil not available)")
        return {}
    params = inspect.signature(predict).parameters
    if "config" in params:  # a complete config: no override merging on the way
        return {"config": {"lattice": lattice, "cache": cache}}
    if ("lattice" in params and "cache" in params) or any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return {"lattice": lattice, "cache": cache}
    raise Skip("Forecaster.predict_windows takes no lattice/cache settings")


def load_features(path: str | None):
    """The WindowFeatures dil-bench wrote to `path` (bench.save_features), None for none."""
    if not path:
        return None
    from dil.runtime.inputs.window_features import WindowFeatures

    with np.load(path, allow_pickle=False) as z:
        return WindowFeatures(z["context_known"], z["context_past"], z["horizon_known"])


def _runtime(spec: dict):
    from dil.runtime import Forecaster
    from dil.runtime.sampling.config import SamplerConfig

    fc = Forecaster.load(spec["engine"], threads=spec["threads"])
    opts = _runtime_options(spec["name"] == "runtime-dil", spec["name"] == "runtime-dil", fc.predict_windows)
    spacing = {"spacing": spec["spacing"]} if spec.get("spacing") else {}  # None: the sampler's default grid
    order = fc.default_config.solver_order  # the artifact's: 1 for a distilled student (docs/distillation.md)

    def forecast(ctx, ids, steps, feats=None):
        kw = dict(opts)
        if "config" in kw:
            kw["config"] = SamplerConfig(steps=steps, solver_order=order, **kw["config"], **spacing)
        else:
            kw.update(steps=steps, **spacing)
        f = fc.predict_windows(ctx, num_samples=spec["samples"], seed=spec["seed"], series_ids=list(ids),
                               batch_series=len(ids), features=feats, **kw)
        st = f.stats
        if st.steps != steps:  # the sampler must have run the steps asked for
            raise RuntimeError(f"{spec['name']}: asked for {steps} steps, the sampler ran {st.steps}")
        return f.samples, {
            "tokens_computed": int(st.tokens_computed), "full_tokens": int(st.full_tokens),
            "engine_calls": int(st.engine_calls), "encode_calls": int(st.encode_calls),
            "engine_seconds": float(st.engine_seconds), "sampler": st.to_dict(),
        }

    return forecast


def _torch(spec: dict):
    import torch

    torch.set_num_threads(spec["threads"])
    try:
        torch.set_num_interop_threads(1)  # sequential between ops, as ONNX Runtime's default
    except RuntimeError:  # in-process runs: torch has already started its pools
        pass
    from dil.evaluate.reference.ancestral import ancestral_forecast
    from dil.evaluate.torch_baselines import feature_arguments
    from dil.export.weights import load_torch_model
    from dil.evaluate.reference.sampler import reference_forecast

    from dil.runtime.manifest import load_manifest

    ckpt = load_torch_model(spec["checkpoint"])  # a run folder or the artifact's weights file
    model, schedule = ckpt.model, ckpt.schedule
    order = load_manifest(spec["engine"]).default_sampler().solver_order  # the runtime samplers' order
    timed = _Timed(model.full_step)
    model.full_step = timed  # instance attribute: the samplers' model.full_step(...) calls land here
    H = model.config.horizon
    spacing = {"spacing": spec["spacing"]} if spec.get("spacing") else {}  # None: the sampler's default grid

    def forecast(ctx, ids, steps, feats=None):
        calls0, sec0 = timed.calls, timed.seconds
        extra = feature_arguments(feats)
        if steps is None:
            out = ancestral_forecast(model, schedule, ctx, spec["samples"], spec["seed"], list(ids), **extra).samples
            steps = schedule.num_steps
        else:
            out = reference_forecast(model, schedule, ctx, spec["samples"], steps, spec["seed"], list(ids),
                                     solver_order=order, **extra, **spacing).samples
        calls = timed.calls - calls0
        # full_step computes every horizon token of every row (and re-encodes the context).
        tokens = len(ids) * spec["samples"] * H * calls
        return out, {
            "tokens_computed": tokens, "full_tokens": len(ids) * spec["samples"] * H * steps,
            "engine_calls": calls, "encode_calls": calls, "engine_seconds": timed.seconds - sec0,
        }

    return forecast


def run(spec: dict) -> dict:
    """Measure one configuration (see the module docstring); returns the JSON-ready result."""
    t0 = time.perf_counter()
    name = spec["name"]
    if name not in NAMES:
        raise ValueError(f"unknown sampler {name!r}; one of {NAMES}")
    try:
        forecast = _torch(spec) if name in ("torch-full", "reference-ddpm1000") else _runtime(spec)
    except Skip as exc:
        return {"skipped": str(exc)}
    load_s = time.perf_counter() - t0
    base_rss = peak_rss_mb()

    ctx = np.load(spec["timing_ctx"], allow_pickle=False)
    ids = spec["timing_ids"]
    feats = load_features(spec.get("timing_feat"))
    steps = spec["steps"]  # None: the ancestral sampler (its T steps)
    if spec["warmup"] == "full":
        forecast(ctx, ids, steps, feats)
    else:  # ddpm warms up through the same module call as torch-full
        forecast(ctx, ids, WARMUP_STEPS if steps is None else min(WARMUP_STEPS, steps), feats)
    latencies, engine_s, info = [], [], {}
    for _ in range(spec["repeats"]):
        t1 = time.perf_counter()
        _, info = forecast(ctx, ids, steps, feats)
        latencies.append(time.perf_counter() - t1)
        engine_s.append(info["engine_seconds"])
    peak = peak_rss_mb()

    if spec.get("crps_out"):
        cctx = np.load(spec["crps_ctx"], allow_pickle=False)
        cids = spec["crps_ids"]
        cfeat = load_features(spec.get("crps_feat"))
        parts = [forecast(cctx[a : a + CRPS_CHUNK], cids[a : a + CRPS_CHUNK], steps,
                          None if cfeat is None else cfeat.take(slice(a, a + CRPS_CHUNK)))[0]
                 for a in range(0, len(cids), CRPS_CHUNK)]
        np.save(spec["crps_out"], np.concatenate(parts).astype(np.float64), allow_pickle=False)

    lat = np.asarray(latencies)
    return {
        "latencies_s": [float(x) for x in lat],
        "latency_s_median": float(np.median(lat)),
        "latency_s_min": float(lat.min()),
        "latency_s_max": float(lat.max()),
        "latency_s_iqr": [float(np.percentile(lat, 25)), float(np.percentile(lat, 75))],
        # Everything outside the network (NumPy control, solver, scaling, quantiles) / wall time.
        "control_share": float(1.0 - np.sum(engine_s) / np.sum(lat)),
        "engine_s_median": float(np.median(engine_s)),
        "tokens_computed": info["tokens_computed"],
        "full_tokens": info["full_tokens"],
        "engine_calls": info["engine_calls"],
        "encode_calls": info["encode_calls"],
        "peak_rss_mb": peak,
        "base_rss_mb": base_rss,
        "load_s": load_s,
        "torch_loaded": "torch" in sys.modules,
        "onnxruntime_loaded": "onnxruntime" in sys.modules,
        **({"sampler_stats": info["sampler"]} if "sampler" in info else {}),
    }


def main() -> None:
    spec = json.loads(sys.stdin.read())
    result = run(spec)
    sys.stdout.write(json.dumps(result) + "\n")


def thread_env(threads: int) -> dict:
    """Environment of a worker: every thread pool (OpenMP, BLAS) pinned to `threads`."""
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[var] = str(threads)
    return env


if __name__ == "__main__":
    main()
