"""The manifest is untrusted input: files only inside the artifact's folder, hashes always checked,
a missing field named in one line (dil.runtime.manifest).

Works on copies of the shipped artifact (no torch, no export needed), but for the artifact from before
"features", a copy of the tiny exported model of tests/conftest.py (the shipped model has features).
"""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import onnxruntime as ort
import pytest

from dil.runtime import Forecaster, ManifestError, OnnxEngine
from dil.runtime.manifest import default_artifact, load_manifest

NAME = "metro-traffic"
SUFFIXES = (".json", ".encode.onnx", ".denoise.onnx", ".denoise_full.onnx")  # the shipped artifact's files


def _copy(dest):
    """The shipped artifact's graph files and manifest in `dest`; returns (manifest path, its JSON as a dict)."""
    dest.mkdir(parents=True, exist_ok=True)
    source = default_artifact().parent
    for suffix in SUFFIXES:
        shutil.copy(source / (NAME + suffix), dest / (NAME + suffix))
    path = dest / f"{NAME}.json"
    return path, json.loads(path.read_text())


def _refused(path, *phrases) -> str:
    with pytest.raises(ManifestError) as err:
        load_manifest(path)
    text = str(err.value)
    assert "\n" not in text
    for phrase in phrases:
        assert phrase in text, text
    return text


def _graph_shapes(path):
    """{initializer or input name: shape} of an ONNX graph (its stored tensors, not the manifest)."""
    import onnx

    graph = onnx.load(path).graph
    shapes = {t.name: list(t.dims) for t in graph.initializer}
    for v in graph.input:
        shapes[v.name] = [d.dim_value or d.dim_param for d in v.type.tensor_type.shape.dim]
    return shapes


