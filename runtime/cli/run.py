"""`dil-run`: probabilistic forecasts from an exported artifact (NumPy + ONNX Runtime, no torch)."""

from __future__ import annotations

import time
from pathlib import Path

import click

from dil.runtime.support.deps import MissingDependency
from dil.runtime.outputs.write import check_outputs as _check_outputs
from dil.runtime.outputs.write import output_kind as _output_kind
from dil.runtime.outputs.write import to_stdout as _to_stdout
from dil.runtime.outputs.write import write_table as _write_table
from dil.runtime.sampling.schedule import SPACINGS

# Help of --spacing (dil-run, dil-eval, dil-bench): the step grid of NoiseSchedule.sampling_grid.
SPACING_HELP = ("Step spacing of the solver's grid: logsnr (uniform in log signal-to-noise ratio, DPM-Solver++'s "
                "spacing; the last network call is made close to clean data) or time (uniform in diffusion time, the "
                "grid of earlier versions: its last call, at noise level 0.17 for 20 steps, left the samples "
                "under-dispersed). See docs/model.md section 5.1.")

# Errors shown as one line: bad input, options or files (DataError, ForecastError, ManifestError,
# EngineError and RayJobError are ValueErrors) and a missing optional dependency.
RUN_ERRORS = (ValueError, OSError, MissingDependency)


def _say(line: str) -> None:
    """A note or warning: one line on stderr, whatever goes to stdout."""
    click.echo(line, err=True)


def _name_list(names, most: int = 10) -> str:
    shown = ", ".join(str(n) for n in names[:most])
    return shown + (f", ... ({len(names)} in all)" if len(names) > most else "")


def _series_to_forecast(table, trained, explicit: bool):
    """The table restricted to the series to forecast, and a note line (or None) saying why.

    Without --columns: the series the model was trained on (`trained`, the manifest's training
    columns), found by name; when the table has none of them, every numeric column.
    """
    if explicit:
        return table, None
    trained = [str(c) for c in (trained or [])]
    present = [c for c in trained if c in table.names]
    if present == trained and trained:
        return table.select(trained), None
    if present:
        missing = [c for c in trained if c not in table.names]
        return table.select(present), (f"note: forecasting {_name_list(present)}, the model's training series in "
                                       f"{table.source} (not found: {_name_list(missing)}); --columns picks others")
    why = (f"the model's training series ({_name_list(trained)}) are not in it" if trained
           else "the model records no training series")
    return table, (f"note: forecasting every numeric column of {table.source} ({_name_list(table.names)}): {why}; "
                   "--columns picks the series")


def date_column_default(path, manifest) -> tuple[str | None, str | None]:
    """(date column, note line) for a table read without --date-column: the column the model's
    training data took its dates from (the manifest's data.date_column) when the model uses time
    features and the table has it (its header alone is read); (None, None) for a model without
    time features. A model with time features and no such column: a DataError naming the option.
    """
    from dil.runtime.inputs.table import DataError, table_columns

    feats = manifest.features.time_features
    if not feats:
        return None, None
    trained = (manifest.data or {}).get("date_column")
    need = f"the model uses time features ({', '.join(feats)}): pass --date-column"
    if not trained:
        raise DataError(need)
    if str(trained) not in table_columns(path):
        raise DataError(f"{need} (it was trained with {trained!r}; {Path(path).name} has no such column)")
    return str(trained), f"note: dates from column {trained!r} (the model's training data)"


def _bad_series(table, context: int, skip: bool):
    """The table without the series that have no observed value in their last `context` rows (the
    model's context): an error naming them, or with skip a warning line listing them."""
    import numpy as np

    from dil.runtime.forecaster import ForecastError

    if table.n_steps < context:
        return table, None  # too short for every series: the Forecaster says so
    empty = np.isnan(table.values[-context:]).all(axis=0)
    bad = [n for n, e in zip(table.names, empty) if e]
    if not bad:
        return table, None
    what = f"no observed value in the last {context} rows (the model's context)"
    if len(bad) == table.n_series:
        raise ForecastError(f"{table.source}: every series has {what}: nothing to forecast")
    if not skip:
        which = f"series {bad[0]!r} has" if len(bad) == 1 else f"series {_name_list([repr(b) for b in bad])} have"
        raise ForecastError(f"{table.source}: {which} {what}; --skip-bad-series forecasts the others")
    kept = [n for n in table.names if n not in bad]
    return table.select(kept), f"warning: skipped {len(bad)} of {table.n_series} series with {what}: {_name_list(bad)}"


