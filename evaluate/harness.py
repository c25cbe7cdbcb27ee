"""The evaluation protocol (DESIGN section 11): rolling test windows, model vs baselines.

Every series x every test origin (from dil.data.windows.test_origins) is one window: a context of
L steps before the origin and the H target steps from it. Windows whose context or target has no
observed value are skipped (nothing to condition on / nothing to score). The forecaster runs on the
remaining windows in batches; the model and every baseline are scored on exactly those windows.

The forecaster is a parameter, so the protocol does not depend on the runtime:

    forecast_fn(contexts: float64 [B, L] (NaN = missing), ids: list[str] of B window ids)
        -> samples float [B, N, H] on the original scale

`ids` ("<series>@<origin row>") let a seeded forecaster draw each window's noise from its own
stream, so a window's forecast does not depend on the batch it lands in.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
from tqdm.auto import tqdm

from dil.evaluate import metrics as M
from dil.runtime.quantiles import QUANTILE_LEVELS

# Central-interval widths of the calibration curve (coverage vs nominal level).
CALIBRATION_WIDTHS = np.round(np.arange(1, 10) * 0.1, 1)
DEFAULT_BATCH_SIZE = 32


class EvaluationError(ValueError):
    """The evaluation cannot run (no test window, bad forecaster output, ...). One line."""


@dataclass
class EvalWindows:
    """The scored windows of one evaluation, origin-major (O origins x C series).

    origins: int [O], row index of the first target step. names: the C series names.
    contexts: float64 [O, C, L]; targets: float64 [O, C, H] (NaN = missing).
    valid: bool [O, C], the windows that were forecast and scored.
    samples: float64 [O, C, N, H] model samples (NaN where not valid).
    baseline: float64 [O, C, H] seasonal-naive forecast. timestamps: datetime64 [O] or None.
    """

    origins: np.ndarray
    names: list
    contexts: np.ndarray
    targets: np.ndarray
    valid: np.ndarray
    samples: np.ndarray
    baseline: np.ndarray
    timestamps: np.ndarray | None = None

    @property
    def target_mask(self) -> np.ndarray:
        """bool [O, C, H]: the target steps that count (observed, in a scored window)."""
        return self.valid[..., None] & ~np.isnan(self.targets)


@dataclass
class Evaluation:
    """`report`: the JSON-ready result of `evaluate`; `windows`: the arrays behind it (for plots);
    `notes`: one-line remarks for the user (e.g. a baseline that was skipped, and why)."""

    report: dict
    windows: EvalWindows
    notes: list = field(default_factory=list)


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


def run_forecasts(forecast_fn, contexts, ids, samples, horizon, batch_size=DEFAULT_BATCH_SIZE, progress=True):
    """Call forecast_fn on `contexts` [W, L] in batches; returns float64 [W, samples, horizon]."""
    w = contexts.shape[0]
    out = np.empty((w, samples, horizon), dtype=np.float64)
    with tqdm(total=w, unit="window", desc="forecast", disable=None if progress else True, leave=False) as bar:
        for a in range(0, w, batch_size):
            b = min(a + batch_size, w)
            s = np.asarray(forecast_fn(contexts[a:b], ids[a:b]), dtype=np.float64)
            if s.shape != (b - a, samples, horizon):
                raise EvaluationError(
                    f"forecaster returned shape {s.shape}, expected {(b - a, samples, horizon)} [windows, samples, horizon]"
                )
            if not np.all(np.isfinite(s)):
                raise EvaluationError(f"forecaster returned non-finite samples for window {ids[a]} .. {ids[b - 1]}")
            out[a:b] = s
            bar.update(b - a)
    return out


def score_model(w: EvalWindows) -> dict:
    """All model metrics on the scored windows (see dil.evaluate.metrics)."""
    y, s, m = w.targets, w.samples, w.target_mask
    median = M.median_forecast(s)
    cov50, cov90 = M.coverages(y, s, (0.5, 0.9), mask=m)
    return {
        "crps": M.crps_quantile(y, s, mask=m),
        "crps_sample": M.crps_sample(y, s, mask=m),
        "crps_sum": M.crps_sum(y, s, mask=m),
        "mae": M.mae(y, median, mask=m),
        "mse": M.mse(y, median, mask=m),
        "coverage_50": cov50,
        "coverage_90": cov90,
    }


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


def calibration(w: EvalWindows, widths=CALIBRATION_WIDTHS) -> dict:
    """Coverage of central intervals vs their nominal width: {"nominal": [..], "observed": [..]}."""
    observed = M.coverages(w.targets, w.samples, widths, mask=w.target_mask)
    return {"nominal": [float(c) for c in widths], "observed": observed}


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
                     season: int | None = None, samples: int = 0) -> EvalWindows:
    """The scored test windows of the protocol, before any forecast.

    table: dil.data SeriesTable (values [T, C]); spec: its DatasetSpec (split, season).
    context, horizon: the forecaster's L and H. n_windows: evenly spaced test origins (None: all).
    Windows whose context or target has no observed value are not valid (skipped). `samples` of
    the result is NaN [O, C, samples, H] (filled by the caller); `baseline` is the seasonal naive.
    """
    from dil.data.windows import test_origins

    lag = resolve_season(spec, season)
    values = np.asarray(table.values, dtype=np.float64)
    t = values.shape[0]
    origins = np.asarray(test_origins(spec, t, context, horizon, n_windows), dtype=np.int64)
    if origins.size == 0:
        raise EvaluationError(
            f"{spec.name}: no test window of context {context} + horizon {horizon} fits in {t} rows"
        )
    lookback = max(context, lag)  # seasonal naive may look further back than the model's context
    hist = gather(values, origins, lookback, 0)
    ctx = hist[..., lookback - context :]
    tgt = gather(values, origins, 0, horizon)
    valid = ~np.all(np.isnan(ctx), axis=-1) & ~np.all(np.isnan(tgt), axis=-1)
    if not valid.any():
        raise EvaluationError(f"{spec.name}: every test window has an all-missing context or target")
    return EvalWindows(
        origins=origins,
        names=list(table.names),
        contexts=ctx,
        targets=tgt,
        valid=valid,
        samples=np.full(valid.shape + (samples, horizon), np.nan),
        baseline=M.seasonal_naive(hist, lag, horizon),
        timestamps=None if table.timestamps is None else np.asarray(table.timestamps)[origins],
    )


def subset(valid: np.ndarray, count: int) -> np.ndarray:
    """bool [O, C]: `count` of the valid windows, evenly spread over the test period (first and last
    included; all of them when count >= their number)."""
    pairs = np.argwhere(valid)
    take = np.unique(np.round(np.linspace(0, len(pairs) - 1, min(int(count), len(pairs)))).astype(np.int64))
    out = np.zeros_like(valid, dtype=bool)
    out[tuple(pairs[take].T)] = True
    return out


def forecast_windows(fn, w: EvalWindows, mask: np.ndarray, samples: int, batch_size: int = DEFAULT_BATCH_SIZE,
                     progress: bool = True) -> np.ndarray:
    """Samples float64 [O, C, samples, H] of forecaster `fn` on the windows where mask [O, C] is
    True (NaN elsewhere), each window keyed by its id."""
    horizon = w.targets.shape[-1]
    ids = list(np.array(window_ids(w.names, w.origins), dtype=object)[mask])
    out = np.full(mask.shape + (samples, horizon), np.nan)
    out[mask] = run_forecasts(fn, w.contexts[mask], ids, samples, horizon, batch_size, progress)
    return out


def score_subset(w: EvalWindows, mask: np.ndarray, samples: np.ndarray) -> dict:
    """A baseline run on a subset of the windows (mask [O, C]): its metrics, and those of the model
    and of seasonal naive on exactly the same windows (a like-for-like comparison)."""
    on = replace(w, valid=mask)
    return {
        **score_model(replace(on, samples=samples)),
        "series_windows": int(mask.sum()),
        "window_ids": [str(i) for i in np.array(window_ids(w.names, w.origins), dtype=object)[mask]],
        "same_windows": {"model": score_model(on), "seasonal_naive": score_point(on, w.baseline)},
    }


def run_evaluation(
    forecast_fn,
    table,
    spec,
    context: int,
    horizon: int,
    n_windows: int | None = None,
    samples: int = 100,
    steps: int | None = None,
    seed: int = 0,
    season: int | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: bool = True,
    baselines: dict | None = None,
    subset_baselines: dict | None = None,
) -> Evaluation:
    """Forecast every scored test window and score the model and the seasonal-naive baseline.

    table: dil.data SeriesTable (values [T, C]); spec: its DatasetSpec (split, season).
    context, horizon: the forecaster's L and H. n_windows: evenly spaced test origins (None: all).
    samples: N the forecaster draws per window (checked). steps, seed: recorded in the protocol
    (the forecaster applies them). season: seasonal-naive lag override.
    baselines: extra probabilistic baselines {name: forecast_fn} (same protocol, same windows, N
    samples), scored like the model under report["baselines"][name].
    subset_baselines: costly baselines {name: (forecast_fn, count)} run on `count` evenly spaced
    scored windows only; report["baselines"][name] holds their metrics plus "same_windows": the
    model's and seasonal naive's metrics on those windows (see score_subset).
    """
    from dil.data.windows import split_bounds

    w = protocol_windows(table, spec, context, horizon, n_windows, season, samples)
    lag = resolve_season(spec, season)
    origins, valid = w.origins, w.valid
    w.samples = forecast_windows(forecast_fn, w, valid, samples, batch_size, progress)
    extra = {name: score_model(replace(w, samples=forecast_windows(fn, w, valid, samples, batch_size, progress)))
             for name, fn in (baselines or {}).items()}
    for name, (fn, count) in (subset_baselines or {}).items():
        mask = subset(valid, count)
        extra[name] = score_subset(w, mask, forecast_windows(fn, w, mask, samples, batch_size, progress))
    t = np.asarray(table.values).shape[0]
    bounds = split_bounds(spec, t)
    test_a, test_b = (int(x) for x in bounds["test"])
    first_ts = None if w.timestamps is None else _iso(w.timestamps[0])
    last_ts = None if w.timestamps is None else _iso(w.timestamps[-1])
    splits = getattr(spec, "splits", None)
    report = {
        "model": score_model(w),
        "baselines": {"seasonal_naive": score_point(w, w.baseline), **extra},
        "calibration": calibration(w),
        "protocol": {
            "dataset": spec.name,
            "source": getattr(table, "source", ""),
            "sha256": getattr(table, "sha256", ""),
            "series": len(table.names),
            "context": int(context),
            "horizon": int(horizon),
            "windows": int(origins.size),
            "series_windows": int(valid.sum()),
            "skipped_windows": int((~valid).sum()),
            "samples": int(samples),
            "steps": None if steps is None else int(steps),
            "seed": int(seed),
            "quantile_levels": [float(q) for q in QUANTILE_LEVELS],
            "split": {
                "rule": splits.describe() if splits is not None else None,
                "test_rows": [test_a, test_b],
                "first_origin": int(origins[0]),
                "last_origin": int(origins[-1]),
                "first_origin_time": first_ts,
                "last_origin_time": last_ts,
                "stride": int(origins[1] - origins[0]) if origins.size > 1 else None,
            },
            "season": lag,
        },
    }
    return Evaluation(report=finite_or_none(report), windows=w)


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


def evaluate(forecast_fn, table, spec, context, horizon, n_windows=None, samples=100, **kw) -> dict:
    """The JSON-ready report of run_evaluation (same arguments):
    {"model": {crps, crps_sample, crps_sum, mae, mse, coverage_50, coverage_90},
     "baselines": {"seasonal_naive": {crps, crps_sample, crps_sum, mae, mse}},
     "calibration": {nominal, observed}, "protocol": {...}}.
    CRPS figures are normalised by sum |y| (GluonTS); mae/mse are in the data's units."""
    return run_evaluation(forecast_fn, table, spec, context, horizon, n_windows, samples, **kw).report
