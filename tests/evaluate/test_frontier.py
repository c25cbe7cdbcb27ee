"""Steps from the frontier (docs/sampler.md section 14): the rule that picks an artifact's sampler
defaults, the manifest's "sampler_defaults" record, and the runtime using it (Forecaster, dil-run,
dil-eval) unless the user's options say otherwise."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from dil.evaluate.frontier import FrontierConfig, FrontierError, choose_defaults, run_frontier
from dil.runtime.manifest import ManifestError, load_manifest, write_sampler_defaults
from dil.runtime.sampling.config import SamplerConfig


def _rows(*specs):
    """Rows from (sampler, steps, crps, latency_s) tuples."""
    return [dict(sampler=s, steps=n, crps=c, latency_s=t) for s, n, c, t in specs]


# -- the rule -------------------------------------------------------------------------------------
def test_plain_10_steps_wins_where_the_cache_cannot_pay():
    """The shipped model's case: plain 10 steps is as accurate as 50 and the fast sampler is slower."""
    rows = _rows(("plain", 5, 0.0600, 0.05), ("plain", 10, 0.0557, 0.09), ("plain", 20, 0.0557, 0.18),
                 ("plain", 50, 0.0556, 0.45), ("fast", 10, 0.0559, 0.17), ("fast", 20, 0.0556, 0.30))
    choice = choose_defaults(rows)
    assert (choice["lattice"], choice["cache"], choice["steps"]) == (False, False, 10)
    assert choice["reference_crps"] == 0.0556 and choice["crps"] == 0.0557
    # 0.0600 > 1.01 * 0.0556 = 0.056156: plain 5 is out although fastest; fast 10 (0.17 s) is the fastest
    # fast candidate, 0.17 / 0.09 = 1.89x slower.
    assert choice["why"] == ("plain 10 steps: CRPS within 1% of plain 50 steps, fastest; the token cache did not "
                             "pay (fast 10 steps: 1.89x slower)")


def test_fast_sampler_wins_when_it_is_fastest_within_one_percent():
    rows = _rows(("plain", 10, 0.070, 0.10), ("plain", 20, 0.0561, 0.20), ("plain", 50, 0.0556, 0.50),
                 ("fast", 10, 0.0570, 0.08), ("fast", 20, 0.0560, 0.12))
    choice = choose_defaults(rows)
    # within 1%: plain 20 (0.0561 <= 0.056156), plain 50, fast 20; fast 10 (0.0570) is not.
    assert (choice["lattice"], choice["cache"], choice["steps"]) == (True, True, 20)
    assert choice["why"] == ("fast 20 steps: CRPS within 1% of plain 50 steps, fastest; the token cache paid "
                             "(plain 20 steps: 1.67x slower)")


def test_only_the_reference_qualifies():
    rows = _rows(("plain", 10, 0.0600, 0.10), ("plain", 20, 0.0570, 0.20), ("plain", 50, 0.0556, 0.50),
                 ("fast", 20, 0.0580, 0.15))
    choice = choose_defaults(rows)
    assert (choice["lattice"], choice["cache"], choice["steps"]) == (False, False, 50)
    assert choice["crps"] == choice["reference_crps"] == 0.0556
    assert choice["why"] == ("plain 50 steps: the reference; no faster configuration is within 1% of its CRPS; "
                             "the token cache did not pay (no fast configuration within 1%: fast 20 steps, "
                             "CRPS +4.3%)")


def test_a_fast_rival_within_tolerance_but_uncalibrated_is_named_as_such():
    """Measured on an ETTh1 horizon-96 model's validation windows: fast 10 steps matches plain 50's
    CRPS (-0.1%) but its 90% interval covers 0.81 against the reference's 0.88."""
    rows = [dict(sampler=s, steps=n, crps=c, coverage_50=c50, coverage_90=c90, latency_s=t)
            for s, n, c, c50, c90, t in (("plain", 10, 0.25392, 0.4849, 0.8616, 0.145),
                                         ("plain", 50, 0.25341, 0.4994, 0.8770, 0.719),
                                         ("fast", 10, 0.25312, 0.4523, 0.8136, 0.255),
                                         ("fast", 50, 0.25406, 0.4583, 0.8317, 0.966))]
    choice = choose_defaults(rows)
    assert (choice["cache"], choice["steps"]) == (False, 10)
    assert choice["why"] == ("plain 10 steps: CRPS within 1% of plain 50 steps, fastest; the token cache did not pay "
                             "(no fast configuration within 1% with calibrated intervals: fast 10 steps, CRPS -0.1%, "
                             "coverage 0.45/0.81 vs 0.50/0.88)")