def _future_rows(table, spec):
    """(history table, note line or None): for a model with known covariates
    the rows after the last row with an observed target are the future steps, whose covariates
    the forecast uses (docs/model.md section 5); they are not part of the history. Other models
    take the whole table as history (trailing empty rows are missing context values)."""
    import numpy as np

    T = table.n_steps
    if not spec.known_covariates:
        return table, None
    observed = np.flatnonzero(~np.isnan(table.values).all(axis=1))
    end = int(observed[-1]) + 1 if observed.size else T
    if end == T:
        return table, None
    when = f" (from {pd_time(table.timestamps[end])})" if table.timestamps is not None else ""
    note = (f"note: the last {T - end} rows of {table.source}{when}, after the last observed value, are the forecast "
            f"steps: their known covariates ({', '.join(spec.known_covariates)}) are used")
    return table.slice(0, end), note


def pd_time(t) -> str:
    import pandas as pd

    return str(pd.Timestamp(t))


def _summary(table, forecast, config, wall: float, out, plot, spec) -> str:
    from dil.runtime.inputs.window_features import describe

    G, N, H = forecast.samples.shape
    where = f" -> {out}" if out else ""
    if config.plain:
        how = f"DPM-Solver++ order {config.solver_order}"
    else:
        parts = [p for p, on in (("lattice", config.lattice), ("token cache", config.cache)) if on]
        how = f"the fast sampler ({' + '.join(parts)}, {forecast.stats.token_fraction:.0%} of tokens computed)"
    text = (
        f"forecast {G} series x {H} steps from {table.source} ({N} samples, {config.steps} steps of "
        f"{how}; model inputs: {describe(spec)}) in {wall:.2f} s{where}"
    )
    if not plot:
        return text
    from dil.runtime.outputs.plot import MAX_SERIES

    if G <= MAX_SERIES:
        return text + f"\nfan chart of {G} series -> {plot}"
    return text + f"\nfan chart of the first {MAX_SERIES} of {G} series ({_name_list(forecast.series[:MAX_SERIES])}) -> {plot}"


def _stats_text(stats) -> str:
    d = stats.to_dict()
    lines = [f"  {k:18s} {v:.4f}" if isinstance(v, float) else f"  {k:18s} {v}" for k, v in d.items()]
    return "sampler stats:\n" + "\n".join(lines)


# dil-run option -> SamplerConfig field, for the sampler settings (docs/sampler.md section 1).
SAMPLER_OPTIONS = [
    ("--spacing", "spacing", SPACINGS, SPACING_HELP),
    ("--num-diffusion-steps", "num_diffusion_steps", int, "Training steps T of the model (a check)."),
    ("--max-scales", "max_scales", int, "Lattice levels."),
    ("--entropy-budget", "entropy_budget", float, "Share of lattice nodes given top refresh priority, 0..1."),
    ("--temperature", "temperature", float, "Selection temperature: logits = temperature * entropy."),
    ("--max-solver-order", "max_solver_order", int, "Highest solver order the lattice may choose, 1..3."),
    ("--stability-threshold-low", "stability_threshold_low", float, "Instability below it: order 3."),
    ("--stability-threshold-high", "stability_threshold_high", float, "Instability at or above it: order 1."),
    ("--K", "K", int, "Always-recomputed core tokens."),
    ("--tau-0", "tau_0", float, "Initial change threshold of the token cache."),
    ("--R", "R", int, "A full step every R steps."),
    ("--tau-warn", "tau_warn", float, "Event intensity above which the next step is full."),
    ("--random-probe-ratio", "random_probe_ratio", float, "Share of cached tokens probed per step, 0..1."),
    ("--max-age", "max_age", int, "Staleness bound: most consecutive steps a token is reused."),
    ("--warmup-steps", "warmup_steps", int, "First steps computed in full."),
    ("--bucket", "bucket", int, "Computed-token count rounded up to a multiple of it."),
    ("--x0-clip", "x0_clip", float, "Clip of the data prediction, in context standard deviations (0: off)."),
]


