"""Data-parallel training under torchrun (dil.train.distributed, docs/scale-out.md).

The end-to-end tests start real 2-process torchrun jobs on gloo (CPU): a run whose weights are the
hand-averaged gradients of the two ranks' shards, that exports and forecasts; a rank that dies,
leaving a run folder that resumes to exactly the uninterrupted run.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

torch = pytest.importorskip("torch")
from click.testing import CliRunner  # noqa: E402
from safetensors.numpy import load_file  # noqa: E402

from dil.train.distributed import (TEST_EXIT_ENV, DataParallel, DistributedError, _first_line,  # noqa: E402
                                   stopped_message, torchrun_env)

# Two epochs of one step each: the second epoch is where the fault test kills a rank.
ARGS = ["--dataset", "metro-traffic", "--context", "48", "--horizon", "8", "--d-model", "16", "--heads", "2",
        "--layers", "1", "--ffn-dim", "16", "--epochs", "2", "--steps-per-epoch", "1", "--batch-size", "4",
        "--noise-draws", "2", "--device", "cpu", "--quiet"]


def _torchrun(args: list[str], extra_env: dict | None = None, module: bool = False) -> subprocess.CompletedProcess:
    """dil-train under `torchrun --standalone --nproc-per-node 2` (the console script, or -m dil.train.cli)."""
    script = shutil.which("dil-train")
    target = ["-m", "dil.train.cli"] if module or script is None else [script]
    env = dict(os.environ, OMP_NUM_THREADS="1", **(extra_env or {}))
    env.pop("WORLD_SIZE", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", *target, *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    """(run folder, torchrun's result) of a 2-process run of ARGS."""
    out = tmp_path_factory.mktemp("ddp") / "runs" / "metro"
    res = _torchrun(ARGS + ["--out", str(out)])
    assert res.returncode == 0, res.stdout + res.stderr
    return out, res


def _reference_weights(out):
    """(model, EMA) state dicts after ARGS's two steps, computed in one process the way the issue
    defines data-parallel training: rank r's batch from its stream (seed, epoch, r) over the train
    windows r, r + 2, ...; the gradient is the mean of the two ranks' batch-loss gradients."""
    from dil.data.datasets import resolve
    from dil.runtime.inputs.features import FeatureSpec
    from dil.runtime.model.config import ModelConfig
    from dil.runtime.sampling.schedule import NoiseSchedule
    from dil.train.dataset import SplitWindows, draw_noise
    from dil.train.trainer import TrainConfig, _Networks, batch_tensors, lr_at, masked_mse

    stored = json.loads((out / "state.json").read_text())
    config, cfg = ModelConfig.from_dict(stored["model"]), TrainConfig.from_dict(stored["train"])
    features = FeatureSpec.from_dict(stored["features"])
    spec, table = resolve("metro-traffic")
    windows = SplitWindows(spec, table, config, cfg.min_observed, features)
    schedule = NoiseSchedule()
    nets = _Networks.build(config, cfg, spec.season, torch.device("cpu"))
    n = len(windows.train)
    total = cfg.epochs * cfg.steps_per_epoch
    for step in range(total):
        epoch = step + 1  # one step per epoch
        nets.opt.zero_grad(set_to_none=True)
        losses = []
        for rank in (0, 1):
            rng = np.random.default_rng([cfg.seed, epoch, rank])
            shard = np.arange(rank, n, 2)
            batch = windows.train.batch(shard[rng.integers(0, len(shard), size=cfg.batch_size)])
            noise = draw_noise(rng, schedule, batch.target, cfg.noise_draws, config.time_embed_dim,
                               config.prediction, *([batch.gains] if hasattr(batch, "gains") else []))
            losses.append(masked_mse(nets.model, *batch_tensors(batch, noise, torch.device("cpu"))))
        ((losses[0] + losses[1]) / 2).backward()
        torch.nn.utils.clip_grad_norm_(list(nets.model.parameters()), cfg.grad_clip)
        for group in nets.opt.param_groups:
            group["lr"] = lr_at(step, total, cfg)
        nets.opt.step()
        decay = min(cfg.ema_decay, (1.0 + step) / (10.0 + step))
        with torch.no_grad():
            for e, p in zip(nets.ema.parameters(), nets.model.parameters()):
                e.mul_(decay).add_(p, alpha=1.0 - decay)
    return nets.model.state_dict(), nets.ema.state_dict()


@pytest.mark.slow
def test_two_process_run_averages_the_ranks_gradients(ddp_run):
    out, res = ddp_run
    assert "data-parallel: 2 processes (gloo), global batch 2 x 4 windows per step" in res.stdout
    assert res.stdout.count("trained metro-traffic") == 1  # rank 0 alone reports
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [(r["epoch"], r["world_size"]) for r in log] == [(1, 2), (2, 2)]
    assert all(np.isfinite(r["val_loss"]) and np.isfinite(r["train_loss"]) for r in log)
    assert json.loads((out / "config.json").read_text())["training"]["world_size"] == 2
    assert not list(out.glob(".*.tmp"))  # rank 0 wrote every file whole
    model, ema = _reference_weights(out)
    state = load_file(str(out / "state.safetensors"))
    for name, ref in model.items():
        np.testing.assert_allclose(state[f"model.{name}"], ref.numpy(), rtol=1e-5, atol=1e-6, err_msg=name)
    for name, ref in ema.items():
        np.testing.assert_allclose(state[f"ema.{name}"], ref.numpy(), rtol=1e-5, atol=1e-6, err_msg=name)
    assert not np.allclose(state["model.head.weight"], state["ema.head.weight"])  # two different checks


@pytest.mark.slow
def test_two_process_run_exports_and_forecasts(ddp_run, tmp_path):
    from dil.data.datasets import resolve
    from dil.export.cli import main as export_main
    from dil.runtime.cli.run import main as run_main

    out, _ = ddp_run
    res = CliRunner().invoke(export_main, ["--no-frontier", "--checkpoint", str(out), "--out", str(tmp_path / "engines"), "--quiet"])
    assert res.exit_code == 0, res.output
    manifest = tmp_path / "engines" / "metro.json"
    assert json.loads(manifest.read_text())["model"]["context_length"] == 48
    _, table = resolve("metro-traffic")
    frame = pd.DataFrame({"date_time": pd.DatetimeIndex(table.timestamps[-96:]).strftime("%Y-%m-%d %H:%M:%S"),
                          "traffic_volume": table.values[-96:, 0]})
    frame.to_csv(tmp_path / "recent.csv", index=False)
    res = CliRunner().invoke(run_main, ["--engine", str(manifest), "--input", str(tmp_path / "recent.csv"),
                                        "--date-column", "date_time", "--samples", "8", "--steps", "4",
                                        "--out", str(tmp_path / "forecast.csv")])
    assert res.exit_code == 0, res.output
    forecast = pd.read_csv(tmp_path / "forecast.csv")
    assert len(forecast) == 8 and set(forecast["series"]) == {"traffic_volume"}
    values = forecast[["mean", "median", "q05", "q95"]].to_numpy()
    assert np.isfinite(values).all() and (forecast["q05"] <= forecast["q95"]).all()
    last = pd.Timestamp(table.timestamps[-1])
    assert pd.Timestamp(forecast["timestamp"].iloc[0]) == last + pd.Timedelta(hours=1)


@pytest.mark.slow
def test_a_dead_rank_stops_the_run_and_the_folder_resumes_to_the_same_weights(ddp_run, tmp_path):
    ref_out, _ = ddp_run
    out = tmp_path / "metro"
    # rank 1 exits abruptly at step 1, the only step of epoch 2 (python -m form of the command)
    res = _torchrun(ARGS + ["--out", str(out)], {TEST_EXIT_ENV: "1:1"}, module=True)
    assert res.returncode != 0
    lines = [ln for ln in (res.stdout + res.stderr).splitlines() if "data-parallel training stopped" in ln]
    assert len(lines) == 1, res.stdout + res.stderr
    # rank 0 either sees the dead peer in its next collective or, when torchrun's SIGTERM comes
    # first (a loaded machine), reports that torchrun stopped it: both name rank 0 and the cause
    assert lines[0].startswith(("Error: data-parallel training stopped: rank 0 of 2: ",
                                "Error: data-parallel training stopped: rank 0 of 2 was stopped by torchrun "
                                "(another rank failed). "))
    assert lines[0].endswith(f"{out} holds epoch 1 and resumes with: torchrun --standalone --nproc-per-node 2 "
                             f"$(which dil-train) --out {out} --resume")
    assert [json.loads(ln)["epoch"] for ln in (out / "log.jsonl").read_text().splitlines()] == [1]
    res = _torchrun(["--out", str(out), "--resume", "--quiet"])
    assert res.returncode == 0, res.stdout + res.stderr
    assert [json.loads(ln)["epoch"] for ln in (out / "log.jsonl").read_text().splitlines()] == [1, 2]
    resumed, uninterrupted = load_file(str(out / "state.safetensors")), load_file(str(ref_out / "state.safetensors"))
    assert resumed.keys() == uninterrupted.keys()
    for name in resumed:
        np.testing.assert_array_equal(resumed[name], uninterrupted[name], err_msg=name)


# -- without torchrun -------------------------------------------------------------------------------
def test_torchrun_env_is_read_and_checked(monkeypatch):
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    assert torchrun_env() is None
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert torchrun_env() is None and DataParallel.start() is None
    monkeypatch.setenv("WORLD_SIZE", "4")
    with pytest.raises(ValueError, match="start data-parallel training with torchrun"):
        torchrun_env()
    monkeypatch.setenv("RANK", "5")
    monkeypatch.setenv("LOCAL_RANK", "1")
    with pytest.raises(ValueError, match="inconsistent torchrun environment: RANK 5, WORLD_SIZE 4"):
        torchrun_env()
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert torchrun_env() == (3, 4, 1, 2)


def test_shards_and_validation_shares_cover_everything_once():
    ranks = [DataParallel(r, 3, r, torch.device("cpu"), "gloo") for r in range(3)]
    shards = [d.shard(10) for d in ranks]
    np.testing.assert_array_equal(shards[1], [1, 4, 7])
    np.testing.assert_array_equal(np.sort(np.concatenate(shards)), np.arange(10))
    with pytest.raises(ValueError, match="2 train windows cannot be shared among 3 processes"):
        ranks[0].shard(2)
    parts = [(torch.arange(5.0), torch.arange(5.0) * 10), (torch.arange(5.0, 7.0), torch.arange(5.0, 7.0) * 10)]
    mine = [d.val_parts(parts) for d in ranks]
    seen = torch.cat([p[0] for share in mine for p in share])
    assert sorted(seen.tolist()) == list(range(7))
    assert all(torch.equal(p[1], p[0] * 10) for share in mine for p in share)
    assert ranks[0].epoch_rng(0, 1).integers(1 << 30) != ranks[1].epoch_rng(0, 1).integers(1 << 30)


def test_stop_message_names_the_saved_epoch_and_the_resume_command(tmp_path, monkeypatch):
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    gloo = RuntimeError("[/src/third_party/gloo/gloo/transport/tcp/pair.cc:537] Read error [127.0.0.1]:10124: "
                       "Connection reset by peer. This is typically caused by a remote worker hanging.\nmore")
    assert _first_line(gloo) == "Read error [127.0.0.1]:10124: Connection reset by peer"
    exc = DistributedError("rank 0 of 4: Connection reset by peer")
    assert stopped_message(exc, tmp_path) == (
        "data-parallel training stopped: rank 0 of 4: Connection reset by peer. no epoch finished, so "
        f"{tmp_path} holds nothing to resume; start it again with: torchrun --standalone --nproc-per-node 4 "
        f"$(which dil-train) --out {tmp_path}")
    (tmp_path / "state.json").write_text(json.dumps({"epoch": 3, "bad_epochs": 0, "train": {"epochs": 10}}))
    assert stopped_message(exc, tmp_path).endswith(
        f"{tmp_path} holds epoch 3 and resumes with: torchrun --standalone --nproc-per-node 4 "
        f"$(which dil-train) --out {tmp_path} --resume")


def test_a_single_process_run_never_touches_torch_distributed(tmp_path, monkeypatch):
    import torch.distributed as dist

    from dil.train.cli import main

    def refuse(*args, **kwargs):
        raise AssertionError("a single-process run initialised a process group")

    monkeypatch.setattr(dist, "init_process_group", refuse)
    monkeypatch.setenv("WORLD_SIZE", "1")
    tiny = ["--context", "16", "--horizon", "8", "--d-model", "16", "--heads", "2", "--layers", "1", "--ffn-dim",
            "16", "--epochs", "1", "--steps-per-epoch", "1", "--batch-size", "4", "--noise-draws", "1", "--quiet"]
    res = CliRunner().invoke(main, tiny + ["--dataset", "metro-traffic", "--out", str(tmp_path / "run")])
    assert res.exit_code == 0, res.output
    assert not dist.is_initialized() and "data-parallel" not in res.output
    assert "world_size" not in (tmp_path / "run" / "log.jsonl").read_text()


def test_sigterm_waits_for_the_run_folder_and_a_stopping_rank_ignores_it():
    import signal

    from dil.train.distributed import _Terminated

    old = signal.getsignal(signal.SIGTERM)
    rank = DataParallel(1, 2, 1, torch.device("cpu"), "gloo")
    try:
        rank._handle_sigterm()
        written = []
        with pytest.raises(_Terminated):
            with rank.shielded():
                os.kill(os.getpid(), signal.SIGTERM)  # torchrun's stop while rank 0 writes an epoch
                written.append("state.json")  # the writes go on ...
        assert written == ["state.json"]  # ... and the stop comes after them
        with pytest.raises(_Terminated):
            os.kill(os.getpid(), signal.SIGTERM)  # outside the writes: at once
            [None for _ in range(10**6)]  # (the handler runs between bytecodes)
        with pytest.raises(DistributedError, match=r"^rank 1 of 2: Connection closed by peer$"):
            with rank.guard():
                raise RuntimeError("[gloo/transport/tcp/pair.cc:598] Connection closed by peer")
        os.kill(os.getpid(), signal.SIGTERM)  # a rank already stopping keeps its own message
    finally:
        signal.signal(signal.SIGTERM, old)
