"""dil-export: graph contract, ONNX Runtime vs PyTorch, subset equivalence, validation gate, CLI.

Exporting costs ~20 s, so most checks use the session artifact `tiny_artifact` (conftest); only the
failed-validation test and the CLI success test export again (both marked slow).
"""

from __future__ import annotations

import copy
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from click.testing import CliRunner  # noqa: E402

from dil.export import artifact as artifact_mod  # noqa: E402
from dil.export.artifact import ExportError, ExportOptions, export_artifact  # noqa: E402
from dil.export.cli import main as cli  # noqa: E402
from dil.export.real_data import training_windows  # noqa: E402
from dil.export.graph_check import FP32_TOLERANCE, errors, validate_graphs  # noqa: E402
from dil.runtime.manifest import load_manifest  # noqa: E402
from dil.runtime.sampling.schedule import NoiseSchedule  # noqa: E402

F32, I64 = onnx.TensorProto.FLOAT, onnx.TensorProto.INT64


def _sessions(manifest_path):
    m = load_manifest(manifest_path)
    return {g: ort.InferenceSession(str(m.graph_path(g)), providers=["CPUExecutionProvider"]) for g in m.graphs}


def _files(folder):
    return {p.name: p.read_bytes() for p in folder.iterdir()}


# ---------------------------------------------------------------------------------------------
# The graph contract (docs/architecture.md section 4).
def test_graph_io_names_dtypes_and_dynamic_axes(tiny_artifact, tiny_config):
    c = tiny_config
    layers, D, E = c.num_layers, c.d_model, c.time_embed_dim
    want = {
        "encode": (
            [("ctx", F32, ["G", "L", 2])],
            [("k_ctx", F32, [layers, "G", "L", D]), ("v_ctx", F32, [layers, "G", "L", D])],
        ),
        "denoise": (
            [
                ("x_sub", F32, ["G", "N", "S", 1]),
                ("pos_sub", I64, ["G", "N", "S"]),
                ("t_feat", F32, ["G", "N", E]),
                ("k_ctx", F32, [layers, "G", "L", D]),
                ("v_ctx", F32, [layers, "G", "L", D]),
                ("k_hor", F32, [layers, "G", "N", "H", D]),
                ("v_hor", F32, [layers, "G", "N", "H", D]),
                ("hor_valid", F32, ["G", "N", "H"]),
            ],
            [
                ("eps_sub", F32, ["G", "N", "S", 1]),
                ("k_sub", F32, [layers, "G", "N", "S", D]),
                ("v_sub", F32, [layers, "G", "N", "S", D]),
            ],
        ),
    }
    manifest = load_manifest(tiny_artifact)
    for graph, (inputs, outputs) in want.items():
        model = onnx.load(str(manifest.graph_path(graph)))
        assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 18

        def io(values):
            return [(v.name, v.type.tensor_type.elem_type,
                     [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]) for v in values]

        assert io(model.graph.input) == inputs
        assert io(model.graph.output) == outputs
        # The manifest records the same I/O and the axis ranges.
        entry = manifest.graphs[graph]
        assert [(v["name"], v["shape"]) for v in entry["inputs"]] == [(n, s) for n, _, s in inputs]
        assert [v["dtype"] for v in entry["inputs"]] == ["int64" if t == I64 else "float32" for _, t, _ in inputs]
    raw = json.loads(tiny_artifact.read_text())
    assert raw["dynamic_axes"]["L"] == {"min": 1, "max": c.context_length}
    assert raw["dynamic_axes"]["H"] == {"min": 1, "max": c.horizon}


# ---------------------------------------------------------------------------------------------
# ONNX Runtime vs the PyTorch module.
def _denoise_inputs(rng, c, G, N, S, L, H, pad):
    """Random denoise inputs: distinct positions per row (padding = H), random cache and validity."""
    pos = np.sort(np.argsort(rng.random((G, N, H)), axis=-1)[..., :S], axis=-1)
    if pad:
        pos[:, 0, -1] = H  # the first row of every context ends with a padding entry
    return {
        "x_sub": rng.standard_normal((G, N, S, 1)).astype(np.float32),
        "pos_sub": pos.astype(np.int64),
        "t_feat": rng.standard_normal((G, N, c.time_embed_dim)).astype(np.float32),
        "k_hor": rng.standard_normal((c.num_layers, G, N, H, c.d_model)).astype(np.float32),
        "v_hor": rng.standard_normal((c.num_layers, G, N, H, c.d_model)).astype(np.float32),
        "hor_valid": (rng.random((G, N, H)) > 0.4).astype(np.float32),
    }


SHAPES = [  # G, N, S, L, H, pad (tiny config: context_length 16, horizon 8)
    (2, 3, 3, 16, 8, True),  # S < H, padding
    (2, 2, 8, 16, 8, False),  # S = H
    (3, 1, 2, 16, 8, False),  # N = 1
    (1, 2, 4, 5, 8, False),  # L < context_length
    (2, 2, 3, 16, 4, True),  # H < horizon, padding
]


