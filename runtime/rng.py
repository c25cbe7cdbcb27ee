"""Seeded random streams, one per series (DESIGN section 6).

A series' stream is derived from (seed, series key, purpose) alone, so its forecast does not depend
on which other series share the batch or in which order.
"""

from __future__ import annotations

import zlib

import numpy as np

PURPOSES = {"noise": 0, "control": 1}


def series_key(name) -> int:
    """A stable non-negative integer key for a series name (int kept, str hashed with CRC-32)."""
    if isinstance(name, (int, np.integer)):
        if name < 0:
            raise ValueError("series keys must be non-negative")
        return int(name)
    return zlib.crc32(str(name).encode("utf-8"))


def series_stream(seed: int, key: int, purpose: str = "noise") -> np.random.Generator:
    """Generator(PCG64) for one series and purpose ('noise': initial x_T and any sampler noise;
    'control': the controller's seeded choices)."""
    ss = np.random.SeedSequence(entropy=int(seed), spawn_key=(int(key), PURPOSES[purpose]))
    return np.random.Generator(np.random.PCG64(ss))


def initial_noise(seed: int, keys, num_samples: int, horizon: int) -> np.ndarray:
    """x_T ~ N(0, I): float64 [G, N, H], row g drawn from series_stream(seed, keys[g], 'noise')."""
    return np.stack(
        [series_stream(seed, k, "noise").standard_normal((num_samples, horizon)) for k in keys]
    )
