"""TensorRT engines for an exported artifact (docs/tensorrt.md).

    record = build_plans(manifest, onnx_paths, work_dir, profile, gpu=..., trt=...)

Builds NAME.encode.plan, NAME.denoise.plan and NAME.cache_update.plan (the device-side scatter of
fresh keys/values into the token cache) from the ONNX graphs, with one optimization profile over
G, N, S, L, H (S and H in horizon tokens; dil.runtime.backends.trt_profile) and a timing cache
shared by the builds in the folder.

Precision and TensorRT version (`build_mode`):
    fp32                      the float32 ONNX graphs, TF32 off (float32 parity with ONNX Runtime)
    fp16, TensorRT 10.x       the float32 ONNX graphs with the FP16 builder flag; LayerNorm, softmax
                              and reductions constrained to float32 ("fp16-flag")
    fp16, TensorRT >= 11      the FP16 ONNX graphs (dil.export.fp16) in a strongly typed network:
                              11 removed the flag, the precision is in the graph ("strongly-typed");
                              10.x takes the same route with strongly_typed=True
The record (manifest "tensorrt") holds the TensorRT version, GPU name and compute capability, the
precision, the build mode, the profile and the engine-cache key; the runtime refuses plans whose
record does not match its machine.
"""

from __future__ import annotations

import time
from pathlib import Path

from onnx import TensorProto, helper

from dil.runtime.support.files import write_bytes
from dil.runtime.support.files import sha256_file
from dil.runtime.backends.trt_profile import input_shapes, plan_key

TIMING_CACHE = "tensorrt.timing.cache"  # in the output folder, shared by every build there
GRAPHS = ("encode", "denoise", "cache_update")


class TrtBuildError(RuntimeError):
    """TensorRT or a GPU is missing, or a build failed. One-line message."""


def require_tensorrt():
    """(tensorrt module, GpuInfo) or TrtBuildError naming what is missing."""
    from dil.runtime.support.deps import MissingDependency, require
    from dil.runtime.backends.cuda import gpu_info

    gpu = gpu_info()
    if gpu is None:
        raise TrtBuildError("no NVIDIA GPU on this machine: TensorRT engines are built on the GPU that will run them "
                            "(the ONNX artifact runs anywhere)")
    try:
        trt = require("tensorrt", "trt")
    except MissingDependency as exc:
        raise TrtBuildError(str(exc)) from None
    return trt, gpu


def trt_major(version: str) -> int:
    return int(str(version).split(".")[0])


def build_mode(trt_version: str, precision: str, strongly_typed: bool | None = None) -> str:
    """'fp32', 'fp16-flag' (TensorRT 10.x default for fp16) or 'strongly-typed' (11+, or forced)."""
    if precision == "fp32":
        return "fp32"
    if precision != "fp16":
        raise TrtBuildError(f"unsupported precision {precision!r} (fp32 or fp16)")
    if trt_major(trt_version) >= 11:
        if strongly_typed is False:
            raise TrtBuildError(f"TensorRT {trt_version} has no FP16 builder flag: FP16 engines are built from the "
                                "FP16 ONNX graphs (strongly typed)")
        return "strongly-typed"
    return "strongly-typed" if strongly_typed else "fp16-flag"


