"""`dil-train`: train a diffusion forecaster on a bundled dataset or a local table."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import click

from dil.data.registry import DATASETS, DEFAULT_DATASET
from dil.runtime.cli.options import date_options, missing_value_option
from dil.train.presets import MODEL_OPTIONS, describe_choices, run_configs, train_rows

def _stored(run_dir: Path) -> dict:
    path = run_dir / "state.json"
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}  # the trainer reports the broken file


def stored_table_options(opts: dict, record: dict, who: str) -> dict:
    """The options with --data and the table's reading options taken from a run's data record (the
    file it was trained on, recorded as "path"), for --resume or --distill without --data. A
    DataError (one line) when the record has no path or the file is gone."""
    from dil.runtime.inputs.errors import DataError

    path = record.get("path")
    if not path or not Path(path).is_file():
        where = f" ({path} is gone)" if path else ""
        raise DataError(f"{who} was trained on the local table {record.get('source') or record.get('dataset')}"
                        f"{where}: pass it with --data (and the same --date-column)")
    given = dict(opts, data=Path(path))
    for key in ("date_column", "date_format", "dayfirst"):
        if given.get(key) is None:
            given[key] = record.get(key)
    if given.get("columns") is None and record.get("columns"):
        given["columns"] = ",".join(record["columns"])
    return given


def _names(value: str | None) -> list[str]:
    return [c.strip() for c in (value or "").split(",") if c.strip()]


def _covariate_names(opts: dict, stored: dict) -> tuple[list[str], list[str]]:
    """(known-future, past-only) covariate names: the options, else (on --resume) the run's."""
    covs = (stored.get("features") or {}).get("covariates") or []
    known = _names(opts["covariates"]) if opts["covariates"] is not None else [c["name"] for c in covs if c["known"]]
    past = (_names(opts["past_covariates"]) if opts["past_covariates"] is not None
            else [c["name"] for c in covs if not c["known"]])
    return known, past


# What a student inherits from its teacher: the options that would change it are refused with --distill.
STUDENT_FIXED = tuple(MODEL_OPTIONS) + ("covariates", "past_covariates", "time_features")


def _student(opts: dict, stored: dict):
    """(Distillation or None, the stored record the run's options default to) for --distill: the
    teacher's model, features and data, and the student's training defaults (a resumed student's
    own record on --resume). One-line errors for options a student cannot take."""
    from dil.runtime.inputs.table import DataError

    if opts["distill"] is None:
        if opts["student_steps"] is not None or opts["teacher_steps"] is not None:
            raise DataError("--student-steps and --teacher-steps go with --distill TEACHER_RUN")
        if stored.get("distill"):
            raise DataError(f"--resume: {opts['out']} is a student of {stored['distill'].get('teacher')!r}: resume it "
                            "with --distill and its teacher's run folder")
        return None, stored
    given = [name for name in STUDENT_FIXED if opts[name] is not None]
    if given:
        raise DataError(f"--distill: the student has its teacher's model and features; drop "
                        f"--{given[0].replace('_', '-')}")
    from dil.train.distill import STUDENT_TRAINING, load_distillation

    if stored:  # --resume: the run's own steps unless given
        record = stored.get("distill") or {}
        distill, teacher = load_distillation(opts["distill"], opts["student_steps"] or record.get("student_steps"),
                                             opts["teacher_steps"] or record.get("teacher_steps"))
        if record.get("teacher_sha256") != distill.spec.teacher_sha256 or record.get("student_steps") != \
                distill.spec.student_steps or record.get("teacher_steps") != distill.spec.teacher_steps:
            raise DataError(f"--resume: {opts['out']} is not a student of {opts['distill']} with these steps")
        return distill, stored
    distill, teacher = load_distillation(opts["distill"], opts["student_steps"], opts["teacher_steps"])
    return distill, {"model": teacher["model"], "features": teacher.get("features") or {}, "data": teacher["data"],
                     "train": dict(STUDENT_TRAINING)}


