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
