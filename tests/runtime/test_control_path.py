"""The plain sampler's lean control path (issue 11, control share) gives the numbers of the general
path bit for bit: the solver's one-order step, the lean graph's input buffer, and the token
cache's full-step store (eps and x_in formed when first read)."""

from __future__ import annotations

import numpy as np
import pytest

from dil.runtime.sampling.parametrisation import to_x0_eps
from dil.runtime.sampling.sampler import FullInputs, gather_inputs
from dil.runtime.sampling.schedule import NoiseSchedule
from dil.runtime.sampling.solver import DPMSolverPP
from dil.runtime.sampling.step_plan import StepPlan
from dil.runtime.sampling.token_cache import TokenCache, token_mean


@pytest.mark.parametrize("order", [1, 2, 3])
def test_one_order_step_equals_the_per_token_step(order):
    rng = np.random.default_rng(0)
    a, b = DPMSolverPP(NoiseSchedule(), 6), DPMSolverPP(NoiseSchedule(), 6)
    x = rng.standard_normal((2, 3, 8))
    xa = xb = x
    for _ in range(6):
        x0 = rng.standard_normal(x.shape)
        xa = a.step(xa, x0, order)
        xb = b.step(xb, x0, np.full(x.shape, order))
        assert np.array_equal(xa, xb)


def test_solver_tables_are_shared_and_read_only():
    a, b = DPMSolverPP(NoiseSchedule(), 7), DPMSolverPP(NoiseSchedule(), 7)
    assert a.kappas is b.kappas and not a.sigmas.flags.writeable
    np.testing.assert_array_equal(a.lambdas, NoiseSchedule().lam(NoiseSchedule().sampling_grid(7)))
    with pytest.raises(ValueError, match="decreasing"):
        DPMSolverPP(NoiseSchedule(), kappas=[10.0, 20.0])


@pytest.mark.parametrize("Ph, Fk", [(4, 3), (1, 0), (2, 1)])
def test_full_inputs_buffer_equals_the_gather(Ph, Fk):
    rng = np.random.default_rng(1)
    G, N, T = 2, 3, 5
    feat = None
    if Fk:
        feat = np.zeros((G, T + 1, Ph, Fk), np.float32)
        feat[:, :T] = rng.standard_normal((G, T, Ph, Fk))
    buf = FullInputs(feat, G, N, T, Ph)
    pos = np.broadcast_to(np.arange(T), (G, N, T))
    for _ in range(2):  # the buffer is rewritten, not appended to
        x = rng.standard_normal((G, N, T * Ph))
        x_pad = np.zeros((G, N, T + 1, Ph))
        x_pad[:, :, :T] = x.reshape(G, N, T, Ph)
        got = buf(x)
        assert got.dtype == np.float32 and np.array_equal(got, gather_inputs(x_pad, feat, pos))


@pytest.mark.parametrize("prediction", ["v", "epsilon"])
def test_full_store_then_partial_store_equals_the_formulas(prediction):
    """A full step's x0 (clipped), eps and x_in are the formulas' values; a partial step after it
    keeps the full step's values on the tokens it does not compute."""
    rng = np.random.default_rng(2)
    G, N, T, Ph, clip = 1, 2, 3, 2, 1.0
    cache = TokenCache(1, G, N, T, 4, x0_clip=clip, prediction=prediction, patch=Ph)
    full = StepPlan(pos_sub=np.broadcast_to(np.arange(T), (G, N, T)), order=1, full=True)
    x1, out1 = rng.standard_normal((G, N, T * Ph)), rng.standard_normal((G, N, T, Ph)).astype(np.float32)
    kv = np.zeros((1, G, N, T, 4), np.float32)
    cache.store(full, full.computed(T), x1, out1, kv, kv, 0.6, 0.8)
    x0, eps = to_x0_eps(out1.reshape(G, N, -1).astype(np.float64), x1, 0.6, 0.8, prediction)
    assert np.abs(x0).max() > clip  # the guard acts
    np.testing.assert_array_equal(cache.x0_steps, np.clip(x0, -clip, clip))
    np.testing.assert_array_equal(cache.eps, eps)
    np.testing.assert_array_equal(cache.x_in, token_mean(x1, Ph))
    assert (cache.age == 0).all() and cache.valid.all()

    again = TokenCache(1, G, N, T, 4, x0_clip=clip, prediction=prediction, patch=Ph)
    again.store(full, full.computed(T), x1, out1, kv, kv, 0.6, 0.8)  # eps, x_in never read before the next store
    part = StepPlan(pos_sub=np.array([[[1, T], [0, 2]]]), order=1)
    computed = part.computed(T)
    x2, out2 = rng.standard_normal((G, N, T * Ph)), rng.standard_normal((G, N, 2, Ph)).astype(np.float32)
    kv2 = np.ones((1, G, N, 2, 4), np.float32)
    for c in (cache, again):
        c.store(part, computed, x2, out2, kv2, kv2, 0.5, 0.9)
    np.testing.assert_array_equal(again.eps, cache.eps)
    np.testing.assert_array_equal(again.x_in, cache.x_in)
    np.testing.assert_array_equal(again.x0_steps, cache.x0_steps)
    keep = ~np.repeat(computed, Ph, axis=-1)
    np.testing.assert_array_equal(again.eps[keep], eps[keep])  # reused tokens: the full step's eps
    np.testing.assert_array_equal(again.x_in[~computed], token_mean(x1, Ph)[~computed])
