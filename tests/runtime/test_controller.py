"""The fast sampler end to end on the tiny exported model (runtime/sampling/fast_controller.py, docs/sampler.md):
decisions obey their rules, are seeded and independent of the batch, the switches reproduce the
plain sampler exactly, and bad settings are refused before any engine call."""

from __future__ import annotations

import numpy as np
import pytest

from dil.runtime import Forecaster, OnnxEngine, SamplerConfig
from dil.runtime.sampling.cache_policy import core_positions
from dil.runtime.sampling.fast_controller import FastController
from dil.runtime.sampling.lattice import coarsest_scale
from dil.runtime.sampling.rng import SeriesStreams
from dil.runtime.sampling.contracts import Controller, Engine
from dil.runtime.sampling.full_controller import FullController
from dil.runtime.sampling.sampler import sample
from dil.runtime.inputs.scaling import context_features

G, N, STEPS = 3, 6, 8
KEYS = [7, 11, 5]
# Partial steps on the tiny model (H = 8): a small core, no change trigger, no event/probe fallbacks.
# Guard off: the untrained model's data predictions lie hundreds of standard deviations out, and
# held at the clip they would not change between steps (no probe error, no core event to test).
PARTIAL = dict(steps=STEPS, K=2, bucket=1, max_age=2, tau_0=1000.0, tau_warn=1000.0, probe_warn=1000.0,
               random_probe_ratio=0.3, full_fraction=1.0, R=1000, warmup_steps=1, final_full=False, x0_clip=0.0)


@pytest.fixture(scope="module")
def engine(tiny_artifact):
    return OnnxEngine.load(tiny_artifact, threads=1)


@pytest.fixture(scope="module")
def inputs(engine):
    rng = np.random.default_rng(0)
    z = rng.standard_normal((G, engine.config.context_length))
    return context_features(z), SeriesStreams(3, KEYS).initial_noise(N, engine.config.horizon)


def run(engine, inputs, rows=slice(None), keys=KEYS, seed=3, **settings):
    config = SamplerConfig(**settings)
    ctx, x_T = inputs
    ctl = FastController(config, record=True)
    result = sample(engine, engine.manifest.schedule, ctx[rows], x_T[rows], config, SeriesStreams(seed, keys), controller=ctl)
    return result, ctl


def test_engine_and_controllers_meet_their_written_contracts(engine):
    """The sampler calls engines and controllers only through contracts.py; the ONNX Runtime
    engine keeps no device cache and has no series limit."""
    config = SamplerConfig()
    assert isinstance(engine, Engine) and engine.max_batch is None and engine.device_cache(1, 2, 3) is None
    for controller in (FullController(config), FastController(config)):
        assert isinstance(controller, Controller)
    assert FullController(config).counters == {}


def test_controller_gets_its_streams_at_start_and_checks_them(engine, inputs):
    ctx, x_T = inputs
    config = SamplerConfig(**PARTIAL)
    with pytest.raises(ValueError, match="streams of 2 series for a batch of 3 series"):
        sample(engine, engine.manifest.schedule, ctx, x_T, config, SeriesStreams(3, KEYS[:2]))
    ctl = FastController(config)
    sample(engine, engine.manifest.schedule, ctx, x_T, config, SeriesStreams(3, KEYS), controller=ctl)
    np.testing.assert_array_equal(ctl.uniforms, SeriesStreams(3, KEYS).control_uniforms(STEPS, N, x_T.shape[2]))


@pytest.mark.parametrize("order", [1, 2, 3])
def test_switches_off_reproduce_the_plain_sampler_bit_for_bit(engine, inputs, order):
    config = SamplerConfig(steps=STEPS, solver_order=order, lattice=False, cache=False)
    ctx, x_T = inputs
    streams = SeriesStreams(0, KEYS)
    lean, engine.full_step = engine.full_step, False  # plain on the fast sampler's full-step graph (with keys/values)
    try:
        plain = sample(engine, engine.manifest.schedule, ctx, x_T, config, streams, controller=FullController(config))
    finally:
        engine.full_step = lean
    fast = sample(engine, engine.manifest.schedule, ctx, x_T, config, streams, controller=FastController(config))
    assert np.array_equal(plain.x0, fast.x0)
    assert fast.stats.tokens_computed == fast.stats.full_tokens and fast.stats.full_steps == STEPS


def test_core_and_staleness_bound_hold(engine, inputs):
    H = engine.config.horizon
    for fill in (False, True):
        result, ctl = run(engine, inputs, fill=fill, **PARTIAL)
        computed = np.stack([d["computed"] for d in ctl.decisions])  # [M, G, N, H]
        assert computed[:, :, :, core_positions(H, 2)].all()
        assert not computed.all()  # the cache did skip tokens
        reused = 0
        for i in range(STEPS):  # consecutive reuses never exceed max_age
            reused = np.where(computed[i], 0, reused + 1)
            assert reused.max() <= PARTIAL["max_age"]
        assert result.stats.tokens_computed == int(computed.sum())
        assert sum(result.stats.order_histogram) == G * N * H * STEPS


