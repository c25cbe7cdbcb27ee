"""TensorRT: profiles and refusals (pure Python, run everywhere), the cache-update graph (ONNX
Runtime), the no-GPU refusals (run where there is no GPU), and build/run/parity on a GPU (run where
TensorRT and an NVIDIA GPU are present, skipped with the reason elsewhere).
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from dil.runtime.backends.cuda import gpu_info
from dil.runtime.backends.trt_profile import (
    PlanMismatch,
    ProfileError,
    check_plan_record,
    check_shapes,
    input_shapes,
    parse_range,
    plan_key,
    rebuild_command,
    resolve_profile,
)

GPU = gpu_info()
try:
    import tensorrt  # noqa: F401

    HAVE_TRT = True
except ImportError:
    HAVE_TRT = False
needs_gpu = pytest.mark.skipif(
    GPU is None or not HAVE_TRT,
    reason="needs an NVIDIA GPU and TensorRT (pip install 'dil[trt]'): "
    + ("no GPU here" if GPU is None else "tensorrt is not installed"),
)
no_gpu_only = pytest.mark.skipif(GPU is not None, reason="checks the refusal on machines without a GPU")


# ---------------------------------------------------------------------------------------------
# Profiles (no GPU needed).
def test_default_profile_follows_the_model(tiny_config):
    p = resolve_profile(tiny_config)
    L, H = tiny_config.context_length, tiny_config.horizon
    assert p["G"] == {"min": 1, "opt": 16, "max": 32}
    assert p["N"] == {"min": 1, "opt": 100, "max": 128}
    assert p["S"] == {"min": 1, "opt": H, "max": H}
    assert p["L"] == {"min": L, "opt": L, "max": L} and p["H"] == {"min": H, "opt": H, "max": H}
    assert resolve_profile(tiny_config, G=(2, 4, 8), H=(4, 6, 8))["S"] == {"min": 1, "opt": 8, "max": 8}


@pytest.mark.parametrize("ranges, text", [
    ({"G": (4, 2, 8)}, "1 <= min <= opt <= max"),
    ({"N": (0, 1, 2)}, "1 <= min"),
    ({"L": (1, 8, 99)}, "context_length"),
    ({"H": (1, 8, 99)}, "horizon"),
    ({"S": (1, 4, 8), "H": (2, 4, 6)}, "S max 8 exceeds H max 6"),
    ({"Q": (1, 1, 1)}, "unknown profile axis"),
])
def test_bad_profile_ranges_are_refused(tiny_config, ranges, text):
    with pytest.raises(ProfileError, match=text):
        resolve_profile(tiny_config, **ranges)


def test_parse_range():
    assert parse_range("1,16,32") == (1, 16, 32)
    assert parse_range(" 8 ") == (8, 8, 8)
    for bad in ("1,2", "a,b,c", "1,2,3,4"):
        with pytest.raises(ProfileError):
            parse_range(bad)


def test_profile_input_shapes(tiny_config):
    c = tiny_config
    p = resolve_profile(c, G=(1, 2, 3), N=(1, 5, 10), S=(1, 4, 8))
    shapes = input_shapes("denoise", c, p)
    assert shapes["k_hor"] == ((c.num_layers, 1, 1, c.horizon, c.d_model), (c.num_layers, 2, 5, c.horizon, c.d_model),
                               (c.num_layers, 3, 10, c.horizon, c.d_model))
    assert shapes["pos_sub"] == ((1, 1, 1), (2, 5, 4), (3, 10, 8))
    assert shapes["t_feat"][2] == (3, 10, c.time_embed_dim)
    assert input_shapes("encode", c, p)["ctx"][2] == (3, c.context_length, c.context_features)


def test_profile_with_context_patches_counts_steps_and_feeds_tokens(tiny_config):
    """P = 4: the profile's L is in steps (multiples of 4, else refused naming context_patch); the
    engines' k_ctx/v_ctx get L / 4 tokens; a call's context is reported back in steps."""
    from dataclasses import replace

    c = replace(tiny_config, context_patch=4, context_features=5, horizon_features=3)
    p = resolve_profile(c, L=(8, 16, 16))
    assert input_shapes("encode", c, p)["ctx"] == ((1, 8, 5), (16, 16, 5), (32, 16, 5))
    assert input_shapes("denoise", c, p)["k_ctx"] == ((c.num_layers, 1, 2, c.d_model), (c.num_layers, 16, 4, c.d_model),
                                                      (c.num_layers, 32, 4, c.d_model))
    assert input_shapes("denoise", c, p)["x_sub"][2] == (32, 128, c.horizon, 3)
    assert resolve_profile(c)["L"] == {"min": 16, "opt": 16, "max": 16}
    with pytest.raises(ProfileError, match=r"^profile L 6,16,16 must be multiples of the model's context_patch 4"):
        resolve_profile(c, L=(6, 16, 16))
    feeds = _denoise_feeds(c, 2, 3, 4, L=2)  # 2 context tokens = 8 steps
    feeds["x_sub"] = np.zeros((2, 3, 4, 3))
    assert check_shapes("denoise", feeds, c, p, "REBUILD")["L"] == 8
    feeds = _denoise_feeds(c, 2, 3, 4, L=1)  # 4 steps: below the profile's 8
    feeds["x_sub"] = np.zeros((2, 3, 4, 3))
    with pytest.raises(ProfileError, match=r"L=4 is outside the engine's profile L \[8, 16\]"):
        check_shapes("denoise", feeds, c, p, "REBUILD")


def _denoise_feeds(c, G, N, S, H=None, L=None):
    H, L = H or c.horizon, L or c.context_length
    z = np.zeros
    return {"x_sub": z((G, N, S, 1)), "pos_sub": z((G, N, S), np.int64), "t_feat": z((G, N, c.time_embed_dim)),
            "k_ctx": z((c.num_layers, G, L, c.d_model)), "v_ctx": z((c.num_layers, G, L, c.d_model)),
            "k_hor": z((c.num_layers, G, N, H, c.d_model)), "v_hor": z((c.num_layers, G, N, H, c.d_model)),
            "hor_valid": z((G, N, H))}


def test_shapes_inside_the_profile_pass_and_outside_are_refused(tiny_config):
    c = tiny_config
    p = resolve_profile(c, G=(1, 2, 4), N=(1, 8, 16))
    assert check_shapes("denoise", _denoise_feeds(c, 4, 16, 3), c, p, "REBUILD") == {
        "G": 4, "N": 16, "S": 3, "L": c.context_length, "H": c.horizon}
    with pytest.raises(ProfileError) as err:
        check_shapes("denoise", _denoise_feeds(c, 5, 2, 3), c, p, "REBUILD")
    msg = str(err.value)
    assert "G=5" in msg and "[1, 4]" in msg and "--batch-series" in msg and "REBUILD --trt-batch 1,2,5" in msg
    assert "\n" not in msg
    with pytest.raises(ProfileError, match="N=17"):
        check_shapes("denoise", _denoise_feeds(c, 1, 17, 3), c, p, "REBUILD")
    with pytest.raises(ProfileError, match="L=8"):  # the runtime always feeds context_length
        check_shapes("encode", {"ctx": np.zeros((1, 8, c.context_features))}, c, p, "REBUILD")
    bad = _denoise_feeds(c, 2, 2, 3)
    bad["k_hor"] = np.zeros((c.num_layers, 2, 3, c.horizon, c.d_model))  # N differs between inputs
    with pytest.raises(ProfileError, match="axis N is 2 in one input and 3 in k_hor"):
        check_shapes("denoise", bad, c, p, "REBUILD")
    bad = _denoise_feeds(c, 2, 2, 3)
    bad["t_feat"] = np.zeros((2, 2, c.time_embed_dim + 1))
    with pytest.raises(ProfileError, match="axis E must be"):
        check_shapes("denoise", bad, c, p, "REBUILD")


RECORD = {"version": "10.7.0", "gpu": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"}


def test_plan_record_must_match_this_machine():
    check_plan_record(RECORD, "10.7.0", "NVIDIA H100 80GB HBM3", "9.0", "REBUILD")
    cases = [
        (("10.8.1", "NVIDIA H100 80GB HBM3", "9.0"), "built with TensorRT 10.7.0, this machine has TensorRT 10.8.1"),
        (("10.7.0", "NVIDIA A100-SXM4-40GB", "8.0"), "compute capability 9.0"),
        (("10.7.0", "NVIDIA H100 PCIe", "9.0"), "built on a NVIDIA H100 80GB HBM3, this GPU is a NVIDIA H100 PCIe"),
    ]
    for args, text in cases:
        with pytest.raises(PlanMismatch) as err:
            check_plan_record(RECORD, *args, rebuild="dil-export --engine x.json --tensorrt")
        assert text in str(err.value) and "dil-export --engine x.json --tensorrt" in str(err.value)
        assert ".onnx" in str(err.value)


def test_plan_key_changes_with_every_ingredient():
    base = ({"encode": "a", "denoise": "b"}, "10.7.0", "9.0", "fp16", {"G": {"min": 1}}, "fp16-flag")
    keys = {plan_key(*base)}
    for i, other in enumerate(({"encode": "a", "denoise": "c"}, "11.0.0", "8.9", "fp32", {"G": {"min": 2}}, "fp32")):
        args = list(base)
        args[i] = other
        keys.add(plan_key(*args))
    assert len(keys) == 7 and plan_key(*base) == plan_key(*base)


def test_build_mode_per_tensorrt_version():
    onnx = pytest.importorskip("onnx")  # noqa: F841 - dil.export.tensorrt imports onnx
    from dil.export.tensorrt import TrtBuildError, build_mode

    assert build_mode("10.7.0", "fp32") == "fp32" and build_mode("11.1.0", "fp32") == "fp32"
    assert build_mode("10.7.0", "fp16") == "fp16-flag"
    assert build_mode("10.7.0", "fp16", strongly_typed=True) == "strongly-typed"
    assert build_mode("11.1.0", "fp16") == "strongly-typed"
    with pytest.raises(TrtBuildError, match="no FP16 builder flag"):
        build_mode("11.1.0", "fp16", strongly_typed=False)


# ---------------------------------------------------------------------------------------------
# The cache-update graph (runs on ONNX Runtime; TensorRT builds the same graph).
def test_cache_update_graph_scatters_like_numpy(tiny_config):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from dil.export.tensorrt import cache_update_graph

    c = tiny_config
    model = cache_update_graph(c)
    onnx.checker.check_model(model, full_check=True)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    G, N, H, layers, D = 2, 3, c.horizon, c.num_layers, c.d_model
    for S, pad in ((4, True), (H, False), (1, False)):
        k = rng.standard_normal((layers, G, N, H, D)).astype(np.float32)
        v = rng.standard_normal(k.shape).astype(np.float32)
        pos = np.sort(np.argsort(rng.random((G, N, H)), -1)[..., :S], -1)
        if pad:
            pos[0, 0, 1:] = H  # three padding entries in one row (they share the spare slot)
            pos[1, 2, -1] = H
        k_sub = rng.standard_normal((layers, G, N, S, D)).astype(np.float32)
        v_sub = rng.standard_normal(k_sub.shape).astype(np.float32)
        k_new, v_new = sess.run(["k_new", "v_new"], {"k_hor": k, "v_hor": v, "pos_sub": pos, "k_sub": k_sub, "v_sub": v_sub})
        k_ref, v_ref = k.copy(), v.copy()
        for g in range(G):
            for n in range(N):
                for s in range(S):
                    if pos[g, n, s] < H:
                        k_ref[:, g, n, pos[g, n, s]] = k_sub[:, g, n, s]
                        v_ref[:, g, n, pos[g, n, s]] = v_sub[:, g, n, s]
        np.testing.assert_array_equal(k_new, k_ref)
        np.testing.assert_array_equal(v_new, v_ref)


class _EngineKeepingKV:
    """The TrtEngine device-cache protocol (device_cache, denoise_cached) on
    ONNX Runtime: the key/value cache lives inside the engine and is updated by the same
    cache_update graph TensorRT builds; only eps goes back to the sampler."""

    def __init__(self, inner, cfg):
        import onnxruntime as ort

        from dil.export.tensorrt import cache_update_graph

        self.inner, self.config, self.stats = inner, inner.config, inner.stats
        self.max_batch, self.call_tokens, self.cached_calls = None, None, 0
        self._update = ort.InferenceSession(cache_update_graph(cfg).SerializeToString(),
                                            providers=["CPUExecutionProvider"])

    def encode(self, ctx):
        return self.inner.encode(ctx)

    def device_cache(self, G, N, H):
        shape = (self.config.num_layers, G, N, H, self.config.d_model)
        return {"k": np.zeros(shape, np.float32), "v": np.zeros(shape, np.float32)}

    def denoise_cached(self, x_sub, pos_sub, t_feat, k_ctx, v_ctx, kv, hor_valid):
        self.cached_calls += 1
        eps, k_sub, v_sub = self.inner.denoise(x_sub, pos_sub, t_feat, k_ctx, v_ctx, kv["k"], kv["v"], hor_valid)
        kv["k"], kv["v"] = self._update.run(["k_new", "v_new"], {"k_hor": kv["k"], "v_hor": kv["v"], "pos_sub": pos_sub,
                                                                  "k_sub": k_sub, "v_sub": v_sub})
        return eps


@pytest.mark.parametrize("settings", [{}, {"lattice": False, "cache": False}, {"bucket": 8}])
def test_sampler_keeps_kv_in_the_engine_when_it_can(tiny_artifact, tiny_config, settings):
    """The sampler's device-cache path (what TensorRT uses) gives the host path's forecast."""
    pytest.importorskip("onnx")
    from dil.runtime import Forecaster

    history = np.sin(np.arange(60)[:, None] * 0.3 + np.arange(3)) + 0.1 * np.arange(3)
    host_fc = Forecaster.load(tiny_artifact)
    host_fc.engine.full_step = host_fc.engine.full_step_kv = False  # the denoise graph, as the device path
    host = host_fc.predict(history, num_samples=16, steps=8, seed=5, **settings)
    fc = Forecaster.load(tiny_artifact)
    fc.engine = _EngineKeepingKV(fc.engine, tiny_config)
    dev = fc.predict(history, num_samples=16, steps=8, seed=5, **settings)
    np.testing.assert_allclose(dev.samples, host.samples, rtol=0, atol=1e-9)
    assert dev.stats.tokens_computed == host.stats.tokens_computed
    assert fc.engine.cached_calls == dev.stats.engine_calls > 0


# ---------------------------------------------------------------------------------------------
# Machines without a GPU: refusals with what to do, before any engine call or any work.
def test_import_runtime_does_not_import_tensorrt():
    code = "import sys, dil.runtime, dil.runtime.backends, dil.runtime.backends.trt_engine; " \
           "sys.exit(int(any(m in sys.modules for m in ('tensorrt', 'torch'))))"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_backend_follows_the_file_name():
    from dil.runtime.backends import backend_for

    assert backend_for("engines/m.plan") == "tensorrt" and backend_for("engines/m.fp16.plan") == "tensorrt"
    assert backend_for("engines/m.onnx") == "onnxruntime" and backend_for("engines/m.json") == "onnxruntime"


@no_gpu_only
def test_plan_refused_without_gpu(tiny_artifact, tmp_path):
    from dil.runtime import EngineError, Forecaster
    from dil.runtime.cli.run import main as run_cli

    plan = tiny_artifact.with_name("tiny.plan")
    with pytest.raises(EngineError) as err:
        Forecaster.load(plan)
    assert "no NVIDIA GPU" in str(err.value) and "tiny.onnx" in str(err.value)
    table = tmp_path / "in.csv"
    table.write_text("a\n" + "\n".join(str(float(i % 7)) for i in range(40)) + "\n")
    res = CliRunner().invoke(run_cli, ["--engine", str(plan), "--input", str(table), "--out", str(tmp_path / "f.csv")])
    assert res.exit_code == 1 and "no NVIDIA GPU" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "f.csv").exists()


@no_gpu_only
def test_tensorrt_export_refused_without_gpu_before_any_work(tiny_checkpoint, tiny_artifact, tmp_path):
    pytest.importorskip("torch")
    from dil.export.cli import main as export_cli

    out = tmp_path / "engines"
    for args in (["--checkpoint", str(tiny_checkpoint), "--out", str(out), "--tensorrt"],
                 ["--checkpoint", str(tiny_checkpoint), "--out", str(out / "tiny.plan")],
                 ["--engine", str(tiny_artifact), "--tensorrt"]):
        res = CliRunner().invoke(export_cli, args)
        assert res.exit_code == 1, res.output
        assert "no NVIDIA GPU on this machine" in res.output and "Traceback" not in res.output
        assert not out.exists()
    res = CliRunner().invoke(export_cli, ["--no-frontier", "--engine", str(tiny_artifact)])
    assert res.exit_code == 1 and "add --tensorrt" in res.output


def test_manifest_keeps_the_tensorrt_record(tiny_artifact, tmp_path):
    """A manifest's extra sections (the TensorRT record) survive load -> write -> load."""
    import shutil

    from dil.runtime.manifest import load_manifest

    for f in tiny_artifact.parent.glob("tiny.*"):
        shutil.copy(f, tmp_path / f.name)
    d = json.loads((tmp_path / "tiny.json").read_text())
    d["tensorrt"] = {**RECORD, "profile": {"G": {"min": 1, "opt": 2, "max": 4}}}
    (tmp_path / "tiny.json").write_text(json.dumps(d))
    m = load_manifest(tmp_path / "tiny.plan")
    assert m.extra["tensorrt"]["gpu"] == RECORD["gpu"]
    assert json.loads(m.to_json())["tensorrt"] == d["tensorrt"]
    assert rebuild_command(m.path) == f"dil-export --engine {m.path} --tensorrt"


