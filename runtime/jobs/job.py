"""A dil-run job: read a table, forecast its series, write the forecast table (docs/scale-out.md).

    wide table (rows = steps, columns = series)  --+
    long table (--id-column)                     --+--> per-series histories (dil.runtime.inputs)
    long table on Ray (--ray, ray_job.py)        --+      --> forecast_histories --> forecast table

dil.runtime.cli.run parses the options into a `RunRequest` and calls `run_job`, which returns the
summary lines; notes and warnings about the input go through `say` (stderr), one line each.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from dil.runtime.jobs.forecast import RunSettings

# Per-series reading notes shown before "... and N more" (a table of many series repeats them).
MAX_NOTES = 3


class RunRequestError(ValueError):
    """A dil-run option that does not apply to this kind of input (one line)."""


@dataclass(frozen=True)
class RunRequest:
    """The options of one dil-run job.

    input: the table (a file; for a long table also a folder of Parquet files). out: the forecast
    table (.csv, .csv.gz, .parquet; None: CSV on stdout; with ray: a new folder of Parquet files).
    plot: a fan chart (wide tables). columns: the series to forecast (None: the model's training
    series when the table has them, else every numeric column). Dates: date_column (None: the
    model's training date column when the table has it), date_format, dayfirst. A long table:
    id_column, target_column. engine: the artifact (None: the shipped model); threads: ONNX
    Runtime threads (per actor on Ray). ray: None (this process), "local" or a cluster address;
    actors: Ray actors (None: one per CPU). missing_values: values of the series read as missing
    (--missing-value; the model's training data's own are added, dil.runtime.inputs.rules
    .missing_values). sampler: the sampler settings given (SamplerConfig
    fields; None values are not given), over the artifact's defaults. stats: add the sampler that
    ran and its statistics to the summary.
    """

    input: Path
    out: Path | None = None
    plot: Path | None = None
    columns: list | None = None
    date_column: str | None = None
    date_format: str | None = None
    dayfirst: bool | None = None
    id_column: str | None = None
    target_column: str | None = None
    engine: str | None = None
    threads: int | None = None
    ray: str | None = None
    actors: int | None = None
    num_samples: int = 100
    seed: int = 0
    batch_series: int = 16
    skip_bad_series: bool = False
    sampler: dict = field(default_factory=dict)
    stats: bool = False
    missing_values: tuple = ()

    @property
    def long(self) -> bool:
        return self.id_column is not None or self.ray is not None


def check_request(req: RunRequest) -> None:
    """One-line errors, before any work, for options that do not fit the input or outputs that
    cannot be written (RunRequestError, OutputError, MissingDependency) and bad sampler settings."""
    from dil.runtime.sampling.config import sampler_config

    sampler_config(None, **_given(req.sampler))  # a bad setting: one line, before any work
    _not_the_input(req)
    if not req.long:
        from dil.runtime.outputs.write import check_outputs

        check_outputs(req.out, req.plot)
        return
    if req.id_column is None:
        raise RunRequestError("--ray forecasts a long table: pass --id-column (and --date-column, --target-column)")
    given = [opt for opt, on in (("--columns", req.columns is not None), ("--plot", req.plot is not None),
                                 ("--stats", req.stats)) if on]
    if given:
        raise RunRequestError(f"{', '.join(given)}: not available with --id-column (a long table)")
    if req.actors is not None and req.ray is None:
        raise RunRequestError("--actors needs --ray")
    if req.actors is not None and req.actors < 1:
        raise RunRequestError(f"--actors must be at least 1, got {req.actors}")
    if req.ray is not None:
        if req.out is None:
            raise RunRequestError("--ray needs --out FOLDER (a new folder of Parquet files)")
        if Path(req.out).name.lower().endswith((".csv", ".csv.gz", ".txt", ".gz")):
            raise RunRequestError(f"--out {req.out}: --ray writes a folder of Parquet files, not a "
                                  f"{''.join(Path(req.out).suffixes)} file; name a folder (e.g. "
                                  f"{Path(req.out).name.split('.')[0]}/)")
        from dil.runtime.support.deps import require

        require("ray", "ray")  # the one-line missing-extra error, before any work
        from dil.runtime.jobs.ray_job import check_output_folder

        check_output_folder(req.out)
    elif req.out is not None:
        from dil.runtime.outputs.write import check_outputs

        check_outputs(req.out, None)


def _not_the_input(req: RunRequest) -> None:
    """An output must not replace the table the run reads, nor go inside a folder it reads."""
    source = Path(req.input)
    for option, out in (("--out", req.out), ("--plot", req.plot)):
        if out is None or not source.exists():
            continue
        target = Path(out).resolve()
        if source.is_dir() and source.resolve() in (target, *target.parents):
            raise RunRequestError(f"{option} {out}: inside the input folder {req.input}, which the run reads; "
                                  "choose another place")
        if target == source.resolve() or (target.exists() and target.samefile(source)):
            raise RunRequestError(f"{option} {out}: is the input table {req.input}; the forecast would replace it: "
                                  "choose another file")


def _given(sampler: dict) -> dict:
    return {k: v for k, v in sampler.items() if v is not None}


def run_job(req: RunRequest, say) -> str:
    """Run the job; returns the summary (one line, more with req.stats). say: prints a note line.
    Raises DataError, ForecastError, ManifestError, EngineError, OutputError, MissingDependency,
    RunRequestError or RayJobError, each one line."""
    from dil.runtime.manifest import default_artifact, load_manifest
    from dil.runtime.sampling.config import check_int, sampler_config
    from dil.runtime.support.files import remove_stale_temporaries
    from dil.runtime.sampling.rng import SeriesStreams

    start = time.perf_counter()
    check_request(req)
    manifest = load_manifest(req.engine if req.engine is not None else default_artifact())  # before any work
    for out in (req.out, req.plot):
        if out is not None and not req.ray and remove_stale_temporaries(out):
            say(f"note: removed the unfinished temporary file of {Path(out).name} that a stopped run left beside it")
    config = sampler_config(manifest.default_sampler(), **_given(req.sampler))  # options over the artifact's
    # What the Forecaster checks per call, checked once here: on Ray it would fail in every actor.
    check_int("num_samples", req.num_samples, 1, 100_000)
    check_int("batch_series", req.batch_series, 1, 1_000_000)
    SeriesStreams(req.seed, ())
    settings = RunSettings(num_samples=req.num_samples, seed=req.seed, config=config, batch_series=req.batch_series,
                           skip_bad_series=req.skip_bad_series)
    if req.long:
        return _run_long(req, manifest, settings, say, start)
    return _run_wide(req, manifest, settings, say, start)


def _run_wide(req: RunRequest, manifest, settings: RunSettings, say, start: float) -> str:
    from dil.runtime.forecaster import Forecaster
    from dil.runtime.inputs.histories import table_histories
    from dil.runtime.inputs.rules import (build_windows, missing_values, name_list, series_to_forecast,
                                          table_date_column, usable)
    from dil.runtime.inputs.table import load_table, table_columns
    from dil.runtime.jobs.forecast import forecast_windows

    spec, date_column, dates_note = manifest.features, req.date_column, None
    if date_column is None:
        date_column, dates_note = table_date_column(req.input, manifest)
    missing, missing_note = missing_values(req.missing_values, manifest)
    columns, note = req.columns, None
    if columns is None:
        columns, note = series_to_forecast(table_columns(req.input), (manifest.data or {}).get("columns"),
                                           Path(req.input).name)
    table = load_table(req.input, date_column=date_column, columns=columns, date_format=req.date_format,
                       dayfirst=req.dayfirst, covariates=[c.name for c in spec.covariates], missing_values=missing)
    for line in [n for n in (dates_note, missing_note) if n] + table.notes:
        say(line)
    if note and columns is None:  # every numeric column: name them
        note = note.replace(f"column of {table.source}:", f"column of {table.source} ({name_list(table.names)}):")
    forecaster = Forecaster.load(req.engine, threads=req.threads)
    histories, future_notes = table_histories(table, spec.known_covariates)
    histories, warning = usable(histories, forecaster.context_length, req.skip_bad_series, source=table.source)
    for line in [note, *future_notes, warning]:
        if line:
            say(line)
    windows = build_windows(histories, spec, forecaster.context_length, forecaster.horizon)
    forecast = forecast_windows(forecaster, windows, settings, progress=True)
    image = None
    if req.plot is not None:  # rendered before anything is written: all outputs or none
        from dil.runtime.outputs.plot import fan_chart, render

        kept = [j for j, n in enumerate(table.names) if n in set(windows.ids)]
        fig = fan_chart(table.values[:len(histories[0].values), kept], forecast,
                        history_timestamps=histories[0].timestamps)
        image = render(fig, req.plot.suffix.lower().lstrip("."))
    frame = forecast.to_frame()
    if table.utc_offset is not None and "timestamp" in frame:  # labelled in the input's zone (its last offset)
        import datetime

        zone = datetime.timezone(table.utc_offset.to_pytimedelta())
        frame["timestamp"] = frame["timestamp"].dt.tz_localize(zone)
    _write(frame, req.out, image, req.plot)
    summary = _summary(table.source, forecast, settings.config, time.perf_counter() - start, req.out, req.plot, spec)
    if req.stats:
        from dil.runtime.sampling.description import given_flags, sampler_line, stats_text

        summary += "\n" + sampler_line(settings.config, manifest, given_flags(**_flags(req.sampler)))
        summary += "\n" + stats_text(forecast.stats)
    return summary


def _summary(source: str, forecast, config, wall: float, out, plot, spec) -> str:
    """The summary line of a wide table's forecast (and the fan chart's, with a plot)."""
    from dil.runtime.inputs.rules import name_list
    from dil.runtime.inputs.window_features import describe
    from dil.runtime.sampling.description import sampler_name

    G, N, H = forecast.samples.shape
    where = f" -> {out}" if out else ""
    how = sampler_name(config, forecast.stats.token_fraction)
    text = (f"forecast {G} series x {H} steps from {source} ({N} samples, {config.steps} steps of {how}; model "
            f"inputs: {describe(spec)}) in {wall:.2f} s{where}")
    if not plot:
        return text
    from dil.runtime.outputs.plot import MAX_SERIES

    if G <= MAX_SERIES:
        return text + f"\nfan chart of {G} series -> {plot}"
    return text + f"\nfan chart of the first {MAX_SERIES} of {G} series ({name_list(forecast.series[:MAX_SERIES])}) -> {plot}"


def _flags(sampler: dict) -> dict:
    return {k: sampler.get(k) for k in ("steps", "lattice", "cache", "solver_order")}


def _write(frame, out, image=None, plot=None) -> None:
    """The forecast table to `out` (None: stdout) and the chart to `plot`, all or none."""
    from dil.runtime.outputs.write import output_kind, to_stdout, write_table
    from dil.runtime.support.files import made_folders, write_bytes

    with made_folders(out and out.parent, plot and plot.parent):
        if out is not None:
            write_table(frame, out, output_kind(out))
        else:
            to_stdout(frame)
        if image is not None:
            write_bytes(plot, image)


def _long_date_column(req: RunRequest, manifest, say) -> str | None:
    """--date-column, else the model's training date column when the table has it (with a note)."""
    if req.date_column is not None:
        return req.date_column
    from dil.runtime.inputs.long_table import long_columns

    trained = (manifest.data or {}).get("date_column")
    if trained and str(trained) in long_columns(req.input):
        say(f"note: dates from column {str(trained)!r} (the model's training data)")
        return str(trained)
    return None


