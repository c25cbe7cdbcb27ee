"""A tiny frequency-domain model end to end (docs/frequency.md): dil-train --domain frequency with
time features, dil-export (FP32 and FP16, the layout record), and the same sampler validation as
the time-domain models (per-graph error, subset equivalence, controller agreement 1.0, free run)."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from click.testing import CliRunner  # noqa: E402

from dil.train.cli import main as train_cli  # noqa: E402

# odd horizon: the layout without a Nyquist coordinate; etth1 has hourly dates: time features on
TINY = ["--dataset", "etth1", "--columns", "OT", "--context", "16", "--horizon", "9", "--d-model", "16",
        "--heads", "2", "--layers", "2", "--ffn-dim", "32", "--epochs", "1", "--steps-per-epoch", "8",
        "--batch-size", "16", "--noise-draws", "2", "--quiet"]
SAMPLES, STEPS = 16, 10
BUSY_CACHE = dict(K=2, bucket=1, full_fraction=1.0, tau_0=3.0, R=100, random_probe_ratio=0.2, x0_clip=0.0)


def _one_line(result) -> str:
    assert result.exit_code != 0
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    return lines[0]


def test_bad_domain_options_are_one_line_errors(tmp_path):
    out = tmp_path / "r"
    assert "--domain" in _one_line(CliRunner().invoke(train_cli, TINY + ["--domain", "wavelet", "--out", str(out)]))
    line = _one_line(CliRunner().invoke(train_cli, TINY + ["--domain", "frequency", "--horizon", "1", "--out", str(out)]))
    assert "--domain frequency needs a horizon of at least 2" in line
    line = _one_line(CliRunner().invoke(train_cli, TINY + ["--domain", "frequency", "--horizon", "8",
                                                           "--horizon-patch", "4", "--out", str(out)]))
    assert "--horizon-patch must be 1 with --domain frequency" in line
    assert not out.exists()


@pytest.fixture(scope="module")
def freq_artifact(tmp_path_factory):
    """(manifest, run folder) of a tiny frequency-domain run exported with its FP16 variant."""
    from dil.export.artifact import ExportOptions, export_artifact

    tmp = tmp_path_factory.mktemp("freq")
    run = tmp / "runs" / "freq"
    res = CliRunner().invoke(train_cli, TINY + ["--domain", "frequency", "--out", str(run)])
    assert res.exit_code == 0, res.output
    assert "frequency-domain" in res.output and "tokens of 1" in res.output
    manifest = export_artifact(run, tmp / "engines", ExportOptions(name="freq", fp16=True))
    return manifest, run


@pytest.mark.slow
def test_frequency_model_trains_exports_and_validates(freq_artifact):
    from dil.evaluate.validation_report import validate_sampler
    from dil.export.real_data import training_windows
    from dil.runtime import OnnxEngine
    from dil.runtime.sampling.config import SamplerConfig
    from dil.runtime.model.frequency import layout_record
    from dil.train.checkpoint import load_checkpoint

    manifest, run = freq_artifact
    cfg = manifest.model
    assert (cfg.domain, cfg.horizon, cfg.horizon_patch, cfg.horizon_features > 1) == ("frequency", 9, 1, True)
    saved = json.loads(manifest.path.read_text())
    assert saved["spectral_layout"] == layout_record(9) and saved["model"]["domain"] == "frequency"
    graphs = manifest.validation
    assert graphs["passed"] and graphs["graphs"]["denoise"]["max_abs_err"] <= 1e-4
    sub = graphs["subset_equivalence"]
    assert sub["passed"] and all(0 <= e <= 1e-4 for e in sub["max_abs_err"].values())
    fp16 = manifest.variants[0]
    assert fp16.model.domain == "frequency" and json.loads(fp16.path.read_text())["spectral_layout"] == layout_record(9)
    assert fp16.validation["passed"]

    engine = OnnxEngine.load(manifest.path, threads=1)
    model = load_checkpoint(run).model
    windows, _ = training_windows({"dataset": "etth1", "columns": ["OT"]}, cfg.context_length, cfg.horizon, 3)
    for settings in ({}, BUSY_CACHE):
        config = SamplerConfig(steps=STEPS, **settings)
        report = validate_sampler(engine, model, manifest.schedule, windows[0], config, SAMPLES, seed=1,
                                  graph_report=graphs)
        assert report["controller_agreement"] == 1.0 and report["controller_check"]["mismatched_calls"] == 0
        assert report["decision_agreement"] >= 0.99 and report["quantile_max_abs_err"] <= 1e-3
        assert report["passed"], report["failures"]
        assert report["features"] == "random"  # the known features entered as spectra on both sides
        if settings:  # the cache really reused spectral tokens
            stats = report["free_run"]["runtime_stats"]
            assert stats["token_fraction"] < 0.9 and stats["probes"] > 0  # 3 of 9 tokens are the core


@pytest.mark.slow
def test_frequency_forecast_same_seed_same_samples_and_the_reference(freq_artifact):
    """Forecaster on a frequency model: time-domain samples, the same for the same seed, and the
    PyTorch reference's plain sampler (torch.fft) within float32 error."""
    from dil.evaluate.reference.sampler import reference_forecast
    from dil.runtime import Forecaster
    from dil.runtime.inputs.window_features import WindowFeatures
    from dil.train.checkpoint import load_checkpoint

    manifest, run = freq_artifact
    cfg = manifest.model
    fc = Forecaster.load(manifest.path, threads=1)
    rng = np.random.default_rng(0)
    ctx = 5 + rng.standard_normal((2, cfg.context_length))
    Fk = cfg.horizon_features - 1
    feats = WindowFeatures(context_known=rng.random((2, cfg.context_length, Fk)) - 0.5,
                           context_past=np.zeros((2, cfg.context_length, 0)),
                           horizon_known=rng.random((2, cfg.horizon, Fk)) - 0.5)
    one = fc.predict_windows(ctx, 8, steps=6, seed=3, lattice=False, cache=False, features=feats)
    two = fc.predict_windows(ctx, 8, steps=6, seed=3, lattice=False, cache=False, features=feats)
    np.testing.assert_array_equal(one.samples, two.samples)
    ref = reference_forecast(load_checkpoint(run).model, manifest.schedule, ctx, 8, 6, 3,
                             ctx_extra=feats.context_known.astype(np.float32),
                             hor_feat=feats.horizon_known.astype(np.float32))
    np.testing.assert_allclose(one.samples, ref.samples, atol=1e-3 * np.abs(ref.samples).max())


