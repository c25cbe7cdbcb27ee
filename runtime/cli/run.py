"""`dil-run`: probabilistic forecasts from an exported artifact (NumPy + ONNX Runtime, no torch).

A thin shell: the options become a dil.runtime.jobs.job.RunRequest, run_job does the work (the
input rules, the forecast, the outputs) and its summary is printed.
"""

from __future__ import annotations

from pathlib import Path

import click

from dil.runtime.cli.options import (artifact_option, date_options, missing_value_option, one_line, pop_dates, pop_sampler,
                                     sampler_options)
from dil.runtime.support.deps import MissingDependency

# Errors shown as one line: bad input, options or files (every dil error is a ValueError) and a
# missing optional dependency.
RUN_ERRORS = (ValueError, OSError, MissingDependency)


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@artifact_option()
@click.option("--input", "input_path", required=True, type=click.Path(path_type=Path), metavar="FILE",
              help="Table to forecast (.csv, .csv.gz, .txt, .parquet): rows are time steps, columns are series. "
                   "The last context_length rows of each series are used; empty cells are missing values. A model "
                   "trained with covariates reads its covariate columns (named in its manifest) too; with known "
                   "covariates, the rows after the last observed value (series empty, covariates filled) are the "
                   "future steps and must hold them for every forecast step.")
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
@click.option("--actors", default=None, type=click.IntRange(min=1),
              help="Ray actors that forecast (each loads the engine once) [default: one per CPU of the cluster].")
@click.option("--columns", default=None, metavar="A,B",
              help="Series to forecast [default: the series the model was trained on, by name, when the table "
                   "has them; else every numeric column, with a note].")
@click.option("--skip-bad-series", is_flag=True,
              help="Forecast the other series when some have fewer than context_length rows or no observed value "
                   "in their last context_length rows (they are listed on stderr) instead of stopping.")
@date_options("--input", "for a model with time features, the date column of its training data (date_time for "
                         "the shipped model) when the table has it")
@missing_value_option()
@sampler_options()
@click.option("--samples", default=100, show_default=True, type=click.IntRange(1, 100_000), help="Sample paths per series.")
@click.option("--seed", default=0, show_default=True, type=int, help="Random seed (same seed, same forecast).")
@click.option("--out", type=click.Path(path_type=Path), default=None, metavar="PATH",
              help="Write the forecast table here (.csv, .csv.gz or .parquet; missing folders are created); "
                   "default: CSV on stdout.")
@click.option("--plot", type=click.Path(path_type=Path), default=None, metavar="PATH",
              help="Also draw a fan chart of the first 4 series (.png, .pdf, .svg; needs the 'plot' extra); the "
                   "summary says which were drawn.")
@click.option("--threads", default=None, type=int, help="ONNX Runtime intra-op threads (default: one per core).")
@click.option("--batch-series", default=16, show_default=True, type=click.IntRange(1, 1_000_000),
              help="Series per engine batch (memory only: results do not depend on it).")
@click.option("--stats", "show_stats", is_flag=True,
              help="Print which sampler and steps ran and why (the artifact's default, the built-in one or "
                   "your options), then the sampler's statistics (engine calls, tokens computed, cache reuse, "
                   "full steps, order histogram, refinements/merges, engine and control time).")
def main(engine, input_path, id_column, target_column, ray_address, actors, columns, skip_bad_series, samples, seed,
         out, plot, threads, batch_series, show_stats, missing_values, **options):
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
    from dil.runtime.jobs.job import RunRequest, run_job

    dates, sampler = pop_dates(options), pop_sampler(options)
    cols = [c.strip() for c in columns.split(",") if c.strip()] if columns else None
    req = RunRequest(input=input_path, out=out, plot=plot, columns=cols, id_column=id_column,
                     target_column=target_column, engine=engine, threads=threads, ray=ray_address, actors=actors,
                     num_samples=samples, seed=seed, batch_series=batch_series, skip_bad_series=skip_bad_series,
                     sampler=sampler, stats=show_stats, missing_values=missing_values, **dates)
    try:
        summary = run_job(req, lambda line: click.echo(line, err=True))
    except RUN_ERRORS as exc:
        raise one_line(exc) from None
    click.echo(summary, err=out is None)


if __name__ == "__main__":  # pragma: no cover
    main()
