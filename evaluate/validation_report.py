"""The sampler validation behind `dil-validate` (docs/model.md section 7).

For one artifact and the PyTorch module it was exported from, on real context windows:

1. Per-graph errors: ONNX Runtime vs torch, each graph (`dil.export.graph_check.validate_graphs`).
2. The controller check: the runtime sampler (its controller, cache and solver, in NumPy) and the
   reference sampler (`dil.evaluate.reference.sampler`, in torch) are fed the same network outputs step by step.
   They run in lockstep: just before the runtime plans step i, the reference takes its step i with
   the torch module, and the runtime's `denoise` call receives the reference's outputs for the tokens
   it asked for (the controller's `adjust` and `observe` hooks are passed through). With
   shared outputs there is no float32 noise between the two, so every decision must agree:
   `controller_agreement` must be exactly 1.0.
3. The free run: each side with its own network (runtime: ONNX Runtime; reference: torch). Float32
   engines differ from torch by ~1e-6, so a decision sitting on its threshold may flip; flips are
   listed with the margin by which the reference's quantity missed its threshold.

For a model with features (context_features > 2, horizon_features > 1) the windows' extra context
features and the horizon's known features are random (`validation_inputs.prepare_inputs`): real windows carry no
timestamps or covariates here, and both sides receive the same values, which is what is compared.

A decision unit is one token of one row at one step (computed or not, and its solver order, both
must agree) or one series at one step (computed in full or not). A token is the model's
horizon_patch consecutive horizon steps (one step for most models): decisions are per token,
samples per step. Agreement = identical units / all units. Samples and quantiles are compared on
the standardised scale (the network's).
"""

from __future__ import annotations

import numpy as np

from dil.runtime.outputs.quantiles import sample_quantiles
from dil.runtime.sampling.rng import SeriesStreams
from dil.evaluate.reference.sampler import ReferenceSampler, StepDecision, settings_spacing
from dil.evaluate.validation_inputs import prepare_inputs

# Gates of a passing validation (issue 3), standardised scale.
AGREEMENT_MIN = 0.99  # free-run decision agreement
QUANTILE_TOLERANCE = 1e-3
# Samples of rows whose decisions all agree: |runtime - reference| <= 1e-4 * max(1, |reference|). The
# bound scales with the sample because float32 graphs carry a relative error: a sample 20 standard
# deviations out (seen on the shipped model) differs by ~1e-4 absolute, ~5e-6 relative.
FORECAST_TOLERANCE = 1e-4
MAX_LISTED_FLIPS = 50


# ---------------------------------------------------------------------------------------------
# The two controllers behind one door: built from the same runtime SamplerConfig.
# Both get the same random streams at start (the sampler hands them over).
def runtime_controller(config):
    """The runtime's controller for `config` (a dil.runtime.sampling.config.SamplerConfig)."""
    from dil.runtime.sampling.sampler import make_controller

    return make_controller(config)


def reference_controller(config):
    """The reference's controller for the same settings (torch, dil.evaluate.reference.controller)."""
    from dil.evaluate.reference.controller import ReferenceController

    return ReferenceController(config)


def reference_sampler(model, schedule, ctx, x_T, config, streams: SeriesStreams, hor_feat=None) -> ReferenceSampler:
    return ReferenceSampler(model, schedule, ctx, x_T, config.steps, streams, reference_controller(config),
                            solver_order=config.solver_order, bucket=getattr(config, "bucket", 1), hor_feat=hor_feat,
                            spacing=settings_spacing(config))


def effective_order(order, i: int, steps: int, shape) -> np.ndarray:
    """int64 [G, N, T]: the order a token's steps' update uses at step i (the solver's history cap)."""
    cap = 1 if i == steps - 1 else min(3, i + 1)
    return np.clip(np.broadcast_to(np.asarray(order, dtype=np.int64), shape), 1, cap).copy()