def test_ties_go_to_plain_then_fewer_steps_and_nan_never_qualifies():
    rows = _rows(("fast", 10, 0.05, 0.1), ("plain", 20, 0.05, 0.1), ("plain", 10, 0.05, 0.1), ("plain", 50, 0.05, 0.3),
                 ("fast", 5, float("nan"), 0.01), ("plain", 5, None, 0.01))
    choice = choose_defaults(rows)
    assert (choice["cache"], choice["steps"]) == (False, 10)


def test_the_fastest_calibrated_candidate_wins():
    """Measured on the shipped model's test windows: plain 5 steps has the best CRPS but intervals
    narrower than the reference's (0.46 / 0.84 against 0.57 / 0.91); 6 steps' 90% coverage is 0.032
    from nominal, more than the reference's 0.01 + 0.02; 7 steps is calibrated."""
    rows = [dict(sampler="plain", steps=n, crps=c, coverage_50=c50, coverage_90=c90, latency_s=t)
            for n, c, c50, c90, t in ((5, 0.0552, 0.458, 0.841, 0.05), (6, 0.0553, 0.493, 0.868, 0.06),
                                      (7, 0.0556, 0.528, 0.892, 0.07), (20, 0.0557, 0.569, 0.911, 0.20),
                                      (50, 0.0557, 0.57, 0.91, 0.50))]
    choice = choose_defaults(rows)
    assert (choice["cache"], choice["steps"]) == (False, 7)
    # a reference as far off as the fast rows: coverage does not decide, the fastest within 1% wins
    for r in rows:
        r["coverage_90"] = 0.80
    assert choose_defaults(rows)["steps"] == 5


def test_the_rule_refuses_rows_without_a_reference():
    with pytest.raises(FrontierError, match="no plain-sampler row"):
        choose_defaults(_rows(("fast", 20, 0.05, 0.1)))
    with pytest.raises(FrontierError, match=r"reference \(plain 50 steps\) has no finite CRPS"):
        choose_defaults(_rows(("plain", 10, 0.05, 0.1), ("plain", 50, float("nan"), 0.5)))
    with pytest.raises(FrontierError, match="plain_steps must be integers"):
        FrontierConfig(plain_steps=(0, 10))


# -- the manifest record ----------------------------------------------------------------------------
@pytest.fixture()
def artifact_copy(tiny_artifact, tmp_path):
    """A copy of the tiny artifact's files in a fresh folder; returns its manifest path."""
    out = tmp_path / "engines"
    out.mkdir()
    for f in tiny_artifact.parent.glob("tiny.*"):
        shutil.copy(f, out / f.name)
    return out / "tiny.json"


PLAIN3 = {"lattice": False, "cache": False, "steps": 3, "why": "plain 3 steps: measured by hand"}


def test_predict_runs_the_artifact_defaults_and_explicit_options_win(tiny_artifact, artifact_copy):
    from dil.runtime import Forecaster

    write_sampler_defaults(artifact_copy, dict(PLAIN3))
    history = 50 + np.random.default_rng(0).standard_normal((30, 2)).cumsum(axis=0)
    mine, plain = Forecaster.load(artifact_copy), Forecaster.load(tiny_artifact)
    assert plain.default_config == SamplerConfig()  # no record: the built-in defaults, as before
    assert mine.default_config == SamplerConfig(lattice=False, cache=False, steps=3)

    def samples(fc, **kw):
        return fc.predict(history, num_samples=6, seed=0, **kw).samples

    got = samples(mine)
    np.testing.assert_array_equal(got, samples(plain, config=SamplerConfig(lattice=False, cache=False,
                                                                           steps=3)))
    assert not np.array_equal(got, samples(plain))  # the built-in default samples differently
    np.testing.assert_array_equal(samples(mine, steps=5, lattice=True),
                                  samples(plain, config=SamplerConfig(steps=5, lattice=True, cache=False)))
    np.testing.assert_array_equal(samples(mine, config=SamplerConfig()), samples(plain))


