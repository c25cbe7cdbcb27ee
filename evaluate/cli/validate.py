"""`dil-validate`: check an exported artifact and the runtime sampler against the PyTorch reference."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from dil.runtime.cli.options import pop_sampler, sampler_options

# What `pip install 'dil[export]'` brings; checked before anything imports torch.
VALIDATE_MODULES = ("torch", "safetensors", "onnx", "onnxruntime")


def _fmt(x) -> str:
    return "n/a" if x is None else f"{x:.2e}"


def summary_lines(report: dict) -> list[str]:
    """The headline numbers and gates of a validation report, one line each."""
    free, check = report["free_run"], report["controller_check"]
    lines = [
        f"validated {report['engine']} against {report['checkpoint']} on {report['series']} real windows x "
        f"{report['samples']} samples, {report['steps']} steps (standardised scale"
        + ("; random time features/covariates" if report.get("features") == "random" else "") + ")",
        f"  per-graph max abs error   encode {_fmt(report.get('encode_max_abs_err'))}  "
        f"denoise {_fmt(report.get('denoise_max_abs_err'))}",
        f"  controller check          agreement {report['controller_agreement']:.6f}  "
        f"({check['units']} decisions, samples max abs diff {_fmt(check['forecast_max_abs_err'])})",
        f"  free run                  decision agreement {report['decision_agreement']:.6f}  "
        f"flips {free['flips_total']} ({free['first_flips']} first)  rows flipped {free['rows_flipped']}",
        f"                            samples max abs error {_fmt(report['forecast_max_abs_err'])} "
        f"(rows without flips {_fmt(free['forecast_max_abs_err_agreeing_rows'])}, "
        f"relative to max(1, |sample|) {_fmt(free['forecast_max_scaled_err_agreeing_rows'])})  "
        f"quantiles {_fmt(report['quantile_max_abs_err'])}",
    ]
    for f in [f for f in report["flips"] if not f["consequence"]][:5]:
        where = f"series {f['series']}" + (f" sample {f['sample']} token {f['token']}" if "token" in f else "")
        lines.append(f"  flip at step {f['step']}, {where}: {f['decision']} runtime {f['runtime']} vs reference "
                     f"{f['reference']} (threshold missed by {_fmt(f['margin'])})")
    lines.append("passed" if report["passed"] else "FAILED: " + "; ".join(report["failures"]))
    return lines


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--engine", default=None, metavar="PATH",
              help="Exported artifact: NAME.onnx, NAME.json or any sibling file of it (default: the shipped "
                   "metro-traffic model).")
@click.option("--checkpoint", default=None, type=click.Path(path_type=Path), metavar="RUN_DIR",
              help="The dil-train run the artifact was exported from; refused when its model.safetensors is "
                   "not the exported weights (sha256) [default: the weights the artifact ships, "
                   "NAME.weights.safetensors].")
@click.option("--json", "json_path", default=None, type=click.Path(dir_okay=False, path_type=Path), metavar="FILE",
              help="Write the full report (every number, every flip) as JSON here (missing folders are created).")
@click.option("--dataset", default=None, metavar="NAME|FILE",
              help="Take the context windows from this bundled dataset or table file [default: the training data].")
@click.option("--series", default=4, show_default=True, type=int, help="Real context windows (series) to forecast.")
@click.option("--samples", default=100, show_default=True, type=int, help="Sample paths per series.")
@click.option("--steps", default=20, show_default=True, type=int, help="Solver steps (network evaluations).")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the noise and of the controller's choices.")
@sampler_options(steps=False)
@click.option("--threads", default=None, type=int, help="ONNX Runtime intra-op threads (default: one per core).")
@click.option("--quiet", is_flag=True, help="No progress display.")
def main(engine, checkpoint, json_path, dataset, series, samples, steps, seed, threads, quiet, **options):
    """Validate an exported artifact and the runtime's sampler against the PyTorch reference.

    \b
    Three checks, on real context windows, all on the standardised scale:
      per-graph     each ONNX graph vs the torch module (encode_max_abs_err, denoise_max_abs_err)
      controller    runtime and reference controllers fed the same network outputs step by step
                    must take identical decisions (tokens computed, orders, full steps):
                    controller_agreement must be exactly 1
      free run      each side with its own network (ONNX Runtime vs torch): decision_agreement
                    (>= 0.99), forecast_max_abs_err and quantile_max_abs_err (<= 1e-3); decisions
                    that flip are listed with the margin by which their threshold was missed,
                    and rows without flips must agree within 1e-4 * max(1, |sample|)

    The torch module is rebuilt from the weights the artifact ships (NAME.weights.safetensors beside
    the graphs); no training run is needed. For a model with time features or covariates those
    inputs are random stand-ins in [-0.5, 0.5], the same for both sides (the windows carry only the
    target). Works for epsilon and v models and any context patch. Exits with status 1 when a gate
    fails.

    \b
    Example:
      dil-validate --engine engines/metro-traffic.onnx --json validation.json
    """
    from dil.runtime.support.deps import MissingDependency, require

    try:
        for module in VALIDATE_MODULES:
            require(module, "export")
    except MissingDependency as exc:
        raise click.ClickException(str(exc)) from None
    sampler_settings = {k: v for k, v in pop_sampler(options).items() if v is not None}
    from dil.runtime.support.files import folder_problem, made_folders

    problem = json_path is not None and folder_problem(json_path.parent)  # missing folders are created
    if problem:
        raise click.ClickException(f"--json {json_path}: {problem}")
    from tqdm import tqdm

    from dil.evaluate.validation_inputs import ValidationInputError
    from dil.evaluate.validation_report import run_validation
    from dil.runtime.backends.onnx_engine import EngineError
    from dil.runtime.manifest import ManifestError, default_artifact

    bar = tqdm(total=3, file=sys.stderr, disable=True if quiet else None, leave=False,
               bar_format="{desc} [stage {n}/{total}, {elapsed}]")

    def progress(message: str) -> None:
        bar.set_description_str(message, refresh=False)
        bar.update(1)

    try:
        if engine is None:
            engine = default_artifact()
        report = run_validation(engine, checkpoint, dataset, series, samples, steps, seed, sampler_settings,
                                threads=threads, progress=progress)
    except (ManifestError, EngineError, ValidationInputError, ValueError) as exc:
        raise click.ClickException(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from None
    finally:
        bar.close()
    if json_path is not None:
        from dil.runtime.support.files import write_text

        with made_folders(json_path.parent):
            write_text(json_path, json.dumps(report, indent=2) + "\n")
    for line in summary_lines(report):
        click.echo(line)
    if not report["passed"]:
        sys.exit(1)


if __name__ == "__main__":  # pragma: no cover
    main()
