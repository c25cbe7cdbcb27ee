"""`dil-train`: train a diffusion forecaster on a bundled dataset or a local table."""

from __future__ import annotations

import json
from pathlib import Path

import click

from dil.data.registry import DATASETS, DEFAULT_DATASET

# Options that default to the run's stored value on --resume and to the library default otherwise.
MODEL_OPTIONS = {"context": "context_length", "horizon": "horizon", "d_model": "d_model", "heads": "num_heads",
                 "layers": "num_layers", "ffn_dim": "ffn_dim"}
TRAIN_OPTIONS = ("epochs", "steps_per_epoch", "batch_size", "noise_draws", "lr", "seed", "device", "patience")


def _stored(run_dir: Path) -> dict:
    path = run_dir / "state.json"
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}  # the trainer reports the broken file


def _configs(opts: dict, spec, stored: dict):
    from dil.runtime.model_config import ModelConfig
    from dil.train.trainer import TrainConfig

    model = dict(stored.get("model") or {})
    if not model:
        model = dict(ModelConfig().to_dict(), context_length=spec.context_length, horizon=spec.horizon)
    model.update({field: opts[opt] for opt, field in MODEL_OPTIONS.items() if opts[opt] is not None})
    train = dict(stored.get("train") or {})
    train.update({k: opts[k] for k in TRAIN_OPTIONS if opts[k] is not None})
    return ModelConfig.from_dict(model), TrainConfig.from_dict(train)


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.option("--dataset", type=click.Choice(list(DATASETS)), default=None,
              help=f"Bundled dataset to train on (default {DEFAULT_DATASET}).")
@click.option("--data", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="A local table instead: .csv, .csv.gz, .txt(.gz) (no header) or .parquet; rows = time steps, columns = series.")
@click.option("--date-column", default=None, help="Timestamp column of --data (sorted, de-duplicated, regular gaps become missing steps).")
@click.option("--date-format", default=None, metavar="FMT",
              help="strptime format of --date-column, e.g. '%d.%m.%Y %H:%M' [ISO dates as such; other dates "
                   "month-first or day-first, whichever reads every row; when both do, an error].")
@click.option("--dayfirst/--monthfirst", "dayfirst", default=None,
              help="Read --date-column day-first (13.07.2016) or month-first (07/13/2016) [decided from the data].")
@click.option("--columns", default=None, help="Comma-separated series to train on (default: every numeric column).")
@click.option("--context", type=int, default=None, help="Context length L in steps [dataset default, e.g. 168].")
@click.option("--horizon", type=int, default=None, help="Forecast horizon H in steps [dataset default, e.g. 24].")
@click.option("--epochs", type=int, default=None, help="Maximum epochs [18]; with --resume, the new total.")
@click.option("--steps-per-epoch", type=int, default=None, help="Optimizer steps per epoch [60].")
@click.option("--batch-size", type=int, default=None, help="Windows per step [64].")
@click.option("--noise-draws", type=int, default=None, help="Noise levels per window sharing one context encoding [4].")
@click.option("--lr", type=float, default=None, help="Peak learning rate (AdamW, cosine schedule) [2e-3].")
@click.option("--patience", type=int, default=None, help="Early stopping: epochs without a better validation loss [4].")
@click.option("--seed", type=int, default=None, help="Seed for weights, batches and noise [0].")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default=None, help="Torch device [auto: cuda if available].")
@click.option("--d-model", type=int, default=None, help="Token width D [64].")
@click.option("--heads", type=int, default=None, help="Attention heads [4].")
@click.option("--layers", type=int, default=None, help="Transformer blocks [3].")
@click.option("--ffn-dim", type=int, default=None, help="MLP hidden width [128].")
@click.option("--out", "out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Run folder to write, e.g. runs/metro (missing folders are created when training starts).")
@click.option("--resume", is_flag=True, help="Continue the run in --out (same model and data; unspecified options keep the run's values).")
@click.option("--overwrite", is_flag=True, help="Replace a run already in --out instead of refusing.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def main(**opts) -> None:
    """Train a diffusion forecaster and write a checkpoint folder (--out).

    \b
    Examples:
      dil-train --out runs/metro                      # bundled metro-traffic, default preset
      dil-train --dataset etth1 --epochs 20 --out runs/etth1
      dil-train --data my.csv --date-column date --columns load --context 96 --horizon 24 --out runs/mine
      dil-train --data meter.csv --date-column time --dayfirst --out runs/meter   # 01.07.2016-style dates
      dil-train --out runs/metro --resume --epochs 20  # continue a run
    """
    from dil.runtime.deps import MissingDependency, require

    try:
        for module in ("torch", "safetensors"):  # before anything imports them: one line naming the extra
            require(module, "train")
        _run(opts)
    except MissingDependency as exc:
        raise click.ClickException(str(exc)) from None


def _check_out(out: Path, resume: bool, overwrite: bool) -> None:
    """Refuse an unusable --out before any work; its missing folders are created only to train."""
    from dil.runtime.files import folder_problem
    from dil.runtime.table import DataError
    from dil.train.trainer import check_run_dir

    problem = folder_problem(out)
    if problem:
        raise DataError(f"--out {out}: {problem}")
    if out.parent.is_dir():
        check_run_dir(out, resume, overwrite)  # an existing run needs --resume or --overwrite
    elif resume:
        raise DataError(f"--out {out}: no run to resume there (the folder does not exist)")


def _run(opts: dict) -> None:
    from dil.data.datasets import resolve
    from dil.runtime.files import made_folders
    from dil.runtime.table import DataError
    from dil.runtime.scaling import ScalingError
    from dil.train.checkpoint import CheckpointError
    from dil.train.trainer import train

    try:
        _check_out(opts["out"], opts["resume"], opts["overwrite"])
        stored = _stored(opts["out"]) if opts["resume"] else {}
        dataset = opts["dataset"]
        if dataset is None and opts["data"] is None:
            dataset = (stored.get("data") or {}).get("dataset") if stored else None
            dataset = dataset if dataset in DATASETS else DEFAULT_DATASET
        spec, table = resolve(dataset, opts["data"], opts["date_column"], opts["columns"],
                              date_format=opts["date_format"], dayfirst=opts["dayfirst"])
        for line in table.notes:
            click.echo(line, err=True)
        model_config, train_config = _configs(opts, spec, stored)
        with made_folders(opts["out"]):  # removed again if training fails before writing anything
            summary = train(spec, table, model_config, train_config, opts["out"], resume=opts["resume"],
                            progress=not opts["quiet"], overwrite=opts["overwrite"])
    except (DataError, CheckpointError, ScalingError, ValueError) as exc:
        raise click.ClickException(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from None
    best = summary["best_val_loss"]
    click.echo(
        f"trained {spec.name} ({', '.join(table.names[:4])}{', ...' if len(table.names) > 4 else ''}): "
        f"{summary['epochs']} epochs, {summary['steps']} steps, {summary['seconds']:.0f} s"
        + (" (early stop)" if summary["stopped_early"] else "")
    )
    click.echo(f"best val loss {best:.4f} at epoch {summary['best_epoch']}; "
               f"windows train {summary['windows']['train']}, val {summary['windows']['val']}")
    click.echo(f"checkpoint: {summary['run_dir']}")


if __name__ == "__main__":  # pragma: no cover
    main()
