"""The plain sampler on the lean full-step graph (`denoise_full`) vs the denoise graph it used before.

    OMP_NUM_THREADS=1 python benchmarks/full_step.py --threads 1             # the shipped model
    OMP_NUM_THREADS=1 python benchmarks/full_step.py --threads 1 --windows 1 4 16 --repeats 15
    OMP_NUM_THREADS=1 python benchmarks/full_step.py --threads 1 --session-options
    OMP_NUM_THREADS=1 python benchmarks/full_step.py --threads 1 --calls --windows 1 2 4 8 16 --repeats 5

Forecast mode: `Forecaster.predict` of W hourly series x 100 samples at the artifact's default
sampler (the shipped model: plain DPM-Solver++, 10 steps), once on the new path and once with the
engine's full-step capabilities switched off (`engine.full_step = engine.full_step_kv = False`:
every step calls `denoise` with the empty token cache, as before). The two paths take turns within each repeat, so that a
change of machine load hits both alike; it prints the median wall time of a forecast, per window,
and the ratio old / new, and checks that both paths give the same samples (max abs difference).

--calls: the batch path's cost per window (docs/sampler.md section 12): `Forecaster.predict` of W
series x 100 samples with all W in one engine call and as the runtime splits them (at most
chunks.CPU_CALL_TOKENS token rows per call on a CPU), taking turns; it prints the median ms per
window of each, relative to one window alone, and checks that the split changes no sample.

--session-options: the median time of one denoise_full call (1 x 100 rows) under ONNX Runtime
session settings (graph optimisation level, spinning, execution mode), taking turns likewise.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd


def _history(windows: int, length: int, seed: int = 0) -> pd.DataFrame:
    """Hourly random walks, one column per series (the cost does not depend on the values)."""
    rng = np.random.default_rng(seed)
    index = pd.date_range("2018-01-01", periods=length, freq="h")
    return pd.DataFrame(3000 + 100 * rng.standard_normal((length, windows)).cumsum(0), index=index,
                        columns=[f"s{i}" for i in range(windows)])


def forecast_times(engine_path, windows: list[int], samples: int, repeats: int, threads: int) -> list[dict]:
    """[{windows, old_ms, new_ms, ratio, max_abs_diff}] for each window count."""
    from dil.runtime import Forecaster

    forecaster = Forecaster.load(engine_path, threads=threads)
    engine = forecaster.engine
    if not engine.full_step:
        raise SystemExit(f"{engine.manifest.path} has no denoise_full graph: re-export it with dil-export")
    rows = []
    for w in windows:
        history = _history(w, forecaster.config.context_length + 24)

        lean_kv = getattr(engine, "full_step_kv", False)

        def run(full: bool):
            engine.full_step = full
            engine.full_step_kv = lean_kv and full
            t0 = time.perf_counter()
            f = forecaster.predict(history, num_samples=samples, seed=0, batch_series=w)
            return time.perf_counter() - t0, f.standardised()

        run(True), run(False)  # warm-up
        times = {True: [], False: []}
        for _ in range(repeats):
            for full in (True, False):
                times[full].append(run(full)[0])
        diff = float(np.abs(run(True)[1] - run(False)[1]).max())
        engine.full_step, engine.full_step_kv = True, lean_kv
        old, new = np.median(times[False]) * 1e3, np.median(times[True]) * 1e3
        rows.append({"windows": w, "old_ms": old, "new_ms": new, "ratio": old / new, "max_abs_diff": diff})
    return rows


def call_times(engine_path, windows: list[int], samples: int, repeats: int, threads: int) -> list[dict]:
    """[{windows, one_call_ms, split_ms, calls, max_abs_diff}] per window count: the median wall
    time of a forecast of W windows run as one engine call per step and as series_per_call splits it."""
    from dil.runtime import Forecaster
    from dil.runtime.sampling import chunks

    forecaster = Forecaster.load(engine_path, threads=threads)
    limit, rows = chunks.CPU_CALL_TOKENS, []
    for w in windows:
        history = _history(w, forecaster.config.context_length + 24)

        def run(split: bool):
            chunks.CPU_CALL_TOKENS = limit if split else 2**62
            try:
                t0 = time.perf_counter()
                f = forecaster.predict(history, num_samples=samples, seed=0, batch_series=w)
                return time.perf_counter() - t0, f
            finally:
                chunks.CPU_CALL_TOKENS = limit

        run(True), run(False)  # warm-up
        times = {True: [], False: []}
        for _ in range(repeats):
            for split in (False, True):
                times[split].append(run(split)[0])
        (_, a), (_, b) = run(True), run(False)
        rows.append({"windows": w, "one_call_ms": np.median(times[False]) * 1e3, "split_ms": np.median(times[True]) * 1e3,
                     "calls": a.stats.encode_calls, "max_abs_diff": float(np.abs(a.samples - b.samples).max())})
    return rows


SESSION_VARIANTS = {
    "default (ORT_ENABLE_ALL)": {},
    "ORT_ENABLE_EXTENDED": {"graph_optimization_level": "ORT_ENABLE_EXTENDED"},
    "ORT_ENABLE_BASIC": {"graph_optimization_level": "ORT_ENABLE_BASIC"},
    "no spinning": {"config": {"session.intra_op.allow_spinning": "0"}},
    "inter_op 1, sequential": {"inter_op_num_threads": 1, "execution_mode": "ORT_SEQUENTIAL"},
}


def session_times(engine_path, rows: int, repeats: int, threads: int) -> dict:
    """{variant: median ms} of one denoise_full call on G = 1 x N = rows under each session setting."""
    import onnxruntime as ort

    from dil.runtime.manifest import load_manifest

    m = load_manifest(engine_path)
    cfg = m.model
    sessions = {}
    for name, opts in SESSION_VARIANTS.items():
        so = ort.SessionOptions()
        so.log_severity_level = 3
        so.intra_op_num_threads = threads
        for key, value in opts.items():
            if key == "config":
                for k, v in value.items():
                    so.add_session_config_entry(k, v)
            elif key == "graph_optimization_level":
                so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, value)
            elif key == "execution_mode":
                so.execution_mode = getattr(ort.ExecutionMode, value)
            else:
                setattr(so, key, value)
        sessions[name] = ort.InferenceSession(str(m.graph_path("denoise_full")), so, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    T, Lp = cfg.horizon_tokens, cfg.context_length // cfg.context_patch
    feeds = {"x_hor": rng.standard_normal((1, rows, T, cfg.horizon_patch * cfg.horizon_features)),
             "t_feat": rng.standard_normal((1, rows, cfg.time_embed_dim)),
             "k_ctx": rng.standard_normal((cfg.num_layers, 1, Lp, cfg.d_model)),
             "v_ctx": rng.standard_normal((cfg.num_layers, 1, Lp, cfg.d_model))}
    feeds = {k: v.astype(np.float32) for k, v in feeds.items()}
    times = {k: [] for k in sessions}
    for s in sessions.values():
        s.run(None, feeds)
    for _ in range(repeats):
        for name, s in sessions.items():
            t0 = time.perf_counter()
            s.run(None, feeds)
            times[name].append(time.perf_counter() - t0)
    return {k: float(np.median(v)) * 1e3 for k, v in times.items()}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engine", default=None, help="artifact (default: the shipped model)")
    parser.add_argument("--windows", type=int, nargs="+", default=[1, 16], help="series per forecast (default 1 16)")
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=11)
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads (default 1)")
    parser.add_argument("--session-options", action="store_true", help="time ONNX Runtime session settings instead")
    parser.add_argument("--calls", action="store_true", help="time W windows in one engine call vs split per "
                        "chunks.CPU_CALL_TOKENS instead")
    args = parser.parse_args(argv)
    from dil.runtime.manifest import default_artifact

    engine = args.engine or default_artifact()
    if args.calls:
        print(f"{'windows':>7} {'one call ms/window':>19} {'split ms/window':>16} {'calls':>6} {'max |diff|':>11}")
        for r in call_times(engine, args.windows, args.samples, args.repeats, args.threads):
            w = r["windows"]
            print(f"{w:7d} {r['one_call_ms'] / w:19.2f} {r['split_ms'] / w:16.2f} {r['calls']:6d} {r['max_abs_diff']:11.2e}")
        return
    if args.session_options:
        for name, ms in session_times(engine, args.samples, args.repeats * 20, args.threads).items():
            print(f"{name:28s} {ms:8.3f} ms")
        return
    print(f"{'windows':>7} {'old ms':>9} {'new ms':>9} {'old/new':>8} {'new ms/window':>14} {'max |diff|':>11}")
    for r in forecast_times(engine, args.windows, args.samples, args.repeats, args.threads):
        print(f"{r['windows']:7d} {r['old_ms']:9.2f} {r['new_ms']:9.2f} {r['ratio']:8.2f} "
              f"{r['new_ms'] / r['windows']:14.2f} {r['max_abs_diff']:11.2e}")


if __name__ == "__main__":
    main()
