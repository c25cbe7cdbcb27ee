"""The PyTorch reference of the whole sampler (evaluate/reference/sampler.py): token subsets, cache, orders."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from builders import ScriptedReference, ScriptedRuntime, runtime_positions, scripted  # noqa: E402
from dil.runtime.sampling.rng import SeriesStreams  # noqa: E402
from dil.runtime.sampling.step_plan import StepPlan  # noqa: E402
from dil.runtime.inputs.scaling import context_features  # noqa: E402
from dil.runtime.sampling.schedule import NoiseSchedule  # noqa: E402
from dil.evaluate.reference.sampler import (  # noqa: E402
    ReferenceCache,
    ReferencePlan,
    ReferenceSampler,
    reference_sample,
    subset_positions,
)

STEPS = 8
STREAMS = SeriesStreams(0, range(2))  # the scripted controllers draw nothing from them


@pytest.fixture(scope="module")
def inputs(tiny_config):
    rng = np.random.default_rng(3)
    z = rng.standard_normal((2, tiny_config.context_length))
    z[0, 3:6] = np.nan
    return context_features(z), rng.standard_normal((2, 5, tiny_config.horizon))


@pytest.mark.parametrize("order", [1, 2, 3])
def test_full_controller_reproduces_the_plain_reference_exactly(tiny_model, inputs, order):
    ctx, x_T = inputs
    plain = reference_sample(tiny_model, NoiseSchedule(), ctx, x_T, STEPS, order)
    ref = ReferenceSampler(tiny_model, NoiseSchedule(), ctx, x_T, STEPS, STREAMS, solver_order=order, bucket=4)
    np.testing.assert_array_equal(ref.run(), plain)
    d = ref.decisions
    assert len(d) == STEPS and all(s.computed.all() and s.full.all() for s in d)
    # The order each update used: capped by the history, 1 on the last step.
    assert [int(s.order.max()) for s in d] == [min(order, i + 1) for i in range(STEPS - 1)] + [1]


def test_subset_positions_are_ascending_then_padding():
    computed = torch.tensor([[[True, False, True, False, False, True],
                              [False, False, False, True, False, False]]])
    np.testing.assert_array_equal(subset_positions(computed, bucket=1).numpy(), [[[0, 2, 5], [3, 6, 6]]])
    # Bucketed to a multiple of 4, capped at H.
    np.testing.assert_array_equal(subset_positions(computed, bucket=4).numpy(), [[[0, 2, 5, 6], [3, 6, 6, 6]]])
    assert subset_positions(torch.ones((1, 1, 6), dtype=torch.bool), bucket=4).shape[-1] == 6


def test_cache_ages_validity_and_x0_hat():
    cache = ReferenceCache(layers=1, G=1, N=1, H=3, D=2)
    x = torch.tensor([[[1.0, 2.0, 3.0]]], dtype=torch.float64)
    for step, mask in enumerate(([True, True, False], [False, True, False], [False, False, True])):
        computed = torch.tensor([[mask]])
        pos = subset_positions(computed)
        S = pos.shape[-1]
        eps = torch.full((1, 1, S, 1), 0.5)
        kv = torch.full((1, 1, 1, S, 2), float(step + 1))
        cache.store(computed, pos, x, eps, kv, kv, alpha=torch.tensor(0.8, dtype=torch.float64),
                    sigma=torch.tensor(0.6, dtype=torch.float64))
    assert cache.age.tolist() == [[[2, 1, 0]]]
    assert cache.valid.all()
    np.testing.assert_allclose(cache.x0_hat.numpy(), (x.numpy() - 0.6 * 0.5) / 0.8)
    assert cache.k[0, 0, 0, :, 0].tolist() == [1.0, 2.0, 3.0]  # the step each token was last computed


def test_scripted_subsets_match_the_runtime_with_shared_outputs(tiny_model, tiny_config, inputs):
    """The runtime sampler (cache, per-token orders, padding) and the reference, fed the same network
    outputs: same decisions, samples equal to float64 rounding."""
    from dil.export.graph_check import TorchGraphs
    from dil.evaluate.validation_report import LockstepEngine, RecordingController, compare_decisions
    from dil.runtime.sampling.config import SamplerConfig
    from dil.runtime.sampling.sampler import sample

    ctx, x_T = inputs
    masks, orders = scripted(*x_T.shape, STEPS)
    ref = ReferenceSampler(tiny_model, NoiseSchedule(), ctx, x_T, STEPS, STREAMS, ScriptedReference(masks, orders), bucket=4)
    engine = LockstepEngine(ref, TorchGraphs(tiny_model), tiny_config)
    rec = RecordingController(ScriptedRuntime(masks, orders), before_plan=engine.advance)
    result = sample(engine, NoiseSchedule(), ctx, x_T, SamplerConfig(steps=STEPS), STREAMS, controller=rec)
    assert engine.mismatched_calls == 0 and engine.input_max_abs_diff == 0.0
    assert compare_decisions(rec.decisions, ref.decisions)["agreement"] == 1.0
    x_ref = ref.x.numpy()
    assert np.abs(result.x0 - x_ref).max() <= 1e-9 * max(1.0, np.abs(x_ref).max())
    # Reused tokens really held their x0_hat: the result differs from the full sampler's.
    full = reference_sample(tiny_model, NoiseSchedule(), ctx, x_T, STEPS, 2)
    assert np.abs(full - x_ref).max() > 1e-3


def test_scripted_subsets_free_run_onnx_vs_torch(tiny_artifact, tiny_model, inputs):
    """Each with its own network (ONNX Runtime vs torch): the same fixed decisions give samples
    within 1e-4 (standardised scale)."""
    from dil.runtime import OnnxEngine
    from dil.runtime.sampling.config import SamplerConfig
    from dil.runtime.sampling.sampler import sample

    ctx, x_T = inputs
    masks, orders = scripted(*x_T.shape, STEPS, seed=1)
    engine = OnnxEngine.load(tiny_artifact, threads=1)
    result = sample(engine, NoiseSchedule(), ctx, x_T, SamplerConfig(steps=STEPS), STREAMS,
                    controller=ScriptedRuntime(masks, orders))
    ref = ReferenceSampler(tiny_model, NoiseSchedule(), ctx, x_T, STEPS, STREAMS, ScriptedReference(masks, orders), bucket=4)
    assert np.abs(result.x0 - ref.run()).max() <= 1e-4
    assert result.stats.tokens_computed == int(masks.sum())


# -- the reference controller's own math (docs/sampler.md), hand-worked -----------------------
from dil.evaluate.reference import lattice as rl  # noqa: E402
from dil.evaluate.reference.controller import control_uniforms, core_mask, numpy_median  # noqa: E402


class Settings:
    """The documented lattice defaults (docs/sampler.md section 1) as plain attributes."""

    refine_threshold, refine_gap, merge_threshold = 0.6, 0.1, 0.4
    entropy_budget, temperature = 0.2, 5.0
    stability_threshold_low, stability_threshold_high, max_solver_order = 0.1, 0.5, 3


def _is_partition(lvl: torch.Tensor) -> bool:
    """Every token of a node carries the node's scale and nodes start at multiples of 2^s."""
    start, size, _ = rl.node_geometry(lvl)
    for s_ in range(int(lvl.max()) + 1):
        at = lvl == s_
        if not bool(((start % (1 << s_)) == 0)[at].all()):
            return False
    covered = torch.gather(lvl, -1, start) == lvl  # each token's node head has the same scale
    return bool(covered.all()) and bool(((start + size) <= lvl.shape[-1]).all())