@pytest.mark.parametrize("value, match", [
    ("fast", r"field 'sampler_defaults' is a str, expected a dict"),
    ({"lattice": "yes", "cache": False, "steps": 10}, r"'sampler_defaults.lattice' must be true or false"),
    ({"lattice": False, "steps": 10}, r"'sampler_defaults.cache' is missing"),
    ({"lattice": False, "cache": False, "steps": 0},
     r"'sampler_defaults.steps' must be an integer in \[1, 1000\], got 0"),
    ({"lattice": False, "cache": False, "steps": 2.5}, r"'sampler_defaults.steps' must be"),
    ({"lattice": False, "cache": False, "steps": True}, r"'sampler_defaults.steps' must be"),
    ({"lattice": False, "cache": False, "steps": 10, "why": 3}, r"'sampler_defaults.why' is a int"),
])
def test_bad_sampler_defaults_are_refused_in_one_line(artifact_copy, value, match):
    d = json.loads(artifact_copy.read_text())
    d["sampler_defaults"] = value
    artifact_copy.write_text(json.dumps(d, indent=2))
    with pytest.raises(ManifestError, match=match) as err:
        load_manifest(artifact_copy)
    assert "\n" not in str(err.value)
    # and write_sampler_defaults refuses the same record before writing anything
    before = artifact_copy.read_bytes()
    if isinstance(value, dict):
        with pytest.raises(ManifestError, match=match):
            write_sampler_defaults(artifact_copy, value)
    assert artifact_copy.read_bytes() == before


def test_write_sampler_defaults_keeps_everything_else(artifact_copy):
    before = json.loads(artifact_copy.read_text())
    with pytest.raises(ManifestError, match="not strict JSON"):
        write_sampler_defaults(artifact_copy, dict(PLAIN3, crps=float("nan")))
    path = write_sampler_defaults(artifact_copy, dict(PLAIN3))
    after = json.loads(path.read_text())
    assert after.pop("sampler_defaults") == PLAIN3 and after == before
    assert list(json.loads(path.read_text()))[:-1] == list(before)  # same keys in the same order, the record last
    assert sorted(p.name for p in path.parent.iterdir()) == sorted(p.name for p in path.parent.glob("tiny.*"))
    assert load_manifest(path).to_dict()["sampler_defaults"] == PLAIN3


# -- the frontier run ---------------------------------------------------------------------------------
def test_frontier_on_the_tiny_model_scores_the_validation_windows(tiny_artifact):
    """CRPS of each configuration against an independent computation on the same validation windows:
    origins rebuilt from the split rows (2 windows: the first origin's first series, the last origin's
    second), forecasts by predict_windows, scored by metrics.crps_quantile."""
    from dil.data.datasets import load_dataset
    from dil.data.registry import get_spec
    from dil.data.windows import split_bounds, window_origins
    from dil.evaluate.metrics import crps_quantile
    from dil.runtime import Forecaster

    cfg = FrontierConfig(windows=2, samples=4, plain_steps=(1, 4), fast_steps=(4,), repeats=1, threads=1)
    report = run_frontier(tiny_artifact, cfg, progress=False)
    table = load_dataset("etth1")
    a, b = split_bounds(get_spec("etth1"), table.values.shape[0])["val"]
    assert report["protocol"]["val_rows"] == [a, b] and report["choice"]["split"] == "val"
    origins = window_origins(table.values.shape[0], 16, 8, a, b, stride=8)[[0, -1]]
    assert origins[0] == a and origins[-1] + 8 <= b
    ctx = np.stack([table.values[o - 16:o, c] for c, o in enumerate(origins)])  # [2, 16]
    tgt = np.stack([table.values[o:o + 8, c] for c, o in enumerate(origins)])
    ids = [f"{table.names[c]}@{o}" for c, o in enumerate(origins)]
    fc = Forecaster.load(tiny_artifact)
    assert [(r["sampler"], r["steps"]) for r in report["rows"]] == [("plain", 1), ("plain", 4), ("fast", 4)]
    for row in report["rows"]:
        config = SamplerConfig(steps=row["steps"], lattice=row["lattice"], cache=row["cache"])
        s = fc.predict_windows(ctx, num_samples=4, seed=0, series_ids=ids, config=config).samples
        assert row["crps"] == pytest.approx(crps_quantile(tgt, s, mask=~np.isnan(tgt)), rel=1e-12)
        assert len(row["latencies_s"]) == 1 and row["latency_s"] > 0
    choice = report["choice"]
    assert choice["windows"] == 2 and choice["origins"] == 2 and choice["reference"] == "plain 4 steps"
    assert choice == {**choice, **choose_defaults(report["rows"])}  # the record is the rule's choice