def test_probe_count_is_right(engine, inputs):
    H = engine.config.horizon
    _, ctl = run(engine, inputs, fill=False, **PARTIAL)
    total = 0
    for d in ctl.decisions[1:]:
        probes = d["margins"]["probes"]
        partial = ~d["series_full"]
        assert partial.any()
        selected = d["computed"] & ~probes
        n_c = H - selected.sum(-1)
        want = np.minimum(n_c, np.ceil(PARTIAL["random_probe_ratio"] * n_c - 1e-9))
        assert np.array_equal(probes.sum(-1)[partial], want[partial])
        assert not (probes & selected).any()
        total += int(probes.sum())
    assert ctl.counters["probes"] == total > 0


def fulls(ctl):
    return np.stack([d["series_full"] for d in ctl.decisions])  # [M, G]


def test_each_full_step_fallback_fires(engine, inputs):
    base = fulls(run(engine, inputs, **PARTIAL)[1])
    assert base[0].all() and not base[1:].any()  # only step 0 with every fallback off

    warm = fulls(run(engine, inputs, **{**PARTIAL, "warmup_steps": 3})[1])
    assert warm[:3].all() and not warm[3:].any()

    final = fulls(run(engine, inputs, **{**PARTIAL, "final_full": True})[1])
    assert final[-1].all() and not final[1:-1].any()

    every = fulls(run(engine, inputs, **{**PARTIAL, "R": 3})[1])
    assert np.array_equal(every.all(axis=1), [i % 3 == 0 for i in range(STEPS)])

    _, ctl = run(engine, inputs, **{**PARTIAL, "tau_warn": 1e-9})  # any core change is an event
    events = np.stack([d["margins"]["event"] for d in ctl.decisions[1:-1]]) > 0
    assert events.any()
    assert np.array_equal(fulls(ctl)[2:], events)

    _, ctl = run(engine, inputs, **{**PARTIAL, "probe_warn": 1e-9})  # any probe error warns
    warned = [np.nan_to_num(d["margins"].get("probe", np.full(G, np.nan)), nan=-1) > 0 for d in ctl.decisions[:-1]]
    assert np.array_equal(fulls(ctl)[1:], np.array(warned)) and np.array(warned).any()

    frac = fulls(run(engine, inputs, **{**PARTIAL, "full_fraction": 0.2})[1])
    assert frac.all()  # S_g >= 0.2 H always: a full call is as cheap


def test_cache_off_computes_everything_with_lattice_orders(engine, inputs):
    result, ctl = run(engine, inputs, steps=STEPS, cache=False)
    assert all(d["computed"].all() for d in ctl.decisions)
    assert result.stats.tokens_computed == result.stats.full_tokens
    orders = {int(o) for d in ctl.decisions[3:-1] for o in np.unique(d["order"])}
    assert len(orders) >= 2  # the lattice chose different orders for different tokens


def test_lattice_partitions_after_a_run(engine, inputs):
    H = engine.config.horizon
    _, ctl = run(engine, inputs, **{**PARTIAL, "steps": 12}, max_scales=3, refine_gap=0.0)
    s_max = coarsest_scale(H, 3)
    start = (np.arange(H) >> ctl.lvl) << ctl.lvl
    for s in range(s_max + 1):  # every token of a node carries the node's scale
        at = ctl.lvl == s
        assert np.all(np.take_along_axis(ctl.lvl, start, -1)[at] == s)
    assert ctl.counters["refinements"] > 0


def test_decisions_do_not_depend_on_the_batch(engine, inputs):
    together, ctl_all = run(engine, inputs, **PARTIAL)
    alone, ctl_one = run(engine, inputs, rows=slice(1, 2), keys=[KEYS[1]], **PARTIAL)
    order = [2, 0, 1]
    ctx, x_T = inputs
    shuffled, ctl_rev = run(engine, (ctx[order], x_T[order]), keys=[KEYS[j] for j in order], **PARTIAL)
    assert np.array_equal(alone.x0[0], together.x0[1])
    assert np.array_equal(shuffled.x0, together.x0[order])
    for a, b, c in zip(ctl_one.decisions, ctl_all.decisions, ctl_rev.decisions):
        assert np.array_equal(a["computed"][0], b["computed"][1])
        assert np.array_equal(a["order"][0], b["order"][1])
        assert np.array_equal(c["computed"], b["computed"][order])
    other_seed, _ = run(engine, inputs, seed=4, **PARTIAL)
    assert not np.array_equal(other_seed.x0, together.x0)  # the control stream matters


