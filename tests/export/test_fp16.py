"""FP16 graphs: structure (float32 islands and I/O), numbers against the float32 torch module on
ONNX Runtime CPU, constant clipping, refusals, and the NAME.fp16 artifact end to end."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from click.testing import CliRunner  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from dil.export.fp16 import (  # noqa: E402
    FP16_MAX,
    FP16_SUBSET_TOLERANCE,
    FP16_TOLERANCE,
    Fp16Error,
    convert_files,
    convert_to_fp16,
    precision_report,
)
from dil.export.graph_check import validate_graphs  # noqa: E402
from dil.runtime.manifest import load_manifest  # noqa: E402
from dil.runtime.sampling.schedule import NoiseSchedule  # noqa: E402

F32, F16 = TensorProto.FLOAT, TensorProto.FLOAT16


@pytest.fixture(scope="module")
def fp16_graphs(tiny_artifact, tmp_path_factory):
    m = load_manifest(tiny_artifact)
    paths, info = convert_files({g: m.graph_path(g) for g in ("encode", "denoise")}, tmp_path_factory.mktemp("fp16"), "tiny")
    return paths, info


def _types(model):
    inferred = onnx.shape_inference.infer_shapes(model)
    t = {i.name: i.data_type for i in inferred.graph.initializer}
    for v in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        t[v.name] = v.type.tensor_type.elem_type
    return t


def test_fp16_graph_keeps_islands_and_io_float32(fp16_graphs, tiny_artifact):
    paths, info = fp16_graphs
    original = load_manifest(tiny_artifact)
    for graph, path in paths.items():
        model = onnx.load(str(path))
        ref = onnx.load(str(original.graph_path(graph)))
        report = precision_report(model)
        # The engine contract is unchanged: same names, float32 (pos_sub int64) in and out.
        assert report["inputs"] == precision_report(ref)["inputs"]
        assert report["outputs"] == precision_report(ref)["outputs"]
        assert set(report["outputs"].values()) == {"float"}
        assert report["nodes"]["LayerNormalization"] == ["float"] and report["nodes"]["Softmax"] == ["float"]
        assert report["nodes"]["MatMul"] == ["float16"] and report["nodes"]["Add"] == ["float16"]
        types = _types(model)
        for node in model.graph.node:
            if node.op_type in ("LayerNormalization", "Softmax"):
                assert all(types[i] == F32 for i in node.input if i), node.name  # scale/bias stay float32 too
        weights = {i.name: i.data_type for i in model.graph.initializer}
        assert any(t == F16 for t in weights.values())
        n_ln = sum(n.op_type == "LayerNormalization" for n in ref.graph.node)
        assert info[graph]["kept_fp32"]["LayerNormalization"] == n_ln
        assert info[graph]["source"] == original.graph_path(graph).name


def test_fp16_matches_torch_within_tolerance(fp16_graphs, tiny_model, tiny_artifact):
    paths, _ = fp16_graphs
    r16 = validate_graphs(tiny_model, paths, NoiseSchedule(), tolerance=FP16_TOLERANCE,
                          subset_tolerance=FP16_SUBSET_TOLERANCE, seed=3)
    assert r16["passed"], r16
    m32 = load_manifest(tiny_artifact)
    r32 = validate_graphs(tiny_model, {g: m32.graph_path(g) for g in paths}, NoiseSchedule(), seed=3)
    for g in paths:
        e16, e32 = r16["graphs"][g]["max_abs_err"], r32["graphs"][g]["max_abs_err"]
        # Really FP16: far above float32 rounding, yet within the documented tolerance.
        assert 1e-5 < e16 <= FP16_TOLERANCE and e16 > 20 * e32


def _tiny_graph(nodes, inits, out_type=F32):
    x = helper.make_tensor_value_info("x", F32, [2, 3])
    y = helper.make_tensor_value_info("y", out_type, None)
    g = helper.make_graph(nodes, "t", [x], [y], initializer=inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])


def test_constants_beyond_fp16_range_are_clipped_and_casts_retargeted():
    big = numpy_helper.from_array(np.array([1e6, -1e6, 1.5], np.float32), "big")
    nodes = [helper.make_node("Less", ["x", "big"], ["lt"]),
             helper.make_node("Cast", ["lt"], ["m"], to=F32),  # float32 inside the FP16 region
             helper.make_node("Mul", ["x", "m"], ["b"]),
             helper.make_node("ReduceMean", ["b"], ["y"], keepdims=0)]
    model, info = convert_to_fp16(_tiny_graph(nodes, [big]))
    assert info["clipped_constants"] == 2 and info["kept_fp32"] == {"ReduceMean": 1}
    clipped = numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == "big"))
    assert clipped.dtype == np.float16 and clipped.tolist() == [FP16_MAX, -FP16_MAX, 1.5]
    casts = [n for n in model.graph.node if n.op_type == "Cast" and n.input[0] == "lt"]
    assert casts[0].attribute[0].i == F16
    x = np.array([[1, -2, 0.25], [3, 0.5, 2]], np.float32)
    y = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    ref = np.mean(x * (x < np.array([1e6, -1e6, 1.5])))  # = (1 + 0.25 + 3) / 6
    assert y.dtype == np.float32 and y == pytest.approx(ref, rel=1e-3)


def test_conversion_refusals():
    x = helper.make_tensor_value_info("x", F32, [1])
    branch = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "b", [], [x])
    cond = numpy_helper.from_array(np.array(True), "c")
    model = _tiny_graph([helper.make_node("If", ["c"], ["y"], then_branch=branch, else_branch=branch)], [cond])
    with pytest.raises(Fp16Error, match="If"):
        convert_to_fp16(model)
    w = numpy_helper.from_array(np.ones(3, np.float16), "w")
    with pytest.raises(Fp16Error, match="already holds float16"):
        convert_to_fp16(_tiny_graph([helper.make_node("Identity", ["x"], ["y"])], [w]))


@pytest.mark.slow
def test_export_fp16_artifact_end_to_end(tiny_checkpoint, tmp_path):
    """dil-export --fp16 writes NAME.fp16.*; dil-run/Forecaster use it through NAME.fp16.onnx."""
    from dil.export.cli import main as export_cli
    from dil.runtime import Forecaster

    out = tmp_path / "engines"
    res = CliRunner().invoke(export_cli, ["--no-frontier", "--checkpoint", str(tiny_checkpoint), "--out", str(out), "--name", "tiny",
                                          "--fp16", "--quiet"])
    assert res.exit_code == 0, res.output
    assert "FP16 vs PyTorch float32" in res.output
    m16 = load_manifest(out / "tiny.fp16.onnx")
    assert m16.precision == "fp16" and m16.name == "tiny.fp16"
    assert m16.validation["passed"] and m16.validation["tolerance"] == FP16_TOLERANCE
    assert m16.extra["fp16"]["source_artifact"] == "tiny.json"
    assert {g["file"] for g in m16.graphs.values()} == {"tiny.fp16.encode.onnx", "tiny.fp16.denoise.onnx",
                                                         "tiny.fp16.denoise_full.onnx",
                                                         "tiny.fp16.denoise_full_kv.onnx"}

    rng = np.random.default_rng(0)
    history = rng.standard_normal((m16.model.context_length + 3, 4)).cumsum(0)
    # Guard off: the untrained tiny model's samples would all sit on the clip, equal in both.
    f16 = Forecaster.load(out / "tiny.fp16.onnx").predict(history, num_samples=16, steps=6, seed=2, x0_clip=0.0)
    f32 = Forecaster.load(out / "tiny.onnx").predict(history, num_samples=16, steps=6, seed=2, x0_clip=0.0)
    diff = np.abs(f16.standardised() - f32.standardised())
    # Same noise, FP16 network: small differences (the early high-noise steps amplify eps errors
    # by sigma / alpha, so single values move more than the graph-level tolerance).
    assert np.isfinite(diff).all() and 0 < np.median(diff) < 0.05 and diff.max() < 0.5
    q16, q32 = f16.quantiles, f32.quantiles
    assert np.abs(q16 - q32).max() < 0.1 * np.abs(q32).max()
