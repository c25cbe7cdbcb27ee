"""The evaluation protocol (`docs/model.md` section 6): rolling test windows, model vs baselines.

Every series x every test origin (from dil.data.windows.test_origins) is one window: a context of
L steps before the origin and the H target steps from it. Windows whose context or target has no
observed value are skipped (nothing to condition on / nothing to score). The forecaster runs on the
remaining windows in batches; the model and every baseline are scored on exactly those windows.

The forecaster is a parameter, so the protocol does not depend on the runtime:

    forecast_fn(contexts: float64 [B, L] (NaN = missing), ids: list[str] of B window ids[, features])
        -> samples float [B, N, H] on the original scale

`ids` ("<series>@<origin row>") let a seeded forecaster draw each window's noise from its own
stream, so a window's forecast does not depend on the batch it lands in. When the evaluation has
features (run_evaluation's `features`, the model's FeatureSpec with time features or covariates),
the third argument is the batch's dil.runtime.inputs.window_features.WindowFeatures, taken from the
table's rows (docs/model.md section 6.1: the horizon's known covariates are the table's, "known
future"); otherwise the function is called with two arguments, so a forecaster that uses no
features (seasonal naive, an oracle) needs none.

A run is a chain of steps: protocol_windows (the windows and the seasonal naive), stream_forecasts
per forecaster (each batch of samples reduced on arrival by metrics.StreamedScores, so memory does
not grow with the number of windows x samples), then the scores and protocol_report.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field, replace

import numpy as np

from dil.evaluate import metrics as M
from dil.runtime.outputs.quantiles import QUANTILE_LEVELS
from dil.runtime.inputs.window_features import table_features

# The ProbTS code the probts protocol follows (docs/probts.md): the repository and the commit read.
PROBTS_SOURCE = "github.com/microsoft/ProbTS @ 66f826cb39cfecb7920f0f953fc8743b6c28229b (2025-05-20)"
# Central-interval widths of the calibration curve (coverage vs nominal level).
CALIBRATION_WIDTHS = np.round(np.arange(1, 10) * 0.1, 1)
# Windows per forecaster call. Measured on metro-traffic's 437 test windows (shipped model, plain 10
# steps, 2 threads, quiet machine): 1 -> 32.6 s, 200 MB peak RSS; 4 -> 24.4 s, 239 MB; 32 -> 24.7 s,
# 497 MB. Past a few windows a call is no faster per window, only bigger.
DEFAULT_BATCH_SIZE = 4
ALL = "all windows"  # the scope of StreamedScores holding every forecast window
PROTOCOLS = ("dil", "probts")  # EvalOptions.protocol: dil-eval's own, ProbTS's long-term setting


class EvaluationError(ValueError):
    """The evaluation cannot run (no test window, bad forecaster output, ...). One line."""


@dataclass(frozen=True)
class EvalOptions:
    """The protocol settings of one evaluation.

    n_windows: evenly spaced test origins (None: all). samples: N the forecaster draws per window
    (checked). steps, seed: recorded in the protocol (the forecaster applies them). season:
    seasonal-naive lag override (None: the dataset's). batch_size: windows per forecaster call; one
    batch of samples [batch_size, N, H] is held at a time. progress: tqdm's bar when stderr is a
    terminal, else one line per batch on stderr (logs, pipes, CI); False: silent.
    protocol: "dil" (docs/model.md section 6) or "probts": ProbTS's long-term test windows of a
    bundled dataset (horizon 96, origins from the first row of ProbTS's test part at stride 96, the
    model's own context before each) and ProbTS's per-window metrics besides dil's (docs/probts.md).
    """

    n_windows: int | None = None
    samples: int = 100
    steps: int | None = None
    seed: int = 0
    season: int | None = None
    batch_size: int = DEFAULT_BATCH_SIZE
    progress: bool = True
    protocol: str = "dil"

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise EvaluationError(f"protocol must be one of {', '.join(PROTOCOLS)}, got {self.protocol!r}")
        for name in ("samples", "batch_size"):
            if int(getattr(self, name)) < 1:
                raise EvaluationError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.n_windows is not None and int(self.n_windows) < 1:
            raise EvaluationError(f"n_windows must be >= 1, got {self.n_windows}")


@dataclass
class EvalWindows:
    """The scored windows of one evaluation, origin-major (O origins x C series).

    origins: int [O], row index of the first target step. names: the C series names.
    contexts: float64 [O, C, L]; targets: float64 [O, C, H] (NaN = missing).
    valid: bool [O, C], the windows that were forecast and scored.
    baseline: float64 [O, C, H] seasonal-naive forecast. timestamps: datetime64 [O] or None.
    features: the windows' time features and covariates per origin (WindowFeatures with G = O:
    context_known [O, L, Fk], context_past [O, L, Fp], horizon_known [O, H, Fk]; the same for
    every series of an origin), None without features.
    forecast: the model's per-window summaries (quantiles [Q', O, C, H], median, ...; NaN where not
    valid), metrics.StreamedScores; None before the forecasts.
    """

    origins: np.ndarray
    names: list
    contexts: np.ndarray
    targets: np.ndarray
    valid: np.ndarray
    baseline: np.ndarray
    timestamps: np.ndarray | None = None
    forecast: M.StreamedScores | None = None
    features: object = None

    @property
    def target_mask(self) -> np.ndarray:
        """bool [O, C, H]: the target steps that count (observed, in a scored window)."""
        return self.valid[..., None] & ~np.isnan(self.targets)


@dataclass
class Evaluation:
    """`report`: the JSON-ready result of `evaluate`; `windows`: the arrays behind it (for plots);
    `notes`: one-line remarks for the user (e.g. rows a user file's reading repaired); `stats`: the
    SamplerStats of all the model's forecasts (None when not collected)."""

    report: dict
    windows: EvalWindows
    notes: list = field(default_factory=list)
    stats: object = None


def gather(values: np.ndarray, origins: np.ndarray, before: int, after: int) -> np.ndarray:
    """Rows [o - before, o + after) of every column for each origin: float64 [O, C, before + after].

    Rows outside the table are NaN (a lookback may reach before row 0).
    """
    idx = np.asarray(origins, dtype=np.int64)[:, None] + np.arange(-before, after)
    inside = (idx >= 0) & (idx < values.shape[0])
    out = values[np.clip(idx, 0, values.shape[0] - 1)]  # [O, S, C]
    out = np.where(inside[..., None], out, np.nan)
    return np.ascontiguousarray(np.moveaxis(out, 2, 1), dtype=np.float64)


def window_ids(names, origins) -> list[list[str]]:
    """Stable per-window ids "<series>@<origin row>", [O][C]."""
    return [[f"{n}@{int(o)}" for n in names] for o in origins]


class Progress:
    """Progress of `total` windows: tqdm's bar when stderr is a terminal; otherwise one line per
    update on stderr, so that a piped or logged run still shows how far it is."""

    def __init__(self, total: int, desc: str, enabled: bool = True):
        self.total, self.desc, self.done, self.start = total, desc, 0, time.perf_counter()
        stream = sys.stderr
        self.lines = enabled and stream is not None and not stream.isatty()
        self.bar = None
        if enabled and not self.lines:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, unit="window", desc=desc, leave=False, file=stream)

    def update(self, n: int) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
        elif self.lines:
            elapsed = time.perf_counter() - self.start
            left = elapsed * (self.total - self.done) / self.done if self.done else 0.0
            print(f"{self.desc}: {self.done}/{self.total} windows ({100 * self.done / self.total:.0f}%), "
                  f"{elapsed:.0f} s elapsed, ~{left:.0f} s left", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _checked(samples, expected: tuple, first_id: str, last_id: str) -> np.ndarray:
    s = np.asarray(samples, dtype=np.float64)
    if s.shape != expected:
        raise EvaluationError(f"forecaster returned shape {s.shape}, expected {expected} [windows, samples, horizon]")
    if not np.all(np.isfinite(s)):
        raise EvaluationError(f"forecaster returned non-finite samples for window {first_id} .. {last_id}")
    return s


def stream_forecasts(fn, w: EvalWindows, mask: np.ndarray, options: EvalOptions, scopes: dict | None = None,
                     desc: str = "forecast") -> M.StreamedScores:
    """Forecast the windows where mask [O, C] is True, options.batch_size at a time in origin-major
    order, each batch reduced into a metrics.StreamedScores on arrival (its samples are then dropped).

    scopes: {key: bool [O, C]} window sets to score besides `mask` itself (scope ALL).
    """
    horizon = w.targets.shape[-1]
    pairs = np.argwhere(mask)
    ids = np.array(window_ids(w.names, w.origins), dtype=object)
    scores = M.StreamedScores(w.targets, options.samples, CALIBRATION_WIDTHS, {ALL: mask, **(scopes or {})})
    bar = Progress(len(pairs), desc, options.progress)
    try:
        for a in range(0, len(pairs), options.batch_size):
            o, c = pairs[a : a + options.batch_size].T
            batch_ids = [str(i) for i in ids[o, c]]
            feats = () if w.features is None else (w.features.take(o),)
            s = fn(w.contexts[o, c], batch_ids, *feats)
            scores.add(o, c, _checked(s, (len(o), options.samples, horizon), batch_ids[0], batch_ids[-1]))
            bar.update(len(o))
    finally:
        bar.close()
    return scores


def score_point(w: EvalWindows, point: np.ndarray) -> dict:
    """Metrics of a point forecast [O, C, H] on the same windows. Its "crps" is the weighted
    quantile loss of the point repeated at every level (= normalised MAE); coverage is undefined."""
    y, m = w.targets, w.target_mask
    one = point[..., None, :]  # a point forecast is a single sample
    return {
        "crps": M.crps_quantile(y, one, mask=m),
        "crps_sample": M.crps_sample(y, one, mask=m),
        "crps_sum": M.crps_sum(y, one, mask=m),
        "mae": M.mae(y, point, mask=m),
        "mse": M.mse(y, point, mask=m),
    }


def score_samples(w: EvalWindows, mask: np.ndarray, samples: np.ndarray) -> dict:
    """The model metrics of samples float [W, N, H] of the W windows where mask [O, C] is True
    (origin-major order), on those windows."""
    pairs = np.argwhere(mask)
    samples = np.asarray(samples, dtype=np.float64)
    if samples.ndim != 3 or samples.shape[0] != len(pairs):
        raise EvaluationError(
            f"samples {samples.shape} do not match the {len(pairs)} windows [windows, samples, horizon]"
        )
    scores = M.StreamedScores(w.targets, samples.shape[1], CALIBRATION_WIDTHS, {ALL: mask})
    scores.add(pairs[:, 0], pairs[:, 1], samples)
    return scores.scores(ALL)


def calibration(scores: M.StreamedScores, scope=ALL, widths=CALIBRATION_WIDTHS) -> dict:
    """Coverage of central intervals vs their nominal width: {"nominal": [..], "observed": [..]}."""
    return {"nominal": [float(c) for c in widths], "observed": scores.coverages(scope, widths)}


def resolve_season(spec, season=None) -> int:
    """The seasonal-naive lag: `season` if given, else the dataset's (bundled: documented per dataset;
    user file: from its row frequency, hourly 168, 10-min 144, daily 7, business-daily 5)."""
    if season is not None:
        lag = int(season)
    elif getattr(spec, "bundled", True) or spec.season > 1:
        # A user file whose frequency has no known season gets season 1 from dil.data: ask instead.
        lag = int(spec.season)
    else:
        raise EvaluationError(
            f"cannot infer the seasonal-naive lag for {spec.name} (row frequency {spec.freq or 'unknown'}): pass --season"
        )
    if lag < 1:
        raise EvaluationError(f"season must be >= 1, got {lag}")
    return lag


def _iso(ts) -> str | None:
    return None if ts is None else str(np.datetime_as_string(ts, unit="s"))


def protocol_windows(table, spec, context: int, horizon: int, n_windows: int | None = None,
                     season: int | None = None, features=None, part: str = "test", say=None,
                     origins=None) -> EvalWindows:
    """The scored test windows of the protocol, before any forecast.

    table: dil.data SeriesTable (values [T, C]; timestamps and covariates where `features` needs
    them); spec: its DatasetSpec (split, season). context, horizon: the forecaster's L and H.
    n_windows: evenly spaced test origins (None: all). features: the model's FeatureSpec (None or
    one without features: none), whose row features (dil.runtime.inputs.features.row_features of the
    table) give each window's WindowFeatures. Windows whose context or target has no observed
    value are not valid (skipped); `baseline` is the seasonal naive from all the rows before each
    origin (seasonal_naive_at), the same whatever the context. part: the split part whose windows
    these are ("val": the validation windows, dil.evaluate.frontier's). origins: the origins to use
    instead of the protocol's (int [O], rows of the table; n_windows and part then unused).
    """
    from dil.data.windows import split_origins

    lag = resolve_season(spec, season)
    values = np.asarray(table.values, dtype=np.float64)
    t = values.shape[0]
    if origins is None:
        origins = split_origins(spec, t, context, horizon, n_windows, part, say=say)
    origins = np.asarray(origins, dtype=np.int64)
    if origins.size == 0:
        raise EvaluationError(
            f"{spec.name}: no {part} window of context {context} + horizon {horizon} fits in {t} rows"
        )
    ctx = gather(values, origins, context, 0)
    tgt = gather(values, origins, 0, horizon)
    valid = ~np.all(np.isnan(ctx), axis=-1) & ~np.all(np.isnan(tgt), axis=-1)
    if not valid.any():
        raise EvaluationError(f"{spec.name}: every {part} window has an all-missing context or target")
    return EvalWindows(
        origins=origins,
        names=list(table.names),
        contexts=ctx,
        targets=tgt,
        valid=valid,
        baseline=seasonal_naive_at(values, origins, lag, horizon),
        timestamps=None if table.timestamps is None else np.asarray(table.timestamps)[origins],
        features=table_features(table, features, origins, context, horizon),
    )


def seasonal_naive_at(values: np.ndarray, origins: np.ndarray, lag: int, horizon: int) -> np.ndarray:
    """metrics.seasonal_naive of every origin with the whole table before it as history: float64
    [O, C, horizon] from values float [T, C] (NaN = missing) and origins int [O].

    The history is never the model's context, so a window's baseline is the same whatever model is
    evaluated (a missing lag value takes the same phase as many seasons back as it takes). Runs in
    O(T C) memory instead of gathering O x T histories.
    """
    t, c = values.shape
    origins = np.asarray(origins, dtype=np.int64)
    seen = np.where(np.isnan(values), -1, np.arange(t)[:, None])  # [T, C] the row where observed
    k = -(-t // lag)
    phase = np.concatenate([seen, np.full((k * lag - t, c), -1)]).reshape(k, lag, c)
    by_phase = np.maximum.accumulate(phase, axis=0).reshape(k * lag, c)  # latest observed row r - j*lag
    latest = np.maximum.accumulate(seen, axis=0)  # latest observed row <= r
    src = origins[:, None] - lag + np.arange(horizon) % lag  # [O, H], < origin
    row = np.where((src >= 0)[..., None], by_phase[np.maximum(src, 0)], -1)  # [O, H, C]
    last = np.where((origins > 0)[:, None], latest[np.maximum(origins - 1, 0)], -1)  # [O, C]
    row = np.where(row >= 0, row, last[:, None, :])
    out = np.where(row >= 0, values[np.maximum(row, 0), np.arange(c)], np.nan)
    return np.ascontiguousarray(np.moveaxis(out, 2, 1), dtype=np.float64)


def subset(valid: np.ndarray, count: int) -> np.ndarray:
    """bool [O, C]: `count` of the valid windows, evenly spread over the test period (first and last
    included; all of them when count >= their number)."""
    pairs = np.argwhere(valid)
    take = np.unique(np.round(np.linspace(0, len(pairs) - 1, min(int(count), len(pairs)))).astype(np.int64))
    out = np.zeros_like(valid, dtype=bool)
    out[tuple(pairs[take].T)] = True
    return out


def score_subset(w: EvalWindows, mask: np.ndarray, own: M.StreamedScores, model: M.StreamedScores, scope) -> dict:
    """A baseline run on a subset of the windows (mask [O, C]; `own`: its scores, scope ALL): its
    metrics, and those of the model (`model`, scope `scope` = the same mask) and of seasonal naive
    on exactly the same windows (a like-for-like comparison)."""
    return {
        **own.scores(ALL),
        "series_windows": int(mask.sum()),
        "window_ids": [str(i) for i in np.array(window_ids(w.names, w.origins), dtype=object)[mask]],
        "same_windows": {
            "model": model.scores(scope),
            "seasonal_naive": score_point(replace(w, valid=mask), w.baseline),
        },
    }


def protocol_report(table, spec, w: EvalWindows, context: int, horizon: int, options: EvalOptions,
                    probts: dict | None = None) -> dict:
    """report["protocol"]: what was evaluated, how (dataset, windows, split, samples, seed, ...).
    probts: the info of dil.data.windows.probts_origins under the probts protocol (its split and
    test rows replace the dataset's; "protocol" and "probts" say so)."""
    from dil.data.windows import split_bounds

    origins = w.origins
    if probts is not None:
        test_a, test_b = probts["test_rows"]
        rule = probts["rule"]
    else:
        test_a, test_b = (int(x) for x in split_bounds(spec, np.asarray(table.values).shape[0])["test"])
        splits = getattr(spec, "splits", None)
        rule = splits.describe() if splits is not None else None
    report = {
        "dataset": spec.name,
        "source": getattr(table, "source", ""),
        "sha256": getattr(table, "sha256", ""),
        "series": len(table.names),
        "context": int(context),
        "horizon": int(horizon),
        "windows": int(origins.size),
        "series_windows": int(w.valid.sum()),
        "skipped_windows": int((~w.valid).sum()),
        "samples": int(options.samples),
        "steps": None if options.steps is None else int(options.steps),
        "seed": int(options.seed),
        "quantile_levels": [float(q) for q in QUANTILE_LEVELS],
        "split": {
            "rule": rule,
            "test_rows": [test_a, test_b],
            "first_origin": int(origins[0]),
            "last_origin": int(origins[-1]),
            "first_origin_time": None if w.timestamps is None else _iso(w.timestamps[0]),
            "last_origin_time": None if w.timestamps is None else _iso(w.timestamps[-1]),
            # the protocol's stride (one horizon) and, with --windows, the rows between the kept origins
            "stride": int(horizon),
            "kept_every": int(origins[1] - origins[0]) if origins.size > 1 else None,
        },
        "season": resolve_season(spec, options.season),
    }
    if probts is not None:
        report["protocol"] = "probts"
        report["probts"] = probts
    return report


def run_evaluation(forecast_fn, table, spec, context: int, horizon: int, options: EvalOptions = EvalOptions(),
                   baselines: dict | None = None, subset_baselines: dict | None = None, features=None) -> Evaluation:
    """Forecast every scored test window and score the model and the seasonal-naive baseline.

    table: dil.data SeriesTable (values [T, C]); spec: its DatasetSpec (split, season).
    context, horizon: the forecaster's L and H. options: EvalOptions (windows, samples, seed, ...).
    baselines: extra probabilistic baselines {name: forecast_fn} (same protocol, same windows, N
    samples), scored like the model under report["baselines"][name].
    subset_baselines: costly baselines {name: (forecast_fn, count)} run on `count` evenly spaced
    scored windows only; report["baselines"][name] holds their metrics plus "same_windows": the
    model's and seasonal naive's metrics on those windows (see score_subset).
    features: the model's FeatureSpec (time features, covariates; None: none): every forecast_fn
    then gets each batch's WindowFeatures as its third argument (see the module docstring).
    options.protocol "probts": ProbTS's test windows and metrics (probts_setting; docs/probts.md):
    report["model"]["probts"] and report["baselines"]["seasonal_naive"]["probts"] hold the latter.
    """
    origins = probts = None
    if options.protocol == "probts":
        origins, probts = probts_setting(table, spec, horizon, options.n_windows)
    w = protocol_windows(table, spec, context, horizon, options.n_windows, options.season, features, origins=origins)
    masks = {name: subset(w.valid, count) for name, (_, count) in (subset_baselines or {}).items()}
    w.forecast = stream_forecasts(forecast_fn, w, w.valid, options, scopes=masks)
    extra = {name: stream_forecasts(fn, w, w.valid, options, desc=name).scores(ALL)
             for name, fn in (baselines or {}).items()}
    for name, (fn, _) in (subset_baselines or {}).items():
        own = stream_forecasts(fn, w, masks[name], options, desc=name)
        extra[name] = score_subset(w, masks[name], own, w.forecast, name)
    report = {
        "model": w.forecast.scores(ALL),
        "baselines": {"seasonal_naive": score_point(w, w.baseline), **extra},
        "calibration": calibration(w.forecast),
        "protocol": protocol_report(table, spec, w, context, horizon, options, probts),
    }
    if probts is not None:
        from dil.data.registry import PROBTS_BATCH_SIZES

        report["model"]["probts"] = w.forecast.probts(ALL, PROBTS_BATCH_SIZES)
        report["baselines"]["seasonal_naive"]["probts"] = M.probts_crps(
            w.targets, w.baseline[:, :, None, :], mask=w.target_mask, batch_sizes=PROBTS_BATCH_SIZES)
    return Evaluation(report=finite_or_none(report), windows=w)


def probts_setting(table, spec, horizon: int, n_windows: int | None = None) -> tuple[np.ndarray, dict]:
    """The test origins (rows of `table`) and the protocol record of ProbTS's long-term setting on a
    bundled dataset (dil.data.windows.probts_origins). The forecaster's horizon must be ProbTS's (96);
    its context may be any (a longer one reaches further back from ProbTS's origins). Every series of
    the dataset is scored: a ProbTS window is one origin with all of them. EvaluationError otherwise."""
    from dil.data.registry import PROBTS, PROBTS_CONTEXT, PROBTS_HORIZON, PROBTS_STRIDE, get_spec
    from dil.data.windows import probts_origins

    if spec.name not in PROBTS or not getattr(spec, "bundled", True):
        raise EvaluationError(f"the probts protocol covers the bundled datasets {', '.join(PROBTS)}, not {spec.name}")
    if int(horizon) != PROBTS_HORIZON:
        raise EvaluationError(f"the probts protocol forecasts {PROBTS_HORIZON} steps; this model's horizon is {horizon}")
    if spec.columns != get_spec(spec.name).columns:  # resolve() records a --columns choice there
        raise EvaluationError(f"the probts protocol scores every series of {spec.name} at once: drop --columns")
    origins, info = probts_origins(spec, table, n_windows)
    info = {
        **info,
        "context": PROBTS_CONTEXT,
        "horizon": PROBTS_HORIZON,
        "stride": PROBTS_STRIDE,
        "quantile_levels": [float(q) for q in QUANTILE_LEVELS],
        "metrics": "crps, nmae: per-window normalisation (ProbTS since 2024-06-21); crps_pooled, nmae_pooled: "
                   "pooled over batches of B windows, batch-size weighted (ProbTS's first evaluator, 2024-06-17)",
        "source": PROBTS_SOURCE,
    }
    return origins, info


def finite_or_none(obj):
    """NaN (a metric with no observed step, e.g. CRPS-sum when no step has every series) -> None,
    so that the report is strict JSON."""
    if isinstance(obj, dict):
        return {k: finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [finite_or_none(v) for v in obj]
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj


def evaluate(forecast_fn, table, spec, context, horizon, baselines=None, subset_baselines=None, features=None,
             **options) -> dict:
    """The JSON-ready report of run_evaluation, the EvalOptions given by name (samples=50, ...):
    {"model": {crps, crps_sample, crps_sum, mae, mse, coverage_50, coverage_90},
     "baselines": {"seasonal_naive": {crps, crps_sample, crps_sum, mae, mse}},
     "calibration": {nominal, observed}, "protocol": {...}}.
    CRPS figures are normalised by sum |y| (GluonTS); mae/mse are in the data's units."""
    return run_evaluation(forecast_fn, table, spec, context, horizon, EvalOptions(**options), baselines,
                          subset_baselines, features).report
