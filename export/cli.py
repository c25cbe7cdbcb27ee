"""`dil-export`: export a trained checkpoint to a validated ONNX artifact (docs/architecture.md section 6)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

# What `pip install 'dil[export]'` brings; checked before anything imports torch.
EXPORT_MODULES = ("torch", "safetensors", "onnx", "onnxscript", "onnxruntime")


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB"):
        if n < 1024 or unit == "MB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"  # pragma: no cover


def _fmt(x) -> str:
    return "n/a" if x is None else f"{x:.2e}"


def summary_lines(manifest) -> list[str]:
    """The files written and the validation numbers vs their tolerances, one line each."""
    out_dir = manifest.path.parent
    lines = [f"wrote {out_dir / g['file']} ({_size(g['bytes'])})" for g in manifest.graphs.values()]
    weights = manifest.extra.get("weights")
    if weights:
        lines.append(f"wrote {out_dir / weights['file']} ({_size(weights['bytes'])}, torch weights)")
    lines.append(f"wrote {manifest.path} (manifest)")
    v = manifest.validation
    if v.get("skipped"):
        return lines + ["validation skipped"]
    lines.append(f"validation: ONNX Runtime ({v['provider']}) vs PyTorch, max abs error on the standardised scale, "
                 f"tolerance {v['tolerance']:.0e}")
    for g, e in v["graphs"].items():
        parts = "  ".join(f"{kind} {_fmt(e[kind]['max_abs_err'])}" for kind in ("random", "real") if kind in e)
        lines.append(f"  {g:<15} {parts}  (max rel {_fmt(e['max_rel_err'])})  {'ok' if e['passed'] else 'FAILED'}")
    sub = v["subset_equivalence"]
    errs = "  ".join(f"{k} {_fmt(x)}" for k, x in sub["max_abs_err"].items())
    lines.append(f"  subset equivalence  {errs}  (tolerance {sub['tolerance']:.0e})  {'ok' if sub['passed'] else 'FAILED'}")
    full = v.get("full_step_equivalence")
    if full:
        lines.append(f"  full steps vs denoise  {_fmt(full['max_abs_err'])}  (tolerance {full['tolerance']:.0e})  "
                     f"{'ok' if full['passed'] else 'FAILED'}")
    real = v.get("real_data", {})
    if real.get("used"):
        match = {True: "matches the training data", False: "DIFFERS from the training data's sha256",
                 None: "training data hash not recorded"}[real.get("matches_training_data")]
        lines.append(f"  real inputs: {real['source']} ({real['part']} part, {len(real['windows'])} windows; {match})")
    else:
        lines.append(f"  real inputs skipped: {real.get('reason', 'not available')}")
    return lines


def fp16_lines(manifest) -> list[str]:
    """Summary of an FP16 variant: its files and its validation against torch."""
    out_dir = manifest.path.parent
    lines = [f"wrote {out_dir / g['file']} ({_size(g['bytes'])})" for g in manifest.graphs.values()]
    lines.append(f"wrote {manifest.path} (FP16 manifest: LayerNorm, softmax, reductions and I/O in float32)")
    v = manifest.validation
    if not v.get("skipped"):
        errs = "  ".join(f"{g} {_fmt(e['max_abs_err'])}" for g, e in v["graphs"].items())
        lines.append(f"  FP16 vs PyTorch float32: max abs error {errs}  (tolerance {v['tolerance']:.0e})  "
                     f"{'ok' if v['passed'] else 'FAILED'}")
    return lines


def tensorrt_lines(manifest) -> list[str]:
    """Summary of an artifact's TensorRT plans: files, build record, validation."""
    rec = manifest.extra.get("tensorrt")
    if not rec:
        return []
    out_dir = manifest.path.parent
    files = [g["plan_file"] for g in manifest.graphs.values() if "plan_file" in g] + [rec["cache_update"]["file"]]
    lines = [f"wrote {out_dir / f}" for f in files]
    prof = ", ".join(f"{a} {r['min']}..{r['opt']}..{r['max']}" for a, r in rec["profile"].items())
    lines.append(f"  TensorRT {rec['version']} on {rec['gpu']} (sm {rec['compute_capability']}), "
                 f"{rec['precision']} ({rec['mode']}); profile {prof}")
    v = manifest.validation.get("tensorrt", {})
    if v and not v.get("skipped"):
        errs = "  ".join(f"{g} {_fmt(e['max_abs_err'])}" for g, e in v["graphs"].items())
        poly = v.get("polygraphy", {})
        ptxt = (f"polygraphy {'ok' if poly.get('passed') else 'FAILED'}" if poly.get("ran")
                else f"polygraphy not run ({poly.get('reason', '')})")
        lines.append(f"  vs ONNX Runtime: max abs error {errs}  device cache {_fmt(v['device_cache']['max_abs_err'])}"
                     f"  (tolerance {v['tolerance']:.0e})  {'ok' if v['passed'] else 'FAILED'}; {ptxt}")
    return lines


