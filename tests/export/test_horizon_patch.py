"""Horizon patch tokens (Ph = horizon_patch > 1) through export and the engine backends: the graphs'
H axis counts horizon tokens, x_sub carries Ph * Fh values per token and eps_sub Ph outputs
(docs/architecture.md section 4, docs/tensorrt.md).

The model is tiny and random: context 48 in patches of 12, horizon 8 in tokens of Ph = 4 steps
(T = 2 tokens), one known feature (hour of day), so x_sub is [G, N, S, 8] and eps_sub [G, N, S, 4].
It is exported once per module with `dil-export --fp16` (validated against torch, ~25 s).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from dil.runtime.backends.trt_profile import ProfileError, check_shapes, input_shapes, resolve_profile
from dil.runtime.model.config import ModelConfig
from dil.runtime.sampling.schedule import NoiseSchedule

PH, FK = 4, 1
PH_MODEL = dict(context_length=48, horizon=8, d_model=16, num_heads=2, num_layers=2, ffn_dim=32, time_embed_dim=8,
                context_patch=12, horizon_patch=PH, context_features=2 + FK, horizon_features=1 + FK)
T = PH_MODEL["horizon"] // PH


# -- profiles (no torch, no GPU) ---------------------------------------------------------------------
def _feeds(c: ModelConfig, G: int, N: int, S: int, H: int, width: int | None = None) -> dict:
    z, layers, D, Lp = np.zeros, c.num_layers, c.d_model, c.context_tokens
    return {"x_sub": z((G, N, S, width or c.horizon_patch * c.horizon_features)), "pos_sub": z((G, N, S), np.int64),
            "t_feat": z((G, N, c.time_embed_dim)), "k_ctx": z((layers, G, Lp, D)), "v_ctx": z((layers, G, Lp, D)),
            "k_hor": z((layers, G, N, H, D)), "v_hor": z((layers, G, N, H, D)), "hor_valid": z((G, N, H))}


def test_profile_defaults_count_horizon_tokens():
    c = ModelConfig(**PH_MODEL)
    p = resolve_profile(c)
    assert p["H"] == {"min": T, "opt": T, "max": T} and p["S"] == {"min": 1, "opt": T, "max": T}
    assert p["L"] == {"min": 48, "opt": 48, "max": 48}
    shapes = input_shapes("denoise", c, resolve_profile(c, G=(1, 2, 3), N=(1, 5, 10)))
    assert shapes["x_sub"] == ((1, 1, 1, PH * (1 + FK)), (2, 5, T, PH * (1 + FK)), (3, 10, T, PH * (1 + FK)))
    assert shapes["k_hor"][2] == (c.num_layers, 3, 10, T, c.d_model) and shapes["hor_valid"][2] == (3, 10, T)
    sizes = check_shapes("denoise", _feeds(c, 2, 3, T, T), c, p, "REBUILD")
    assert sizes == {"G": 2, "N": 3, "S": T, "L": 48, "H": T}
    # The Ph = 1 model of the same horizon keeps its step-counted defaults.
    assert resolve_profile(replace(c, horizon_patch=1))["H"] == {"min": 8, "opt": 8, "max": 8}


def test_profile_refusals_name_the_option_and_the_token_unit():
    c = ModelConfig(**PH_MODEL)
    with pytest.raises(ProfileError, match=r"^profile H max 8 exceeds the model's 2 horizon tokens \(horizon 8 steps / "
                                           r"horizon_patch 4\): --trt-horizon counts tokens$"):
        resolve_profile(c, H=(8, 8, 8))
    with pytest.raises(ProfileError, match=r"^profile S max 8 exceeds H max 2"):
        resolve_profile(c, S=(1, 8, 8))
    p = resolve_profile(c)
    with pytest.raises(ProfileError) as err:  # a step-counted cache: 8 is outside H [2, 2]
        check_shapes("denoise", _feeds(c, 2, 3, T, 8), c, p, "REBUILD")
    assert str(err.value).startswith("H=8 is outside the engine's profile H [2, 2]") and "--trt-horizon" in str(err.value)
    with pytest.raises(ProfileError, match=r"axis Ph\*Fh must be 8"):  # one step's width per token
        check_shapes("denoise", _feeds(c, 2, 3, T, T, width=1 + FK), c, p, "REBUILD")


# -- the exported artifact -----------------------------------------------------------------------------
torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from dil.export.graph_check import FP32_TOLERANCE, SUBSET_TOLERANCE  # noqa: E402
from dil.train.model import ScoreNet  # noqa: E402
from builders import patch_model  # noqa: E402


@pytest.fixture(scope="module")
def ph_model():
    model = patch_model(PH_MODEL["horizon"], PH, known=FK, prediction="epsilon", seed=4)
    assert model.config == ModelConfig(**PH_MODEL)
    return model


@pytest.fixture(scope="module")
def ph_export(ph_model, tmp_path_factory):
    """(CLI result, manifest) of `dil-export --fp16` on a run folder holding ph_model ("trained" on
    etth1's columns, hour-of-day as its known feature)."""
    from click.testing import CliRunner

    from dil.export.cli import main as export_cli
    from dil.runtime.inputs.features import FeatureSpec
    from dil.runtime.manifest import load_manifest
    from dil.train.checkpoint import save_checkpoint

    spec = FeatureSpec(freq="h", time_features=("hour_of_day",))
    assert (spec.context_width, spec.horizon_width) == (2 + FK, 1 + FK)
    run = tmp_path_factory.mktemp("ph-runs") / "ph4"
    data = {"dataset": "etth1", "source": "ETTh1.csv.gz", "sha256": "", "columns": None, "date_column": "date",
            "freq": "h", "season": 24, "context_length": 48, "horizon": 8, "scaling": "context-mean-std"}
    save_checkpoint(run, ph_model, NoiseSchedule(), data, {"epochs": 0}, features=spec)
    out = tmp_path_factory.mktemp("ph-engines")
    result = CliRunner().invoke(export_cli, ["--no-frontier", "--checkpoint", str(run), "--out", str(out), "--fp16", "--quiet"])
    assert result.exit_code == 0, result.output
    return result, load_manifest(out / "ph4.json")


def _io(path, which):
    values = getattr(onnx.load(str(path)).graph, which)
    return {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] for v in values}


