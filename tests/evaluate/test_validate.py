"""`dil-validate`: the controller check, the free run and the CLI, on real windows of two datasets."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from click.testing import CliRunner  # noqa: E402

from dil.export.real_data import training_windows  # noqa: E402
from dil.evaluate.cli.validate import main as cli  # noqa: E402
from dil.evaluate.validation_report import (  # noqa: E402
    compare_decisions,
    compare_forecasts,
    controller_check,
    free_run,
    prepare_inputs,
    validate_sampler,
)
from dil.runtime import OnnxEngine  # noqa: E402
from dil.runtime.sampling.config import SamplerConfig  # noqa: E402
from dil.runtime.sampling.schedule import NoiseSchedule  # noqa: E402
from dil.evaluate.reference.sampler import StepDecision  # noqa: E402

SAMPLES, STEPS = 16, 10


def _one_line_error(result) -> str:
    assert result.exit_code != 0
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert "Traceback" not in result.output
    return lines[0]


def _decision(computed, order, full, margins=None) -> StepDecision:
    return StepDecision(np.array(computed, bool), np.array(order, np.int64), np.array(full, bool), margins or {})


def test_compare_decisions_counts_units_and_lists_first_flips():
    """A hand-worked example: G=1, N=2, H=2, two steps; 2 x (4 tokens + 1 series) = 10 units."""
    ref = [
        _decision([[[1, 1], [1, 1]]], [[[1, 1], [1, 1]]], [1]),
        _decision([[[1, 0], [0, 1]]], [[[2, 2], [2, 2]]], [0],
                  {"computed": np.array([[[0.3, -0.02], [0.5, 0.7]]])}),
    ]
    rt = [
        _decision([[[1, 1], [1, 1]]], [[[1, 1], [1, 1]]], [1]),
        _decision([[[1, 1], [0, 1]]], [[[2, 2], [2, 1]]], [0]),  # token (0, 1) computed; token (1, 1) order 1
    ]
    cmp = compare_decisions(rt, ref)
    assert cmp["units"] == 10 and cmp["agreement"] == pytest.approx(8 / 10)
    assert cmp["flips_total"] == cmp["first_flips"] == 2
    flip = next(f for f in cmp["flips"] if f["decision"] == "computed")
    assert (flip["step"], flip["sample"], flip["token"], flip["runtime"], flip["reference"]) == (1, 0, 1, True, False)
    assert flip["margin"] == pytest.approx(0.02)
    assert cmp["rows_flipped"].tolist() == [[True, True]]
    assert compare_decisions(ref, ref)["agreement"] == 1.0


def test_compare_forecasts_excludes_flipped_rows():
    x = np.zeros((1, 3, 2))
    y = x.copy()
    y[0, 1] = 0.5
    out = compare_forecasts(x, y, np.array([[False, True, False]]))
    assert out["forecast_max_abs_err"] == 0.5 and out["forecast_max_abs_err_agreeing_rows"] == 0.0
    assert out["rows_flipped"] == 1 and out["quantile_max_abs_err"] > 0


def test_sample_gate_scales_with_the_sample():
    """1e-4 * max(1, |x|): 2e-4 off a sample of 10 passes, 2e-4 off a sample of 0.5 does not."""
    x = np.array([[[10.0, 0.5]]])
    big = compare_forecasts(x + np.array([[[2e-4, 0.0]]]), x, np.array([[False]]))
    small = compare_forecasts(x + np.array([[[0.0, 2e-4]]]), x, np.array([[False]]))
    assert big["forecast_max_scaled_err_agreeing_rows"] == pytest.approx(2e-5)
    assert small["forecast_max_scaled_err_agreeing_rows"] == pytest.approx(2e-4)


@pytest.fixture(scope="module")
def engine(tiny_artifact):
    return OnnxEngine.load(tiny_artifact, threads=1)


# Settings under which the tiny model (H = 8) really reuses tokens, probes, and full steps are rare;
# with the documented defaults its 5 core tokens make every step full.
# x0_clip=0: the untrained tiny model throws most samples onto the guard, which would make the
# comparison one of clipped values; the "defaults" case keeps the guard on.
BUSY_CACHE = dict(K=2, bucket=1, full_fraction=1.0, tau_0=3.0, R=100, random_probe_ratio=0.2, x0_clip=0.0)


@pytest.mark.parametrize("settings", [{}, BUSY_CACHE, dict(BUSY_CACHE, lattice=False)], ids=["defaults", "cache", "no-lattice"])
@pytest.mark.parametrize("dataset", ["etth1", "exchange-rate"])
def test_runtime_and_reference_agree_on_real_windows(engine, tiny_model, tiny_config, dataset, settings):
    """Issue 3's gates on real contexts fed to the tiny model (context 16, horizon 8)."""
    windows, info = training_windows({"dataset": dataset}, tiny_config.context_length, tiny_config.horizon, 3)
    assert info["used"] and windows[0].shape == (3, tiny_config.context_length)
    config = SamplerConfig(steps=STEPS, **settings)
    report = validate_sampler(engine, tiny_model, NoiseSchedule(), windows[0], config, SAMPLES, seed=1)
    assert report["controller_agreement"] == 1.0
    assert report["controller_check"]["mismatched_calls"] == 0
    assert report["decision_agreement"] >= 0.99
    assert report["quantile_max_abs_err"] <= 1e-3
    if report["free_run"]["flips_total"] == 0:
        assert report["forecast_max_abs_err"] <= 1e-4
    else:
        assert report["free_run"]["forecast_max_abs_err_agreeing_rows"] <= 1e-4
        assert report["free_run"]["forecast_max_scaled_err_agreeing_rows"] <= 1e-4
        assert all(f["margin"] is not None for f in report["flips"] if not f["consequence"])
    assert report["passed"], report["failures"]
    assert report["free_run"]["forecast_max_abs_err"] > 0  # two different networks really ran
    stats = report["free_run"]["runtime_stats"]
    if settings:  # the decisions compared are not only "everything, every step"
        assert stats["token_fraction"] < 0.8 and stats["probes"] > 0
        assert stats["full_steps"] < STEPS
    if settings.get("lattice", True):
        assert stats["refinements"] > 0 and len(set(stats["order_histogram"])) == 3


