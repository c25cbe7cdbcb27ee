"""Forecasts of per-series histories: the one function that dil-run on a wide table, dil-run
--id-column and each actor of dil-run --ray (dil.runtime.jobs.ray_job) call (docs/scale-out.md).

A series' forecast depends on its history, the seed and its id alone (its random streams are keyed
by the id, dil.runtime.sampling.rng), and the Forecaster's result for a series does not depend on
which other series share its batch, so whichever process forecasts it, in whatever group, gets the
same numbers, bit for bit. The windows come from dil.runtime.inputs.rules, as Forecaster.predict's.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dil.runtime.inputs.rules import Windows, build_windows, usable
from dil.runtime.outputs.frame import forecast_frame

# Series per predict_windows call: bounds the samples held at once (8 * N * H bytes per series).
CHUNK_SERIES = 512


@dataclass(frozen=True)
class RunSettings:
    """What a forecast of many series is asked for (the dil-run options): samples per series,
    the seed, the SamplerConfig, series per engine batch, and whether series that cannot be
    forecast (too few rows, no observed value in the context) are skipped (True) or an error."""

    num_samples: int
    seed: int
    config: object
    batch_series: int = 16
    skip_bad_series: bool = False


def forecast_windows(forecaster, windows: Windows, settings: RunSettings, progress: bool = False):
    """The Forecast (dil.runtime.forecaster.Forecast) of `windows`; its timestamps are the future
    steps' when every series shares them."""
    fc = forecaster.predict_windows(windows.contexts, num_samples=settings.num_samples, seed=settings.seed,
                                    series_ids=windows.ids, config=settings.config,
                                    batch_series=settings.batch_series, features=windows.features,
                                    scale_floor=forecaster.scale_floors(windows.ids, windows.histories),
                                    progress=progress)
    fc.timestamps = windows.shared_future
    return fc


def forecast_histories(forecaster, histories, settings: RunSettings, name_series: bool = True, whole: bool = True,
                       say=None):
    """(forecast frame, ids of the skipped series) of a list of SeriesHistory, CHUNK_SERIES at a time.

    The frame is dil.runtime.outputs.frame's: H rows per series, in the order of `histories`, a
    timestamp column (NaT for a series whose times follow no regular step). Raises ForecastError
    (one line naming the series) for a series that cannot be forecast, unless skipped (the rule of
    dil.runtime.inputs.rules.usable). whole: `histories` are all the run's series (False for one
    Ray batch of them, which may skip all of its series). say: told the skipped series (usable's
    warning) and one progress line per chunk when there is more than one (a long table of many
    series).
    """
    import time

    started = time.perf_counter()
    L, H = forecaster.context_length, forecaster.horizon
    kept, warning = usable(histories, L, settings.skip_bad_series, whole=whole)
    if warning and say is not None:
        say(warning)
    kept_objects = {id(k) for k in kept}  # a set: a table of 10,000 series with one skipped stays linear
    skipped = [h.id for h in histories if id(h) not in kept_objects]
    frames = []
    for start in range(0, len(kept), CHUNK_SERIES):
        windows = build_windows(kept[start:start + CHUNK_SERIES], forecaster.features, L, H, name_series=name_series)
        fc = forecast_windows(forecaster, windows, settings)
        frames.append(forecast_frame(fc.series, fc.mean, fc.median, fc.quantiles, windows.futures, fc.levels))
        done = min(len(kept), start + CHUNK_SERIES)
        if say is not None and len(kept) > CHUNK_SERIES:
            elapsed = time.perf_counter() - started
            say(f"forecast {done}/{len(kept)} series, {elapsed:.0f} s elapsed, ~{elapsed * (len(kept) - done) / done:.0f} s "
                "left")
    if not frames:
        empty = np.zeros((0, H))
        return forecast_frame([], empty, empty, np.zeros((0, 19, H)), []), skipped
    import pandas as pd

    return (pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]), skipped