# ---------------------------------------------------------------------------------------------
def cache_update_graph(config, opset: int = 18):
    """ONNX graph scattering fresh keys/values into the token cache (TensorRT only).

    k_hor, v_hor f32 [layers, G, N, H, D] (H horizon tokens, horizon / horizon_patch at most),
    pos_sub i64 [G, N, S], k_sub, v_sub f32 [layers, G, N, S, D]
    -> k_new, v_new f32 [layers, G, N, H, D]: the cache with row (g, n)'s token pos_sub[g, n, s] set to
    k_sub[:, g, n, s] for every pos_sub < H. Padding entries (pos_sub == H) land in an extra slot H
    that is cut off again, so they change nothing.
    """
    layers, D = config.num_layers, config.d_model
    f32, i64 = TensorProto.FLOAT, TensorProto.INT64
    hor = [layers, "G", "N", "H", D]
    sub = [layers, "G", "N", "S", D]
    const = lambda name, vals: helper.make_node(  # noqa: E731
        "Constant", [], [name], value=helper.make_tensor(name, i64, [len(vals)], vals))
    nodes = [
        const("axis3", [3]), const("zero", [0]), const("one", [1]), const("axes_04", [0, 4]),
        helper.make_node("Shape", ["k_hor"], ["h_dim"], start=3, end=4),  # [H]
        helper.make_node("Shape", ["k_sub"], ["sub_shape"]),
        helper.make_node("Unsqueeze", ["pos_sub", "axes_04"], ["pos5"]),  # [1, G, N, S, 1]
        helper.make_node("Expand", ["pos5", "sub_shape"], ["idx"]),  # [layers, G, N, S, D]
    ]
    for x in ("k", "v"):
        nodes += [
            helper.make_node("Slice", [f"{x}_hor", "zero", "one", "axis3"], [f"{x}_slot"]),  # the extra slot H
            helper.make_node("Concat", [f"{x}_hor", f"{x}_slot"], [f"{x}_pad"], axis=3),
            helper.make_node("ScatterElements", [f"{x}_pad", "idx", f"{x}_sub"], [f"{x}_scat"], axis=3),
            helper.make_node("Slice", [f"{x}_scat", "zero", "h_dim", "axis3"], [f"{x}_new"]),
        ]
    graph = helper.make_graph(
        nodes, "cache_update",
        [helper.make_tensor_value_info("k_hor", f32, hor), helper.make_tensor_value_info("v_hor", f32, hor),
         helper.make_tensor_value_info("pos_sub", i64, ["G", "N", "S"]),
         helper.make_tensor_value_info("k_sub", f32, sub), helper.make_tensor_value_info("v_sub", f32, sub)],
        [helper.make_tensor_value_info("k_new", f32, hor), helper.make_tensor_value_info("v_new", f32, hor)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="dil")
    return model


# ---------------------------------------------------------------------------------------------
def _network_flags(trt, mode: str) -> int:
    if mode == "strongly-typed" and trt_major(trt.__version__) < 11:
        return 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    return 0  # TensorRT 11: every network is strongly typed, no flag needed


def _keep_fp32_layers(trt, network) -> int:
    """Weakly typed FP16 (TensorRT 10.x): pin normalisation, softmax and reductions to float32."""
    kinds = {getattr(trt.LayerType, k) for k in ("NORMALIZATION", "SOFTMAX", "REDUCE") if hasattr(trt.LayerType, k)}
    pinned = 0
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        if layer.type in kinds:
            layer.precision = trt.float32
            for j in range(layer.num_outputs):
                layer.set_output_type(j, trt.float32)
            pinned += 1
    return pinned


def build_engine(trt, onnx_path: Path, shapes: dict, mode: str, timing_cache: bytes | None,
                 workspace_mb: int | None = None) -> tuple[bytes, bytes, dict]:
    """Build one serialized engine. shapes: {input: (min, opt, max)}. Returns (plan, timing cache, info)."""
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(_network_flags(trt, mode))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise TrtBuildError(f"TensorRT could not parse {onnx_path.name}: {errors[:300]}")
    config = builder.create_builder_config()
    if workspace_mb:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mb) << 20)
    if hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)  # float32 layers stay float32 (parity with ONNX Runtime)
    info = {"mode": mode, "pinned_fp32_layers": 0}
    if mode == "fp16-flag":
        config.set_flag(trt.BuilderFlag.FP16)
        info["pinned_fp32_layers"] = _keep_fp32_layers(trt, network)
        config.set_flag(trt.BuilderFlag.PREFER_PRECISION_CONSTRAINTS)
    profile = builder.create_optimization_profile()
    for name, (lo, opt, hi) in shapes.items():
        profile.set_shape(name, lo, opt, hi)
    config.add_optimization_profile(profile)
    try:
        cache = config.create_timing_cache(timing_cache or b"")
    except Exception:  # noqa: BLE001 - a cache from another GPU/version: start a fresh one
        cache, info["timing_cache_reset"] = config.create_timing_cache(b""), True
    config.set_timing_cache(cache, ignore_mismatch=False)
    start = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise TrtBuildError(f"TensorRT failed to build {onnx_path.name} (see its log above)")
    info["seconds"] = round(time.perf_counter() - start, 2)
    new_cache = bytes(memoryview(config.get_timing_cache().serialize()))
    return bytes(memoryview(serialized)), new_cache, info


