"""DilPredictor (dil.runtime.gluonts_predictor): GluonTS's backtest_metrics / Evaluator score dil's
forecasts and get dil-eval's CRPS on the same windows.

The tests that need gluonts skip where it is not installed (it needs pandas < 3, so it lives in its
own environment: pip install 'pandas<3' 'gluonts>=0.17,<0.18', then dil with --no-deps). The
import-boundary tests run everywhere.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from dil.runtime import QUANTILE_LEVELS, Forecaster

GLUONTS_SKIP = "gluonts is not installed (pip install 'dil[gluonts]'; it needs pandas < 3)"
WINDOWS = 8
# 21 samples, not 20: GluonTS's SampleForecast.quantile(a) takes the order statistic
# sorted[round((N - 1) a)], dil's quantiles (dil.runtime.quantiles.sample_quantiles, numpy
# "linear") interpolate between sorted[floor((N - 1) a)] and the next one. With N - 1 = 20 every
# level a = 0.05 k of the grid falls on an order statistic ((N - 1) a = k up to one rounding of
# the float product, which weighs the next order statistic by ~1e-16), so both give the same
# quantiles and the two CRPS figures differ only by the order of the float additions.
# test_twenty_samples_differ_by_the_quantile_rule_only shows the N = 20 case.
SAMPLES = 21


@pytest.fixture(scope="module")
def gluonts():
    return pytest.importorskip("gluonts", reason=GLUONTS_SKIP)


@pytest.fixture(scope="module")
def dil_eval(gluonts):
    """dil-eval on the shipped model: evaluate_engine with WINDOWS evenly spaced test windows and
    SAMPLES samples, the samples of every window kept as dil-eval drew them (forecaster_fn wrapped).
    Returns (Evaluation, {window id: samples float64 [N, H]}, spec, table)."""
    from dil.evaluate import engine_eval
    from dil.evaluate.harness import EvalOptions

    drawn = {}
    real = engine_eval.forecaster_fn

    def recording(*args, **kwargs):
        fn = real(*args, **kwargs)

        def record(contexts, ids, *features):
            samples = fn(contexts, ids, *features)
            drawn.update(zip(ids, np.asarray(samples)))
            return samples

        return record

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(engine_eval, "forecaster_fn", recording)
        ev = engine_eval.evaluate_engine(None, EvalOptions(n_windows=WINDOWS, samples=SAMPLES, progress=False))
    spec, table = engine_eval.engine_data(None, Forecaster.load().manifest)
    return ev, drawn, spec, table


@pytest.fixture(scope="module")
def test_data(gluonts, dil_eval):
    """A GluonTS ListDataset of dil-eval's scored windows: each entry the L context rows and the H
    target rows of one (series, origin) of the bundled table, its item_id dil-eval's window id (so
    DilPredictor keys its noise as dil-eval did) and its start the Period of its first row."""
    import pandas as pd
    from gluonts.dataset.common import ListDataset

    from dil.evaluate.harness import window_ids

    ev, _, spec, table = dil_eval
    w = ev.windows
    L, H = w.contexts.shape[-1], w.targets.shape[-1]
    ids = window_ids(w.names, w.origins)
    entries = []
    for o, c in np.argwhere(w.valid):
        row = int(w.origins[o])
        target = np.asarray(table.values[row - L : row + H, c], dtype=np.float64)
        # The table's rows are dil-eval's windows (gather of the same rows).
        np.testing.assert_array_equal(target, np.concatenate([w.contexts[o, c], w.targets[o, c]]))
        entries.append({"target": target, "start": pd.Period(table.timestamps[row - L], freq=spec.freq),
                        "item_id": ids[o][c]})
    assert len(entries) == WINDOWS
    return ListDataset(entries, freq=spec.freq)


@pytest.fixture(scope="module")
def predictor(gluonts):
    from dil.runtime.gluonts_predictor import DilPredictor

    # batch_size 3: the 8 windows cross Forecaster calls unlike dil-eval's batches of 4, so the
    # sample check below also shows that a forecast does not depend on its batch.
    return DilPredictor(num_samples=SAMPLES, seed=0, batch_size=3)


def test_gluonts_evaluator_crps_equals_dil_eval(gluonts, dil_eval, test_data, predictor):
    """backtest_metrics' mean_wQuantileLoss over the 19 levels 0.05..0.95 == dil-eval's CRPS."""
    from gluonts.evaluation import Evaluator, backtest_metrics

    ev = dil_eval[0]
    evaluator = Evaluator(quantiles=QUANTILE_LEVELS, num_workers=0)  # in process: a small, shared machine
    agg, per_item = backtest_metrics(test_data, predictor, evaluator=evaluator, num_samples=SAMPLES)
    ours, theirs = ev.report["model"]["crps"], agg["mean_wQuantileLoss"]
    print(f"\nCRPS over {WINDOWS} windows, {SAMPLES} samples: GluonTS Evaluator {theirs!r}, dil-eval {ours!r}, "
          f"difference {theirs - ours:.3e}")
    assert len(per_item) == WINDOWS
    # Both are sum over levels and steps of 2|(y - q_a)(1{y <= q_a} - a)| / sum |y|, averaged over
    # the levels, on the same quantiles (see SAMPLES); GluonTS sums per window then over windows,
    # dil over everything at once, so only the last bits of the float sums may differ.
    assert theirs == pytest.approx(ours, rel=1e-12, abs=0)
    # The point forecast too: GluonTS's abs_error (|y - median|, summed over the observed steps;
    # the median of 21 samples is the 11th in both rules) per observed step is dil-eval's MAE.
    observed = WINDOWS * predictor.prediction_length - agg["num_masked_target_values"]
    assert agg["abs_error"] / observed == pytest.approx(ev.report["model"]["mae"], rel=1e-12, abs=0)


def test_samples_and_dates_are_dil_eval_s(gluonts, dil_eval, test_data, predictor):
    """Every window's samples are bit for bit the ones dil-eval drew, and each forecast starts at the
    window's origin (the Period after its last context row) with its window id."""
    import pandas as pd
    from gluonts.evaluation import make_evaluation_predictions

    from dil.evaluate.harness import window_ids

    ev, drawn, spec, table = dil_eval
    forecasts, _ = make_evaluation_predictions(test_data, predictor, num_samples=SAMPLES)
    forecasts = list(forecasts)
    w = ev.windows
    origins = {ident: int(row) for row, ids in zip(w.origins, window_ids(w.names, w.origins)) for ident in ids}
    assert [f.item_id for f in forecasts] == list(drawn)
    for f in forecasts:
        assert f.samples.shape == (SAMPLES, predictor.prediction_length)
        assert np.abs(f.samples - drawn[f.item_id]).max() == 0.0, f.item_id
        assert f.start_date == pd.Period(table.timestamps[origins[f.item_id]], freq=spec.freq)


