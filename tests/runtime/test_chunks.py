"""Forecasts run in bounded sampler calls (runtime/sampling/chunks.py): memory does not grow with
num_samples, and neither the memory budget nor the split changes a single number."""

from __future__ import annotations

import numpy as np
import pytest

from dil.runtime import Forecaster, SamplerConfig, SeriesStreams
from dil.runtime.model.config import ModelConfig
from dil.runtime.sampling.chunks import (
    CPU_CALL_TOKENS,
    SAMPLE_BLOCK,
    bytes_per_row,
    sample_blocks,
    series_per_call,
)
from dil.runtime.sampling.sampler import sample
from dil.runtime.inputs.scaling import context_features, context_scale, standardise

N = SAMPLE_BLOCK + 76  # two sample blocks
FAST = dict(K=2, bucket=1, tau_0=3.0, full_fraction=1.0, R=100)


class _Recording:
    """The real engine, with the rows (G, N) of every denoise call (either graph) written down."""

    def __init__(self, inner):
        self.inner, self.calls = inner, []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def denoise(self, x_sub, *args):
        self.calls.append(x_sub.shape[:2])
        return self.inner.denoise(x_sub, *args)

    def denoise_full(self, x_hor, *args):
        self.calls.append(x_hor.shape[:2])
        return self.inner.denoise_full(x_hor, *args)


@pytest.fixture(scope="module")
def contexts(tiny_config):
    rng = np.random.default_rng(4)
    return 10.0 + rng.standard_normal((3, tiny_config.context_length)).cumsum(axis=1)


def test_blocks_and_the_row_estimate_by_hand():
    assert sample_blocks(1) == [(0, 1)] and sample_blocks(SAMPLE_BLOCK) == [(0, SAMPLE_BLOCK)]
    assert sample_blocks(2500) == [(0, 1024), (1024, 2048), (2048, 2500)]
    # The shipped model (ModelConfig's defaults: L 168, H 24, D 64, 3 layers, 4 heads, ffn 128), 20 steps:
    # engine 4 * 3 * (2 * 192 * 64 + 4 * 24 * 192 + 24 * 128) = 552960, host 16 * 3 * 24 * 64 + 8 * 24 * (24 + 38) = 85632.
    model = ModelConfig()
    assert bytes_per_row(model, 20) == 2 * 552_960 + 85_632
    row = bytes_per_row(model, 20)
    assert series_per_call(model, 20, 100, 10 * 100 * row, 16, None) == 10
    assert series_per_call(model, 20, 100_000, 10 * 1024 * row, 16, None) == 10  # a block, not N, per call
    assert series_per_call(model, 20, 100, 1, 16, None) == 1
    assert series_per_call(model, 20, 100, 2**62, 16, 4) == 4


@pytest.mark.parametrize("settings", [FAST, {"lattice": False, "cache": False}], ids=["fast", "plain"])
def test_a_small_budget_gives_the_same_forecast_in_bounded_calls(tiny_artifact, contexts, settings):
    kw = dict(num_samples=N, steps=4, seed=2, series_ids=["a", "b", 7], **settings)
    one_call = Forecaster.load(tiny_artifact, threads=1)
    one_call.engine.call_tokens = None  # every series in one call: no token limit
    whole = one_call.predict_windows(contexts, **kw)
    fc = Forecaster.load(tiny_artifact, threads=1)
    fc.engine = _Recording(fc.engine)
    small = fc.predict_windows(contexts, memory_budget=1, **kw)  # one series and one block per call
    np.testing.assert_array_equal(small.samples, whole.samples)
    np.testing.assert_array_equal(small.quantiles, whole.quantiles)
    assert set(fc.engine.calls) == {(1, SAMPLE_BLOCK), (1, N - SAMPLE_BLOCK)}
    assert (small.stats.encode_calls, whole.stats.encode_calls) == (3 * 2, 2)
    assert (small.stats.series, small.stats.samples) == (3, N) and small.stats.full_tokens == whole.stats.full_tokens
    # Samples are drawn in order: the first block does not depend on how many follow.
    first = Forecaster.load(tiny_artifact, threads=1).predict_windows(contexts, **{**kw, "num_samples": SAMPLE_BLOCK})
    np.testing.assert_array_equal(whole.samples[:, :SAMPLE_BLOCK], first.samples)


