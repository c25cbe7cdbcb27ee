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
from dil.runtime.support.files import sha256_file
from dil.runtime.outputs.quantiles import QUANTILE_LEVELS, quantile_column
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
    for suffix in (".json", ".encode.onnx", ".denoise.onnx", ".denoise_full.onnx", ".denoise_full_kv.onnx"):
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
    assert SamplerConfig() == SamplerConfig(steps=20, solver_order=2)


def test_sampler_config_has_an_ordinary_constructor_and_one_merge():
    from dataclasses import replace

    from dil.runtime.sampling.config import sampler_config

    config = SamplerConfig(steps=7)
    assert config.steps == 7 and replace(config, K=2).steps == 7
    with pytest.raises(TypeError):
        SamplerConfig(inference_steps=7)  # one name per setting: the old name is gone
    with pytest.raises(AttributeError):
        config.steps = 3
    merged = sampler_config(config, solver_order=3, K=None)  # None: the option was left unset
    assert (merged.steps, merged.solver_order, merged.K) == (7, 3, SamplerConfig().K)
    assert sampler_config(None) == SamplerConfig() and sampler_config(config) is config
    with pytest.raises(ValueError, match="unknown sampler setting 'inference_steps'"):
        sampler_config(config, inference_steps=3)
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


# -- tables with covariates (dil.runtime.inputs.table) -------------------------------------------------------
def test_covariates_are_read_raw_and_follow_the_rows(tmp_path):
    """Text covariates keep every non-empty cell ("None" and "NA" are categories), only an empty cell
    is missing; numeric ones are float64; sorting, de-duplication and reindexing move them with the
    values; a covariate is never a target."""
    from dil.runtime.inputs.table import load_table

    path = tmp_path / "t.csv"
    path.write_text(
        "date,y,temp,holiday,code\n"
        "2024-01-01 03:00,4,1.5,None,\n"       # file row 0 -> table row 3
        "2024-01-01 00:00,1,,NA,a\n"           # row 1 -> table row 0
        "2024-01-01 01:00,2,2.5,Xmas,b\n"      # row 2 -> table row 1
        "2024-01-01 01:00,9,9.5,dup,c\n"       # a repeated timestamp: dropped
        "2024-01-01 04:00,5,4,,\n"             # table row 4 (row 2 is an added missing step)
        "2024-01-01 05:00,,3,None,a\n"         # table row 5
    )
    t = load_table(path, "date", covariates=["temp", "holiday", "code"])
    assert t.names == ["y"] and t.n_steps == 6
    np.testing.assert_array_equal(t.values[:, 0], [1, 2, np.nan, 4, 5, np.nan])
    cov = t.covariates
    assert list(cov.columns) == ["temp", "holiday", "code"] and isinstance(cov.index, pd.RangeIndex)
    assert cov["temp"].dtype == np.float64
    np.testing.assert_array_equal(cov["temp"].to_numpy(), [np.nan, 2.5, np.nan, 1.5, 4.0, 3.0])
    assert cov["holiday"].tolist()[:2] == ["NA", "Xmas"] and cov["holiday"].tolist()[3] == "None"
    assert cov["holiday"].isna().tolist() == [False, False, True, False, True, False]
    assert cov["code"].isna().tolist() == [False, False, True, True, True, False]
    part = t.slice(1, 4)
    assert part.covariates["holiday"].tolist()[0] == "Xmas" and list(part.covariates.index) == [0, 1, 2]
    assert t.select(["y"]).covariates is cov
    assert load_table(path, "date").covariates is None
    # Without dates the file order is kept; a numeric target list never includes a covariate.
    plain = load_table(path, covariates=["temp"])
    assert plain.names == ["y"] and plain.covariates["temp"].tolist()[2:4] == [2.5, 9.5]


