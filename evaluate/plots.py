"""Evaluation figures: fan charts of a few test windows and a calibration curve (matplotlib, the
`plot` extra). Figures are built on matplotlib.figure.Figure (no pyplot state, no GUI backend) and
written atomically as PNG."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dil._atomic import atomic_path
from dil._deps import require
from dil.runtime.quantiles import sample_quantiles

FAN_FILE = "fan_charts.png"
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

    windows: dil.evaluate.harness.EvalWindows. context_shown: context steps drawn (default 3 H).
    """
    horizon = windows.targets.shape[-1]
    shown = min(windows.contexts.shape[-1], context_shown or 3 * horizon)
    picks = pick_windows(windows.valid, count)
    fig = _figure(figsize=(9, 2.4 * max(len(picks), 1)))
    axes = fig.subplots(max(len(picks), 1), 1, squeeze=False)[:, 0]
    t_ctx, t_hor = np.arange(-shown, 0), np.arange(horizon)
    for ax, (o, c) in zip(axes, picks):
        s = windows.samples[o, c]  # [N, H]
        q05, q25, q50, q75, q95 = sample_quantiles(s, axis=0, levels=np.array([0.05, 0.25, 0.5, 0.75, 0.95]))
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
