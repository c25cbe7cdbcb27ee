"""Horizon patch tokens in the PyTorch reference samplers and in dil-validate (docs/sampler.md).

A horizon token is Ph consecutive steps: the reference's controller, cache and decisions work on
the T = H / Ph tokens (token values = the mean of their steps), its solver on the H steps. Checked
by hand-worked cache and input examples, against the plain reference (full_step) when every token
is computed, and against the NumPy runtime sampler fed the same network outputs (controller check)
and with its own engine (free run).
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from dil.evaluate.reference.cache import ReferenceCache, subset_positions, token_inputs  # noqa: E402
from dil.evaluate.reference.controller import ReferenceController  # noqa: E402
from dil.evaluate.reference.sampler import (  # noqa: E402
    ReferenceSampler,
    dpm_solver_pp_update,
    reference_sample,
)
from dil.runtime.sampling.rng import SeriesStreams  # noqa: E402
from builders import patch_model  # noqa: E402
from builders import ScriptedReference, ScriptedRuntime, scripted  # noqa: E402  fixed decisions
from dil.runtime.sampling.config import SamplerConfig  # noqa: E402
from dil.runtime.sampling.parametrisation import to_x0_eps  # noqa: E402
from dil.runtime.sampling.schedule import NoiseSchedule, diffusion_time_features  # noqa: E402
from dil.runtime.inputs.scaling import context_features  # noqa: E402

STEPS, PH, H = 8, 4, 32  # T = 8 tokens of 4 steps
T = H // PH
# As tests/evaluate/test_validate.py: settings under which 8 tokens are really reused and probed.
BUSY_CACHE = dict(K=2, bucket=1, full_fraction=1.0, tau_0=3.0, R=100, random_probe_ratio=0.2, x0_clip=0.0)


def ref_model(known: int = 0, prediction: str = "epsilon"):
    """Horizon 32 in tokens of 4 steps (builders.patch_model), `known` known features per step."""
    return patch_model(H, PH, known, prediction, seed=2)


@pytest.fixture(scope="module")
def model():
    return ref_model()


def _inputs(G: int, N: int, known: int = 0, seed: int = 0):
    """(ctx float32 [G, 48, 2 + known], hor_feat [G, H, known] or None, x_T [G, N, H], streams)."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((G, 48)).cumsum(axis=1) / 4
    z[0, 5:9] = np.nan
    ctx = context_features(z)
    hor_feat = None
    if known:
        ctx = np.concatenate([ctx, rng.uniform(-0.5, 0.5, (G, 48, known)).astype(np.float32)], axis=-1)
        hor_feat = rng.uniform(-0.5, 0.5, (G, H, known)).astype(np.float32)
    streams = SeriesStreams(seed, range(G))
    return ctx, hor_feat, streams.initial_noise(N, H), streams


# -- the cache and the inputs, by hand ---------------------------------------------------------
def test_cache_token_values_are_step_means_and_a_moved_token_moves_its_steps():
    """H = 4 steps, Ph = 2: tokens (0, 1) and (2, 3). Epsilon, alpha 0.8, sigma 0.6: x0 = (x - 0.6 eps) / 0.8."""
    cache = ReferenceCache(layers=1, G=1, N=1, H=4, D=2, x0_clip=5.0, patch=2)
    a, s = torch.tensor(0.8, dtype=torch.float64), torch.tensor(0.6, dtype=torch.float64)
    x = torch.tensor([[[1.0, 2.0, 3.0, 4.0]]], dtype=torch.float64)
    kv = torch.ones((1, 1, 1, 2, 2))
    cache.store(torch.tensor([[[True, True]]]), torch.tensor([[[0, 1]]]), x,
                torch.tensor([[[[0.5, 1.0], [0.0, -0.5]]]]), kv, kv, a, s)
    # steps: 0.7/0.8, 1.4/0.8, 3/0.8, 4.3/0.8 -> the last is clipped to 5 before the mean
    np.testing.assert_allclose(cache.x0_steps.numpy(), [[[0.875, 1.75, 3.75, 5.0]]])
    np.testing.assert_allclose(cache.x0_hat.numpy(), [[[1.3125, 4.375]]])
    np.testing.assert_allclose(cache.x_in.numpy(), [[[1.5, 3.5]]])
    # Token 1 alone (a padding entry beside it), at a new x: token 0 keeps everything.
    x2 = torch.tensor([[[10.0, 20.0, 3.3, 4.3]]], dtype=torch.float64)
    cache.store(torch.tensor([[[False, True]]]), torch.tensor([[[1, 2]]]), x2,
                torch.tensor([[[[1.0, 2.0], [9.0, 9.0]]]]), 2 * kv, 2 * kv, a, s)
    np.testing.assert_allclose(cache.x0_steps.numpy(), [[[0.875, 1.75, 3.375, 3.875]]])
    np.testing.assert_allclose(cache.x0_hat.numpy(), [[[1.3125, 3.625]]])
    np.testing.assert_allclose(cache.x_in.numpy(), [[[1.5, 3.8]]])
    assert cache.age.tolist() == [[[1, 0]]] and cache.valid.all()
    assert cache.k[0, 0, 0, :, 0].tolist() == [1.0, 2.0]
    # A controller moves token 0 by +1 (core follow): both its steps move by 1, token 1 stays.
    cache.x0_hat = cache.x0_hat + torch.tensor([[[1.0, 0.0]]], dtype=torch.float64)
    np.testing.assert_allclose(cache.x0_steps.numpy(), [[[1.875, 2.75, 3.375, 3.875]]])
    np.testing.assert_allclose(cache.x0_hat.numpy(), [[[2.3125, 3.625]]])


