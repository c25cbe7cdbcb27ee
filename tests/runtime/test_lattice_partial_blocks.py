"""The lattice on horizons that do not fill its coarsest blocks (docs/sampler.md section 5.6).

With 2 <= T <= 2^max_scales tokens every row starts with two coarse nodes, and a truncated last
node (T = 6: [4, 6)) stays one node when it refines, its second child being empty. A row with two
active nodes standardises every entropy component to exactly -1 or +1, so whenever the weighted
signs cancel Hn is 1/2 in exact arithmetic: on merge_threshold = 1/2, and u = 0.1 =
stability_threshold_low at i = 16 of M = 21. Rounding put that 1/2 at 0.5 - 1.1e-16 in the NumPy
runtime and 0.5 + 3.3e-16 in the torch reference, so the two merged differently and the shipped
horizon_patch = 4 model (T = 6) failed its controller check. Both now guard every lattice threshold
by 1e-9. Checked by hand-worked ties on both implementations and by the controller check (both
controllers fed the same network outputs) of small random models whose horizons leave the coarsest
blocks partial, which must agree on every decision and every partition.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from dil.evaluate.reference import lattice as ref_lattice  # noqa: E402
from dil.evaluate.reference.sampler import StepDecision  # noqa: E402
from dil.evaluate.validation_report import (  # noqa: E402
    LockstepEngine,
    RecordingController,
    compare_decisions,
    reference_sampler,
    runtime_controller,
)
from dil.runtime.sampling.rng import SeriesStreams  # noqa: E402
from builders import patch_model  # noqa: E402
from dil.runtime.sampling import lattice as lat  # noqa: E402
from dil.runtime.sampling.config import SamplerConfig  # noqa: E402
from dil.runtime.sampling.schedule import NoiseSchedule  # noqa: E402
from dil.runtime.inputs.scaling import context_features  # noqa: E402

WEIGHTS = (0.3, 0.3, 0.2, 0.2, 0.0)  # the defaults: 0.3 - 0.3 + 0.2 - 0.2 = 0
TWO_NODES = [2, 2, 2, 2, 1, 1]  # T = 6, s_max = 2: node (2, 0) = [0, 4) and (1, 2) = [4, 6), sibling empty
ULP_BELOW, ULP_ABOVE = 0.5 - 2.0**-54, 0.5 + 2.0**-53  # the neighbours of 1/2


def _cfg(**over):
    c = SamplerConfig()
    return SimpleNamespace(refine_threshold=c.refine_threshold, refine_gap=c.refine_gap,
                           merge_threshold=c.merge_threshold, stability_threshold_low=c.stability_threshold_low,
                           stability_threshold_high=c.stability_threshold_high,
                           max_solver_order=c.max_solver_order, **over)


def _both_adapt(lvl, Hn):
    """(runtime lvl, merges), (reference lvl, merges) for one row: lvl, Hn lists of T values."""
    lv, h = np.array([[lvl]], dtype=np.int64), np.array([[Hn]], dtype=np.float64)
    cfg = _cfg()
    new, _, merges = lat.adapt(lv, h, 2, cfg.refine_threshold, cfg.refine_gap, cfg.merge_threshold)
    ref, _, ref_merges, _ = ref_lattice.adapt(torch.from_numpy(lv), torch.from_numpy(h), cfg, 2)
    return (new[0, 0].tolist(), merges), (ref[0, 0].tolist(), int(ref_merges.sum()))


def test_two_nodes_whose_weighted_signs_cancel_have_entropy_one_half_up_to_rounding():
    """Node A above node B in score and temporal, below in solver and spectral: every z is +-1 and
    z = 0.3 - 0.3 + 0.2 - 0.2 = 0, so Hn = 1/2 exactly in exact arithmetic; the runtime's float64
    lands one ulp below it, where an unguarded `Hn < 0.5` merges [4, 6) with its empty sibling."""
    A, B = [0.96, 0.48, 0.54, 0.2], [0.87, 1.61, 0.27, 1.2]
    values = np.array([[a] * 4 + [b] * 2 for a, b in zip(A, B)], dtype=np.float64)[:, None, None, :]
    _, size = lat.node_geometry(np.array([[TWO_NODES]]))
    Hn = lat.node_entropy(values, size, WEIGHTS)
    assert np.abs(Hn - 0.5).max() <= 4e-16 and (Hn < 0.5).all()
    (rt, rt_merges), (ref, ref_merges) = _both_adapt(TWO_NODES, Hn[0, 0].tolist())
    assert rt == ref == TWO_NODES and rt_merges == ref_merges == 0


@pytest.mark.parametrize("hn", [ULP_BELOW, 0.5, ULP_ABOVE, 0.5 - 5e-10])
def test_a_tie_on_the_merge_threshold_merges_in_neither(hn):
    """Within 1e-9 of merge_threshold = 0.5 a node is not low: no merge, runtime and reference."""
    (rt, rt_merges), (ref, ref_merges) = _both_adapt(TWO_NODES, [hn] * 6)
    assert rt == ref == TWO_NODES and rt_merges == ref_merges == 0


def test_below_the_guard_the_truncated_node_merges_with_its_empty_sibling():
    """Hn = 0.5 - 2e-9 is low: (1, 2) = [4, 6) and its empty sibling (1, 3) merge into (2, 1)."""
    (rt, rt_merges), (ref, ref_merges) = _both_adapt(TWO_NODES, [0.5 - 2e-9] * 6)
    assert rt == ref == [2] * 6 and rt_merges == ref_merges == 1


def test_refine_threshold_and_gap_ties_do_not_refine():
    """Hn within 1e-9 above refine_threshold = 0.7, or a gap within 1e-9 above refine_gap = 0.1: no
    refine; clear of the guard (1e-8): node (2, 0) refines into (1, 0), (1, 1), in both
    implementations. Node (1, 2) stays (0.55: neither low nor high)."""
    cases = [([0.7 + 1e-10] * 4 + [0.55] * 2, TWO_NODES),
             ([0.75] * 4 + [0.65 - 1e-10] * 2, TWO_NODES),
             ([0.7 + 1e-8] * 4 + [0.55] * 2, [1] * 6),
             ([0.75] * 4 + [0.65 - 1e-8] * 2, [1] * 6)]
    for Hn, want in cases:
        (rt, _), (ref, _) = _both_adapt(TWO_NODES, Hn)
        assert rt == ref == want, Hn


@pytest.mark.parametrize("hn", [ULP_BELOW, 0.5, ULP_ABOVE])
def test_an_order_tie_takes_the_order_above_it(hn):
    """i = 16 of M = 21: u = Hn (1 - 0.8) = 0.1 = stability_threshold_low in exact arithmetic, where
    the rule gives order 2 (u < low fails); float64 has 1 - 16/20 = 0.19999999999999996, so an
    unguarded comparison gave 3 at Hn = 0.5. Both implementations now give 2."""
    cfg = _cfg()
    Hn = np.full((1, 1, 6), hn)
    rt = lat.lattice_orders(Hn, 16, 21, cfg.stability_threshold_low, cfg.stability_threshold_high, 3)
    ref, _ = ref_lattice.lattice_orders(torch.from_numpy(Hn), 16, 21, cfg)
    assert rt.tolist() == ref.tolist() == [[[2] * 6]]


# -- the controller check of small random models -------------------------------------------------
def _controller_check(horizon: int, patch: int, steps: int, seed: int, G: int = 2, N: int = 16):
    """Runtime and reference controllers in lockstep on the same network outputs (as dil-validate's
    controller check) -> (runtime decisions, reference decisions, lockstep engine)."""
    from dil.runtime.sampling.sampler import sample

    model = patch_model(horizon, patch, seed=2)
    z = np.random.default_rng(seed).standard_normal((G, 48)).cumsum(axis=1) / 4
    ctx = context_features(z)
    streams = SeriesStreams(seed, range(G))
    x_T = streams.initial_noise(N, horizon)
    config = SamplerConfig(steps=steps)
    ref = reference_sampler(model, NoiseSchedule(), ctx, x_T, config, streams)
    from dil.export.graph_check import TorchGraphs

    engine = LockstepEngine(ref, TorchGraphs(model), model.config)
    rec = RecordingController(runtime_controller(config), before_plan=engine.advance)
    sample(engine, NoiseSchedule(), ctx, x_T, config, streams, controller=rec)
    return rec.decisions, ref.decisions, engine


# (horizon, horizon_patch, steps, seed): T = 6 as the shipped model (blocks [0, 4), [4, 6)), T = 6
# one step per token, T = 10 ([0, 8), [8, 10)), and T = 8 (full blocks) at M = 21 for the order tie.
# Each of them disagreed before the guard (controller agreement 0.996, 0.998, 0.998, 0.997).
CASES = [(24, 4, 20, 2), (6, 1, 20, 0), (40, 4, 20, 0), (32, 4, 21, 0)]


@pytest.mark.parametrize("horizon,patch,steps,seed", CASES)
def test_controllers_agree_on_every_decision_and_partition(horizon, patch, steps, seed):
    rt, ref, engine = _controller_check(horizon, patch, steps, seed)
    cmp = compare_decisions(rt, ref)
    assert cmp["agreement"] == 1.0, cmp["flips"][:3]
    assert cmp["flips_total"] == 0 and engine.mismatched_calls == 0
    T = horizon // patch
    for a, b in zip(rt, ref):
        np.testing.assert_array_equal(a.scale, b.scale)
    # The lattice really moved, and rows sat in the two-node partitions the ties come from.
    scales = np.stack([d.scale for d in ref])  # [M, G, N, T]
    assert (scales != scales[:1]).any()
    nodes = (np.arange(T) == (np.arange(T) >> scales) << scales).sum(axis=-1)
    assert (nodes[1:] == 2).any()


def test_a_partition_that_parts_is_listed_first_with_its_margin():
    """G = 1, N = 2, T = 6, three steps. Row 1's partition parts at step 1 (no decision differs
    there) and its orders differ at step 2: the `scale` flip is the first flip, at the first token
    that differs, with the reference's lattice margin; the order flip after it is a consequence.
    Units (and so agreement) count only tokens and series: 3 x (12 + 1) = 39, 37 agree."""
    ones, twos = np.ones((1, 2, 6), bool), np.full((1, 2, 6), 2)
    scale = np.array([[TWO_NODES, TWO_NODES]])
    merged = scale.copy()
    merged[0, 1, 4:] = 2
    lattice_margin = np.full((1, 2, 6), 0.3)
    lattice_margin[0, 1] = 2e-16
    ref = [StepDecision(ones, np.ones_like(twos), np.ones(1, bool), {}, scale),
           StepDecision(ones, twos, np.zeros(1, bool), {"lattice": lattice_margin}, scale),
           StepDecision(ones, twos, np.zeros(1, bool), {}, scale)]
    rt_orders = twos.copy()
    rt_orders[0, 1, 4:] = 3
    rt = [StepDecision(ones, np.ones_like(twos), np.ones(1, bool), {}, scale),
          StepDecision(ones, twos, np.zeros(1, bool), {}, merged),
          StepDecision(ones, rt_orders, np.zeros(1, bool), {}, merged)]
    cmp = compare_decisions(rt, ref)
    assert cmp["units"] == 39 and cmp["agreement"] == pytest.approx(37 / 39)
    assert cmp["first_flips"] == 1 and cmp["flips_total"] == 3
    first = cmp["flips"][0]
    assert (first["decision"], first["step"], first["sample"], first["token"]) == ("scale", 1, 1, 4)
    assert (first["runtime"], first["reference"], first["margin"]) == (2, 1, 2e-16)
    assert all(f["consequence"] and f["decision"] == "order" for f in cmp["flips"][1:])
    assert cmp["rows_flipped"].tolist() == [[False, True]]
