"""The evaluation harness on a tiny synthetic table with NumPy forecasters (seconds)."""

from __future__ import annotations

import numpy as np
import pytest

from dil.data import DatasetSpec, SeriesTable, Splits, split_bounds
from dil.data import test_origins as origins_of
from dil.evaluate import harness as Hn
from dil.evaluate import metrics as M

SEASON, L, H = 24, 48, 12


@pytest.fixture(scope="module")
def synthetic():
    """Two daily-periodic series (400 rows) with noise and a few missing values."""
    rng = np.random.default_rng(0)
    t = np.arange(400)
    base = 10.0 + 3.0 * np.sin(2 * np.pi * t / SEASON)
    values = np.stack([base + rng.normal(0, 0.5, t.size), 2 * base + rng.normal(0, 1.0, t.size)], axis=1)
    values[305, 0] = values[331, 1] = np.nan  # missing targets / context steps
    table = SeriesTable(values=values, names=["a", "b"], source="synthetic")
    spec = DatasetSpec(
        name="synthetic", file="synthetic.csv", date_column=None, columns=None, freq=None,
        season=SEASON, context_length=L, horizon=H, splits=Splits(0.5, 0.2, 0.3), bundled=False,
    )
    return table, spec


def _origin(window_id: str) -> int:
    return int(window_id.rsplit("@", 1)[1])


def oracle(table, noise=0.05, n=50):
    """The true future plus small noise, seeded per window id (batch-independent)."""
    col = {name: i for i, name in enumerate(table.names)}

    def fn(ctx, ids):
        out = np.empty((len(ids), n, H))
        for i, wid in enumerate(ids):
            name, o = wid.rsplit("@", 1)
            truth = np.nan_to_num(table.values[int(o) : int(o) + H, col[name]], nan=10.0)
            rng = np.random.default_rng([int(o), col[name]])
            out[i] = truth + noise * rng.standard_normal((n, H))
        return out

    return fn


def naive_fn(ctx, ids, n=20):
    return np.repeat(M.seasonal_naive(ctx, SEASON, H)[:, None, :], n, axis=1)


def test_gather_hand_example():
    v = np.arange(10.0).reshape(5, 2)  # rows r: (2r, 2r+1)
    g = Hn.gather(v, np.array([1, 4]), 2, 1)
    # origin 1: rows -1 (outside -> NaN), 0, 1; origin 4: rows 2, 3, 4; per column.
    np.testing.assert_array_equal(g[0], [[np.nan, 0, 2], [np.nan, 1, 3]])
    np.testing.assert_array_equal(g[1], [[4, 6, 8], [5, 7, 9]])


def test_oracle_beats_seasonal_naive(synthetic):
    table, spec = synthetic
    r = Hn.evaluate(oracle(table), table, spec, L, H, samples=50, progress=False)
    model, naive = r["model"], r["baselines"]["seasonal_naive"]
    assert model["crps"] < 0.2 * naive["crps"]
    assert model["mae"] < 0.2 * naive["mae"]
    assert model["crps_sum"] < 0.2 * naive["crps_sum"]
    for k in ("crps", "crps_sample", "crps_sum", "mae", "mse", "coverage_50", "coverage_90"):
        assert np.isfinite(model[k]), k
    p = r["protocol"]
    origins = origins_of(spec, 400, L, H)
    assert p["windows"] == origins.size and p["series"] == 2
    assert p["series_windows"] + p["skipped_windows"] == 2 * origins.size
    assert p["season"] == SEASON and p["samples"] == 50 and len(p["quantile_levels"]) == 19
    a, b = split_bounds(spec, 400)["test"]
    assert p["split"]["test_rows"] == [a, b] and origins[0] >= a and origins[-1] + H <= b