def test_one_step_tokens_are_the_step_arrays():
    """Ph = 1: the token values are the step tensors themselves (no arithmetic, bit for bit)."""
    cache = ReferenceCache(layers=1, G=1, N=1, H=3, D=2)
    new = torch.tensor([[[0.1, 0.2, 0.3]]], dtype=torch.float64)
    cache.x0_hat = new
    assert cache.x0_hat is new and cache.x0_steps is new
    cache.x_in_steps = new
    assert cache.x_in is new


def test_token_inputs_are_each_tokens_steps_step_major():
    """Ph = 2, one known feature: token 1 = [x2, f2, x3, f3]; a padding entry (pos = T) is all 0."""
    x = torch.tensor([[[1.0, 2.0, 3.0, 4.0]]], dtype=torch.float64)
    feat = torch.tensor([[[10.0], [20.0], [30.0], [40.0]]])
    got = token_inputs(x, feat, torch.tensor([[[1, 0, 2]]]), patch=2)
    np.testing.assert_array_equal(got.numpy(), [[[[3, 30, 4, 40], [1, 10, 2, 20], [0, 0, 0, 0]]]])
    np.testing.assert_array_equal(token_inputs(x, None, torch.tensor([[[1]]]), patch=2).numpy(), [[[[3, 4]]]])
    assert subset_positions(torch.tensor([[[False, True]]])).tolist() == [[[1]]]


# -- the reference sampler against the plain reference -----------------------------------------
@pytest.mark.parametrize("known", [0, 2])
@pytest.mark.parametrize("order", [1, 2, 3])
def test_every_token_computed_is_the_plain_reference_exactly(known, order):
    """Through encode/denoise on token subsets, the cache and per-token orders, with every token
    computed: the samples of full_step's plain sampler, bit for bit (known features included)."""
    m = ref_model(known)
    ctx, hor_feat, x_T, streams = _inputs(2, 3, known)
    plain = reference_sample(m, NoiseSchedule(), ctx, x_T, STEPS, order, hor_feat=hor_feat)
    ref = ReferenceSampler(m, NoiseSchedule(), ctx, x_T, STEPS, streams, solver_order=order, hor_feat=hor_feat)
    np.testing.assert_array_equal(ref.run(), plain)
    assert ref.shape == (2, 3, T) and ref.decisions[0].computed.shape == (2, 3, T)


