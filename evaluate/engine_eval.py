"""The evaluation of an exported artifact: the runtime Forecaster plugged into the harness, plus the
torch baselines of the same model (dil.evaluate.torch_baselines) where a checkpoint is at hand."""

from __future__ import annotations

from dataclasses import replace

from dil.evaluate.harness import EvalOptions, Evaluation, run_evaluation

# Bytes of working memory per sampler call of dil-eval's forecasts (Forecaster.predict_windows'
# memory_budget), a bound on memory only: on a CPU the windows per engine call are set by the
# measured token-row limit (dil.runtime.sampling.chunks.CPU_CALL_TOKENS: 2 windows of 100 samples
# of the shipped model per call, as many as cost no more per window than one alone), far below
# this budget; it binds for GPU engines, which have no token limit.
EVAL_MEMORY_BUDGET = 256 * 2**20


def forecaster_fn(forecaster, num_samples: int = 100, steps: int | None = 20, seed: int = 0,
                  stats: list | None = None, memory_budget: int = EVAL_MEMORY_BUDGET, **settings):
    """A forecast_fn for a dil.runtime Forecaster: each window seeded by its id (batch-independent),
    given its WindowFeatures when the model has features (the harness passes them).
    stats: a list that collects each call's SamplerStats (what the forecasts cost). memory_budget:
    bytes per sampler call (windows per engine call; the forecasts do not depend on it). settings:
    SamplerConfig fields (e.g. lattice=False, cache=False for the plain sampler)."""

    def fn(contexts, ids, features=None):
        fc = forecaster.predict_windows(
            contexts, num_samples=num_samples, steps=steps, seed=seed, series_ids=list(ids),
            batch_series=len(ids), memory_budget=memory_budget, features=features, **settings,
        )
        if stats is not None:
            stats.append(fc.stats)
        return fc.samples

    return fn


def _merged(costs: list):
    """The SamplerStats of all of an evaluation's forecaster calls, summed (None without any)."""
    if not costs:
        return None
    total = costs[0]
    for c in costs[1:]:
        total = total.merge(c)
    return total


def engine_data(engine, manifest, dataset=None, data=None, date_column=None, columns=None, missing_values=(),
                **dates):
    """(DatasetSpec, SeriesTable) to evaluate an engine on: `dataset` (bundled name) or `data` (a
    file, its dates read as `dates` say: date_format, dayfirst), else the bundled dataset and series
    the manifest says it was trained on. The table holds the covariate columns the model uses
    (manifest.features), read raw. A file without `date_column` for a model with time features
    takes its dates from the model's training date column (a note in the table's notes says so;
    dil.runtime.inputs.rules.table_date_column)."""
    from dil.data.registry import DATASETS
    from dil.data.datasets import resolve
    from dil.runtime.inputs import rules
    from dil.runtime.inputs.rules import table_date_column
    from dil.runtime.inputs.table import DataError

    trained_on = manifest.data or {}
    if dataset is None and data is None:
        dataset = trained_on.get("dataset")
        if dataset not in DATASETS:
            raise DataError(
                f"engine {engine} was trained on {dataset!r}, not a bundled dataset: pass its table with --data FILE, or "
                "--dataset NAME"
            )
        if columns is None and trained_on.get("columns"):
            columns = list(trained_on["columns"])
    note = None
    if data is not None and dataset is None and date_column is None:
        date_column, note = table_date_column(data, manifest)
    covariates = [c.name for c in manifest.features.covariates]
    missing, missing_note = rules.missing_values(missing_values, manifest)
    spec, table = resolve(dataset, data, date_column, columns, covariates=covariates or None,
                          missing_values=missing, **dates)
    feats = manifest.features.time_features
    if feats and table.timestamps is None:
        what = (f"{table.source} is read without dates: pass --date-column" if data is not None else
                f"{spec.name} has no dates, so it cannot be scored on it (a model trained with --no-time-features can)")
        raise DataError(f"the model uses time features ({', '.join(feats)}) and {what}")
    other = None
    trained_name = trained_on.get("dataset")
    if dataset is not None and trained_name and dataset != trained_name:
        other = (f"note: the model was trained on {trained_name}, not {dataset}: these scores measure how it carries "
                 "over to other data")
    for line in reversed([n for n in (note, missing_note if data is not None else None, other) if n]):
        table.notes.insert(0, line)
    return spec, table