def test_a_copy_of_the_shipped_artifact_loads(tmp_path):
    """Its model config is the one its graphs were built with: one positional embedding per
    context patch and per horizon token (horizon_patch steps), inputs of the widths its features make."""
    path, _ = _copy(tmp_path)
    m = load_manifest(path)
    assert m.graph_path("denoise") == tmp_path / f"{NAME}.denoise.onnx"
    encode, denoise = (_graph_shapes(m.graph_path(g)) for g in ("encode", "denoise"))
    patches, d_model = encode["model.ctx_pos.weight"]
    assert m.model.context_length == patches * m.model.context_patch
    ctx = np.zeros((1, m.model.context_length, m.model.context_features), np.float32)
    k_ctx = ort.InferenceSession(m.graph_path("encode"), providers=["CPUExecutionProvider"]).run(None, {"ctx": ctx})[0]
    assert k_ctx.shape[2] == patches  # a full context makes one token per positional embedding
    tokens = m.model.horizon // m.model.horizon_patch
    assert [tokens, m.model.d_model] == denoise["model.hor_pos.weight"] == [m.data["horizon"] // m.model.horizon_patch, d_model]
    assert m.model.context_length == m.data["context_length"]  # the windows it was trained on
    assert encode["ctx"][-1] == m.model.context_features == m.features.context_width
    assert denoise["x_sub"][-1] == m.model.horizon_patch * m.model.horizon_features
    assert m.model.horizon_features == m.features.horizon_width


@pytest.mark.parametrize("name", ["../../etc/passwd", "/etc/passwd", "sub/../../x.onnx"])
def test_graph_file_names_that_leave_the_folder_are_refused(tmp_path, name):
    path, d = _copy(tmp_path)
    d["graphs"]["encode"]["file"] = name
    path.write_text(json.dumps(d))
    _refused(path, repr(name), "not inside the artifact's folder", "graphs.encode.file")


def test_a_traversal_to_a_genuine_graph_is_refused_too(tmp_path):
    """The graph outside has the right sha256, so only the path check can refuse it."""
    path, d = _copy(tmp_path / "a" / "b")
    shutil.move(tmp_path / "a" / "b" / f"{NAME}.denoise.onnx", tmp_path / "real.onnx")
    for name in ("../../real.onnx", str(tmp_path / "real.onnx")):
        d["graphs"]["denoise"]["file"] = name
        path.write_text(json.dumps(d))
        _refused(path, repr(name), "not inside the artifact's folder")
        with pytest.raises(ManifestError):
            Forecaster.load(path)


def test_a_symlink_leading_out_of_the_folder_is_refused(tmp_path):
    path, _ = _copy(tmp_path / "artifact")
    graph = tmp_path / "artifact" / f"{NAME}.encode.onnx"
    shutil.move(graph, tmp_path / "elsewhere.onnx")  # same bytes, same sha256
    os.symlink(tmp_path / "elsewhere.onnx", graph)
    _refused(path, "resolves outside the artifact's folder")
    # A symlink that stays inside the folder is fine.
    graph.unlink()
    shutil.move(tmp_path / "elsewhere.onnx", tmp_path / "artifact" / "encode-v1.onnx")
    os.symlink("encode-v1.onnx", graph)
    assert load_manifest(path).graph_path("encode") == graph


def test_a_graph_without_its_sha256_is_refused(tmp_path):
    path, d = _copy(tmp_path)
    del d["graphs"]["denoise"]["sha256"]
    path.write_text(json.dumps(d))
    _refused(path, "lacks the field 'graphs.denoise.sha256'")
    d["graphs"]["denoise"]["sha256"] = ""
    path.write_text(json.dumps(d))
    _refused(path, "'graphs.denoise.sha256' is not a sha256")


def test_hashes_are_always_checked(tmp_path):
    path, _ = _copy(tmp_path)
    graph = tmp_path / f"{NAME}.denoise.onnx"
    data = bytearray(graph.read_bytes())
    data[-1] ^= 1  # one bit of the last initializer
    graph.write_bytes(bytes(data))
    _refused(path, "sha256 differs")
    for load in (OnnxEngine.load, Forecaster.load):
        with pytest.raises(ManifestError, match="sha256 differs"):
            load(path)
    with pytest.raises(TypeError):  # no switch turns the check off
        load_manifest(path, verify_hashes=False)


@pytest.mark.parametrize(
    "field",
    ["format_version", "name", "precision", "model", "schedule", "data", "graphs", "model.d_model",
     "model.context_length", "schedule.num_steps", "schedule.kind", "graphs.encode", "graphs.denoise.file"],
)
def test_a_missing_field_is_named(tmp_path, field):
    path, d = _copy(tmp_path)
    *parents, last = field.split(".")
    node = d
    for part in parents:
        node = node[part]
    del node[last]
    path.write_text(json.dumps(d))
    _refused(path, f"lacks the field '{field}")  # graphs.encode -> 'graphs.encode.file'


def test_a_field_of_the_wrong_type_is_named(tmp_path):
    path, d = _copy(tmp_path)
    d["graphs"] = ["metro-traffic.encode.onnx", "metro-traffic.denoise.onnx"]
    path.write_text(json.dumps(d))
    _refused(path, "field 'graphs' is a list, expected a dict")
    path.write_text("[1, 2]")
    _refused(path, "is not a JSON object")


def test_checks_come_before_any_graph_is_read(tmp_path):
    """A bad entry in the second graph is refused even when the first graph's file is gone."""
    path, d = _copy(tmp_path)
    (tmp_path / f"{NAME}.encode.onnx").unlink()
    d["graphs"]["denoise"]["file"] = "../../etc/passwd"
    path.write_text(json.dumps(d))
    _refused(path, "'../../etc/passwd'")


def test_dil_run_refuses_a_traversing_manifest_in_one_line(tmp_path):
    from click.testing import CliRunner

    from dil.runtime.cli.run import main

    path, d = _copy(tmp_path)
    d["graphs"]["encode"]["file"] = "../../etc/passwd"
    path.write_text(json.dumps(d))
    table = tmp_path / "in.csv"
    table.write_text("x\n" + "\n".join(str(i % 7) for i in range(200)) + "\n")
    out = tmp_path / "forecast.csv"
    result = CliRunner().invoke(main, ["--engine", str(path), "--input", str(table), "--out", str(out)])
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "'../../etc/passwd' is not inside the artifact's folder" in lines[0], result.output
    assert not out.exists()



# -- "features": the model's inputs beyond the target (docs/model.md section 1.4) -----------------
def test_an_artifact_without_features_has_none(tiny_artifact, tmp_path):
    """An artifact exported before issue 10 records no "features": it loads as FeatureSpec(),
    whose widths (2, 1) are its graphs' (the tiny model has no features), and writes them back
    explicitly."""
    from dil.runtime.inputs.features import FeatureSpec

    for suffix in (".encode.onnx", ".denoise.onnx"):
        shutil.copy(tiny_artifact.parent / f"tiny{suffix}", tmp_path / f"tiny{suffix}")
    d = json.loads(tiny_artifact.read_text())
    del d["features"], d["weights"], d["graphs"]["denoise_full"], d["graphs"]["denoise_full_kv"]  # as dil-export wrote it then
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(d))
    m = load_manifest(path)
    assert m.features == FeatureSpec() and (m.model.context_features, m.model.horizon_features) == (2, 1)
    assert (_graph_shapes(m.graph_path("encode"))["ctx"][-1], _graph_shapes(m.graph_path("denoise"))["x_sub"][-1]) \
        == (2, 1)
    assert m.to_dict()["features"] == {"freq": None, "time_features": [], "covariates": []}


