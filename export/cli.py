"""`dil-export`: export a trained checkpoint to a validated ONNX artifact (DESIGN section 10)."""

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
    lines.append(f"wrote {manifest.path} (manifest)")
    v = manifest.validation
    if v.get("skipped"):
        return lines + ["validation skipped"]
    lines.append(f"validation: ONNX Runtime ({v['provider']}) vs PyTorch, max abs error on the standardised scale, "
                 f"tolerance {v['tolerance']:.0e}")
    for g, e in v["graphs"].items():
        parts = "  ".join(f"{kind} {_fmt(e[kind]['max_abs_err'])}" for kind in ("random", "real") if kind in e)
        lines.append(f"  {g:<8} {parts}  (max rel {_fmt(e['max_rel_err'])})  {'ok' if e['passed'] else 'FAILED'}")
    sub = v["subset_equivalence"]
    errs = "  ".join(f"{k} {_fmt(x)}" for k, x in sub["max_abs_err"].items())
    lines.append(f"  subset equivalence  {errs}  (tolerance {sub['tolerance']:.0e})  {'ok' if sub['passed'] else 'FAILED'}")
    real = v.get("real_data", {})
    if real.get("used"):
        match = {True: "matches the training data", False: "DIFFERS from the training data's sha256",
                 None: "training data hash not recorded"}[real.get("matches_training_data")]
        lines.append(f"  real inputs: {real['source']} ({real['part']} part, {len(real['windows'])} windows; {match})")
    else:
        lines.append(f"  real inputs skipped: {real.get('reason', 'not available')}")
    return lines


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.option("--checkpoint", required=True, type=click.Path(path_type=Path),
              help="Run folder written by dil-train (config.json + model.safetensors), e.g. runs/metro.")
@click.option("--out", default=Path("engines"), type=click.Path(path_type=Path),
              help="Output folder. Created when missing if its parent exists; a deeper missing path is an error.")
@click.option("--name", default=None, help="Artifact name: writes NAME.encode.onnx, NAME.denoise.onnx, NAME.json "
              "[default: the checkpoint folder's name]. An existing artifact of that name is replaced only "
              "after the new one passes validation.")
@click.option("--data", "data_path", default=None, type=click.Path(dir_okay=False, path_type=Path),
              help="The training table, for a checkpoint trained on a local file (--data of dil-train): "
                   "validation then also runs on real windows of it. Bundled datasets are found by name.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def main(checkpoint: Path, out: Path, name: str | None, data_path: Path | None, quiet: bool) -> None:
    """Export a checkpoint to ONNX (encode + denoise graphs) and validate it.

    The graphs are checked against the PyTorch model with ONNX Runtime (CPU) on random inputs and on
    real windows of the training data, at several shapes, and for the token-subset equivalence. An
    export beyond tolerance (1e-4 max abs error on the standardised scale; 1e-5 for the subset check)
    is refused and nothing is written. The manifest NAME.json is written last and records the model,
    schedule, data hash, graph I/O, validation numbers and tool versions.

    \b
    Examples:
      dil-export --checkpoint runs/metro-traffic                 # -> engines/metro-traffic.*
      dil-export --checkpoint runs/mine --out engines --name mine --data my.csv
    """
    from dil._deps import MissingDependency, require

    try:
        for module in EXPORT_MODULES:
            require(module, "export")
    except MissingDependency as exc:
        raise click.ClickException(str(exc)) from None
    from tqdm import tqdm

    from dil.export.artifact import ExportError, export_artifact
    from dil.train.checkpoint import CheckpointError

    # No bar when stderr is not a terminal (disable=None): logs and captured output stay clean.
    bar = tqdm(total=5, file=sys.stderr, disable=True if quiet else None, leave=False,
               bar_format="{desc} [stage {n}/{total}, {elapsed}]")

    def progress(message: str) -> None:  # called as each stage starts
        bar.set_description_str(message, refresh=False)
        bar.update(1)

    try:
        manifest = export_artifact(checkpoint, out, name, data_path=data_path, progress=progress)
    except (CheckpointError, ExportError) as exc:
        raise click.ClickException(str(exc).splitlines()[0]) from None
    finally:
        bar.close()
    for line in summary_lines(manifest):
        click.echo(line)


if __name__ == "__main__":  # pragma: no cover
    main()