def test_seasonal_naive_baseline_against_independent_loop(synthetic):
    table, spec = synthetic
    r = Hn.evaluate(naive_fn, table, spec, L, H, samples=20, progress=False)
    # Independent: |y[o+h] - y[o+h-24]| over the test origins, observed pairs only (no NaN fills
    # are needed here: the two missing values are target/context steps whose lags are observed,
    # except where the lag itself is missing, which the loop handles like seasonal_naive).
    errs, absy = [], []
    for o in origins_of(spec, 400, L, H):
        for c in range(2):
            hist = table.values[o - L : o, c]
            for h in range(H):
                y = table.values[o + h, c]
                lag = hist[L - SEASON + h % SEASON]
                if np.isnan(lag):
                    lag = hist[L - 2 * SEASON + h % SEASON]
                if not np.isnan(y):
                    errs.append(abs(y - lag))
                    absy.append(abs(y))
    naive = r["baselines"]["seasonal_naive"]
    assert naive["mae"] == pytest.approx(np.mean(errs), rel=1e-12)
    assert naive["crps"] == pytest.approx(np.sum(errs) / np.sum(absy), rel=1e-12)
    # A model that IS the seasonal naive forecast ties the baseline exactly.
    for k in ("crps", "crps_sample", "crps_sum", "mae", "mse"):
        assert r["model"][k] == pytest.approx(naive[k], rel=1e-12), k


def test_batch_size_and_window_count_do_not_change_results(synthetic):
    table, spec = synthetic
    fn = oracle(table, noise=1.0)
    # Streamed scoring: every figure, the model's on a baseline's subset included, whatever the batches.
    sub = {"sub": (oracle(table, noise=2.0), 5)}
    r1 = Hn.evaluate(fn, table, spec, L, H, samples=50, batch_size=3, progress=False)
    r2 = Hn.evaluate(fn, table, spec, L, H, samples=50, batch_size=64, progress=False)
    assert r1 == r2
    r1s, r2s = (Hn.evaluate(fn, table, spec, L, H, subset_baselines=sub, samples=50, batch_size=b, progress=False)
                for b in (1, 7))
    assert r1s == r2s and r1s["model"] == r1["model"]
    r3 = Hn.evaluate(fn, table, spec, L, H, n_windows=3, samples=50, progress=False)
    assert r3["protocol"]["windows"] == 3
    # An extra probabilistic baseline is scored like the model on the same windows.
    r4 = Hn.evaluate(fn, table, spec, L, H, samples=50, progress=False, baselines={"same": fn})
    assert r4["baselines"]["same"] == r1["model"]
    assert r4["baselines"]["seasonal_naive"] == r1["baselines"]["seasonal_naive"]


def _direct_scores(w, mask, samples):
    """The model metrics computed at once on a full sample array [O, C, N, H] (metrics.py only)."""
    y, m = w.targets, mask[..., None] & ~np.isnan(w.targets)
    median = M.median_forecast(samples)
    cov50, cov90 = M.coverages(y, samples, (0.5, 0.9), mask=m)
    return Hn.finite_or_none({
        "crps": M.crps_quantile(y, samples, mask=m), "crps_sample": M.crps_sample(y, samples, mask=m),
        "crps_sum": M.crps_sum(y, samples, mask=m), "mae": M.mae(y, median, mask=m), "mse": M.mse(y, median, mask=m),
        "coverage_50": cov50, "coverage_90": cov90,
    })


def _full_samples(w, mask, fn, n):
    """float [O, C, n, H]: fn's samples of the windows where mask is True (NaN elsewhere), in one call."""
    ids = [f"{w.names[c]}@{int(w.origins[o])}" for o, c in np.argwhere(mask)]
    out = np.full(mask.shape + (n, H), np.nan)
    out[mask] = fn(w.contexts[mask], ids)
    return out


