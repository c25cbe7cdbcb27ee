"""Seeded random streams, one per series (docs/model.md section 5.2; docs/sampler.md section 3).

A series' stream is derived from (seed, series key, purpose) alone, so its forecast does not depend
on which other series share the batch or in which order. `SeriesStreams` is the one object a
forecast passes around: the seed and the G normalised series keys, with the two draws the sampler
needs (the initial noise x_T and the controller's uniforms).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, replace

import numpy as np

PURPOSES = {"noise": 0, "control": 1}
MAX_SEED = 2**63 - 1
_SKIP_ROWS = 4096  # rows of noise drawn at a time when skipping to a later sample


def series_key(name) -> int:
    """A stable non-negative integer key for a series name: a non-negative int is its own key,
    anything else (text, a negative int, ...) the CRC-32 of its text."""
    if isinstance(name, (int, np.integer)) and name >= 0:
        return int(name)
    return zlib.crc32(str(name).encode("utf-8"))


def series_stream(seed: int, key: int, purpose: str) -> np.random.Generator:
    """Generator(PCG64) for one series and purpose ('noise': initial x_T and any sampler noise;
    'control': the controller's seeded choices)."""
    ss = np.random.SeedSequence(entropy=int(seed), spawn_key=(int(key), PURPOSES[purpose]))
    return np.random.Generator(np.random.PCG64(ss))


@dataclass(frozen=True)
class SeriesStreams:
    """The random streams of G series in one forecast.

    seed: int in [0, 2**63 - 1]. keys: G series names or keys, normalised here (series_key) into a
    tuple of G non-negative ints. first_sample: where these streams start in each series' sequence
    of samples (0 for a whole forecast; a forecast run in blocks of samples gives block j the
    streams `from_sample(n_j)`, n_j = the samples before it, see docs/sampler.md section 3).
    """

    seed: int
    keys: tuple
    first_sample: int = 0

    def __post_init__(self):
        seed = self.seed
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed <= MAX_SEED:
            raise ValueError(f"seed must be an integer in [0, {MAX_SEED}], got {seed!r}")
        first = self.first_sample
        if isinstance(first, bool) or not isinstance(first, (int, np.integer)) or first < 0:
            raise ValueError(f"first_sample must be an integer >= 0, got {first!r}")
        object.__setattr__(self, "seed", int(seed))
        object.__setattr__(self, "first_sample", int(first))
        object.__setattr__(self, "keys", tuple(series_key(k) for k in self.keys))

    def __len__(self) -> int:
        return len(self.keys)

    def subset(self, rows) -> "SeriesStreams":
        """The streams of some of the series: rows is a slice or a sequence of indices."""
        keys = self.keys[rows] if isinstance(rows, slice) else tuple(self.keys[int(r)] for r in rows)
        return replace(self, keys=keys)

    def from_sample(self, first_sample: int) -> "SeriesStreams":
        """The same series' streams for the samples from `first_sample` on."""
        return replace(self, first_sample=first_sample)

    def initial_noise(self, num_samples: int, horizon: int) -> np.ndarray:
        """x_T ~ N(0, I): float64 [G, N, H]; row g holds samples first_sample .. first_sample + N - 1
        of series_stream(seed, keys[g], 'noise'), drawn (num_samples, horizon) in C order, so that
        any split of the samples into consecutive blocks draws the same values."""
        out = np.empty((len(self.keys), num_samples, horizon))
        for g, key in enumerate(self.keys):
            gen = series_stream(self.seed, key, "noise")
            # A normal draw uses a variable number of bits: earlier samples are drawn and dropped.
            for start in range(0, self.first_sample, _SKIP_ROWS):
                gen.standard_normal((min(_SKIP_ROWS, self.first_sample - start), horizon))
            out[g] = gen.standard_normal((num_samples, horizon))
        return out

    def control_uniforms(self, steps: int, num_samples: int, horizon: int) -> np.ndarray:
        """float64 [G, max(M-1, 0), 2, N, H] in (0, 1), M = steps: per series, the next
        (M-1) * 2 * N * H draws rng.random() + 2**-54 of series_stream(seed, key, 'control') after
        the first_sample * (M-1) * 2 * H draws of the samples before these, laid out (M-1, 2, N, H).
        [:, i-1, 0] feeds the selection's Gumbel noise at step i, [:, i-1, 1] the probe ranks."""
        shape = (max(steps - 1, 0), 2, num_samples, horizon)
        skip = self.first_sample * shape[0] * 2 * horizon
        out = np.empty((len(self.keys),) + shape)
        for g, key in enumerate(self.keys):
            gen = series_stream(self.seed, key, "control")
            gen.bit_generator.advance(skip)  # PCG64: one 64-bit step per float64 from random()
            out[g] = gen.random(shape)
        return out + 2.0**-54