def _describe(features) -> str:
    """One line: what the tokens carry beyond the target."""
    parts = [f"time features {', '.join(features.time_features)} ({features.freq})" if features.time_features
             else "no time features"]
    for c in features.covariates:
        kind = f"{len(c.categories)} categories" if c.kind == "categorical" else "numeric"
        parts.append(f"{c.name} ({'known' if c.known else 'past-only'}, {kind})")
    return "features: " + "; ".join(parts)


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.option("--dataset", type=click.Choice(list(DATASETS)), default=None,
              help=f"Bundled dataset to train on (default {DEFAULT_DATASET}).")
@click.option("--data", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="A local table instead: .csv, .csv.gz, .txt(.gz) (no header) or .parquet; rows = time steps, columns = series.")
@date_options("--data", "none: a table without dates (no time features)")
@missing_value_option("the table")
@click.option("--columns", default=None, help="Comma-separated series to train on (default: every numeric column).")
@click.option("--context-length", "--context", "context", type=int, default=None,
              help="Context length L in steps [dataset default, e.g. 336 for metro-traffic].")
@click.option("--horizon", type=int, default=None, help="Forecast horizon H in steps [dataset default, e.g. 24].")
@click.option("--context-patch", type=int, default=None,
              help="Context steps per context token; must divide the context length [24 for hourly rows when it "
                   "divides it, else the largest of 12, 8, 6, 4, 2, 1 that does].")
@click.option("--horizon-patch", type=int, default=None,
              help="Horizon steps per horizon token (the sampler computes and caches whole tokens); must "
                   "divide the horizon [4 for hourly rows when it divides the horizon, else 1].")
@click.option("--domain", default=None, metavar="time|frequency",
              help="What the network denoises: the horizon's steps (time) or the H coordinates of its orthonormal "
                   "real DFT (frequency; horizon tokens are then single coordinates, --horizon-patch 1, and the "
                   "sampler's cache always recomputes the K lowest frequencies; docs/frequency.md) [time: more "
                   "accurate on metro-traffic and ETTh1 in docs/results.md].")
@click.option("--prediction", type=click.Choice(["epsilon", "v"]), default=None,
              help="What the network learns to output: v = alpha*eps - sigma*x0, or the noise eps [v].")
@click.option("--covariates", default=None, metavar="A,B",
              help="Known-future covariate columns (their future values are known when forecasting, e.g. "
                   "holiday): context and horizon tokens carry them. Numbers are standardised with the train "
                   "part's mean and std, text is one-hot over the train part's categories; an empty cell is "
                   "missing (0).")
@click.option("--past-covariates", default=None, metavar="C,D",
              help="Past-only covariate columns (observed, not known ahead, e.g. temp): context tokens only.")
@click.option("--time-features/--no-time-features", "time_features", default=None,
              help="Calendar features of each row's timestamp (hour of day, day of week, ...; GluonTS's set for "
                   "the row frequency) [on when the table has dates with a regular frequency].")
@click.option("--epochs", type=int, default=None,
              help="Maximum epochs [20; 40 when the training part has at least 20000 rows]; with --resume, the "
                   "new total.")
@click.option("--steps-per-epoch", type=int, default=None, help="Optimizer steps per epoch [150].")
@click.option("--batch-size", type=int, default=None, help="Windows per step [64].")
@click.option("--noise-draws", type=int, default=None, help="Noise levels per window sharing one context encoding [4].")
@click.option("--lr", type=float, default=None, help="Peak learning rate (AdamW, cosine schedule) [2e-3].")
@click.option("--patience", type=int, default=None,
              help="Early stopping: epochs without a better validation loss [4; 8 when the training part has at "
                   "least 20000 rows].")