def test_lattice_orders_reach_every_step_of_their_token(model):
    """The lattice controller with every token a core token (all computed, every step): the result
    is a plain sampler loop over full_step whose per-step order is each token's order repeated over
    its 4 steps; the orders really differ between tokens of a row."""
    ctx, _, x_T, streams = _inputs(2, 3, seed=4)
    config = SamplerConfig(steps=STEPS, K=T, max_age=1)
    ref = ReferenceSampler(model, NoiseSchedule(), ctx, x_T, STEPS, streams, ReferenceController(config))
    got = ref.run()
    assert all(d.computed.all() for d in ref.decisions)
    mixed = [(d.order.min(-1) != d.order.max(-1)).any() for d in ref.decisions]
    assert any(mixed), "no step had tokens of different orders in one row"

    sch = NoiseSchedule()
    kappas = sch.sampling_grid(STEPS)
    f64 = lambda a: torch.tensor(np.asarray(a, dtype=np.float64))  # noqa: E731
    alphas, sigmas, lams = f64(sch.alpha(kappas)), f64(sch.sigma(kappas)), f64(sch.lam(kappas))
    t_feats = torch.from_numpy(diffusion_time_features(kappas, model.config.time_embed_dim))
    x, hist, lam_hist = torch.from_numpy(x_T.copy()), [], []
    with torch.no_grad():
        for i in range(STEPS):
            out = model.full_step(torch.from_numpy(ctx), x.float()[..., None], t_feats[i].float().expand(2, 3, -1))
            x0 = to_x0_eps(out[..., 0].double(), x, alphas[i], sigmas[i], "epsilon")[0].clamp(-6.0, 6.0)
            hist, lam_hist = [x0] + hist[:2], [lams[i]] + lam_hist[:2]
            if i == STEPS - 1:
                x = x0
                break
            per_step = torch.from_numpy(np.repeat(ref.decisions[i].order, PH, axis=-1))
            new = torch.zeros_like(x)
            for k in (1, 2, 3):
                if bool((per_step == k).any()):
                    upd = dpm_solver_pp_update(x, hist, lams[i + 1], lam_hist, alphas[i + 1], sigmas[i + 1],
                                               sigmas[i], k)
                    new = torch.where(per_step == k, upd, new)
            x = new
    np.testing.assert_allclose(got, x.numpy(), rtol=0, atol=1e-12)




def test_a_reused_token_keeps_every_steps_prediction(model):
    """Between its computations a token's 4 steps keep their x0 (and its keys), while a computed
    token's steps take the fresh outputs: x0 = (x - sigma eps) / alpha per step."""
    ctx, _, x_T, streams = _inputs(2, 3, seed=2)
    masks, orders = scripted(2, 3, T, STEPS)
    ref = ReferenceSampler(model, NoiseSchedule(), ctx, x_T, STEPS, streams, ScriptedReference(masks, orders),
                           x0_clip=0)
    for i in range(STEPS):
        before, k_before, x = ref.cache.x0_steps.clone(), ref.cache.k.clone(), ref.x.clone()
        ref.step()
        reused = torch.from_numpy(np.repeat(~masks[i], PH, axis=-1))
        assert torch.equal(ref.cache.x0_steps[reused], before[reused])
        assert torch.equal(ref.cache.k[:, torch.from_numpy(~masks[i])], k_before[:, torch.from_numpy(~masks[i])])
        fresh = (x - ref.sigmas[i] * ref.last_out.double()) / ref.alphas[i]
        torch.testing.assert_close(ref.cache.x0_steps[~reused], fresh[~reused], rtol=0, atol=1e-12)
        np.testing.assert_allclose(ref.cache.x0_hat.numpy(), ref.cache.x0_steps.numpy().reshape(2, 3, T, PH).mean(-1),
                                   rtol=0, atol=1e-12)


# -- the runtime against the reference ---------------------------------------------------------
class ModuleEngine:
    """The runtime's engine contract answered by the torch module (float32, as the graphs)."""

    max_batch = None

    def __init__(self, m):
        from dil.export.graph_check import TorchGraphs

        self.graphs, self.config = TorchGraphs(m), m.config
        self.stats = SimpleNamespace(encode_calls=0, denoise_calls=0, seconds=0.0)

    def encode(self, ctx):
        self.stats.encode_calls += 1
        return self.graphs.encode(np.ascontiguousarray(ctx))

    def denoise(self, *args):
        self.stats.denoise_calls += 1
        return self.graphs.denoise(*(np.array(a) for a in args))  # writable copies for torch

    def device_cache(self, G, N, T_):
        return None


def test_scripted_token_subsets_match_the_runtime_in_lockstep(model):
    """The runtime sampler (token cache, scatter of Ph outputs, per-token orders over the steps) and
    the reference fed the same network outputs: same decisions, same inputs, samples to 1e-9."""
    from dil.evaluate.validation_report import LockstepEngine, RecordingController, compare_decisions
    from dil.export.graph_check import TorchGraphs
    from dil.runtime.sampling.sampler import sample

    ctx, _, x_T, streams = _inputs(2, 5, seed=1)
    masks, orders = scripted(2, 5, T, STEPS, seed=1)

    ref = ReferenceSampler(model, NoiseSchedule(), ctx, x_T, STEPS, streams, ScriptedReference(masks, orders), bucket=4)
    engine = LockstepEngine(ref, TorchGraphs(model), model.config)
    rec = RecordingController(ScriptedRuntime(masks, orders), before_plan=engine.advance)
    result = sample(engine, NoiseSchedule(), ctx, x_T, SamplerConfig(steps=STEPS), streams, controller=rec)
    assert engine.mismatched_calls == 0 and engine.input_max_abs_diff == 0.0
    assert compare_decisions(rec.decisions, ref.decisions)["agreement"] == 1.0
    x_ref = ref.x.numpy()
    assert np.abs(result.x0 - x_ref).max() <= 1e-9 * max(1.0, np.abs(x_ref).max())
    full = reference_sample(model, NoiseSchedule(), ctx, x_T, STEPS, 2)
    assert np.abs(full - x_ref).max() > 1e-3  # reused tokens really held their steps