def evaluate_engine(
    engine,
    options: EvalOptions = EvalOptions(),
    *,
    dataset: str | None = None,
    data=None,
    date_column: str | None = None,
    columns=None,
    date_format: str | None = None,
    dayfirst: bool | None = None,
    sampler: dict | None = None,
    ddpm_windows: int = 0,
    checkpoint=None,
    missing_values=(),
) -> Evaluation:
    """run_evaluation for an exported artifact (any path naming it, see dil.runtime.manifest).

    options: the protocol (samples, steps, seed, windows, ...; steps None: the artifact's default).
    The window (L, H) is the engine's; the data default to the dataset (and series) it was trained
    on: pass `dataset` (bundled name) or `data` (a file, with date_column / columns / date_format /
    dayfirst, see dil.runtime.inputs.table.load_table) to override. A model with time features or
    covariates gets them from the table's rows (its dates, the covariate columns its manifest
    names; the horizon's known covariates are the table's), the same for every forecaster.
    sampler: SamplerConfig fields for the model's forecasts, a None value left unset (default: the
    artifact's sampler defaults where its manifest records them, else the documented ones, lattice +
    cache on; {"lattice": False, "cache": False} is the plain DPM-Solver++ sampler). The report's
    protocol records the sampler that ran ("sampler", "steps") and why ("sampler_choice", one line).
    ddpm_windows: also sample that many evenly spaced windows with the torch module by 1000-step
    ancestral DDPM (baseline "reference-ddpm1000", scored with the model on the same windows;
    minutes per window on a CPU). It needs torch (MissingDependency naming the extra otherwise)
    and the torch weights: `checkpoint`, else the artifact's own, else the run the manifest names
    (ReferenceUnavailable otherwise, see dil.evaluate.torch_baselines.load_reference); 0 (the
    default) imports no torch. options.protocol "probts": ProbTS's long-term windows and metrics
    (dil.evaluate.harness.probts_setting) on a bundled dataset, every series of it.
    """
    from dil.runtime import Forecaster
    from dil.runtime.sampling.description import given_flags, sampler_line
    from dil.runtime.sampling.config import sampler_config
    from dil.runtime.inputs.window_features import describe

    fc = Forecaster.load(engine)
    model = fc.manifest.model
    if options.protocol == "probts":
        from dil.evaluate.harness import EvaluationError

        if data is not None:
            raise EvaluationError("the probts protocol runs on ProbTS's bundled datasets (--dataset), not on --data")
        if columns:
            raise EvaluationError("the probts protocol scores every series of the dataset at once: drop --columns")
        # The dataset the model was trained on, all of its series (not only those it was trained on).
        dataset = dataset or (fc.manifest.data or {}).get("dataset")
    spec, table = engine_data(engine, fc.manifest, dataset, data, date_column, columns, missing_values,
                              date_format=date_format, dayfirst=dayfirst)
    given = {k: v for k, v in (sampler or {}).items() if v is not None}
    config = sampler_config(fc.default_config, steps=options.steps, **given)  # options over the artifact's
    flags = given_flags(options.steps, given.get("lattice"), given.get("cache"), given.get("solver_order"))
    options = replace(options, steps=config.steps)
    subset, ref = {}, None
    if ddpm_windows:
        from dil.evaluate.torch_baselines import ddpm_forecast_fn, load_reference

        ref = load_reference(engine, checkpoint, onnx_engine=fc.engine)
        subset[ref.name] = (ddpm_forecast_fn(ref, options.samples, options.seed, progress=options.progress),
                            int(ddpm_windows))

    costs = []
    fn = forecaster_fn(fc, options.samples, options.steps, options.seed, costs, config=config)
    ev = run_evaluation(fn, table, spec, model.context_length, model.horizon, options, subset_baselines=subset,
                        features=fc.features)
    if ref is not None:
        entry = ev.report["baselines"][ref.name]
        entry["sampler"] = f"ancestral DDPM (Ho et al. 2020, eq. 11), {ref.schedule.num_steps} steps, PyTorch"
        entry["checkpoint"] = ref.run.name
    tokens, full = sum(c.tokens_computed for c in costs), sum(c.full_tokens for c in costs)
    # The sampler that ran, and its share of the network work of full recomputation over every forecast.
    ev.report["protocol"]["sampler"] = {"lattice": config.lattice, "cache": config.cache, "spacing": config.spacing}
    ev.report["protocol"]["sampler_choice"] = sampler_line(config, fc.manifest, flags)
    ev.report["protocol"]["tokens_computed"] = int(tokens)
    ev.report["protocol"]["token_fraction"] = tokens / full if full else None
    ev.report["protocol"]["inputs"] = describe(fc.features)  # the time features and covariates the model used
    ev.notes = list(table.notes)  # what reading a user file repaired
    ev.stats = _merged(costs)  # what the forecasts cost: dil-eval --stats
    return ev