def test_forecaster_fast_default_is_seeded_and_batch_independent(tiny_artifact):
    fc = Forecaster.load(tiny_artifact, threads=1)
    rng = np.random.default_rng(1)
    ctx = rng.standard_normal((4, fc.context_length)) * 3 + 10
    kw = dict(num_samples=5, steps=6, seed=2, series_ids=[3, 1, 4, 1_000_003], K=2, bucket=1)
    a = fc.predict_windows(ctx, batch_series=4, **kw)
    b = fc.predict_windows(ctx, batch_series=1, **kw)
    c = fc.predict_windows(ctx[[3, 2, 1, 0]], **{**kw, "series_ids": kw["series_ids"][::-1]}, batch_series=3)
    assert np.array_equal(a.samples, b.samples) and np.array_equal(a.samples, c.samples[::-1])
    assert a.stats.tokens_computed < a.stats.full_tokens  # the fast sampler is the default


@pytest.mark.parametrize(
    "settings,match",
    [
        (dict(entropy_budget=-0.1), r"entropy_budget must be a number in \[0, 1\]"),
        (dict(max_solver_order=0), r"max_solver_order must be an integer in \[1, 3\]"),
        (dict(max_solver_order=4), r"max_solver_order must be an integer in \[1, 3\]"),
        (dict(steps=0), r"steps must be an integer in \[1, 1000\]"),
        (dict(random_probe_ratio=1.5), r"random_probe_ratio must be a number in \[0, 1\]"),
        (dict(K=-1), r"K must be an integer in \[0, 100000\]"),
        (dict(tau_0=0.0), r"tau_0 must be a number in \(0, 1000\]"),
        (dict(R=0), r"R must be an integer in \[1, 100000\]"),
        (dict(temperature=float("nan")), "temperature must be a number"),
        (dict(stability_threshold_low=0.6), "stability_threshold_low must be below stability_threshold_high"),
        (dict(cache="yes"), "cache must be true or false"),
        (dict(num_diffusion_steps=500), r"num_diffusion_steps must equal the model's training steps \(1000\)"),
        (dict(budget=0.1), "unknown sampler setting 'budget'"),
        (dict(spacing="linear"), r"^spacing must be one of logsnr, time, got 'linear'$"),
    ],
)
def test_bad_settings_are_refused_before_any_engine_call(tiny_artifact, settings, match):
    fc = Forecaster.load(tiny_artifact, threads=1)
    history = np.random.default_rng(0).standard_normal((40, 2))
    with pytest.raises(ValueError, match=match) as err:
        fc.predict(history, num_samples=2, **settings)
    assert "\n" not in str(err.value)
    assert fc.engine.stats.encode_calls == fc.engine.stats.denoise_calls == 0


def _csv(tmp_path, rows: int = 40):
    values = np.random.default_rng(2).standard_normal((rows, 2)) + 5
    path = tmp_path / "table.csv"
    path.write_text("a,b\n" + "\n".join(f"{x:.4f},{y:.4f}" for x, y in values) + "\n")
    return path


@pytest.mark.parametrize(
    "args,match",
    [
        (["--entropy-budget", "-1"], r"entropy_budget must be a number in \[0, 1\]"),
        (["--max-solver-order", "4"], r"max_solver_order must be an integer in \[1, 3\]"),
        (["--random-probe-ratio", "2"], r"random_probe_ratio must be a number in \[0, 1\]"),
        (["--steps", "0"], r"steps must be an integer in \[1, 1000\]"),
        (["--spacing", "uniform"], r"spacing must be one of logsnr, time, got 'uniform'"),
    ],
)
def test_dil_run_rejects_bad_settings_in_one_line(tiny_artifact, tmp_path, args, match):
    import re

    from click.testing import CliRunner

    from dil.runtime.cli.run import main

    out = tmp_path / "f.csv"
    result = CliRunner().invoke(main, ["--engine", str(tiny_artifact), "--input", str(_csv(tmp_path)), "--out", str(out), *args])
    assert result.exit_code != 0 and not out.exists()
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and re.search(match, lines[0]), result.output


def test_dil_run_stats_and_switches(tiny_artifact, tmp_path):
    from click.testing import CliRunner

    from dil.runtime.cli.run import main

    base = ["--engine", str(tiny_artifact), "--input", str(_csv(tmp_path)), "--samples", "4", "--steps", "5", "--stats"]
    fast = CliRunner().invoke(main, [*base, "--out", str(tmp_path / "fast.csv"), "--K", "2", "--bucket", "1",
                                     "--tau-0", "1000", "--tau-warn", "1000"])
    plain = CliRunner().invoke(main, [*base, "--out", str(tmp_path / "plain.csv"), "--no-lattice", "--no-cache"])
    assert fast.exit_code == 0 and plain.exit_code == 0, fast.output + plain.output
    for text in ("engine_calls", "token_fraction", "reuse_ratio", "full_steps", "order_histogram", "refinements",
                 "merges", "engine_seconds", "control_seconds"):
        assert text in fast.output
    assert "token_fraction     1.0000" in plain.output and "token_fraction     1.0000" not in fast.output
