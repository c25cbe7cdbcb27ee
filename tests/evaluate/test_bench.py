"""dil-bench on the tiny artifact: JSON shape, work counts against the sampler's own stats, CRPS
against an independent scoring, the isolated worker's memory figure, and bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("torch")

from dil.data import load_dataset  # noqa: E402
from dil.evaluate import bench as B  # noqa: E402
from dil.evaluate import metrics as M  # noqa: E402

RUN_KEYS = {"name", "steps", "series", "samples", "latency_s_median", "crps", "tokens_computed", "engine_calls",
            "control_share", "peak_rss_mb"}
L, H, N = 16, 8, 4


def _cli(args):
    from click.testing import CliRunner

    from dil.evaluate.cli.bench import main

    return CliRunner().invoke(main, [str(a) for a in args])


def _predict(fc, ctx, ids, steps, lattice):
    """The runtime forecast of a bench run, called directly (lattice = cache = `lattice`)."""
    from dil.runtime.sampling.config import SamplerConfig

    cfg = SamplerConfig(steps=steps, lattice=lattice, cache=lattice)
    return fc.predict_windows(ctx, num_samples=N, seed=0, series_ids=ids, batch_series=len(ids), config=cfg)


@pytest.fixture(scope="module")
def report(tiny_artifact, tiny_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    args = ["--engine", tiny_artifact, "--checkpoint", tiny_checkpoint, "--steps", "2,3", "--large-steps", 2,
            "--series", "1,3", "--samples", N, "--repeats", 1, "--windows", 3, "--threads", 1, "--in-process",
            "--json", out / "bench.json", "--plot", out / "frontier.png"]
    res = _cli(args)
    assert res.exit_code == 0, res.output
    assert (out / "frontier.png").stat().st_size > 0
    return json.loads((out / "bench.json").read_text()), res.stdout


@pytest.mark.slow
def test_bench_json_shape_and_runs(report):
    rep, text = report
    assert {"runs", "machine", "versions"} <= set(rep)
    names = {(r["name"], r["series"], r["steps"]) for r in rep["runs"]}
    stepped = {(n, 1, s) for n in B.STEPPED_NAMES for s in (2, 3)} | {(n, 3, 2) for n in B.STEPPED_NAMES}
    assert names == stepped | {("reference-ddpm1000", 1, 1000)}
    for r in rep["runs"]:
        assert RUN_KEYS <= set(r), r["name"]
        assert r["samples"] == N and r["latency_s_median"] > 0 and r["repeats"] == 1
        assert r["latency_s_min"] <= r["latency_s_median"] <= r["latency_s_max"]
        assert 0.0 <= r["control_share"] < 1.0
        assert r["peak_rss_mb"] is None  # in-process: no per-configuration memory figure
    assert rep["machine"]["threads"] == 1 and rep["protocol"]["crps_windows"] == 3
    assert rep["versions"]["onnxruntime"] and rep["import"]["loads_torch"] is False
    # a speed-up below 1 is worded as a slow-down ("1.92x slower than"), never as "0.52x faster"
    assert "than runtime-full" in text and "faster than reference-ddpm1000" in text
    assert not __import__("re").search(r" 0\.\d+x faster", text)


@pytest.mark.slow
def test_bench_work_counts_match_the_sampler_stats(report, tiny_artifact):
    from dil.data import get_spec
    from dil.runtime import Forecaster

    rep, _ = report
    fc = Forecaster.load(tiny_artifact)
    table, spec = load_dataset("etth1"), get_spec("etth1")
    for r in rep["runs"]:
        ctx, ids = B.timing_windows(table, spec, L, H, r["series"])
        if r["name"].startswith("runtime"):
            st = _predict(fc, ctx, ids, r["steps"], r["name"] == "runtime-dil").stats
            assert (r["tokens_computed"], r["engine_calls"]) == (st.tokens_computed, st.engine_calls), r
        else:  # torch: one full_step per step, every token of every row
            assert r["engine_calls"] == r["steps"]
            assert r["tokens_computed"] == r["series"] * N * H * r["steps"]
    full = next(r for r in rep["runs"] if r["name"] == "runtime-full")
    assert full["tokens_computed"] == full["series"] * N * H * full["steps"]


@pytest.mark.slow
def test_bench_crps_is_the_harness_crps_on_the_same_windows(report, tiny_artifact):
    from dil.data import get_spec
    from dil.evaluate.harness import protocol_windows, subset
    from dil.runtime import Forecaster

    rep, _ = report
    table, spec = load_dataset("etth1"), get_spec("etth1")
    w = protocol_windows(table, spec, L, H)
    mask = subset(w.valid, 3)
    ids = [f"{w.names[c]}@{int(w.origins[o])}" for o, c in np.argwhere(mask)]
    assert ids == rep["protocol"]["crps_window_ids"]
    fc = Forecaster.load(tiny_artifact)
    by = {(r["name"], r["series"], r["steps"]): r for r in rep["runs"]}
    for name in ("runtime-full", "runtime-dil"):
        s = _predict(fc, w.contexts[mask], ids, 3, name == "runtime-dil").samples
        assert by[(name, 1, 3)]["crps"] == pytest.approx(M.crps_quantile(w.targets[mask], s), rel=1e-9)
    # Same windows and noise for every run: the torch sampler's CRPS matches the runtime's, and a
    # (sampler, steps) pair has one CRPS whatever the batch shape it was timed on.
    assert by[("torch-full", 1, 2)]["crps"] == pytest.approx(by[("runtime-full", 1, 2)]["crps"], rel=1e-4)
    assert by[("runtime-dil", 3, 2)]["crps"] == by[("runtime-dil", 1, 2)]["crps"]
    q = next(x for x in rep["ratios"] if x["run"] == "runtime-dil" and x["vs"] == "runtime-full" and x["series"] == 1
             and x["steps"] == 3)
    assert q["speedup"] == pytest.approx(by[("runtime-full", 1, 3)]["latency_s_median"]
                                         / by[("runtime-dil", 1, 3)]["latency_s_median"])


def test_isolated_worker_measures_its_own_memory(tiny_artifact):
    cfg = B.BenchConfig(engine=tiny_artifact, steps=(2,), series=(1,), samples=N, repeats=1, windows=1,
                        threads=1, names=("runtime-full",))
    rep = B.run_bench(cfg, progress=False)
    (run,) = rep["runs"]
    # A fresh process that never loads torch: its peak is its own (not the parent's, which has torch).
    assert run["loaded"] == {"torch": False, "onnxruntime": True}
    assert 0 < run["base_rss_mb"] <= run["peak_rss_mb"] < 1000
    assert run["tokens_computed"] == N * H * 2 and run["engine_calls"] == 2


def test_bench_spacing_reaches_torch_full_and_the_runtime(tiny_artifact, tiny_checkpoint):
    """--spacing time: runtime-full's CRPS is that of the Forecaster with spacing="time" (not the
    default grid's), torch-full runs the same grid (same CRPS), and the report records it."""
    from dil.data import get_spec
    from dil.evaluate.harness import protocol_windows, subset
    from dil.runtime import Forecaster

    cfg = B.BenchConfig(engine=tiny_artifact, checkpoint=tiny_checkpoint, steps=(3,), series=(1,), samples=N,
                        repeats=1, windows=2, threads=1, names=("torch-full", "runtime-full"), isolate=False,
                        spacing="time")
    assert [r.spacing for r in B.plan_runs(cfg)] == ["time", "time"]
    rep = B.run_bench(cfg, progress=False)
    assert rep["protocol"]["config"]["spacing"] == "time"
    by = {r["name"]: r["crps"] for r in rep["runs"]}
    table, spec = load_dataset("etth1"), get_spec("etth1")
    w = protocol_windows(table, spec, L, H)
    mask = subset(w.valid, 2)
    ids = [f"{w.names[c]}@{int(w.origins[o])}" for o, c in np.argwhere(mask)]
    fc = Forecaster.load(tiny_artifact)

    def crps(**spacing):
        s = fc.predict_windows(w.contexts[mask], num_samples=N, steps=3, seed=0, series_ids=ids, lattice=False,
                               cache=False, **spacing).samples
        return M.crps_quantile(w.targets[mask], s)

    assert by["runtime-full"] == pytest.approx(crps(spacing="time"), rel=1e-9)
    assert by["runtime-full"] != pytest.approx(crps(), rel=1e-3)  # the default grid gives another CRPS
    assert by["torch-full"] == pytest.approx(by["runtime-full"], rel=1e-4)