@pytest.mark.parametrize("spacing", ["logsnr", "time"])
def test_validation_reference_runs_the_configs_grid(tiny_model, tiny_config, spacing):
    """Both sides of dil-validate take the step grid from the one SamplerConfig (--spacing time)."""
    from dil.evaluate.validation_report import reference_sampler
    from dil.runtime.sampling.solver import DPMSolverPP

    settings = {"spacing": spacing}
    config = SamplerConfig(steps=5, **settings)
    ctx, _, x_T, streams = prepare_inputs(np.random.default_rng(0).standard_normal((1, 20)), tiny_config, 2, 0)
    ref = reference_sampler(tiny_model, NoiseSchedule(), ctx, x_T, config, streams)
    want = NoiseSchedule().sampling_grid(5, spacing)
    np.testing.assert_array_equal(ref.kappas, want)
    np.testing.assert_array_equal(DPMSolverPP(NoiseSchedule(), 5, spacing=config.spacing).kappas, want)


def test_controller_check_detects_a_controller_that_differs(tiny_model, tiny_config, monkeypatch):
    """The check can fail: a reference that takes order 1 where the runtime takes order 2."""
    import dil.evaluate.validation_report as vr
    from dil.evaluate.reference.sampler import ReferenceFullController

    monkeypatch.setattr(vr, "reference_controller", lambda config: ReferenceFullController(1))
    rng = np.random.default_rng(0)
    ctx, _, x_T, streams = prepare_inputs(rng.standard_normal((2, 20)), tiny_config, 3, 0)
    config = SamplerConfig(steps=4, solver_order=2)
    check = controller_check(tiny_model, NoiseSchedule(), ctx, x_T, config, streams)
    # Steps 1 and 2 differ (order 2 vs 1) on every token; step 0 (history cap) and 3 (last) agree.
    units = 4 * (2 * 3 * tiny_config.horizon + 2)
    assert check["units"] == units
    assert check["controller_agreement"] == pytest.approx(1 - 2 * 2 * 3 * tiny_config.horizon / units)
    assert check["flips"][0]["decision"] == "order" and check["flips"][0]["step"] == 1


