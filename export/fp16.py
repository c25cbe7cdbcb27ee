"""FP16 variant of the exported graphs (docs/tensorrt.md).

    fp16_model = convert_to_fp16(onnx.load("NAME.denoise.onnx"))

The conversion is written here with `onnx` alone (no onnxconverter-common / ModelOpt dependency) and
does what TensorRT 11's strongly typed builds need: the precision lives in the graph itself.

- Float32 weights and activations become float16, except where a node is on the keep-float32 list
  (`KEEP_FP32_OPS`: LayerNormalization, Softmax and every reduction): such a node gets float32
  inputs (a Cast in front where its producer is float16) and produces float32, cast back to
  float16 only for the float16 nodes that consume it. Weights used only by kept nodes (LayerNorm
  scale and bias) stay float32.
- Graph inputs and outputs stay float32: one Cast after each float input, one before each output.
  So the engine contract (names, element types, shapes) is exactly the float32 artifact's.
- Float constants beyond the float16 range are clipped to +-65504 (the attention mask value is
  -1e4, so nothing is clipped in this model; the count is recorded).
- Casts to float32 inside the float16 region (e.g. the padding mask) are retargeted to float16.

The float16 graph is validated like the float32 one (dil.export.graph_check) with the looser
FP16_TOLERANCE, against the float32 PyTorch module.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from dil.runtime.support.files import atomic_path

# LayerNorm, softmax and reductions accumulate over many elements: float16 there loses the
# statistics (variance of large activations overflows, softmax sums saturate).
KEEP_FP32_OPS = frozenset({
    "LayerNormalization", "Softmax", "LogSoftmax",
    "ReduceMean", "ReduceSum", "ReduceSumSquare", "ReduceMax", "ReduceMin", "ReduceProd",
    "ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "CumSum",
})
# Control flow would need the conversion applied to subgraphs; the exported graphs have none.
_UNSUPPORTED_OPS = frozenset({"If", "Loop", "Scan", "SequenceMap"})
# Ops that read only the shape of their input: any element type will do, so no Cast.
_SHAPE_ONLY_OPS = frozenset({"Shape", "Size"})
FP16_MAX = float(np.finfo(np.float16).max)  # 65504
# Max abs error of an FP16 graph vs the float32 torch module, standardised scale (eps, keys,
# values of magnitude ~1-10): about ten float16 ulps at 1 (2**-10 ~ 1e-3). Measured: 8e-4 (tiny
# test model), 1.6e-3 (default config, random weights); see docs/tensorrt.md for trained models.
FP16_TOLERANCE = 1e-2
FP16_SUBSET_TOLERANCE = 1e-2  # subset step vs full step rows, both FP16
F32, F16 = TensorProto.FLOAT, TensorProto.FLOAT16
SUFFIX = "fp16"  # NAME.fp16.encode.onnx, NAME.fp16.json


class Fp16Error(ValueError):
    """The graph cannot be converted (unsupported construct). One-line message."""


def fp16_name(name: str) -> str:
    """The FP16 artifact's name for float32 artifact `name` (NAME -> NAME.fp16)."""
    return f"{name}.{SUFFIX}"