class RecordingController:
    """Wraps a runtime controller and records its decisions (StepDecision per step).

    before_plan: optional callable(i) run before each plan (the controller check advances the
    reference sampler there, so that it stays in step even when the runtime skips a call).
    """

    def __init__(self, inner, before_plan=None):
        self.inner = inner
        self.before_plan = before_plan
        self.decisions: list[StepDecision] = []

    @property
    def counters(self) -> dict:
        return self.inner.counters

    def start(self, G: int, N: int, H: int, solver, streams: SeriesStreams, domain: str = "time") -> None:
        self.shape, self.steps = (G, N, H), solver.steps
        self.inner.start(G, N, H, solver, streams, domain=domain)

    def plan(self, i: int, cache):
        if self.before_plan is not None:
            self.before_plan(i)
        plan = self.inner.plan(i, cache)
        G, N, H = self.shape
        series_full = getattr(plan, "series_full", None)
        full = np.broadcast_to(np.asarray(plan.full if series_full is None else series_full, dtype=bool), (G,)).copy()
        order = effective_order(plan.order, i, self.steps, self.shape)
        lvl = getattr(self.inner, "lvl", None)  # the lattice partition after this step's adapt
        self.decisions.append(StepDecision(plan.computed(H).copy(), order, full,
                                           scale=None if lvl is None else np.array(lvl, dtype=np.int64)))
        return plan

    def adjust(self, i: int, cache, computed) -> None:
        self.inner.adjust(i, cache, computed)

    def observe(self, i: int, cache) -> None:
        self.inner.observe(i, cache)


class LockstepEngine:
    """An engine for the runtime sampler whose outputs are the reference sampler's (controller check).

    The reference takes its step i just before the runtime plans step i (RecordingController's
    before_plan = `advance`). When the runtime asks for exactly the tokens the reference computed, it
    gets the reference's outputs (eps or v per step)/keys/values for them; otherwise (a decision
    differs) the call is answered by the torch module on the runtime's own inputs, and counted in
    `mismatched_calls`. `input_max_abs_diff` tracks |x_sub runtime - reference| (float32, the tokens'
    steps' noisy values and known features). No series limit, no device cache. Positions are
    horizon tokens (T = horizon / horizon_patch), as in the graphs.
    """

    max_batch = call_tokens = None

    def __init__(self, reference: ReferenceSampler, torch_graphs, config):
        from dil.runtime.backends.onnx_engine import EngineStats

        self.reference, self.graphs, self.config = reference, torch_graphs, config
        self.stats = EngineStats()
        self.mismatched_calls = 0
        self.input_max_abs_diff = 0.0

    def advance(self, i: int) -> None:
        if self.reference.step_index != i:
            raise RuntimeError(f"the reference is at step {self.reference.step_index}, the runtime at {i}")
        self.reference.step()

    def encode(self, ctx):
        self.stats.encode_calls += 1
        return self.reference.encode()

    def denoise(self, x_sub, pos_sub, t_feat, k_ctx, v_ctx, k_hor, v_hor, hor_valid):
        import torch

        self.stats.denoise_calls += 1
        ref = self.reference
        G, N, T = ref.shape
        mine = np.zeros((G, N, T + 1), dtype=bool)
        np.put_along_axis(mine, pos_sub, True, axis=2)
        if not np.array_equal(mine[..., :T], ref.decisions[-1].computed):
            self.mismatched_calls += 1
            args = (x_sub, pos_sub, t_feat, k_ctx, v_ctx, k_hor, v_hor, hor_valid)
            return self.graphs.denoise(*(np.array(a) for a in args))  # writable copies for torch
        idx = np.minimum(pos_sub, T - 1)  # padding entries read token T-1; their outputs are discarded
        pos = torch.from_numpy(np.ascontiguousarray(pos_sub, dtype=np.int64))
        x_ref = ref.inputs(pos, ref.cache.x_in_steps).numpy()  # the reference's own inputs of these tokens
        real = pos_sub < T
        if real.any():
            diff = np.abs(x_ref - np.asarray(x_sub))[real]
            self.input_max_abs_diff = max(self.input_max_abs_diff, float(diff.max()))
        out_tok = ref.last_out.numpy().reshape(G, N, T, ref.patch)  # step j Ph + k -> token j, entry k
        out = np.take_along_axis(out_tok, idx[..., None], axis=2)
        kv_idx = idx[None, ..., None]
        k = np.take_along_axis(ref.cache.k.numpy(), kv_idx, axis=3)
        v = np.take_along_axis(ref.cache.v.numpy(), kv_idx, axis=3)
        return out, k, v

    def device_cache(self, G: int, N: int, T: int) -> None:
        return None

    def denoise_cached(self, *args):
        raise RuntimeError("the lockstep engine keeps no device cache")