def build_plans(manifest, sources: dict, work_dir, profile: dict, *, trt, gpu, strongly_typed: bool | None = None,
                timing_cache_path=None, workspace_mb: int | None = None, progress=None) -> tuple[dict, dict]:
    """Build the three plans of `manifest` (precision fp32 or fp16) into work_dir.

    sources: {"fp32": {graph: path}, "fp16": {graph: path}}: the ONNX graphs to build from (fp16
    only needed for the strongly typed route). profile: dil.runtime.backends.trt_profile.resolve_profile(...).
    Returns (record for manifest["tensorrt"], {graph: {"plan_file", "plan_sha256", "plan_bytes",
    "plan_source"}} for the manifest's graphs). Writes the plans and the timing cache atomically.
    progress: optional callable(stage, message), stage "build GRAPH" before each build.
    """
    say = progress or (lambda stage, message: None)
    mode = build_mode(trt.__version__, manifest.precision, strongly_typed)
    onnx_paths = dict(sources["fp16"] if mode == "strongly-typed" else sources["fp32"])
    work_dir = Path(work_dir)
    onnx_paths["cache_update"] = work_dir / f".{manifest.name}.cache_update.onnx"
    import onnx

    onnx.save(cache_update_graph(manifest.model), str(onnx_paths["cache_update"]))
    timing_cache_path = Path(timing_cache_path) if timing_cache_path else None
    cache = timing_cache_path.read_bytes() if timing_cache_path and timing_cache_path.is_file() else None
    entries, infos = {}, {}
    for graph in GRAPHS:
        say(f"build {graph}", f"building the TensorRT {manifest.precision} {graph} engine ({mode})")
        shapes = input_shapes(graph, manifest.model, profile)
        plan, cache, infos[graph] = build_engine(trt, onnx_paths[graph], shapes, mode, cache, workspace_mb)
        path = work_dir / f"{manifest.name}.{graph}.plan"
        write_bytes(path, plan)
        entries[graph] = {"plan_file": path.name, "plan_sha256": sha256_file(path), "plan_bytes": len(plan),
                          "plan_source": None if graph == "cache_update" else Path(onnx_paths[graph]).name}
    onnx_paths["cache_update"].unlink()
    if timing_cache_path is not None and cache:
        write_bytes(timing_cache_path, cache)
    source_sha = {g: sha256_file(onnx_paths[g]) for g in ("encode", "denoise")}
    record = {
        "version": trt.__version__,
        "gpu": gpu.name,
        "compute_capability": gpu.compute_capability,
        "precision": manifest.precision,
        "mode": mode,
        "profile": profile,
        "key": plan_key(source_sha, trt.__version__, gpu.compute_capability, manifest.precision, profile, mode),
        "timing_cache": timing_cache_path.name if timing_cache_path else None,
        "builds": infos,
        "cache_update": {"file": entries["cache_update"]["plan_file"], "sha256": entries["cache_update"]["plan_sha256"],
                         "bytes": entries["cache_update"]["plan_bytes"]},
    }
    return record, {g: entries[g] for g in ("encode", "denoise")}


def up_to_date(manifest, sources: dict, profile: dict, trt, gpu, strongly_typed: bool | None = None) -> bool:
    """True when the manifest's plans were built from these graphs, by this TensorRT, for this GPU
    and profile (the engine-cache key matches) and the plan files are intact: no rebuild needed."""
    record = manifest.extra.get("tensorrt")
    if not record:
        return False
    mode = build_mode(trt.__version__, manifest.precision, strongly_typed)
    paths = sources["fp16"] if mode == "strongly-typed" else sources["fp32"]
    key = plan_key({g: sha256_file(paths[g]) for g in ("encode", "denoise")}, trt.__version__,
                   gpu.compute_capability, manifest.precision, profile, mode)
    if record.get("key") != key or record.get("gpu") != gpu.name:
        return False
    folder = manifest.path.parent
    files = [(manifest.graphs[g].get("plan_file"), manifest.graphs[g].get("plan_sha256")) for g in ("encode", "denoise")]
    files.append((record["cache_update"]["file"], record["cache_update"]["sha256"]))
    return all(f and (folder / f).is_file() and sha256_file(folder / f) == h for f, h in files)