def test_entries_sharing_a_call_keep_their_own_noise(gluonts, dil_eval, test_data, predictor):
    """Entries with the same dates share one Forecaster call (the columns of one history); each
    is still keyed by its item_id: the window's own id gives dil-eval's samples, another id others."""
    _, drawn, _, _ = dil_eval
    entry = next(iter(test_data))
    inputs = [{**entry, "target": entry["target"][:-predictor.prediction_length], "item_id": i}
              for i in ("other", entry["item_id"], "other-2")]
    forecasts = list(predictor.predict(inputs))
    assert [f.item_id for f in forecasts] == ["other", entry["item_id"], "other-2"]
    assert np.abs(forecasts[1].samples - drawn[entry["item_id"]]).max() == 0.0
    assert np.abs(forecasts[0].samples - forecasts[1].samples).min() > 0  # another stream


# The Evaluator's per-window seasonal error needs the steps before the forecast, which these
# bare target windows lack: a masked value, which pandas warns about when it becomes NaN.
@pytest.mark.filterwarnings("ignore:Warning. converting a masked element to nan:UserWarning")
def test_twenty_samples_differ_by_the_quantile_rule_only(gluonts, dil_eval):
    """With N = 20 (N - 1 = 19: the levels fall between order statistics) GluonTS's nearest-rank
    quantiles and dil's interpolated ones differ, and so do the two CRPS figures, by no more than
    the pinball loss's Lipschitz bound: |rho_a(y - q) - rho_a(y - q')| <= max(a, 1 - a) |q - q'|."""
    import pandas as pd
    from gluonts.evaluation import Evaluator
    from gluonts.model.forecast import SampleForecast

    from dil.evaluate import metrics as M

    ev, drawn, spec, _ = dil_eval
    w = ev.windows
    pairs = np.argwhere(w.valid)
    y = np.stack([w.targets[o, c] for o, c in pairs])  # [W, H]
    samples = np.stack(list(drawn.values()))[:, :20]  # [W, 20, H], origin-major as the pairs
    start = pd.Period("2000-01-01", freq=spec.freq)  # any dates: the Evaluator aligns on them only
    H = y.shape[1]
    index = pd.period_range(start, periods=H, freq=spec.freq)
    forecasts = [SampleForecast(samples=s, start_date=start, item_id=str(i)) for i, s in enumerate(samples)]
    agg, _ = Evaluator(quantiles=QUANTILE_LEVELS, num_workers=0)([pd.DataFrame(t, index=index) for t in y],
                                                                  forecasts)
    theirs, ours = agg["mean_wQuantileLoss"], M.crps_quantile(y, samples)
    nearest = np.stack([np.stack([f.quantile(a) for a in QUANTILE_LEVELS]) for f in forecasts])  # [W, Q, H]
    linear = np.moveaxis(np.quantile(samples, QUANTILE_LEVELS, axis=1), 0, 1)  # [W, Q, H]
    obs = ~np.isnan(y)
    lipschitz = np.maximum(QUANTILE_LEVELS, 1 - QUANTILE_LEVELS)[None, :, None]
    bound = np.mean(2 * np.where(obs[:, None], lipschitz * np.abs(nearest - linear), 0).sum(axis=(0, 2))) \
        / np.abs(np.where(obs, y, 0)).sum()
    print(f"\n20 samples: GluonTS {theirs!r}, dil {ours!r}, difference {theirs - ours:.3e}, bound {bound:.3e}")
    assert np.abs(nearest - linear).max() > 0
    # The whole difference is the quantile rule: dil's loss on GluonTS's quantiles is GluonTS's figure.
    assert theirs == pytest.approx(M.weighted_quantile_loss(y, nearest), rel=1e-12, abs=0)
    assert abs(theirs - ours) <= bound * (1 + 1e-12)


