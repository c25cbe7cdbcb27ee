"""What a forecast window feeds the model beside its target values: time features and covariates
(docs/model.md sections 1.4 and 5).

A window with origin o (context rows [o - L, o), horizon rows [o, o + H)) of a table whose rows have
the features `rf` (dil.runtime.inputs.features.row_features) gets
    context known = rf.known[o - L : o], context past = rf.past[o - L : o],
    horizon known = rf.known[o : o + H]
(`WindowFeatures.from_rows`). `Forecaster.predict` builds them from a history and the rows after it
(`history_features`); the evaluation from the table rows. pandas and dil.runtime.inputs.features are
imported only where a model has features, so a model without any costs nothing here.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np


class FeatureInputError(ValueError):
    """Missing or malformed feature input; Forecaster raises it as ForecastError (one line)."""


@dataclass(frozen=True)
class WindowFeatures:
    """The known and past features of G windows.

    context_known: float [G, L', Fk], the known features (time features, known-future covariates)
    of the context steps; context_past: float [G, L', Fp], the past-only covariates of the context
    steps; horizon_known: float [G, H, Fk], the known features of the H horizon steps. The context
    arrays are aligned at their last row with the contexts they go with (the last L rows are used).
    """

    context_known: np.ndarray
    context_past: np.ndarray
    horizon_known: np.ndarray

    @classmethod
    def from_rows(cls, rf, origins, context: int, horizon: int) -> "WindowFeatures":
        """The windows of origins int [O] of a table with row features `rf` (RowFeatures: known
        [T, Fk], past [T, Fp]): G = O windows. Rows outside the table get zeros (a missing value's
        encoding)."""
        origins = np.asarray(origins, dtype=np.int64)
        return cls(_rows(rf.known, origins, context, 0), _rows(rf.past, origins, context, 0),
                   _rows(rf.known, origins, 0, horizon))

    def take(self, index) -> "WindowFeatures":
        """The windows `index` (int array or slice over G)."""
        return WindowFeatures(self.context_known[index], self.context_past[index], self.horizon_known[index])


def _rows(a: np.ndarray, origins: np.ndarray, before: int, after: int) -> np.ndarray:
    """Rows [o - before, o + after) of a [T, F] for each origin: float64 [O, before + after, F]."""
    idx = origins[:, None] + np.arange(-before, after)
    inside = (idx >= 0) & (idx < a.shape[0])
    out = a[np.clip(idx, 0, max(a.shape[0] - 1, 0))] if a.shape[0] else np.zeros(idx.shape + a.shape[1:])
    return np.ascontiguousarray(np.where(inside[..., None], out, 0.0), dtype=np.float64)


def table_features(table, spec, origins, context: int, horizon: int) -> WindowFeatures | None:
    """WindowFeatures [O, ...] of the windows at `origins` of a SeriesTable for the FeatureSpec
    `spec` (None when it has none): its rows' dates and covariates through
    dil.runtime.inputs.features.row_features. FeatureError (one line) when the table lacks the dates or a
    covariate column the model needs."""
    if spec is None or not uses_features(spec):
        return None
    from dil.runtime.inputs.features import row_features

    rf = row_features(spec, table.timestamps if spec.time_features else None,
                      getattr(table, "covariates", None) if spec.covariates else None, rows=table.n_steps)
    return WindowFeatures.from_rows(rf, origins, context, horizon)


def describe(spec) -> str:
    """What a FeatureSpec feeds the model, in words: "the series only", or e.g. "4 time features
    (hour_of_day, ...), known covariates temp, holiday, past covariate rain_1h"."""
    parts = []
    if spec.time_features:
        n = len(spec.time_features)
        parts.append(f"{n} time feature{'s' * (n != 1)} ({', '.join(spec.time_features)})")
    for names, what in ((spec.known_covariates, "known"), (spec.past_covariates, "past")):
        if names:
            parts.append(f"{what} covariate{'s' * (len(names) != 1)} {', '.join(names)}")
    return ", ".join(parts) if parts else "the series only"


def uses_features(spec) -> bool:
    return bool(spec.known_width or spec.past_width)


def row_ranges(rows) -> str:
    """1-based row numbers as ranges: [3, 4, 5, 9] -> "3-5, 9"."""
    rows = sorted(int(r) for r in rows)
    out, start = [], None
    for i, r in enumerate(rows):
        start = r if start is None else start
        if i + 1 == len(rows) or rows[i + 1] != r + 1:
            out.append(str(start) if start == r else f"{start}-{r}")
            start = None
    return ", ".join(out)


def history_features(spec, n_rows: int, context: int, horizon: int, timestamps=None, future=None,
                     covariates=None) -> WindowFeatures | None:
    """The features of the one window that starts after a history of `n_rows` rows (G = 1), or
    None when the model uses none (spec: its FeatureSpec).

    timestamps: [n_rows] of the history or None; future: [H] timestamps of the horizon or None.
    covariates: DataFrame-like of raw covariate columns, its rows the history's (by position)
    and then the future steps', as dil-run passes a table's. Raises FeatureInputError (one line)
    for a model with time features and no dates, a model with covariates and none given (or a
    column missing), or known covariates empty in some of the H future rows.
    """
    if not uses_features(spec):
        return None
    import pandas as pd

    from dil.runtime.inputs.features import FeatureError, row_features

    T = n_rows
    if spec.time_features:
        if timestamps is None:
            raise FeatureInputError(f"the model uses time features ({', '.join(spec.time_features)}) but the "
                                    "history has no dates: give it a DatetimeIndex or pass timestamps=")
        if future is None:
            raise FeatureInputError("the model uses time features but the history's timestamps follow no regular "
                                    "step, so the future steps have no dates: pass freq=")
    frame = None
    if spec.covariates:
        frame = _covariate_frame(spec, covariates, T, horizon, pd)
    times = None
    if spec.time_features:
        times = np.concatenate([np.asarray(pd.DatetimeIndex(timestamps).as_unit("ns").to_numpy()),
                                np.asarray(future, dtype="datetime64[ns]")])
    try:
        rf = row_features(spec, times, frame, rows=T + horizon)
    except FeatureError as exc:  # e.g. a word among a numeric covariate's numbers
        raise FeatureInputError(str(exc)) from None
    _check_future(spec, rf.known_missing[T:], covariates, T, horizon)
    return WindowFeatures.from_rows(rf, np.array([T]), context, horizon)


def future_dates(spec, timestamps, freq, horizon: int):
    """datetime64[ns] [H] of the steps after `timestamps` (a history's [T]) at `freq` (None:
    inferred; for a model with time features, else the model's row frequency), or None without
    dates or a known step. FeatureInputError when a model with time features gets rows of another
    frequency than it was trained on."""
    if timestamps is None or len(timestamps) == 0:
        return None
    import pandas as pd

    index = pd.DatetimeIndex(timestamps)
    if freq is None and len(index) >= 3:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pandas' notice that infer_freq will return an offset
            freq = pd.infer_freq(index)
    if spec.time_features and spec.freq:
        if freq is None:
            freq = spec.freq
        elif not _same_step(freq, spec.freq, pd):
            raise FeatureInputError(f"the history's rows are {freq!r} apart but the model's time features are for "
                                    f"rows of {spec.freq!r}")
    if freq is None:
        return None
    return pd.date_range(index[-1], periods=horizon + 1, freq=freq)[1:].to_numpy(dtype="datetime64[ns]")


def _same_step(a: str, b: str, pd) -> bool:
    """Whether two pandas frequency aliases are the same row step ("h" and "60min"; "D" and "24h")."""
    oa, ob = pd.tseries.frequencies.to_offset(a), pd.tseries.frequencies.to_offset(b)
    if oa == ob:
        return True
    try:
        return pd.Timedelta(oa) == pd.Timedelta(ob)
    except (ValueError, TypeError):  # calendar steps (months, business days) have no fixed length
        return False


def _covariate_frame(spec, covariates, T: int, horizon: int, pd):
    """The model's covariate columns, rows [0, T + H) (missing rows: empty)."""
    names = [c.name for c in spec.covariates]
    if covariates is None:
        raise FeatureInputError(f"the model uses covariates ({', '.join(names)}): pass covariates=, a table of "
                                f"those columns with the history's rows and then the {horizon} future rows")
    frame = covariates if isinstance(covariates, pd.DataFrame) else pd.DataFrame(covariates)
    absent = [n for n in names if n not in frame.columns]
    if absent:
        raise FeatureInputError(f"covariates has no column {absent[0]!r} (the model uses "
                                f"{', '.join(names)})")
    if len(frame) < T:
        raise FeatureInputError(f"covariates has {len(frame)} rows, fewer than the {T} history rows")
    return frame[names].reset_index(drop=True).reindex(range(T + horizon))


def _check_future(spec, missing: np.ndarray, covariates, T: int, horizon: int) -> None:
    """missing: bool [H, known covariates]; error naming the first covariate empty in the future."""
    known = spec.known_covariates
    for j, name in enumerate(known):
        if missing[:, j].any():
            rows = np.flatnonzero(missing[:, j]) + 1
            given = max(0, min(len(covariates), T + horizon) - T)
            extra = f" (covariates has {given} rows after the history)" if given < horizon else ""
            raise FeatureInputError(f"covariate {name!r} is empty in future rows {row_ranges(rows)} of "
                                    f"{horizon}{extra}: the model needs the known covariates of every "
                                    "forecast step")


def check_window_features(spec, features: WindowFeatures | None, G: int, context: int, horizon: int):
    """(known [G, L, Fk], past [G, L, Fp], horizon [G, H, Fk]) float64 from predict_windows'
    `features` for G contexts (their last `context` rows used), or Nones for a model without
    features. FeatureInputError (one line) when they are missing, of the wrong shape or not finite."""
    Fk, Fp = spec.known_width, spec.past_width
    if features is None:
        if Fk or Fp:
            raise FeatureInputError(f"the model uses {describe(spec)}: pass features=WindowFeatures(...) "
                                    "(dil.runtime.inputs.window_features)")
        return None, None, None
    out = []
    for name, a, width, length in (("context_known", features.context_known, Fk, None),
                                   ("context_past", features.context_past, Fp, None),
                                   ("horizon_known", features.horizon_known, Fk, horizon)):
        a = np.asarray(a, dtype=np.float64)
        if a.ndim != 3 or a.shape[0] != G or a.shape[2] != width or a.shape[1] < (length or context) \
                or (length is not None and a.shape[1] != length):
            want = f"[{G}, {length if length is not None else f'>={context}'}, {width}]"
            raise FeatureInputError(f"features.{name} has shape {a.shape}, the model needs {want} ({describe(spec)})")
        if not np.isfinite(a).all():
            raise FeatureInputError(f"features.{name} has a non-finite value (window {int(np.argwhere(~np.isfinite(a))[0, 0])})")
        out.append(np.ascontiguousarray(a if length is not None else a[:, a.shape[1] - context:]))
    return tuple(out)
