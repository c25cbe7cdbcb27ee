"""Evaluation figures: fan charts of a few test windows and a calibration curve (matplotlib, the
`plot` extra). Figures are built on matplotlib.figure.Figure (no pyplot state, no GUI backend) and
written atomically as PNG."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dil.runtime.support.files import atomic_path
from dil.runtime.support.deps import require

FAN_FILE = "fan_charts.png"
# The median and the 50% / 90% central bands (StreamedScores keeps these levels of every window).
FAN_LEVELS = (0.05, 0.25, 0.5, 0.75, 0.95)
CALIBRATION_FILE = "calibration.png"


def _figure(**kw):
    require("matplotlib", "plot")
    from matplotlib.figure import Figure

    return Figure(layout="constrained", **kw)


def _save(fig, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    return path


def pick_windows(valid: np.ndarray, count: int) -> list[tuple[int, int]]:
    """`count` scored (origin, series) index pairs, evenly spread over the test period."""
    pairs = np.argwhere(valid)
    if len(pairs) == 0:
        return []
    take = np.unique(np.round(np.linspace(0, len(pairs) - 1, min(count, len(pairs)))).astype(int))
    return [tuple(int(v) for v in pairs[i]) for i in take]


def fan_charts(windows, out_dir, count: int = 4, context_shown: int | None = None) -> Path:
    """One panel per window: context tail, target, median, 50% / 90% bands, seasonal naive.

    windows: dil.evaluate.harness.EvalWindows after the forecasts (its `forecast` keeps every
    window's quantiles, so no samples are needed). context_shown: context steps drawn (default 3 H).
    """
    horizon = windows.targets.shape[-1]
    shown = min(windows.contexts.shape[-1], context_shown or 3 * horizon)
    picks = pick_windows(windows.valid, count)
    bands = windows.forecast.quantiles_at(FAN_LEVELS)  # [O, C, 5, H]
    fig = _figure(figsize=(9, 2.4 * max(len(picks), 1)))
    axes = fig.subplots(max(len(picks), 1), 1, squeeze=False)[:, 0]
    t_ctx, t_hor = np.arange(-shown, 0), np.arange(horizon)
    for ax, (o, c) in zip(axes, picks):
        q05, q25, q50, q75, q95 = bands[o, c]
        ax.plot(t_ctx, windows.contexts[o, c, -shown:], color="0.3", lw=1, label="context")
        ax.plot(t_hor, windows.targets[o, c], color="k", lw=1.2, label="actual")
        ax.fill_between(t_hor, q05, q95, color="C0", alpha=0.2, lw=0, label="90% interval")
        ax.fill_between(t_hor, q25, q75, color="C0", alpha=0.4, lw=0, label="50% interval")
        ax.plot(t_hor, q50, color="C0", lw=1.5, label="median")
        ax.plot(t_hor, windows.baseline[o, c], color="C3", lw=1, ls="--", label="seasonal naive")
        when = "" if windows.timestamps is None else f" ({np.datetime_as_string(windows.timestamps[o], unit='m')})"
        ax.set_title(f"{windows.names[c]}, origin row {int(windows.origins[o])}{when}", fontsize=9)
        ax.axvline(-0.5, color="0.7", lw=0.8)
    axes[0].legend(fontsize=7, ncol=3, loc="upper left")
    axes[-1].set_xlabel("steps from the forecast origin")
    return _save(fig, Path(out_dir) / FAN_FILE)


def calibration_plot(calib: dict, out_dir) -> Path:
    """Observed coverage of central intervals vs their nominal width (the diagonal = calibrated).

    calib: {"nominal": [...], "observed": [...]} as in the evaluation report.
    """
    fig = _figure(figsize=(4.2, 4.2))
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], color="0.6", lw=1, ls="--", label="calibrated")
    ax.plot(calib["nominal"], calib["observed"], "o-", color="C0", label="model")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("nominal central-interval coverage")
    ax.set_ylabel("observed coverage")
    ax.legend(fontsize=8, loc="upper left")
    return _save(fig, Path(out_dir) / CALIBRATION_FILE)


_STYLE = {"torch-full": ("C3", "s"), "runtime-full": ("C0", "o"), "runtime-dil": ("C2", "D"),
          "reference-ddpm1000": ("k", "*")}


def pareto(points) -> list:
    """The (latency, crps) points no other point beats on both, by increasing latency."""
    front, best = [], float("inf")
    for lat, crps in sorted(points):
        if crps < best:
            front.append((lat, crps))
            best = crps
    return front


def _log_axis(ax, xs) -> None:
    """Log x axis spanning at least a decade around xs, so that it always carries labelled ticks."""
    from matplotlib.ticker import NullFormatter

    ax.set_xscale("log")
    lo, hi = min(xs), max(xs)
    mid, half = np.sqrt(lo * hi), max(np.sqrt(hi / lo) * 1.6, np.sqrt(10.0))
    ax.set_xlim(mid / half, mid * half)
    ax.xaxis.set_minor_formatter(NullFormatter())


def frontier_plot(report: dict, path) -> Path:
    """CRPS vs latency per forecast (log scale), one panel per batch shape of a dil-bench report:
    a line per sampler through its step counts (labelled), the Pareto frontier in grey."""
    runs = [r for r in report["runs"] if r.get("crps") is not None]
    shapes = sorted({(r["series"], r["samples"]) for r in runs}) or [(1, 0)]
    fig = _figure(figsize=(5.2 * len(shapes), 4.2))
    axes = fig.subplots(1, len(shapes), squeeze=False)[0]
    for ax, (g, n) in zip(axes, shapes):
        here = [r for r in runs if (r["series"], r["samples"]) == (g, n)]
        for name in dict.fromkeys(r["name"] for r in here):
            rs = sorted((r for r in here if r["name"] == name), key=lambda r: r["steps"])
            color, marker = _STYLE.get(name, ("C4", "^"))
            xs, ys = [r["latency_s_median"] for r in rs], [r["crps"] for r in rs]
            ax.plot(xs, ys, marker=marker, color=color, lw=1.2, ms=7 if marker == "*" else 5, label=name)
            for r in rs:
                ax.annotate(str(r["steps"]), (r["latency_s_median"], r["crps"]), fontsize=7,
                            textcoords="offset points", xytext=(4, 4), color=color)
        front = pareto([(r["latency_s_median"], r["crps"]) for r in here])
        if len(front) > 1:
            ax.step(*zip(*front), where="post", color="0.6", lw=2, alpha=0.5, zorder=0, label="frontier")
        _log_axis(ax, [r["latency_s_median"] for r in here])
        ys = [r["crps"] for r in here]
        if max(ys) - min(ys) < 0.02 * max(ys):  # nearly equal CRPS: show it on a +-1% scale, not as noise
            mid = 0.5 * (max(ys) + min(ys))
            ax.set_ylim(mid * 0.99, mid * 1.01)
        ax.ticklabel_format(axis="y", useOffset=False)
        ax.set_xlabel("latency per forecast, s (median)")
        ax.set_ylabel("CRPS")
        ax.set_title(f"{g} series x {n} samples", fontsize=10)
        ax.legend(fontsize=7)
    p = report.get("protocol", {})
    fig.suptitle(f"{p.get('dataset', '')}: CRPS on {p.get('crps_windows', '?')} test windows vs latency"
                 f" ({p.get('threads', '?')} threads; labels = steps)", fontsize=10)
    return _save(fig, Path(path))
