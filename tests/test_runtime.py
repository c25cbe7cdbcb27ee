"""The runtime on the exported tiny artifact: engine, sampler plumbing, Forecaster API and errors."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from dil.runtime import EngineError, ForecastError, Forecaster, ManifestError, OnnxEngine, SamplerConfig
from dil.runtime.files import sha256_file
from dil.runtime.quantiles import QUANTILE_LEVELS, quantile_column
from dil.runtime.sampling.step_plan import StepPlan
from dil.runtime.sampling.token_cache import TokenCache


@pytest.fixture(scope="module")
def forecaster(tiny_artifact):
    return Forecaster.load(tiny_artifact, threads=1)


@pytest.fixture(scope="module")
def history():
    """[T=40, C=4] random walks with a gap inside the last context window of series 1."""
    rng = np.random.default_rng(0)
    values = 10.0 + rng.standard_normal((40, 4)).cumsum(axis=0)
    values[30:33, 1] = np.nan
    return values


def _copy_artifact(manifest_path, dest):
    for suffix in (".json", ".encode.onnx", ".denoise.onnx"):
        shutil.copy(manifest_path.with_name("tiny" + suffix), dest / ("tiny" + suffix))
    return dest / "tiny.json"


# -- engine ------------------------------------------------------------------------------------
def test_engine_loads_from_any_sibling_name_and_counts_time(tiny_artifact, tiny_config):
    for name in ("tiny.onnx", "tiny.json", "tiny.denoise.onnx"):
        engine = OnnxEngine.load(tiny_artifact.with_name(name), providers="CPUExecutionProvider", threads=1)
    assert engine.providers == ["CPUExecutionProvider"]
    cfg = tiny_config
    G, N, L, H = 2, 3, cfg.context_length, cfg.horizon
    k_ctx, v_ctx = engine.encode(np.zeros((G, L, 2), np.float32))
    assert k_ctx.shape == v_ctx.shape == (cfg.num_layers, G, L, cfg.d_model)
    cache = np.zeros((cfg.num_layers, G, N, H, cfg.d_model), np.float32)
    eps, k, v = engine.denoise(
        np.zeros((G, N, 5, 1), np.float32), np.zeros((G, N, 5), np.int64), np.zeros((G, N, cfg.time_embed_dim), np.float32),
        k_ctx, v_ctx, cache, cache, np.zeros((G, N, H), np.float32),
    )
    assert eps.shape == (G, N, 5, 1) and k.shape == v.shape == (cfg.num_layers, G, N, 5, cfg.d_model)
    assert engine.stats.encode_calls == 1 and engine.stats.denoise_calls == 1 and engine.stats.seconds > 0


def test_token_cache_subset_step_reproduces_the_full_step(forecaster, tiny_config):
    """The plumbing the lattice/cache controllers will use: a padded token subset, computed against
    a fresh valid cache, gives the full step's eps/keys for those tokens (docs/architecture.md section 4: <= 1e-5)."""
    engine, cfg = forecaster.engine, tiny_config
    G, N, H, L = 2, 3, cfg.horizon, cfg.context_length
    rng = np.random.default_rng(1)
    k_ctx, v_ctx = engine.encode(rng.standard_normal((G, L, 2)).astype(np.float32))
    x = rng.standard_normal((G, N, H))
    t_feat = rng.standard_normal((G, N, cfg.time_embed_dim)).astype(np.float32)
    cache = TokenCache(cfg.num_layers, G, N, H, cfg.d_model)
    full = StepPlan(pos_sub=np.ascontiguousarray(np.broadcast_to(np.arange(H), (G, N, H))), order=1, full=True)
    computed = full.computed(H)
    eps, k, v = engine.denoise(x[..., None].astype(np.float32), full.pos_sub, t_feat, k_ctx, v_ctx,
                               cache.k, cache.v, cache.hor_valid(computed))
    cache.store(full, computed, x, eps, k, v, alpha=0.5, sigma=np.sqrt(0.75))
    assert cache.valid.all() and (cache.age == 0).all()
    k_full, eps_full = cache.k.copy(), cache.eps.copy()

    # Row-dependent subsets of common size S = 3; rows with fewer tokens are padded with H.
    pos = np.full((G, N, 3), H, dtype=np.int64)
    pos[0, :, :3] = [1, 4, 6]
    pos[1, :, :2] = [0, 7]
    plan = StepPlan(pos_sub=pos, order=1)
    computed = plan.computed(H)
    assert computed.sum() == N * 5
    x_sub = np.take_along_axis(np.concatenate([x, np.zeros((G, N, 1))], 2), pos, 2)[..., None].astype(np.float32)
    eps_s, k_s, v_s = engine.denoise(x_sub, pos, t_feat, k_ctx, v_ctx, cache.k, cache.v, cache.hor_valid(computed))
    cache.store(plan, computed, x, eps_s, k_s, v_s, alpha=0.5, sigma=np.sqrt(0.75))
    np.testing.assert_allclose(cache.eps, eps_full, rtol=0, atol=1e-5)
    np.testing.assert_allclose(cache.k, k_full, rtol=0, atol=1e-5)
    assert (cache.age[computed] == 0).all() and (cache.age[~computed] == 1).all()


