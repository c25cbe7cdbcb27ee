"""Horizon patch tokens in the runtime sampler (docs/sampler.md section 2): a token is Ph consecutive
horizon steps; controllers and the token cache work per token, the solver per step.

The engine here runs the torch ScoreNet itself (the independent reference of the graphs), so the
runtime's gathering, scattering and token bookkeeping are checked against the module and against
the PyTorch reference sampler.
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
from builders import patch_model

torch = pytest.importorskip("torch")


class ModuleEngine:
    """The two graphs, computed by the torch module (float32, as exported)."""

    max_batch = None

    def __init__(self, model):
        self.model, self.config = model, model.config
        self.stats = SimpleNamespace(encode_calls=0, denoise_calls=0, seconds=0.0)

    def encode(self, ctx):
        with torch.no_grad():
            k, v = self.model.encode(torch.from_numpy(np.ascontiguousarray(ctx)))
        return k.numpy(), v.numpy()

    def denoise(self, *inputs):
        with torch.no_grad():
            out, k, v = self.model.denoise(*(torch.from_numpy(np.ascontiguousarray(a)) for a in inputs))
        self.stats.denoise_calls += 1
        return out.numpy(), k.numpy(), v.numpy()

    def device_cache(self, G, N, T):
        return None


def _inputs(G: int, known: int = 0, seed: int = 0):
    rng = np.random.default_rng(seed)
    ctx = np.concatenate([rng.standard_normal((G, 48, 1)), np.ones((G, 48, 1)),
                          rng.uniform(-0.5, 0.5, (G, 48, known))], axis=-1).astype(np.float32)
    return ctx


def test_config_rejects_a_patch_that_does_not_divide_the_horizon():
    with pytest.raises(ValueError, match="horizon_patch"):
        ModelConfig(horizon=24, horizon_patch=5)
    assert ModelConfig(horizon=24, horizon_patch=4).horizon_tokens == 6
    assert ModelConfig().horizon_patch == 1  # old manifests: one step per token


def test_gather_inputs_lays_out_each_token_step_major():
    """Token t of a Ph = 3 model carries steps 3t, 3t+1, 3t+2, each (value, its known features)."""
    G, N, T, Ph, Fk = 1, 2, 2, 3, 2
    x = np.arange(G * N * T * Ph, dtype=np.float64).reshape(G, N, T * Ph)  # step value = its index
    feat = 100 + np.arange(T * Ph * Fk, dtype=np.float32).reshape(G, T * Ph, Fk)
    x_pad = np.zeros((G, N, T + 1, Ph))
    x_pad[:, :, :T] = x.reshape(G, N, T, Ph)
    feat_pad = np.zeros((G, T + 1, Ph, Fk), np.float32)
    feat_pad[:, :T] = feat.reshape(G, T, Ph, Fk)
    pos = np.array([[[1, 2], [0, 1]]])  # row 0: token 1 and a padding entry (T = 2)
    got = gather_inputs(x_pad, feat_pad, pos)
    assert got.shape == (1, 2, 2, Ph * (1 + Fk))
    # row 0, token 1: steps 3, 4, 5 -> [3, 106, 107, 4, 108, 109, 5, 110, 111]
    np.testing.assert_array_equal(got[0, 0, 0], [3, 106, 107, 4, 108, 109, 5, 110, 111])
    np.testing.assert_array_equal(got[0, 0, 1], np.zeros(9))  # padding: all 0
    np.testing.assert_array_equal(got[0, 1, 0], [6, 100, 101, 7, 102, 103, 8, 104, 105])  # row 1 token 0


def test_token_cache_moves_a_tokens_steps_with_its_value():
    """Assigning x0_hat per token (core follow) shifts every step of the token by the change."""
    cache = TokenCache(1, 1, 1, 2, 4, prediction="v", patch=2)
    plan = StepPlan(pos_sub=np.array([[[0, 1]]]), order=1, full=True)
    v_out = np.array([[[[1.0, 3.0], [-2.0, 0.0]]]], np.float32)  # v per step
    x = np.array([[[0.5, 0.5, 1.0, -1.0]]])
    cache.x = x
    alpha, sigma = 0.6, 0.8
    cache.store(plan, np.ones((1, 1, 2), bool), x, v_out, np.zeros((1, 1, 1, 2, 4), np.float32),
                np.zeros((1, 1, 1, 2, 4), np.float32), alpha, sigma)
    steps = alpha * x[0, 0] - sigma * v_out.reshape(-1)  # v-prediction: x0 = alpha x - sigma v
    np.testing.assert_allclose(cache.x0_steps[0, 0], steps)
    np.testing.assert_allclose(cache.x0_hat[0, 0], [steps[:2].mean(), steps[2:].mean()])
    np.testing.assert_allclose(cache.x[0, 0], [0.5, 0.0])
    np.testing.assert_allclose(cache.x_in[0, 0], [0.5, 0.0])
    cache.x0_hat = cache.x0_hat + np.array([[[0.0, 1.5]]])
    np.testing.assert_allclose(cache.x0_steps[0, 0], steps + [0, 0, 1.5, 1.5])


def test_plain_sampler_with_patches_matches_the_torch_reference():
    from dil.evaluate.reference.sampler import reference_sample

    model = patch_model(horizon=16, patch=4, known=2)
    G, N, H = 2, 3, 16
    ctx = _inputs(G, known=2)
    hor_feat = np.random.default_rng(3).uniform(-0.5, 0.5, (G, H, 2)).astype(np.float32)
    streams = SeriesStreams(0, [0, 1])
    x_T = streams.initial_noise(N, H)
    config = SamplerConfig(steps=8, lattice=False, cache=False)
    got = sample(ModuleEngine(model), NoiseSchedule(), ctx, x_T, config, streams, hor_feat=hor_feat)
    want = reference_sample(model, NoiseSchedule(), ctx, x_T, 8, solver_order=config.solver_order,
                            x0_clip=config.x0_clip, hor_feat=hor_feat)
    np.testing.assert_allclose(got.x0, np.asarray(want), atol=1e-9)
    assert got.stats.full_tokens == G * N * (H // 4) * 8


def test_fast_sampler_with_patches_computes_token_subsets_and_ignores_the_batch():
    """32 tokens of 2 steps: the cache reuses tokens (fewer computed than a full run), and a series'
    forecast is the same alone or next to another series (same seed)."""
    model = patch_model(horizon=64, patch=2)
    ctx = _inputs(2, seed=5)
    config = SamplerConfig(steps=10)
    engine = ModuleEngine(model)

    def run(rows):
        streams = SeriesStreams(7, rows)
        return sample(engine, NoiseSchedule(), ctx[rows], streams.initial_noise(4, 64), config, streams)

    both, alone = run([0, 1]), run([1])
    assert both.stats.tokens_computed < both.stats.full_tokens
    assert np.isfinite(both.x0).all()
    np.testing.assert_allclose(alone.x0[0], both.x0[1], rtol=0, atol=1e-6)


def test_sampler_rejects_a_horizon_that_is_not_whole_tokens():
    model = patch_model(horizon=16, patch=4)
    streams = SeriesStreams(0, [0])
    with pytest.raises(ValueError, match="horizon_patch 4"):
        sample(ModuleEngine(model), NoiseSchedule(), _inputs(1), np.zeros((1, 2, 14)),
               SamplerConfig(steps=4), streams)