def _run_long(req: RunRequest, manifest, settings: RunSettings, say, start: float) -> str:
    from dil.runtime.inputs.long_table import long_spec
    from dil.runtime.inputs.rules import missing_values

    spec = manifest.features
    missing, missing_note = missing_values(req.missing_values, manifest)
    if missing_note:
        say(missing_note)
    long = long_spec(req.input, req.id_column, _long_date_column(req, manifest, say), req.target_column,
                     [c.name for c in spec.covariates], req.date_format, req.dayfirst, spec.known_covariates,
                     missing)
    source, samples, steps = Path(req.input).name, settings.num_samples, settings.config.steps
    if req.ray is not None:
        from dil.runtime.jobs.ray_job import RayJob, forecast_on_ray

        job = RayJob(address=None if req.ray == "local" else req.ray, actors=req.actors, threads=req.threads or 1)
        result = forecast_on_ray(req.input, req.out, long, req.engine, settings, job)
        return (f"forecast {result.series} series of {source} on Ray ({result.actors} actors, {samples} samples, "
                f"{steps} steps) in {time.perf_counter() - start:.2f} s -> {req.out} ({result.files} Parquet "
                f"files, {result.rows} rows)")
    frame, n = _forecast_here(req, long, settings, say)
    _write(frame, req.out)
    where = f" -> {req.out}" if req.out is not None else ""
    return f"forecast {n} series of {source} ({samples} samples, {steps} steps) in {time.perf_counter() - start:.2f} s{where}"


def _forecast_here(req: RunRequest, spec, settings: RunSettings, say):
    """(forecast frame, series forecast) in this process."""
    from dil.runtime.forecaster import Forecaster
    from dil.runtime.inputs.long_table import histories, read_long
    from dil.runtime.jobs.forecast import forecast_histories

    source = Path(req.input).name
    series = histories(read_long(req.input, spec), spec, source)
    notes = [line for h in series for line in h.notes]
    for line in notes[:MAX_NOTES]:
        say(line)
    if len(notes) > MAX_NOTES:
        say(f"note: ... and {len(notes) - MAX_NOTES} more such notes")
    forecaster = Forecaster.load(req.engine, threads=req.threads)
    frame, skipped = forecast_histories(forecaster, series, settings, say=say)  # says which it skipped
    return frame, len(series) - len(skipped)