@pytest.mark.parametrize("G,N,S,L,H,pad", SHAPES)
def test_onnx_matches_torch(tiny_artifact, tiny_model, tiny_config, G, N, S, L, H, pad):
    rng = np.random.default_rng(G * 100 + N * 10 + S)
    sess = _sessions(tiny_artifact)
    ctx = rng.standard_normal((G, L, 2)).astype(np.float32)
    ctx[..., 1] = rng.random((G, L)) > 0.2
    with torch.no_grad():
        k_ctx, v_ctx = (t.numpy() for t in tiny_model.encode(torch.from_numpy(ctx)))
    k_onnx, v_onnx = sess["encode"].run(None, {"ctx": ctx})
    assert k_onnx.shape == (tiny_config.num_layers, G, L, tiny_config.d_model)
    assert np.abs(k_onnx - k_ctx).max() <= 1e-5 and np.abs(v_onnx - v_ctx).max() <= 1e-5

    feed = dict(_denoise_inputs(rng, tiny_config, G, N, S, L, H, pad), k_ctx=k_ctx, v_ctx=v_ctx)
    onnx_out = sess["denoise"].run(["eps_sub", "k_sub", "v_sub"], feed)
    order = ("x_sub", "pos_sub", "t_feat", "k_ctx", "v_ctx", "k_hor", "v_hor", "hor_valid")
    with torch.no_grad():
        ref = [t.numpy() for t in tiny_model.denoise(*(torch.from_numpy(feed[k]) for k in order))]
    assert onnx_out[0].shape == (G, N, S, 1)
    for out, r in zip(onnx_out, ref):
        assert np.abs(out - r).max() <= 1e-5
    assert np.abs(onnx_out[0]).max() > 1e-3  # eps is not trivially zero (the head is random)


def _full_and_subset(encode, denoise, rng, c, G=2, N=3, S=3):
    """(subset outputs, the full step's rows at the same tokens, real-entry mask [G, N, S])."""
    H, L, layers, D = c.horizon, c.context_length, c.num_layers, c.d_model
    ctx = np.stack([rng.standard_normal((G, L)), np.ones((G, L))], -1).astype(np.float32)
    x = rng.standard_normal((G, N, H, 1)).astype(np.float32)
    t = rng.standard_normal((G, N, c.time_embed_dim)).astype(np.float32)
    k_ctx, v_ctx = encode(ctx)
    zeros = np.zeros((layers, G, N, H, D), np.float32)
    full_pos = np.broadcast_to(np.arange(H), (G, N, H)).astype(np.int64)
    eps, k, v = denoise(x, full_pos, t, k_ctx, v_ctx, zeros, zeros, np.zeros((G, N, H), np.float32))
    # A different subset per row; one row holds a single token and two padding entries.
    pos = np.sort(np.argsort(rng.random((G, N, H)), axis=-1)[..., :S], axis=-1)
    pos[1, 2, 1:] = H
    real = pos < H
    valid = np.ones((G, N, H), np.float32)
    np.put_along_axis(valid, np.minimum(pos, H - 1), 0.0, axis=-1)
    valid[1, 2] = 1.0
    valid[1, 2, pos[1, 2, 0]] = 0.0
    idx = np.minimum(pos, H - 1)[..., None]
    x_sub = np.take_along_axis(x, idx, axis=2)
    out = denoise(x_sub, pos, t, k_ctx, v_ctx, k, v, valid)
    refs = (np.take_along_axis(eps, idx, 2), np.take_along_axis(k, idx[None], 3), np.take_along_axis(v, idx[None], 3))
    return out, refs, real


@pytest.mark.parametrize("engine", ["onnx", "torch"])
def test_subset_step_reproduces_full_step(tiny_artifact, tiny_model, tiny_config, engine):
    if engine == "onnx":
        sess = _sessions(tiny_artifact)
        names = [i.name for i in sess["denoise"].get_inputs()]
        encode = lambda ctx: sess["encode"].run(None, {"ctx": ctx})  # noqa: E731
        denoise = lambda *a: sess["denoise"].run(None, dict(zip(names, a)))  # noqa: E731
    else:
        def encode(ctx):
            with torch.no_grad():
                return [t.numpy() for t in tiny_model.encode(torch.from_numpy(ctx))]

        def denoise(*a):
            with torch.no_grad():
                return [t.numpy() for t in tiny_model.denoise(*(torch.from_numpy(np.ascontiguousarray(x)) for x in a))]

    out, refs, real = _full_and_subset(encode, denoise, np.random.default_rng(7), tiny_config)
    assert (~real).sum() == 2
    for o, r in zip(out, refs):
        mask = np.broadcast_to(real[..., None] if o.ndim == 4 else real[None, ..., None], o.shape)
        assert np.abs(o - r)[mask].max() <= 1e-5
    assert np.abs(refs[0]).max() > 1e-3