@pytest.mark.slow  # the module's export (~25 s) runs here first
def test_dil_export_of_a_ph4_run_validates(ph_export):
    """The CLI's export passes every check (random and real inputs, subset equivalence, FP16), and
    the graphs' contract is the token one: H max T, x_sub Ph * Fh wide, eps_sub Ph wide."""
    result, manifest = ph_export
    assert manifest.model == ModelConfig(**PH_MODEL)
    v = manifest.validation
    assert v["passed"] and v["real_data"]["used"], v
    for g in ("encode", "denoise"):
        assert 0 < v["graphs"][g]["real"]["max_abs_err"] <= FP32_TOLERANCE
        assert 0 < v["graphs"][g]["random"]["max_abs_err"] <= FP32_TOLERANCE
    assert all(0 <= e <= SUBSET_TOLERANCE for e in v["subset_equivalence"]["max_abs_err"].values())
    assert all(s["H"] <= T for s in v["graphs"]["denoise"]["shapes"])
    assert "subset equivalence" in result.output and "FAILED" not in result.output
    from dil.runtime.manifest import load_manifest

    fp16 = load_manifest(manifest.path.parent / "ph4.fp16.json")
    assert fp16.validation["passed"] and 1e-6 < fp16.validation["graphs"]["denoise"]["max_abs_err"] <= 1e-2

    layers, D = manifest.model.num_layers, manifest.model.d_model
    for m in (manifest, fp16):
        den_in, den_out = _io(m.graph_path("denoise"), "input"), _io(m.graph_path("denoise"), "output")
        assert den_in["x_sub"] == ["G", "N", "S", PH * (1 + FK)] and den_out["eps_sub"] == ["G", "N", "S", PH]
        assert den_in["k_hor"] == [layers, "G", "N", "H", D] and den_in["hor_valid"] == ["G", "N", "H"]
        assert den_in["k_ctx"] == [layers, "G", "Lp", D]
    assert manifest.extra["dynamic_axes"]["H"] == {"min": 1, "max": T}
    assert manifest.graphs["denoise"]["dynamic_axes"]["H"] == {"min": 1, "max": T}


