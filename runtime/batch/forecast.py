"""Forecasts of a long table's series (docs/scale-out.md): the one function that both the
single-process `dil-run --id-column` and each actor of `dil-run --ray` (dil.runtime.batch.ray_job) call.

A series' forecast depends on its history, the seed and its id alone (its random streams are keyed
by the id, dil.runtime.sampling.rng), and the Forecaster's result for a series does not depend on which
other series share its batch, so whichever process forecasts it, in whatever group, gets the same
numbers, bit for bit. `forecast_histories` builds exactly what `Forecaster.predict` builds for a
wide table's column (the last context_length values, the window's time features and covariates)
and calls `Forecaster.predict_windows`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from dil.runtime.forecaster import ForecastError
from dil.runtime.outputs.quantiles import quantile_column
from dil.runtime.inputs.window_features import FeatureInputError, WindowFeatures, future_dates, history_features

# Series per predict_windows call: bounds the samples held at once (8 * N * H bytes per series).
CHUNK_SERIES = 512


@dataclass(frozen=True)
class RunSettings:
    """What a forecast of many series is asked for (the dil-run options): samples per series,
    the seed, the SamplerConfig, series per engine batch, and whether series with no observed
    value in their context are skipped (True) or an error (False)."""

    num_samples: int
    seed: int
    config: object
    batch_series: int = 16
    skip_bad_series: bool = False


def _window(forecaster, h, skip: bool):
    """(context float64 [L], WindowFeatures or None, future datetime64[ns] [H] or None) of one
    SeriesHistory, or None for a series skipped for an empty context. A model with known
    covariates takes the rows after the last observed value as the future steps (their covariates
    are the forecast steps'), as dil-run does for a wide table."""
    spec, L, H = forecaster.features, forecaster.context_length, forecaster.horizon
    values, times = h.values, h.timestamps
    T = len(values)
    if spec.known_covariates:
        observed = np.flatnonzero(~np.isnan(values))
        T = int(observed[-1]) + 1 if observed.size else T
    if T < L:
        raise ForecastError(f"series {h.id!r} has {T} rows, the model needs at least {L} (context_length)")
    context = values[T - L:T]
    if np.isnan(context).all():
        if skip:
            return None
        raise ForecastError(f"series {h.id!r} has no observed value in its last {L} rows (the model's context); "
                            "--skip-bad-series forecasts the others")
    try:
        future = future_dates(spec, times[:T], h.freq, H)
        feats = history_features(spec, T, L, H, times[:T], future, h.covariates)
    except FeatureInputError as exc:
        raise ForecastError(f"series {h.id!r}: {exc}") from None
    return context, feats, future


def forecast_histories(forecaster, histories, settings: RunSettings) -> tuple[pd.DataFrame, list[str]]:
    """(forecast frame, ids of the skipped series) of a list of SeriesHistory.

    The frame has dil-run's columns: series (the id), timestamp (the future step's time; NaT for a
    series whose times follow no regular step), mean, median, q05 .. q95; H rows per series, in
    the order of `histories`. Raises ForecastError (one line naming the series) for a series that
    cannot be forecast.
    """
    frames, skipped = [], []
    for start in range(0, len(histories), CHUNK_SERIES):
        part = histories[start:start + CHUNK_SERIES]
        windows = [(h, _window(forecaster, h, settings.skip_bad_series)) for h in part]
        skipped += [h.id for h, w in windows if w is None]
        windows = [(h, w) for h, w in windows if w is not None]
        if windows:
            frames.append(_forecast_windows(forecaster, windows, settings))
    if not frames:
        return _frame([], np.zeros((0, forecaster.horizon)), np.zeros((0, forecaster.horizon)),
                      np.zeros((0, 19, forecaster.horizon)), [], None), skipped
    return (pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]), skipped


def _forecast_windows(forecaster, windows, settings: RunSettings) -> pd.DataFrame:
    ids = [h.id for h, _ in windows]
    contexts = np.stack([w[0] for _, w in windows])  # [G, L]
    feats = None
    if windows[0][1][1] is not None:
        feats = WindowFeatures(*(np.concatenate([getattr(w[1], name) for _, w in windows]) for name in
                                 ("context_known", "context_past", "horizon_known")))
    fc = forecaster.predict_windows(contexts, num_samples=settings.num_samples, seed=settings.seed, series_keys=ids,
                                    names=ids, config=settings.config, batch_series=settings.batch_series,
                                    features=feats)
    return _frame(ids, fc.mean, fc.median, fc.quantiles, [w[2] for _, w in windows], fc.levels)


def _frame(ids, mean, median, quantiles, futures, levels) -> pd.DataFrame:
    """Long frame of G series: mean, median [G, H], quantiles [G, Q, H], futures: G arrays [H] or None."""
    from dil.runtime.outputs.quantiles import QUANTILE_LEVELS

    levels = QUANTILE_LEVELS if levels is None else levels
    G, H = mean.shape
    nat = np.full(H, np.datetime64("NaT"), dtype="datetime64[ns]")
    stamps = [nat if f is None else np.asarray(f, dtype="datetime64[ns]") for f in futures]
    data = {
        "series": pd.array(np.repeat(np.asarray(ids, dtype=object), H), dtype=object),
        "timestamp": np.concatenate(stamps) if stamps else np.zeros(0, dtype="datetime64[ns]"),
        "mean": mean.reshape(-1),
        "median": median.reshape(-1),
    }
    for q, level in enumerate(levels):
        data[quantile_column(level)] = quantiles[:, q, :].reshape(-1)
    return pd.DataFrame(data)