# ---------------------------------------------------------------------------------------------
# Comparing decisions and forecasts.
# The reference margins (dil.evaluate.reference.controller) behind each kind of decision.
MARGIN_KEYS = {"computed": ("computed", "change", "selection", "lattice"), "order": ("order", "lattice"),
               "full": ("full",), "scale": ("lattice",)}


def _margins(decision: StepDecision, kind: str, index: tuple) -> tuple:
    """(margin, all margins at that place): the smallest |distance to threshold| among the quantities
    that decide this kind of decision (None when the reference gives none), and every finite margin
    recorded for the same token or series, by name."""
    found = {}
    for name, m in decision.margins.items():
        m = np.asarray(m)
        if m.ndim == len(index):
            value = float(abs(m[index]))
            if np.isfinite(value):
                found[name] = value
    primary = [found[k] for k in MARGIN_KEYS[kind] if k in found]
    return (min(primary) if primary else None), found


def compare_decisions(runtime: list[StepDecision], reference: list[StepDecision], max_listed: int = MAX_LISTED_FLIPS) -> dict:
    """Agreement of two decision sequences and the flips, first ones first.

    A flip is `consequence` when its row (token decisions) or series (full steps) already had a flip
    at an earlier step: its trajectory had diverged, so it says nothing about thresholds by itself.
    The lattice partition is not a decision unit, but it steers later orders and selections: where
    both sides record it (StepDecision.scale), a row's first step with a different node scale is
    listed as a flip of kind "scale" (at the first such token, with the reference's lattice margin)
    and marks the row diverged, so that the first flip listed is the threshold actually missed.
    Returns {"agreement", "units", "flips_total", "first_flips", "flips" (at most max_listed),
    "rows_flipped": bool [G, N]}.
    """
    if len(runtime) != len(reference):
        raise ValueError(f"{len(runtime)} runtime steps vs {len(reference)} reference steps")
    G, N, H = reference[0].computed.shape
    diverged = np.zeros((G, N), dtype=bool)
    units = same = 0
    flips = []
    for i, (a, b) in enumerate(zip(runtime, reference)):
        tok_same = (a.computed == b.computed) & (a.order == b.order)
        full_same = a.full == b.full
        units += tok_same.size + full_same.size
        same += int(tok_same.sum()) + int(full_same.sum())
        step_flips = []
        for g in np.flatnonzero(~full_same):
            margin, margins = _margins(b, "full", (g,))
            step_flips.append({"step": i, "series": int(g), "decision": "full", "runtime": bool(a.full[g]),
                               "reference": bool(b.full[g]), "margin": margin, "margins": margins,
                               "consequence": bool(diverged[g].any())})
        # An order flip on a token whose computed decision flipped too follows from it (reused
        # tokens take order 1): only the computed flip is listed.
        for kind, differs in (("computed", a.computed != b.computed),
                              ("order", (a.order != b.order) & (a.computed == b.computed))):
            ra, rb = (a.computed, b.computed) if kind == "computed" else (a.order, b.order)
            for g, n, h in np.argwhere(differs):
                value = bool if kind == "computed" else int
                margin, margins = _margins(b, kind, (g, n, h))
                step_flips.append({"step": i, "series": int(g), "sample": int(n), "token": int(h), "decision": kind,
                                   "runtime": value(ra[g, n, h]), "reference": value(rb[g, n, h]),
                                   "margin": margin, "margins": margins, "consequence": bool(diverged[g, n])})
        if a.scale is not None and b.scale is not None:
            parted = (a.scale != b.scale).any(axis=2)
            for g, n in np.argwhere(parted & ~diverged):
                h = int(np.argmax(a.scale[g, n] != b.scale[g, n]))
                margin, margins = _margins(b, "scale", (g, n, h))
                step_flips.append({"step": i, "series": int(g), "sample": int(n), "token": h, "decision": "scale",
                                   "runtime": int(a.scale[g, n, h]), "reference": int(b.scale[g, n, h]),
                                   "margin": margin, "margins": margins, "consequence": False})
            diverged |= parted
        flips.extend(step_flips)
        diverged[~full_same] = True
        diverged |= ~tok_same.all(axis=2)
    ordered = sorted(flips, key=lambda f: (f["consequence"], f["step"]))
    return {
        "agreement": same / units if units else 1.0,
        "units": units,
        "flips_total": len(flips),
        "first_flips": sum(not f["consequence"] for f in flips),
        "flips": ordered[:max_listed],
        "rows_flipped": diverged,
    }


