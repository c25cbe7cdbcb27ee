"""`dil-eval`: score an exported forecaster on rolling test windows against seasonal naive."""

from __future__ import annotations

import json
import math
from pathlib import Path

import click

from dil.evaluate.harness import DEFAULT_BATCH_SIZE
from dil.runtime.cli.options import (artifact_option, checked_output, date_options, missing_value_option, one_line,
                                     pop_dates, pop_sampler, sampler_options)
from dil.runtime.support.files import write_text

_ROWS = ("crps", "crps_sample", "crps_sum", "mae", "mse", "coverage_50", "coverage_90")


def _fmt(v) -> str:
    if v is None or math.isnan(v):
        return "-"
    return f"{v:.4g}" if abs(v) >= 1e4 else f"{v:.4f}"


def format_report(report: dict) -> str:
    """A small text table: model vs seasonal naive and their ratio (model / baseline)."""
    p, model = report["protocol"], report["model"]
    spacing = (p.get("sampler") or {}).get("spacing")  # dil-eval's runs record it; a bare harness report has none
    naive = report["baselines"]["seasonal_naive"]
    lines = [
        f"{p['dataset']}: {p['windows']} test origins x {p['series']} series = {p['series_windows']} windows"
        f" ({p['skipped_windows']} skipped), context {p['context']}, horizon {p['horizon']},"
        f" {p['samples']} samples" + (f", {p['steps']} step" + "s" * (p["steps"] != 1) if p.get("steps") else "")
        + (f" ({spacing} spacing)" if spacing else "") + f", seed {p['seed']}"
        + (f"; model inputs: {p['inputs']}" if p.get("inputs") else ""),
        f"{'metric':<12} {'model':>12} {'seasonal naive':>15} {'ratio':>7}",
    ]
    for k in _ROWS:
        m, b = model.get(k), naive.get(k)
        ratio = m / b if m is not None and b else None
        lines.append(f"{k:<12} {_fmt(m):>12} {_fmt(b):>15} {_fmt(ratio):>7}")
    for name, ref in report["baselines"].items():
        if "same_windows" in ref:
            lines += _subset_lines(name, ref)
    if "probts" in model:
        lines += _probts_lines(p, model["probts"], naive["probts"])
    lines.append(
        f"CRPS = mean weighted quantile loss over {len(p['quantile_levels'])} levels"
        f" {p['quantile_levels'][0]:.2f}..{p['quantile_levels'][-1]:.2f}, normalised by sum |y|;"
        f" seasonal naive lag {p['season']}; mae/mse of the median in data units"
    )
    return "\n".join(lines)


def _probts_lines(p: dict, model: dict, naive: dict) -> list[str]:
    """The ProbTS metrics (--protocol probts): per-window normalised, then pooled per test batch."""
    info = p["probts"]
    lines = [
        f"ProbTS long-term setting ({info['dataset']}, {model['windows']} windows of all {p['series']} series, origins "
        f"{info['raw_first_origin']}..{info['raw_last_origin']} of the file, stride {info['stride']}):",
        f"{'metric':<12} {'model':>12} {'seasonal naive':>15} {'ratio':>7}",
    ]
    rows = [("crps", model.get("crps"), naive.get("crps")), ("nmae", model.get("nmae"), naive.get("nmae"))]
    for key in ("crps_pooled", "nmae_pooled"):
        rows += [(f"{key[:4]}_b{b}", v, naive.get(key, {}).get(b)) for b, v in model.get(key, {}).items()]
    for k, m, b in rows:
        ratio = m / b if m is not None and b else None
        lines.append(f"{k:<12} {_fmt(m):>12} {_fmt(b):>15} {_fmt(ratio):>7}")
    lines.append("ProbTS crps/nmae: normalised per window, then averaged; *_bB: pooled over test batches of B windows")
    return lines