def test_onnx_denoise_equals_the_torch_module_full_step_and_padded_subset(ph_export, ph_model):
    """OnnxEngine vs the torch module on the same inputs: a full step (every token, empty cache; also
    against full_step on the step-level horizon) and a padded token subset attending to the full
    step's keys/values, whose rows reproduce the full step's."""
    from dil.runtime.backends.onnx_engine import OnnxEngine

    engine = OnnxEngine(ph_export[1], threads=1)
    cfg, rng = ph_model.config, np.random.default_rng(0)
    G, N, H, layers, D, Fh = 2, 3, cfg.horizon, cfg.num_layers, cfg.d_model, cfg.horizon_features
    ctx = rng.standard_normal((G, 48, cfg.context_features)).astype(np.float32)
    x = rng.standard_normal((G, N, H, 1)).astype(np.float32)
    feat = rng.uniform(-1, 1, (G, H, FK)).astype(np.float32)
    t_feat = rng.standard_normal((G, N, cfg.time_embed_dim)).astype(np.float32)
    x_tok = np.concatenate([x, np.broadcast_to(feat[:, None], (G, N, H, FK))], -1).reshape(G, N, T, PH * Fh)

    def torch_denoise(*args):
        with torch.no_grad():
            return [t.numpy() for t in ph_model.denoise(*(torch.from_numpy(np.ascontiguousarray(a)) for a in args))]

    k_ctx, v_ctx = engine.encode(ctx)
    with torch.no_grad():
        ref_ctx = [t.numpy() for t in ph_model.encode(torch.from_numpy(ctx))]
    assert k_ctx.shape == (layers, G, 4, D) and np.abs(k_ctx - ref_ctx[0]).max() <= FP32_TOLERANCE
    empty = np.zeros((layers, G, N, T, D), np.float32)
    full = (x_tok, np.broadcast_to(np.arange(T), (G, N, T)).copy(), t_feat, k_ctx, v_ctx, empty, empty,
            np.zeros((G, N, T), np.float32))
    eps, k_full, v_full = engine.denoise(*full)
    assert eps.shape == (G, N, T, PH) and k_full.shape == (layers, G, N, T, D)
    for got, ref in zip((eps, k_full, v_full), torch_denoise(*full)):
        assert np.abs(got - ref).max() <= FP32_TOLERANCE
    with torch.no_grad():
        steps = ph_model.full_step(torch.from_numpy(ctx), torch.from_numpy(x), torch.from_numpy(t_feat),
                                   torch.from_numpy(feat)).numpy()
    assert np.abs(eps.reshape(G, N, H, 1) - steps).max() <= FP32_TOLERANCE  # out[..., k] is step j Ph + k

    # Subset: each row computes one or two tokens, padding (pos == T) in the rest; the others are cached.
    pos = np.array([[[1, T], [0, 1], [0, T]], [[1, T], [0, T], [0, 1]]], np.int64)
    computed = np.zeros((G, N, T + 1), bool)
    np.put_along_axis(computed, pos, True, axis=-1)
    valid = (~computed[..., :T]).astype(np.float32)
    x_sub = np.take_along_axis(np.concatenate([x_tok, np.zeros((G, N, 1, PH * Fh), np.float32)], 2), pos[..., None], 2)
    sub = (x_sub, pos, t_feat, k_ctx, v_ctx, k_full, v_full, valid)
    got = engine.denoise(*sub)
    for a, r in zip(got, torch_denoise(*sub)):
        assert np.abs(a - r).max() <= FP32_TOLERANCE
    real = pos < T
    g, n, s = np.nonzero(real)
    assert np.abs(got[0][g, n, s] - eps[g, n, pos[g, n, s]]).max() <= SUBSET_TOLERANCE
    for a, full_kv in zip(got[1:], (k_full, v_full)):
        assert np.abs(a[:, g, n, s] - full_kv[:, g, n, pos[g, n, s]]).max() <= SUBSET_TOLERANCE