def _sampler_options(func):
    """Add one click option per sampler setting (default None = the SamplerConfig default)."""
    from dil.runtime.sampling.config import SamplerConfig

    defaults = SamplerConfig()
    for flag, name, kind, text in reversed(SAMPLER_OPTIONS):
        # A tuple of names is a choice; SamplerConfig checks it, so a bad one is a one-line error as for
        # every other setting.
        typed = {"type": str, "metavar": "|".join(kind)} if isinstance(kind, tuple) else {"type": kind}
        func = click.option(flag, name, default=None, help=f"{text} [default: {getattr(defaults, name)}]", **typed)(func)
    return func


def _settings(kwargs: dict) -> dict:
    names = {name for _, name, _, _ in SAMPLER_OPTIONS}
    return {k: kwargs.pop(k) for k in list(kwargs) if k in names and kwargs[k] is not None}


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--engine", default=None, metavar="PATH",
              help="Exported artifact: NAME.onnx, NAME.json or any sibling file of it. "
                   "[default: the shipped metro-traffic model]")
@click.option("--input", "input_path", required=True, type=click.Path(path_type=Path), metavar="FILE",
              help="Table to forecast (.csv, .csv.gz, .txt, .parquet): rows are time steps, columns are series. "
                   "The last context_length rows of each series are used; empty cells are missing values. A model "
                   "trained with covariates reads its covariate columns (named in its manifest) too; with known "
                   "covariates, the rows after the last observed value (series empty, covariates filled) are the "
                   "future steps and must hold them for every forecast step.")
@click.option("--date-column", default=None, metavar="C",
              help="Name of the timestamp column (gives dated forecasts) [default: for a model with time features, "
                   "the date column of its training data (date_time for the shipped model) when the table has it].")
@click.option("--date-format", default=None, metavar="FMT",
              help="strptime format of --date-column, e.g. '%d.%m.%Y %H:%M' [default: ISO dates as such; other "
                   "dates month-first or day-first, whichever reads every row; when both do, an error].")
@click.option("--dayfirst/--monthfirst", "dayfirst", default=None,
              help="Read --date-column day-first (13.07.2016) or month-first (07/13/2016) [default: decided from "
                   "the data, an error when both readings work].")
@click.option("--id-column", default=None, metavar="C",
              help="Read --input as a long table: one row per (series id C, --date-column, --target-column "
                   "[, covariates]); .csv, .csv.gz, .parquet or a folder of .parquet files. The output has the "
                   "same columns; see docs/scale-out.md.")
@click.option("--target-column", default=None, metavar="C",
              help="Value column of a long table [default: its one column besides the id, date and covariates].")
@click.option("--ray", "ray_address", is_flag=False, flag_value="local", default=None, metavar="[ADDRESS]",
              help="Forecast the long table on Ray (needs the 'ray' extra): alone, a local cluster sized to the "
                   "machine; 'auto' or HOST:PORT joins a running cluster. --out names a new folder of Parquet "
                   "files; the forecast equals the one without --ray, bit for bit.")
@click.option("--actors", default=None, type=int,
              help="Ray actors that forecast (each loads the engine once) [default: one per CPU of the cluster].")
@click.option("--columns", default=None, metavar="A,B",
              help="Series to forecast [default: the series the model was trained on, by name, when the table "
                   "has them; else every numeric column, with a note].")
@click.option("--skip-bad-series", is_flag=True,
              help="Forecast the other series when some have no observed value in their last context_length "
                   "rows (they are listed on stderr) instead of stopping.")
@click.option("--samples", default=100, show_default=True, type=int, help="Sample paths per series.")
@click.option("--steps", "--inference-steps", "steps", default=None, type=int,
              help="Solver steps (network evaluations). [default: the artifact's, else 20]")