# ---------------------------------------------------------------------------------------------
# The validation recorded in the manifest, and the gate.
def test_manifest_validation_section(tiny_artifact, tiny_config):
    d = json.loads(tiny_artifact.read_text())
    v = d["validation"]
    assert v["passed"] is True and v["tolerance"] == FP32_TOLERANCE
    for g in ("encode", "denoise"):
        e = v["graphs"][g]
        assert e["passed"] is True and e["tolerance"] == FP32_TOLERANCE
        for kind in ("random", "real"):  # etth1 is bundled: real windows are available
            assert 0.0 < e[kind]["max_abs_err"] < 1e-5
            assert e[kind]["max_rel_err"] >= e[kind]["max_abs_err"] / 10  # rel floor 1e-2 -> rel >= abs / 10
    shapes = v["graphs"]["denoise"]["shapes"]
    H, L = tiny_config.horizon, tiny_config.context_length
    assert any(s["S"] < s["H"] for s in shapes) and any(s["S"] == s["H"] for s in shapes)
    assert any(s["N"] == 1 for s in shapes) and any(s["L"] < L for s in shapes)
    assert any(s["H"] < H for s in shapes) and any(s["pad"] for s in shapes)
    sub = v["subset_equivalence"]
    assert sub["passed"] is True and sub["tolerance"] == 1e-5
    assert all(x is not None and x <= 1e-5 for x in sub["max_abs_err"].values())
    real = v["real_data"]
    assert real["used"] is True and real["dataset"] == "etth1" and real["part"] == "val"
    assert set(d["versions"]) >= {"torch", "onnx", "onnxruntime", "onnxscript", "opset", "dil"}
    assert d["precision"] == "fp32"
    assert {"dataset", "sha256", "columns", "context_length", "horizon", "scaling"} <= set(d["data"])


def test_validation_detects_a_model_that_differs_from_the_graphs(tiny_artifact, tiny_model):
    m = load_manifest(tiny_artifact)
    paths = {g: m.graph_path(g) for g in m.graphs}
    good = validate_graphs(tiny_model, paths, NoiseSchedule(), None)
    assert good["passed"] is True and good["real_data"] == {"used": False}
    bad_model = copy.deepcopy(tiny_model)
    with torch.no_grad():
        bad_model.blocks[0].qkv.bias.add_(0.01)
    bad = validate_graphs(bad_model, paths, NoiseSchedule(), None)
    assert bad["passed"] is False
    assert bad["graphs"]["encode"]["max_abs_err"] > 1e-3 and bad["graphs"]["denoise"]["max_abs_err"] > 1e-3
    assert bad["subset_equivalence"]["passed"] is True  # each engine is still self-consistent


def test_errors_uses_relative_floor():
    # |1.0 - 1.1| = 0.1 -> rel 0.1 / 1.1; |0.0015 - 0.001| = 5e-4 -> rel 5e-4 / max(1e-3, 1e-2) = 0.05
    abs_err, rel_err = errors([np.array([1.0, 0.0015])], [np.array([1.1, 0.001])])
    assert abs_err == pytest.approx(0.1) and rel_err == pytest.approx(0.1 / 1.1)


def test_training_windows_are_real_validation_windows(tiny_checkpoint):
    from dil.data import load_dataset

    data = json.loads((tiny_checkpoint / "config.json").read_text())["data"]
    (ctx, tgt), info = training_windows(data, 16, 8, count=4)
    table = load_dataset("etth1")
    assert info["used"] is True and len(info["windows"]) == ctx.shape[0] == 4
    assert len({w["column"] for w in info["windows"]}) == 4  # spread over the series
    for row, w in enumerate(info["windows"]):
        o, col = w["origin"], table.names.index(w["column"])
        assert 8640 <= o <= 8640 + 2880 - 8  # etth1's validation part, rows 8640..11519
        np.testing.assert_array_equal(ctx[row], table.values[o - 16 : o, col])
        np.testing.assert_array_equal(tgt[row], table.values[o : o + 8, col])
    none, why = training_windows({"dataset": "my.csv", "source": "my.csv"}, 16, 8, count=4)
    assert none is None and why["used"] is False and "my.csv" in why["reason"]


