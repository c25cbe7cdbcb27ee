"""The lean full-step graphs (docs/architecture.md section 4): `denoise_full`, every horizon token of
every row, no masks, no token cache in, no keys/values out; `denoise_full_kv`, the same step with the
tokens' keys/values out.

Checked against the torch module (ScoreNet.denoise_full and the full step of ScoreNet.denoise), against
the exported denoise graph with every token computed, and through the sampler: the plain sampler's
samples on the lean path equal the old path's (denoise with the empty cache) within float32
rounding, the fast sampler runs its full steps on denoise_full_kv with the old path's samples, and
an artifact exported before the graphs existed still loads and samples on the old path.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from dil.runtime.backends.onnx_engine import EngineError, OnnxEngine
from dil.runtime.manifest import ManifestError, default_artifact, load_manifest
from dil.runtime.sampling.rng import SeriesStreams
from dil.runtime.sampling.config import SamplerConfig
from dil.runtime.sampling.contracts import FullStepKVEngine
from dil.runtime.sampling.sampler import sample
from dil.runtime.sampling.schedule import NoiseSchedule
from builders import patch_model

torch = pytest.importorskip("torch")


class CountingEngine(OnnxEngine):
    """OnnxEngine that counts which graph each denoise call ran on (the graphs run as they are)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls = dict.fromkeys(GRAPHS, 0)

    def denoise(self, *args):
        self.calls["denoise"] += 1
        return super().denoise(*args)

    def denoise_full(self, *args):
        self.calls["denoise_full"] += 1
        return super().denoise_full(*args)

    def denoise_full_kv(self, *args):
        self.calls["denoise_full_kv"] += 1
        return super().denoise_full_kv(*args)


GRAPHS = ("denoise", "denoise_full", "denoise_full_kv")


def _full_case(cfg, G: int, N: int, T: int, seed: int = 0):
    """ctx f32 [G, L, Fc], x_hor f32 [G, N, T, Ph * Fh], t_feat f32 [G, N, E] (random)."""
    rng = np.random.default_rng(seed)
    ctx = rng.standard_normal((G, cfg.context_length, cfg.context_features)).astype(np.float32)
    ctx[..., 1] = 1.0  # observed mask
    x = rng.standard_normal((G, N, T, cfg.horizon_patch * cfg.horizon_features)).astype(np.float32)
    t = rng.standard_normal((G, N, cfg.time_embed_dim)).astype(np.float32)
    return ctx, x, t


def _old_full_step(engine, x, t, k, v):
    """The denoise graph on every token with an empty cache (what the sampler ran before): (out, k_sub, v_sub)."""
    G, N, T = x.shape[:3]
    cfg = engine.config
    pos = np.broadcast_to(np.arange(T, dtype=np.int64), (G, N, T))
    empty = np.zeros((cfg.num_layers, G, N, T, cfg.d_model), np.float32)
    return engine.denoise(x, pos, t, k, v, empty, empty, np.zeros((G, N, T), np.float32))


def _check_graph(engine, model, G: int, N: int, T: int, L: int | None = None):
    """denoise_full graph vs torch's denoise_full and full step, and vs the denoise graph."""
    cfg = engine.config
    ctx, x, t = _full_case(cfg, G, N, T)
    if L is not None:
        ctx = ctx[:, -L:]
    k, v = engine.encode(ctx)
    got = engine.denoise_full(x, t, k, v)
    assert got.shape == (G, N, T, cfg.horizon_patch)
    with torch.no_grad():
        args = [torch.from_numpy(a) for a in (x, t, k, v)]
        ref = model.denoise_full(*args).numpy()
        pos = torch.arange(T).expand(G, N, T)
        empty = torch.zeros(cfg.num_layers, G, N, T, cfg.d_model)
        ref_full = model.denoise(args[0], pos, args[1], args[2], args[3], empty, empty, torch.zeros(G, N, T))[0].numpy()
    assert np.abs(ref).max() > 0.1  # a non-trivial output
    assert np.abs(ref - ref_full).max() <= 1e-5  # torch: lean attention == masked full step
    assert np.abs(got - ref).max() <= 1e-4  # graph vs torch, the export tolerance
    old = _old_full_step(engine, x, t, k, v)
    assert np.abs(got - old[0]).max() <= 1e-5  # graph vs the denoise graph
    # denoise_full_kv: the same output, and the keys/values denoise returns for the step
    got_kv = engine.denoise_full_kv(x, t, k, v)
    with torch.no_grad():
        ref_kv = [a.numpy() for a in model.denoise_full(*args, with_kv=True)]
    assert got_kv[1].shape == (cfg.num_layers, G, N, T, cfg.d_model) == old[1].shape
    assert np.abs(ref_kv[0] - ref).max() == 0.0  # with_kv changes no output
    for g, r, o in zip(got_kv, ref_kv, old):
        assert np.abs(r).max() > 0.1
        assert np.abs(g - r).max() <= 1e-4 and np.abs(g - o).max() <= 1e-5