def _subset_lines(name: str, ref: dict) -> list[str]:
    """A baseline scored on a subset: its metrics next to the model's on the same windows."""
    same = ref["same_windows"]["model"]
    lines = [
        f"{name} on {ref['series_windows']} of the windows ({ref.get('sampler', '')}), model on the same windows:",
        f"{'metric':<12} {'model':>12} {name:>18} {'ratio':>7}",
    ]
    for k in _ROWS:
        m, b = same.get(k), ref.get(k)
        ratio = m / b if m is not None and b else None
        lines.append(f"{k:<12} {_fmt(m):>12} {_fmt(b):>18} {_fmt(ratio):>7}")
    return lines


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@artifact_option()
@click.option("--dataset", help="Bundled dataset to evaluate on (default: the one the engine was trained on).")
@click.option("--data", type=click.Path(dir_okay=False, path_type=Path),
              help="Evaluate on a local table instead (CSV, CSV.GZ, TXT or Parquet; rows = time steps).")
@date_options("--data", "for a model with time features, the date column of its training data when --data has it, "
                        "with a note")
@missing_value_option("--data or --dataset")
@click.option("--columns", help="Comma-separated series to evaluate (default: the engine's / all numeric).")
@click.option("--protocol", type=click.Choice(["dil", "probts"]), default="dil", show_default=True,
              help="dil: the rolling test windows of docs/model.md section 6. probts: the ProbTS long-term "
                   "setting (Zhang et al., NeurIPS 2024; github.com/microsoft/ProbTS) on etth1, etth2, weather or "
                   "exchange-rate, for a model of horizon 96: ProbTS's split (ETTh: rows 8640/2880/2880; weather, "
                   "exchange: 70/10/20 % of the file's rows, int-truncated), origins from its test part's first row "
                   "at stride 96 (ETTh1/2 29, weather 109, exchange 15), the model's context before each (it may "
                   "reach into the validation part), every series of an origin one window; reports besides dil's "
                   "metrics ProbTS's CRPS (19 levels 0.05..0.95: per window 2 x the quantile loss summed over "
                   "horizon and series / that window's sum |y|, averaged over levels, then windows) and NMAE "
                   "(sum |y - median| / sum |y| per window), and the same pooled per test batch of 8/16/32/64 "
                   "windows (ProbTS's first evaluator), on the original scale. docs/probts.md.")
@click.option("--windows", "n_windows", type=click.IntRange(min=1),
              help="Evaluate this many evenly spaced test origins (default: all; stride = horizon).")
@click.option("--samples", default=100, show_default=True, type=click.IntRange(min=1), help="Samples per window.")
@sampler_options()
@click.option("--seed", default=0, show_default=True, type=click.IntRange(min=0), help="Sampling seed.")
@click.option("--season", type=click.IntRange(min=1),
              help="Seasonal-naive lag in steps (default: the dataset's, or from the row frequency).")
@click.option("--batch-size", default=DEFAULT_BATCH_SIZE, show_default=True, type=click.IntRange(min=1),
              help="Windows per forecaster call, scored as they arrive (one progress line each when stderr is "
                   "not a terminal). Results do not depend on it; memory grows with it (metro-traffic: 239 MB "
                   "peak at 4, 497 MB at 32) and speed stops growing past a few windows.")
@click.option("--ddpm-windows", default=0, show_default=True, type=click.IntRange(min=0),
              help="Also sample this many evenly spaced windows with the same model in PyTorch by 1000-step "
                   "ancestral DDPM (baseline reference-ddpm1000, the classic diffusion-forecaster cost: "
                   "1000 network calls per window instead of --steps, minutes per window on a CPU) and score "
                   "the model on the same windows. 0: off. Needs torch (dil[train]).")
@click.option("--checkpoint", type=click.Path(file_okay=False, path_type=Path),
              help="Training run folder of the engine, for --ddpm-windows (default: the torch weights the "
                   "artifact ships).")
@click.option("--stats", "show_stats", is_flag=True,
              help="Also print the sampler's statistics over all the model's forecasts (engine calls, tokens "
                   "computed, cache reuse, engine and control time), as dil-run --stats does.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the full report (metrics, baselines, protocol) to this JSON file (missing folders are "
                   "created).")
