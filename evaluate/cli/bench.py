"""`dil-bench`: latency, work, memory and CRPS of the samplers of one model, in one run."""

from __future__ import annotations

import json
from pathlib import Path

import click

from dil.runtime.cli.options import SPACING_HELP, checked_output
from dil.runtime.support.files import write_text
from dil.runtime.sampling.schedule import DEFAULT_SPACING, SPACINGS
from dil.evaluate.bench_worker import NAMES


def _ints(text: str, what: str) -> tuple:
    try:
        values = tuple(int(v) for v in str(text).split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"{what} must be comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise click.BadParameter(f"{what} must be positive integers, got {text!r}")
    return values


def _num(v, fmt="{:.4f}") -> str:
    return "-" if v is None else fmt.format(v)


def _speed(speedup: float) -> str:
    """'1.92x faster' or '1.92x slower' (a speed-up below 1 is a slow-down: 0.52x -> 1.92x slower)."""
    return f"{speedup:.2f}x faster" if speedup >= 1 else f"{1 / speedup:.2f}x slower"


def format_runs(report: dict) -> str:
    """The runs as a text table, then the speed/accuracy ratios."""
    lines = [
        f"{'run':<19} {'batch':>8} {'steps':>5} {'latency s (min..max)':>26} {'crps':>8} {'tokens':>10}"
        f" {'calls':>5} {'control':>7} {'peak MB':>8}"
    ]
    for r in report["runs"]:
        lat = f"{r['latency_s_median']:.4g} ({r['latency_s_min']:.3g}..{r['latency_s_max']:.3g})"
        lines.append(
            f"{r['name']:<19} {str(r['series']) + 'x' + str(r['samples']):>8} {r['steps']:>5} {lat:>26}"
            f" {_num(r['crps']):>8} {r['tokens_computed']:>10} {r['engine_calls']:>5}"
            f" {_num(r['control_share'], '{:.1%}'):>7} {_num(r['peak_rss_mb'], '{:.0f}'):>8}"
        )
    p = report["protocol"]
    lines.append(
        f"CRPS on {p['crps_windows']} {p['dataset']} test windows (19-level weighted quantile loss / sum |y|);"
        f" {p['threads']} threads for torch and ONNX Runtime; import dil.runtime"
        f" {report['import']['seconds_median']:.3f} s (loads torch: {report['import']['loads_torch']})"
    )
    for q in report["ratios"]:
        change = "" if q["crps_change"] is None else f", CRPS {q['crps_change']:+.2%}"
        other = q["vs"] + (f" ({q['vs_steps']} steps)" if q["vs_steps"] != q["steps"] else "")
        lines.append(
            f"{q['series']}x{p['samples']}, {q['steps']} steps: {q['run']} {_speed(q['speedup'])} than {other}{change}"
        )
    return "\n".join(lines)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--engine", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Exported artifact: NAME.onnx, NAME.plan or NAME.json.")
@click.option("--dataset", help="Bundled dataset whose test windows are used, with --frontier its validation "
                                "windows (default: the engine's).")
@click.option("--data", type=click.Path(dir_okay=False, path_type=Path),
              help="With --frontier: the training table of a model trained on a local file (read with the dates and "
                   "missing values its manifest records).")
@click.option("--checkpoint", type=click.Path(file_okay=False, path_type=Path),
              help="Training run folder of the engine, for torch-full and reference-ddpm1000 "
                   "(default: the torch weights the artifact ships; without them those runs are skipped).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the report here (missing folders are created).")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the CRPS-vs-latency frontier (PNG, needs dil[plot]) here (missing folders are created).")
@click.option("--steps", "steps", default="5,10,20,50", show_default=True,
              help="Solver steps for 1-series batches (with --frontier: of the plain sampler, default 5,6,7,8,10,20,50; the most is the "
                   "reference).")
@click.option("--large-steps", default="20", show_default=True,
              help="Solver steps for batches of more than one series (full sweep: 5,10,20,50).")
@click.option("--series", default="1,50", show_default=True, help="Batch shapes: series per forecast.")
@click.option("--samples", default=100, show_default=True, type=click.IntRange(min=1), help="Samples per series.")
@click.option("--repeats", default=3, show_default=True, type=click.IntRange(min=1),
              help="Timed forecasts per 1-series configuration (after one warm-up; with --frontier: per "
                   "configuration, 1 window).")
@click.option("--large-repeats", default=1, show_default=True, type=click.IntRange(min=1),
              help="Timed forecasts per multi-series configuration.")