@click.option("--solver-order", default=None, type=int,
              help="DPM-Solver++ multistep order (1-3) of the plain sampler (used when the lattice is off). "
                   "[default: the artifact's (1 for a distilled student), else 2]")
@click.option("--lattice/--no-lattice", default=None,
              help="Lattice controller: per-token solver orders and refresh priorities. [default: the "
                   "artifact's, else on]")
@click.option("--cache/--no-cache", default=None,
              help="E2-CRF token cache: recompute only the tokens that need it. --no-lattice --no-cache is "
                   "the plain DPM-Solver++ sampler, exactly. [default: the artifact's, else on]")
@click.option("--seed", default=0, show_default=True, type=int, help="Random seed (same seed, same forecast).")
@click.option("--out", type=click.Path(path_type=Path), default=None, metavar="PATH",
              help="Write the forecast table here (.csv, .csv.gz or .parquet; missing folders are created); "
                   "default: CSV on stdout.")
@click.option("--plot", type=click.Path(path_type=Path), default=None, metavar="PATH",
              help="Also draw a fan chart of the first 4 series (.png, .pdf, .svg; needs the 'plot' extra); the "
                   "summary says which were drawn.")
@click.option("--threads", default=None, type=int, help="ONNX Runtime intra-op threads (default: one per core).")
@click.option("--batch-series", default=16, show_default=True, type=int,
              help="Series per engine batch (memory only: results do not depend on it).")
@click.option("--stats", "show_stats", is_flag=True,
              help="Print which sampler and steps ran and why (the artifact's default, the built-in one or "
                   "your options), then the sampler's statistics (engine calls, tokens computed, cache reuse, "
                   "full steps, order histogram, refinements/merges, engine and control time).")