def test_engine_refuses_graphs_of_another_horizon_patch(ph_export):
    from dil.runtime.backends.onnx_engine import EngineError, OnnxEngine

    manifest = ph_export[1]
    other = replace(manifest, model=replace(manifest.model, horizon_patch=2))
    with pytest.raises(EngineError, match=r"input x_sub has shape \['G', 'N', 'S', 8\], expected \['G', 'N', 'S', 4\]"):
        OnnxEngine(other, threads=1)


def test_graph_weights_recover_the_ph4_module(ph_export, ph_model):
    from dil.export.graph_weights import state_from_graphs

    manifest = ph_export[1]
    state = state_from_graphs({g: manifest.graph_path(g) for g in ("encode", "denoise")}, manifest.model)
    ref = ph_model.state_dict()
    assert state["hor_in.weight"].shape == (16, PH * (1 + FK)) and state["head.weight"].shape == (PH, 16)
    assert set(state) == set(ref)
    for key, a in state.items():
        np.testing.assert_array_equal(a, ref[key].numpy())


def test_a_single_horizon_token_exports_with_a_fixed_h_axis(tmp_path):
    """Ph = horizon (T = 1): the H axis is fixed at 1 in the graphs and the export validates."""
    from dil.export.graph_check import validate_graphs
    from dil.export.onnx_export import dynamic_axes, export_onnx

    torch.manual_seed(5)
    model = ScoreNet(ModelConfig(**{**PH_MODEL, "horizon_patch": 8, "num_layers": 1})).eval()
    with torch.no_grad():
        model.head.weight.normal_(0.0, 0.2)
    paths = export_onnx(model, tmp_path, "one")
    den = _io(paths["denoise"], "input")
    assert den["hor_valid"] == ["G", "N", 1] and den["x_sub"] == ["G", "N", "S", 8 * (1 + FK)]
    assert _io(paths["denoise"], "output")["eps_sub"] == ["G", "N", "S", 8]
    assert dynamic_axes(model.config)["H"] == {"min": 1, "max": 1}
    report = validate_graphs(model, paths, NoiseSchedule(), None)
    assert report["passed"], report


# -- graph_check's inputs ------------------------------------------------------------------------------
def test_validation_shapes_count_tokens_and_pad_with_two_tokens(ph_model, tiny_config):
    from dil.export.graph_check import Shape, subset_positions, validation_shapes

    shapes = validation_shapes(ph_model.config)
    assert shapes == [Shape(2, 3, 2, 48, 2, True), Shape(2, 2, 2, 48, 2), Shape(1, 1, 1, 48, 2),
                      Shape(3, 2, 1, 24, 2), Shape(2, 2, 1, 48, 1, True)]
    pos = subset_positions(np.random.default_rng(0), shapes[0])
    assert (pos == T).any() and (pos < T).all(axis=-1).any()  # real padding entries, and full rows
    # Ph = 1: the step shapes of before.
    assert validation_shapes(tiny_config) == [Shape(2, 3, 4, 16, 8, True), Shape(2, 2, 8, 16, 8), Shape(1, 1, 1, 16, 8),
                                              Shape(3, 2, 2, 8, 8), Shape(2, 2, 2, 16, 4, True)]