def compare_forecasts(x_runtime: np.ndarray, x_reference: np.ndarray, rows_flipped: np.ndarray) -> dict:
    """Max abs differences of samples (all rows and rows without flips) and of the 19 quantiles.

    x_*: float64 [G, N, H] on the standardised scale; rows_flipped: bool [G, N].
    """
    diff = np.abs(x_runtime - x_reference)
    scaled = diff / np.maximum(1.0, np.abs(x_reference))
    keep = ~rows_flipped
    q_rt, q_ref = sample_quantiles(x_runtime, axis=1), sample_quantiles(x_reference, axis=1)
    return {
        "forecast_max_abs_err": float(diff.max()),
        "forecast_max_abs_err_agreeing_rows": float(diff[keep].max()) if keep.any() else None,
        "forecast_max_scaled_err_agreeing_rows": float(scaled[keep].max()) if keep.any() else None,
        "rows_flipped": int(rows_flipped.sum()),
        "quantile_max_abs_err": float(np.abs(q_rt - q_ref).max()),
    }


# ---------------------------------------------------------------------------------------------
# The two runs.
def controller_check(model, schedule, ctx: np.ndarray, x_T: np.ndarray, config, streams: SeriesStreams,
                     hor_feat=None) -> dict:
    """Runtime and reference controllers fed the same (torch) network outputs, in lockstep."""
    from dil.export.graph_check import TorchGraphs
    from dil.runtime.sampling.sampler import sample

    ref = reference_sampler(model, schedule, ctx, x_T, config, streams, hor_feat)
    engine = LockstepEngine(ref, TorchGraphs(model), model.config)
    rec = RecordingController(runtime_controller(config), before_plan=engine.advance)
    result = sample(engine, schedule, ctx, x_T, config, streams, controller=rec, hor_feat=hor_feat)
    cmp = compare_decisions(rec.decisions, ref.decisions)
    rows = cmp.pop("rows_flipped")
    out = {"controller_agreement": cmp["agreement"], **cmp, "mismatched_calls": engine.mismatched_calls,
           "input_max_abs_diff": engine.input_max_abs_diff,
           "forecast_max_abs_err": float(np.abs(result.x0 - ref.run()).max()),  # both in the time domain
           "rows_flipped": int(rows.sum())}
    return out


def free_run(engine, model, schedule, ctx: np.ndarray, x_T: np.ndarray, config, streams: SeriesStreams,
             hor_feat=None) -> dict:
    """Each side with its own network: the runtime on `engine` (ONNX Runtime), the reference on torch."""
    from dil.runtime.sampling.sampler import sample

    rec = RecordingController(runtime_controller(config))
    result = sample(engine, schedule, ctx, x_T, config, streams, controller=rec, hor_feat=hor_feat)
    ref = reference_sampler(model, schedule, ctx, x_T, config, streams, hor_feat)
    x_ref = ref.run()
    cmp = compare_decisions(rec.decisions, ref.decisions)
    rows = cmp.pop("rows_flipped")
    out = {"decision_agreement": cmp["agreement"], **cmp}
    out.update(compare_forecasts(result.x0, x_ref, rows))
    out["runtime_stats"] = result.stats.to_dict()
    return out


def gates(report: dict) -> list[str]:
    """One phrase per failed gate of a sampler validation report (empty: passed)."""
    out = []
    graphs = report.get("graphs", {})
    if graphs and graphs.get("passed") is False:
        out.append("per-graph errors beyond tolerance")
    if report["controller_agreement"] != 1.0:
        out.append(f"controller agreement {report['controller_agreement']:.6f} != 1")
    if report["decision_agreement"] < AGREEMENT_MIN:
        out.append(f"free-run decision agreement {report['decision_agreement']:.4f} < {AGREEMENT_MIN}")
    if report["quantile_max_abs_err"] > QUANTILE_TOLERANCE:
        out.append(f"quantile max abs error {report['quantile_max_abs_err']:.3g} > {QUANTILE_TOLERANCE:g}")
    agreeing = report["free_run"]["forecast_max_scaled_err_agreeing_rows"]
    if agreeing is not None and agreeing > FORECAST_TOLERANCE:
        out.append(f"sample error {agreeing:.3g} > {FORECAST_TOLERANCE:g} * max(1, |sample|) on rows without flips")
    return out