def _elem_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every tensor of the graph (after ONNX shape inference)."""
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    g = inferred.graph
    types = {i.name: i.data_type for i in g.initializer}
    for v in list(g.input) + list(g.output) + list(g.value_info):
        if v.type.HasField("tensor_type"):
            types[v.name] = v.type.tensor_type.elem_type
    for node in g.node:  # Constant outputs are not always in value_info
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    types[node.output[0]] = a.t.data_type
                elif a.name in ("value_float", "value_floats"):
                    types[node.output[0]] = F32
    return types


class _Stats:
    def __init__(self):
        self.casts = 0
        self.clipped = 0
        self.kept = Counter()
        self.converted = 0


def _to_fp16_array(arr: np.ndarray, stats: _Stats) -> np.ndarray:
    finite = np.isfinite(arr)
    over = finite & (np.abs(arr) > FP16_MAX)
    stats.clipped += int(over.sum())
    return np.where(over, np.sign(arr) * FP16_MAX, arr).astype(np.float16)


def _fp16_tensor(t: onnx.TensorProto, stats: _Stats) -> onnx.TensorProto:
    return numpy_helper.from_array(_to_fp16_array(numpy_helper.to_array(t), stats), t.name)


def _retarget_attributes(node: onnx.NodeProto, stats: _Stats) -> None:
    """Attributes that name or hold float32 values, for a node that now runs in float16."""
    for a in node.attribute:
        if node.op_type == "Cast" and a.name == "to" and a.i == F32:
            a.i = F16
        elif a.name == "value" and a.type == onnx.AttributeProto.TENSOR and a.t.data_type == F32:
            a.t.CopyFrom(_fp16_tensor(a.t, stats))
        elif node.op_type == "Constant" and a.name in ("value_float", "value_floats"):
            vals = np.asarray(a.f if a.name == "value_float" else list(a.floats), np.float32)
            if a.name == "value_float":
                vals = vals.reshape(())
            t = numpy_helper.from_array(_to_fp16_array(vals, stats), "")
            node.attribute.remove(a)
            node.attribute.append(helper.make_attribute("value", t))
            break  # the attribute list changed under the loop


def convert_to_fp16(model: onnx.ModelProto, keep_fp32_ops=KEEP_FP32_OPS) -> tuple[onnx.ModelProto, dict]:
    """Mixed-precision copy of a float32 model: float16 compute, float32 islands and I/O.

    Returns (model, info) where info = {"kept_fp32": {op: count}, "casts": n, "clipped_constants": n,
    "fp16_nodes": n}. Raises Fp16Error for control-flow ops or a model that is not float32.
    """
    model = onnx.ModelProto.FromString(model.SerializeToString())  # never modify the caller's
    g = model.graph
    bad = sorted({n.op_type for n in g.node} & _UNSUPPORTED_OPS)
    if bad or model.functions:
        raise Fp16Error(f"cannot convert a graph with {', '.join(bad) or 'local functions'} to FP16")
    if any(i.data_type == F16 for i in g.initializer):
        raise Fp16Error("the graph already holds float16 weights: convert the float32 export")
    types = _elem_types(model)
    stats = _Stats()

    consumers: dict[str, list] = {}
    for node in g.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    def keeps(node) -> bool:
        return node.op_type in keep_fp32_ops

    # Current element type of every float tensor in the new graph.
    dtype = {n: t for n, t in types.items() if t == F32}
    for init in g.initializer:
        if init.data_type == F32 and not all(keeps(c) for c in consumers.get(init.name, [])):
            init.CopyFrom(_fp16_tensor(init, stats))
            dtype[init.name] = F16

    cast_cache: dict[tuple[str, int], str] = {}
    new_nodes: list[onnx.NodeProto] = []

    def cast(name: str, to: int) -> str:
        key = (name, to)
        if key not in cast_cache:
            out = f"{name}__to_{'fp16' if to == F16 else 'fp32'}"
            new_nodes.append(helper.make_node("Cast", [name], [out], to=to, name=f"{out}_cast"))
            cast_cache[key] = out
            dtype[out] = to
            stats.casts += 1
        return cast_cache[key]

    for node in g.node:
        if node.op_type in _SHAPE_ONLY_OPS:
            new_nodes.append(node)
            continue
        want = F32 if keeps(node) else F16
        for i, name in enumerate(node.input):
            if name and name in dtype and dtype[name] != want:
                node.input[i] = cast(name, want)
        if want == F32:
            stats.kept[node.op_type] += 1
        else:
            _retarget_attributes(node, stats)
            stats.converted += 1
        for name in node.output:
            if types.get(name) == F32:
                dtype[name] = want
        new_nodes.append(node)

    # Outputs stay float32: the producer writes NAME__fp16, a final Cast writes NAME.
    for out in g.output:
        if types.get(out.name) == F32 and dtype.get(out.name) == F16:
            inner = f"{out.name}__fp16"
            for node in new_nodes:
                node.output[:] = [inner if o == out.name else o for o in node.output]
                node.input[:] = [inner if i == out.name else i for i in node.input]
            new_nodes.append(helper.make_node("Cast", [inner], [out.name], to=F32, name=f"{out.name}_cast_out"))
            stats.casts += 1
    del g.node[:]
    g.node.extend(new_nodes)
    # Drop the stale intermediate types and let inference rebuild them from the new graph.
    del g.value_info[:]
    model = onnx.shape_inference.infer_shapes(model, strict_mode=True, data_prop=False)
    helper.set_model_props(model, {**{p.key: p.value for p in model.metadata_props}, "dil.precision": "fp16"})
    onnx.checker.check_model(model)
    info = {
        "kept_fp32": dict(sorted(stats.kept.items())),
        "fp16_nodes": stats.converted,
        "casts": stats.casts,
        "clipped_constants": stats.clipped,
    }
    return model, info


def precision_report(model: onnx.ModelProto) -> dict:
    """Element types found in a graph, for checks: {"inputs": {name: type}, "outputs": {...},
    "nodes": {op: sorted float types of its float outputs}} (type names "float", "float16")."""
    types = _elem_types(model)
    name = {F32: "float", F16: "float16"}

    def io(values):
        return {v.name: onnx.TensorProto.DataType.Name(v.type.tensor_type.elem_type).lower() for v in values}

    nodes: dict[str, set] = {}
    for node in model.graph.node:
        found = {name[types[o]] for o in node.output if types.get(o) in name}
        if found:
            nodes.setdefault(node.op_type, set()).update(found)
    return {"inputs": io(model.graph.input), "outputs": io(model.graph.output),
            "nodes": {op: sorted(t) for op, t in sorted(nodes.items())}}


def convert_files(paths: dict, out_dir, name: str) -> tuple[dict[str, Path], dict]:
    """Convert {graph: float32 ONNX path} into out_dir/NAME.fp16.<graph>.onnx (atomic writes).

    Returns ({graph: new path}, {graph: conversion info}).
    """
    out_paths, infos = {}, {}
    for graph, src in paths.items():
        converted, info = convert_to_fp16(onnx.load(str(src)))
        dst = Path(out_dir) / f"{fp16_name(name)}.{graph}.onnx"
        with atomic_path(dst) as tmp:
            onnx.save(converted, str(tmp))
        out_paths[graph], infos[graph] = dst, {**info, "source": Path(src).name}
    return out_paths, infos
