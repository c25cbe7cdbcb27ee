"""benchmarks/peers.py: the bookkeeping of the DeepAR comparison (rows, windows, GluonTS entries),
its page section and errors, and (with the optional gluonts extra) one tiny run end to end."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "peers.py"


@pytest.fixture(scope="module")
def peers():
    spec = importlib.util.spec_from_file_location("peers_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the script is executed
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


@pytest.fixture(scope="module")
def metro():
    from dil.data.datasets import resolve

    return resolve("metro-traffic")


def test_rows_and_windows_are_the_protocols(peers, metro):
    # By hand: 52,551 rows; train ends at round(0.7 * 52551) = 36786, validation at
    # round(0.8 * 52551) = 42041; 24-hour targets tiling [36786, 42041): (42041 - 24 - 36786) // 24 + 1
    # = 218; test origins 42041 + 24k with origin + 24 <= 52551: (52551 - 24 - 42041) // 24 + 1 = 437.
    data = peers.peer_data(metro[1], metro[0], context=168)
    assert data.values.size == 52551
    assert data.train_end == 36786
    np.testing.assert_array_equal(data.val_origins, 36786 + 24 * np.arange(218))
    np.testing.assert_array_equal(data.test_origins, 42041 + 24 * np.arange(437))
    assert data.test_origins[-1] + 24 <= 52551 < data.test_origins[-1] + 48

    train, val, test = peers.peer_entries(data)
    assert [len(e["target"]) for e in train] == [36786]
    assert [len(e["target"]) for e in val] == list(36786 + 24 + 24 * np.arange(218))
    assert [len(e["target"]) for e in test] == list(42041 + 24 * np.arange(437))
    assert str(test[0]["start"]) == "2012-10-02 09:00"
    # DeepAR's history of a window ends where dil's context ends: the 168 hours before the origin.
    w = data.windows
    for i in (0, 200, 436):
        np.testing.assert_array_equal(test[i]["target"][-168:], w.contexts[i, 0].astype(np.float32))


def test_windows_follow_the_models_context_and_time_features(peers, metro):
    # A model of context 336 with calendar features: the same 437 scored windows as dil-eval's (the
    # origins do not depend on the context), contexts the 336 rows before each origin, and features
    # of those rows and the 24 forecast rows. By hand (GluonTS's scaling): hour / 23 - 0.5,
    # weekday (Monday 0) / 6 - 0.5.
    import pandas as pd

    from dil.runtime.inputs.features import FeatureSpec

    features = FeatureSpec(freq="h", time_features=("hour_of_day", "day_of_week"))
    data = peers.peer_data(metro[1], metro[0], context=336, features=features)
    np.testing.assert_array_equal(data.test_origins, 42041 + 24 * np.arange(437))
    w, times = data.windows, pd.DatetimeIndex(metro[1].timestamps)
    assert w.contexts.shape == (437, 1, 336)
    assert w.features.context_known.shape == (437, 336, 2) and w.features.horizon_known.shape == (437, 24, 2)
    _, _, test = peers.peer_entries(data)
    for i in (0, 436):
        o = 42041 + 24 * i
        np.testing.assert_array_equal(w.contexts[i, 0], data.values[o - 336 : o])
        np.testing.assert_array_equal(test[i]["target"][-336:], w.contexts[i, 0].astype(np.float32))
        known = w.features.context_known[i], w.features.horizon_known[i]
        for rows, got in zip((slice(o - 336, o), slice(o, o + 24)), known):
            hand = np.stack([times[rows].hour / 23 - 0.5, times[rows].day_of_week / 6 - 0.5], axis=1)
            np.testing.assert_allclose(got, hand, rtol=0, atol=1e-15)
    assert peers.dil_inputs(336, features) == (
        "the 336 hours before it and the calendar features (hour_of_day, day_of_week) of those and the forecast hours"
    )
    assert peers.dil_inputs(168, FeatureSpec()) == "the 168 hours before it"


def test_dil_side_with_a_feature_model_is_dil_evals(peers, tiny_feature_artifact):
    # The tiny model with time features, known covariates (temp, holiday) and a past-only one
    # (rain_1h), context 16, horizon 8, "trained on" metro-traffic: its side of the comparison
    # (table with the covariate columns, windows of its context and features, forecasts given the
    # window features) scores exactly what dil-eval scores on the same windows.
    from dil.evaluate.engine_eval import evaluate_engine
    from dil.evaluate.harness import EvalOptions, score_point
    from dil.runtime import Forecaster

    fc = Forecaster.load(tiny_feature_artifact, threads=1)
    spec, table, data = peers.peer_inputs(fc, n_windows=4, horizon=fc.horizon)
    assert list(table.covariates.columns) == ["temp", "holiday", "rain_1h"]
    w = data.windows
    assert w.contexts.shape == (4, 1, 16) and w.features.context_past.shape == (4, 16, 1)
    got = peers.dil_scores(fc, data, samples=8)
    ev = evaluate_engine(tiny_feature_artifact, EvalOptions(n_windows=4, samples=8, steps=None, progress=False))
    np.testing.assert_array_equal(ev.windows.origins[ev.windows.valid[:, 0]], data.test_origins)
    model = ev.report["model"]
    assert {k: got[k] for k in model} == model
    assert 0 < model["crps"] < 10 and got["all_s"] > 0 and got["one_ms"] > 0
    assert score_point(w, w.baseline) == ev.report["baselines"]["seasonal_naive"]
    assert peers.protocol(data, fc, tiny_feature_artifact, 8, peers.Training(), table)["dil_inputs"] == (
        "the 16 hours before it, the calendar features (hour_of_day, day_of_week) and the covariates temp, "
        "holiday of those and the forecast hours and the past-only covariate rain_1h of those hours"
    )


def test_window_subset_keeps_first_and_last(peers, metro):
    data = peers.peer_data(metro[1], metro[0], context=168, n_windows=3)
    np.testing.assert_array_equal(data.test_origins, [42041, 42041 + 24 * 218, 42041 + 24 * 436])
    assert data.val_origins.size == 218  # training does not depend on --windows


def test_section_replaced_in_place_or_appended(peers):
    section = f"{peers.MARK_START}\nnew table\n{peers.MARK_END}\n"
    page = f"# Results\n\nintro\n\n{peers.MARK_START}\nold table\n{peers.MARK_END}\n\n## Next\ntext\n"
    assert peers.replace_section(page, section) == (
        f"# Results\n\nintro\n\n{peers.MARK_START}\nnew table\n{peers.MARK_END}\n\n## Next\ntext\n"
    )
    assert peers.replace_section("# Results\n", section) == f"# Results\n\n{section}"
    assert peers.replace_section("", section) == section
    with pytest.raises(ValueError, match="once, in that order"):
        peers.replace_section(f"{peers.MARK_END}\n{peers.MARK_START}\n", section)


def _run_script(args, cwd, block_gluonts=False):
    code = (
        "import runpy, sys\n"
        + ("sys.modules['gluonts'] = None\n" if block_gluonts else "")
        + f"sys.argv = ['peers.py'] + {list(args)!r}\n"
        + f"runpy.run_path({str(SCRIPT)!r}, run_name='__main__')\n"
    )
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_without_the_extra_one_line_names_it(tmp_path):
    proc = _run_script(["--windows", "2", "--no-write"], tmp_path, block_gluonts=True)
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines() == ["error: gluonts is not installed: pip install 'dil[peers]'"]
    assert list(tmp_path.iterdir()) == []


def test_bad_input_fails_before_any_work(tmp_path):
    proc = _run_script(["--models", "3x64,4x99"], tmp_path)
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines() == [
        "error: --models takes a comma list of 3x64, 2x40, 2x40-168, patchtst, got '3x64,4x99'"
    ]
    page = tmp_path / "page.md"
    page.write_text("<!-- peers:end -->\n<!-- peers:start -->\n")
    proc = _run_script(["--markdown", str(page)], tmp_path)
    assert proc.returncode != 0 and "once, in that order" in proc.stderr
    assert page.read_text() == "<!-- peers:end -->\n<!-- peers:start -->\n"


def _independent_scores(y, s):
    """float64 NumPy by the definitions: 19-level weighted quantile loss / sum |y|, MAE of the
    median, coverage of the central 50% interval; missing targets left out."""
    levels = np.round(np.arange(1, 20) * 0.05, 2)
    q = np.quantile(s, levels, axis=1)  # [19, W, H], linear interpolation
    obs = ~np.isnan(y)
    loss = [2 * np.abs((y - qa) * ((y < qa) - a))[obs].sum() for a, qa in zip(levels, q)]
    lo, hi = np.quantile(s, [0.25, 0.75], axis=1)
    return {
        "crps": np.mean(loss) / np.abs(y[obs]).sum(),
        "mae": np.abs(y - np.median(s, axis=1))[obs].mean(),
        "coverage_50": ((y >= lo) & (y <= hi))[obs].mean(),
    }


def test_tiny_deepar_run_is_scored_on_dils_windows(peers, metro):
    pytest.importorskip("gluonts.torch", reason="gluonts is an optional extra (pip install 'dil[peers]')")
    fc = peers.load_dil(threads=1)
    tiny = {"tiny": peers.PeerModel(1, 4, label="tiny DeepAR")}
    result = peers.run_peers(tiny, fc, samples=20, n_windows=2, threads=1, keep_samples=True,
                             training=peers.Training(epochs=1, num_batches_per_epoch=2))
    rows = result["rows"]
    assert list(rows) == ["dil", "tiny", "seasonal_naive"]
    assert result["protocol"]["test_windows"] == 2 and result["protocol"]["validation_windows"] == 218

    y = peers.peer_data(metro[1], metro[0], context=168, n_windows=2).windows.targets[:, 0]  # [2, 24]
    s = result["samples"]["tiny"]
    assert s.shape == (2, 20, 24)
    for key, value in _independent_scores(y, s).items():
        assert rows["tiny"][key] == pytest.approx(value, rel=1e-12)
    assert rows["tiny"]["ratios"]["crps"] == pytest.approx(rows["dil"]["crps"] / rows["tiny"]["crps"])
    assert rows["tiny"]["epochs_run"] == 1 and rows["tiny"]["train_s"] > 0
    assert rows["dil"]["one_ms"] > 0 and rows["tiny"]["all_s"] > 0
    section = peers.markdown(result, "python benchmarks/peers.py")
    assert section.startswith(peers.MARK_START) and section.endswith(peers.MARK_END + "\n")
    assert "| tiny DeepAR |" in section


# Every bundled dataset, by hand from its registry spec (dil.data.registry.DATASETS): rows, series,
# row frequency, split ends (train, validation, test), horizon H, season, test origins
# (test start + H k with o + H <= test end) and validation origins (validation start + H k), the
# time of row 0 as GluonTS sees it (exchange-rate has no dates: GluonTS's own start of it).
DATASET_FACTS = {
    "metro-traffic": (52551, 1, "h", (36786, 42041, 52551), 24, 168, 437, 218, "2012-10-02 09:00"),
    "exchange-rate": (7588, 8, "B", (5464, 6071, 6221), 30, 5, 5, 20, "1990-01-01"),
    "etth1": (17420, 7, "h", (8640, 11520, 14400), 24, 168, 120, 120, "2016-07-01 00:00"),
    "etth2": (17420, 7, "h", (8640, 11520, 14400), 24, 168, 120, 120, "2016-07-01 00:00"),
    "weather": (52704, 21, "10min", (36893, 42163, 52704), 144, 144, 73, 36, "2020-01-01 00:10"),
}


def test_facts_cover_every_bundled_dataset():
    from dil.data.registry import DATASETS

    assert sorted(DATASET_FACTS) == sorted(DATASETS)


@pytest.mark.parametrize("name", ["exchange-rate", "etth1", "weather"])
def test_peer_windows_are_dil_evals_on_every_dataset(peers, name):
    # The peers' windows of a dataset are dil-eval's (protocol_windows for the model's context and
    # the dataset's horizon): same origins, series, contexts, targets, validity and seasonal naive;
    # the scored windows are every (origin, series) pair, origin-major, and each GluonTS test series
    # is its series up to the origin (ending in dil's context), trained on every series' train rows.
    from dil.data.datasets import resolve
    from dil.evaluate.harness import protocol_windows

    rows, n, freq, (train_end, val_end, test_end), h, season, n_origins, n_val, start = DATASET_FACTS[name]
    spec, table = resolve(name)
    assert (spec.freq, spec.horizon, spec.season) == (freq, h, season)
    context = spec.context_length
    data = peers.peer_data(table, spec, context=context)
    ev = protocol_windows(table, spec, context, h)  # dil-eval's windows of a model of that context
    w = data.windows
    assert data.series.shape == (n, rows) and data.horizon == h and data.spec is spec
    assert not np.any(data.series == -9999.0)  # weather's missing-value sentinel is NaN, as in dil-eval
    assert data.train_end == train_end
    np.testing.assert_array_equal(data.val_origins, train_end + h * np.arange(n_val))
    assert data.val_origins[-1] + h <= val_end < data.val_origins[-1] + 2 * h
    np.testing.assert_array_equal(w.origins, val_end + h * np.arange(n_origins))
    assert w.origins[-1] + h <= test_end < w.origins[-1] + 2 * h
    assert w.names == ev.names == list(table.names) and len(w.names) == n
    for field in ("origins", "contexts", "targets", "valid", "baseline"):
        np.testing.assert_array_equal(getattr(w, field), getattr(ev, field), err_msg=field)
    assert w.valid.all()  # no bundled test window is all missing
    np.testing.assert_array_equal(data.test_origins, np.repeat(w.origins, n))
    np.testing.assert_array_equal(data.test_series, np.tile(np.arange(n), n_origins))
    if n > 1:
        with pytest.raises(ValueError, match=f"{n} series"):
            data.values

    train, val, test = peers.peer_entries(data)
    assert [len(e["target"]) for e in train] == [train_end] * n
    assert len(val) == n_val * n and len(test) == n_origins * n
    assert {str(e["start"]) for e in train + val + test} == {start}
    assert {e["start"].freqstr for e in train} == {freq}
    for j in (0, n + 1, len(val) - 1):
        o, c = data.val_origins[j // n], j % n
        np.testing.assert_array_equal(val[j]["target"], data.series[c, : o + h].astype(np.float32))
    for i in (0, n + 1, len(test) - 1):
        o, c, k = data.test_origins[i], data.test_series[i], i // n
        assert test[i]["target"].dtype == np.float32 and len(test[i]["target"]) == o
        assert test[i]["item_id"] == f"{w.names[c]}@rows<{o}"
        np.testing.assert_array_equal(test[i]["target"][-context:], w.contexts[k, c].astype(np.float32))
        np.testing.assert_array_equal(data.series[c, o : o + h], w.targets[k, c])
        # Seasonal naive at the dataset's season: the step a season before (where observed).
        hand = data.series[c, o - season + np.arange(h) % season]
        seen = ~np.isnan(hand)
        np.testing.assert_array_equal(w.baseline[k, c][seen], hand[seen])


def test_window_subset_keeps_every_series_of_each_origin(peers):
    from dil.data.datasets import resolve

    spec, table = resolve("etth1")
    data = peers.peer_data(table, spec, context=168, n_windows=3)
    np.testing.assert_array_equal(data.windows.origins, [11520, 11520 + 24 * 60, 11520 + 24 * 119])
    np.testing.assert_array_equal(data.test_origins, np.repeat(data.windows.origins, 7))
    assert data.val_origins.size == 120  # training does not depend on --windows


def test_peer_context_defaults(peers):
    from types import SimpleNamespace

    from dil.data.registry import DATASETS
    from dil.runtime.inputs.features import FeatureSpec

    dil = SimpleNamespace(context_length=96)
    assert peers.default_context(DATASETS["metro-traffic"], dil) == 168  # every published metro run's
    assert peers.default_context(DATASETS["etth1"], dil) == 96  # the dil model's
    assert peers.default_context(DATASETS["weather"]) == 288  # the dataset's, without a model
    assert peers.dil_inputs(288, FeatureSpec(), "10min") == "the 288 10-minute steps before it"
    assert peers.dil_inputs(120, FeatureSpec(), "B") == "the 120 business days before it"


def test_dil_side_on_a_multi_series_dataset_is_dil_evals(peers, tiny_artifact):
    # The tiny model "trained on" etth1 (context 16, horizon 8): its side of the comparison on etth1
    # (all 7 series, the windows of its context) scores exactly what dil-eval scores on them.
    from dil.evaluate.engine_eval import evaluate_engine
    from dil.evaluate.harness import EvalOptions, score_point
    from dil.runtime import Forecaster

    fc = Forecaster.load(tiny_artifact, threads=1)
    spec, table, data = peers.peer_inputs(fc, n_windows=2, horizon=fc.horizon, dataset="etth1")
    assert spec.name == "etth1" and len(table.names) == 7
    w = data.windows
    assert w.contexts.shape == (2, 7, 16) and data.test_origins.size == 14 and data.horizon == 24
    got = peers.dil_scores(fc, data, samples=8)
    ev = evaluate_engine(tiny_artifact, EvalOptions(n_windows=2, samples=8, steps=None, progress=False),
                         dataset="etth1")
    np.testing.assert_array_equal(ev.windows.origins, w.origins)
    np.testing.assert_array_equal(ev.windows.valid, w.valid)
    model = ev.report["model"]
    assert {k: got[k] for k in model} == model
    assert score_point(w, w.baseline) == ev.report["baselines"]["seasonal_naive"]
    # The protocol's horizon is the dataset's: the tiny model's 8 steps are not etth1's 24.
    with pytest.raises(ValueError, match=r"forecasts 8 steps; the peer protocol of etth1 forecasts 24 \(--horizon 8"):
        peers.load_dil(tiny_artifact, threads=1, dataset="etth1")


def test_horizon_sets_the_protocol_for_peers_and_windows(peers, tiny_artifact):
    # --horizon 8: the tiny model is compared on etth1 at its own 8 steps; the peers' H, the
    # validation origins (8-step targets tiling the validation rows) and the test origins (stride 8)
    # all follow, and the windows are dil-eval's of a dataset whose H is 8.
    from dil.data.windows import split_bounds
    from dil.runtime import Forecaster

    fc = peers.load_dil(tiny_artifact, threads=1, dataset="etth1", horizon=8)
    spec, table, data = peers.peer_inputs(fc, dataset="etth1", protocol_horizon=8)
    assert spec.horizon == data.horizon == 8 and spec.name == "etth1"
    (val_start, val_end), (test_start, test_end) = (split_bounds(spec, len(table.values))[k] for k in ("val", "test"))
    assert data.val_origins[0] == val_start and np.all(np.diff(data.val_origins) == 8)
    assert data.val_origins[-1] + 8 <= val_end < data.val_origins[-1] + 16
    o = data.windows.origins
    assert o[0] == test_start and np.all(np.diff(o) == 8) and o[-1] + 8 <= test_end < o[-1] + 16
    assert data.windows.targets.shape[-1] == 8
    with pytest.raises(ValueError, match="forecasts 8 steps; the peer protocol of etth1 forecasts 96$"):
        peers.load_dil(tiny_artifact, threads=1, dataset="etth1", horizon=96)


def _result(dataset, series, origins, first, last, families=("DeepAR",)):
    """A made-up result of run_peers (what markdown reads)."""
    peer_rows = {f"m{i}": {"label": f"{f} model", "family": f, "crps": 0.5, "mae": 1.0, "coverage_50": 0.5,
                           "coverage_90": 0.9, "train_s": 9.0, "epochs_run": 3, "stopped_early": False,
                           "all_s": 1.0, "one_ms": 2.0, "ratios": {"crps": 0.8, "all_s": 1.0, "one_ms": 1.0}}
                 for i, f in enumerate(families)}
    return {
        "protocol": {"dataset": dataset, "series": series, "test_windows": origins * series, "test_origins": origins,
                     "first_origin": first, "last_origin": last, "horizon": 24, "samples": 100,
                     "train_rows": [0, 8640], "validation_windows": 120 * series, "validation_origins": 120,
                     "training": {"epochs": 30}, "dil_inputs": "the 168 hours before it"},
        "machine": {"cpu": "cpu", "usable_cpus": 2, "threads": 1, "load_average_at_start": [0, 0, 0], "busy": None},
        "versions": {k: "1" for k in ("dil", "gluonts", "lightning", "torch", "onnxruntime", "numpy")},
        "rows": {"dil": {"label": "dil", "crps": 0.4, "mae": 1.0, "coverage_50": 0.5, "coverage_90": 0.9,
                         "train_s": None, "all_s": 1.0, "one_ms": 2.0},
                 **peer_rows, "seasonal_naive": {"label": "seasonal naive (lag 168)", "crps": 0.6, "mae": 2.0}},
    }


def test_sections_are_per_dataset(peers):
    etth1 = peers.markdown(_result("etth1", 7, 120, 11520, 14376, ("DeepAR", "PatchTST")), "python x")
    assert etth1.startswith("<!-- peers-etth1:start -->\n## dil next to DeepAR and PatchTST (etth1)\n")
    assert etth1.endswith("<!-- peers-etth1:end -->\n")
    assert ("all models forecast the same 840 test windows of dil-eval (the 7 series at 120 origins "
            "11520..14376, horizon 24, 100 samples)") in etth1
    assert "learn from rows 0..8639 of the 7 series (one GluonTS series each) with the 840 validation windows" in etth1
    metro = peers.markdown(_result("metro-traffic", 1, 437, 42041, 52505), "python x")
    assert metro.startswith(f"{peers.MARK_START}\n## dil next to DeepAR (metro-traffic)\n")
    assert "both models forecast the same 437 test windows of dil-eval (origins 42041..52505, horizon 24" in metro

    page = peers.replace_section("# Results\n", metro)
    both = peers.replace_section(page, etth1, "etth1")
    assert both == page + "\n" + etth1  # appended after metro's
    again = peers.replace_section(both, etth1.replace("python x", "python y"), "etth1")
    assert again == page + "\n" + etth1.replace("python x", "python y")  # in place; metro's untouched
    new_metro = metro.replace("python x", "python z")
    assert peers.replace_section(again, new_metro) == (
        "# Results\n\n" + new_metro + "\n" + etth1.replace("python x", "python y"))
    with pytest.raises(ValueError, match="peers-weather:start"):
        peers.replace_section("<!-- peers-weather:end -->\n", "", "weather")


def test_dataset_errors_are_one_line_before_any_work(tmp_path):
    cases = {
        ("--dataset", "etth1"): "error: --dataset etth1 needs --engine, a dil artifact to compare "
                                "(the shipped model is metro-traffic's)",
        ("--dataset", "weather", "--models", "3x64,2x40-168", "--engine", "x.json"):
            "error: --models 2x40-168 is for hourly data (its lags are hours of a day); weather has rows of 10min",
        ("--dataset", "traffic"): "error: unknown dataset 'traffic'; choose one of: metro-traffic, exchange-rate, "
                                  "etth1, etth2, weather",
    }
    for args, line in cases.items():
        proc = _run_script(list(args), tmp_path)
        assert proc.returncode != 0
        assert proc.stderr.strip().splitlines() == [line], args
    assert list(tmp_path.iterdir()) == []
