"""The evaluation of an exported artifact: the runtime Forecaster plugged into the harness, plus the
torch baselines of the same model (dil.evaluate.torch_baselines) where a checkpoint is at hand."""

from __future__ import annotations

from dil.evaluate.harness import Evaluation, run_evaluation


def forecaster_fn(forecaster, num_samples: int = 100, steps: int = 20, seed: int = 0, stats: list | None = None,
                  **settings):
    """A forecast_fn for a dil.runtime Forecaster: each window seeded by its id (batch-independent).
    stats: a list that collects each call's SamplerStats (what the forecasts cost). settings:
    SamplerConfig fields (e.g. lattice=False, cache=False for the plain sampler)."""

    def fn(contexts, ids):
        fc = forecaster.predict_windows(
            contexts, num_samples=num_samples, steps=steps, seed=seed, series_keys=list(ids), names=list(ids),
            batch_series=len(ids), **settings,
        )
        if stats is not None:
            stats.append(fc.stats)
        return fc.samples

    return fn


def engine_data(engine, manifest, dataset=None, data=None, date_column=None, columns=None):
    """(DatasetSpec, SeriesTable) to evaluate an engine on: `dataset` (bundled name) or `data` (a
    file), else the bundled dataset and series the manifest says it was trained on."""
    from dil.data.registry import DATASETS
    from dil.data.datasets import resolve
    from dil.runtime.table import DataError

    trained_on = manifest.data or {}
    if dataset is None and data is None:
        dataset = trained_on.get("dataset")
        if dataset not in DATASETS:
            raise DataError(
                f"engine {engine} was trained on {dataset!r}, not a bundled dataset: pass --data FILE or --dataset NAME"
            )
        if columns is None and trained_on.get("columns"):
            columns = list(trained_on["columns"])
    return resolve(dataset, data, date_column, columns)


def evaluate_engine(
    engine,
    dataset: str | None = None,
    data=None,
    date_column: str | None = None,
    columns=None,
    samples: int = 100,
    steps: int = 20,
    seed: int = 0,
    ddpm_windows: int = 0,
    checkpoint=None,
    ddpm_optional: bool = False,
    sampler: dict | None = None,
    **kw,
) -> Evaluation:
    """run_evaluation for an exported artifact (any path naming it, see dil.runtime.manifest).

    The window (L, H) is the engine's; the data default to the dataset (and series) it was trained
    on: pass `dataset` (bundled name) or `data` (a file, with date_column / columns) to override.
    ddpm_windows: also sample that many evenly spaced windows with the torch module by 1000-step
    ancestral DDPM (baseline "reference-ddpm1000", scored with the model on the same windows);
    it needs the checkpoint (`checkpoint` or the run the manifest names). When it cannot run,
    ddpm_optional=True skips it with a line in Evaluation.notes, else the error is raised
    (MissingDependency without torch, ReferenceUnavailable without a matching checkpoint).
    sampler: SamplerConfig fields for the model's forecasts (default: the documented defaults,
    lattice + cache on; {"lattice": False, "cache": False} is the plain DPM-Solver++ sampler).
    Extra keyword arguments go to run_evaluation (n_windows, season, batch_size, progress).
    """
    from dil.runtime.deps import MissingDependency
    from dil.runtime import Forecaster

    fc = Forecaster.load(engine)
    model = fc.manifest.model
    spec, table = engine_data(engine, fc.manifest, dataset, data, date_column, columns)

    notes, subset = [], {}
    if ddpm_windows:
        from dil.evaluate.torch_baselines import ReferenceUnavailable, ddpm_forecast_fn, load_reference

        try:
            ref = load_reference(engine, checkpoint, onnx_engine=fc.engine)
        except (MissingDependency, ReferenceUnavailable) as exc:
            if not ddpm_optional:
                raise
            notes.append(f"reference-ddpm1000 skipped: {exc}")
        else:
            fn = ddpm_forecast_fn(ref, samples, seed, progress=kw.get("progress", True))
            subset[ref.name] = (fn, int(ddpm_windows))

    costs = []
    ev = run_evaluation(
        forecaster_fn(fc, samples, steps, seed, costs, **(sampler or {})), table, spec, model.context_length, model.horizon,
        samples=samples, steps=steps, seed=seed, subset_baselines=subset, **kw,
    )
    for name in subset:
        entry = ev.report["baselines"][name]
        entry["sampler"] = f"ancestral DDPM (Ho et al. 2020, eq. 11), {ref.schedule.num_steps} steps, PyTorch"
        entry["checkpoint"] = ref.run.name
    tokens, full = sum(c.tokens_computed for c in costs), sum(c.full_tokens for c in costs)
    # The runtime's default sampler (lattice + cache where the build has them): its share of the
    # network work of full recomputation over every forecast of the evaluation.
    ev.report["protocol"]["sampler"] = {"lattice": True, "cache": True, **(sampler or {})}
    ev.report["protocol"]["tokens_computed"] = int(tokens)
    ev.report["protocol"]["token_fraction"] = tokens / full if full else None
    ev.notes = notes
    return ev