def test_parquet_covariates(tmp_path):
    from dil.runtime.inputs.table import load_table

    frame = pd.DataFrame({"y": [1.0, 2.0, 3.0], "holiday": ["None", None, "Xmas"], "rain": [0.5, None, 1.0]})
    frame.to_parquet(tmp_path / "t.parquet")
    cov = load_table(tmp_path / "t.parquet", covariates=["holiday", "rain"]).covariates
    assert cov["holiday"].tolist()[::2] == ["None", "Xmas"] and cov["holiday"].isna().tolist() == [False, True, False]
    np.testing.assert_array_equal(cov["rain"].to_numpy(), [0.5, np.nan, 1.0])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(covariates=["wind"]), "the covariate column 'wind' is missing; columns are date, y, temp"),
        (dict(covariates=["date"]), "covariate 'date' is the date column"),
        (dict(columns=["y", "temp"], covariates=["temp"]), "column 'temp' is a covariate, not a series"),
        (dict(covariates=["gust"]), "covariate 'gust' has an infinite value at data row 2"),
    ],
)
def test_bad_covariate_columns_raise_one_line(tmp_path, kwargs, match):
    from dil.runtime.inputs.table import DataError, load_table

    path = tmp_path / "t.csv"
    path.write_text("date,y,temp,gust\n2024-01-01,1,2,3\n2024-01-02,2,3,inf\n")
    with pytest.raises(DataError, match=match) as err:
        load_table(path, "date", **kwargs)
    assert "\n" not in str(err.value)


# -- a model with time features and covariates (conftest FEATURE_SPEC) ---------------------------------
def _hand_known(times, temp, holiday):
    """Known features by hand: hour / 23 - 0.5, weekday / 6 - 0.5, (temp - 280) / 12 (missing 0),
    holiday one-hot over ("Christmas Day", "None") (missing or unseen: zeros)."""
    rows = []
    for t, x, h in zip(pd.DatetimeIndex(times), temp, holiday):
        rows.append([t.hour / 23 - 0.5, t.weekday() / 6 - 0.5, 0.0 if np.isnan(x) else (x - 280) / 12,
                     float(h == "Christmas Day"), float(h == "None")])
    return np.array(rows)


def test_history_features_hand_worked_example():
    """3 history rows and 2 future rows of a model with L = 3, H = 2 (window_features.history_features)."""
    from dil.runtime.inputs.features import FeatureSpec
    from dil.runtime.inputs.window_features import history_features

    from conftest import FEATURE_SPEC

    spec = FeatureSpec.from_dict(FEATURE_SPEC)
    times = pd.to_datetime(["2024-12-24 22:00", "2024-12-24 23:00", "2024-12-25 00:00"])  # Tue, Tue, Wed
    future = pd.to_datetime(["2024-12-25 01:00", "2024-12-25 02:00"]).to_numpy()
    cov = pd.DataFrame({"temp": [292.0, 268.0, np.nan, 280.0, 286.0],
                        "holiday": ["None", "None", "NA", "Christmas Day", "Christmas Day"],
                        "rain_1h": [1.5, np.nan, 0.5, np.nan, 99.0],
                        "unused": ["x"] * 5})
    f = history_features(spec, 3, 3, 2, times, future, cov)
    tue, wed = 1 / 6 - 0.5, 2 / 6 - 0.5
    np.testing.assert_allclose(f.context_known[0], [[22 / 23 - 0.5, tue, 1.0, 0, 1],
                                                    [0.5, tue, -1.0, 0, 1],
                                                    [-0.5, wed, 0.0, 0, 0]], atol=1e-15)
    np.testing.assert_allclose(f.context_past[0], [[0.5], [0.0], [0.0]], atol=1e-15)
    np.testing.assert_allclose(f.horizon_known[0], [[1 / 23 - 0.5, wed, 0.0, 1, 0],
                                                    [2 / 23 - 0.5, wed, 0.5, 1, 0]], atol=1e-15)


@pytest.fixture(scope="module")
def feature_forecaster(tiny_feature_artifact):
    return Forecaster.load(tiny_feature_artifact, threads=1)


