"""Fan chart of a forecast: recent history, median, 50% and 90% central intervals (`dil-run --plot`).

Needs matplotlib (the `plot` extra); a missing one raises dil.runtime.support.deps.MissingDependency naming it.
"""

from __future__ import annotations

import io

import numpy as np

from dil.runtime.support.deps import require

MAX_SERIES = 4  # panels in one chart; more series make unreadable thumbnails
FORMATS = ("png", "pdf", "svg")


def _band(forecast, low: float, high: float) -> tuple[np.ndarray, np.ndarray]:
    """Quantile rows [G, H] at two levels of the forecast's grid."""
    levels = np.asarray(forecast.levels)
    lo, hi = (int(np.argmin(np.abs(levels - q))) for q in (low, high))
    return forecast.quantiles[:, lo, :], forecast.quantiles[:, hi, :]


def fan_chart(history: np.ndarray, forecast, history_timestamps=None, max_series: int = MAX_SERIES,
              history_steps: int | None = None):
    """A matplotlib Figure with one panel per series (the first `max_series`; the title says "first k of G
    series" when there are more).

    history: float [T, C] (rows = time steps, NaN = missing), the series of `forecast` in its order.
    history_timestamps: datetime64 [T] or None; with forecast.timestamps the x axis shows dates, else
    steps relative to the forecast origin (history <= 0 < forecast). history_steps: how much history
    to draw (default 4 horizons).
    """
    require("matplotlib", "plot")
    import matplotlib

    matplotlib.use("Agg", force=False)  # no display needed; keeps the CLI usable on servers
    from matplotlib.figure import Figure

    history = np.asarray(history, dtype=np.float64)
    if history.ndim == 1:
        history = history[:, None]
    G, H = forecast.median.shape
    shown = min(G, max_series)
    k = min(history.shape[0], history_steps or 4 * H)
    dated = history_timestamps is not None and forecast.timestamps is not None
    if dated:
        x_hist = np.asarray(history_timestamps, dtype="datetime64[ns]")[-k:]
        x_fut = np.asarray(forecast.timestamps, dtype="datetime64[ns]")
    else:
        x_hist, x_fut = np.arange(-k + 1, 1), np.arange(1, H + 1)
    lo90, hi90 = _band(forecast, 0.05, 0.95)
    lo50, hi50 = _band(forecast, 0.25, 0.75)

    fig = Figure(figsize=(9, 2.4 * shown), layout="constrained")
    axes = fig.subplots(shown, 1, squeeze=False)[:, 0]
    for g, ax in enumerate(axes):
        ax.plot(x_hist, history[-k:, g], color="0.2", lw=1.0, label="history")
        ax.fill_between(x_fut, lo90[g], hi90[g], color="tab:blue", alpha=0.2, lw=0, label="90% interval")
        ax.fill_between(x_fut, lo50[g], hi50[g], color="tab:blue", alpha=0.4, lw=0, label="50% interval")
        ax.plot(x_fut, forecast.median[g], color="tab:blue", lw=1.5, label="median")
        ax.set_title(str(forecast.series[g]), fontsize=10, loc="left")
        ax.grid(alpha=0.3)
    if dated:
        from matplotlib.dates import AutoDateLocator, ConciseDateFormatter

        for ax in axes:
            locator = AutoDateLocator()
            ax.xaxis.set_major_locator(locator)
            ax.xaxis.set_major_formatter(ConciseDateFormatter(locator))
    if shown < G:  # say so on the chart too: a reader must not take the panels for the whole forecast
        fig.suptitle(f"first {shown} of {G} series", fontsize=10, x=0.99, ha="right")
    axes[0].legend(loc="upper left", fontsize=8, ncol=4)
    if not dated:
        axes[-1].set_xlabel("step (0 = forecast origin)")
    return fig


def render(fig, fmt: str = "png") -> bytes:
    """The figure as file bytes (so that the caller can write it atomically)."""
    buf = io.BytesIO()
    fig.savefig(buf, format=fmt, dpi=120)
    return buf.getvalue()