# ---------------------------------------------------------------------------------------------
# Where TensorRT and a GPU are present: build, run, parity, refusals.
@pytest.fixture(scope="module")
def trt_artifact(tiny_checkpoint, tmp_path_factory):
    from dil.export.artifact import ExportOptions, export_artifact, export_stages

    out = tmp_path_factory.mktemp("trt")
    options = ExportOptions(name="tiny", fp16=True, tensorrt=True, trt_ranges={"G": (1, 2, 4), "N": (1, 8, 16)})
    stages = []
    manifest = export_artifact(tiny_checkpoint, out, options, progress=lambda stage, message: stages.append(stage))
    assert stages == export_stages(options)  # the CLI's progress display counts on the declared stages
    return manifest


@needs_gpu
@pytest.mark.gpu
@pytest.mark.slow
def test_trt_build_records_and_validation(trt_artifact):
    import tensorrt as trt

    for m in [trt_artifact, *trt_artifact.variants]:
        rec = m.extra["tensorrt"]
        assert rec["version"] == trt.__version__ and rec["gpu"] == GPU.name
        assert rec["compute_capability"] == GPU.compute_capability and rec["precision"] == m.precision
        assert rec["profile"]["G"] == {"min": 1, "opt": 2, "max": 4}
        assert rec["mode"] in (("fp32",) if m.precision == "fp32" else ("fp16-flag", "strongly-typed"))
        v = m.validation["tensorrt"]
        assert v["passed"], v
        assert v["device_cache"]["max_abs_err"] <= v["tolerance"]
        for g in ("encode", "denoise"):
            assert (m.path.parent / m.graphs[g]["plan_file"]).is_file()


