"""TensorRT plans vs ONNX Runtime (float32 graphs, CPU): the manifest's validation["tensorrt"].

Three checks, each at shapes taken from the engines' profile (its min and opt corners, plus a
token subset with padding entries):
- parity: encode and denoise of the plans against the float32 ONNX graphs on ONNX Runtime, with
  the dil.export.graph_check machinery (same inputs, max abs/rel error on the standardised scale);
- device cache: two denoise_cached steps (token cache scattered on the GPU by the cache_update
  plan) against denoise with the same cache kept on the host (0 expected);
- Polygraphy (optional dependency): `Comparator` runs ONNX Runtime and TensorRT on the denoise
  graph with the same inputs and reports its own verdict next to our numbers.
"""

from __future__ import annotations

import numpy as np

from dil.export.graph_check import (
    FP32_TOLERANCE,
    OrtGraphs,
    Shape,
    _full_step_args,
    compare_case,
    random_case,
    subset_positions,
)

TRT_FP32_TOLERANCE = 1e-3  # TensorRT float32 (TF32 off) vs ONNX Runtime: different kernels, same math


def profile_shapes(profile: dict) -> list[Shape]:
    """Validation shapes inside the profile: min corner, opt corner, and a padded subset at opt.
    (The profile's context lengths L are in steps, multiples of the model's context_patch; S and H
    are horizon tokens, as graph_check's Shape.)"""
    def at(k):
        return {a: profile[a][k] for a in ("G", "N", "S", "L", "H")}

    lo, opt = at("min"), at("opt")
    shapes = [Shape(lo["G"], lo["N"], lo["S"], lo["L"], lo["H"]),
              Shape(opt["G"], opt["N"], opt["S"], opt["L"], opt["H"])]
    if opt["S"] > 1:
        shapes.append(Shape(opt["G"], opt["N"], max(1, opt["S"] // 2), opt["L"], opt["H"], pad=True))
    return list(dict.fromkeys(shapes))


def _device_cache_error(engine, case, config, rng) -> float:
    """Max abs difference between two denoise_cached steps and the host-cache path."""
    shape, layers, D = case.shape, config.num_layers, config.d_model
    G, N, H = shape.G, shape.N, shape.H
    k_ctx, v_ctx = engine.encode(case.ctx)
    cache = engine.device_cache(G, N, H)
    host_k = np.zeros((layers, G, N, H, D), np.float32)
    host_v = np.zeros_like(host_k)
    full = _full_step_args(case, k_ctx, v_ctx, layers, D)
    pos = subset_positions(rng, shape) if shape.S < H else full[1]
    valid_after = np.ones((G, N, H), np.float32)
    err = 0.0
    for step, (p, valid) in enumerate(((full[1], full[7]), (pos, None))):
        if valid is None:  # second step: the subset, every other token cached
            computed = np.zeros((G, N, H + 1), bool)
            np.put_along_axis(computed, p, True, axis=-1)
            valid = (valid_after * ~computed[..., :H]).astype(np.float32)
        pad = np.zeros((G, N, 1, case.x.shape[-1]), np.float32)  # padding entries read zeros
        x = np.take_along_axis(np.concatenate([case.x, pad], 2), p[..., None], 2)
        eps_dev = engine.denoise_cached(x, p, case.t_feat, k_ctx, v_ctx, cache, valid)
        eps_host, k_sub, v_sub = engine.denoise(x, p, case.t_feat, k_ctx, v_ctx, host_k, host_v, valid)
        g, n, s = np.nonzero(p < H)
        host_k[:, g, n, p[g, n, s]] = k_sub[:, g, n, s]
        host_v[:, g, n, p[g, n, s]] = v_sub[:, g, n, s]
        dev_k, dev_v = cache.to_host()
        err = max(err, float(np.abs(eps_dev - eps_host).max()), float(np.abs(dev_k - host_k).max()),
                  float(np.abs(dev_v - host_v).max()))
    return err


def polygraphy_compare(onnx_path, plan_path, feeds: dict, atol: float) -> dict:
    """Polygraphy's Comparator on one graph: {"ran", "passed", "max_abs_err", "atol"} or the reason
    it did not run (not installed, or it failed)."""
    try:
        from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx
        from polygraphy.backend.trt import EngineFromBytes, TrtRunner
        from polygraphy.comparator import Comparator, CompareFunc
    except ImportError:
        return {"ran": False, "reason": "polygraphy is not installed (pip install 'dil[trt]')"}
    try:
        runners = [OnnxrtRunner(SessionFromOnnx(str(onnx_path), providers=["CPUExecutionProvider"])),
                   TrtRunner(EngineFromBytes(open(plan_path, "rb").read()))]
        results = Comparator.run(runners, data_loader=[feeds])
        verdict = Comparator.compare_accuracy(results, compare_func=CompareFunc.simple(atol=atol, rtol=0.0))
        (_, ort_iters), (_, trt_iters) = list(results.items())[:2]
        err = max(float(np.abs(np.asarray(trt_iters[0][k], np.float64) - np.asarray(v, np.float64)).max())
                  for k, v in ort_iters[0].items())
        return {"ran": True, "passed": bool(verdict), "max_abs_err": err, "atol": atol,
                "runners": [r.name for r in runners]}
    except Exception as exc:  # noqa: BLE001 - optional tool: record why, never fail the export on it
        return {"ran": False, "reason": (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]}


def validate_plans(engine, reference_paths: dict, schedule, tolerance: float, seed: int = 0,
                   polygraphy: bool = True) -> dict:
    """The validation["tensorrt"] section for a TrtEngine against the float32 ONNX graphs."""
    config, profile = engine.config, engine.profile
    ref = OrtGraphs(reference_paths)
    rng = np.random.default_rng(seed)
    shapes = profile_shapes(profile)
    found = {"encode": [], "denoise": []}
    cache_err = 0.0
    poly = None
    for shape in shapes:
        case = random_case(config, schedule, shape, rng)
        for g, e in compare_case(engine, ref, case, config, rng).items():
            found[g].append(e)
        cache_err = max(cache_err, _device_cache_error(engine, case, config, rng))
        if polygraphy and poly is None:
            k_ctx, v_ctx = ref.encode(case.ctx)
            feeds = dict(zip(("x_sub", "pos_sub", "t_feat", "k_ctx", "v_ctx", "k_hor", "v_hor", "hor_valid"),
                             _full_step_args(case, k_ctx, v_ctx, config.num_layers, config.d_model)))
            poly = polygraphy_compare(reference_paths["denoise"], engine._plans["denoise"].path, feeds, tolerance)
    report = {"reference": "ONNX Runtime CPU, float32 graphs", "precision": engine.precision, "tolerance": tolerance,
              "shapes": [s.to_dict() for s in shapes], "graphs": {}}
    for g, errs in found.items():
        abs_err, rel_err = max(e[0] for e in errs), max(e[1] for e in errs)
        report["graphs"][g] = {"max_abs_err": abs_err, "max_rel_err": rel_err, "passed": bool(abs_err <= tolerance)}
    # Same engine, same values: 0 expected; the parity tolerance covers non-deterministic tactics.
    report["device_cache"] = {"max_abs_err": cache_err, "tolerance": tolerance, "passed": bool(cache_err <= tolerance)}
    report["polygraphy"] = poly or {"ran": False, "reason": "not requested"}
    report["passed"] = all(e["passed"] for e in report["graphs"].values()) and report["device_cache"]["passed"]
    return report


def tolerance_for(precision: str) -> float:
    from dil.export.fp16 import FP16_TOLERANCE

    return FP16_TOLERANCE if precision == "fp16" else max(FP32_TOLERANCE, TRT_FP32_TOLERANCE)
