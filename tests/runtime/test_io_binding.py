"""OnnxEngine's I/O-binding path (outputs written into reused host buffers) against the host path
(session.run, fresh outputs per call): the same forecasts bit for bit on the CPU provider, and a
result the caller keeps is never overwritten by a later call."""

from __future__ import annotations

from importlib.resources import files

import numpy as np
import pytest

from dil.runtime import Forecaster
from dil.runtime.backends.onnx_engine import DEFAULT_IO_BINDING, OnnxEngine
from dil.runtime.manifest import default_artifact, load_manifest
from dil.runtime.inputs.window_features import WindowFeatures

G, N = 2, 8  # small: the point is bit-equality, not speed


@pytest.fixture(scope="module")
def manifest():
    return load_manifest(default_artifact())


@pytest.fixture(scope="module")
def engines(manifest):
    return {io: OnnxEngine(manifest, providers="CPUExecutionProvider", threads=1, io_binding=io) for io in (False, True)}


def _inputs(forecaster, seed=3):
    """Contexts [G, L] (a daily wave plus noise, a few missing values) and random features of the
    model's widths (None for a model without features)."""
    rng = np.random.default_rng(seed)
    L, H = forecaster.context_length, forecaster.horizon
    ctx = 3000 + 1500 * np.sin(2 * np.pi * np.arange(L) / 24)[None] + 200 * rng.standard_normal((G, L))
    ctx[0, 5:9] = np.nan
    spec = forecaster.features
    Fk, Fp = spec.known_width, spec.past_width
    if not (Fk or Fp):
        return ctx, None
    return ctx, WindowFeatures(rng.uniform(-1, 1, (G, L, Fk)), rng.uniform(-1, 1, (G, L, Fp)),
                               rng.uniform(-1, 1, (G, H, Fk)))


# metro-traffic (6 horizon tokens): the fast sampler computes every token, through denoise with
# keys/values out, and the token cache adopts a full step's outputs; the plain sampler runs
# denoise_full. The tiny test model (8 tokens of 1 step, K = 2): the cache skips some tokens, so partial
# calls (S < T, padded rows) are scattered from the bound buffers.
@pytest.mark.parametrize("artifact,fast,partial", [("metro-traffic", True, False), ("metro-traffic", False, False),
                                                   ("tiny", True, True)])
def test_io_binding_and_host_path_forecast_bit_identically(artifact, fast, partial, request):
    path = request.getfixturevalue("tiny_artifact") if artifact == "tiny" else files("dil.engines") / f"{artifact}.json"
    manifest = load_manifest(str(path))
    out, stats, steps = {}, {}, 10
    for io in (False, True):
        fc = Forecaster(OnnxEngine(manifest, providers="CPUExecutionProvider", threads=1, io_binding=io))
        ctx, feats = _inputs(fc)
        core = {"K": 2} if artifact == "tiny" else {}  # 2 core tokens of 8: the cache skips some
        f = fc.predict_windows(ctx, num_samples=N, steps=steps, seed=7, features=feats, lattice=fast, cache=fast,
                               **core)
        out[io], stats[io] = f.samples, f.stats
    assert out[True].shape == (G, N, manifest.model.horizon)
    assert np.isfinite(out[True]).all()
    assert np.array_equal(out[True], out[False])
    assert stats[True].engine_calls == stats[False].engine_calls == steps
    assert stats[True].tokens_computed == stats[False].tokens_computed
    assert (stats[True].tokens_computed < stats[True].full_tokens) == partial


def _denoise_args(cfg, S, seed):
    rng = np.random.default_rng(seed)
    T, D, layers = cfg.horizon // cfg.horizon_patch, cfg.d_model, cfg.num_layers
    Lp = cfg.context_length // cfg.context_patch
    f32 = np.float32
    pos = np.stack([np.sort(rng.permutation(T)[:S]) for _ in range(G * N)]).reshape(G, N, S).astype(np.int64)
    return (rng.standard_normal((G, N, S, cfg.horizon_patch * cfg.horizon_features)).astype(f32), pos,
            rng.standard_normal((G, N, cfg.time_embed_dim)).astype(f32),
            rng.standard_normal((layers, G, Lp, D)).astype(f32), rng.standard_normal((layers, G, Lp, D)).astype(f32),
            rng.standard_normal((layers, G, N, T, D)).astype(f32), rng.standard_normal((layers, G, N, T, D)).astype(f32),
            (rng.uniform(size=(G, N, T)) < 0.5).astype(f32))


def test_kept_outputs_are_never_overwritten_and_dropped_ones_are_reused(engines):
    bound, host = engines[True], engines[False]
    cfg = bound.config
    a_args, b_args, c_args = _denoise_args(cfg, 3, 0), _denoise_args(cfg, 6, 1), _denoise_args(cfg, 3, 2)
    kept = bound.denoise(*a_args)  # held across the next calls, as the token cache holds a full step's keys
    for S_args in (b_args, c_args, b_args, c_args):
        bound.denoise(*S_args)
    for got, want in zip(kept, host.denoise(*a_args)):
        assert np.array_equal(got, want)
    # A result nobody holds any more is written over: no fresh allocation per call.
    first = bound.denoise(*b_args)
    address = first[1].ctypes.data
    del first
    again = bound.denoise(*b_args)
    assert again[1].ctypes.data == address
    for got, want in zip(again, host.denoise(*b_args)):
        assert np.array_equal(got, want)


def test_io_binding_is_a_constructor_option(manifest):
    assert OnnxEngine(manifest, threads=1).io_binding is DEFAULT_IO_BINDING
    assert OnnxEngine.load(manifest.path, threads=1, io_binding=False).io_binding is False
