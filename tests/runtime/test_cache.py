"""The E2-CRF refresh policy's pieces (runtime/sampling/cache_policy.py, docs/sampler.md sections 6-7) against
hand-worked numbers and plain-Python references."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dil.runtime.sampling import cache_policy as policy


@pytest.mark.parametrize("H,K,expected", [(24, 5, [2, 7, 12, 16, 21]), (8, 2, [2, 6]), (8, 1, [4]), (4, 9, [0, 1, 2, 3]), (8, 0, [])])
def test_core_positions_are_segment_centres(H, K, expected):
    assert policy.core_positions(H, K).tolist() == expected


def test_change_trigger_by_hand():
    # one series, two rows, three tokens
    x = np.array([[[1.0, 2.0, 2.0], [0.0, 0.0, 3.0]]])
    x_in = np.array([[[1.0, 1.0, 2.0], [0.0, 1.0, 0.0]]])
    x0 = np.array([[[1.0, 1.0, 0.0], [0.0, 1.0, 1.0]]])
    tau = np.array([0.2])
    trig, margin = policy.change_trigger(x, x_in, x0, tau, energy_eps=0.1)
    rms = [math.sqrt(9 / 3), math.sqrt(9 / 3)]
    delta = [[0, 1 / rms[0], 0], [0, 1 / rms[1], 3 / rms[1]]]
    share = [[0.5, 0.5, 0.0], [0.0, 0.5, 0.5]]
    thr = [[0.2 / (0.1 + e) for e in row] for row in share]
    want = [(delta[0][h] + delta[1][h]) / 2 - (thr[0][h] + thr[1][h]) / 2 for h in range(3)]
    assert margin[0, 0].tolist() == pytest.approx(want, rel=1e-6)
    assert trig.shape == x.shape
    assert trig[0, 0].tolist() == trig[0, 1].tolist() == [m > 0 for m in want]  # one decision per series


def test_draw_probes_count_and_choice():
    rng = np.random.default_rng(0)
    cand = rng.random((3, 4, 24)) < 0.7
    U2 = rng.random((3, 4, 24))
    for ratio in (0.0, 0.05, 0.3, 1.0):
        probes = policy.draw_probes(cand, U2, ratio)
        assert not (probes & ~cand).any()
        n_c = cand.sum(-1)
        assert np.array_equal(probes.sum(-1), np.minimum(n_c, np.ceil(ratio * n_c - 1e-9)))
        for g, n in np.ndindex(3, 4):  # the p candidates with the smallest uniforms
            p = probes[g, n].sum()
            order = sorted(np.nonzero(cand[g, n])[0], key=lambda h: (U2[g, n, h], h))
            assert set(order[:p]) == set(np.nonzero(probes[g, n])[0])


def test_fill_stalest_tops_rows_up():
    chosen = np.array([[[True, False, False, False, False], [False, False, True, True, False]]])
    age = np.array([[[0, 2, 5, 5, 1], [9, 0, 0, 0, 3]]])
    out = policy.fill_stalest(chosen, age, np.array([3]))
    assert out[0, 0].tolist() == [True, False, True, True, False]  # ties at age 5: lower positions
    assert out[0, 1].tolist() == [True, False, True, True, False]
    assert np.array_equal(policy.fill_stalest(chosen, age, np.array([1])), chosen)  # never removes


def test_subset_size_buckets_the_busiest_row():
    count = np.array([[5, 7, 6], [1, 1, 1], [23, 2, 2]])
    assert policy.subset_size(count, 4, 24).tolist() == [8, 4, 24]
    assert policy.subset_size(count, 1, 24).tolist() == [7, 1, 23]


def test_probe_error_median_and_feedback():
    old = np.zeros((2, 2, 4))
    new = np.ones((2, 2, 4))
    new[0, 0] = [1.0, 3.0, 1.0, 1.0]  # rms of row (0, 0) = sqrt(3)
    probes = np.zeros((2, 2, 4), dtype=bool)
    probes[0, 0, [0, 1]] = True  # errors 1/sqrt(3), 3/sqrt(3)
    probes[0, 1, 2] = True  # error 1
    err = policy.probe_error(new, old, probes)
    assert err[0] == pytest.approx(1.0)  # median of (0.577, 1.732, 1.0)
    assert np.isnan(err[1])  # series 1 drew no probe
    probes[0, 1, 2] = False
    assert policy.probe_error(new, old, probes)[0] == pytest.approx((1 + 3) / 2 / math.sqrt(3))  # even count
    tau = policy.feedback(np.array([0.1, 0.1]), np.array([0.3, np.nan]), 0.1, 0.15)
    assert tau.tolist() == pytest.approx([0.1 * policy.TIGHTEN, 0.1])
    relaxed = policy.feedback(np.array([0.1]), np.array([0.01]), 0.1, 0.15)
    assert relaxed[0] == pytest.approx(0.1 * policy.RELAX)
    floor = policy.feedback(np.array([0.051]), np.array([9.0]), 0.1, 0.15)
    assert floor[0] == pytest.approx(policy.TAU_RANGE[0] * 0.1)


def test_event_intensity_by_hand():
    prev = np.zeros((2, 1, 6))
    prev[:, 0, [1, 4]] = 3.0, 4.0
    new = prev.copy()
    new[0, 0, 1] = 0.0  # series 0's core changed by 3 of a norm of 5
    new[1, 0, 0] = 100.0  # series 1 changed only off the core
    ev = policy.event_intensity(new, prev, np.array([1, 4]))
    assert ev.tolist() == pytest.approx([3 / 5, 0.0], abs=1e-8)
    assert policy.event_intensity(new, prev, np.array([], dtype=np.int64)).tolist() == [0.0, 0.0]
