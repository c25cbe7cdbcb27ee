"""The library entry point: `Forecaster.load(path).predict(history)` (docs/model.md sections 1 and 5).

    from dil.runtime import Forecaster
    fc = Forecaster.load("engines/metro-traffic.onnx")
    forecast = fc.predict(frame, num_samples=100, seed=0)   # DataFrame: rows = time steps
    forecast.quantiles            # [G, 19, H] at QUANTILE_LEVELS, original scale
    forecast.to_frame()           # long table: series, timestamp (or step), mean, median, q05..q95

Each series is forecast from its last `context_length` observations, scaled per window, with its
own noise stream keyed by its name (dil.runtime.sampling.rng), so its forecast is the same whatever other
series share the call, in whatever order, and whatever `batch_series` and `memory_budget` are.
The sampler and its steps are the artifact's defaults (`Forecaster.default_config`: the manifest's
"sampler_defaults" where recorded, else the fast sampler at 20 steps; docs/sampler.md section 14)
unless a call names them. Samples run in blocks of at most SAMPLE_BLOCK per sampler call, so memory
does not grow with num_samples (dil.runtime.sampling.chunks, docs/sampler.md section 12).

A model trained with time features or covariates (`Forecaster.features`, the manifest's
FeatureSpec) gets them too: `predict` computes the time features from the history's dates and the
future steps' and takes the covariates from `covariates=` (the history's rows, then the future
steps' rows, which must hold every known covariate); `predict_windows` takes them ready-made as a
`WindowFeatures` (dil.runtime.inputs.window_features, what the evaluation builds from a table's rows).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Protocol

import numpy as np

from dil.runtime.inputs.errors import ForecastError
from dil.runtime.manifest import Manifest
from dil.runtime.outputs.frame import forecast_frame
from dil.runtime.outputs.quantiles import QUANTILE_LEVELS, sample_quantiles
from dil.runtime.sampling.rng import SeriesStreams
from dil.runtime.sampling.chunks import DEFAULT_MEMORY_BUDGET, sample_blocks, series_per_call
from dil.runtime.sampling.config import SamplerConfig, check_int, sampler_config
from dil.runtime.sampling.contracts import Engine
from dil.runtime.sampling.sampler import sample
from dil.runtime.sampling.stats import SamplerStats
from dil.runtime.inputs.scaling import ScalingError, context_scale, standardise, unscalable, unscalable_text
from dil.runtime.inputs.histories import frame_histories
from dil.runtime.inputs.rules import build_windows, usable
from dil.runtime.inputs.window_features import FeatureInputError, WindowFeatures, check_window_features

DEFAULT_BATCH_SERIES = 16


class ArtifactEngine(Engine, Protocol):
    """An Engine loaded from an artifact (OnnxEngine, TrtEngine): its manifest gives the schedule."""

    manifest: Manifest


@dataclass
class Forecast:
    """Forecast of G series over H future steps from N samples each.

    samples: float64 [G, N, H], original scale. quantiles: float64 [G, Q, H] at `levels`
    (QUANTILE_LEVELS, 0.05..0.95). mean, median: float64 [G, H]. timestamps: datetime64[ns] [H] of the
    future steps, or None when the history had no regular DatetimeIndex. series: the G series names.
    loc, scale: float64 [G], the per-window scaling (standardised = (samples - loc) / scale).
    """

    samples: np.ndarray
    quantiles: np.ndarray
    mean: np.ndarray
    median: np.ndarray
    timestamps: np.ndarray | None
    series: list
    loc: np.ndarray
    scale: np.ndarray
    levels: np.ndarray = field(default_factory=lambda: QUANTILE_LEVELS.copy())
    stats: SamplerStats = field(default_factory=SamplerStats)

    @property
    def horizon(self) -> int:
        return int(self.samples.shape[2])

    def standardised(self) -> np.ndarray:
        """The samples on the standardised (network) scale, float64 [G, N, H]."""
        return (self.samples - self.loc[:, None, None]) / self.scale[:, None, None]

    def to_frame(self):
        """Long pandas DataFrame, one row per (series, future step), columns
        `series`, `timestamp` (or `step` = 1..H without timestamps), `mean`, `median`, `q05` .. `q95`
        (dil.runtime.outputs.frame, the one output table of dil-run too)."""
        return forecast_frame(self.series, self.mean, self.median, self.quantiles, self.timestamps, self.levels)


def _check_finite(values: np.ndarray, names, where: str) -> None:
    """values: [rows, C]; raise ForecastError naming the first Inf's series and row."""
    bad = unscalable(values)
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise ForecastError(f"series {names[col]!r} has {unscalable_text(values[row, col])} at row {row + 1} of {where}")