def test_random_case_tokens_are_the_step_major_horizon(ph_model):
    """graph_check's token inputs, taken apart into steps, give full_step (step-level horizon and
    known features) exactly the denoise full step's outputs."""
    from dil.export.graph_check import Shape, TorchGraphs, _full_step_args, random_case

    cfg = ph_model.config
    case = random_case(cfg, NoiseSchedule(), Shape(2, 3, 2, 48, 2), np.random.default_rng(1))
    G, N, H = 2, 3, cfg.horizon
    assert case.x.shape == (G, N, T, PH * (1 + FK)) and case.x.dtype == np.float32
    steps = case.x.reshape(G, N, H, 1 + FK)
    np.testing.assert_array_equal(steps[..., 1:], np.broadcast_to(steps[:, :1, :, 1:], steps[..., 1:].shape))
    ref = TorchGraphs(ph_model)
    k_ctx, v_ctx = ref.encode(case.ctx)
    eps, _, _ = ref.denoise(*_full_step_args(case, k_ctx, v_ctx, cfg.num_layers, cfg.d_model))
    with torch.no_grad():
        out = ph_model.full_step(torch.from_numpy(case.ctx), torch.from_numpy(steps[..., :1].copy()),
                                 torch.from_numpy(case.t_feat), torch.from_numpy(steps[:, 0, :, 1:].copy())).numpy()
    assert np.abs(eps.reshape(G, N, H, 1) - out).max() <= 1e-6


def test_real_case_noises_the_target_steps_in_order(ph_model):
    """Real inputs: the first shape.H * Ph target steps, standardised, noised at the row's time; the
    residual x - alpha x0 is sigma times a standard normal draw, step by step in order."""
    from dil.export.graph_check import REAL_TIMES, Shape, real_case
    from dil.export.real_data import training_windows
    from dil.runtime.inputs.scaling import context_scale, standardise

    cfg, sched = ph_model.config, NoiseSchedule()
    windows, info = training_windows({"dataset": "etth1"}, 48, 8, 3)
    assert info["used"]
    G, N = 3, 4
    for tokens in (T, 1):
        case = real_case(cfg, sched, Shape(G, N, 1, 48, tokens), windows, np.random.default_rng(2))
        assert case.x.shape == (G, N, tokens, PH * (1 + FK))
        noisy = case.x.reshape(G, N, tokens * PH, 1 + FK)[..., 0].astype(np.float64)
        ctx, tgt = windows[0][:G], windows[1][:G, : tokens * PH]
        loc, scale = context_scale(ctx)
        x0 = np.nan_to_num(standardise(tgt, loc, scale), nan=0.0)
        kappa = sched.sampling_grid(REAL_TIMES)[np.arange(G * N).reshape(G, N) % REAL_TIMES]
        z = (noisy - sched.alpha(kappa)[..., None] * x0[:, None]) / sched.sigma(kappa)[..., None]
        assert np.abs(z).max() < 5 and 0.5 < z.std() < 1.5  # a standard normal draw, not a shuffled target


# -- the TensorRT validation logic on the CPU --------------------------------------------------------
class _CpuPlans:
    """TrtEngine's interface for trt_validate (profile-checked encode/denoise, a token cache kept in
    the engine and updated by the cache_update graph TensorRT builds), on ONNX Runtime."""

    precision = "fp32"

    def __init__(self, engine, profile):
        from dil.export.tensorrt import cache_update_graph

        self.inner, self.config, self.profile, self.stats = engine, engine.config, profile, engine.stats
        self.max_batch, self.cached_calls = profile["G"]["max"], 0
        self._update = ort.InferenceSession(cache_update_graph(self.config).SerializeToString(),
                                            providers=["CPUExecutionProvider"])

    def encode(self, ctx):
        check_shapes("encode", {"ctx": ctx}, self.config, self.profile, "REBUILD")
        return self.inner.encode(ctx)

    def denoise(self, *args):
        check_shapes("denoise", dict(zip(("x_sub", "pos_sub", "t_feat", "k_ctx", "v_ctx", "k_hor", "v_hor",
                                          "hor_valid"), args)), self.config, self.profile, "REBUILD")
        return self.inner.denoise(*args)

    def device_cache(self, G, N, T):
        from types import SimpleNamespace

        shape = (self.config.num_layers, G, N, T, self.config.d_model)
        cache = SimpleNamespace(k=np.zeros(shape, np.float32), v=np.zeros(shape, np.float32))
        cache.to_host = lambda: (cache.k, cache.v)
        return cache

    def denoise_cached(self, x_sub, pos_sub, t_feat, k_ctx, v_ctx, cache, hor_valid):
        self.cached_calls += 1
        eps, k_sub, v_sub = self.denoise(x_sub, pos_sub, t_feat, k_ctx, v_ctx, cache.k, cache.v, hor_valid)
        feeds = {"k_hor": cache.k, "v_hor": cache.v, "pos_sub": pos_sub, "k_sub": k_sub, "v_sub": v_sub}
        check_shapes("cache_update", feeds, self.config, self.profile, "REBUILD")
        cache.k, cache.v = self._update.run(["k_new", "v_new"], feeds)
        return eps


