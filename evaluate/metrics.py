"""Probabilistic forecast metrics (docs/model.md section 6), float64 NumPy, vectorised.

Shapes: a target `y` is float [..., H]; a forecast is either samples [..., N, H] (N draws per
window) or quantiles [..., Q, H]. The leading axes (windows, series) are arbitrary and matched
between target and forecast.

Missing targets: a target step is missing where `y` is NaN or where the optional boolean `mask`
(same shape as `y`, True = observed) is False. Missing steps are excluded from the numerator AND
the denominator of every metric. A metric with no observed step (or, for the normalised ones,
sum |y| == 0) is NaN.

Normalisation (GluonTS convention): the CRPS figures are sums over observed steps divided by the
sum of |y| over the same steps, so they are scale-free and comparable across datasets.
"""

from __future__ import annotations

import numpy as np

from dil.runtime.outputs.quantiles import QUANTILE_LEVELS, sample_quantiles


def observed_mask(y: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Boolean [..., H]: True where the target is observed (not NaN and not masked out)."""
    obs = ~np.isnan(np.asarray(y, dtype=np.float64))
    if mask is not None:
        obs &= np.broadcast_to(np.asarray(mask, dtype=bool), obs.shape)
    return obs


def _target(y, mask):
    """(y with missing steps set to 0, observed mask): zeros keep NaN out of every sum."""
    y = np.asarray(y, dtype=np.float64)
    obs = observed_mask(y, mask)
    return np.where(obs, y, 0.0), obs


def _ratio(num: float, den: float) -> float:
    return float(num / den) if den > 0 else float("nan")


def weighted_quantile_loss(y, q_pred, levels=QUANTILE_LEVELS, mask=None) -> float:
    """GluonTS "mean_wQuantileLoss": the CRPS estimate from a quantile forecast.

    y: target [..., H]. q_pred: quantiles [..., Q, H] at `levels` (Q,).
    For each level a: 2 * sum |(y - q_a) * (1{y < q_a} - a)| / sum |y| over observed steps;
    returns the mean over the levels (a point forecast repeated at every level of a symmetric grid
    gives sum |y - q| / sum |y|, the normalised MAE).
    """
    yz, obs = _target(y, mask)
    q = np.asarray(q_pred, dtype=np.float64)
    levels = np.asarray(levels, dtype=np.float64)
    if q.shape[-2] != levels.size or q.shape[:-2] + q.shape[-1:] != yz.shape:
        raise ValueError(f"quantiles {q.shape} do not match target {yz.shape} and {levels.size} levels")
    yq, oq = yz[..., None, :], obs[..., None, :]
    lev = levels[:, None]
    # NaN quantiles at missing steps must not leak into the sums: select, do not multiply.
    pinball = np.where(oq, np.abs((yq - q) * ((yq < q) - lev)), 0.0)
    per_level = 2.0 * pinball.reshape(-1, levels.size, yz.shape[-1]).sum(axis=(0, 2))
    den = np.abs(yz).sum()
    return _ratio(per_level.mean(), den)


def _samples(samples, y_shape) -> np.ndarray:
    s = np.asarray(samples, dtype=np.float64)
    if s.ndim != len(y_shape) + 1 or s.shape[:-2] + s.shape[-1:] != tuple(y_shape):
        raise ValueError(f"samples {s.shape} do not match target {tuple(y_shape)} (expected [..., N, H])")
    return s


def crps_quantile(y, samples, levels=QUANTILE_LEVELS, mask=None) -> float:
    """THE project CRPS: weighted quantile loss of the empirical quantiles of `samples`.

    samples: [..., N, H]. Quantiles come from dil.runtime.outputs.quantiles.sample_quantiles (linear
    interpolation) on the grid `levels` (default: the 19 levels 0.05..0.95).
    """
    s = _samples(samples, np.shape(y))
    q = np.moveaxis(sample_quantiles(s, axis=-2, levels=levels), 0, -2)  # [..., Q, H]
    return weighted_quantile_loss(y, q, levels, mask)


def crps_pointwise(y, samples) -> np.ndarray:
    """Exact CRPS of the empirical distribution of `samples` at each target step: float64 [..., H].

    CRPS = E|X - y| - 0.5 E|X - X'| with both expectations over the N samples (the X = X' pairs
    included, i.e. the CRPS of the empirical CDF). The pair term uses the sorted-samples identity
    sum_{i,j} |x_i - x_j| = 2 * sum_i (2i - N - 1) x_(i), i = 1..N: O(N log N) instead of O(N^2).
    """
    y = np.asarray(y, dtype=np.float64)
    s = np.sort(_samples(samples, y.shape), axis=-2)
    n = s.shape[-2]
    abs_err = np.abs(s - y[..., None, :]).mean(axis=-2)
    weights = (2.0 * np.arange(1, n + 1) - n - 1.0)[:, None]
    spread = (weights * s).sum(axis=-2) / (n * n)  # = 0.5 * E|X - X'|
    return abs_err - spread


def crps_sample(y, samples, mask=None) -> float:
    """Exact sample CRPS (crps_pointwise) summed over observed steps / sum |y| (same normalisation)."""
    yz, obs = _target(y, mask)
    return normalised_total(y, crps_pointwise(np.where(obs, yz, 0.0), samples), mask)


def normalised_total(y, per_step, mask=None) -> float:
    """sum of per_step [..., H] (e.g. crps_pointwise) over the observed steps of y / their sum |y|."""
    yz, obs = _target(y, mask)
    return _ratio(np.where(obs, per_step, 0.0).sum(), np.abs(yz).sum())


def crps_sum(y, samples, levels=QUANTILE_LEVELS, mask=None) -> float:
    """CRPS-sum (GluonTS multivariate convention): crps_quantile of the sum over series.

    y: [W, C, H] (windows sharing an origin, C series); samples: [W, C, N, H].
    A step of the aggregate is observed only where every series is observed (as GluonTS, whose sum
    of a NaN is NaN and then masked): a partial sum would not be the quantity being forecast.
    """
    yz, obs = _target(y, mask)
    s = _samples(samples, yz.shape)
    if yz.ndim != 3:
        raise ValueError(f"crps_sum needs targets [W, C, H], got {yz.shape}")
    obs_sum = obs.all(axis=1)  # [W, H]
    s_sum = np.where(obs[:, :, None, :], s, 0.0).sum(axis=1)  # [W, N, H]
    return crps_quantile(yz.sum(axis=1), s_sum, levels, obs_sum)


def mae(y, point, mask=None) -> float:
    """Mean absolute error of a point forecast [..., H] (e.g. the median) over observed steps,
    in the units of y."""
    yz, obs = _target(y, mask)
    err = np.where(obs, np.abs(yz - np.asarray(point, dtype=np.float64)), 0.0)
    return _ratio(err.sum(), obs.sum())


def mse(y, point, mask=None) -> float:
    """Mean squared error of a point forecast [..., H] over observed steps, in units of y squared."""
    yz, obs = _target(y, mask)
    err = np.where(obs, (yz - np.asarray(point, dtype=np.float64)) ** 2, 0.0)
    return _ratio(err.sum(), obs.sum())


def median_forecast(samples) -> np.ndarray:
    """The median over the sample axis: [..., N, H] -> [..., H] (numpy linear interpolation)."""
    return np.median(np.asarray(samples, dtype=np.float64), axis=-2)


def coverage(y, samples, width: float, mask=None) -> float:
    """Fraction of observed target steps inside the central `width` interval of the samples.

    width in (0, 1), e.g. 0.5 or 0.9: the interval is [q_{(1-w)/2}, q_{(1+w)/2}] of the empirical
    quantiles (linear interpolation), bounds included. A calibrated forecast gives ~width.
    """
    return coverages(y, samples, [width], mask)[0]


def coverages(y, samples, widths, mask=None) -> list[float]:
    """coverage() for several interval widths from one quantile computation (a calibration curve)."""
    s = _samples(samples, np.shape(y))
    q = sample_quantiles(s, axis=-2, levels=interval_levels(widths))  # [2K, ..., H]
    return coverages_of_bounds(y, q, mask)


def interval_levels(widths) -> np.ndarray:
    """The quantile levels bounding central intervals of `widths` (K,): float64 [2K], the K lower
    bounds (1 - w) / 2 then the K upper ones (1 + w) / 2."""
    widths = np.asarray(widths, dtype=np.float64).reshape(-1)
    if np.any((widths <= 0.0) | (widths >= 1.0)):
        raise ValueError(f"interval widths must be in (0, 1), got {widths.tolist()}")
    return np.concatenate([(1 - widths) / 2, (1 + widths) / 2])


def coverages_of_bounds(y, bounds, mask=None) -> list[float]:
    """coverages() from the interval bounds: bounds float [2K, ..., H] at interval_levels(widths)."""
    yz, obs = _target(y, mask)
    k = bounds.shape[0] // 2
    inside = obs & (yz >= bounds[:k]) & (yz <= bounds[k:])  # [K, ..., H]
    n = obs.sum()
    return [_ratio(c, n) for c in inside.reshape(k, -1).sum(axis=1)]


def seasonal_naive(history, season: int, horizon: int) -> np.ndarray:
    """Seasonal-naive point forecast: the value one season before each horizon step.

    history: float [..., L] ending right before the horizon, NaN = missing, L >= season.
    Returns float64 [..., horizon]: step h repeats history[L - season + (h mod season)].
    A missing lag value is taken from the same phase one or more seasons earlier (within the
    history); if that phase is never observed, from the last observed value of the history
    (NaN only for a history with no observed value).
    """
    x = np.asarray(history, dtype=np.float64)
    length = x.shape[-1]
    if season < 1 or season > length:
        raise ValueError(f"seasonal naive needs 1 <= season <= history length, got season {season}, length {length}")
    k = length // season
    # [..., k, season]: row -1 is the latest season; fill each phase from the latest observed row.
    seasons = x[..., length - k * season :].reshape(x.shape[:-1] + (k, season))
    obs = ~np.isnan(seasons)
    latest = k - 1 - np.argmax(obs[..., ::-1, :], axis=-2)  # index of latest observed row per phase
    phase = np.take_along_axis(seasons, latest[..., None, :], axis=-2)[..., 0, :]
    # Fallback: last observed value of the whole history (forward fill to the end).
    idx = np.where(~np.isnan(x), np.arange(length), -1).max(axis=-1)
    last = np.take_along_axis(x, np.maximum(idx, 0)[..., None], axis=-1)[..., 0]
    last = np.where(idx >= 0, last, np.nan)
    phase = np.where(np.isnan(phase), last[..., None], phase)
    return phase[..., np.arange(horizon) % season]


def probts_window_terms(y, quantiles, median, levels=QUANTILE_LEVELS, mask=None):
    """Per window (one origin: all its series at once) the sums behind ProbTS's metrics.

    y: target [O, C, H]; quantiles: [O, C, Q, H] at `levels` (Q,); median: [O, C, H]; mask: bool
    [O, C, H] (True = counts; NaN targets never count). Returns float64 (ql [O, Q], abs_error [O],
    abs_target [O]): 2 * sum over series and horizon of |(q_a - y) * (1{y <= q_a} - a)| per level,
    sum |y - median| and sum |y|, each over the window's counted steps (probts/utils/metrics.py
    quantile_loss, abs_error, abs_target_sum; a masked step is left out of both, as ProbTS's masked
    arrays leave it).
    """
    yz, obs = _target(y, mask)
    q = np.asarray(quantiles, dtype=np.float64)
    levels = np.asarray(levels, dtype=np.float64)
    if yz.ndim != 3 or q.shape != yz.shape[:2] + (levels.size, yz.shape[-1]):
        raise ValueError(f"probts terms need targets [O, C, H] and quantiles [O, C, {levels.size}, H], "
                         f"got {yz.shape} and {q.shape}")
    yq, oq = yz[:, :, None, :], obs[:, :, None, :]
    pinball = np.where(oq, np.abs((q - yq) * ((yq <= q) - levels[:, None])), 0.0)
    ql = 2.0 * pinball.sum(axis=(1, 3))  # [O, Q]
    abs_error = np.where(obs, np.abs(yz - np.asarray(median, dtype=np.float64)), 0.0).sum(axis=(1, 2))
    return ql, abs_error, np.abs(yz).sum(axis=(1, 2))


def probts_scores(y, quantiles, median, levels=QUANTILE_LEVELS, mask=None, batch_sizes=()) -> dict:
    """ProbTS's long-term metrics (docs/probts.md) from per-window quantiles and medians.

    Shapes as probts_window_terms; a window is one origin with all its series. Returns
    {"crps": mean over windows of (mean over levels of ql / sum |y|), "nmae": mean over windows of
    sum |y - median| / sum |y|, "windows": the windows counted} (probts/utils/evaluator.py since
    2024-06-21: per-window normalisation); a window with sum |y| = 0 (nothing to normalise by) is
    left out, so is one without a counted step. batch_sizes: for each B, also ProbTS's first
    evaluator (2024-06-17): the same ratios pooled over consecutive batches of B windows, then
    averaged over the batches weighted by their sizes: "crps_pooled" and "nmae_pooled",
    {str(B): value}. NaN without a counted window.
    """
    ql, abs_error, abs_target = probts_window_terms(y, quantiles, median, levels, mask)
    keep = abs_target > 0
    ql, abs_error, abs_target = ql[keep], abs_error[keep], abs_target[keep]
    n = int(keep.sum())
    nan = float("nan")
    out = {
        "crps": float(np.mean(np.mean(ql / abs_target[:, None], axis=1))) if n else nan,
        "nmae": float(np.mean(abs_error / abs_target)) if n else nan,
        "windows": n,
    }
    if batch_sizes:
        out["crps_pooled"], out["nmae_pooled"] = {}, {}
        for b in batch_sizes:
            crps, nmae, sizes = [], [], []
            for a in range(0, n, int(b)):
                den = abs_target[a : a + b].sum()
                crps.append(np.mean(ql[a : a + b].sum(axis=0) / den))
                nmae.append(abs_error[a : a + b].sum() / den)
                sizes.append(min(int(b), n - a))
            w = np.asarray(sizes, dtype=np.float64)
            out["crps_pooled"][str(b)] = float(np.sum(np.asarray(crps) * w) / w.sum()) if n else nan
            out["nmae_pooled"][str(b)] = float(np.sum(np.asarray(nmae) * w) / w.sum()) if n else nan
    return out


def probts_crps(y, samples, levels=QUANTILE_LEVELS, mask=None, batch_sizes=()) -> dict:
    """probts_scores of a sample forecast: y [O, C, H], samples [O, C, N, H] (N = 1: a point
    forecast, whose CRPS is then its NMAE). Quantiles and median: numpy's linear method, as ProbTS's
    np.quantile."""
    s = _samples(samples, np.shape(y))
    q = np.moveaxis(sample_quantiles(s, axis=-2, levels=levels), 0, -2)  # [O, C, Q, H]
    return probts_scores(y, q, median_forecast(s), levels, mask, batch_sizes)


class StreamedScores:
    """The metrics of a sample forecast of many windows, fed a batch of windows at a time.

    Each window's N samples are reduced on arrival to what the metrics above need of them, per target
    step: its quantiles (the CRPS grid and the bounds of the central intervals of `widths`), its
    median, its exact CRPS (crps_pointwise), and for CRPS-sum its samples added into the running sum
    over the series of its origin. Memory: windows x H x (levels + 2) + scopes x origins x N x H
    floats instead of windows x N x H. The figures are those of the functions above on all samples
    at once, bit for bit, whatever the batches: every reduction over samples is per window, and the
    sums over windows run at the end on the same arrays.

    targets: float64 [O, C, H] (NaN = missing). samples: N per window. widths: the central-interval
    widths whose coverage is asked later (must include 0.5 and 0.9 for `scores`). scopes: {name: bool
    [O, C]}, the window sets that will be scored (CRPS-sum adds the series of each set). Windows must
    arrive origin-major, series ascending (the order of np.argwhere): the running sums then add the
    series in the order of numpy's sum over the series axis.
    """

    def __init__(self, targets, samples: int, widths, scopes: dict, levels=QUANTILE_LEVELS):
        self.targets = np.asarray(targets, dtype=np.float64)
        o, c, h = self.targets.shape
        self.crps_levels = np.asarray(levels, dtype=np.float64)
        self.widths = np.asarray(widths, dtype=np.float64).reshape(-1)
        self.levels = np.concatenate([self.crps_levels, interval_levels(self.widths)])
        # Level-major [Q', O, C, H], the layout of sample_quantiles' output: the loss sums over it
        # then run in the same order as crps_quantile's (float addition is not associative).
        self.quantiles = np.full((self.levels.size, o, c, h), np.nan)
        self.median = np.full((o, c, h), np.nan)
        self.crps = np.full((o, c, h), np.nan)
        self.scopes = {name: np.asarray(m, dtype=bool) for name, m in scopes.items()}
        self.sums = {name: np.zeros((o, int(samples), h)) for name in self.scopes}

    def add(self, origin_idx, series_idx, samples) -> None:
        """Windows (origin_idx[b], series_idx[b]), b < B, with their samples float [B, N, H]."""
        o, c = np.asarray(origin_idx, dtype=np.int64), np.asarray(series_idx, dtype=np.int64)
        y = self.targets[o, c]
        s = _samples(samples, y.shape)
        self.quantiles[:, o, c] = sample_quantiles(s, axis=-2, levels=self.levels)
        self.median[o, c] = median_forecast(s)
        observed = ~np.isnan(y)
        self.crps[o, c] = crps_pointwise(np.where(observed, y, 0.0), s)
        for name, scope in self.scopes.items():
            total = self.sums[name]
            for b in np.flatnonzero(scope[o, c]):
                total[o[b]] += np.where(observed[b], s[b], 0.0)

    def quantiles_at(self, levels) -> np.ndarray:
        """Stored quantiles at `levels` (each one of self.levels, exactly): float64 [O, C, len, H]."""
        index = [int(np.flatnonzero(self.levels == q)[0]) if np.any(self.levels == q) else -1 for q in levels]
        if min(index, default=0) < 0:
            raise ValueError(f"quantile levels {list(levels)} are not all among the stored {self.levels.tolist()}")
        return np.moveaxis(self.quantiles[index], 0, 2)

    def coverages(self, scope: str, widths) -> list[float]:
        """Coverage of the central intervals of `widths` (each among self.widths) on a scope's windows."""
        k, n = self.crps_levels.size, self.widths.size
        pos = [int(np.flatnonzero(self.widths == w)[0]) for w in np.asarray(widths, dtype=np.float64).reshape(-1)]
        bounds = self.quantiles[[k + i for i in pos] + [k + n + i for i in pos]]  # [2K, O, C, H]
        return coverages_of_bounds(self.targets, bounds, self._mask(scope))

    def scores(self, scope: str) -> dict:
        """{crps, crps_sample, crps_sum, mae, mse, coverage_50, coverage_90} on a scope's windows."""
        y, m = self.targets, self._mask(scope)
        cov50, cov90 = self.coverages(scope, (0.5, 0.9))
        yz, obs = _target(y, m)
        return {
            "crps": weighted_quantile_loss(y, np.moveaxis(self.quantiles[: self.crps_levels.size], 0, -2),
                                           self.crps_levels, m),
            "crps_sample": normalised_total(y, self.crps, m),
            # crps_sum on the running sums: the aggregate step counts where every series is observed.
            "crps_sum": crps_quantile(yz.sum(axis=1), self.sums[scope], self.crps_levels, obs.all(axis=1)),
            "mae": mae(y, self.median, mask=m),
            "mse": mse(y, self.median, mask=m),
            "coverage_50": cov50,
            "coverage_90": cov90,
        }

    def probts(self, scope: str, batch_sizes=()) -> dict:
        """probts_scores on a scope's windows (from the stored quantiles and medians)."""
        q = np.moveaxis(self.quantiles[: self.crps_levels.size], 0, 2)  # [O, C, Q, H]
        return probts_scores(self.targets, q, self.median, self.crps_levels, self._mask(scope), batch_sizes)

    def _mask(self, scope: str) -> np.ndarray:
        """bool [O, C, H]: the target steps of a scope that count."""
        return self.scopes[scope][..., None] & ~np.isnan(self.targets)