def test_streamed_report_equals_the_metrics_on_all_samples(synthetic):
    """The harness keeps no window's samples, only per-step summaries: its figures are, bit for bit,
    those of dil.evaluate.metrics on every window's samples at once."""
    table, spec = synthetic
    truth_plus_noise, sub = oracle(table, noise=2.0), oracle(table, noise=3.0)

    def model(ctx, ids):  # biased, so that coverage is neither 0 nor 1
        return truth_plus_noise(ctx, ids) + 2.0
    opts = Hn.EvalOptions(samples=50, batch_size=4, progress=False)
    ev = Hn.run_evaluation(model, table, spec, L, H, opts, subset_baselines={"sub": (sub, 5)})
    w = ev.windows
    s = _full_samples(w, w.valid, model, 50)
    assert ev.report["model"] == _direct_scores(w, w.valid, s)
    assert 0 < ev.report["model"]["coverage_50"] < ev.report["model"]["coverage_90"] < 1
    assert ev.report["calibration"]["observed"] == M.coverages(w.targets, s, Hn.CALIBRATION_WIDTHS, mask=w.target_mask)
    mask = Hn.subset(w.valid, 5)
    got = ev.report["baselines"]["sub"]
    assert got["same_windows"]["model"] == _direct_scores(w, mask, s)
    assert {k: got[k] for k in _direct_scores(w, mask, s)} == _direct_scores(w, mask, _full_samples(w, mask, sub, 50))
    # The fan charts' bands are the samples' quantiles.
    o, c = np.argwhere(w.valid)[-1]
    np.testing.assert_array_equal(w.forecast.quantiles_at([0.05, 0.5, 0.95])[o, c],
                                  np.quantile(s[o, c], [0.05, 0.5, 0.95], axis=0))


def test_memory_does_not_grow_with_windows_times_samples():
    """Defect 6: 1000 windows x 400 samples are 38 MB of samples; the harness holds one batch of
    them and per-window summaries (quantiles, median, CRPS per step), well under half of that."""
    import tracemalloc

    rng = np.random.default_rng(1)
    c, n = 20, 400
    values = 10.0 + rng.standard_normal((2000, c))
    table = SeriesTable(values=values, names=[f"s{i}" for i in range(c)], source="wide")
    spec = DatasetSpec(name="wide", file="wide.csv", date_column=None, columns=None, freq=None, season=SEASON,
                       context_length=L, horizon=H, splits=Splits(0.5, 0.2, 0.3), bundled=False)

    def fn(ctx, ids):
        return ctx[:, -1:, None] + rng.standard_normal((len(ids), n, H))

    tracemalloc.start()
    try:
        report = Hn.evaluate(fn, table, spec, L, H, samples=n, batch_size=10, progress=False)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    full = report["protocol"]["series_windows"] * n * H * 8
    assert report["protocol"]["series_windows"] == 1000 and full > 38e6
    assert peak < 0.4 * full, f"peak {peak / 1e6:.1f} MB for {full / 1e6:.1f} MB of samples"


def test_all_missing_context_windows_are_skipped(synthetic):
    table, spec = synthetic
    origins = origins_of(spec, 400, L, H)
    values = table.values.copy()
    values[origins[1] - L : origins[1], 1] = np.nan  # series b, second origin: nothing to condition on
    t2 = SeriesTable(values=values, names=table.names, source="synthetic")
    seen = []

    def fn(ctx, ids):
        assert not np.all(np.isnan(ctx), axis=-1).any()
        seen.extend(ids)
        return naive_fn(ctx, ids)

    ev = Hn.run_evaluation(fn, t2, spec, L, H, Hn.EvalOptions(samples=20, progress=False))
    # Skipped: b at origin 1 (all-missing context) and b at origin 0, whose whole target
    # (the last H rows of that context, stride H < L) is missing: nothing to score.
    assert ev.report["protocol"]["skipped_windows"] == 2
    assert len(seen) == 2 * origins.size - 2
    assert f"b@{origins[0]}" not in seen and f"b@{origins[1]}" not in seen and f"a@{origins[1]}" in seen
    assert not ev.windows.valid[:2, 1].any() and np.isnan(ev.windows.forecast.quantiles[:, :2, 1]).all()
    assert np.isfinite(ev.report["model"]["crps_sum"])


def test_bad_forecaster_output_and_season_errors(synthetic):
    table, spec = synthetic
    with pytest.raises(Hn.EvaluationError, match="shape"):
        Hn.evaluate(lambda c, i: np.zeros((len(i), 5, H)), table, spec, L, H, samples=20, progress=False)
    with pytest.raises(Hn.EvaluationError, match="non-finite"):
        Hn.evaluate(lambda c, i: np.full((len(i), 20, H), np.nan), table, spec, L, H, samples=20, progress=False)
    from dataclasses import replace

    with pytest.raises(Hn.EvaluationError, match="--season"):
        Hn.resolve_season(replace(spec, season=1))
    assert Hn.resolve_season(replace(spec, season=1), season=7) == 7