def test_timing_windows_cycle_when_the_test_part_is_short():
    from dil.data import DatasetSpec, SeriesTable, Splits

    values = np.arange(60.0)[:, None]
    table = SeriesTable(values=values, names=["a"], source="t")
    spec = DatasetSpec(name="t", file="t.csv", date_column=None, columns=None, freq=None, season=1,
                       context_length=10, horizon=5, splits=Splits(0.6, 0.2, 0.2), bundled=False)
    ctx, ids = B.timing_windows(table, spec, 10, 5, 12)
    # Test rows 48..59: origins 48..55 (8 windows), cycled to 12 with distinct ids.
    assert len(ids) == len(set(ids)) == 12 and ids[0] == "a@48" and ids[7] == "a@55" and ids[8] == "a@48#1"
    np.testing.assert_array_equal(ctx[0], values[38:48, 0])
    np.testing.assert_array_equal(ctx[8], ctx[0])


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--steps", "2,x"], "--steps"),
        (["--only", "nope"], "unknown sampler"),
        (["--checkpoint", "no-such-run"], "not a training run folder"),
        (["--json", "/dev/null/b.json"], "/dev/null is not a folder"),  # a missing folder is created
        (["--spacing", "uniform"], "spacing must be one of logsnr, time, got 'uniform'"),
    ],
)
def test_dil_bench_bad_input(tiny_artifact, tmp_path, monkeypatch, extra, message):
    monkeypatch.chdir(tmp_path)
    res = _cli(["--engine", tiny_artifact, "--steps", 2, "--series", 1, "--samples", 2, "--in-process"] + extra)
    assert res.exit_code != 0 and "Traceback" not in res.output
    assert message in res.output and len(res.output.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_dil_bench_missing_engine_and_help(tmp_path):
    res = _cli(["--engine", tmp_path / "none.onnx"])
    assert res.exit_code != 0 and res.output.startswith("Error:") and len(res.output.strip().splitlines()) == 1
    res = _cli(["--help"])
    assert res.exit_code == 0 and "reference-ddpm1000" in res.output and "--large-steps" in res.output