@pytest.mark.parametrize("settings", [{}, BUSY_CACHE, dict(BUSY_CACHE, tau_0=0.1), dict(BUSY_CACHE, lattice=False),
                                      dict(BUSY_CACHE, core_follow=False)],
                         ids=["defaults", "cache", "change-rule", "no-lattice", "no-follow"])
def test_validate_sampler_agrees_for_patch_tokens(model, settings):
    """dil-validate's sampler checks on real windows for a Ph = 4 model: controller agreement 1.0
    with shared outputs; the free run (the runtime on the module's own float32 graphs) agrees.
    With tau_0 = 0.1 the change rule decides tokens: a reference reading one step of each token
    instead of the token's mean agrees on only ~0.76 of the decisions there."""
    from dil.evaluate.validation_report import validate_sampler
    from dil.export.real_data import training_windows

    windows, info = training_windows({"dataset": "etth1"}, 48, H, 3)
    assert info["used"]
    config = SamplerConfig(steps=STEPS, **settings)
    report = validate_sampler(ModuleEngine(model), model, NoiseSchedule(), windows[0], config, 8, seed=1)
    check = report["controller_check"]
    assert report["controller_agreement"] == 1.0 and check["mismatched_calls"] == 0
    assert check["input_max_abs_diff"] == 0.0
    assert check["units"] == STEPS * (3 * 8 * T + 3)  # decisions per token, not per step
    assert check["forecast_max_abs_err"] <= 1e-9
    assert report["decision_agreement"] == 1.0 and report["forecast_max_abs_err"] <= 1e-4
    assert report["passed"], report["failures"]
    stats = report["free_run"]["runtime_stats"]
    if settings:  # tokens were really reused and probed
        assert stats["token_fraction"] < 0.85 and stats["probes"] > 0


@pytest.fixture(scope="module")
def patch_artifact(model, tmp_path_factory):
    """The Ph = 4 model exported to ONNX (NAME.json and its graphs), as dil-export writes it (~25 s)."""
    from dil.export.artifact import ExportOptions, export_artifact
    from dil.train.checkpoint import save_checkpoint

    root = tmp_path_factory.mktemp("patch4")
    data = {"dataset": "etth1", "source": "ETTh1.csv.gz", "sha256": "", "columns": None, "date_column": "date",
            "freq": "h", "season": 24, "context_length": 48, "horizon": H, "scaling": "context-mean-std"}
    save_checkpoint(root / "run", model, NoiseSchedule(), data, {"epochs": 0})
    # The graphs' own checks are the exporter's tests; here they are compared through the sampler.
    return export_artifact(root / "run", root / "engines", ExportOptions(name="patch4", validate=False)).path


@pytest.mark.slow
@pytest.mark.parametrize("settings", [{}, dict(BUSY_CACHE, tau_0=0.1)], ids=["defaults", "change-rule"])
def test_validate_sampler_passes_with_the_onnx_graphs_of_patch_tokens(model, patch_artifact, settings):
    """dil-validate's gates for a Ph = 4 model with its ONNX Runtime engine: controller agreement 1.0
    and, in the free run (float32 graphs against torch), samples within 1e-4 (standardised scale)."""
    from dil.evaluate.validation_report import validate_sampler
    from dil.export.real_data import training_windows
    from dil.runtime import OnnxEngine

    engine = OnnxEngine.load(patch_artifact, threads=1)
    assert engine.config.horizon_patch == PH
    windows, _ = training_windows({"dataset": "etth1"}, 48, H, 3)
    config = SamplerConfig(steps=STEPS, **settings)
    report = validate_sampler(engine, model, NoiseSchedule(), windows[0], config, 8, seed=1)
    assert report["controller_agreement"] == 1.0 and report["controller_check"]["mismatched_calls"] == 0
    assert report["decision_agreement"] >= 0.99 and report["quantile_max_abs_err"] <= 1e-3
    agreeing = report["free_run"]["forecast_max_scaled_err_agreeing_rows"]
    assert agreeing is not None and agreeing <= 1e-4
    assert 0 < report["free_run"]["forecast_max_abs_err"]  # two different networks really ran
    assert report["passed"], report["failures"]
