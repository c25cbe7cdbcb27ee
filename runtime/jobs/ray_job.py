"""`dil-run --ray`: a long table's forecast computed by a Ray Data pipeline (docs/scale-out.md).

    read (Parquet: read_parquet; CSV: read_csv, every cell as text)
      -> groupby(id column).map_groups: one row per series, its SeriesHistory (tasks)
      -> map_batches(ForecastActor, compute=ActorPoolStrategy(size=actors)): each actor loads the
         engine once and forecasts batches of --batch-series series with
         dil.runtime.jobs.forecast.forecast_histories
      -> write_parquet into a hidden sibling folder, one file per block,
         renamed to the output folder when every block is written (removed on failure).

The forecast of a series depends on its rows, the seed and its id only (dil.runtime.inputs.long_table,
dil.runtime.jobs.forecast), so the output equals the single-process `dil-run --id-column` output
bit for bit, whatever the number of actors, blocks or retries. An actor that dies is restarted by
Ray and its batch retried (max_restarts, max_task_retries = -1); an exception raised by dil (bad
data) is not retried: the job fails with that one line and leaves no output folder.

ray is imported only here, and only when called (`pip install 'dil[ray]'`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import shutil
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

from dil.runtime.jobs.forecast import RunSettings
from dil.runtime.inputs.long_table import LongSpec

# Test hook (tests/runtime/test_ray_job.py): the path of a marker file; the first actor call that finds
# the file deletes it and kills its own process, as a crashed or preempted worker would.
FAULT_MARKER_ENV = "DIL_RAY_FAULT_MARKER"
# Blocks of series histories (and so output files) per actor.
PARTITIONS_PER_ACTOR = 4


@dataclass(frozen=True)
class RayJob:
    """Where and how wide: address None starts a local Ray cluster sized to the machine, "auto" or
    "HOST:PORT" / "ray://HOST:PORT" joins one; actors: forecasting actors (None: one per CPU of
    the cluster); threads: ONNX Runtime threads per actor (one CPU each)."""

    address: str | None = None
    actors: int | None = None
    threads: int = 1


@dataclass(frozen=True)
class RayResult:
    """What a finished job wrote: series forecast, rows, Parquet files and the actors used."""

    series: int
    rows: int
    files: int
    actors: int


def _history_row(rows, spec: LongSpec, source: str):
    """map_groups: the rows of one series -> a one-row frame (id, pickled SeriesHistory)."""
    import pandas as pd

    from dil.runtime.inputs.long_table import series_history, series_id

    sid = series_id(rows[spec.id_column].iloc[0], source)
    history = series_history(sid, rows, spec, source)
    return pd.DataFrame({"id": [sid], "history": [pickle.dumps(history, protocol=pickle.HIGHEST_PROTOCOL)]})


def output_schema(levels):
    """The Arrow schema of the forecast files (the columns of dil-run's output)."""
    import pyarrow as pa

    from dil.runtime.outputs.quantiles import quantile_column

    cols = ["mean", "median"] + [quantile_column(q) for q in levels]
    return pa.schema([("series", pa.string()), ("timestamp", pa.timestamp("ns"))] + [(c, pa.float64()) for c in cols])


@dataclass(frozen=True)
class ActorArgs:
    """What every actor needs: the artifact (None: the shipped model), ONNX Runtime threads, the
    run's settings and the fault hook's marker path (None: off)."""

    engine: str | None
    threads: int
    settings: RunSettings
    fault_marker: str | None = None


class ForecastActor:
    """One Ray actor: the engine loaded once, then batches of (id, history) rows forecast. A job's
    actors are a subclass holding the job's ActorArgs as `ARGS` (`actor_class`): constructor
    arguments would be kept in Ray's object store, which Ray reports in an error-level line."""

    ARGS: ActorArgs | None = None

    def __init__(self, args: ActorArgs | None = None):
        from dil.runtime.forecaster import Forecaster

        args = args if args is not None else self.ARGS
        self.forecaster = Forecaster.load(args.engine, threads=args.threads)
        self.settings = args.settings
        self.fault_marker = args.fault_marker

    def __call__(self, batch):
        import pyarrow as pa

        from dil.runtime.jobs.forecast import forecast_histories
        from dil.runtime.outputs.quantiles import QUANTILE_LEVELS

        if self.fault_marker:
            try:
                os.remove(self.fault_marker)
            except FileNotFoundError:
                pass
            else:
                os._exit(1)  # the worker process dies mid-job; Ray restarts the actor and retries this batch
        histories = sorted((pickle.loads(b) for b in batch["history"]), key=lambda h: h.id)
        frame, _ = forecast_histories(self.forecaster, histories, self.settings, whole=False)
        return pa.Table.from_pandas(frame, schema=output_schema(QUANTILE_LEVELS), preserve_index=False)


@contextlib.contextmanager
def _ray_stderr():
    """Ray's own logging (its C++ core worker writes to file descriptor 2 directly, e.g. an
    error-level line about actor arguments on every successful job) kept out of a run that succeeds:
    the descriptor points at a temporary file for the job, whose lines are replayed on stderr only
    when the job fails."""
    import tempfile

    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as log:
        os.dup2(log.fileno(), 2)
        failed = True
        try:
            yield
            failed = False
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            if failed:
                log.seek(0)
                sys.stderr.write(log.read().decode("utf-8", "replace"))


def _quiet_ray_logging():
    """Keep Ray's own logging out of a run that succeeds (its INFO lines about datasets are not the
    user's news): Ray's Python loggers at ERROR for this job. Returns the undo."""
    import logging

    names = ("ray", "ray.data", "ray._private", "ray.util")
    saved_levels = {n: logging.getLogger(n).level for n in names}
    for n in names:
        logging.getLogger(n).setLevel(logging.ERROR)

    def undo() -> None:
        for n, level in saved_levels.items():
            logging.getLogger(n).setLevel(level)

    return undo


def _settle_fsspec_http() -> None:
    """Ray Data asks, from several threads at once, whether a path is on fsspec's HTTP file system.
    Where fsspec is installed without aiohttp that import fails, and a thread that meets another's
    half-done import gets an ImportError Ray does not catch: the read fails at random. Failing the
    import once, for good, makes every later try the ModuleNotFoundError that Ray handles."""
    try:
        import fsspec.implementations.http  # noqa: F401
    except ImportError:
        sys.modules["fsspec.implementations.http"] = None


def _dataset(ray, path: Path, spec: LongSpec):
    from dil.runtime.inputs.long_table import long_columns, long_files, long_kind

    _settle_fsspec_http()
    files = [str(f) for f in long_files(path)]
    if long_kind(path) == "parquet":
        return ray.data.read_parquet(files).select_columns(spec.columns)
    import pyarrow as pa
    import pyarrow.csv as pacsv

    text = {c: pa.string() for c in long_columns(path)}  # every cell as written, as read_long reads it
    convert = pacsv.ConvertOptions(column_types=text, strings_can_be_null=False, include_columns=spec.columns)
    return ray.data.read_csv(files, convert_options=convert)


def _root_error(exc: BaseException) -> BaseException:
    """The exception raised in dil code inside a Ray worker (Ray wraps it), else `exc`."""
    from dil.runtime.inputs.errors import DataError, ForecastError

    seen, todo = set(), [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        cause = getattr(e, "cause", None)
        for c in (cause, e.__cause__, e.__context__):
            if isinstance(c, (DataError, ForecastError)) and not type(c).__module__.startswith("ray"):
                return c
            if isinstance(c, BaseException):
                todo.append(c)
    return exc


class RayJobError(ValueError):
    """The Ray job failed; the message is one line (the cause raised in a worker where there is one)."""


def check_output_folder(out: Path) -> None:
    """The output folder must not exist yet and its parent must be writable (RayJobError)."""
    from dil.runtime.support.files import folder_problem

    if out.exists():
        raise RayJobError(f"--out {out}: already exists (--ray writes a new folder of Parquet files; remove it or "
                          "choose another)")
    problem = folder_problem(out.parent)
    if problem:
        raise RayJobError(f"--out {out}: {problem}")


def forecast_on_ray(path, out, spec: LongSpec, engine, settings: RunSettings, job: RayJob) -> RayResult:
    """Forecast every series of the long table `path` on Ray into the new folder `out` (Parquet,
    one file per block, dil-run's columns). Raises RayJobError, DataError or ForecastError (one
    line); on any failure no `out` folder exists afterwards."""
    from dil.runtime.support.deps import require

    ray = require("ray", "ray")
    require("ray.data", "ray")
    require("pyarrow", "ray")
    path, out = Path(path), Path(out)
    check_output_folder(out)
    with _ray_stderr():
        return _job(ray, path, out, spec, engine, settings, job)


def _job(ray, path: Path, out: Path, spec: LongSpec, engine, settings: RunSettings, job: RayJob) -> RayResult:
    """forecast_on_ray's work, between Ray's start and shutdown."""
    started = not ray.is_initialized()
    quiet = _quiet_ray_logging()
    if started:
        ray.init(address=job.address, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR,
                 runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}})
    context = ray.data.DataContext.get_current()
    saved = context.enable_progress_bars, context.shuffle_strategy, context.raise_original_map_exception
    try:
        context.enable_progress_bars = sys.stderr.isatty()
        context.raise_original_map_exception = True  # dil's one-line error, not Ray's wrapper of it
        # Sort-based grouping runs as plain tasks: seconds less than the hash shuffle's actors on a
        # small job, and the same histories (a series' rows, whatever their order).
        context.shuffle_strategy = ray.data.context.ShuffleStrategy.SORT_SHUFFLE_PULL_BASED
        return _run(ray, path, out, spec, engine, settings, job)
    except Exception as exc:
        root = _root_error(exc)
        if root is not exc:
            raise root from None
        if type(exc).__module__.startswith("ray"):  # Ray's own failure (a lost node, actors out of restarts)
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise RayJobError(f"the Ray job failed: {first}") from exc
        raise
    finally:
        context.enable_progress_bars, context.shuffle_strategy, context.raise_original_map_exception = saved
        if started:
            ray.shutdown()
        quiet()