def test_engine_refuses_a_file_that_is_not_onnx(tiny_artifact, tmp_path):
    manifest = _copy_artifact(tiny_artifact, tmp_path)
    (tmp_path / "tiny.denoise.onnx").write_bytes(b"this is not a protobuf\n" * 10)
    with pytest.raises(ManifestError, match="sha256"):
        OnnxEngine.load(manifest)
    d = json.loads(manifest.read_text())  # a manifest that vouches for the bad file: only ONNX Runtime can tell
    d["graphs"]["denoise"]["sha256"] = sha256_file(tmp_path / "tiny.denoise.onnx")
    manifest.write_text(json.dumps(d))
    with pytest.raises(EngineError, match="not a loadable ONNX model") as err:
        OnnxEngine.load(manifest)
    assert "\n" not in str(err.value)


def test_engine_refuses_graphs_that_do_not_match_the_manifest(tiny_artifact, tmp_path):
    manifest = _copy_artifact(tiny_artifact, tmp_path)
    d = json.loads(manifest.read_text())
    d["model"]["d_model"] = 32  # graphs were exported with 16
    manifest.write_text(json.dumps(d))
    with pytest.raises(EngineError, match="does not match its manifest"):
        OnnxEngine.load(manifest)
    # Graphs swapped (hashes updated, so only the I/O contract can tell).
    d["model"]["d_model"] = 16
    d["graphs"]["encode"], d["graphs"]["denoise"] = d["graphs"]["denoise"], d["graphs"]["encode"]
    manifest.write_text(json.dumps(d))
    with pytest.raises(EngineError, match="does not match its manifest"):
        OnnxEngine.load(manifest)


def test_engine_options_are_checked(tiny_artifact):
    with pytest.raises(EngineError, match="not available"):
        OnnxEngine.load(tiny_artifact, providers=["NoSuchExecutionProvider"])
    with pytest.raises(EngineError, match="threads"):
        OnnxEngine.load(tiny_artifact, threads=0)
    with pytest.raises(ManifestError, match="no manifest"):
        OnnxEngine.load(tiny_artifact.with_name("missing.onnx"))


# -- forecaster --------------------------------------------------------------------------------
def test_forecast_shapes_and_summaries(forecaster, history):
    f = forecaster.predict(history, num_samples=16, steps=6, seed=0)
    G, H = 4, forecaster.horizon
    assert f.samples.shape == (G, 16, H) and f.quantiles.shape == (G, 19, H)
    assert np.isfinite(f.samples).all()
    np.testing.assert_allclose(f.quantiles, np.moveaxis(np.quantile(f.samples, QUANTILE_LEVELS, axis=1), 0, 1))
    np.testing.assert_allclose(f.median, f.quantiles[:, 9])
    np.testing.assert_allclose(f.mean, f.samples.mean(axis=1))
    assert (np.diff(f.quantiles, axis=1) >= 0).all()
    # Scaling comes from each series' last context_length values only (NaN excluded).
    ctx = history[-forecaster.context_length:]
    np.testing.assert_allclose(f.loc, np.nanmean(ctx, axis=0))
    np.testing.assert_allclose(f.scale, np.nanstd(ctx, axis=0))
    assert f.series == [0, 1, 2, 3] and f.timestamps is None
    s = f.stats
    assert (s.encode_calls, s.engine_calls, s.steps, s.full_steps) == (1, 6, 6, 6)
    assert s.tokens_computed == s.full_tokens == G * 16 * H * 6
    assert s.wall_seconds >= s.engine_seconds > 0