def test_core_tokens_and_coarsest_scale():
    assert core_mask(5, 8).nonzero().flatten().tolist() == [0, 2, 4, 5, 7]
    assert core_mask(30, 4).all() and not core_mask(0, 4).any()
    assert [rl.top_scale(4, H) for H in (1, 2, 8, 9, 24, 144)] == [0, 0, 2, 3, 3, 3]


def test_median_is_numpys_and_uniforms_are_the_control_stream():
    from dil.runtime.sampling.rng import series_stream

    rng = np.random.default_rng(0)
    values, mask = rng.random((3, 4, 5)), rng.random((3, 4, 5)) < 0.3
    mask[2] = False
    mask[1, 0, :2] = True
    got = numpy_median(torch.from_numpy(values), torch.from_numpy(mask)).numpy()
    np.testing.assert_array_equal(got[:2], [np.median(values[g][mask[g]]) for g in range(2)])
    assert np.isnan(got[2])
    streams = SeriesStreams(7, [3, 11])
    u = control_uniforms(streams, 4, 2, 5)
    assert u.shape == (2, 3, 2, 2, 5) and float(u.min()) > 0
    np.testing.assert_array_equal(u[1].numpy(), series_stream(7, 11, "control").random((3, 2, 2, 5)) + 2.0**-54)
    # A later block of samples: the next draws of the stream; the runtime reads the same values.
    later = control_uniforms(streams.from_sample(2), 4, 3, 5)
    raw = series_stream(7, 11, "control").random(3 * 2 * 5 * 5) + 2.0**-54
    np.testing.assert_array_equal(later[1].numpy().ravel(), raw[3 * 2 * 2 * 5:])
    np.testing.assert_array_equal(later.numpy(), streams.from_sample(2).control_uniforms(4, 3, 5))


