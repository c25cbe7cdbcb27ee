"""dil-eval and dil-bench say what they do in words that match it (docs/inputs.md, docs/model.md 6)."""

from __future__ import annotations

import json

from click.testing import CliRunner

from dil.evaluate.cli.eval import main as eval_main


def test_a_dated_model_on_a_dataset_without_dates_is_one_line():
    res = CliRunner().invoke(eval_main, ["--dataset", "exchange-rate", "--windows", "1", "--samples", "2"])
    assert res.exit_code == 1 and res.output.count("\n") == 1, res.output
    assert "exchange-rate has no dates, so it cannot be scored on it" in res.output
    assert "pass the date column" not in res.output


def test_other_data_note_protocol_stride_and_stats(tmp_path):
    js = tmp_path / "e.json"
    res = CliRunner().invoke(eval_main, ["--dataset", "etth1", "--columns", "OT", "--windows", "3", "--samples", "2",
                                         "--stats", "--json", str(js)])
    assert res.exit_code == 0, res.output
    assert "note: the model was trained on metro-traffic, not etth1" in res.output
    assert "sampler stats:" in res.output and "engine_calls" in res.output
    split = json.loads(js.read_text())["protocol"]["split"]
    # the protocol's stride is one horizon; with --windows 3 the kept origins lie further apart
    assert split["stride"] == 24 and split["kept_every"] > 24


def test_frontier_says_when_fewer_validation_origins_exist(tiny_artifact):
    from dil.evaluate.frontier import FrontierConfig, run_frontier

    lines = []
    cfg = FrontierConfig(windows=5000, samples=2, plain_steps=(2,), fast_steps=(), repeats=1)
    report = run_frontier(tiny_artifact, cfg, progress=False, say=lines.append)
    windows, origins = report["choice"]["windows"], report["choice"]["origins"]
    assert windows < 5000 and windows == origins * 7  # every series of every origin (etth1: 7 series)
    assert any(f"holds {windows} windows ({origins} origins x 7 series)" in ln and "fewer than the 5000 asked for" in ln
               for ln in lines), lines


def test_bench_frontier_on_a_users_own_model_takes_data(tiny_artifact, tmp_path):
    """A model trained on a local file: dil-bench --frontier names --data, which it now has."""
    import shutil

    import numpy as np
    import pandas as pd

    from dil.evaluate.cli.bench import main as bench_main

    for f in tiny_artifact.parent.glob("tiny.*"):
        shutil.copy(f, tmp_path / f.name)
    manifest = json.loads((tmp_path / "tiny.json").read_text())
    manifest["data"].update(dataset="site.csv", source="site.csv", columns=["load"], date_column="time")
    (tmp_path / "tiny.json").write_text(json.dumps(manifest))
    times = pd.date_range("2024-01-01", periods=600, freq="h").strftime("%Y-%m-%d %H:%M")
    pd.DataFrame({"time": times, "load": np.sin(np.arange(600) / 5.0)}).to_csv(tmp_path / "site.csv", index=False)
    base = ["--engine", str(tmp_path / "tiny.json"), "--frontier", "--windows", "2", "--samples", "2", "--steps", "2",
            "--fast-steps", "2", "--repeats", "1"]
    res = CliRunner().invoke(bench_main, base)
    assert res.exit_code == 1 and "pass its table with --data FILE" in res.output, res.output
    res = CliRunner().invoke(bench_main, base + ["--data", str(tmp_path / "site.csv")])
    assert res.exit_code == 0, res.output
    assert "frontier of tiny.json on 2 validation origins of site.csv" in res.output
