"""`dil-eval --protocol probts`: ProbTS's long-term windows and metrics (docs/probts.md).

The metric is checked against a hand-worked example and against a direct float64 NumPy
transcription of ProbTS's evaluator (probts/utils/evaluator.py and metrics.py, both the
per-window version of 2024-06-21 on and the batch-pooled one of 2024-06-17); the windows
against ProbTS's split and rolling rule on the bundled files; the CLI on a tiny artifact of
horizon 96.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from dil.evaluate import metrics as M

# --- the metric, by hand ---------------------------------------------------------------------------
#
# Two levels a in {0.25, 0.75}, windows of C = 2 series x H = 1 step. Pinball per step:
# 2 |(q - y) (1{y <= q} - a)|.
#
# Window A: y = (2, 4), q_.25 = (1, 4), q_.75 = (3, 6), median = (2, 5), sum |y| = 6.
#   a = .25: series 0: y > q: 2 |(1 - 2)(0 - .25)| = 0.5; series 1: y = q: 0.       -> 0.5
#   a = .75: series 0: 2 |(3 - 2)(1 - .75)| = 0.5; series 1: 2 |(6 - 4)(.25)| = 1.0 -> 1.5
#   CRPS_A = mean(0.5 / 6, 1.5 / 6) = 1/6; NMAE_A = (|2 - 2| + |4 - 5|) / 6 = 1/6.
# Window B: y = (10, 10), q_.25 = (10, 8), q_.75 = (12, 14), median = (11, 10), sum |y| = 20.
#   a = .25: 0 + 2 |(8 - 10)(0 - .25)| = 1.0; a = .75: 2 |2 (.25)| + 2 |4 (.25)| = 3.0
#   CRPS_B = mean(1 / 20, 3 / 20) = 1/10; NMAE_B = (1 + 0) / 20 = 1/20.
# Window C: y = (1, 1), every quantile and the median 1: CRPS_C = NMAE_C = 0.
#
# Per window (ProbTS since 2024-06-21): CRPS = (1/6 + 1/10 + 0) / 3 = 4/45,
#                                        NMAE = (1/6 + 1/20 + 0) / 3 = 13/180.
# Pooled per batch of 2 (ProbTS's first evaluator): batch {A, B}: level sums 1.5 and 4.5 over
# sum |y| = 26: CRPS = mean(1.5, 4.5) / 26 = 3/26, NMAE = 2/26 = 1/13; batch {C}: 0. Weighted by
# batch size: CRPS = (2 * 3/26 + 1 * 0) / 3 = 1/13, NMAE = (2 * 1/13 + 0) / 3 = 2/39.
# One batch of all three: the pooled ratio over every window, dil's own CRPS: (1.5 + 4.5) / 2 / 28 = 3/28.

LEVELS = np.array([0.25, 0.75])
Y = np.array([[[2.0], [4.0]], [[10.0], [10.0]], [[1.0], [1.0]]])  # [O=3, C=2, H=1]
Q = np.array([  # [O, C, Q, H]
    [[[1.0], [3.0]], [[4.0], [6.0]]],
    [[[10.0], [12.0]], [[8.0], [14.0]]],
    [[[1.0], [1.0]], [[1.0], [1.0]]],
])
MEDIAN = np.array([[[2.0], [5.0]], [[11.0], [10.0]], [[1.0], [1.0]]])


def test_probts_metric_hand_worked():
    ql, abs_error, abs_target = M.probts_window_terms(Y, Q, MEDIAN, LEVELS)
    np.testing.assert_allclose(ql, [[0.5, 1.5], [1.0, 3.0], [0.0, 0.0]])
    np.testing.assert_allclose(abs_error, [1.0, 1.0, 0.0])
    np.testing.assert_allclose(abs_target, [6.0, 20.0, 2.0])

    out = M.probts_scores(Y, Q, MEDIAN, LEVELS, batch_sizes=(1, 2, 3))
    assert out["windows"] == 3
    assert out["crps"] == pytest.approx(4 / 45, rel=1e-15)
    assert out["nmae"] == pytest.approx(13 / 180, rel=1e-15)
    assert out["crps_pooled"]["1"] == pytest.approx(4 / 45, rel=1e-15)  # batches of one: per window
    assert out["crps_pooled"]["2"] == pytest.approx(1 / 13, rel=1e-15)
    assert out["nmae_pooled"]["2"] == pytest.approx(2 / 39, rel=1e-15)
    assert out["crps_pooled"]["3"] == pytest.approx(3 / 28, rel=1e-15)
    # ... which is dil's pooled CRPS (its 1{y < q} differs from ProbTS's 1{y <= q} only where the loss is 0)
    assert M.weighted_quantile_loss(Y, Q, LEVELS) == pytest.approx(3 / 28, rel=1e-15)


def test_probts_metric_leaves_missing_steps_out_and_empty_windows_out():
    # A NaN target step counts in neither sum: window A without its series 1 is y = 2 alone, its
    # losses 0.5 (a = .25) and 0.5 (a = .75): CRPS 0.5 / 2 = 1/4, NMAE 0.
    y = Y.copy()
    y[0, 1, 0] = np.nan
    out = M.probts_scores(y[:1], Q[:1], MEDIAN[:1], LEVELS)
    assert (out["crps"], out["nmae"]) == (pytest.approx(0.25), 0.0)
    # A window with nothing to normalise by (sum |y| = 0) is left out, not an infinity.
    y = np.concatenate([Y[:1], np.zeros_like(Y[:1])])
    out = M.probts_scores(y, Q[:2], MEDIAN[:2], LEVELS)
    assert out["windows"] == 1 and out["crps"] == pytest.approx(1 / 6)


def test_a_point_forecast_crps_is_its_nmae():
    rng = np.random.default_rng(1)
    y, point = rng.normal(size=(4, 3, 96)), rng.normal(size=(4, 3, 96))
    out = M.probts_crps(y, point[:, :, None, :])
    assert out["crps"] == pytest.approx(out["nmae"], rel=1e-12)


# --- the metric, against a transcription of ProbTS's evaluator -----------------------------------

def _probts_sequence_metrics(targets, forecasts, quantiles):
    """ProbTS's Evaluator.get_sequence_metrics (CRPS and ND) on one array: targets [B, H, K],
    forecasts [B, N, H, K], float64."""
    median = np.quantile(forecasts, 0.5, axis=1)
    abs_target_sum = np.sum(np.abs(targets))
    nd = np.sum(np.abs(targets - median)) / abs_target_sum
    weighted = []
    for q in quantiles:
        q_forecasts = np.quantile(forecasts, q, axis=1)
        loss = np.sum(2 * np.abs((q_forecasts - targets) * ((targets <= q_forecasts) - q)))
        weighted.append(loss / abs_target_sum)
    return np.mean(weighted), nd


def probts_reference(targets, forecasts, batch_size=None, quantiles_num=20):
    """ProbTS's test metrics over the windows (targets [W, H, K], forecasts [W, N, H, K]) fed in test
    batches of batch_size: per window inside each batch (batch_size None: evaluator.py since
    2024-06-21, whose result does not depend on the batches), or pooled over each batch (the first
    evaluator, 2024-06-17); then the batch-size weighted mean (forecast_module's
    calculate_weighted_average)."""
    quantiles = (1.0 * np.arange(quantiles_num) / quantiles_num)[1:]
    if batch_size is None:
        per = [_probts_sequence_metrics(targets[i : i + 1], forecasts[i : i + 1], quantiles) for i in range(len(targets))]
        return tuple(float(np.mean(v)) for v in zip(*per))
    crps, nd, sizes = [], [], []
    for a in range(0, len(targets), batch_size):
        c, n = _probts_sequence_metrics(targets[a : a + batch_size], forecasts[a : a + batch_size], quantiles)
        crps.append(c), nd.append(n), sizes.append(len(targets[a : a + batch_size]))
    sizes = np.array(sizes)
    return float(np.sum(np.array(crps) * sizes) / sizes.sum()), float(np.sum(np.array(nd) * sizes) / sizes.sum())


def test_probts_metric_matches_a_transcription_of_probts():
    rng = np.random.default_rng(0)
    w, n, h, k = 11, 100, 96, 3
    targets = rng.normal(3.0, 2.0, size=(w, h, k))  # ProbTS's layout: [batch, horizon, series]
    forecasts = targets[:, None] + rng.normal(0.0, 1.5, size=(w, n, h, k)) + rng.normal(size=(w, 1, 1, k))
    ours = M.probts_crps(targets.transpose(0, 2, 1), forecasts.transpose(0, 3, 1, 2), batch_sizes=(1, 4, 8, 64))
    crps, nmae = probts_reference(targets, forecasts)
    assert ours["crps"] == pytest.approx(crps, rel=1e-12)
    assert ours["nmae"] == pytest.approx(nmae, rel=1e-12)
    for b in (1, 4, 8, 64):
        crps_b, nmae_b = probts_reference(targets, forecasts, batch_size=b)
        assert ours["crps_pooled"][str(b)] == pytest.approx(crps_b, rel=1e-12)
        assert ours["nmae_pooled"][str(b)] == pytest.approx(nmae_b, rel=1e-12)
    assert ours["crps"] != pytest.approx(ours["crps_pooled"]["64"], rel=1e-6)  # the two really differ


def test_the_harness_reports_the_probts_metrics_of_its_windows():
    """run_evaluation --protocol probts: ProbTS's metric of exactly the windows it forecast, next to dil's."""
    from dil.data import load_dataset
    from dil.data.registry import get_spec
    from dil.evaluate.harness import EvalOptions, run_evaluation

    table = load_dataset("etth1")
    kept = {}

    def fn(ctx, ids):  # last value + seeded noise, recorded per window id
        out = np.stack([np.nan_to_num(c[-1]) + np.random.default_rng(abs(hash(i)) % 2**32).normal(size=(6, 96))
                        for c, i in zip(ctx, ids)])
        kept.update(zip(ids, out))
        return out

    ev = run_evaluation(fn, table, get_spec("etth1"), 48, 96,
                        EvalOptions(n_windows=3, samples=6, protocol="probts", progress=False, batch_size=5))
    r = ev.report
    p = r["protocol"]
    assert p["protocol"] == "probts" and p["windows"] == 3 and p["series_windows"] == 21
    assert [p["split"]["first_origin"], p["split"]["last_origin"]] == [11520, 14208]
    assert p["probts"]["dataset"] == "etth1" and p["probts"]["origins_all"] == 29
    origins = ev.windows.origins
    targets = np.stack([table.values[o : o + 96] for o in origins])  # [W, H, K]
    forecasts = np.stack([np.stack([kept[f"{n}@{o}"] for n in table.names], axis=-1) for o in origins])
    crps, nmae = probts_reference(targets, forecasts)
    assert r["model"]["probts"]["crps"] == pytest.approx(crps, rel=1e-12)
    assert r["model"]["probts"]["nmae"] == pytest.approx(nmae, rel=1e-12)
    assert r["model"]["probts"]["crps_pooled"]["8"] == pytest.approx(probts_reference(targets, forecasts, 8)[0],
                                                                      rel=1e-12)
    naive = r["baselines"]["seasonal_naive"]["probts"]
    assert naive["crps"] == pytest.approx(naive["nmae"], rel=1e-12)


def test_the_default_protocol_report_is_unchanged():
    from dil.data import load_dataset
    from dil.data.registry import get_spec
    from dil.evaluate.harness import EvalOptions, run_evaluation

    table = load_dataset("etth1")
    ev = run_evaluation(lambda c, i: np.zeros((len(i), 2, 24)) + 1.0, table, get_spec("etth1"), 168, 24,
                        EvalOptions(n_windows=2, samples=2, progress=False))
    assert "probts" not in ev.report["model"] and "probts" not in ev.report["protocol"]
    assert "protocol" not in ev.report["protocol"]
    assert ev.report["protocol"]["split"]["rule"] == "rows 8640/2880/2880 (train/val/test)"


@pytest.mark.parametrize("horizon,dataset,columns,message", [
    (24, "etth1", None, "the probts protocol forecasts 96 steps; this model's horizon is 24"),
    (96, "metro-traffic", None, "the probts protocol covers the bundled datasets etth1, etth2, weather, "
                                "exchange-rate, not metro-traffic"),
    (96, "etth1", ["OT"], "the probts protocol scores every series of etth1 at once: drop --columns"),
])
def test_the_probts_protocol_refuses_what_it_does_not_define(horizon, dataset, columns, message):
    from dil.data.datasets import resolve
    from dil.evaluate.harness import EvalOptions, EvaluationError, run_evaluation

    spec, table = resolve(dataset, columns=columns)
    with pytest.raises(EvaluationError) as err:
        run_evaluation(lambda c, i: np.zeros((len(i), 2, horizon)), table, spec, 96, horizon,
                       EvalOptions(samples=2, protocol="probts", progress=False))
    assert str(err.value) == message


# --- the windows ------------------------------------------------------------------------------------

def test_probts_windows_of_etth1():
    from dil.data import load_dataset
    from dil.data.windows import probts_origins

    table = load_dataset("etth1")
    origins, info = probts_origins("etth1", table)
    # ETTh: 12/4/4 months of 30 days: train rows 0..8639, val 8640..11519, test 11520..14399.
    assert info["raw_parts"] == {"train": [0, 8640], "val": [8640, 11520], "test": [11520, 14400]}
    assert origins[0] == 11520  # the test part's first row; its context (11424..11519) is validation rows
    assert set(np.diff(origins)) == {96}
    assert origins.size == math.ceil((2880 - 96) / 96) == 29  # the last target ends at row 14303
    assert origins[-1] + 96 == 14304
    assert info["test_rows"] == [11520, 14400] and info["file_rows"] == 17420
    kept, _ = probts_origins("etth1", table, n_windows=3)
    assert kept.tolist() == [11520, 11520 + 14 * 96, 14208]


def test_probts_windows_of_weather_are_the_files_rows():
    import pandas as pd

    from dil.data import load_dataset
    from dil.data.registry import get_spec
    from dil.data.windows import probts_origins

    table = load_dataset("weather")
    origins, info = probts_origins("weather", table)
    raw = pd.read_csv(get_spec("weather").path)
    n = len(raw)
    assert n == info["file_rows"] == 52696
    first = n - int(n * 0.2)  # ProbTS: the test part is the file's last int(0.2 N) rows
    assert info["raw_parts"]["test"] == [first, n] == [42157, 52696]
    assert info["raw_parts"]["train"] == [0, int(n * 0.7)] == [0, 36887]
    assert origins.size == math.ceil((n - first - 96) / 96) == 109
    assert set(np.diff(origins)) == {96}
    # The file drops a duplicate row and 9 missing steps before the test part: the cleaned table's
    # row of ProbTS's first origin is 8 rows further, same timestamp, same values, context included.
    assert origins[0] == first + 8
    assert table.timestamps[origins[0]] == pd.Timestamp(raw["date"][first])
    for o_raw, o in ((first, origins[0]), (first + 108 * 96, origins[-1])):
        values = raw.iloc[o_raw - 96 : o_raw + 96, 1:].to_numpy(dtype=np.float64)
        np.testing.assert_array_equal(table.values[o - 96 : o + 96], values)


def test_probts_windows_of_exchange_rate():
    from dil.data import load_dataset
    from dil.data.windows import probts_origins

    origins, info = probts_origins("exchange-rate", load_dataset("exchange-rate"))
    assert info["raw_parts"] == {"train": [0, 5311], "val": [5311, 6071], "test": [6071, 7588]}
    assert origins.tolist() == [6071 + 96 * i for i in range(15)]


def test_probts_windows_refuse_a_window_over_a_gap():
    from dil.data import load_dataset
    from dil.data.windows import probts_origins
    from dil.runtime.inputs.table import DataError

    table = load_dataset("etth1")
    raw = np.asarray(table.timestamps).copy()
    raw = np.delete(raw, 11500)  # a file missing one hour inside the first window's context
    with pytest.raises(DataError, match="duplicate or missing row"):
        probts_origins("etth1", table, raw=raw)


# --- dil-eval --protocol probts on a tiny artifact of horizon 96 -----------------------------------

@pytest.fixture(scope="module")
def tiny96_artifact(tmp_path_factory):
    """The tiny model of tests/conftest.py with horizon 96, checkpointed "as trained on etth1" and exported."""
    torch = pytest.importorskip("torch")
    from dil.export.artifact import ExportOptions, export_artifact
    from dil.runtime.model.config import ModelConfig
    from dil.runtime.sampling.schedule import NoiseSchedule
    from dil.train.checkpoint import save_checkpoint
    from dil.train.model import ScoreNet

    torch.manual_seed(0)
    model = ScoreNet(ModelConfig(context_length=16, horizon=96, d_model=16, num_heads=2, num_layers=2, ffn_dim=32,
                                 time_embed_dim=8))
    with torch.no_grad():
        model.head.weight.normal_(0.0, 0.2)
        model.head.bias.normal_(0.0, 0.1)
    model.eval()
    run = tmp_path_factory.mktemp("runs") / "tiny96"
    data = {
        "dataset": "etth1", "source": "ETTh1.csv.gz", "sha256": "", "columns": None, "date_column": "date",
        "freq": "h", "season": 24, "context_length": model.config.context_length, "horizon": 96,
        "scaling": "context-mean-std",
    }
    save_checkpoint(run, model, NoiseSchedule(), data, {"epochs": 0})
    out = tmp_path_factory.mktemp("engines")
    return export_artifact(run, out, ExportOptions(name="tiny96")).path


def _cli(args):
    from click.testing import CliRunner

    from dil.evaluate.cli.eval import main

    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.mark.slow
def test_dil_eval_protocol_probts_cli(tiny96_artifact, tmp_path):
    out = tmp_path / "eval.json"
    res = _cli(["--engine", tiny96_artifact, "--protocol", "probts", "--windows", 2, "--samples", 4, "--steps", 2,
                "--json", out])
    assert res.exit_code == 0, res.output
    assert "ProbTS long-term setting (etth1" in res.output
    report = json.loads(out.read_text())
    p = report["protocol"]
    assert p["protocol"] == "probts" and p["dataset"] == "etth1"
    assert (p["context"], p["horizon"], p["windows"], p["series_windows"]) == (16, 96, 2, 14)
    assert [p["split"]["first_origin"], p["split"]["last_origin"]] == [11520, 14208]
    assert p["probts"]["origins_all"] == 29 and p["probts"]["raw_parts"]["test"] == [11520, 14400]
    probts = report["model"]["probts"]
    assert probts["windows"] == 2 and probts["crps"] > 0 and probts["nmae"] > 0
    assert set(probts["crps_pooled"]) == {"8", "16", "32", "64"}
    assert probts["crps_pooled"]["8"] == pytest.approx(report["model"]["crps"], rel=1e-9)  # 2 windows: one batch

    # --dataset weather: the same model (it is channel-independent) on ProbTS's weather windows.
    res = _cli(["--engine", tiny96_artifact, "--protocol", "probts", "--dataset", "weather", "--windows", 1,
                "--samples", 4, "--steps", 2])
    assert res.exit_code == 0, res.output
    assert "ProbTS long-term setting (weather_ltsf, 1 windows of all 21 series" in res.output

    # What the protocol does not define: one line.
    res = _cli(["--engine", tiny96_artifact, "--protocol", "probts", "--dataset", "metro-traffic"])
    assert res.exit_code != 0
    assert res.output.strip().splitlines()[-1] == ("Error: the probts protocol covers the bundled datasets etth1, "
                                                   "etth2, weather, exchange-rate, not metro-traffic")
    res = _cli(["--engine", tiny96_artifact, "--protocol", "probts", "--columns", "OT"])
    assert res.exit_code != 0 and res.output.strip().splitlines()[-1].endswith("drop --columns")