@click.option("--plots", "plots_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Write fan charts and a calibration plot (PNG) to this folder, created when missing (needs "
                   "dil[plot]).")
def main(engine, dataset, data, missing_values, columns, protocol, n_windows, samples, seed, season, batch_size,
         ddpm_windows, checkpoint, show_stats, json_path, plots_dir, **options):
    """Evaluate an exported forecaster on the rolling test windows of a dataset.

    Every series x every test origin is one window (context and horizon are the engine's); the model
    is scored with CRPS (weighted quantile loss over the 19 levels 0.05..0.95, normalised by sum |y|),
    exact sample CRPS, CRPS-sum, MAE/MSE of the median and 50%/90% interval coverage, next to the
    seasonal-naive baseline on the same windows; with --ddpm-windows N, also the same model sampled
    by 1000-step ancestral DDPM in PyTorch on N windows. Progress goes to stderr: a bar on a terminal,
    one line per batch of windows otherwise.

    The model is sampled as dil-run samples it: with the artifact's sampler defaults where its
    manifest records them (dil-bench --frontier --write-defaults), else the fast sampler at 20
    steps; --steps, --lattice/--no-lattice and --cache/--no-cache override them one by one. A note
    on stderr says which sampler ran and why.
    """
    from dil.runtime.support.deps import MissingDependency
    from dil.runtime.inputs.table import DataError
    from dil.evaluate.engine_eval import evaluate_engine
    from dil.evaluate.harness import EvalOptions, EvaluationError
    from dil.evaluate.torch_baselines import ReferenceUnavailable
    from dil.runtime.manifest import ManifestError
    from dil.runtime.sampling.config import sampler_config

    if checkpoint is not None and not ddpm_windows:
        raise click.UsageError("--checkpoint is only used by --ddpm-windows N (the PyTorch DDPM reference)")
    dates, sampler = pop_dates(options), pop_sampler(options)
    steps = sampler.pop("steps")
    checked_output(json_path, "--json")
    checked_output(plots_dir, "--plots", folder=True)
    try:
        if plots_dir is not None:
            from dil.runtime.support.deps import require

            require("matplotlib", "plot")
        if engine is None:
            from dil.runtime.manifest import default_artifact

            engine = default_artifact()
        sampler_config(None, **{k: v for k, v in sampler.items() if v is not None})  # a bad setting: before any work
        options = EvalOptions(n_windows=n_windows, samples=samples, steps=steps, seed=seed, season=season,
                              batch_size=batch_size, progress=True, protocol=protocol)
        ev = evaluate_engine(
            engine, options, dataset=dataset, data=data, columns=columns, sampler=sampler,
            missing_values=missing_values, **dates,
            ddpm_windows=ddpm_windows, checkpoint=checkpoint,
        )
    except (DataError, ManifestError, EvaluationError, MissingDependency, ReferenceUnavailable, ValueError,
            OSError) as exc:
        raise one_line(exc) from None
    report = ev.report
    report["protocol"]["engine"] = str(engine)
    for note in [*ev.notes, f"note: {report['protocol']['sampler_choice']}"]:
        click.echo(note, err=True)
    click.echo(format_report(report))
    if show_stats and ev.stats is not None:
        from dil.runtime.sampling.description import stats_text

        click.echo(stats_text(ev.stats))
    from dil.runtime.support.files import made_folders

    if json_path is not None:
        with made_folders(json_path.parent):
            write_text(json_path, json.dumps(report, indent=2, allow_nan=False) + "\n")
        click.echo(f"report: {json_path}")
    if plots_dir is not None:
        from dil.evaluate.plots import calibration_plot, fan_charts

        with made_folders(plots_dir):
            paths = [fan_charts(ev.windows, plots_dir), calibration_plot(report["calibration"], plots_dir)]
        click.echo("plots: " + ", ".join(str(p) for p in paths))


if __name__ == "__main__":  # pragma: no cover
    main()