@click.option("--ddpm-repeats", default=1, show_default=True, type=click.IntRange(min=1),
              help="Timed forecasts of reference-ddpm1000 (1000 network calls each).")
@click.option("--ddpm-series", default="1", show_default=True,
              help="Batch shapes reference-ddpm1000 runs on (full sweep: 1,50; 50 series take about 1000x "
                   "a 1-step 50-series forecast).")
@click.option("--windows", default=None, type=click.IntRange(min=1),
              help="Test windows (series-windows) every CRPS is computed on, the same for every run "
                   "(reference-ddpm1000 costs 1000 network calls per window: the default keeps the run short; "
                   "compare accuracy on more windows with dil-eval --ddpm-windows). With --frontier: validation "
                   "windows spread over evenly spaced origins, one series each where the part holds as many "
                   "origins. [default: 3; with --frontier 48]")
@click.option("--threads", default=0, type=click.IntRange(min=0),
              help="Intra-op threads of torch and ONNX Runtime (default: the cores available).")
@click.option("--spacing", metavar="|".join(SPACINGS), default=DEFAULT_SPACING, show_default=True,
              help=SPACING_HELP + " Applies to torch-full, runtime-full and runtime-dil alike.")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(min=0), help="Sampling seed.")
@click.option("--only", help=f"Comma-separated samplers to run (default: all of {', '.join(NAMES)}).")
@click.option("--in-process", is_flag=True,
              help="Run every configuration in this process (quicker; no per-configuration peak RSS).")
@click.option("--frontier", is_flag=True,
              help="Instead: choose the artifact's sampler defaults. CRPS of the plain sampler at --steps and the "
                   "fast sampler at --fast-steps on the validation windows, latency of one window; the default "
                   "is the fastest within 1% of the CRPS of the plain sampler at its most steps (docs/sampler.md "
                   "section 14). Prints the table and the choice; writes nothing unless --write-defaults.")
@click.option("--fast-steps", default="10,20", show_default=True,
              help="With --frontier: solver steps of the fast sampler (lattice + token cache).")
@click.option("--write-defaults", is_flag=True,
              help="With --frontier: record the choice as the artifact's sampler_defaults (NAME.json rewritten "
                   "in one step, its other content unchanged; nothing is written when the run fails). dil-run, "
                   "dil-eval and Forecaster.predict then use it unless given sampler options.")