class Forecaster:
    """A loaded artifact plus the sampler. Create with `Forecaster.load(path)`."""

    def __init__(self, engine: ArtifactEngine):
        self.engine = engine
        self.manifest = engine.manifest
        self.config = engine.config
        self.schedule = engine.manifest.schedule

    @classmethod
    def load(cls, engine_path=None, providers=None, threads: int | None = None) -> "Forecaster":
        """Load NAME.{json,encode.onnx,denoise.onnx} (any of the names resolves; see dil.runtime.manifest);
        no path: the shipped default model (metro-traffic), wherever dil is installed.

        A NAME.plan path runs the TensorRT engines (dil.runtime.backends); anything else ONNX Runtime.
        providers: ONNX Runtime provider(s), default CUDA with onnxruntime-gpu and a GPU, else CPU;
        threads: intra-op threads (None: ORT's default).
        Raises ManifestError, EngineError or MissingDependency with a one-line message.
        """
        from dil.runtime.backends import load_engine

        return cls(load_engine(engine_path, providers=providers, threads=threads))

    @property
    def context_length(self) -> int:
        return self.config.context_length

    @property
    def horizon(self) -> int:
        return self.config.horizon

    @cached_property
    def default_config(self) -> SamplerConfig:
        """The sampler a call without `config` runs: the artifact's "sampler_defaults" (lattice, cache,
        steps, a distilled student's solver_order; recorded by dil-bench --frontier
        --write-defaults or, for a student, by dil-export) over the documented
        defaults, or SamplerConfig() (fast sampler, 20 steps) for an artifact without them."""
        return self.manifest.default_sampler()

    @cached_property
    def _recorded_floors(self) -> dict:
        return {str(k): float(v) for k, v in ((self.manifest.data or {}).get("scale_floors") or {}).items()}

    def scale_floors(self, series_ids, histories=None) -> np.ndarray:
        """float64 [G]: the scale floor of each series (dil.runtime.inputs.scaling): the one recorded
        for the training series it names (a window id "<series>@<origin>" names <series>); for
        another series, of a model trained with floors, the floor of its history (`histories`, G
        SeriesHistory, where given); else 0 (no floor: every model trained before the floor existed)."""
        from dil.runtime.inputs.scaling import LEGACY_SCALING_RULE, series_floor, window_series

        recorded = self._recorded_floors
        floored = (self.manifest.data or {}).get("scaling", LEGACY_SCALING_RULE) != LEGACY_SCALING_RULE
        out = np.zeros(len(series_ids))
        for g, sid in enumerate(series_ids):
            name = window_series(sid)
            if name in recorded:
                out[g] = recorded[name]
            elif floored and histories is not None:
                out[g] = series_floor(histories[g].values)
        return out

    @property
    def features(self):
        """The model's inputs beyond the target (dil.runtime.inputs.features.FeatureSpec, from the manifest)."""
        return self.manifest.features

    def predict(self, history, num_samples: int = 100, steps: int | None = None, seed: int = 0, series_ids=None,
                timestamps=None, freq: str | None = None, batch_series: int = DEFAULT_BATCH_SERIES,
                solver_order: int | None = None, progress: bool = False, config: SamplerConfig | None = None,
                memory_budget: int = DEFAULT_MEMORY_BUDGET, covariates=None, **settings) -> Forecast:
        """Forecast the next `horizon` steps of every series in `history`.

        history: float array [T] (one series) or [T, C] (rows = time steps, columns = series), or a
        pandas DataFrame (columns = series; a DatetimeIndex gives future timestamps) or Series.
        NaN = missing. The last `context_length` rows are used; fewer rows is an error.
        series_ids: C names overriding the column names; they also key the noise streams (default:
        DataFrame column names, integer column indices for arrays). timestamps, freq: history times
        [T] and their pandas frequency alias for array input (freq is inferred when omitted).
        batch_series: series per engine batch (memory; the result does not depend on it).
        memory_budget: bytes of working memory per sampler call (fewer series per call when
        exceeded; see dil.runtime.sampling.chunks for the bound; the result does not depend on it).
        config: a SamplerConfig (default: `default_config`, the artifact's sampler defaults where
        its manifest records them, else the documented ones: fast sampler, 20 steps); steps,
        solver_order and any other SamplerConfig field given by name (e.g. lattice=False,
        cache=False, K=3, entropy_budget=0.1) override it. Bad settings raise ValueError naming
        the setting and its valid range before any engine call.

        A model with features (`self.features`): time features need the history's dates (a
        DatetimeIndex or timestamps=; the future steps follow at freq, inferred, else the model's);
        covariates: a DataFrame (or dict of columns) holding the model's covariate columns as
        written in a table (numbers or text, NaN/None = missing), by position: the T history rows,
        then the H future rows, where every known covariate must be present (rows beyond T + H
        are ignored; past-only covariates need only the history rows). Columns the model does not
        use are ignored. Missing dates or covariates raise ForecastError naming what is missing
        (the column and the future rows), before any engine call.
        """
        self._config(config, steps, solver_order, settings)  # a bad setting: before any work
        histories = frame_histories(history, series_ids, timestamps, freq, covariates)
        L, H = self.context_length, self.horizon
        if histories:
            _check_finite(np.stack([h.values for h in histories], axis=1), [h.id for h in histories], "the history")
        histories, _ = usable(histories, L, skip=False, hint="")
        windows = build_windows(histories, self.features, L, H)
        forecast = self.predict_windows(
            windows.contexts, num_samples, steps, seed, series_ids=windows.ids, batch_series=batch_series,
            solver_order=solver_order, progress=progress, config=config, memory_budget=memory_budget,
            features=windows.features, scale_floor=self.scale_floors(windows.ids, windows.histories), **settings,
        )
        forecast.timestamps = windows.shared_future
        return forecast

    def predict_windows(self, contexts, num_samples: int = 100, steps: int | None = None, seed: int = 0,
                        series_ids=None, batch_series: int = DEFAULT_BATCH_SERIES, solver_order: int | None = None,
                        progress: bool = False, config: SamplerConfig | None = None,
                        memory_budget: int = DEFAULT_MEMORY_BUDGET, features: WindowFeatures | None = None,
                        scale_floor=None, **settings) -> Forecast:
        """Forecast from G context windows at once (the evaluation harness's entry point).

        contexts: float [G, L'] with L' >= context_length (the last context_length values are used),
        NaN = missing. series_ids: G series names or non-negative ints keying the random streams
        (default 0..G-1; give each window a distinct key, e.g. series * n_origins + origin, for
        independent noise; see dil.runtime.sampling.rng.series_key); they label Forecast.series too.
        config, steps, solver_order, memory_budget, settings: as in predict.
        features: the windows' time features and covariates (WindowFeatures: context_known
        [G, L', Fk], context_past [G, L', Fp], horizon_known [G, H, Fk], encoded as
        dil.runtime.inputs.features.row_features does), required when the model has features; a
        missing or misshapen one raises ForecastError before any engine call. scale_floor: float [G],
        each window's scale floor in its series' units (default: `scale_floors(series_ids)`).

        Memory: each sampler call runs one block of at most SAMPLE_BLOCK (1024) samples for as many
        series as memory_budget allows, so its working memory is at most max(memory_budget,
        bytes_per_row * min(num_samples, 1024)) (about 1.2 MB per row for the shipped model);
        the forecast also holds its samples and their x_T, 8 * num_samples * H bytes per series
        each (dil.runtime.sampling.chunks).
        """
        check_int("num_samples", num_samples, 1, 100_000)
        check_int("batch_series", batch_series, 1, 1_000_000)
        check_int("memory_budget", memory_budget, 1, 2**62)
        config = self._config(config, steps, solver_order, settings)
        if config.num_diffusion_steps != self.schedule.num_steps:
            raise ValueError(f"num_diffusion_steps must equal the model's training steps ({self.schedule.num_steps}), "
                             f"got {config.num_diffusion_steps}")
        steps = config.steps
        ctx = np.asarray(contexts, dtype=np.float64)
        L, H = self.context_length, self.horizon
        if ctx.ndim != 2 or ctx.shape[1] < L:
            raise ForecastError(f"contexts must be [G, L>={L}], got shape {ctx.shape}")
        # C-contiguous rows: numpy's reductions (the scaling's sums) then add in the same order
        # whatever the batch's layout, which keeps a series' result bit-identical across batches.
        ctx = np.ascontiguousarray(ctx[:, -L:])
        G = ctx.shape[0]
        streams = SeriesStreams(seed, range(G) if series_ids is None else list(series_ids))
        names = list(range(G)) if series_ids is None else list(series_ids)
        if len(streams) != G:
            raise ForecastError(f"got {len(streams)} series_ids for {G} windows")
        _check_finite(ctx.T, names, "its context window")
        try:
            known, past, hor = check_window_features(self.features, features, G, L, H)
        except FeatureInputError as exc:
            raise ForecastError(str(exc)) from None
        empty = np.isnan(ctx).all(axis=1)
        if empty.any():
            raise ForecastError(f"series {names[int(np.argmax(empty))]!r} has no observed value in its last {L} rows")
        try:
            floor = self.scale_floors(names) if scale_floor is None else np.asarray(scale_floor, dtype=np.float64)
            loc, scale = context_scale(ctx, floor)
        except ScalingError as exc:  # unreachable after the check above; kept as one-line safety
            raise ForecastError(str(exc)) from None
        z = standardise(ctx, loc, scale)

        x0, stats = self._sample(z, (known, past, hor), streams, num_samples, config, progress,
                                 series_per_call(self.config, steps, num_samples, memory_budget, batch_series,
                                                 self.engine.max_batch, self.engine.call_tokens))

        samples = x0 * scale[:, None, None] + loc[:, None, None]
        del x0
        quantiles = np.moveaxis(sample_quantiles(samples, axis=1), 0, 1)  # [G, Q, H]
        return Forecast(
            samples=samples, quantiles=quantiles, mean=samples.mean(axis=1), median=np.median(samples, axis=1),
            timestamps=None, series=names, loc=loc, scale=scale, stats=stats,
        )

    def _config(self, config: SamplerConfig | None, steps, solver_order, settings: dict) -> SamplerConfig:
        """The call's SamplerConfig: `config`, else the artifact's defaults, with the named overrides."""
        base = config if config is not None else self.default_config
        return sampler_config(base, steps=steps, solver_order=solver_order, **settings)

    def _sample(self, z: np.ndarray, feats: tuple, streams: SeriesStreams, num_samples: int, config: SamplerConfig,
                progress: bool, batch: int) -> tuple[np.ndarray, SamplerStats]:
        """x0 float64 [G, N, H] (standardised scale) and the summed stats, from standardised contexts
        z [G, L] and feats = (context known [G, L, Fk], context past [G, L, Fp], horizon known
        [G, H, Fk]) or Nones: `batch` series per call, one sample block per call
        (dil.runtime.sampling.chunks)."""
        from dil.runtime.inputs.features import context_inputs

        known, past, hor = feats
        G, H = z.shape[0], self.horizon
        blocks = sample_blocks(num_samples)
        bar = _progress_bar(progress, -(-G // batch) * len(blocks), config.steps)
        x0 = np.empty((G, num_samples, H))
        stats = SamplerStats()
        try:
            for start in range(0, G, batch):
                part = slice(start, min(G, start + batch))
                part_streams = streams.subset(part)
                x_T = part_streams.initial_noise(num_samples, H)  # every sample's x_T, drawn once
                ctx = context_inputs(z[part], None if known is None else known[part], None if past is None else past[part])
                # The sampler's hor_feat: only a model with known features has any (None: Fh == 1).
                extra = {} if hor is None or not hor.shape[-1] else {"hor_feat": hor[part].astype(np.float32)}
                for n0, n1 in blocks:
                    result = sample(self.engine, self.schedule, ctx, x_T[:, n0:n1], config,
                                    part_streams.from_sample(n0), progress=bar.update if bar is not None else None,
                                    **extra)
                    x0[part, n0:n1] = result.x0
                    stats = stats.merge(result.stats) if stats.series else result.stats
        finally:
            if bar is not None:
                bar.close()
        stats.series, stats.samples = G, num_samples  # merge added series over sample blocks
        return x0, stats


def _progress_bar(progress: bool, calls: int, steps: int):
    if not progress:
        return None
    from tqdm import tqdm

    # disable=None: no bar when stderr is not a terminal (logs, CI, pipes).
    return tqdm(total=calls * steps, desc="sampling", unit="step", disable=None, leave=False)