def test_report_table_and_plots(synthetic, tmp_path):
    pytest.importorskip("matplotlib")
    from dil.evaluate.cli.eval import format_report
    from dil.evaluate.plots import calibration_plot, fan_charts

    table, spec = synthetic
    ev = Hn.run_evaluation(oracle(table, noise=0.5), table, spec, L, H, Hn.EvalOptions(samples=50, progress=False))
    text = format_report(ev.report)
    naive = ev.report["baselines"]["seasonal_naive"]
    ratio = ev.report["model"]["crps"] / naive["crps"]
    assert f"{ratio:.4f}" in text.splitlines()[2] and "synthetic" in text
    cal = ev.report["calibration"]
    assert cal["observed"][4] == ev.report["model"]["coverage_50"]
    assert cal["observed"][8] == ev.report["model"]["coverage_90"]
    for path in (fan_charts(ev.windows, tmp_path, count=3), calibration_plot(cal, tmp_path)):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["calibration.png", "fan_charts.png"]


# --- the real runtime: the tiny exported artifact (trained "on etth1", context 16, horizon 8) ---


def _cli(args):
    from click.testing import CliRunner

    from dil.evaluate.cli.eval import main

    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.mark.slow
def test_dil_eval_cli_end_to_end(tiny_artifact, tmp_path):
    import json

    from dil.data import load_dataset
    from dil.runtime import Forecaster

    out, plots = tmp_path / "eval.json", tmp_path / "plots"
    args = ["--engine", tiny_artifact, "--windows", 2, "--samples", 8, "--steps", 4, "--seed", 3]
    res = _cli(args + ["--json", out, "--plots", plots, "--batch-size", 5])
    assert res.exit_code == 0, res.output
    assert "seasonal naive" in res.output
    report = json.loads(out.read_text())
    p = report["protocol"]
    assert (p["dataset"], p["context"], p["horizon"], p["windows"], p["samples"], p["steps"]) == ("etth1", 16, 8, 2, 8, 4)
    assert p["series"] == 7 and p["series_windows"] == 14
    assert sorted(f.name for f in plots.iterdir()) == ["calibration.png", "fan_charts.png"]

    # Independently: the same windows through Forecaster.predict in one batch give the same CRPS.
    table = load_dataset("etth1")
    fc = Forecaster.load(tiny_artifact)
    origins = origins_of("etth1", table.n_steps, 16, 8, 2)
    ctx = np.concatenate([table.values[o - 16 : o].T for o in origins])
    tgt = np.concatenate([table.values[o : o + 8].T for o in origins])
    ids = [f"{n}@{o}" for o in origins for n in table.names]
    s = fc.predict_windows(ctx, num_samples=8, steps=4, seed=3, series_ids=ids).samples
    assert report["model"]["crps"] == pytest.approx(M.crps_quantile(tgt, s), rel=1e-9)
    assert report["model"]["mae"] == pytest.approx(M.mae(tgt, np.median(s, axis=1)), rel=1e-9)

    # Batch composition does not change a window's forecast; no output requested -> nothing written.
    res2 = _cli(args + ["--batch-size", 64])
    assert res2.exit_code == 0, res2.output
    assert res2.stdout.splitlines()[:9] == res.stdout.splitlines()[:9]  # stderr: progress lines