def _trt_ranges(**options) -> dict:
    from dil.runtime.backends.trt_profile import ProfileError, parse_range

    axes = {"trt_batch": "G", "trt_samples": "N", "trt_tokens": "S", "trt_context": "L", "trt_horizon": "H"}
    out = {}
    for opt, axis in axes.items():
        if options.get(opt) is not None:
            try:
                out[axis] = parse_range(options[opt])
            except ProfileError as exc:
                raise click.ClickException(f"--{opt.replace('_', '-')}: {exc}") from None
    return out


def _plan_target(out: Path, name: str | None) -> tuple[Path, str | None, bool, bool]:
    """--out engines/NAME.plan (or NAME.fp16.plan): (folder, name, tensorrt, fp16)."""
    if not out.name.endswith(".plan"):
        return out, name, False, False
    stem = out.name[: -len(".plan")]
    fp16 = stem.endswith(".fp16")
    stem = stem[: -len(".fp16")] if fp16 else stem
    if name is not None and name != stem:
        raise click.ClickException(f"--out {out} names the artifact {stem!r} but --name is {name!r}")
    return out.parent, stem, True, fp16


_RANGE_HELP = "TensorRT profile of {}: MIN,OPT,MAX (or one number) [default: {}]."


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.option("--checkpoint", default=None, type=click.Path(path_type=Path),
              help="Run folder written by dil-train (config.json + model.safetensors), e.g. runs/metro.")
@click.option("--engine", "artifact", default=None, type=click.Path(path_type=Path),
              help="Instead of --checkpoint: an exported artifact (NAME.json, NAME.fp16.json, ...) to build "
                   "TensorRT plans for on this machine (with --tensorrt); no training run or torch model needed.")
@click.option("--out", default=Path("engines"), type=click.Path(path_type=Path),
              help="Output folder, created (with any missing folders above it) when the export is written. "
                   "A path ending in NAME.plan (or NAME.fp16.plan) means the folder, --name NAME and --tensorrt "
                   "(and --fp16).")
@click.option("--name", default=None, help="Artifact name: writes NAME.encode.onnx, NAME.denoise.onnx, "
              "NAME.denoise_full.onnx, NAME.denoise_full_kv.onnx, NAME.json "
              "[default: the checkpoint folder's name]. An existing artifact of that name is replaced only "
              "after the new one passes validation.")
@click.option("--data", "data_path", default=None, type=click.Path(dir_okay=False, path_type=Path),
              help="The training table, for a checkpoint trained on a local file (--data of dil-train): "
                   "validation then also runs on real windows of it. Bundled datasets are found by name.")
@click.option("--fp16", is_flag=True, help="Also write the FP16 artifact NAME.fp16.{json,encode.onnx,denoise.onnx} "
              "(LayerNorm, softmax, reductions and I/O stay float32), validated against the float32 torch model "
              "(tolerance 1e-2). Runs on ONNX Runtime CPU: dil-run --engine engines/NAME.fp16.onnx.")
@click.option("--tensorrt", is_flag=True, help="Also build TensorRT engines (NAME[.fp16].{encode,denoise,cache_update}"
              ".plan) for this machine's GPU, validated against ONNX Runtime. Needs an NVIDIA GPU and the 'trt' extra.")