def test_spread_windows_takes_turns_through_each_origins_valid_series():
    """Hand-worked: 3 origins x 4 series, origin 1's series 1 not valid. 5 windows: 2, 2 and 1 per
    origin; origin 0 takes series 0, 1; origin 1 goes on from the 3rd of its valid series [0, 2, 3]:
    series 3, then 0; origin 2 from its 5th, i.e. series 0 of 4. 3 windows: one per origin, series 0,
    then origin 1's 2nd valid series (2), then origin 2's 3rd (2). 12 or more: every valid window."""
    from dil.evaluate.frontier import spread_windows
    from dil.evaluate.harness import EvalWindows

    valid = np.ones((3, 4), dtype=bool)
    valid[1, 1] = False
    w = EvalWindows(origins=np.array([10, 20, 30]), names=list("abcd"), contexts=np.zeros((3, 4, 2)),
                    targets=np.zeros((3, 4, 1)), valid=valid, baseline=np.zeros((3, 4, 1)))
    expected = np.zeros((3, 4), dtype=bool)
    expected[0, [0, 1]] = expected[1, [3, 0]] = expected[2, 0] = True
    np.testing.assert_array_equal(spread_windows(w, 5).valid, expected)
    one_each = np.zeros((3, 4), dtype=bool)
    one_each[0, 0] = one_each[1, 2] = one_each[2, 2] = True  # origin 1's 2nd valid series is 2
    np.testing.assert_array_equal(spread_windows(w, 3).valid, one_each)
    np.testing.assert_array_equal(spread_windows(w, 12).valid, valid)
    assert spread_windows(w, 5).contexts is w.contexts  # only the mask changes


# -- the CLIs ------------------------------------------------------------------------------------------
FRONTIER_ARGS = ["--frontier", "--windows", "1", "--samples", "3", "--steps", "1,2", "--fast-steps", "2",
                 "--repeats", "1", "--threads", "1"]


@pytest.fixture()
def table_csv(tmp_path):
    """30 hourly rows of the tiny model's training series (ETTh1's columns)."""
    rng = np.random.default_rng(3)
    cols = ["HUFL", "HULL", "MUFL", "MULL", "LUFL", "LULL", "OT"]
    frame = pd.DataFrame(5 + rng.standard_normal((30, 7)).cumsum(axis=0), columns=cols)
    frame.insert(0, "date", pd.date_range("2024-05-01", periods=30, freq="h").strftime("%Y-%m-%d %H:%M"))
    path = tmp_path / "table.csv"
    frame.to_csv(path, index=False)
    return path