@click.option("--seed", type=int, default=None, help="Seed for weights, batches and noise [0].")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default=None, help="Torch device [auto: cuda if available].")
@click.option("--d-model", type=int, default=None, help="Token width D [64].")
@click.option("--heads", type=int, default=None, help="Attention heads [4].")
@click.option("--layers", type=int, default=None, help="Transformer blocks [3].")
@click.option("--ffn-dim", type=int, default=None, help="MLP hidden width [128].")
@click.option("--out", "out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Run folder to write, e.g. runs/metro (missing folders are created when training starts).")
@click.option("--resume", is_flag=True, help="Continue the run in --out (same model, data and features; unspecified "
              "options keep the run's values).")
@click.option("--overwrite", is_flag=True, help="Replace a run already in --out instead of refusing.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("--distill", type=click.Path(file_okay=False, path_type=Path), default=None, metavar="TEACHER_RUN",
              help="Train a few-step student of this trained run instead of a model from scratch: same model and "
                   "features, started from the teacher's weights, trained so that --student-steps first-order steps "
                   "match --teacher-steps steps of the teacher's plain sampler; its artifact runs those steps by "
                   "default (docs/distillation.md). Data: the teacher's bundled dataset unless --dataset/--data is "
                   "given. Training options default to 24 epochs, batch 64, 4 trajectories per window, lr 1e-3 "
                   "(about 10 minutes on 2 CPU cores for metro-traffic or etth2).")
@click.option("--student-steps", type=click.IntRange(1, 100), default=None,
              help="With --distill: the student's sampler steps K [2].")
@click.option("--teacher-steps", type=click.IntRange(2, 1000), default=None,
              help="With --distill: the teacher's steps, a multiple of --student-steps of at least twice it "
                   "[the smallest such multiple >= 12].")
@click.option("--dist-timeout", type=click.FloatRange(min=0, min_open=True), default=300.0, metavar="SECONDS",
              help="Under torchrun: how long a process waits for the others before it stops the run "
                   "(a dead or stuck rank). Data-parallel training: docs/scale-out.md.")
def main(**opts) -> None:
    """Train a diffusion forecaster and write a checkpoint folder (--out).

    \b
    Examples:
      dil-train --out runs/metro                      # bundled metro-traffic, default preset
      dil-train --dataset etth1 --epochs 20 --out runs/etth1
      dil-train --data my.csv --date-column date --columns load --context-length 96 --horizon 24 --out runs/mine
      dil-train --data meter.csv --date-column time --dayfirst --out runs/meter   # 01.07.2016-style dates
      dil-train --covariates holiday --past-covariates temp,rain_1h --out runs/metro-cov
      dil-train --out runs/metro --resume --epochs 20  # continue a run
      torchrun --standalone --nproc-per-node 2 $(which dil-train) --out runs/metro  # 2 data-parallel processes
      dil-train --distill runs/metro --out runs/metro-2step     # a 2-step student
    """
    from dil.runtime.support.deps import MissingDependency, require

    try:
        for module in ("torch", "safetensors"):  # before anything imports them: one line naming the extra
            require(module, "train")
        _run(opts)
    except MissingDependency as exc:
        raise click.ClickException(str(exc)) from None