def validate_sampler(engine, model, schedule, contexts: np.ndarray, config, samples: int, seed: int,
                     graph_report: dict | None = None) -> dict:
    """The sampler part of `dil-validate` on raw context windows float [G, L'] (NaN = missing).

    engine: an OnnxEngine; model: the torch ScoreNet; config: a runtime SamplerConfig. graph_report:
    the per-graph section (validate_graphs) to include. Returns the JSON-ready report.
    """
    ctx, hor_feat, x_T, streams = prepare_inputs(contexts, model.config, samples, seed)
    check = controller_check(model, schedule, ctx, x_T, config, streams, hor_feat)
    run = free_run(engine, model, schedule, ctx, x_T, config, streams, hor_feat)
    report = {}
    if graph_report is not None:
        report["encode_max_abs_err"] = graph_report["graphs"]["encode"]["max_abs_err"]
        report["denoise_max_abs_err"] = graph_report["graphs"]["denoise"]["max_abs_err"]
    report.update({
        "controller_agreement": check["controller_agreement"],
        "decision_agreement": run["decision_agreement"],
        "forecast_max_abs_err": run["forecast_max_abs_err"],
        "quantile_max_abs_err": run["quantile_max_abs_err"],
        "flips": run["flips"],
        "scale": "standardised",
        "series": int(ctx.shape[0]),
        "samples": int(samples),
        "steps": int(config.steps),
        "seed": int(seed),
        "features": "random" if hor_feat is not None or ctx.shape[2] > 2 else "none",
        "controller_check": {k: v for k, v in check.items() if k != "flips"} | {"flips": check["flips"]},
        "free_run": {k: v for k, v in run.items() if k != "flips"},
    })
    if graph_report is not None:
        report["graphs"] = graph_report
    failed = gates(report)
    report["failures"] = failed
    report["passed"] = not failed
    return report


def run_validation(engine_path, checkpoint=None, dataset: str | None = None, series: int = 4, samples: int = 100,
                   steps: int = 20, seed: int = 0, sampler_settings: dict | None = None, threads: int | None = None,
                   progress=None) -> dict:
    """`dil-validate` as a function: load the artifact, the torch module and real windows, then run
    the per-graph check, the controller check and the free run. Returns the JSON-ready report.

    sampler_settings: extra SamplerConfig fields (lattice/cache settings). progress: optional
    callable taking a one-line stage message. Raises ManifestError, EngineError,
    ValidationInputError or ValueError (bad settings) with one-line messages, before any long work.
    """
    from dil.export.graph_check import validate_graphs
    from dil.evaluate.validation_inputs import load_model, validation_windows
    from dil.runtime.backends.onnx_engine import OnnxEngine
    from dil.runtime.manifest import load_manifest
    from dil.runtime.sampling.config import SamplerConfig

    say = progress or (lambda message: None)
    for name, value, low in (("series", series, 1), ("samples", samples, 1), ("seed", seed, 0)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    config = SamplerConfig(steps=steps, **(sampler_settings or {}))
    say("loading the artifact")
    manifest = load_manifest(engine_path)
    engine = OnnxEngine(manifest, threads=threads)
    model, run_dir = load_model(manifest, checkpoint)
    (ctx, target), info = validation_windows(manifest, series, dataset)
    say("per-graph errors (ONNX Runtime vs torch)")
    paths = {g: manifest.graph_path(g) for g in ("encode", "denoise")}
    graphs = validate_graphs(model, paths, manifest.schedule, (ctx, target), seed=seed, real_info=info)
    say(f"sampler: controller check and free run ({ctx.shape[0]} series x {samples} samples, {steps} steps)")
    report = validate_sampler(engine, model, manifest.schedule, ctx, config, samples, seed, graph_report=graphs)
    report = {"engine": str(manifest.path), "checkpoint": str(run_dir), "data": info,
              "sampler": _config_dict(config), **report}
    return report


def _config_dict(config) -> dict:
    if hasattr(config, "settings"):
        return config.settings()
    from dataclasses import asdict

    return asdict(config)