# -- the tiny artifact (conftest: exported once per session, validated) -----------------------------
def test_tiny_artifact_has_the_graph_validated(tiny_artifact):
    m = load_manifest(tiny_artifact)
    assert m.graphs["denoise_full"]["file"] == "tiny.denoise_full.onnx"
    assert [i["name"] for i in m.graphs["denoise_full"]["inputs"]] == ["x_hor", "t_feat", "k_ctx", "v_ctx"]
    assert m.to_dict()["io"]["denoise_full"] == {"inputs": ["x_hor", "t_feat", "k_ctx", "v_ctx"], "outputs": ["out"]}
    assert m.to_dict()["io"]["denoise_full_kv"] == {"inputs": ["x_hor", "t_feat", "k_ctx", "v_ctx"],
                                                    "outputs": ["out", "k_sub", "v_sub"]}
    v = m.validation
    for g in ("denoise_full", "denoise_full_kv"):
        assert v["graphs"][g]["passed"] and v["graphs"][g]["max_abs_err"] <= 1e-4
    assert v["full_step_equivalence"]["passed"] and v["full_step_equivalence"]["max_abs_err"] <= 1e-5


@pytest.mark.parametrize("G, N, T, L", [(2, 3, 8, None), (1, 1, 1, None), (3, 2, 5, 8)])
def test_tiny_graph_matches_torch_and_the_denoise_graph(tiny_artifact, tiny_model, G, N, T, L):
    engine = OnnxEngine.load(tiny_artifact, threads=1)
    assert isinstance(engine, FullStepKVEngine) and engine.full_step and engine.full_step_kv
    _check_graph(engine, tiny_model, G, N, T, L)


def _sample(engine, config, G=2, N=4, seed=0, hor_feat=None):
    cfg = engine.config
    rng = np.random.default_rng(seed)
    ctx = rng.standard_normal((G, cfg.context_length, cfg.context_features)).astype(np.float32)
    ctx[..., 1] = 1.0
    streams = SeriesStreams(seed, list(range(G)))
    x_T = streams.initial_noise(N, cfg.horizon)
    return sample(engine, NoiseSchedule(), ctx, x_T, config, streams, hor_feat=hor_feat).x0


def _lean_vs_old(engine, config, **kwargs):
    """(samples on the lean path, on the old path, graph calls of each): the same engine with its
    full-step capabilities switched off for the second run."""
    engine.calls = dict.fromkeys(GRAPHS, 0)
    lean = _sample(engine, config, **kwargs)
    lean_calls = dict(engine.calls)
    engine.full_step = engine.full_step_kv = False
    engine.calls = dict.fromkeys(GRAPHS, 0)
    old = _sample(engine, config, **kwargs)
    engine.full_step = engine.full_step_kv = True
    return lean, old, lean_calls, dict(engine.calls)


def test_plain_sampler_runs_the_lean_graph_with_the_same_samples(tiny_artifact):
    engine = CountingEngine.load(tiny_artifact, threads=1)
    lean, old, lean_calls, old_calls = _lean_vs_old(engine, SamplerConfig(steps=10, lattice=False,
                                                                          cache=False))
    assert lean_calls == {"denoise": 0, "denoise_full": 10, "denoise_full_kv": 0}
    assert old_calls == {"denoise": 10, "denoise_full": 0, "denoise_full_kv": 0}
    # Not bit-identical: the two graphs sum the same terms in another order (float32 rounding).
    np.testing.assert_allclose(lean, old, rtol=0, atol=1e-6)
    assert np.abs(lean).max() > 0.1


# The fast sampler with a small core and no full-fraction rule, so that the tiny models' few tokens
# see cached steps between the full ones.
FAST = SamplerConfig(steps=10, K=1, bucket=1, full_fraction=1.0)


def _fast_lean_vs_old(engine, config, **kwargs):
    """The fast sampler: its full steps (keys/values kept for later cached steps) run denoise_full_kv,
    its cached steps denoise; on the old path every step runs denoise. The samples agree within
    float32 rounding of the full steps' outputs."""
    lean, old, lean_calls, old_calls = _lean_vs_old(engine, config, **kwargs)
    assert lean_calls["denoise_full"] == 0 and lean_calls["denoise_full_kv"] > 0 and lean_calls["denoise"] > 0
    assert old_calls["denoise"] == lean_calls["denoise"] + lean_calls["denoise_full_kv"]
    np.testing.assert_allclose(lean, old, rtol=0, atol=1e-5)
    assert np.abs(lean).max() > 0.1


def test_fast_sampler_runs_full_steps_on_the_lean_graph_with_keys_values(tiny_artifact):
    _fast_lean_vs_old(CountingEngine.load(tiny_artifact, threads=1), FAST)


# -- an artifact exported before the graph existed ------------------------------------------------
@pytest.fixture(scope="module")
def old_artifact(tiny_artifact, tmp_path_factory):
    """A copy of the tiny artifact without the full-step graphs (graph files and manifest entries removed)."""
    out = tmp_path_factory.mktemp("pre-full-step")
    for name in ("tiny.encode.onnx", "tiny.denoise.onnx", "tiny.weights.safetensors"):
        shutil.copy(tiny_artifact.parent / name, out / name)
    d = json.loads(tiny_artifact.read_text())
    for g in ("denoise_full", "denoise_full_kv"):
        del d["graphs"][g], d["io"][g], d["validation"]["graphs"][g]
    del d["validation"]["full_step_equivalence"]
    (out / "tiny.json").write_text(json.dumps(d, indent=2))
    return out / "tiny.json"