# ---------------------------------------------------------------------------------------------
# Failure handling: nothing left behind, a previous artifact survives.
def test_exporter_error_is_one_line_and_removes_created_folder(tiny_checkpoint, tmp_path, monkeypatch):
    def broken_exporter(model, out_dir, name, progress=None):
        (out_dir / f"{name}.encode.onnx").write_bytes(b"partial")
        raise RuntimeError("exporter exploded\nwith a long traceback")

    monkeypatch.setattr(artifact_mod, "export_onnx", broken_exporter)
    out = tmp_path / "engines"
    with pytest.raises(ExportError, match="^ONNX export failed: exporter exploded$"):
        export_artifact(tiny_checkpoint, out, ExportOptions(name="tiny"))
    assert not out.exists() and list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_failed_validation_writes_nothing_and_keeps_previous(tiny_checkpoint, tiny_artifact, tmp_path, monkeypatch):
    out = tmp_path / "engines"
    out.mkdir()
    for p in tiny_artifact.parent.glob("tiny.*"):
        shutil.copy(p, out / p.name)
    before = _files(out)
    real_export = artifact_mod.export_onnx

    def export_then_corrupt(model, *args, **kwargs):  # the graphs no longer match the module
        paths = real_export(model, *args, **kwargs)
        with torch.no_grad():
            model.head.bias.add_(0.05)
        return paths

    monkeypatch.setattr(artifact_mod, "export_onnx", export_then_corrupt)
    with pytest.raises(ExportError) as info:
        export_artifact(tiny_checkpoint, out, ExportOptions(name="tiny"))
    msg = str(info.value)
    assert msg.startswith("validation failed: denoise: max abs error") and "\n" not in msg
    assert info.value.report["graphs"]["denoise"]["max_abs_err"] > FP32_TOLERANCE
    assert _files(out) == before  # no temporary folder or file left, the old artifact intact
    load_manifest(out / "tiny.json")  # and still consistent (hashes verified)


# ---------------------------------------------------------------------------------------------
# CLI.
def _one_line_error(result):
    assert result.exit_code != 0
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    return lines[0]


def test_cli_help():
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0
    for opt in ("--checkpoint", "--out", "--name", "--data"):
        assert opt in result.output


def test_cli_missing_checkpoint(tmp_path):
    line = _one_line_error(CliRunner().invoke(cli, ["--no-frontier", "--checkpoint", str(tmp_path / "nope"), "--out", str(tmp_path)]))
    assert "no checkpoint" in line
    assert list(tmp_path.iterdir()) == []


def test_cli_checkpoint_of_another_config(tiny_checkpoint, tmp_path):
    run = tmp_path / "other"
    shutil.copytree(tiny_checkpoint, run)
    cfg = json.loads((run / "config.json").read_text())
    cfg["model"]["d_model"] = 32  # the weights are for d_model 16
    (run / "config.json").write_text(json.dumps(cfg))
    line = _one_line_error(CliRunner().invoke(cli, ["--no-frontier", "--checkpoint", str(run), "--out", str(tmp_path / "eng")]))
    assert "do not match the model config" in line and "size mismatch" in line
    assert not (tmp_path / "eng").exists()


def test_cli_failed_export_leaves_no_new_folders(tiny_checkpoint, tmp_path):
    out = tmp_path / "a" / "b"  # created for the export, removed again when it fails
    line = _one_line_error(CliRunner().invoke(cli, ["--no-frontier", "--checkpoint", str(tmp_path / "nope"), "--out", str(out)]))
    assert "nope" in line and not (tmp_path / "a").exists()
    line = _one_line_error(CliRunner().invoke(cli, ["--no-frontier", "--checkpoint", str(tiny_checkpoint), "--out", "/dev/null/x"]))
    assert "/dev/null is not a folder" in line


def test_cli_missing_dependency_names_the_extra(tiny_checkpoint, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # import fails as if not installed
    line = _one_line_error(CliRunner().invoke(cli, ["--no-frontier", "--checkpoint", str(tiny_checkpoint), "--out", str(tmp_path)]))
    assert "dil[export]" in line


@pytest.mark.slow
def test_cli_exports_into_a_new_folder(tiny_checkpoint, tmp_path):
    out = tmp_path / "new" / "engines"  # missing folders are created
    result = CliRunner().invoke(cli, ["--no-frontier", "--checkpoint", str(tiny_checkpoint), "--out", str(out), "--name", "cli"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["cli.denoise.onnx", "cli.denoise_full.onnx", "cli.denoise_full_kv.onnx",
                                                     "cli.encode.onnx",
                                                     "cli.json", "cli.weights.safetensors"]
    m = load_manifest(out / "cli.onnx")
    assert m.validation["passed"] is True and m.name == "cli"
    assert f"wrote {out / 'cli.denoise.onnx'}" in result.output
    assert "subset equivalence" in result.output and "FAILED" not in result.output
    # The exporter's per-node stack traces (paths of the exporting machine) are not shipped.
    import dil.runtime

    here = str(Path(dil.runtime.__file__).resolve().parent.parent)
    for graph in ("cli.encode.onnx", "cli.denoise.onnx"):
        data = (out / graph).read_bytes()
        assert here.encode() not in data and b"site-packages" not in data
