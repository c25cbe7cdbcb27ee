"""Context patches and horizon features (docs/model.md section 3) and a v-prediction model, end to
end: the torch module's tokens, the sampler's inputs, ONNX export and its validation, and the runtime
against the PyTorch reference samplers.

The model is tiny and random (context 16 in patches of 4, horizon 8, Fk = 2 known features, Fp = 1
past-only covariate, v-prediction); it is exported once per module to a temporary folder (~15 s).
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from dil.runtime.model.config import ModelConfig
from dil.runtime.sampling.rng import SeriesStreams
from dil.runtime.sampling.config import SamplerConfig
from dil.runtime.sampling.sampler import gather_inputs, sample
from dil.runtime.sampling.schedule import NoiseSchedule
from dil.runtime.sampling.step_plan import StepPlan
from dil.runtime.sampling.token_cache import TokenCache

FK, FP, P = 2, 1, 4
V_MODEL = dict(context_length=16, horizon=8, d_model=16, num_heads=2, num_layers=2, ffn_dim=32, time_embed_dim=8,
               context_features=2 + FK + FP, horizon_features=1 + FK, prediction="v", context_patch=P)
STEPS = 8


# -- the sampler's inputs (NumPy only) -----------------------------------------------------------
def test_gathered_inputs_against_a_per_token_loop():
    """x_sub = (noisy value, the token's known features); padding entries (pos == H) all zeros."""
    rng = np.random.default_rng(0)
    G, N, H, S = 2, 3, 6, 4
    x = rng.standard_normal((G, N, H))
    feat = rng.standard_normal((G, H, FK)).astype(np.float32)
    pos = np.sort(np.argsort(rng.random((G, N, H)), axis=-1)[..., :S], axis=-1)
    pos[1, 2, 2:] = H
    x_pad = np.concatenate([x, np.zeros((G, N, 1))], axis=2)[..., None]  # [G, N, H + 1, Ph = 1]
    f_pad = np.concatenate([feat, np.zeros((G, 1, FK), np.float32)], axis=1)[:, :, None]  # [G, H + 1, 1, Fk]
    got = gather_inputs(x_pad, f_pad, pos)
    want = np.zeros((G, N, S, 1 + FK), np.float32)
    for g in range(G):
        for n in range(N):
            for s in range(S):
                h = pos[g, n, s]
                if h < H:
                    want[g, n, s] = [np.float32(x[g, n, h]), *feat[g, h]]
    assert got.dtype == np.float32 and got.shape == (G, N, S, 1 + FK)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(gather_inputs(x_pad, None, pos), want[..., :1])


class _Recorder:
    """An engine that records the x_sub it gets and answers eps = 0 (nothing else is checked)."""

    max_batch = None

    def __init__(self, config):
        self.config, self.inputs = config, []
        self.stats = SimpleNamespace(encode_calls=0, denoise_calls=0, seconds=0.0)

    def encode(self, ctx):
        return None, None

    def device_cache(self, G, N, H):
        return None

    def denoise(self, x_sub, pos_sub, t_feat, k_ctx, v_ctx, k_hor, v_hor, hor_valid):
        self.inputs.append(np.array(x_sub))
        layers, D = self.config.num_layers, self.config.d_model
        kv = np.zeros((layers,) + pos_sub.shape + (D,), np.float32)
        return np.zeros(pos_sub.shape + (1,), np.float32), kv, kv


def _run(config, ctx, hor_feat, G=2, N=3):
    streams = SeriesStreams(0, range(G))
    engine = _Recorder(config)
    sample(engine, NoiseSchedule(), ctx, streams.initial_noise(N, config.horizon), SamplerConfig(steps=2),
           streams, hor_feat=hor_feat)
    return engine


def test_sampler_feeds_the_known_features_and_refuses_bad_ones():
    cfg = ModelConfig(**V_MODEL)
    G, H, L = 2, cfg.horizon, cfg.context_length
    ctx = np.zeros((G, L, cfg.context_features), np.float32)
    feat = np.random.default_rng(1).standard_normal((G, H, FK)).astype(np.float32)
    engine = _run(cfg, ctx, feat)
    for x_sub in engine.inputs:  # full steps (default settings, 2 steps): every token, features per series
        np.testing.assert_array_equal(x_sub[..., 1:], np.broadcast_to(feat[:, None], (G, 3, H, FK)))
    with pytest.raises(ValueError, match=r"^the model takes 2 known features per horizon step: pass hor_feat"):
        _run(cfg, ctx, None)
    with pytest.raises(ValueError, match=r"^hor_feat has shape \[2, 8, 3\], expected \[G, H, Fk\] = \[2, 8, 2\]"):
        _run(cfg, ctx, np.zeros((G, H, 3), np.float32))
    with pytest.raises(ValueError, match=r"^hor_feat has shape \[2, 7, 2\]"):
        _run(cfg, ctx, np.zeros((G, H - 1, FK), np.float32))
    bad = feat.copy()
    bad[0, 3, 1] = np.nan
    with pytest.raises(ValueError, match="hor_feat has NaN"):
        _run(cfg, ctx, bad)
    with pytest.raises(ValueError, match=r"^the context length 10 is not a positive multiple of the model's context_patch 4"):
        _run(cfg, ctx[:, :10], feat)
    with pytest.raises(ValueError, match=r"^ctx has shape \[2, 16, 2\], expected \[G, L, Fc\] = \[2, L, 5\]$"):
        _run(cfg, ctx[..., :2], feat)
    plain = ModelConfig(**{**V_MODEL, "context_features": 2, "horizon_features": 1})
    with pytest.raises(ValueError, match=r"hor_feat has shape \[2, 8, 2\], expected \[G, H, Fk\] = \[2, 8, 0\]"):
        _run(plain, ctx[..., :2], feat)
    assert all(x.shape[-1] == 1 for x in _run(plain, ctx[..., :2], None).inputs)


def test_token_cache_converts_v_outputs():
    """A v network's output v: x0_hat = alpha x - sigma v and eps = sigma x + alpha v at the
    computed tokens; reused tokens keep theirs (hand-worked, alpha 0.6, sigma 0.8)."""
    cache = TokenCache(1, 1, 1, 3, 2, prediction="v")
    x = np.array([[[1.0, -2.0, 0.5]]])
    full = StepPlan(pos_sub=np.array([[[0, 1, 2]]]), order=1, full=True)
    kv = np.zeros((1, 1, 1, 3, 2), np.float32)
    cache.store(full, full.computed(3), x, np.array([[[[0.5], [1.0], [-1.0]]]], np.float32), kv, kv, 0.6, 0.8)
    np.testing.assert_allclose(cache.x0_hat, [[[0.6 - 0.4, -1.2 - 0.8, 0.3 + 0.8]]], rtol=0, atol=1e-15)
    np.testing.assert_allclose(cache.eps, [[[0.8 + 0.3, -1.6 + 0.6, 0.4 - 0.6]]], rtol=0, atol=1e-15)
    part = StepPlan(pos_sub=np.array([[[1, 3]]]), order=1)  # token 1 and a padding entry
    computed = part.computed(3)
    cache.store(part, computed, 2 * x, np.array([[[[2.0], [9.0]]]], np.float32), kv[:, :, :, :2], kv[:, :, :, :2],
                0.8, 0.6)
    np.testing.assert_allclose(cache.x0_hat, [[[0.2, -3.2 - 1.2, 1.1]]], rtol=0, atol=1e-15)
    np.testing.assert_allclose(cache.eps, [[[1.1, -2.4 + 1.6, -0.2]]], rtol=0, atol=1e-15)


# -- the torch module ------------------------------------------------------------------------------
torch = pytest.importorskip("torch")

from dil.train.model import ScoreNet  # noqa: E402


@pytest.fixture(scope="module")
def v_model():
    torch.manual_seed(3)
    model = ScoreNet(ModelConfig(**V_MODEL))
    with torch.no_grad():
        model.head.weight.normal_(0.0, 0.2)
        model.head.bias.normal_(0.0, 0.1)
    return model.eval()


def test_context_tokens_are_patches_of_p_steps(v_model):
    """ctx_in sees token j = steps [jP, (j+1)P) flattened step-major; a context of 8 steps (2
    tokens) takes the last two position embeddings; keys/values have L/P tokens."""
    cfg = v_model.config
    assert v_model.ctx_in.in_features == P * cfg.context_features and v_model.ctx_pos.num_embeddings == 16 // P
    seen = {}
    hooks = [v_model.ctx_in.register_forward_hook(lambda m, i, o: seen.__setitem__("tokens", i[0].clone())),
             v_model.ctx_pos.register_forward_hook(lambda m, i, o: seen.__setitem__("pos", i[0].clone()))]
    rng = np.random.default_rng(2)
    try:
        for L in (16, 8):
            ctx = rng.standard_normal((3, L, cfg.context_features)).astype(np.float32)
            with torch.no_grad():
                k, v = v_model.encode(torch.from_numpy(ctx))
            assert k.shape == v.shape == (cfg.num_layers, 3, L // P, cfg.d_model)
            tokens = seen["tokens"].numpy()
            for j in range(L // P):
                np.testing.assert_array_equal(tokens[:, j], ctx[:, j * P:(j + 1) * P].reshape(3, -1))
            assert seen["pos"].tolist() == list(range(4 - L // P, 4))
    finally:
        for h in hooks:
            h.remove()


def test_one_step_tokens_keep_the_old_parameter_shapes():
    """P = 1: ctx_in (Fc -> D) and ctx_pos (L rows) as before, so earlier checkpoints load."""
    model = ScoreNet(ModelConfig(context_length=16, horizon=8, d_model=16, num_heads=2, num_layers=1, ffn_dim=8,
                                 time_embed_dim=8))
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes["ctx_in.weight"] == (16, 2) and shapes["ctx_pos.weight"] == (16, 16)
    assert shapes["hor_in.weight"] == (16, 1)


def test_full_step_appends_the_known_features(v_model):
    cfg = v_model.config
    rng = np.random.default_rng(4)
    G, N, H, L = 2, 3, cfg.horizon, cfg.context_length
    ctx = torch.from_numpy(rng.standard_normal((G, L, cfg.context_features)).astype(np.float32))
    x = torch.from_numpy(rng.standard_normal((G, N, H, 1)).astype(np.float32))
    t = torch.from_numpy(rng.standard_normal((G, N, cfg.time_embed_dim)).astype(np.float32))
    feat = torch.from_numpy(rng.standard_normal((G, H, FK)).astype(np.float32))
    with torch.no_grad():
        out = v_model.full_step(ctx, x, t, feat)
        k_ctx, v_ctx = v_model.encode(ctx)
        x_sub = torch.cat([x, feat[:, None].expand(G, N, H, FK)], dim=-1)
        zeros = torch.zeros(cfg.num_layers, G, N, H, cfg.d_model)
        ref, _, _ = v_model.denoise(x_sub, torch.arange(H).expand(G, N, H), t, k_ctx, v_ctx, zeros, zeros,
                                    torch.zeros(G, N, H))
        other = v_model.full_step(ctx, x, t, feat + 0.5)
    assert out.shape == (G, N, H, 1)
    np.testing.assert_array_equal(out.numpy(), ref.numpy())
    assert (out - other).abs().max() > 1e-3  # the features reach the output
    with pytest.raises(ValueError, match="pass hor_feat"):
        v_model.full_step(ctx, x, t)
    with pytest.raises(ValueError, match=r"hor_feat has shape \[2, 8, 3\], expected \[G, H, Fk\] = \[2, 8, 2\]"):
        v_model.full_step(ctx, x, t, torch.zeros(G, H, 3))


# -- exported to ONNX --------------------------------------------------------------------------------
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def v_engine(v_model, tmp_path_factory):
    """(OnnxEngine, {graph: path}) of the v model exported to a temporary folder."""
    from dil.export.onnx_export import export_onnx
    from dil.runtime.backends.onnx_engine import OnnxEngine
    from dil.runtime.manifest import Manifest

    folder = tmp_path_factory.mktemp("v-engine")
    paths = export_onnx(v_model, folder, "tiny-v")
    manifest = Manifest(name="tiny-v", model=v_model.config, schedule=NoiseSchedule(), data={},
                        graphs={g: {"file": p.name} for g, p in paths.items()}, path=folder / "tiny-v.json")
    return OnnxEngine(manifest, threads=1), paths


@pytest.fixture(scope="module")
def windows():
    from dil.export.real_data import training_windows

    (ctx, tgt), info = training_windows({"dataset": "etth1"}, V_MODEL["context_length"], V_MODEL["horizon"], 3)
    assert info["used"]
    return ctx, tgt


def test_graphs_name_the_context_steps_and_tokens(v_engine, v_model):
    from dil.export.onnx_export import dynamic_axes

    _, paths = v_engine
    cfg, layers, D = v_model.config, v_model.config.num_layers, v_model.config.d_model

    def io(path, which):
        values = getattr(onnx.load(str(path)).graph, which)
        return {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] for v in values}

    assert io(paths["encode"], "input") == {"ctx": ["G", "L", cfg.context_features]}
    assert io(paths["encode"], "output")["k_ctx"] == [layers, "G", "Lp", D]
    den = io(paths["denoise"], "input")
    assert den["x_sub"] == ["G", "N", "S", 1 + FK] and den["k_ctx"] == [layers, "G", "Lp", D]
    axes = dynamic_axes(cfg)
    assert axes["L"] == {"min": P, "max": 16, "step": P} and axes["Lp"] == {"min": 1, "max": 4}


@pytest.mark.parametrize("L", [16, 8, 4])
def test_onnx_encode_matches_torch_at_every_patch_count(v_engine, v_model, L):
    engine, _ = v_engine
    ctx = np.random.default_rng(L).standard_normal((2, L, v_model.config.context_features)).astype(np.float32)
    with torch.no_grad():
        ref = [t.numpy() for t in v_model.encode(torch.from_numpy(ctx))]
    got = engine.encode(ctx)
    assert got[0].shape == (v_model.config.num_layers, 2, L // P, v_model.config.d_model)
    for g, r in zip(got, ref):
        assert np.abs(g - r).max() <= 1e-5


def test_export_validation_passes_for_the_v_model(v_engine, v_model, windows):
    """Per-graph errors (random and real contexts, every validation shape, L a multiple of P) and
    the subset equivalence, as dil-export records them."""
    from dil.export.graph_check import FP32_TOLERANCE, validate_graphs, validation_shapes

    _, paths = v_engine
    assert all(s.L % P == 0 for s in validation_shapes(v_model.config))
    assert any(s.L < 16 for s in validation_shapes(v_model.config))
    report = validate_graphs(v_model, paths, NoiseSchedule(), windows)
    assert report["passed"], report
    for g in ("encode", "denoise"):
        assert 0 < report["graphs"][g]["max_abs_err"] <= FP32_TOLERANCE
    assert all(0 <= v <= 1e-5 for v in report["subset_equivalence"]["max_abs_err"].values())


def test_fp16_graphs_of_the_v_model_validate(v_engine, v_model, tmp_path):
    from dil.export.fp16 import FP16_SUBSET_TOLERANCE, FP16_TOLERANCE, convert_files
    from dil.export.graph_check import validate_graphs

    _, paths = v_engine
    fp16, _ = convert_files(paths, tmp_path, "tiny-v")
    report = validate_graphs(v_model, fp16, NoiseSchedule(), None, tolerance=FP16_TOLERANCE,
                             subset_tolerance=FP16_SUBSET_TOLERANCE)
    assert report["passed"], report
    assert report["graphs"]["denoise"]["max_abs_err"] > 1e-6  # float16 really ran


# -- the runtime against the PyTorch references -----------------------------------------------------
@pytest.fixture(scope="module")
def inputs(v_model):
    rng = np.random.default_rng(5)
    cfg = v_model.config
    G, N = 2, 5
    z = rng.standard_normal((G, cfg.context_length))
    z[0, 3:6] = np.nan
    from dil.runtime.inputs.scaling import context_features

    ctx = np.concatenate([context_features(z), rng.uniform(-0.5, 0.5, (G, cfg.context_length, FK + FP))], -1)
    hor_feat = rng.uniform(-0.5, 0.5, (G, cfg.horizon, FK)).astype(np.float32)
    streams = SeriesStreams(7, range(G))
    return ctx.astype(np.float32), hor_feat, streams.initial_noise(N, cfg.horizon), streams


@pytest.mark.parametrize("order", [1, 2, 3])
def test_plain_sampler_equals_the_torch_reference(v_engine, v_model, inputs, order):
    from dil.evaluate.reference.sampler import reference_sample

    engine, _ = v_engine
    ctx, feat, x_T, streams = inputs
    config = SamplerConfig(steps=STEPS, lattice=False, cache=False, solver_order=order, x0_clip=0.0)
    got = sample(engine, NoiseSchedule(), ctx, x_T, config, streams, hor_feat=feat).x0
    ref = reference_sample(v_model, NoiseSchedule(), ctx, x_T, STEPS, order, x0_clip=0.0, hor_feat=feat)
    assert np.abs(got - ref).max() <= 1e-4 * max(1.0, np.abs(ref).max())
    # The features matter: other features, other samples.
    other = reference_sample(v_model, NoiseSchedule(), ctx, x_T, STEPS, order, x0_clip=0.0, hor_feat=feat + 0.3)
    assert np.abs(other - ref).max() > 1e-2


def test_fast_sampler_agrees_with_the_reference_in_lockstep_and_free_run(v_engine, v_model, windows):
    """dil-validate's sampler checks on the v model: controller agreement exactly 1 with shared
    outputs, and the free run (ONNX Runtime vs torch) within the gates."""
    from dil.evaluate.validation_report import validate_sampler

    engine, _ = v_engine
    config = SamplerConfig(steps=STEPS, K=2, bucket=1, full_fraction=1.0, tau_0=3.0, R=100,
                           random_probe_ratio=0.2, x0_clip=0.0)
    report = validate_sampler(engine, v_model, NoiseSchedule(), windows[0], config, 16, seed=1)
    assert report["features"] == "random"
    assert report["controller_agreement"] == 1.0 and report["controller_check"]["mismatched_calls"] == 0
    assert report["controller_check"]["input_max_abs_diff"] == 0.0
    assert report["passed"], report["failures"]
    assert report["free_run"]["runtime_stats"]["token_fraction"] < 0.8  # tokens were really reused
    assert report["free_run"]["forecast_max_abs_err"] > 0


@pytest.mark.slow
def test_dil_export_and_dil_validate_pass_for_a_v_model_with_features(v_model, tmp_path):
    """The whole path: a run folder with the model and its FeatureSpec, dil-export's artifact (graphs
    validated against torch), then dil-validate's checks at the documented defaults (20 steps)."""
    from dil.evaluate.validation_report import run_validation
    from dil.export.artifact import ExportOptions, export_artifact
    from dil.runtime.inputs.features import Covariate, FeatureSpec
    from dil.train.checkpoint import save_checkpoint

    spec = FeatureSpec(freq="h", time_features=("hour_of_day", "day_of_week"),
                       covariates=(Covariate("temp", "numeric", known=False),))
    assert (spec.context_width, spec.horizon_width) == (2 + FK + FP, 1 + FK)
    data = {"dataset": "etth1", "source": "ETTh1.csv.gz", "sha256": "", "columns": None, "date_column": "date",
            "freq": "h", "season": 24, "context_length": 16, "horizon": 8, "scaling": "context-mean-std"}
    save_checkpoint(tmp_path / "runs" / "v", v_model, NoiseSchedule(), data, {"epochs": 0}, features=spec)
    manifest = export_artifact(tmp_path / "runs" / "v", tmp_path / "engines", ExportOptions(name="v"))
    assert manifest.validation["passed"] and manifest.model == v_model.config
    report = run_validation(manifest.path, series=4, samples=16, steps=20)
    assert report["passed"], report["failures"]
    assert report["controller_agreement"] == 1.0 and report["features"] == "random"
