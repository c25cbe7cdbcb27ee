"""`dil-run --id-column ...` and `dil-run --ray`: a long table's forecast, in this process or on Ray
(docs/scale-out.md). dil.runtime.cli.run parses the options and calls `run_long`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from dil.runtime.batch.forecast import RunSettings

# Per-series reading notes shown before "... and N more" (a table of many series repeats them).
MAX_NOTES = 3


class LongRunError(ValueError):
    """A dil-run option that does not apply to a long table or to --ray (one line)."""


@dataclass(frozen=True)
class LongRequest:
    """The dil-run options of a long-table run. ray: None (this process), "local" (start a local
    Ray cluster) or a cluster address ("auto", "HOST:PORT", "ray://HOST:PORT"); actors: Ray actors
    (None: one per CPU); threads: ONNX Runtime threads (per actor with Ray; None: one per core here,
    1 per actor on Ray)."""

    input: Path
    out: Path | None
    id_column: str | None
    date_column: str | None
    target_column: str | None
    date_format: str | None = None
    dayfirst: bool | None = None
    engine: str | None = None
    threads: int | None = None
    ray: str | None = None
    actors: int | None = None


def check_request(req: LongRequest, wide_only: dict) -> None:
    """One-line LongRunError for options that do not fit a long table / --ray, before any work.
    wide_only: {option: given?} of the options that apply to a wide table only."""
    if req.id_column is None:
        raise LongRunError("--ray forecasts a long table: pass --id-column (and --date-column, --target-column)")
    given = [opt for opt, on in wide_only.items() if on]
    if given:
        raise LongRunError(f"{', '.join(given)}: not available with --id-column (a long table)")
    if req.actors is not None and req.ray is None:
        raise LongRunError("--actors needs --ray")
    if req.actors is not None and req.actors < 1:
        raise LongRunError(f"--actors must be at least 1, got {req.actors}")
    if req.ray is not None:
        if req.out is None:
            raise LongRunError("--ray needs --out FOLDER (a new folder of Parquet files)")
        from dil.runtime.support.deps import require

        require("ray", "ray")  # the one-line missing-extra error, before any work
        from dil.runtime.batch.ray_job import check_output_folder

        check_output_folder(req.out)
    elif req.out is not None:
        from dil.runtime.outputs.write import check_outputs

        check_outputs(req.out, None)


def _date_column(req: LongRequest, manifest, say) -> str | None:
    """--date-column, else the model's training date column when the table has it (with a note)."""
    if req.date_column is not None:
        return req.date_column
    from dil.runtime.inputs.long_table import long_columns

    trained = (manifest.data or {}).get("date_column")
    if trained and str(trained) in long_columns(req.input):
        say(f"note: dates from column {str(trained)!r} (the model's training data)")
        return str(trained)
    return None


def run_long(req: LongRequest, manifest, config, samples: int, seed: int, batch_series: int,
             skip_bad_series: bool, say) -> str:
    """Forecast the long table; returns the summary line. say: prints a note line (stderr).
    Raises DataError, ForecastError, ManifestError, EngineError, MissingDependency, RayJobError."""
    from dil.runtime.inputs.long_table import long_spec
    from dil.runtime.sampling.rng import SeriesStreams
    from dil.runtime.sampling.config import check_int

    start = time.perf_counter()
    # What the Forecaster checks per call, checked once here: on Ray it would fail in every actor.
    check_int("num_samples", samples, 1, 100_000)
    check_int("batch_series", batch_series, 1, 1_000_000)
    SeriesStreams(seed, ())
    covariates = [c.name for c in manifest.features.covariates]
    spec = long_spec(req.input, req.id_column, _date_column(req, manifest, say), req.target_column, covariates,
                     req.date_format, req.dayfirst)
    settings = RunSettings(num_samples=samples, seed=seed, config=config, batch_series=batch_series,
                           skip_bad_series=skip_bad_series)
    source = Path(req.input).name
    if req.ray is not None:
        from dil.runtime.batch.ray_job import RayJob, forecast_on_ray

        job = RayJob(address=None if req.ray == "local" else req.ray, actors=req.actors, threads=req.threads or 1)
        result = forecast_on_ray(req.input, req.out, spec, req.engine, settings, job)
        return (f"forecast {result.series} series of {source} on Ray ({result.actors} actors, {samples} samples, "
                f"{config.steps} steps) in {time.perf_counter() - start:.2f} s -> {req.out} ({result.files} Parquet "
                f"files, {result.rows} rows)")
    frame, n = _forecast_here(req, spec, settings, say)
    where = ""
    if req.out is not None:
        from dil.runtime.support.files import made_folders
        from dil.runtime.outputs.write import output_kind, write_table

        with made_folders(req.out.parent):
            write_table(frame, req.out, output_kind(req.out))
        where = f" -> {req.out}"
    else:
        from dil.runtime.outputs.write import to_stdout

        to_stdout(frame)
    return (f"forecast {n} series of {source} ({samples} samples, {config.steps} steps) in "
            f"{time.perf_counter() - start:.2f} s{where}")


def _forecast_here(req: LongRequest, spec, settings: RunSettings, say):
    """(forecast frame, series forecast) in this process."""
    from dil.runtime.forecaster import Forecaster
    from dil.runtime.batch.forecast import forecast_histories
    from dil.runtime.inputs.long_table import histories, read_long

    source = Path(req.input).name
    series = histories(read_long(req.input, spec), spec, source)
    notes = [line for h in series for line in h.notes]
    for line in notes[:MAX_NOTES]:
        say(line)
    if len(notes) > MAX_NOTES:
        say(f"note: ... and {len(notes) - MAX_NOTES} more such notes")
    forecaster = Forecaster.load(req.engine, threads=req.threads)
    frame, skipped = forecast_histories(forecaster, series, settings)
    if skipped:
        shown = ", ".join(skipped[:10]) + (f", ... ({len(skipped)} in all)" if len(skipped) > 10 else "")
        say(f"warning: skipped {len(skipped)} of {len(series)} series with no observed value in their last "
            f"{forecaster.context_length} rows (the model's context): {shown}")
    return frame, len(series) - len(skipped)
