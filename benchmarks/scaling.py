"""How the per-window scale floor bounds the standardised training targets on the bundled datasets
(docs/model.md section 1.3): the table that chose SCALE_FLOOR_REL.

    python benchmarks/scaling.py                     # every bundled dataset, 20,000 windows each
    python benchmarks/scaling.py weather etth2

For each floor (a multiple of the series' train-part std) it prints, over sampled training windows
(context at least half observed, as the trainer draws them): the 99th percentile and the maximum of
the per-window root mean square of the standardised target, the share of windows whose mean square
exceeds 1e3 (a loss of that order), and how often the floor is larger than the window's own scale.
"""

from __future__ import annotations

import sys

import numpy as np

from dil.data.datasets import resolve
from dil.data.registry import DATASETS
from dil.data.windows import split_bounds, window_origins
from dil.runtime.inputs.scaling import context_scale, series_floor

FLOORS = (0.0, 0.01, 0.1, 0.3, 1.0)
WINDOWS = 20_000


def measure(name: str) -> list[str]:
    rng = np.random.default_rng(0)  # the same windows whatever else is measured
    spec, table = resolve(name)
    L, H = spec.context_length, spec.horizon
    a, b = split_bounds(spec, table.n_steps)["train"]
    v = table.values
    origins = window_origins(v.shape[0], L, H, a, b)
    C = v.shape[1]
    n = min(WINDOWS, origins.size * C)
    w, c = rng.integers(0, origins.size, n), rng.integers(0, C, n)
    x = v[origins[w][:, None] + np.arange(-L, H), c[:, None]]
    ctx, tgt = x[:, :L], x[:, L:]
    ok = (~np.isnan(ctx)).sum(1) >= 0.5 * L
    ctx, tgt, c = ctx[ok], tgt[ok], c[ok]
    own = context_scale(ctx)[1]
    std = series_floor(v[a:b], 1.0)
    lines = [f"{name}: {len(ctx)} training windows, context {L}, horizon {H}, {C} series"]
    for r in FLOORS:
        loc, s = context_scale(ctx, r * std[c] if r else None)
        y = (tgt - loc[:, None]) / s[:, None]
        with np.errstate(invalid="ignore"):
            rms = np.sqrt(np.nanmean(y ** 2, axis=1))
        rms = rms[np.isfinite(rms)]
        lines.append(f"  floor {r:>4} x std: rms p99 {np.percentile(rms, 99):9.3g}  max {rms.max():9.3g}  "
                     f"mean square > 1e3: {np.mean(rms > np.sqrt(1e3)):.5f}  floor binds: {np.mean(s > own):.3f}")
    return lines


def main(names) -> None:
    for name in names or list(DATASETS):
        print("\n".join(measure(name)))


if __name__ == "__main__":
    main(sys.argv[1:])