def test_write_defaults_then_dil_run_uses_them(tiny_artifact, artifact_copy, table_csv, tmp_path):
    from dil.evaluate.cli.bench import main as bench
    from dil.runtime.cli.run import main as run

    before = json.loads(artifact_copy.read_text())
    res = CliRunner().invoke(bench, ["--engine", str(artifact_copy), *FRONTIER_ARGS, "--write-defaults"])
    assert res.exit_code == 0, res.output
    after = json.loads(artifact_copy.read_text())
    record = after.pop("sampler_defaults")
    assert after == before and record["split"] == "val" and record["reference"] == "plain 2 steps"
    assert f"sampler_defaults written to {artifact_copy}" in res.output and record["why"] in res.output
    assert sorted(p.name for p in artifact_copy.parent.iterdir()) == sorted(
        p.name for p in tiny_artifact.parent.glob("tiny.*"))  # no temporary file left
    flags = ["--steps", str(record["steps"]), "--lattice" if record["lattice"] else "--no-lattice",
             "--cache" if record["cache"] else "--no-cache"]
    base = ["--input", str(table_csv), "--samples", "4", "--stats"]
    mine = CliRunner().invoke(run, ["--engine", str(artifact_copy), *base, "--out", str(tmp_path / "a.csv")])
    theirs = CliRunner().invoke(run, ["--engine", str(tiny_artifact), *base, *flags, "--out", str(tmp_path / "b.csv")])
    assert mine.exit_code == 0 and theirs.exit_code == 0, mine.output + theirs.output
    assert (tmp_path / "a.csv").read_text() == (tmp_path / "b.csv").read_text()
    name = "plain DPM-Solver++" if not record["cache"] else "fast sampler (lattice + token cache)"
    steps = f"{record['steps']} step" + "s" * (record["steps"] != 1)
    assert f"sampler: {name}, {steps} (artifact default: {record['why']})" in mine.output
    assert f"({flags[0]}, {flags[2]}, {flags[3]} given; otherwise the built-in default" in theirs.output


def test_frontier_options_are_checked_and_a_failed_run_writes_nothing(artifact_copy, monkeypatch):
    import dil.evaluate.frontier as frontier
    from dil.evaluate.cli.bench import main as bench
    from dil.evaluate.harness import EvaluationError

    before = artifact_copy.read_bytes()
    for extra, match in ((["--write-defaults"], "--write-defaults needs --frontier"),
                         (["--frontier", "--plot", "x.png"], "--plot does not apply to --frontier"),
                         (["--fast-steps", "5"], "--fast-steps applies to --frontier only"),
                         (["--frontier", "--steps", "0"], "--steps must be positive integers"),
                         (["--frontier", "--dataset", "nope"], "nope")):
        res = CliRunner().invoke(bench, ["--engine", str(artifact_copy), *extra])
        assert res.exit_code != 0 and match in res.output and "frontier of" not in res.output, res.output

    def fails(*args):  # a run that breaks after every configuration was scored, while timing them
        raise EvaluationError("the timing failed")

    monkeypatch.setattr(frontier, "_latencies", fails)
    res = CliRunner().invoke(bench, ["--engine", str(artifact_copy), *FRONTIER_ARGS, "--write-defaults"])
    assert res.exit_code == 1 and "Error: the timing failed" in res.output
    assert artifact_copy.read_bytes() == before
    assert sorted(p.name for p in artifact_copy.parent.iterdir()) == sorted(
        p.name for p in artifact_copy.parent.glob("tiny.*"))


def test_dil_eval_runs_the_artifact_defaults(tiny_artifact, artifact_copy, tmp_path):
    from dil.evaluate.cli.eval import main as evaluate

    write_sampler_defaults(artifact_copy, dict(PLAIN3))
    args = ["--windows", "1", "--samples", "4"]
    mine = CliRunner().invoke(evaluate, ["--engine", str(artifact_copy), *args, "--json", str(tmp_path / "a.json")])
    theirs = CliRunner().invoke(evaluate, ["--engine", str(tiny_artifact), *args, "--steps", "3", "--no-lattice",
                                           "--no-cache", "--json", str(tmp_path / "b.json")])
    assert mine.exit_code == 0 and theirs.exit_code == 0, mine.output + theirs.output
    a, b = (json.loads((tmp_path / n).read_text()) for n in ("a.json", "b.json"))
    assert a["model"] == b["model"] and a["protocol"]["steps"] == 3
    assert a["protocol"]["sampler"] == {"lattice": False, "cache": False, "spacing": "logsnr"}
    assert a["protocol"]["sampler_choice"] == f"sampler: plain DPM-Solver++, 3 steps (artifact default: {PLAIN3['why']})"
    assert "note: sampler: plain DPM-Solver++, 3 steps (artifact default" in mine.output