@_sampler_options
def main(engine, input_path, date_column, date_format, dayfirst, id_column, target_column, ray_address, actors, columns,
         skip_bad_series, samples, steps, solver_order, lattice, cache, seed, out, plot, threads, batch_series,
         show_stats, **sampler_settings):
    """Forecast the series of a table with an exported diffusion model.

    Without --columns the series the model was trained on are forecast when the table has them
    (by name), else every numeric column (a note on stderr names them). Notes and warnings about
    the input (duplicate timestamps, unsorted rows, skipped series) go to stderr, one line each.

    A model trained with time features needs the table's dates: --date-column, by default the
    column its training data's dates came from when the table has it (a note says so). One
    trained with covariates reads them from the columns its manifest names (never forecast).
    Known-future covariates (e.g. a holiday calendar, a weather forecast) of the forecast steps
    go in the rows after the last observed value: series cells empty, covariate cells filled,
    one row per forecast step. The summary line says which inputs the model used.

    Output: one row per series and future step with the columns series, timestamp (or step
    1..H when the table has no date column), mean, median and the 19 quantiles q05, q10, ..., q95.

    Many series: --id-column reads a long table (one row per series id and timestamp; CSV, Parquet
    or a folder of Parquet files) and writes the same columns; --ray forecasts it on a Ray cluster
    into a new folder of Parquet files, bit for bit the same (docs/scale-out.md).

    \b
    Example:
      dil-run --engine engines/metro-traffic.onnx --input traffic.csv --date-column date_time \\
              --out forecast.csv --plot forecast.png
      dil-run --input traffic.csv --no-lattice --no-cache --stats     # the plain sampler, for comparison
      dil-run --input sensors.csv --date-column time --dayfirst --skip-bad-series --out out/f.csv
      dil-run --input sales/ --id-column store --date-column day --ray auto --out forecast/

    Sampler and steps: the artifact's defaults where its manifest records them (chosen on the
    validation windows by dil-bench --frontier --write-defaults: the fastest configuration within
    1% of the 50-step CRPS), else the fast sampler at 20 steps; --steps, --lattice/--no-lattice and
    --cache/--no-cache override them one by one, and --stats says which ran and why. The sampler
    settings (lattice and cache options below) are described in docs/sampler.md.
    """
    from dil.runtime.batch.run import LongRequest
    from dil.runtime.inputs.table import DataError, load_table
    from dil.runtime.backends.onnx_engine import EngineError
    from dil.runtime.forecaster import ForecastError, Forecaster
    from dil.runtime.manifest import ManifestError, default_artifact, load_manifest

    from dil.runtime.sampling.config import sampler_config

    start = time.perf_counter()
    try:
        chosen = dict(inference_steps=steps, solver_order=solver_order, lattice=lattice, cache=cache,
                      **_settings(sampler_settings))
        sampler_config(None, **chosen)  # a bad setting: one line, before any work
        if id_column is not None or ray_address is not None:
            return _long(LongRequest(input_path, out, id_column, date_column, target_column, date_format, dayfirst,
                                     engine, threads, ray_address, actors),
                         {"--columns": columns is not None, "--plot": plot is not None, "--stats": show_stats},
                         chosen, samples, seed, batch_series, skip_bad_series)
        _check_outputs(out, plot)
        cols = [c.strip() for c in columns.split(",") if c.strip()] if columns else None
        manifest = load_manifest(engine if engine is not None else default_artifact())  # checked before any work
        config = sampler_config(manifest.default_sampler(), **chosen)  # explicit options over the artifact's
        spec, dates_note = manifest.features, None
        if date_column is None:
            date_column, dates_note = date_column_default(input_path, manifest)
        table = load_table(input_path, date_column=date_column, columns=cols, date_format=date_format,
                           dayfirst=dayfirst, covariates=[c.name for c in spec.covariates])
        for line in ([dates_note] if dates_note else []) + table.notes:
            _say(line)
        forecaster = Forecaster.load(engine, threads=threads)
        table, note = _series_to_forecast(table, forecaster.manifest.data.get("columns"), cols is not None)
        covariates = table.covariates  # every row: the history's, then the future steps'
        table, future = _future_rows(table, spec)
        table, warning = _bad_series(table, forecaster.context_length, skip_bad_series)
        for line in (note, future, warning):
            if line:
                _say(line)
        forecast = forecaster.predict(
            table.values, num_samples=samples, seed=seed, series_ids=table.names,
            timestamps=table.timestamps, freq=table.freq, batch_series=batch_series,
            progress=True, config=config, covariates=covariates,
        )
        frame = forecast.to_frame()
        image = None
        if plot is not None:  # rendered before anything is written: all outputs or none
            from dil.runtime.outputs.plot import fan_chart, render

            fig = fan_chart(table.values, forecast, history_timestamps=table.timestamps)
            image = render(fig, plot.suffix.lower().lstrip("."))
        from dil.runtime.support.files import made_folders, write_bytes

        with made_folders(out and out.parent, plot and plot.parent):
            if out is not None:
                _write_table(frame, out, _output_kind(out))
            else:
                _to_stdout(frame)
            if image is not None:
                write_bytes(plot, image)
    except RUN_ERRORS as exc:
        raise click.ClickException(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from None

    wall = time.perf_counter() - start
    echo = (lambda s: click.echo(s, err=True)) if out is None else click.echo
    echo(_summary(table, forecast, config, wall, out, plot, spec))
    if show_stats:
        from dil.runtime.sampling.description import given_flags, sampler_line

        echo(sampler_line(config, manifest, given_flags(steps, lattice, cache, solver_order)))
        echo(_stats_text(forecast.stats))


def _long(req, wide_only: dict, chosen: dict, samples: int, seed: int, batch_series: int, skip: bool) -> None:
    """A long table (--id-column), in this process or on Ray (--ray): dil.runtime.batch.run."""
    from dil.runtime.batch.run import check_request, run_long
    from dil.runtime.manifest import default_artifact, load_manifest
    from dil.runtime.sampling.config import sampler_config

    try:
        check_request(req, wide_only)
        manifest = load_manifest(req.engine if req.engine is not None else default_artifact())
        config = sampler_config(manifest.default_sampler(), **chosen)
        line = run_long(req, manifest, config, samples, seed, batch_series, skip, _say)
    except RUN_ERRORS as exc:
        raise click.ClickException(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from None
    click.echo(line, err=req.out is None)


if __name__ == "__main__":  # pragma: no cover
    main()