@click.option("--trt-batch", default=None, metavar="MIN,OPT,MAX", help=_RANGE_HELP.format("G, series per call", "1,16,32"))
@click.option("--trt-samples", default=None, metavar="MIN,OPT,MAX", help=_RANGE_HELP.format("N, samples", "1,100,128"))
@click.option("--trt-tokens", default=None, metavar="MIN,OPT,MAX",
              help=_RANGE_HELP.format("S, horizon tokens computed per call", "1,T,T"))
@click.option("--trt-context", default=None, metavar="MIN,OPT,MAX", help=_RANGE_HELP.format("L, context steps", "L,L,L"))
@click.option("--trt-horizon", default=None, metavar="MIN,OPT,MAX",
              help=_RANGE_HELP.format("H, horizon tokens (T = horizon / horizon_patch; the horizon steps when "
                                      "horizon_patch is 1)", "T,T,T"))
@click.option("--strongly-typed", is_flag=True, help="TensorRT 10.x: build FP16 engines from the FP16 ONNX graphs "
              "(strongly typed, as TensorRT 11 always does) instead of the FP16 builder flag.")
@click.option("--timing-cache", default=None, type=click.Path(dir_okay=False, path_type=Path),
              help="TensorRT timing cache file [default: tensorrt.timing.cache in the output folder].")
@click.option("--frontier/--no-frontier", default=True, show_default=True,
              help="After exporting, measure the artifact's sampler defaults on the validation windows of its "
                   "training data (the fastest sampler within 1% of the plain sampler's CRPS at 50 steps, "
                   "docs/sampler.md section 14) and record them in its manifest; --no-frontier leaves the "
                   "built-in defaults (a distilled student keeps its own).")
@click.option("--force", is_flag=True, help="With --engine: rebuild the plans even when they are up to date.")
@click.option("--allow-incomplete", is_flag=True, help="Export a run whose training did not finish (stopped before "
              "its planned epochs without early stopping, e.g. killed); refused otherwise.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def main(checkpoint: Path | None, artifact: Path | None, out: Path, name: str | None, data_path: Path | None,
         fp16: bool, tensorrt: bool, trt_batch, trt_samples, trt_tokens, trt_context, trt_horizon,
         strongly_typed: bool, timing_cache: Path | None, frontier: bool, force: bool, allow_incomplete: bool,
         quiet: bool) -> None:
    """Export a checkpoint to ONNX (encode, denoise and the full-step graphs denoise_full and
    denoise_full_kv) and validate it.

    The graphs are checked against the PyTorch model with ONNX Runtime (CPU) on random inputs and on
    real windows of the training data, at several shapes, and for the token-subset equivalence (and
    the full-step graphs against denoise's full step). An export beyond tolerance (1e-4 max abs error on the
    standardised scale; 1e-5 for the subset and full-step checks)
    is refused and nothing is written, as is a run whose training did not finish (--allow-incomplete).
    Beside the graphs, NAME.weights.safetensors holds the torch weights (dil-validate and the torch
    baselines of dil-bench rebuild the module from it). The manifest NAME.json is written last and
    records the model, schedule, data hash, graph I/O, weights sha256, validation numbers and tool
    versions.

    \b
    Examples:
      dil-export --checkpoint runs/metro-traffic                 # -> engines/metro-traffic.*
      dil-export --checkpoint runs/mine --out engines --name mine --data my.csv
      dil-export --checkpoint runs/metro-traffic --fp16          # + engines/metro-traffic.fp16.*
      dil-export --checkpoint runs/metro-traffic --out engines/metro-traffic.plan   # + TensorRT
      dil-export --engine engines/metro-traffic.fp16.json --tensorrt            # plans on this GPU
    """
    from dil.runtime.support.deps import MissingDependency, require

    if (checkpoint is None) == (artifact is None):
        raise click.ClickException("give exactly one of --checkpoint (export a trained run) and --engine "
                                   "(build TensorRT plans for an exported artifact)")
    out, name, plan_out, plan_fp16 = _plan_target(out, name)
    tensorrt, fp16 = tensorrt or plan_out, fp16 or plan_fp16
    from dil.runtime.support.files import folder_problem, made_folders

    for opt, folder in (("--out", out), ("--timing-cache", timing_cache and timing_cache.parent)):
        problem = folder and folder_problem(folder)
        if problem:
            raise click.ClickException(f"{opt}: {problem}")
    cache_folder = timing_cache.parent if timing_cache is not None else None
    try:
        for module in EXPORT_MODULES:
            require(module, "export")
    except MissingDependency as exc:
        raise click.ClickException(str(exc)) from None
    ranges = _trt_ranges(trt_batch=trt_batch, trt_samples=trt_samples, trt_tokens=trt_tokens,
                         trt_context=trt_context, trt_horizon=trt_horizon)
    if artifact is not None:
        with made_folders(cache_folder):
            return _plans_for_artifact(artifact, tensorrt, ranges, strongly_typed, timing_cache, force, quiet)
    from tqdm import tqdm

    from dil.export.artifact import ExportError, ExportOptions, export_artifact, export_stages
    from dil.train.checkpoint import CheckpointError

    options = ExportOptions(name=name, data_path=data_path, fp16=fp16, tensorrt=tensorrt, trt_ranges=ranges,
                            strongly_typed=strongly_typed or None, timing_cache=timing_cache,
                            allow_incomplete=allow_incomplete)
    # No bar when stderr is not a terminal (disable=None): logs and captured output stay clean.
    bar = tqdm(total=len(export_stages(options)), file=sys.stderr, disable=True if quiet else None, leave=False,
               bar_format="{desc} [stage {n}/{total}, {elapsed}]")

    def progress(stage: str, message: str) -> None:  # called as each stage starts
        bar.set_description_str(message, refresh=False)
        bar.update(1)

    try:
        with made_folders(out, cache_folder):  # removed again when the export fails
            manifest = export_artifact(checkpoint, out, options, progress=progress)
    except (CheckpointError, ExportError) as exc:
        raise click.ClickException(str(exc).splitlines()[0]) from None
    finally:
        bar.close()
    for line in summary_lines(manifest) + tensorrt_lines(manifest):
        click.echo(line)
    for variant in manifest.variants:
        for line in fp16_lines(variant) + tensorrt_lines(variant):
            click.echo(line)
    if frontier:
        click.echo(_sampler_defaults(manifest.path, data_path, quiet))


