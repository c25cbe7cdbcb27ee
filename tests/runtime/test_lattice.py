"""The lattice controller's pieces (runtime/sampling/lattice.py, docs/sampler.md section 5) against hand-worked
examples and plain-Python references."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dil.runtime.sampling import lattice as lat


def partition_ok(lvl_row, H: int, s_max: int) -> bool:
    """Plain-Python check that one row's lvl describes a partition of [0, H) into aligned dyadic
    nodes of scale <= s_max."""
    h = 0
    while h < H:
        s = int(lvl_row[h])
        if not 0 <= s <= s_max or h % (1 << s):
            return False
        end = min(h + (1 << s), H)
        if any(int(lvl_row[t]) != s for t in range(h, end)):
            return False
        h = end
    return True


@pytest.mark.parametrize("H,max_scales,expected", [(24, 4, 3), (8, 4, 2), (1, 4, 0), (2, 4, 0), (3, 4, 1), (96, 4, 3), (24, 1, 0)])
def test_coarsest_scale_leaves_at_least_two_nodes(H, max_scales, expected):
    assert lat.coarsest_scale(H, max_scales) == expected
    if H >= 2:
        assert math.ceil(H / (1 << expected)) >= 2


def test_ceil_eps_ignores_float_noise():
    assert 0.07 * 100 > 7  # the hazard
    assert lat.ceil_eps(0.07 * 100) == 7
    assert lat.ceil_eps(0.2 * 16) == 4
    assert lat.ceil_eps(0.0) == 0


def test_node_geometry_of_a_truncated_partition():
    lvl = np.array([[[1, 1, 0, 0, 2, 2, 2, 2, 3, 3]]])  # nodes [0,2) [2] [3] [4,8) [8,10) of H=10
    start, size = lat.node_geometry(lvl)
    assert start[0, 0].tolist() == [0, 0, 2, 3, 4, 4, 4, 4, 8, 8]
    assert size[0, 0].tolist() == [2, 2, 1, 1, 4, 4, 4, 4, 2, 2]


def test_spectral_entropy_matches_a_per_block_loop():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 3, 11))
    for s in (2, 3):
        got = lat.spectral_entropy(x, s)
        size = 1 << s
        for g in range(2):
            for n in range(3):
                for b in range(got.shape[-1]):
                    v = [x[g, n, min(t, 10)] for t in range(b * size, (b + 1) * size)]
                    v = np.array(v) - np.mean(v)
                    p = np.abs(np.fft.fft(v)[1 : size // 2 + 1]) ** 2
                    p = p / p.sum()
                    ref = -sum(q * math.log(q) for q in p if q > 0) / math.log(size // 2)
                    assert got[g, n, b] == pytest.approx(ref, abs=1e-12)
    # a pure tone concentrates its power in one bin; a constant block has none
    tone = np.cos(2 * np.pi * np.arange(8) / 4)[None, None]
    assert lat.spectral_entropy(tone, 3)[0, 0, 0] == pytest.approx(0.0, abs=1e-12)
    assert lat.spectral_entropy(np.ones((1, 1, 8)), 3)[0, 0, 0] == 0.0
    assert np.all(lat.spectral_entropy(x, 1) == 0.0)


def test_token_signals_by_hand():
    h0 = np.array([[[1.0, 2.0], [3.0, 6.0]]])  # G=1, N=2, H=2
    h1 = np.array([[[0.0, 2.0], [3.0, 4.0]]])
    h2 = np.array([[[0.0, 1.0], [2.0, 4.0]]])
    sig = lat.token_signals([h0, h1, h2])
    assert sig[0, 0, 0].tolist() == [1.0, 2.0]  # population std over the 2 rows: |1-3|/2, |2-6|/2
    assert sig[1, 0].tolist() == [[1.0, 0.0], [0.0, 2.0]]
    # changes h0-h1, h1-h2 per token: row 0: (1, 0), (0, 1); variance of two values a, b = (a-b)^2/4
    assert sig[2, 0].tolist() == [[0.25, 0.25], [0.25, 1.0]]
    only_one = lat.token_signals([h0])
    assert np.all(only_one[1:] == 0.0)


def test_node_entropy_two_nodes_by_hand():
    # one row, H = 4, nodes [0, 2) and [2, 4); component values differ between the nodes
    values = np.zeros((4, 1, 1, 4))
    values[0] = [[[1.0, 1.0, 3.0, 3.0]]]  # score: node 2 higher -> z = -1, +1
    values[1] = [[[5.0, 5.0, 1.0, 1.0]]]  # solver: node 1 higher -> z = +1, -1
    values[3] = [[[0.2, 0.2, 0.2, 0.2]]]  # spectral: equal -> z = 0
    size = np.full((1, 1, 4), 2)
    w = (0.3, 0.1, 0.2, 0.2, 0.2)
    Hn = lat.node_entropy(values, size, w)
    z1 = (0.3 * -1 + 0.1 * 1) / 1.0
    sig = lambda z: 1 / (1 + math.exp(-z))  # noqa: E731
    assert Hn[0, 0].tolist() == pytest.approx([sig(z1), sig(z1), sig(-z1), sig(-z1)], abs=1e-15)


def test_adapt_refines_and_merges_by_hand():
    s_max = 2
    # H = 8: nodes [0,4) (s=2) and [4,8) (s=2); the first is high and differs from its neighbour
    lvl = np.full((1, 1, 8), 2)
    Hn = np.array([[[0.7] * 4 + [0.45] * 4]])
    new, r, m = lat.adapt(lvl, Hn, s_max, 0.6, 0.1, 0.4)
    assert new[0, 0].tolist() == [1, 1, 1, 1, 2, 2, 2, 2] and (r, m) == (1, 0)
    # siblings [0,2) and [2,4) both low merge back; [4,6) and [6,8) differ in level: no merge
    lvl = np.array([[[1, 1, 1, 1, 1, 1, 0, 0]]])
    Hn = np.array([[[0.3, 0.3, 0.2, 0.2, 0.3, 0.3, 0.5, 0.5]]])
    new, r, m = lat.adapt(lvl, Hn, s_max, 0.6, 0.1, 0.4)
    assert new[0, 0].tolist() == [2, 2, 2, 2, 1, 1, 0, 0] and (r, m) == (0, 1)
    # a high node equal to its neighbours is not refined (no contrast)
    lvl = np.full((1, 1, 8), 1)
    new, r, _ = lat.adapt(lvl, np.full((1, 1, 8), 0.9), s_max, 0.6, 0.1, 0.4)
    assert r == 0 and np.array_equal(new, lvl)


def test_adapt_always_keeps_a_partition():
    rng = np.random.default_rng(0)
    for H in (24, 8, 13, 3):
        s_max = lat.coarsest_scale(H, 4)
        lvl = np.full((3, 5, H), s_max)
        for _ in range(40):
            start, size = lat.node_geometry(lvl)
            node_h = rng.random((3, 5, H))
            Hn = np.take_along_axis(node_h, start, axis=-1)  # constant per node
            lvl, _, _ = lat.adapt(lvl, Hn, s_max, 0.6, 0.05, 0.4)
            for row in lvl.reshape(-1, H):
                assert partition_ok(row, H, s_max)


def test_select_nodes_counts_strata_and_determinism():
    rng = np.random.default_rng(3)
    H, s_max = 24, 3
    lvl = np.zeros((2, 4, H), dtype=np.int64)  # 24 single-token nodes per row
    Hn = rng.random((2, 4, H))
    U1 = rng.random((2, 4, H)) + 2.0**-54
    sel = lat.select_nodes(Hn, lvl, U1, s_max, 0.2, 5.0)
    assert np.all(sel.sum(-1) == 5)  # ceil(0.2 * 24)
    blocks = sel.reshape(2, 4, 3, 8).sum(-1)
    assert np.all(blocks <= 2) and np.all(blocks >= 1)  # quota ceil(5 / 3) = 2 per coarse block
    assert np.array_equal(sel, lat.select_nodes(Hn, lvl, U1, s_max, 0.2, 5.0))
    # a huge temperature picks the highest-entropy eligible nodes
    greedy = lat.select_nodes(Hn, lvl, U1, s_max, 1 / 24, 1e3)
    assert np.array_equal(np.argmax(greedy, -1), np.argmax(Hn, -1))
    # coarse partition: the whole node is marked; budget 0 selects nothing
    lvl3 = np.full((1, 1, H), 3)
    sel3 = lat.select_nodes(np.full((1, 1, H), 0.5), lvl3, U1[:1, :1], s_max, 0.2, 5.0)
    assert sel3.sum() == 8 and len(set(np.nonzero(sel3[0, 0])[0] // 8)) == 1
    assert not lat.select_nodes(Hn, lvl, U1, s_max, 0.0, 5.0).any()


def test_stalest_token_per_node():
    lvl = np.array([[[1, 1, 1, 1, 0, 0]]])  # nodes [0,2) [2,4) [4] [5]
    age = np.array([[[3, 5, 2, 2, 0, 7]]])
    assert lat.stalest_token(lvl, age)[0, 0].tolist() == [False, True, True, False, True, True]


def test_lattice_orders_thresholds():
    Hn = np.array([[[0.05, 0.3, 0.9, 0.55]]])
    assert lat.lattice_orders(Hn, 0, 11, 0.1, 0.5, 3)[0, 0].tolist() == [3, 2, 1, 1]
    assert lat.lattice_orders(Hn, 5, 11, 0.1, 0.5, 3)[0, 0].tolist() == [3, 2, 2, 2]  # u = Hn / 2
    assert lat.lattice_orders(Hn, 10, 11, 0.1, 0.5, 2)[0, 0].tolist() == [2, 2, 2, 2]  # u = 0, capped