@pytest.mark.parametrize("spacing", [None, "time"], ids=["default", "time"])
def test_dil_eval_plain_sampler_switch(tiny_artifact, tmp_path, spacing):
    """--no-lattice --no-cache scores the plain DPM-Solver++ sampler: every token computed, and
    the same CRPS as Forecaster.predict_windows with lattice=False, cache=False (and the same step
    spacing, recorded in the protocol: logsnr by default)."""
    import json

    from dil.data import load_dataset
    from dil.runtime import Forecaster

    out = tmp_path / "eval.json"
    res = _cli(["--engine", tiny_artifact, "--windows", 2, "--samples", 8, "--steps", 5, "--no-lattice",
                "--no-cache", "--json", out] + ([] if spacing is None else ["--spacing", spacing]))
    assert res.exit_code == 0, res.output
    report = json.loads(out.read_text())
    assert report["protocol"]["sampler"] == {"lattice": False, "cache": False, "spacing": spacing or "logsnr"}
    assert f"5 steps ({spacing or 'logsnr'} spacing)" in res.stdout.splitlines()[0]
    assert report["protocol"]["token_fraction"] == 1.0

    table = load_dataset("etth1")
    origins = origins_of("etth1", table.n_steps, 16, 8, 2)
    ctx = np.concatenate([table.values[o - 16 : o].T for o in origins])
    tgt = np.concatenate([table.values[o : o + 8].T for o in origins])
    ids = [f"{n}@{o}" for o in origins for n in table.names]
    s = Forecaster.load(tiny_artifact).predict_windows(ctx, num_samples=8, steps=5, seed=0, series_ids=ids,
                                                       lattice=False, cache=False,
                                                       **({} if spacing is None else {"spacing": spacing})).samples
    assert report["model"]["crps"] == pytest.approx(M.crps_quantile(tgt, s), rel=1e-9)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--dataset", "nope"], "unknown dataset"),
        (["--dataset", "etth1", "--data", "x.csv"], "not both"),
        (["--json", "/dev/null/out.json"], "/dev/null is not a folder"),  # a missing folder is created
        (["--data", "no-such-file.csv"], "no-such-file.csv"),
        (["--spacing", "uniform"], "spacing must be one of logsnr, time, got 'uniform'"),
    ],
)
def test_dil_eval_cli_bad_input(tiny_artifact, tmp_path, monkeypatch, extra, message):
    monkeypatch.chdir(tmp_path)
    res = _cli(["--engine", tiny_artifact, "--windows", 1, "--samples", 2, "--steps", 2] + extra)
    assert res.exit_code != 0
    assert message in res.output and "Traceback" not in res.output
    assert len(res.output.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_dil_eval_cli_missing_engine(tmp_path):
    res = _cli(["--engine", tmp_path / "none.onnx"])
    assert res.exit_code != 0 and res.output.startswith("Error:") and "none.json" in res.output
    assert len(res.output.strip().splitlines()) == 1


def test_dil_eval_cli_on_a_user_file(tiny_artifact, tmp_path):
    import json

    rng = np.random.default_rng(0)
    t = np.arange(200)
    csv = tmp_path / "mine.csv"
    lines = ["x,y"] + [f"{10 + np.sin(i / 4):.4f},{5 + rng.normal():.4f}" for i in t]
    csv.write_text("\n".join(lines) + "\n")
    base = ["--engine", tiny_artifact, "--data", csv, "--samples", 4, "--steps", 2]
    # No timestamps, so no frequency to take a season from: the user must give it.
    res = _cli(base)
    assert res.exit_code != 0 and "--season" in res.output and len(res.output.strip().splitlines()) == 1
    out = tmp_path / "r.json"
    res = _cli(base + ["--season", 12, "--columns", "y", "--json", out])
    assert res.exit_code == 0, res.output
    p = json.loads(out.read_text())["protocol"]
    # 70/10/20 split of 200 rows: test rows 160..199, stride = horizon 8 -> origins 160..192.
    assert (p["dataset"], p["series"], p["season"], p["windows"]) == ("mine.csv", 1, 12, 5)
    assert p["split"]["test_rows"] == [160, 200] and p["split"]["first_origin"] == 160


def test_subset_is_evenly_spread_over_valid_windows():
    valid = np.array([[True, False], [True, True], [False, True], [True, True]])
    # valid pairs in order: (0,0) (1,0) (1,1) (2,1) (3,0) (3,1); 3 of 6 -> indices 0, 2 (2.5 rounds to 2), 5
    np.testing.assert_array_equal(Hn.subset(valid, 3), [[1, 0], [0, 1], [0, 0], [0, 1]])
    np.testing.assert_array_equal(Hn.subset(valid, 99), valid)


@pytest.mark.slow
def test_dil_eval_ddpm_baseline_on_the_same_windows(tiny_artifact, tiny_checkpoint, tmp_path):
    import json

    from dil.data import load_dataset
    from dil.runtime import Forecaster
    from dil.evaluate.reference.ancestral import ancestral_forecast
    from dil.train.checkpoint import load_checkpoint

    out = tmp_path / "eval.json"
    args = ["--engine", tiny_artifact, "--windows", 2, "--samples", 4, "--steps", 2, "--ddpm-windows", 2,
            "--checkpoint", tiny_checkpoint, "--json", out]
    res = _cli(args)
    assert res.exit_code == 0, res.output
    assert "reference-ddpm1000 on 2 of the windows" in res.output
    ref = json.loads(out.read_text())["baselines"]["reference-ddpm1000"]
    assert ref["series_windows"] == 2 and ref["checkpoint"] == "tiny" and "1000 steps" in ref["sampler"]

    # Independently: the two windows (first and last scored window, origin-major), both samplers.
    table = load_dataset("etth1")
    origins = origins_of("etth1", table.n_steps, 16, 8, 2)
    pairs = [(origins[0], 0), (origins[-1], len(table.names) - 1)]
    ids = [f"{table.names[c]}@{o}" for o, c in pairs]
    assert ref["window_ids"] == ids
    ctx = np.stack([table.values[o - 16 : o, c] for o, c in pairs])
    tgt = np.stack([table.values[o : o + 8, c] for o, c in pairs])
    model = Forecaster.load(tiny_artifact).predict_windows(ctx, num_samples=4, steps=2, seed=0, series_ids=ids)
    assert ref["same_windows"]["model"]["crps"] == pytest.approx(M.crps_quantile(tgt, model.samples), rel=1e-9)
    assert ref["same_windows"]["seasonal_naive"]["mae"] is not None
    ck = load_checkpoint(tiny_checkpoint)
    ddpm = ancestral_forecast(ck.model, ck.schedule, ctx, 4, seed=0, series_ids=ids)
    assert ref["crps"] == pytest.approx(M.crps_quantile(tgt, ddpm.samples), rel=1e-6)


def test_dil_eval_ddpm_checkpoint_errors(tiny_artifact, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    base = ["--engine", tiny_artifact, "--windows", 1, "--samples", 2, "--steps", 1, "--checkpoint", tmp_path]
    res = _cli(base + ["--ddpm-windows", 1])  # not a run folder: one line, before any forecast
    assert res.exit_code != 0 and "not a training run folder" in res.output
    assert len(res.output.strip().splitlines()) == 1
    res = _cli(base)  # a checkpoint without --ddpm-windows would be silently unused
    assert res.exit_code != 0 and "--ddpm-windows" in res.output and list(tmp_path.iterdir()) == []


# --- time features and covariates: each window gets its table rows' features ---------------------


def _feature_table():
    """synthetic-like hourly table of 2 series with a known covariate temp and a past-only rain."""
    from dil.runtime.inputs.table import SeriesTable as Table

    rng = np.random.default_rng(1)
    T = 400
    times = np.array(np.datetime64("2024-01-01T00:00", "ns") + np.arange(T) * np.timedelta64(1, "h"))
    t = np.arange(T)
    values = np.stack([10 + 3 * np.sin(2 * np.pi * t / SEASON), 20 + rng.normal(0, 1, T)], axis=1)
    import pandas as pd

    cov = pd.DataFrame({"temp": 280 + 10 * np.cos(t / 50), "rain": rng.uniform(0, 3, T)})
    cov.loc[350, "temp"] = np.nan  # a missing known value inside a test horizon: encoded 0
    table = Table(values=values, names=["a", "b"], timestamps=times, freq="h", source="feat", covariates=cov)
    spec = DatasetSpec(name="feat", file="feat.csv", date_column="date", columns=None, freq="h", season=SEASON,
                       context_length=L, horizon=H, splits=Splits(0.5, 0.2, 0.3), bundled=False)
    return table, spec


def test_windows_get_the_features_of_their_table_rows():
    """forecast_fn's third argument holds, for window "<series>@o", context rows [o - L, o) and horizon
    rows [o, o + H) of the table's features (hand-computed); forecasters without features keep
    their two-argument form when the evaluation has none."""
    from dil.runtime.inputs.features import Covariate, FeatureSpec

    table, spec = _feature_table()
    fs = FeatureSpec(freq="h", time_features=("hour_of_day",), covariates=(
        Covariate("temp", "numeric", True, 280.0, 10.0), Covariate("rain", "numeric", False, 1.0, 2.0)))
    hours = (np.arange(400) % 24) / 23 - 0.5
    temp = np.nan_to_num((table.covariates["temp"].to_numpy() - 280) / 10)
    rain = (table.covariates["rain"].to_numpy() - 1) / 2
    seen = []

    def fn(ctx, ids, features):
        for i, wid in enumerate(ids):
            o = _origin(wid)
            np.testing.assert_allclose(features.context_known[i], np.stack([hours, temp], 1)[o - L:o], atol=1e-12)
            np.testing.assert_allclose(features.context_past[i, :, 0], rain[o - L:o], atol=1e-12)
            np.testing.assert_allclose(features.horizon_known[i], np.stack([hours, temp], 1)[o:o + H], atol=1e-12)
            seen.append(wid)
        return naive_fn(ctx, ids)

    report = Hn.evaluate(fn, table, spec, L, H, features=fs, samples=20, batch_size=7, progress=False)
    assert len(seen) == report["protocol"]["series_windows"] > 0
    plain = Hn.evaluate(naive_fn, table, spec, L, H, samples=20, progress=False)  # no features: two arguments
    assert plain["model"] == report["model"]
    with pytest.raises(ValueError, match="has no dates"):
        Hn.evaluate(fn, SeriesTable(values=table.values, names=["a", "b"], covariates=table.covariates), spec, L, H,
                    features=fs, samples=20, progress=False)


def test_dil_eval_feature_model_equals_predict_on_each_history(tiny_feature_artifact, tmp_path):
    """dil-eval of the feature model on metro-traffic (its covariates read from the table) scores
    the forecasts Forecaster.predict makes from each window's history and the covariate rows up to
    the end of its horizon (a second, independent path to the same features)."""
    import json

    from dil.data import load_dataset
    from dil.runtime import Forecaster

    out = tmp_path / "eval.json"
    res = _cli(["--engine", tiny_feature_artifact, "--windows", 2, "--samples", 4, "--steps", 3, "--json", out])
    assert res.exit_code == 0, res.output
    report = json.loads(out.read_text())
    p = report["protocol"]
    assert p["dataset"] == "metro-traffic" and p["series_windows"] == 2
    assert p["inputs"] == ("2 time features (hour_of_day, day_of_week), known covariates temp, holiday, "
                           "past covariate rain_1h") and "model inputs: 2 time features" in res.output

    import pandas as pd

    table = load_dataset("metro-traffic", covariates=["temp", "holiday", "rain_1h"])
    fc = Forecaster.load(tiny_feature_artifact, threads=1)
    samples, targets = [], []
    for o in origins_of("metro-traffic", table.n_steps, 16, 8, 2):
        history = pd.DataFrame(table.values[:o], columns=table.names, index=pd.DatetimeIndex(table.timestamps[:o]))
        f = fc.predict(history, num_samples=4, steps=3, series_ids=[f"traffic_volume@{o}"],
                       covariates=table.covariates.iloc[: o + 8])
        samples.append(f.samples[0])
        targets.append(table.values[o:o + 8, 0])
    assert report["model"]["crps"] == pytest.approx(M.crps_quantile(np.array(targets), np.array(samples)), rel=1e-9)


def test_torch_baseline_gets_the_same_features(tiny_feature_artifact):
    """torch-full (the runtime's plain solver in PyTorch) with the windows' features agrees with
    the runtime's plain sampler on the same windows: the features reach the torch module too."""
    pytest.importorskip("torch")
    from dil.data.datasets import resolve
    from dil.evaluate.engine_eval import forecaster_fn
    from dil.evaluate.torch_baselines import load_reference, torch_full_forecast_fn
    from dil.runtime import Forecaster

    fc = Forecaster.load(tiny_feature_artifact, threads=1)
    spec, table = resolve("metro-traffic", covariates=["temp", "holiday", "rain_1h"])
    ref = load_reference(tiny_feature_artifact)
    ev = Hn.run_evaluation(forecaster_fn(fc, 4, 3, 0, lattice=False, cache=False), table, spec, 16, 8,
                           Hn.EvalOptions(n_windows=2, samples=4, steps=3, progress=False),
                           baselines={"torch-full": torch_full_forecast_fn(ref, 4, 3, 0)}, features=fc.features)
    model, torch_full = ev.report["model"], ev.report["baselines"]["torch-full"]
    assert torch_full["crps"] == pytest.approx(model["crps"], rel=1e-4)
    assert torch_full["mae"] == pytest.approx(model["mae"], rel=1e-4)


@pytest.mark.parametrize(
    "columns, extra, message",
    [
        (["date", "traffic_volume", "temp", "rain_1h"], ["--date-column", "date"],
         "mine.csv: the covariate column 'holiday' is missing"),
        (["traffic_volume", "temp", "holiday", "rain_1h"], [],
         "pass --date-column (it was trained with 'date_time'; mine.csv has no such column)"),
    ],
)
def test_dil_eval_feature_model_bad_table(tiny_feature_artifact, tmp_path, monkeypatch, columns, extra, message):
    import pandas as pd

    monkeypatch.chdir(tmp_path)
    t = np.arange(200)
    frame = pd.DataFrame({"date": pd.date_range("2024-01-01", periods=200, freq="h").strftime("%Y-%m-%d %H:%M"),
                          "traffic_volume": 100 + 10 * np.sin(t / 4), "temp": 280.0, "holiday": "None", "rain_1h": 0.0})
    frame[columns].to_csv(tmp_path / "mine.csv", index=False)
    res = _cli(["--engine", tiny_feature_artifact, "--data", "mine.csv", "--season", 24, "--samples", 2, "--steps", 2,
                "--json", "out.json", *extra])
    assert res.exit_code != 0 and message in res.output and "Traceback" not in res.output
    assert len(res.output.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.csv"]


def test_dil_bench_feeds_the_feature_model_its_windows_features(tiny_feature_artifact):
    """dil-bench's CRPS windows of the feature model (in-process runtime-full and torch-full) score
    what Forecaster.predict forecasts from each window's history and covariate rows."""
    pytest.importorskip("torch")
    import pandas as pd

    from dil.data import load_dataset
    from dil.evaluate.bench import BenchConfig, run_bench
    from dil.runtime import Forecaster

    cfg = BenchConfig(engine=tiny_feature_artifact, steps=(2,), large_steps=(2,), series=(1,), samples=4, repeats=1,
                      windows=2, threads=1, names=("runtime-full", "torch-full"), isolate=False)
    rep = run_bench(cfg, progress=False)
    runs = {r["name"]: r for r in rep["runs"]}
    ids = rep["protocol"]["crps_window_ids"]
    table = load_dataset("metro-traffic", covariates=["temp", "holiday", "rain_1h"])
    fc = Forecaster.load(tiny_feature_artifact, threads=1)
    samples, targets = [], []
    for wid in ids:
        o = int(wid.rsplit("@", 1)[1])
        history = pd.DataFrame(table.values[:o], columns=table.names, index=pd.DatetimeIndex(table.timestamps[:o]))
        samples.append(fc.predict(history, num_samples=4, steps=2, series_ids=[wid], lattice=False, cache=False,
                                  covariates=table.covariates.iloc[: o + 8]).samples[0])
        targets.append(table.values[o:o + 8, 0])
    expected = M.crps_quantile(np.array(targets), np.array(samples))
    assert runs["runtime-full"]["crps"] == pytest.approx(expected, rel=1e-9)
    assert runs["torch-full"]["crps"] == pytest.approx(expected, rel=1e-4)