def test_features_round_trip_and_match_the_model_widths(tmp_path):
    path, d = _copy(tmp_path)
    d["features"] = {"freq": "h", "time_features": ["hour_of_day"],
                     "covariates": [{"name": "holiday", "kind": "categorical", "known": True,
                                     "categories": ["None", "Xmas"]},
                                    {"name": "rain", "kind": "numeric", "known": False, "mean": 1.5, "std": 2.0}]}
    d["model"]["context_features"], d["model"]["horizon_features"] = 2 + 3 + 1, 1 + 3  # Fk = 1 + 2, Fp = 1
    path.write_text(json.dumps(d))
    m = load_manifest(path)
    f = m.features
    assert (f.known_covariates, f.past_covariates, f.known_width, f.past_width) == (("holiday",), ("rain",), 3, 1)
    assert f.covariates[1].mean == 1.5 and f.covariates[0].categories == ("None", "Xmas")
    assert m.to_dict()["features"] == d["features"] | {"covariates": [
        {**d["features"]["covariates"][0], "mean": 0.0, "std": 1.0},
        {**d["features"]["covariates"][1], "categories": []}]}

    d["model"]["horizon_features"] = 1  # the graphs' widths no longer what the features make
    path.write_text(json.dumps(d))
    _refused(path, "model.horizon_features is 1 but its 'features' make 4 per step")
    d["model"]["horizon_features"], d["model"]["context_features"] = 4, 2
    path.write_text(json.dumps(d))
    _refused(path, "model.context_features is 2 but its 'features' make 6 per step")


@pytest.mark.parametrize(
    "features, phrase",
    [
        ([1, 2], ("field 'features' is a list, expected a dict",)),
        ({"time_features": ["hour_of_week"]}, ("'features'", "time feature", "'hour_of_week'")),
        ({"covariates": [{"name": "x", "kind": "text", "known": True}]}, ("'features'", "'x'", "kind", "'text'")),
        ({"covariates": [{"name": "x", "known": True}]}, ("field 'features' is invalid", "kind")),
    ],
)
def test_bad_features_are_refused_in_one_line(tmp_path, features, phrase):
    path, d = _copy(tmp_path)
    d["features"] = features
    path.write_text(json.dumps(d))
    _refused(path, *phrase)
