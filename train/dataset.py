"""Training and validation windows, scaled and featured exactly as the runtime does it.

Channel-independent: one network row is one (origin, series) window. Every window is scaled from its
own context by `dil.runtime.inputs.scaling`, and its tokens get the table rows' time features and
covariates from `dil.runtime.inputs.features` (the single sources of truth), so training sees the inputs
the runtime will feed. Missing target steps are masked out of the loss, never treated as zeros.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dil.data.windows import gather_series, observed_counts, split_bounds, window_origins
from dil.runtime.inputs.features import (FeatureError, FeatureSpec, RowFeatures, context_inputs, fit_covariates, row_features,
                                         seen_time_features, time_feature_names)
from dil.runtime.inputs.scaling import (LEGACY_SCALING_RULE, SCALE_FLOOR_REL, SCALING_RULE, context_scale, series_floor,
                                        standardise)
from dil.runtime.model.frequency import noise_gains, to_spectrum
from dil.runtime.inputs.table import DataError
from dil.runtime.inputs.window_features import WindowFeatures


@dataclass
class WindowBatch:
    """A batch of B scaled windows.

    ctx: float32 [B, L, Fc] context features (value, observed mask on the standardised scale, then
        the rows' known and past features; dil.runtime.inputs.features.context_inputs).
    hor_feat: float32 [B, H, Fk] the known features of the target rows (time features, known-future
        covariates), the horizon tokens' inputs beside their noisy values.
    target: float32 [B, H] standardised target with missing steps set to 0.
    mask: float32 [B, H], the loss weight: 1 where the target is observed.
    loc, scale: float64 [B] the per-window scaling (for turning predictions back).
    gains: float64 [H], the forward noise's per-coordinate scale G (ones in the time domain).

    In the frequency domain (docs/frequency.md) target and hor_feat are the spectral coordinates of
    the standardised target and of each known feature's horizon trajectory (dil.runtime.model.frequency,
    along the horizon axis), and mask is 1 / G^2 per coordinate, so that the masked loss is the
    time-domain loss (Parseval) up to one constant factor.
    """

    ctx: np.ndarray
    hor_feat: np.ndarray
    target: np.ndarray
    mask: np.ndarray
    loc: np.ndarray
    scale: np.ndarray
    gains: np.ndarray | None = None


class WindowSet:
    """The usable (origin, series) windows whose targets lie in rows [start, end).

    A window is usable when at least `min_observed` of its context steps are observed (a share in
    (0, 1], at least one step) and at least one target step is observed: a context with almost no
    data gives a degenerate scale, and a target with no data gives no loss.
    values: float64 [T, C] with NaN = missing. features: the table's RowFeatures (known [T, Fk],
    past [T, Fp]; shared by its C series), None for none (Fk = Fp = 0).
    domain: "time" or "frequency" (batches carry spectral targets; a window then needs every target
    step observed, since a missing step has no place in the spectrum).
    """

    def __init__(self, values: np.ndarray, context: int, horizon: int, start: int, end: int, min_observed: float = 0.5,
                 features: RowFeatures | None = None, domain: str = "time", floors: np.ndarray | None = None):
        self.values = np.asarray(values, dtype=np.float64)
        # float64 [C]: each series' scale floor (dil.runtime.inputs.scaling); None: no floor
        self.floors = None if floors is None else np.asarray(floors, dtype=np.float64)
        self.context, self.horizon = int(context), int(horizon)
        self.domain = domain
        T = self.values.shape[0]
        empty = np.zeros((T, 0))
        self.rows = features or RowFeatures(known=empty, past=empty, known_missing=empty.astype(bool))
        if self.rows.known.shape[0] != T or self.rows.past.shape[0] != T:
            raise ValueError(f"features have {self.rows.known.shape[0]} rows, the table {T}")
        origins = window_origins(self.values.shape[0], self.context, self.horizon, start, end)
        if origins.size == 0:
            self.origins = self.channels = np.zeros(0, dtype=np.int64)
            return
        ctx_count, tgt_count = observed_counts(self.values, origins, self.context, self.horizon)
        need = max(1.0, min_observed * self.context)
        complete = tgt_count >= self.horizon if domain == "frequency" else tgt_count > 0
        w, c = np.nonzero((ctx_count >= need) & complete)
        self.origins, self.channels = origins[w], c.astype(np.int64)

    def __len__(self) -> int:
        return int(self.origins.size)

    def batch(self, index: np.ndarray) -> WindowBatch:
        """The windows at positions `index` (int [B]) of this set, scaled."""
        origins = self.origins[index]
        ctx, tgt = gather_series(self.values, origins, self.channels[index], self.context, self.horizon)
        loc, scale = context_scale(ctx, None if self.floors is None else self.floors[self.channels[index]])
        z_ctx = standardise(ctx, loc, scale)
        y = standardise(tgt, loc, scale)
        observed = ~np.isnan(y)
        rows = WindowFeatures.from_rows(self.rows, origins, self.context, self.horizon)
        if self.domain == "frequency":  # every target step is observed (see __init__)
            gains = noise_gains(self.horizon)
            return WindowBatch(
                ctx=context_inputs(z_ctx, rows.context_known, rows.context_past),
                hor_feat=to_spectrum(rows.horizon_known, axis=1).astype(np.float32),
                target=to_spectrum(y).astype(np.float32),
                mask=np.broadcast_to(1.0 / gains**2, y.shape).astype(np.float32),
                loc=loc, scale=scale, gains=gains,
            )
        return WindowBatch(
            ctx=context_inputs(z_ctx, rows.context_known, rows.context_past),
            hor_feat=rows.horizon_known.astype(np.float32),
            target=np.where(observed, y, 0.0).astype(np.float32),
            mask=observed.astype(np.float32),
            loc=loc,
            scale=scale,
        )

    def evenly_spaced(self, n: int) -> np.ndarray:
        """Positions of n windows spread over the whole set (all of them if n >= len)."""
        if n >= len(self):
            return np.arange(len(self))
        return np.unique(np.round(np.linspace(0, len(self) - 1, n)).astype(np.int64))


@dataclass
class NoiseDraw:
    """Forward-process draws for a batch: N per window.

    k: int64 [B, N] diffusion steps; eps: float32 [B, N, H] the noise;
    x: float32 [B, N, H] noisy horizon alpha_k * y + sigma_k * G * eps; t_feat: float32 [B, N, E].
    net_target: float32 [B, N, H] what the network is trained to output (G eps, or v = alpha G eps -
        sigma y), from dil.runtime.sampling.parametrisation.training_target.
    G: the per-coordinate noise gains (1 in the time domain; docs/frequency.md in the frequency
    domain), so the network sees noise in y units and every x0/eps conversion is the time domain's.
    mask: float32 [B, N, H], the loss weight per row when it is not the batch's (WindowBatch.mask): a
        distillation's (train/distill.py), complete where the data has gaps, weighted per student step.
    """

    k: np.ndarray
    eps: np.ndarray
    x: np.ndarray
    t_feat: np.ndarray
    net_target: np.ndarray
    mask: np.ndarray | None = None


def draw_noise(rng: np.random.Generator, schedule, target: np.ndarray, n_draws: int, time_dim: int,
               prediction: str = "epsilon", gains: np.ndarray | None = None) -> NoiseDraw:
    """k ~ U{0..T-1}, eps ~ N(0, I), x_k = alpha_k y + sigma_k G eps and the network's training target
    for `prediction` (all float64, cast once at the end). target: y, float [B, H]; gains: G, float
    [H] (WindowBatch.gains; None = 1). The same draws of rng whatever G is."""
    from dil.runtime.sampling.parametrisation import training_target
    from dil.runtime.sampling.schedule import diffusion_time_features

    B, H = target.shape
    k = rng.integers(0, schedule.num_steps, size=(B, n_draws))
    eps = rng.standard_normal((B, n_draws, H))
    if gains is not None:
        eps = eps * np.asarray(gains, dtype=np.float64)
    alpha = schedule.alpha(k)[..., None]
    sigma = schedule.sigma(k)[..., None]
    y = target[:, None, :].astype(np.float64)
    x = alpha * y + sigma * eps
    return NoiseDraw(
        k=k,
        eps=eps.astype(np.float32),
        x=x.astype(np.float32),
        t_feat=diffusion_time_features(k, time_dim).astype(np.float32),
        net_target=training_target(y, eps, alpha, sigma, prediction).astype(np.float32),
    )


def fit_feature_spec(table, freq: str | None, known=(), past=(), time_features: bool | None = None,
                     train_rows: tuple[int, int] | None = None) -> FeatureSpec:
    """The FeatureSpec of a training run on `table` (a SeriesTable whose `covariates` hold the named
    columns): the time features of `freq` (time_features None: when the table has dates and a
    frequency; True: required, FeatureError without them; False: none), the known-future and
    past-only covariates with their statistics from the rows [train_rows) only (the train part).
    By default (time_features None) a calendar feature whose cycle the training rows span fewer
    than MIN_CYCLES times is left out (dil.runtime.inputs.features.seen_time_features); a tuple of
    names (a resumed run's) is used as it is."""
    has_dates = table.timestamps is not None and bool(freq)
    if time_features and not has_dates:
        raise FeatureError("--time-features: the table has no dates with a regular frequency "
                           "(give --date-column, or pass --no-time-features)")
    if isinstance(time_features, (tuple, list)):  # a resumed run's own names
        names = tuple(time_features)
    else:
        names = time_feature_names(freq) if (has_dates if time_features is None else time_features) else ()
    if names and time_features is None and train_rows is not None:  # the default keeps the cycles seen
        a, b = train_rows
        span = (table.timestamps[b - 1] - table.timestamps[a]) / np.timedelta64(1, "D")
        names, _ = seen_time_features(names, float(span))
    covs = ()
    if known or past:
        if table.covariates is None:
            raise FeatureError(f"covariates {', '.join([*known, *past])} were not read from the table")
        a, b = train_rows if train_rows is not None else (0, table.n_steps)
        covs = fit_covariates(table.covariates, list(known), list(past), slice(a, b))
    return FeatureSpec(freq=freq if names else None, time_features=names, covariates=covs)


def data_record(spec, table, context: int, horizon: int, bounds: dict,
                features: FeatureSpec | None = None, floors: np.ndarray | None = None) -> dict:
    """The checkpoint's description of the training data (read by export, runtime and eval).
    "covariates" lists the covariate columns read beside the targets (known-future, then past-only);
    "scaling" names the per-window scaling rule and "scale_floors" each series' scale floor
    (dil.runtime.inputs.scaling; floors None: the rule without floors)."""
    features = features or FeatureSpec()
    scaling = {"scaling": LEGACY_SCALING_RULE} if floors is None else {
        "scaling": SCALING_RULE, "scale_floor_rel": SCALE_FLOOR_REL,
        "scale_floors": {str(n): float(f) for n, f in zip(table.names, floors)}}
    return {
        "dataset": spec.name,
        "source": table.source,
        # the training table of a run on a local file: --resume and --distill read it again from here
        **({} if spec.bundled else {"path": str(Path(spec.file).resolve())}),
        "sha256": table.sha256,
        "columns": list(table.names),
        "date_column": spec.date_column,
        "date_format": spec.date_format,  # how the dates were read: export re-reads the file the same way
        "dayfirst": spec.dayfirst,
        "freq": table.freq or spec.freq,
        "season": spec.season,
        "missing_values": [float(v) for v in spec.missing_values],
        "context_length": context,
        "horizon": horizon,
        **scaling,
        "splits": {k: [int(a), int(b)] for k, (a, b) in bounds.items()},
        "covariates": [c.name for c in features.covariates],
    }


class SplitWindows:
    """The train and val WindowSets of a table (`.train`, `.val`, `.bounds` = split_bounds), with
    the rows' features, validated up front: bad data fails before anything is written.
    config: the ModelConfig (window, and per-step widths that must be the features')."""

    def __init__(self, spec, table, config, min_observed: float, features: FeatureSpec, floored: bool = True):
        domain = getattr(config, "domain", "time")
        L, H = config.context_length, config.horizon
        T = table.n_steps
        if T < L + H:
            raise DataError(f"{table.source}: {T} rows, but one window needs context {L} + horizon {H} = {L + H}")
        for key, want in (("context_features", features.context_width), ("horizon_features", features.horizon_width)):
            if getattr(config, key) != want:
                raise FeatureError(f"model {key} is {getattr(config, key)} but the features make {want} per step")
        self.bounds = split_bounds(spec, T)
        rows = row_features(features, table.timestamps, table.covariates, rows=T)
        a, b = self.bounds["train"]
        empty = [n for n, e in zip(table.names, np.isnan(table.values[a:b]).all(axis=0)) if e]
        if empty:
            raise DataError(f"{table.source}: column {empty[0]!r} has no observed value in the train part (rows "
                            f"{a}..{b - 1}); leave it out of --columns")
        # floored: each series' scale floor from its training rows (dil.runtime.inputs.scaling); False
        # for a run resumed from before the floor existed.
        self.floors = series_floor(table.values[a:b]) if floored else None
        self.train = WindowSet(table.values, L, H, *self.bounds["train"], min_observed=min_observed, features=rows,
                               domain=domain, floors=self.floors)
        self.val = WindowSet(table.values, L, H, *self.bounds["val"], min_observed=min_observed, features=rows,
                             domain=domain, floors=self.floors)
        for part, ws in (("train", self.train), ("val", self.val)):
            if len(ws) == 0:
                a, b = self.bounds[part]
                raise DataError(
                    f"{table.source}: the {part} part (rows {a}..{b - 1}) holds no usable window of "
                    f"context {L} + horizon {H}; use a shorter --context-length/--horizon or more rows"
                )