def test_old_artifact_samples_on_the_denoise_graph(old_artifact, tiny_artifact):
    engine = OnnxEngine.load(old_artifact, threads=1)
    assert engine.full_step is False and engine.full_step_kv is False
    assert "denoise_full" not in load_manifest(old_artifact).to_dict()["io"]
    with pytest.raises(EngineError, match="no denoise_full graph"):
        engine.denoise_full(*(np.zeros(1, np.float32),) * 4)
    with pytest.raises(EngineError, match="no denoise_full_kv graph"):
        engine.denoise_full_kv(*(np.zeros(1, np.float32),) * 4)
    config = SamplerConfig(steps=6, lattice=False, cache=False)
    got = _sample(engine, config)
    new = OnnxEngine.load(tiny_artifact, threads=1)
    new.full_step = new.full_step_kv = False  # the new artifact on the old path: the same graphs, bit for bit
    np.testing.assert_array_equal(got, _sample(new, config))
    np.testing.assert_array_equal(_sample(engine, FAST), _sample(new, FAST))


def test_a_named_full_step_graph_must_exist_and_match(tiny_artifact, tmp_path):
    for name in ("tiny.encode.onnx", "tiny.denoise.onnx", "tiny.json"):
        shutil.copy(tiny_artifact.parent / name, tmp_path / name)
    with pytest.raises(ManifestError, match="tiny.denoise_full.onnx named by .* is missing"):
        load_manifest(tmp_path / "tiny.json")
    (tmp_path / "tiny.denoise_full.onnx").write_bytes(b"not the graph")
    with pytest.raises(ManifestError, match="sha256 differs"):
        load_manifest(tmp_path / "tiny.denoise_full.onnx")  # the graph's own name resolves to NAME.json


# -- a horizon-patch model with known features (tests/builders.py) ---------------------------
@pytest.fixture(scope="module")
def patch_artifact(tmp_path_factory):
    """(model, manifest path): a random model with context patches of 12, horizon 24 in tokens of 4,
    2 known features, v-prediction, exported without validation (~30 s)."""
    from dil.export.artifact import ExportOptions, export_artifact
    from dil.runtime.inputs.features import FeatureSpec
    from dil.train.checkpoint import save_checkpoint

    model = patch_model(24, 4, known=2, prediction="v", seed=3)
    spec = FeatureSpec(freq="h", time_features=("hour_of_day", "day_of_week"))
    run = tmp_path_factory.mktemp("patch-runs") / "ph"
    data = {"dataset": "etth1", "columns": ["OT"], "date_column": "date", "freq": "h", "season": 24,
            "context_length": 48, "horizon": 24, "scaling": "context-mean-std"}
    save_checkpoint(run, model, NoiseSchedule(), data, {"epochs": 0}, features=spec)
    out = tmp_path_factory.mktemp("patch-engines")
    return model, export_artifact(run, out, ExportOptions(name="ph", validate=False)).path


@pytest.mark.slow
def test_patch_model_graph_and_sampler(patch_artifact):
    model, path = patch_artifact
    engine = CountingEngine.load(path, threads=1)
    assert engine.config.horizon_tokens == 6 and engine.full_step
    _check_graph(engine, model, 2, 3, 6)
    _check_graph(engine, model, 1, 2, 2, L=24)  # fewer tokens, shorter context
    hor_feat = np.random.default_rng(1).uniform(-1, 1, (2, 24, 2)).astype(np.float32)
    lean, old, lean_calls, _ = _lean_vs_old(engine, SamplerConfig(steps=10, lattice=False, cache=False),
                                            hor_feat=hor_feat)
    assert lean_calls == {"denoise": 0, "denoise_full": 10, "denoise_full_kv": 0}
    np.testing.assert_allclose(lean, old, rtol=0, atol=1e-6)
    _fast_lean_vs_old(engine, FAST, hor_feat=hor_feat)


# -- the shipped model -----------------------------------------------------------------------------
def test_shipped_model_has_the_graph_and_samples_alike():
    engine = CountingEngine.load(default_artifact(), threads=1)
    assert engine.full_step, "the shipped artifact lacks denoise_full: re-export it"
    cfg = engine.config
    hor_feat = np.random.default_rng(2).uniform(-1, 1, (1, cfg.horizon, cfg.horizon_features - 1)).astype(np.float32)
    lean, old, lean_calls, _ = _lean_vs_old(engine, SamplerConfig(steps=10, lattice=False, cache=False),
                                            G=1, N=20, hor_feat=hor_feat)
    assert lean_calls == {"denoise": 0, "denoise_full": 10, "denoise_full_kv": 0}
    np.testing.assert_allclose(lean, old, rtol=0, atol=1e-6)