def _run(ray, path: Path, out: Path, spec: LongSpec, engine, settings: RunSettings, job: RayJob) -> RayResult:
    from dil.runtime.support.files import made_folders

    actors = job.actors or max(1, int(ray.cluster_resources().get("CPU", 1)))
    # Materialised before the actor pool starts: actors hold their CPUs from the start, and on a
    # small machine the grouping's tasks would otherwise wait for them forever.
    # Split again after the grouping (which may make fewer blocks than asked for) so that every
    # actor gets work.
    blocks = PARTITIONS_PER_ACTOR * actors
    histories = _dataset(ray, path, spec).groupby(spec.id_column, num_partitions=blocks) \
        .map_groups(_history_row, fn_kwargs={"spec": spec, "source": path.name}, batch_format="pandas") \
        .materialize().repartition(blocks).materialize()
    # Ray Data's actor pools restart a dead actor and retry its batch (max_restarts = -1 and
    # max_task_retries = -1 are its defaults); an exception raised by dil is not retried.
    args = ActorArgs(None if engine is None else str(engine), job.threads, settings, os.environ.get(FAULT_MARKER_ENV))
    forecasts = histories.map_batches(
        type("ForecastActor", (ForecastActor,), {"ARGS": args}),
        batch_size=settings.batch_series, batch_format="pandas", compute=ray.data.ActorPoolStrategy(size=actors),
        num_cpus=1)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:12]}"
    with made_folders(out.parent):  # folders it creates are removed again on failure
        try:
            forecasts.write_parquet(str(tmp), ray_remote_args={"num_cpus": 0})  # I/O: runs beside the actors
            result = _written(tmp, actors)
            os.rename(tmp, out)  # the folder appears complete or not at all
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return result


def _written(folder: Path, actors: int) -> RayResult:
    import pyarrow.parquet as pq

    files = sorted(folder.glob("*.parquet"))
    rows = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
    ids = set()
    for f in files:
        ids.update(pq.read_table(f, columns=["series"]).column(0).to_pylist())
    return RayResult(series=len(ids), rows=rows, files=len(files), actors=actors)