def test_tensorrt_validation_logic_runs_on_tokens(ph_export):
    """trt_validate's checks (profile shapes, parity, device cache vs host cache) with Ph = 4, the
    engine played by ONNX Runtime: every call fits the default token profile and the cache path
    reproduces the host path exactly."""
    from dil.export.trt_validate import profile_shapes, validate_plans
    from dil.runtime.backends.onnx_engine import OnnxEngine

    manifest = ph_export[1]
    profile = resolve_profile(manifest.model, G=(1, 2, 3), N=(1, 3, 4))
    assert [(s.S, s.H, s.pad) for s in profile_shapes(profile)] == [(1, T, False), (T, T, False), (1, T, True)]
    engine = _CpuPlans(OnnxEngine(manifest, threads=1), profile)
    paths = {g: manifest.graph_path(g) for g in ("encode", "denoise")}
    report = validate_plans(engine, paths, manifest.schedule, FP32_TOLERANCE, polygraphy=False)
    assert report["passed"], report
    assert report["device_cache"]["max_abs_err"] == 0.0
    assert all(e["max_abs_err"] == 0.0 for e in report["graphs"].values())  # the same ONNX Runtime graphs


@pytest.mark.parametrize("settings", [{}, {"lattice": False, "cache": False}])
def test_sampler_device_cache_path_fits_the_token_profile(ph_export, settings):
    """The sampler's device-cache path (what TrtEngine runs: device_cache(G, N, T), denoise_cached)
    with Ph = 4: every call passes the default token profile's checks and the forecast equals the
    host-cache path's."""
    from dil.runtime.backends.onnx_engine import OnnxEngine
    from dil.runtime.sampling.rng import SeriesStreams
    from dil.runtime.sampling.config import SamplerConfig
    from dil.runtime.sampling.sampler import sample
    from dil.runtime.inputs.scaling import context_features

    manifest = ph_export[1]
    cfg, rng = manifest.model, np.random.default_rng(3)
    G, N = 2, 8
    ctx = np.concatenate([context_features(rng.standard_normal((G, 48))), rng.uniform(-1, 1, (G, 48, FK))], -1)
    feat = rng.uniform(-1, 1, (G, cfg.horizon, FK)).astype(np.float32)
    x_T = SeriesStreams(0, range(G)).initial_noise(N, cfg.horizon)
    config = SamplerConfig(steps=8, **settings)
    host_engine = OnnxEngine(manifest, threads=1)
    host_engine.full_step = host_engine.full_step_kv = False  # the same denoise graph as the device path (not the lean full steps)
    host = sample(host_engine, manifest.schedule, ctx.astype(np.float32), x_T, config, SeriesStreams(0, range(G)),
                  hor_feat=feat)
    plans = _CpuPlans(OnnxEngine(manifest, threads=1), resolve_profile(cfg, G=(1, 2, 2), N=(1, N, N)))
    dev = sample(plans, manifest.schedule, ctx.astype(np.float32), x_T, config, SeriesStreams(0, range(G)),
                 hor_feat=feat)
    assert host.x0.shape == (G, N, cfg.horizon) and np.isfinite(host.x0).all()
    np.testing.assert_array_equal(dev.x0, host.x0)
    assert plans.cached_calls == dev.stats.engine_calls > 0
