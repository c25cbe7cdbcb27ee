"""The ONNX Runtime sampler against the independent PyTorch reference (evaluate/reference/sampler.py)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from dil.runtime import Forecaster  # noqa: E402
from dil.runtime.sampling.schedule import NoiseSchedule  # noqa: E402
from dil.evaluate.reference.sampler import dpm_solver_pp_update, reference_forecast  # noqa: E402


@pytest.fixture(scope="module")
def contexts(tiny_config):
    rng = np.random.default_rng(11)
    ctx = 5.0 + rng.standard_normal((3, tiny_config.context_length)).cumsum(axis=1)
    ctx[1, 2:5] = np.nan  # missing values take the observed-mask path in both
    return ctx


@pytest.mark.parametrize("order", [1, 2, 3])
def test_runtime_equals_torch_reference(tiny_artifact, tiny_model, contexts, order):
    """Same seed, same NumPy noise streams: samples agree to 1e-4 on the standardised scale."""
    keys = ["north", "south", 7]
    runtime = Forecaster.load(tiny_artifact, threads=1).predict_windows(
        contexts, num_samples=8, steps=10, seed=5, series_ids=keys, solver_order=order,
        lattice=False, cache=False,  # the plain sampler (the fast one is checked by dil.train's reference sampler)
    )
    ref = reference_forecast(tiny_model, NoiseSchedule(), contexts, num_samples=8, steps=10, seed=5,
                             series_ids=keys, solver_order=order)
    np.testing.assert_array_equal(runtime.loc, ref.loc)
    np.testing.assert_array_equal(runtime.scale, ref.scale)
    diff = np.abs(runtime.standardised() - ref.samples_std).max()
    assert diff <= 1e-4, f"max abs difference {diff:.3g} on the standardised scale"
    # Different seeds give clearly different samples, so the agreement above is not vacuous.
    other = reference_forecast(tiny_model, NoiseSchedule(), contexts, 8, 10, seed=6, series_ids=keys, solver_order=order)
    assert np.abs(other.samples_std - ref.samples_std).max() > 1e-2


def test_runtime_equals_torch_reference_on_the_time_grid(tiny_artifact, tiny_model, contexts):
    """spacing="time" reaches both samplers (the Forecaster as a setting, reference_forecast as an
    argument): they agree; the default (logsnr) grid gives clearly different samples."""
    keys = ["north", "south", 7]
    runtime = Forecaster.load(tiny_artifact, threads=1).predict_windows(
        contexts, num_samples=8, steps=10, seed=5, series_ids=keys, lattice=False, cache=False, spacing="time")
    ref = reference_forecast(tiny_model, NoiseSchedule(), contexts, 8, 10, seed=5, series_ids=keys, spacing="time")
    assert np.abs(runtime.standardised() - ref.samples_std).max() <= 1e-4
    logsnr = reference_forecast(tiny_model, NoiseSchedule(), contexts, 8, 10, seed=5, series_ids=keys)
    assert np.abs(logsnr.samples_std - ref.samples_std).max() > 1e-2


@pytest.mark.parametrize("order,expected", [(1, 4.0), (2, 8.0), (3, 16.0)])
def test_reference_update_has_the_order_of_the_method(order, expected):
    """The reference's own solver on Gaussian data (exact x0_hat, exact flow): local error O(h^(k+1))."""
    sch, s = NoiseSchedule(), 0.5
    x_T = torch.linspace(-3.0, 3.0, 7, dtype=torch.float64)

    def flow(k):
        std = lambda kk: np.sqrt(sch.alpha(kk) ** 2 * s**2 + sch.sigma(kk) ** 2)  # noqa: E731
        return x_T * float(std(k) / std(999.0))

    def x0(x, k):
        a, sg = float(sch.alpha(k)), float(sch.sigma(k))
        return a * s**2 / (a**2 * s**2 + sg**2) * x

    def local_error(h):
        lam = -1.0 + h * np.arange(4)
        k = sch.kappa_of_lambda(lam)
        t = lambda v: torch.tensor(float(v), dtype=torch.float64)  # noqa: E731
        m = [x0(flow(k[j]), k[j]) for j in (2, 1, 0)]
        out = dpm_solver_pp_update(flow(k[2]), m, t(lam[3]), [t(lam[2]), t(lam[1]), t(lam[0])],
                                   t(sch.alpha(k[3])), t(sch.sigma(k[3])), t(sch.sigma(k[2])), order)
        return float((out - flow(k[3])).abs().max())

    ratio = local_error(0.0125) / local_error(0.00625)
    assert expected * 0.9 < ratio < expected * 1.15, ratio