def test_help_names_the_artifact_default():
    from dil.evaluate.cli.eval import main as evaluate
    from dil.runtime.cli.run import main as run

    for cli in (run, evaluate):
        text = " ".join(CliRunner().invoke(cli, ["--help"]).output.split())
        assert "Solver steps (network evaluations). [default: the artifact's, else 20]" in text or \
            "Sampler steps. [default: the artifact's, else 20]" in text
        assert "[default: the artifact's, else on]" in text


def test_latencies_take_turns_between_configurations():
    """A change of machine load during the timing must hit every configuration alike: the calls
    alternate config by config within each repeat, after a warm-up round that is not counted."""
    from dil.evaluate import frontier

    calls = []

    class Recorder:
        def predict_windows(self, ctx, num_samples, seed, series_ids, config, features):
            calls.append(config.steps)

    configs = [SamplerConfig(steps=n) for n in (5, 10, 20)]
    times = frontier._latencies(Recorder(), ("w", np.zeros((1, 4)), None), configs, FrontierConfig(repeats=2))
    assert calls == [5, 10, 20] * 3
    assert [len(t) for t in times] == [2, 2, 2] and all(x >= 0 for t in times for x in t)


def test_measure_defaults_records_the_choice(tiny_artifact, tmp_path):
    """dil-export's frontier (measure_defaults): the choice is measured on the artifact's validation
    windows and recorded as its sampler_defaults, which the Forecaster then runs."""
    import shutil

    from dil.evaluate.frontier import FrontierConfig, measure_defaults
    from dil.runtime import Forecaster
    from dil.runtime.manifest import load_manifest

    for f in Path(tiny_artifact).parent.glob("tiny.*"):
        shutil.copy(f, tmp_path / f.name)
    engine = tmp_path / "tiny.json"
    assert load_manifest(engine).sampler_defaults is None
    config = FrontierConfig(windows=4, samples=8, plain_steps=(2, 4), fast_steps=(2,), repeats=1)
    choice, line = measure_defaults(engine, config=config)
    record = load_manifest(engine).sampler_defaults
    assert record == choice and record["split"] == "val" and record["windows"] == 4 and record["origins"] == 4
    assert (record["steps"], record["cache"]) in {(2, False), (4, False), (2, True)}
    assert line.startswith("sampler defaults: ") and record["why"] in line
    assert Forecaster.load(engine).default_config.steps == record["steps"]
    # an artifact with defaults of its own (a student's) keeps them
    again, line = measure_defaults(engine, config=config)
    assert again is None and "the artifact's own" in line


def test_dil_export_measures_sampler_defaults_by_default(tmp_path):
    """A user's own model runs its fastest calibrated sampler without a second command: dil-export
    records measured sampler_defaults unless --no-frontier (a model of a user's file: with --data)."""
    pytest.importorskip("torch")
    from dil.export.cli import main as export_cli
    from dil.runtime.manifest import load_manifest
    from dil.train.cli import main as train_cli

    run = tmp_path / "runs" / "m"
    tiny = ["--context", "16", "--horizon", "8", "--d-model", "16", "--heads", "2", "--layers", "1", "--ffn-dim", "16",
            "--epochs", "1", "--steps-per-epoch", "2", "--batch-size", "4", "--noise-draws", "1", "--quiet"]
    assert CliRunner().invoke(train_cli, tiny + ["--dataset", "metro-traffic", "--out", str(run)]).exit_code == 0
    res = CliRunner().invoke(export_cli, ["--checkpoint", str(run), "--out", str(tmp_path / "eng"), "--quiet"])
    assert res.exit_code == 0, res.output
    record = load_manifest(tmp_path / "eng" / "m.json").sampler_defaults
    assert record is not None and record["dataset"] == "metro-traffic" and record["windows"] == 48
    assert f"sampler defaults: {record['why']}" in res.output
    res = CliRunner().invoke(export_cli, ["--checkpoint", str(run), "--out", str(tmp_path / "eng2"), "--quiet",
                                          "--no-frontier"])
    assert res.exit_code == 0 and load_manifest(tmp_path / "eng2" / "m.json").sampler_defaults is None