def test_forecast_is_deterministic_and_independent_of_the_batch(forecaster, history):
    kw = dict(num_samples=8, steps=5, seed=3)
    together = forecaster.predict(history, **kw)
    again = forecaster.predict(history, **kw)
    np.testing.assert_array_equal(together.samples, again.samples)
    other_seed = forecaster.predict(history, **{**kw, "seed": 4})
    assert np.abs(other_seed.samples - together.samples).max() > 1e-3
    alone = forecaster.predict(history[:, 2], series_ids=[2], **kw)
    np.testing.assert_array_equal(alone.samples[0], together.samples[2])
    reordered = forecaster.predict(history[:, [3, 1, 0, 2]], series_ids=[3, 1, 0, 2], **kw)
    np.testing.assert_array_equal(reordered.samples, together.samples[[3, 1, 0, 2]])
    for batch in (1, 3):
        chunked = forecaster.predict(history, batch_series=batch, **kw)
        np.testing.assert_array_equal(chunked.samples, together.samples)
        assert chunked.stats.encode_calls == -(-4 // batch)


def test_dataframe_input_names_keys_and_timestamps(forecaster, history):
    index = pd.date_range("2024-03-01", periods=len(history), freq="h")
    frame = pd.DataFrame(history, index=index, columns=["a", "b", "c", "d"])
    f = forecaster.predict(frame, num_samples=4, steps=3)
    H = forecaster.horizon
    assert f.series == ["a", "b", "c", "d"]
    expected = pd.date_range(index[-1] + pd.Timedelta(hours=1), periods=H, freq="h")
    np.testing.assert_array_equal(f.timestamps, expected.to_numpy())
    # Column names key the noise streams: the same array with the same ids gives the same forecast.
    same = forecaster.predict(history, num_samples=4, steps=3, series_ids=["a", "b", "c", "d"])
    np.testing.assert_array_equal(same.samples, f.samples)
    table = f.to_frame()
    assert list(table.columns) == ["series", "timestamp", "mean", "median"] + [quantile_column(q) for q in QUANTILE_LEVELS]
    assert len(table) == 4 * H and table["timestamp"].iloc[0] == expected[0]
    np.testing.assert_allclose(table["q05"].to_numpy().reshape(4, H), f.quantiles[:, 0])
    series = forecaster.predict(frame["c"], num_samples=4, steps=3)
    np.testing.assert_array_equal(series.samples[0], f.samples[2])
    assert list(forecaster.predict(history[:, 0], num_samples=2, steps=2).to_frame().columns[:2]) == ["series", "step"]


def test_predict_windows_matches_predict(forecaster, history):
    L = forecaster.context_length
    f = forecaster.predict(history, num_samples=4, steps=3, seed=1)
    w = forecaster.predict_windows(history[-L:].T, num_samples=4, steps=3, seed=1)
    np.testing.assert_array_equal(w.samples, f.samples)


def test_missing_values_are_masked_not_zero_filled(forecaster, history):
    f = forecaster.predict(history, num_samples=4, steps=3)
    filled = history.copy()
    filled[30:33, 1] = 0.0
    g = forecaster.predict(filled, num_samples=4, steps=3)
    assert np.isfinite(f.samples).all()
    np.testing.assert_array_equal(f.samples[0], g.samples[0])
    assert np.abs(f.samples[1] - g.samples[1]).max() > 1e-3


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda h: np.where(np.arange(40)[:, None] == 35, np.inf, h), "infinite value at row 36"),
        (lambda h: np.where(np.arange(40)[:, None] >= 20, np.nan, h), "no observed value"),
        (lambda h: h[:10], "needs at least 16"),
        (lambda h: pd.DataFrame({"x": h[:, 0], "label": ["a"] * 40}), "'label' is not numeric"),
        (lambda h: np.array([["a", "b"]] * 40), "not numeric"),
        (lambda h: h[None], "1-D"),
    ],
)
def test_bad_history_raises_one_line(forecaster, history, make, match):
    with pytest.raises(ForecastError, match=match) as err:
        forecaster.predict(make(history), num_samples=2, steps=2)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(steps=0), r"steps must be an integer in \[1, 1000\]"),
        (dict(solver_order=4), r"solver_order must be an integer in \[1, 3\]"),
        (dict(num_samples=0), "num_samples"),
        (dict(seed=-1), "seed"),
        (dict(batch_series=0), "batch_series"),
    ],
)
def test_bad_settings_name_the_setting(forecaster, history, kwargs, match):
    with pytest.raises(ValueError, match=match):
        forecaster.predict(history, **{"num_samples": 2, "steps": 2, **kwargs})


def test_sampler_config_defaults():
    assert SamplerConfig() == SamplerConfig(inference_steps=20, solver_order=2)


def test_sampler_config_has_an_ordinary_constructor_and_one_merge():
    from dataclasses import replace

    from dil.runtime.sampling.config import sampler_config

    config = SamplerConfig(inference_steps=7)
    assert config.steps == 7 and replace(config, K=2).steps == 7
    with pytest.raises(TypeError):
        SamplerConfig(steps=7)  # one name per setting: no constructor alias
    with pytest.raises(AttributeError):
        config.steps = 3
    merged = sampler_config(config, solver_order=3, K=None)  # None: the option was left unset
    assert (merged.steps, merged.solver_order, merged.K) == (7, 3, SamplerConfig().K)
    assert sampler_config(None) == SamplerConfig() and sampler_config(config) is config
    with pytest.raises(ValueError, match="unknown sampler setting 'steps'"):
        sampler_config(config, steps=3)
    import dil.runtime.sampling.sampler as loop

    assert not hasattr(loop, "SamplerConfig")  # one home: dil.runtime.sampling.config


def test_import_dil_runtime_is_light():
    code = (
        "import sys, dil.runtime; from dil.runtime import Forecaster, OnnxEngine, SamplerConfig;"
        "heavy = [m for m in ('torch', 'pandas', 'onnxruntime', 'matplotlib') if m in sys.modules];"
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