def test_spectral_entropy_of_flat_pure_and_noisy_nodes():
    t = torch.arange(8, dtype=torch.float64)
    rows = torch.stack([torch.full((8,), 3.0), torch.cos(np.pi * t), torch.from_numpy(np.random.default_rng(1).standard_normal(8))])
    ent = rl.spectral_entropy(rows[None], torch.full((1, 3, 8), 3), s_max=3)[0, :, 0]
    assert ent[0] == 0.0 and abs(float(ent[1])) < 1e-12  # flat: no power; Nyquist only: one bin
    assert 0.5 < float(ent[2]) <= 1.0
    assert rl.spectral_entropy(rows[None], torch.full((1, 3, 8), 1), s_max=3).abs().max() == 0  # s <= 1: 0


def test_adapt_keeps_a_partition_and_selection_takes_k_nodes_per_row():
    rng = np.random.default_rng(2)
    G, N, H, s_max = 2, 6, 24, 3
    lvl = torch.full((G, N, H), s_max, dtype=torch.int64)
    ops = np.zeros(2, dtype=np.int64)
    for _ in range(12):
        start, _, _ = rl.node_geometry(lvl)
        node_h = torch.from_numpy(rng.random((G, N, H)))
        Hn = torch.gather(node_h, -1, start)  # one value per node
        lvl, refined, merged, _ = rl.adapt(lvl, Hn, Settings, s_max)
        ops += [int(refined.sum()), int(merged.sum())]
        assert _is_partition(lvl)
    assert ops.min() > 0  # both rules fired
    start, _, heads = rl.node_geometry(lvl)
    Hn = torch.gather(torch.from_numpy(rng.random((G, N, H))), -1, start)
    nodes, margin = rl.select(Hn, lvl, torch.from_numpy(rng.random((G, N, H))), Settings, s_max)
    k = torch.ceil(0.2 * heads.sum(-1) - 1e-9)
    assert torch.equal(nodes.sum(-1), k.to(torch.int64)) and bool((nodes <= heads).all())
    assert bool((margin >= 0).all())
    # Each selected node refreshes exactly one token: its stalest.
    age = torch.from_numpy(rng.integers(0, 5, (G, N, H)))
    prio = rl.priority_tokens(nodes, lvl, age)
    assert torch.equal(prio.sum(-1), nodes.sum(-1))


def test_lattice_orders_follow_the_stability_thresholds():
    Hn = torch.tensor([0.05, 0.3, 0.9], dtype=torch.float64)
    order, _ = rl.lattice_orders(Hn, 0, 11, Settings)
    assert order.tolist() == [3, 2, 1]
    order, _ = rl.lattice_orders(Hn, 8, 11, Settings)  # u = Hn * 0.2
    assert order.tolist() == [3, 3, 2]


def test_core_follow_weights_interpolate_like_numpy():
    from dil.evaluate.reference.controller import follow_weights

    for K, H in ((5, 8), (3, 24), (1, 24), (7, 144)):
        core = core_mask(K, H)
        pos = core.nonzero().flatten().numpy()
        eye = np.eye(len(pos))
        want = np.stack([np.interp(np.arange(H), pos, eye[k]) for k in range(len(pos))])
        np.testing.assert_array_equal(follow_weights(core, H).numpy(), want)


@pytest.mark.parametrize("spacing", ["logsnr", "time"])
def test_forecaster_fast_sampler_equals_reference_forecast(tiny_artifact, tiny_model, tiny_config, spacing):
    """The public paths end to end: Forecaster (named series, batches of 2) and reference_forecast
    with the same settings (the step spacing included) draw the same noise and control streams and
    agree within 1e-4."""
    from dil.runtime import Forecaster
    from dil.runtime.sampling.config import SamplerConfig
    from dil.evaluate.reference.sampler import reference_forecast

    rng = np.random.default_rng(11)
    ctx = 5.0 + rng.standard_normal((3, tiny_config.context_length)).cumsum(axis=1)
    keys = ["north", "south", 7]
    config = SamplerConfig(steps=STEPS, K=2, bucket=1, full_fraction=1.0, tau_0=3.0, R=100, x0_clip=0.0,
                           spacing=spacing)
    rt = Forecaster.load(tiny_artifact, threads=1).predict_windows(ctx, 8, seed=5, series_ids=keys,
                                                                  batch_series=2, config=config)
    ref = reference_forecast(tiny_model, NoiseSchedule(), ctx, 8, STEPS, seed=5, series_ids=keys, config=config)
    assert rt.stats.token_fraction < 0.8  # tokens were reused
    assert np.abs(rt.standardised() - ref.samples_std).max() <= 1e-4
