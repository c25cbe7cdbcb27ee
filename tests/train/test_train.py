"""dil.train: window batches, noise draws, schedule, and dil-train end to end on a tiny config."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from click.testing import CliRunner  # noqa: E402
from safetensors.numpy import load_file  # noqa: E402

from dil.data import get_spec  # noqa: E402
from dil.runtime.sampling.schedule import NoiseSchedule, diffusion_time_features  # noqa: E402
from dil.train.checkpoint import load_checkpoint  # noqa: E402
from dil.train.cli import main  # noqa: E402
from dil.train.dataset import WindowSet, draw_noise, fit_feature_spec  # noqa: E402
from dil.train.model import ScoreNet  # noqa: E402
from dil.train.trainer import TrainConfig, init_time_embeddings, lr_at  # noqa: E402

nan = np.nan
TINY = ["--context", "16", "--horizon", "8", "--d-model", "16", "--heads", "2", "--layers", "2",
        "--ffn-dim", "32", "--steps-per-epoch", "3", "--batch-size", "8", "--noise-draws", "2", "--quiet"]


# -- windows and noise ------------------------------------------------------------------------------
def test_window_set_skips_unusable_windows_and_scales_like_float64():
    # One series, L=4, H=2. Rows 4..7 missing: windows whose context is < half observed or whose
    # target is all missing are skipped.
    v = np.array([1.0, 2.0, 4.0, 7.0, nan, nan, nan, nan, 3.0, 5.0, 6.0, 2.0, 8.0])[:, None]
    ws = WindowSet(v, 4, 2, 0, 13, min_observed=0.5)
    # origins 4..11; contexts observed counts: o=4:4, 5:3, 6:2, 7:1, 8:0, 9:1, 10:2, 11:3
    # targets observed: o=4:0, 5:0, 6:0, 7:1, 8:2, 9:2, 10:2, 11:2
    np.testing.assert_array_equal(ws.origins, [10, 11])
    b = ws.batch(np.array([0, 1]))
    ctx = np.array([[nan, nan, 3.0, 5.0], [nan, 3.0, 5.0, 6.0]])
    tgt = np.array([[6.0, 2.0], [2.0, 8.0]])
    for i in range(2):
        obs = ctx[i][~np.isnan(ctx[i])]
        loc, scale = obs.mean(), obs.std()
        assert b.loc[i] == pytest.approx(loc, rel=1e-15) and b.scale[i] == pytest.approx(scale, rel=1e-15)
        np.testing.assert_allclose(b.target[i], (tgt[i] - loc) / scale, rtol=1e-6)
        np.testing.assert_allclose(b.ctx[i, :, 0], np.nan_to_num((ctx[i] - loc) / scale), rtol=1e-6)
        np.testing.assert_array_equal(b.ctx[i, :, 1], ~np.isnan(ctx[i]))
    np.testing.assert_array_equal(b.mask, 1.0)
    assert b.ctx.shape == (2, 4, 2) and b.hor_feat.shape == (2, 2, 0)  # no features: (value, observed)


def test_window_features_are_the_rows_of_context_and_target():
    from dil.runtime.inputs.features import RowFeatures

    # 2 series over T=12 rows, L=4, H=3; row t's known features (t, -t), past feature 100 + t.
    T = 12
    v = np.arange(T * 2, dtype=float).reshape(T, 2)
    t = np.arange(T, dtype=float)
    rf = RowFeatures(known=np.stack([t, -t], axis=1), past=(100 + t)[:, None], known_missing=np.zeros((T, 0), bool))
    ws = WindowSet(v, 4, 3, 0, T, features=rf)
    np.testing.assert_array_equal(ws.origins, np.repeat(np.arange(4, 10), 2))  # every (origin, series)
    pick = np.array([0, 11])  # origin 4 series 0, origin 9 series 1
    b = ws.batch(pick)
    assert b.ctx.shape == (2, 4, 5) and b.hor_feat.shape == (2, 3, 2)
    assert b.ctx.dtype == b.hor_feat.dtype == np.float32
    # Fc = (value, observed, known 2, past 1): context rows [o-4, o), horizon rows [o, o+3)
    np.testing.assert_array_equal(b.ctx[0, :, 2:], [[0, 0, 100], [1, -1, 101], [2, -2, 102], [3, -3, 103]])
    np.testing.assert_array_equal(b.ctx[1, :, 2:], [[5, -5, 105], [6, -6, 106], [7, -7, 107], [8, -8, 108]])
    np.testing.assert_array_equal(b.hor_feat[0], [[4, -4], [5, -5], [6, -6]])
    np.testing.assert_array_equal(b.hor_feat[1], [[9, -9], [10, -10], [11, -11]])
    # the value channel is series 1's context [10, 12, 14, 16] standardised
    ctx1 = v[5:9, 1]
    np.testing.assert_allclose(b.ctx[1, :, 0], (ctx1 - ctx1.mean()) / ctx1.std(), rtol=1e-6)


def test_fit_feature_spec_uses_the_train_rows_and_the_frequency():
    import pandas as pd

    from dil.runtime.inputs.features import FeatureError
    from dil.runtime.inputs.table import SeriesTable

    times = pd.date_range("2024-01-01", periods=6, freq="h").to_numpy()
    cov = pd.DataFrame({"temp": [1.0, 3.0, 100.0, 100.0, 100.0, 100.0], "kind": ["a", "b", "c", "a", "b", "c"]})
    table = SeriesTable(values=np.zeros((6, 1)), names=["y"], timestamps=times, freq="h", covariates=cov)
    spec = fit_feature_spec(table, "h", ["kind"], ["temp"], True, (0, 2))
    assert spec.time_features == ("hour_of_day", "day_of_week", "day_of_month", "day_of_year") and spec.freq == "h"
    # by default a cycle the training rows (here 1 hour) do not span 3 times is left out
    assert fit_feature_spec(table, "h", train_rows=(0, 2)).time_features == ()
    assert [(c.name, c.known, c.mean, c.std, c.categories) for c in spec.covariates] == [
        ("kind", True, 0.0, 1.0, ("a", "b")), ("temp", False, 2.0, 1.0, ())]  # rows 0..1 only
    assert (spec.context_width, spec.horizon_width) == (2 + 4 + 2 + 1, 1 + 4 + 2)
    assert fit_feature_spec(table, "h", time_features=False).time_features == ()
    undated = SeriesTable(values=np.zeros((6, 1)), names=["y"])
    assert fit_feature_spec(undated, "B") == fit_feature_spec(undated, None) == type(spec)()
    with pytest.raises(FeatureError, match="--time-features: the table has no dates"):
        fit_feature_spec(undated, "B", time_features=True)


def test_missing_target_steps_are_masked_not_zero():
    v = np.array([1.0, 2.0, 3.0, 4.0, nan, 6.0])[:, None]
    b = WindowSet(v, 4, 2, 0, 6).batch(np.array([0]))
    np.testing.assert_array_equal(b.mask, [[0.0, 1.0]])
    assert b.target[0, 0] == 0.0  # placeholder; weight 0 in the loss


def test_noise_draw_follows_schedule():
    sch = NoiseSchedule()
    y = np.random.default_rng(1).normal(size=(3, 5)).astype(np.float32)
    d = draw_noise(np.random.default_rng(2), sch, y, 4, 8)
    assert d.k.shape == (3, 4) and d.eps.shape == d.x.shape == (3, 4, 5) and d.t_feat.shape == (3, 4, 8)
    alpha = np.sqrt(sch.alphas_cumprod[d.k])[..., None]
    sigma = np.sqrt(1.0 - sch.alphas_cumprod[d.k])[..., None]
    np.testing.assert_allclose(d.x, alpha * y[:, None, :] + sigma * d.eps, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(d.t_feat, diffusion_time_features(d.k, 8).astype(np.float32))
    np.testing.assert_array_equal(d.net_target, d.eps)  # epsilon: the target is the noise


def test_v_target_is_alpha_eps_minus_sigma_y():
    sch = NoiseSchedule()
    y = np.random.default_rng(1).normal(size=(3, 5)).astype(np.float32)
    d = draw_noise(np.random.default_rng(2), sch, y, 4, 8, prediction="v")
    abar = sch.alphas_cumprod[d.k][..., None]  # float64 reference from the schedule's table
    v = np.sqrt(abar) * d.eps.astype(np.float64) - np.sqrt(1.0 - abar) * y[:, None, :].astype(np.float64)
    np.testing.assert_allclose(d.net_target, v, rtol=1e-6, atol=1e-6)
    # v-prediction inverts to the clean value: x0 = alpha x - sigma v
    np.testing.assert_allclose(np.sqrt(abar) * d.x - np.sqrt(1 - abar) * v, np.broadcast_to(y[:, None], v.shape),
                               atol=2e-6)


def test_masked_mse_ignores_missing_target_steps():
    from dil.train.trainer import masked_mse, masked_squared_error

    class FixedPrediction:  # full_step's output is given: the loss arithmetic alone is checked
        def full_step(self, ctx, x, t_feat, hor_feat):
            self.hor_feat = hor_feat
            return torch.tensor([[[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]]]).unsqueeze(-1)

    target = torch.tensor([[[0.0, 0.0, 1.0], [1.0, 1.0, 1.0]]])  # B=1, N=2, H=3 (eps or v)
    mask = torch.tensor([[1.0, 0.0, 1.0]])  # the middle target step is missing
    hor_feat = torch.ones(1, 3, 2)
    args = (torch.zeros(1, 4, 6), torch.zeros(1, 2, 3), torch.zeros(1, 2, 8), hor_feat, target, mask)
    net = FixedPrediction()
    sse, count = masked_squared_error(net, *args)
    # observed squared errors: row 0: 1 and 4; row 1: 1 and 1
    assert (float(sse), float(count)) == (7.0, 4.0) and net.hor_feat is hor_feat
    assert float(masked_mse(net, *args)) == 7.0 / 4.0
    masked_squared_error(net, *args[:3], torch.zeros(1, 3, 0), *args[4:])
    assert net.hor_feat is None  # no known features: the model gets none


def test_lr_warmup_then_cosine():
    cfg = TrainConfig(lr=1e-3, warmup=0.1, min_lr_ratio=0.1)
    assert lr_at(0, 100, cfg) == pytest.approx(1e-4)
    assert lr_at(9, 100, cfg) == pytest.approx(1e-3)
    assert lr_at(100, 100, cfg) == pytest.approx(1e-4)
    mid = 10 + 45  # half-way through the cosine part
    assert lr_at(mid, 100, cfg) == pytest.approx(1e-4 + 0.9e-3 * 0.5 * (1 + math.cos(math.pi * 0.5)))


def test_time_embeddings_share_the_seasonal_phase(tiny_config):
    model = ScoreNet(tiny_config)  # L=16, H=8
    season = 4
    init_time_embeddings(model, season)
    ctx, hor = model.ctx_pos.weight.detach().numpy(), model.hor_pos.weight.detach().numpy()
    # Harmonic columns: 1/4 and 2/4 cycles per step -> sin in columns 0..1, cos in columns 8..9
    # (d_model 16: 8 frequencies, 2 harmonics). Context step p sits at time p - 16, horizon j at j.
    for cols in ([0, 1], [8, 9]):
        np.testing.assert_allclose(ctx[16 - season + np.arange(4)][:, cols], hor[:4][:, cols], atol=1e-6)
    np.testing.assert_allclose(hor[0, 8:16], 1.0)  # cos(0) for every frequency at time 0


def test_time_embeddings_of_patched_context_tokens(tiny_config):
    from dataclasses import replace

    model = ScoreNet(replace(tiny_config, context_patch=4))  # 4 tokens of 4 steps
    init_time_embeddings(model, 4)
    ctx = model.ctx_pos.weight.detach().numpy()
    assert ctx.shape == (4, 16)
    t = np.arange(4) * 4 + 1.5 - 16  # each token at the time of its middle: -14.5, -10.5, -6.5, -2.5
    np.testing.assert_allclose(ctx[:, 0], np.sin(2 * np.pi * t / 4), atol=1e-6)  # first harmonic of season 4
    np.testing.assert_allclose(ctx[:, 8], np.cos(2 * np.pi * t / 4), atol=1e-6)


# -- dil-train end to end ---------------------------------------------------------------------------
def _run(args):
    return CliRunner().invoke(main, args, catch_exceptions=False)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("train") / "tiny"
    res = _run(TINY + ["--epochs", "2", "--out", str(out)])
    assert res.exit_code == 0, res.output
    return out, res.output


def test_cli_trains_a_loadable_checkpoint(tiny_run):
    from dil.runtime.model.config import ModelConfig

    out, output = tiny_run
    assert "checkpoint:" in output and "best val loss" in output
    # metro-traffic is hourly, its training rows span 4 years: 4 time features on every token (Fc = 2 + 4,
    # Fh = 1 + 4); the hourly preset's token budget (16 context, 6 horizon tokens) keeps 16 context steps
    # in 1-step tokens and makes the horizon 8 four 2-step tokens; new runs predict v
    expect = ModelConfig(context_length=16, horizon=8, d_model=16, num_heads=2, num_layers=2, ffn_dim=32,
                         context_features=6, horizon_features=5, prediction="v", context_patch=1, horizon_patch=2)
    ck = load_checkpoint(out, expect=expect)
    assert ck.features.time_features == ("hour_of_day", "day_of_week", "day_of_month", "day_of_year")
    assert ck.features.freq == "h" and ck.features.covariates == ()
    spec = get_spec("metro-traffic")
    assert ck.data["dataset"] == "metro-traffic" and ck.data["columns"] == ["traffic_volume"]
    assert ck.data["sha256"] == "07d3c0566e342648f11db21f0b12c362e6fee9e3b6aa292917cb25d3cb981d69"
    assert ck.data["season"] == spec.season and ck.data["context_length"] == 16 and ck.data["horizon"] == 8
    assert ck.data["splits"] == {"train": [0, 36786], "val": [36786, 42041], "test": [42041, 52551]}
    logs = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in logs] == [1, 2]
    assert all(np.isfinite([r["train_loss"], r["val_loss"], r["lr"]]).all() for r in logs)
    # The checkpoint holds the EMA weights of the best epoch; the raw weights differ from them.
    state = load_file(str(out / "state.safetensors"))
    weights = load_file(str(out / "model.safetensors"))
    best = max(r["epoch"] for r in logs if r["best"])
    name = "blocks.0.qkv.weight"
    if best == 2:
        np.testing.assert_array_equal(weights[name], state[f"ema.{name}"])
    assert np.abs(state[f"ema.{name}"] - state[f"model.{name}"]).max() > 1e-6


def test_same_seed_same_weights(tiny_run, tmp_path):
    out, _ = tiny_run
    res = _run(TINY + ["--epochs", "2", "--out", str(tmp_path / "again")])
    assert res.exit_code == 0, res.output
    a = load_file(str(out / "state.safetensors"))
    b = load_file(str(tmp_path / "again" / "state.safetensors"))
    for k in ("model.head.weight", "ema.blocks.1.mlp.0.weight", "optim.3.exp_avg"):
        np.testing.assert_array_equal(a[k], b[k])


def test_resume_continues_and_refuses_other_model(tiny_run, tmp_path):
    import shutil

    src, _ = tiny_run
    out = tmp_path / "run"
    shutil.copytree(src, out)
    before = (out / "log.jsonl").read_text().splitlines()
    res = _run(["--out", str(out), "--resume", "--epochs", "3", "--quiet"])  # options from the run
    assert res.exit_code == 0, res.output
    after = (out / "log.jsonl").read_text().splitlines()
    assert after[:2] == before and json.loads(after[2])["epoch"] == 3
    assert json.loads((out / "state.json").read_text())["epoch"] == 3

    snapshot = {p.name: p.read_bytes() for p in out.iterdir()}
    res = CliRunner().invoke(main, ["--out", str(out), "--resume", "--epochs", "4", "--d-model", "32"])
    assert res.exit_code != 0
    assert res.output.startswith("Error: cannot resume") and res.output.count("\n") == 1
    assert "d_model 16 (run) vs 32" in res.output
    assert {p.name: p.read_bytes() for p in out.iterdir()} == snapshot


def test_resume_accepts_a_run_written_before_horizon_patches(tmp_path):
    """A run whose state.json predates a model-config key (here horizon_patch) resumes: the missing
    key means its default, which is the model the run trained (one step per horizon token)."""
    out = tmp_path / "run"
    res = _run(TINY + ["--epochs", "2", "--horizon-patch", "1", "--out", str(out)])
    assert res.exit_code == 0, res.output
    state = json.loads((out / "state.json").read_text())
    del state["model"]["horizon_patch"]
    (out / "state.json").write_text(json.dumps(state))
    res = _run(["--out", str(out), "--resume", "--epochs", "3", "--quiet"])
    assert res.exit_code == 0, res.output
    assert json.loads((out / "state.json").read_text())["epoch"] == 3


def test_horizon_patch_that_does_not_divide_the_horizon_is_refused(tmp_path):
    res = CliRunner().invoke(main, TINY + ["--epochs", "1", "--horizon-patch", "3", "--out", str(tmp_path / "run")])
    assert res.exit_code != 0
    assert res.output == "Error: --horizon-patch 3 does not divide --horizon 8\n"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "args, message",
    [
        (["--out", "/dev/null/run"], "/dev/null is not a folder"),
        (["--context", "60000", "--out", "{tmp}/missing/run"], "rows, but one window needs"),  # folders removed again
        (["--data", "{tmp}/absent.csv", "--out", "{tmp}/run"], "data file not found"),
        (["--columns", "nope", "--out", "{tmp}/run"], "unknown column 'nope'"),
        (["--dataset", "etth1", "--date-column", "date", "--out", "{tmp}/run"], "--date-column applies"),
        (["--resume", "--out", "{tmp}/run"], "cannot resume"),
        (["--heads", "3", "--out", "{tmp}/run"], "divisible"),
    ],
)
def test_bad_input_one_line_nothing_written(tmp_path, args, message):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    res = CliRunner().invoke(main, TINY + ["--epochs", "1"] + args)
    assert res.exit_code != 0
    assert res.output.startswith("Error: ") and res.output.count("\n") == 1, res.output
    assert message in res.output
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_existing_run_needs_resume(tiny_run):
    out, _ = tiny_run
    res = CliRunner().invoke(main, TINY + ["--out", str(out)])
    assert res.exit_code != 0 and "already holds a run" in res.output


def test_missing_torch_is_one_line():  # --help works without torch (tests/test_cli_help.py)
    code = (
        "import sys; sys.modules['torch'] = None; sys.argv = ['dil-train', '--out', 'runs/x'];"
        "from dil.train.cli import main; main()"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert proc.stderr.strip() == "Error: torch is not installed: pip install 'dil[train]'"