def _check_out(out: Path, resume: bool, overwrite: bool) -> None:
    """Refuse an unusable --out before any work; its missing folders are created only to train."""
    from dil.runtime.support.files import folder_problem
    from dil.runtime.inputs.table import DataError
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
    from dil.runtime.support.files import made_folders
    from dil.runtime.inputs.table import DataError
    from dil.runtime.inputs.scaling import ScalingError
    from dil.runtime.model.frequency import check_domain
    from dil.train.checkpoint import CheckpointError
    from dil.train.distributed import DistributedError, stopped_message
    from dil.train.distributed import start as start_dist
    from dil.train.trainer import train

    dist = None
    try:
        if opts["domain"] is not None:  # one line naming --domain, before any work
            check_domain(opts["domain"], opts["horizon"])
        _check_out(opts["out"], opts["resume"], opts["overwrite"])
        stored = _stored(opts["out"]) if opts["resume"] else {}
        distill, stored = _student(opts, stored)
        dataset = opts["dataset"]
        if dataset is None and opts["data"] is None:
            record = stored.get("data") or {}
            dataset = record.get("dataset") if stored else None
            if stored and dataset not in DATASETS:  # a local table: the run's own file and reading options
                opts = stored_table_options(opts, record, "--distill: the teacher" if distill is not None else
                                            "--resume: the run")
                dataset = None
            else:
                dataset = dataset if dataset in DATASETS else DEFAULT_DATASET
        known, past = _covariate_names(opts, stored)
        missing = opts["missing_values"] or tuple((stored.get("data") or {}).get("missing_values") or ())
        spec, table = resolve(dataset, opts["data"], opts["date_column"], opts["columns"],
                              date_format=opts["date_format"], dayfirst=opts["dayfirst"], covariates=known + past,
                              missing_values=missing)
        from dil.runtime.inputs.checks import suspicious_values

        for line in table.notes + suspicious_values(table.values, table.names, table.source):
            click.echo(line, err=True)
        model_config, train_config, features = run_configs(opts, spec, table, stored, known, past)
        if distill is not None and (model_config != distill.teacher.config or
                                    features.to_dict() != stored["features"]):
            raise DataError("--distill: this data gives the student other features than its teacher's: train it on "
                            "the teacher's data")
        dist = start_dist(train_config.device, opts["dist_timeout"])  # None outside torchrun: this process alone
        # only rank 0 makes (and on failure removes) folders: the others never write
        with made_folders(opts["out"]) if dist is None or dist.is_main else contextlib.nullcontext():
            summary = train(spec, table, model_config, train_config, opts["out"], resume=opts["resume"],
                            progress=not opts["quiet"], overwrite=opts["overwrite"], features=features, dist=dist,
                            distill=distill)
    except DistributedError as exc:
        raise click.ClickException(stopped_message(exc, opts["out"])) from None
    except (DataError, CheckpointError, ScalingError, ValueError) as exc:  # TrainingDiverged too
        raise click.ClickException(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from None
    finally:
        if dist is not None:
            dist.close()
    if dist is not None and not dist.is_main:
        return  # rank 0 reports
    best = summary["best_val_loss"]
    click.echo(
        f"trained {spec.name} ({', '.join(table.names[:4])}{', ...' if len(table.names) > 4 else ''}): "
        f"{summary['epochs']} epoch{'s' * (summary['epochs'] != 1)}, "
        f"{summary['steps']} step{'s' * (summary['steps'] != 1)}, {summary['seconds']:.0f} s"
        + (" (early stop)" if summary["stopped_early"] else "")
    )
    click.echo(f"best val loss {best:.4f} at epoch {summary['best_epoch']}; "
               f"windows train {summary['windows']['train']}, val {summary['windows']['val']}")
    click.echo(f"model: {model_config.domain}-domain {model_config.prediction}-prediction, context {model_config.context_length} steps in "
               f"tokens of {model_config.context_patch}, horizon {model_config.horizon} steps in tokens of "
               f"{model_config.horizon_patch}; {_describe(features)}")
    click.echo(describe_choices(model_config, table.freq or spec.freq, features, train_config,
                                train_rows(spec, table)))
    if dist is not None:
        click.echo(f"data-parallel: {dist.world_size} processes ({dist.backend}), global batch "
                   f"{dist.world_size} x {train_config.batch_size} windows per step")
    if distill is not None:
        d = distill.spec
        word = "step" + "s" * (d.student_steps != 1)
        click.echo(f"student of {d.teacher}: {d.student_steps} first-order {word} trained to match "
                   f"{d.teacher_steps} steps of order {d.teacher_order}; its artifact runs {d.student_steps} {word} "
                   "by default")
    click.echo(f"checkpoint: {summary['run_dir']}")


if __name__ == "__main__":  # pragma: no cover
    main()