def test_short_entry_names_its_item_id(gluonts, predictor):
    import pandas as pd

    from dil.runtime.gluonts_predictor import DilPredictorError

    L = predictor.context_length
    entry = {"target": np.ones(L - 1), "start": pd.Period("2020-01-01 00:00", freq="h"), "item_id": "short-one"}
    with pytest.raises(DilPredictorError, match=rf"item_id 'short-one': {L - 1} observations, .* at least {L}"):
        next(predictor.predict([entry]))


def test_serialize_round_trip(gluonts, tmp_path):
    from gluonts.model.predictor import Predictor

    from dil.runtime.gluonts_predictor import DilPredictor

    DilPredictor(num_samples=7, seed=3, steps=4).serialize(tmp_path)
    back = Predictor.deserialize(tmp_path)
    assert isinstance(back, DilPredictor)
    assert (back.num_samples, back.seed, back.settings, back.prediction_length) == (7, 3, {"steps": 4}, 24)


def test_dil_runtime_does_not_import_gluonts():
    code = ("import sys, dil.runtime\n"
            "assert 'gluonts' not in sys.modules and 'dil.runtime.gluonts_predictor' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_missing_gluonts_names_the_extra():
    """Without gluonts, importing the adapter is one ImportError line naming the extra."""
    code = (
        "import sys; sys.modules['gluonts'] = None\n"  # None in sys.modules: import gluonts raises ImportError
        "try:\n    import dil.runtime.gluonts_predictor\nexcept ImportError as e:\n"
        "    print(type(e).__name__, '|', e)\nelse:\n    raise SystemExit('imported')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout.strip()
    assert out == "MissingDependency | gluonts.model.predictor is not installed: pip install 'dil[gluonts]'"
