"""The forecast table: one row per series and future step (dil-run's output, Forecast.to_frame).

Columns: series, timestamp (the future step's time; NaT for a series without a regular step) or,
when no series has dates, step (1..H), then mean, median and one column per quantile level
(q05 .. q95, dil.runtime.outputs.quantiles.quantile_column).
"""

from __future__ import annotations

import numpy as np

from dil.runtime.outputs.quantiles import QUANTILE_LEVELS, quantile_column


def forecast_frame(series, mean: np.ndarray, median: np.ndarray, quantiles: np.ndarray, timestamps=None,
                   levels=None):
    """pandas DataFrame of G series: mean, median float [G, H], quantiles float [G, Q, H] at
    `levels` (default QUANTILE_LEVELS). timestamps: datetime64[ns] [H] shared by every series, a
    list of G such arrays (None for a series without dates: NaT), or None (a step column 1..H)."""
    import pandas as pd

    levels = QUANTILE_LEVELS if levels is None else levels
    G, H = mean.shape
    data = {"series": np.repeat(np.asarray(list(series) + [None], dtype=object)[:G], H)}
    if isinstance(timestamps, list):
        nat = np.full(H, np.datetime64("NaT"), dtype="datetime64[ns]")
        stamps = [nat if t is None else np.asarray(t, dtype="datetime64[ns]") for t in timestamps]
        data["timestamp"] = np.concatenate(stamps) if stamps else np.zeros(0, dtype="datetime64[ns]")
    elif timestamps is not None:
        data["timestamp"] = np.tile(np.asarray(timestamps, dtype="datetime64[ns]"), G)
    else:
        data["step"] = np.tile(np.arange(1, H + 1), G)
    data["mean"] = mean.reshape(-1)
    data["median"] = median.reshape(-1)
    for q, level in enumerate(levels):
        data[quantile_column(level)] = quantiles[:, q, :].reshape(-1)
    return pd.DataFrame(data)