def test_free_run_lists_flips_with_their_margins(tiny_model, tiny_config):
    """A free run against a slightly different network (torch, weights perturbed by 1e-4): its
    decisions flip; every first flip comes first in the list and carries the reference's margin."""
    import copy

    from dil.export.graph_check import TorchGraphs
    from dil.runtime.backends.onnx_engine import EngineStats

    other = copy.deepcopy(tiny_model)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(1e-4 * torch.randn(p.shape, generator=gen))

    class Perturbed(TorchGraphs):
        config, stats, max_batch = tiny_config, EngineStats(), None

        def device_cache(self, G, N, H):  # keys/values stay with the sampler
            return None

        def denoise(self, *args):  # the sampler passes read-only broadcast views; torch wants copies
            return super().denoise(*(np.array(a) for a in args))

    windows, _ = training_windows({"dataset": "etth1"}, tiny_config.context_length, tiny_config.horizon, 4)
    ctx, _, x_T, streams = prepare_inputs(windows[0], tiny_config, SAMPLES, 0)
    # The time grid: there this perturbation flips near-tied decisions (on the logsnr grid the tiny
    # model's decisions have wider margins and none flips, even at 3e-4); both sides run the config's grid.
    config = SamplerConfig(steps=STEPS, spacing="time", **BUSY_CACHE)
    run = free_run(Perturbed(other), tiny_model, NoiseSchedule(), ctx, x_T, config, streams)
    assert 0.9 < run["decision_agreement"] < 1.0 and run["first_flips"] >= 1
    firsts = [f["consequence"] for f in run["flips"]]
    assert firsts == sorted(firsts)  # first flips, then consequences
    assert all(f["margin"] is not None and f["margin"] >= 0 for f in run["flips"] if not f["consequence"])
    assert run["rows_flipped"] >= 1


def test_free_run_reports_runtime_stats(engine, tiny_model, tiny_config):
    rng = np.random.default_rng(1)
    ctx, _, x_T, streams = prepare_inputs(5 + rng.standard_normal((2, 30)), tiny_config, 4, 3)
    run = free_run(engine, tiny_model, NoiseSchedule(), ctx, x_T, SamplerConfig(steps=3), streams)
    assert run["runtime_stats"]["engine_calls"] == 3
    assert run["units"] == 3 * (2 * 4 * tiny_config.horizon + 2)


# -- the CLI -----------------------------------------------------------------------------------
def test_cli_help():
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0
    for word in ("--engine", "--checkpoint", "--json", "controller_agreement", "decision_agreement"):
        assert word in result.output


def test_cli_missing_engine(tmp_path):
    line = _one_line_error(CliRunner().invoke(cli, ["--engine", str(tmp_path / "nope.onnx")]))
    assert "nope" in line


def test_cli_without_a_findable_checkpoint_says_what_to_pass(tiny_artifact_without_weights, tmp_path):
    json_path = tmp_path / "v.json"  # an artifact that ships no weights, and no run folder to be found
    line = _one_line_error(CliRunner().invoke(cli, ["--engine", str(tiny_artifact_without_weights),
                                                    "--json", str(json_path)]))
    assert "--checkpoint" in line
    assert not json_path.exists()


def test_cli_bad_dataset_and_settings(tiny_artifact, tiny_checkpoint):
    base = ["--engine", str(tiny_artifact), "--checkpoint", str(tiny_checkpoint)]
    assert "--dataset" in _one_line_error(CliRunner().invoke(cli, base + ["--dataset", "no-such-data"]))
    assert "steps" in _one_line_error(CliRunner().invoke(cli, base + ["--steps", "0"]))
    assert "samples" in _one_line_error(CliRunner().invoke(cli, base + ["--samples", "0"]))


def test_cli_writes_the_report(tiny_artifact, tiny_checkpoint, tmp_path):
    json_path = tmp_path / "v.json"
    args = ["--engine", str(tiny_artifact), "--checkpoint", str(tiny_checkpoint), "--json", str(json_path),
            "--dataset", "exchange-rate", "--series", "2", "--samples", "8", "--steps", "6", "--quiet"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    report = json.loads(json_path.read_text())
    for key in ("encode_max_abs_err", "denoise_max_abs_err", "controller_agreement", "decision_agreement",
                "forecast_max_abs_err", "quantile_max_abs_err", "flips"):
        assert key in report
    assert report["encode_max_abs_err"] <= 1e-4 and report["controller_agreement"] == 1.0
    assert report["data"]["dataset"] == "exchange-rate" and report["series"] == 2
    assert "passed" in result.output.splitlines()[-1]