@needs_gpu
@pytest.mark.gpu
@pytest.mark.slow
def test_trt_forecast_matches_onnx_and_refuses_outside_profile(trt_artifact):
    from dil.runtime import EngineError, Forecaster

    rng = np.random.default_rng(0)
    history = rng.standard_normal((trt_artifact.model.context_length + 5, 3)).cumsum(0)
    ref = Forecaster.load(trt_artifact.path.with_suffix(".onnx"), providers=["CPUExecutionProvider"])
    for m, tol in ((trt_artifact, 1e-3), (trt_artifact.variants[0], 5e-2)):
        fc = Forecaster.load(m.path.with_name(m.name + ".plan"))
        a = fc.predict(history, num_samples=8, steps=4, seed=1, batch_series=16)  # capped to the profile's G max
        b = ref.predict(history, num_samples=8, steps=4, seed=1)
        assert np.abs(a.standardised() - b.standardised()).max() < tol
        with pytest.raises(EngineError, match="N=17 is outside the engine's profile"):
            fc.predict(history, num_samples=17, steps=2)


@needs_gpu
@pytest.mark.gpu
@pytest.mark.slow
def test_trt_mismatched_plan_refused_and_rebuild_is_cached(trt_artifact, tmp_path):
    import shutil

    from dil.export.trt_artifact import tensorrt_for_artifact
    from dil.runtime import EngineError
    from dil.runtime.backends.trt_engine import TrtEngine

    for f in trt_artifact.path.parent.glob("tiny.*"):
        shutil.copy(f, tmp_path / f.name)
    m, built = tensorrt_for_artifact(tmp_path / "tiny.json", {"G": (1, 2, 4), "N": (1, 8, 16)})
    assert not built  # same graphs, TensorRT, GPU and profile: the plans are reused
    d = json.loads((tmp_path / "tiny.json").read_text())
    d["tensorrt"]["version"] = "0.0.1"
    (tmp_path / "tiny.json").write_text(json.dumps(d))
    with pytest.raises(EngineError, match="built with TensorRT 0.0.1.*dil-export --engine"):
        TrtEngine.load(tmp_path / "tiny.plan")