def _feature_inputs(T=24, H=8):
    """A history of 3 hourly series [T] from 2024-12-24 00:00 and its covariates [T + H]."""
    rng = np.random.default_rng(5)
    index = pd.date_range("2024-12-24", periods=T, freq="h")
    history = pd.DataFrame(300 + rng.standard_normal((T, 3)).cumsum(axis=0), index=index, columns=["a", "b", "c"])
    cov = pd.DataFrame({"temp": 275 + 5 * np.sin(np.arange(T + H) / 3),
                        "holiday": ["None"] * 24 + ["Christmas Day"] * (T + H - 24),
                        "rain_1h": rng.uniform(0, 2, T + H)})
    cov.loc[5, "temp"] = np.nan  # a missing context value of a known covariate is allowed
    return history, cov


class _Recording:
    """The real engine, with the inputs of its calls kept (encode's ctx, denoise's x_sub and pos_sub)."""

    def __init__(self, engine):
        self._engine, self.ctx, self.x_sub = engine, [], []

    def __getattr__(self, name):
        return getattr(self._engine, name)

    def encode(self, ctx):
        self.ctx.append(ctx.copy())
        return self._engine.encode(ctx)

    def denoise(self, x_sub, pos_sub, *rest):
        self.x_sub.append((x_sub.copy(), pos_sub.copy()))
        return self._engine.denoise(x_sub, pos_sub, *rest)


def test_forecaster_feeds_the_model_its_features(feature_forecaster):
    """The ctx the engine gets is (value, observed, known, past) of the last L rows, and every
    computed horizon token carries its step's known features (hand-built, see _hand_known)."""
    fc = Forecaster(_Recording(feature_forecaster.engine))
    history, cov = _feature_inputs()
    T, L, H = 24, fc.context_length, fc.horizon
    fc.predict(history, covariates=cov, num_samples=3, steps=3, lattice=False, cache=False)
    times = pd.date_range("2024-12-24", periods=T + H, freq="h")
    known = _hand_known(times, cov["temp"].to_numpy(), cov["holiday"].tolist())
    past = ((cov["rain_1h"].to_numpy() - 0.5) / 2.0)[:, None]
    ctx_vals = history.to_numpy()[-L:]
    z = (ctx_vals - ctx_vals.mean(axis=0)) / ctx_vals.std(axis=0)
    ctx = fc.engine.ctx[0]
    assert ctx.shape == (3, L, 8) and ctx.dtype == np.float32
    np.testing.assert_allclose(ctx[..., 0], z.T, atol=2e-6)
    np.testing.assert_array_equal(ctx[..., 1], 1.0)
    for g in range(3):
        np.testing.assert_allclose(ctx[g, :, 2:7], known[T - L:T], atol=1e-6)
        np.testing.assert_allclose(ctx[g, :, 7:], past[T - L:T], atol=1e-6)
    for x_sub, pos in fc.engine.x_sub:
        assert x_sub.shape[-1] == 6
        padded = np.concatenate([known[T:T + H], np.zeros((1, 5))])  # padding tokens (pos H): zeros
        np.testing.assert_allclose(x_sub[..., 1:], padded[pos], atol=1e-6)


def test_feature_forecasts_are_batch_independent_and_match_predict_windows(feature_forecaster):
    from dil.runtime.inputs.window_features import WindowFeatures

    fc = feature_forecaster
    history, cov = _feature_inputs()
    kw = dict(num_samples=6, steps=4, seed=2, covariates=cov)
    together = fc.predict(history, **kw)
    np.testing.assert_array_equal(fc.predict(history, batch_series=1, **kw).samples, together.samples)
    np.testing.assert_array_equal(fc.predict(history[["c"]], **kw).samples[0], together.samples[2])
    np.testing.assert_array_equal(together.timestamps, pd.date_range("2024-12-25", periods=8, freq="h").to_numpy())
    # predict_windows with the same features, built by hand.
    L, T = fc.context_length, 24
    known = _hand_known(pd.date_range("2024-12-24", periods=32, freq="h"), cov["temp"].to_numpy(),
                        cov["holiday"].tolist())
    past = ((cov["rain_1h"].to_numpy() - 0.5) / 2.0)[:, None]
    feats = WindowFeatures(np.repeat(known[None, T - L:T], 3, 0), np.repeat(past[None, T - L:T], 3, 0),
                           np.repeat(known[None, T:], 3, 0))
    w = fc.predict_windows(history.to_numpy()[-L:].T, num_samples=6, steps=4, seed=2, series_ids=["a", "b", "c"],
                           features=feats)
    np.testing.assert_allclose(w.samples, together.samples, rtol=0, atol=1e-9)
    # The inputs matter: a future known covariate and the dates change the forecast; rows past
    # T + H and the past-only covariate's future rows do not.
    warm = cov.copy()
    warm.loc[T + 3, "temp"] += 30
    assert np.abs(fc.predict(history, **{**kw, "covariates": warm}).samples - together.samples).max() > 1e-3
    later = history.set_axis(history.index + pd.Timedelta(hours=5))
    assert np.abs(fc.predict(later, **kw).samples - together.samples).max() > 1e-3
    longer = pd.concat([cov, cov.iloc[:4]], ignore_index=True)
    longer.loc[T:, "rain_1h"] = np.nan
    np.testing.assert_array_equal(fc.predict(history, **{**kw, "covariates": longer}).samples, together.samples)