def _sampler_defaults(path: Path, data_path, quiet: bool) -> str:
    """dil-export's frontier (dil.evaluate.frontier.measure_defaults): the one line it reports. A
    failure leaves the artifact as exported, with the built-in defaults, and says why."""
    from dil.evaluate.frontier import measure_defaults

    say = (lambda line: None) if quiet else (lambda line: click.echo(line, err=True))
    try:
        return measure_defaults(path, data_path, progress=not quiet, say=say)[1]
    except ValueError as exc:  # FrontierError, DataError, EvaluationError, ManifestError: one line each
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return f"sampler defaults: not measured ({first}); dil-bench --frontier --write-defaults measures them"


def _plans_for_artifact(artifact: Path, tensorrt: bool, ranges: dict, strongly_typed: bool, timing_cache, force: bool,
                        quiet: bool) -> None:
    """dil-export --engine X --tensorrt: (re)build the plans of an existing artifact."""
    if not tensorrt:
        raise click.ClickException("--engine builds TensorRT plans for an exported artifact: add --tensorrt")
    from dil.export.tensorrt import TrtBuildError
    from dil.export.trt_artifact import tensorrt_for_artifact
    from dil.runtime.manifest import ManifestError
    from dil.runtime.backends.trt_profile import ProfileError

    say = (lambda stage, m: None) if quiet else (lambda stage, m: click.echo(m, err=True))
    try:
        manifest, built = tensorrt_for_artifact(artifact, ranges, strongly_typed=strongly_typed or None,
                                                timing_cache=timing_cache, force=force, progress=say)
    except (TrtBuildError, ManifestError, ProfileError) as exc:
        raise click.ClickException(str(exc).splitlines()[0]) from None
    if not built:
        click.echo(f"{manifest.path}: TensorRT plans are up to date for this GPU, TensorRT version and profile "
                   "(--force rebuilds them)")
        return
    for line in tensorrt_lines(manifest):
        click.echo(line)


if __name__ == "__main__":  # pragma: no cover
    main()