@click.pass_context
def main(ctx, engine, dataset, data, checkpoint, json_path, plot_path, steps, large_steps, series, samples, repeats,
         large_repeats, ddpm_repeats, ddpm_series, windows, threads, spacing, seed, only, in_process, frontier,
         fast_steps, write_defaults):
    """Benchmark the samplers of an exported model in one run on this machine.

    Per forecast of 1 series x 100 samples and 50 series x 100 samples: torch-full (the PyTorch
    module, every token recomputed, the runtime's solver and steps), runtime-full (ONNX Runtime,
    lattice and cache off), runtime-dil (lattice + cache on), each over --steps, and
    reference-ddpm1000 (the PyTorch module, 1000-step ancestral DDPM). Reports latency (median and
    min..max over repeats after a warm-up), tokens computed, engine calls, control share, peak RSS
    (each configuration in a fresh process), `import dil.runtime` time and CRPS on the same test
    windows, and prints the speed-up and CRPS ratios.

    The defaults take 7-8 minutes on 2 idle cores for the default model (far longer on a busy
    machine). The full sweep:
    --large-steps 5,10,20,50 --large-repeats 3 --ddpm-series 1,50 --windows 50 (hours on 2 cores).

    With --frontier it chooses the artifact's sampler defaults instead (a few minutes for the
    default model); --write-defaults records them in its manifest:

    \b
      dil-bench --engine engines/NAME.json --frontier --write-defaults
    """
    from dil.runtime.support.deps import MissingDependency, require
    from dil.runtime.inputs.table import DataError
    from dil.evaluate.bench import BenchConfig, BenchError, run_bench
    from dil.evaluate.harness import EvaluationError
    from dil.runtime.manifest import ManifestError

    checked_output(json_path, "--json")
    checked_output(plot_path, "--plot")
    if frontier or write_defaults:
        return _frontier(ctx, engine, dataset, data, json_path, steps, fast_steps, samples, repeats, windows, threads,
                         seed, write_defaults)
    if data is not None:
        raise click.UsageError("--data applies to --frontier only (the benchmark times the bundled dataset's windows)")
    if ctx.get_parameter_source("fast_steps") != click.core.ParameterSource.DEFAULT:
        raise click.UsageError("--fast-steps applies to --frontier only")
    try:
        if plot_path is not None:
            require("matplotlib", "plot")
        names = tuple(n.strip() for n in only.split(",") if n.strip()) if only else NAMES
        cfg = BenchConfig(
            engine=engine, dataset=dataset, checkpoint=checkpoint, steps=_ints(steps, "--steps"),
            large_steps=_ints(large_steps, "--large-steps"), series=_ints(series, "--series"), samples=samples,
            repeats=repeats, large_repeats=large_repeats, ddpm_repeats=ddpm_repeats,
            ddpm_series=_ints(ddpm_series, "--ddpm-series"), windows=windows or 3, threads=threads, seed=seed,
            names=names, isolate=not in_process, spacing=spacing,
        )
        report = run_bench(cfg, progress=True, say=lambda line: click.echo(line, err=True))
    except click.BadParameter as exc:
        raise click.ClickException(exc.format_message()) from None
    except (BenchError, DataError, ManifestError, EvaluationError, MissingDependency, ValueError, OSError) as exc:
        raise click.ClickException(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from None
    click.echo(format_runs(report))
    from dil.runtime.support.files import made_folders

    if json_path is not None:
        with made_folders(json_path.parent):
            write_text(json_path, json.dumps(report, indent=2, allow_nan=False) + "\n")
        click.echo(f"report: {json_path}")
    if plot_path is not None:
        from dil.evaluate.plots import frontier_plot

        with made_folders(plot_path.parent):
            click.echo(f"plot: {frontier_plot(report, plot_path)}")


# dil-bench options that do not apply to --frontier (refused there rather than silently ignored).
_NOT_FRONTIER = ("checkpoint", "plot_path", "large_steps", "series", "large_repeats", "ddpm_repeats", "ddpm_series",
                 "spacing", "only", "in_process")


def _frontier_steps(ctx, steps: str) -> tuple:
    """The plain sampler's steps of a frontier: --steps when given, else the frontier's own sweep
    (finer at few steps, where the spread of the samples changes fastest)."""
    from dil.evaluate.frontier import PLAIN_STEPS

    if ctx.get_parameter_source("steps") == click.core.ParameterSource.DEFAULT:
        return PLAIN_STEPS
    return _ints(steps, "--steps")


def _frontier(ctx, engine, dataset, data, json_path, steps, fast_steps, samples, repeats, windows, threads, seed,
              write_defaults) -> None:
    """dil-bench --frontier [--write-defaults]: dil.evaluate.frontier, printed, then recorded."""
    from dil.runtime.support.files import made_folders
    from dil.runtime.support.deps import MissingDependency
    from dil.runtime.inputs.table import DataError
    from dil.evaluate.frontier import (FrontierConfig, FrontierError, check_write_defaults, format_frontier,
                                       run_frontier)
    from dil.evaluate.harness import EvaluationError
    from dil.runtime.manifest import ManifestError, write_sampler_defaults

    given = [p.opts[0] for p in ctx.command.params if p.name in _NOT_FRONTIER
             and ctx.get_parameter_source(p.name) != click.core.ParameterSource.DEFAULT]
    if given:
        raise click.UsageError(f"{given[0]} does not apply to --frontier")
    if not ctx.params["frontier"]:
        raise click.UsageError("--write-defaults needs --frontier (it records the frontier's choice)")
    try:
        cfg = FrontierConfig(windows=windows or 48, samples=samples, seed=seed, plain_steps=_frontier_steps(ctx, steps),
                             fast_steps=_ints(fast_steps, "--fast-steps"), repeats=repeats, threads=threads,
                             dataset=dataset, data=None if data is None else str(data))
        if write_defaults:  # refused before the run, not after minutes of it
            check_write_defaults(engine)
        report = run_frontier(engine, cfg, progress=True, say=lambda line: click.echo(line, err=True))
        click.echo(format_frontier(report))
        if json_path is not None:
            with made_folders(json_path.parent):
                write_text(json_path, json.dumps(report, indent=2, allow_nan=False) + "\n")
            click.echo(f"report: {json_path}")
        if write_defaults:
            path = write_sampler_defaults(engine, report["choice"])
            click.echo(f"sampler_defaults written to {path}")
    except click.BadParameter as exc:
        raise click.ClickException(exc.format_message()) from None
    except (FrontierError, DataError, ManifestError, EvaluationError, MissingDependency, ValueError, OSError) as exc:
        raise click.ClickException(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from None


if __name__ == "__main__":  # pragma: no cover
    main()