def test_token_limit_by_hand():
    """Series per call under a token-row limit: rows x horizon tokens per series (the shipped
    model's H 24 in patches of 4: 6 tokens, so 100 samples are 600 token rows a series)."""
    model = ModelConfig(horizon=24, horizon_patch=4)
    big = 2**62
    assert series_per_call(model, 10, 100, big, 32, None, CPU_CALL_TOKENS) == 2
    assert series_per_call(model, 10, 100, big, 32, None, 2400) == 4
    assert series_per_call(model, 10, 100, big, 32, None, 2399) == 3
    assert series_per_call(model, 10, 100, big, 32, None, 599) == 1  # at least one series
    assert series_per_call(model, 10, 100, big, 2, None, 2400) == 2  # batch_series still caps
    assert series_per_call(model, 10, 100, big, 32, None, None) == 32  # no limit: memory alone
    assert series_per_call(model, 10, 5000, big, 32, None, 2400) == 1  # a block of 1024 rows is one series


def test_the_token_limit_applies_to_cpu_engines_only(tiny_artifact):
    from dil.runtime.backends.trt_engine import TrtEngine

    assert Forecaster.load(tiny_artifact, threads=1).engine.call_tokens == CPU_CALL_TOKENS
    assert TrtEngine.call_tokens is None


@pytest.mark.parametrize("settings", [FAST, {"lattice": False, "cache": False}], ids=["fast", "plain"])
def test_the_token_limit_splits_calls_without_changing_a_sample(tiny_artifact, contexts, settings):
    """A batch larger than the token limit runs as several engine calls, with the same samples as
    one call over every series."""
    kw = dict(num_samples=40, steps=3, seed=1, **settings)
    fc = Forecaster.load(tiny_artifact, threads=1)
    engine = fc.engine
    fc.engine = _Recording(engine)
    T = fc.config.horizon_tokens
    engine.call_tokens = 40 * T  # one series per call
    split = fc.predict_windows(contexts, **kw)
    assert split.stats.encode_calls == 3 and {g for g, _ in fc.engine.calls} == {1}
    engine.call_tokens = 2 * 40 * T  # two, then one
    two = fc.predict_windows(contexts, **kw)
    assert two.stats.encode_calls == 2
    engine.call_tokens = None
    one = fc.predict_windows(contexts, **kw)
    assert one.stats.encode_calls == 1
    np.testing.assert_array_equal(split.samples, one.samples)
    np.testing.assert_array_equal(two.samples, one.samples)


def test_plain_forecast_equals_one_call_over_all_samples(tiny_artifact, contexts):
    """The plain sampler's rows are independent: the blocks give what one call over every row gives."""
    fc = Forecaster.load(tiny_artifact, threads=1)
    config = SamplerConfig(steps=3, lattice=False, cache=False)
    blocked = fc.predict_windows(contexts, N, seed=5, config=config)
    ctx = contexts[:, -fc.context_length:]
    loc, scale = context_scale(ctx)
    streams = SeriesStreams(5, range(3))
    one = sample(fc.engine, fc.schedule, context_features(standardise(ctx, loc, scale)),
                 streams.initial_noise(N, fc.horizon), config, streams)
    np.testing.assert_array_equal(blocked.samples, one.x0 * scale[:, None, None] + loc[:, None, None])


def test_memory_budget_is_checked(tiny_artifact, contexts):
    with pytest.raises(ValueError, match=r"memory_budget must be an integer in \[1, "):
        Forecaster.load(tiny_artifact, threads=1).predict_windows(contexts, 2, steps=2, memory_budget=0)