def _future_gap(cov):
    cov = cov.copy()
    cov.loc[24 + 2:24 + 4, "temp"] = np.nan
    return cov


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda h, c: (h.to_numpy(), dict(covariates=c)), r"uses time features \(hour_of_day, day_of_week\) but the "
                                                          "history has no dates"),
        (lambda h, c: (h, {}), r"uses covariates \(temp, holiday, rain_1h\): pass covariates="),
        (lambda h, c: (h, dict(covariates=c.drop(columns="holiday"))), "covariates has no column 'holiday'"),
        (lambda h, c: (h, dict(covariates=_future_gap(c))), "covariate 'temp' is empty in future rows 3-5 of 8"),
        (lambda h, c: (h, dict(covariates=c.iloc[:27])),
         r"covariate 'temp' is empty in future rows 4-8 of 8 \(covariates has 3 rows after the history\)"),
        (lambda h, c: (h, dict(covariates=c.iloc[:20])), "covariates has 20 rows, fewer than the 24 history rows"),
        (lambda h, c: (h, dict(covariates=c.astype({"temp": object}).assign(temp=lambda f: f["temp"].where(
            f.index != 3, "warm")))), "covariate 'temp' is text where numbers are expected: data row 4 holds 'warm'"),
        (lambda h, c: (h.set_axis(pd.date_range("2024-01-01", periods=24, freq="D")), dict(covariates=c)),
         "rows are 'D' apart but the model's time features are for rows of 'h'"),
    ],
)
def test_missing_features_raise_one_line_before_any_engine_call(feature_forecaster, make, match):
    history, cov = _feature_inputs()
    data, kw = make(history, cov)
    calls = feature_forecaster.engine.stats.encode_calls
    with pytest.raises(ForecastError, match=match) as err:
        feature_forecaster.predict(data, num_samples=2, steps=2, **kw)
    assert "\n" not in str(err.value)
    assert feature_forecaster.engine.stats.encode_calls == calls


def test_predict_windows_needs_the_features_of_a_feature_model(feature_forecaster, forecaster):
    from dil.runtime.inputs.window_features import WindowFeatures

    ctx = np.random.default_rng(0).standard_normal((2, 16))
    with pytest.raises(ForecastError, match="the model uses 2 time features .* pass features=WindowFeatures"):
        feature_forecaster.predict_windows(ctx, num_samples=2, steps=2)
    bad = WindowFeatures(np.zeros((2, 16, 5)), np.zeros((2, 16, 1)), np.zeros((2, 7, 5)))
    with pytest.raises(ForecastError, match=r"features.horizon_known has shape \(2, 7, 5\), the model needs \[2, 8, 5\]"):
        feature_forecaster.predict_windows(ctx, num_samples=2, steps=2, features=bad)
    # A model without features forecasts as before; given features of width 0 it ignores them.
    empty = WindowFeatures(np.zeros((2, 16, 0)), np.zeros((2, 16, 0)), np.zeros((2, 8, 0)))
    np.testing.assert_array_equal(forecaster.predict_windows(ctx, 2, 2, features=empty).samples,
                                  forecaster.predict_windows(ctx, 2, 2).samples)