@pytest.mark.slow
def test_frequency_artifact_without_layout_is_refused(freq_artifact, tmp_path):
    import shutil

    from dil.runtime.manifest import ManifestError, load_manifest

    manifest, _ = freq_artifact
    for f in manifest.path.parent.glob("freq.*"):
        if not f.name.startswith("freq.fp16"):
            shutil.copy(f, tmp_path / f.name)
    d = json.loads((tmp_path / "freq.json").read_text())
    del d["spectral_layout"]
    (tmp_path / "freq.json").write_text(json.dumps(d))
    with pytest.raises(ManifestError, match="needs the 'spectral_layout' record") as exc:
        load_manifest(tmp_path / "freq.json")
    assert "\n" not in str(exc.value)


# -- benchmarks/domains.py ---------------------------------------------------------------------------
def _domains_module():
    import importlib.util
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "benchmarks" / "domains.py"
    spec = importlib.util.spec_from_file_location("domains_benchmark", script)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the script is executed
    spec.loader.exec_module(module)
    return module


def test_domains_compare_at_equal_crps():
    """Hand-worked rows: reference plain 50 (CRPS 1.0); within 1%: plain 20 (tokens 160) and fast 10
    (tokens 40, 0.5 of 10 steps x 8 tokens); fast 5 is outside (1.05)."""
    mod = _domains_module()
    rows = [dict(sampler="plain", steps=s, crps=c, tokens=8.0 * s, latency_s=0.01 * s)
            for s, c in ((5, 1.2), (20, 1.008), (50, 1.0))]
    rows += [dict(sampler="fast", steps=5, crps=1.05, tokens=20.0, latency_s=0.04),
             dict(sampler="fast", steps=10, crps=1.009, tokens=40.0, latency_s=0.05)]
    c = mod.compare(rows)
    assert c["by_tokens"]["plain"] == "plain 20" and c["by_tokens"]["fast"] == "fast 10"
    assert c["by_tokens"]["speedup"] == pytest.approx(4.0)
    assert c["by_latency"]["speedup"] == pytest.approx(0.2 / 0.05)
    rows[-1]["crps"] = 1.02  # no fast row within 1%: the nearest in CRPS, marked
    c = mod.compare(rows)
    assert c["fast_within_tolerance_tokens"] is False and c["by_tokens"]["fast"] == "fast 10"


@pytest.mark.slow
def test_domains_benchmark_runs_on_tiny_models(freq_artifact, tiny_artifact, tmp_path, capsys):
    mod = _domains_module()
    manifest, _ = freq_artifact
    out, md = tmp_path / "domains.json", tmp_path / "domains.md"
    args = ["--pair", f"etth1={tiny_artifact},{manifest.path}", "--windows", "2", "--samples", "4",
            "--steps", "2,4", "--repeats", "1", "--split", "val", "--json", str(out), "--markdown", str(md), "--quiet"]
    assert mod.main(args) == 0
    report = json.loads(out.read_text())
    assert set(report["pairs"]["etth1"]) == {"time", "frequency"}
    assert "### etth1" in md.read_text() and "| frequency | fast | 4 |" in md.read_text()
    for name, d in report["pairs"]["etth1"].items():
        assert d["domain"] == name and len(d["rows"]) == 4
        for r in d["rows"]:
            if r["sampler"] == "plain":
                assert r["tokens"] == r["steps"] * d["horizon_tokens"]
            else:
                assert 0 < r["tokens"] <= r["steps"] * d["horizon_tokens"]
        assert d["comparison"]["reference"] == "plain 4"
    assert "frequency domain" in capsys.readouterr().out
    with pytest.raises(SystemExit):  # a frequency artifact given as the time one: refused before any forecast
        mod.main(["--pair", f"x={manifest.path},{manifest.path}", "--quiet"])
    assert "is a frequency-domain model, expected time" in capsys.readouterr().err
