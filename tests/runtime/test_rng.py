"""The per-series random streams (runtime/sampling/rng.py): one object, seeds checked, keys normalised once,
and draws that split into consecutive blocks of samples without changing a value."""

from __future__ import annotations

import zlib

import numpy as np
import pytest

from dil.runtime.sampling.rng import SeriesStreams, series_key, series_stream

H, M = 4, 5


@pytest.mark.parametrize("seed", [-1, 2**63, True, 1.5, "3"])
def test_seed_is_checked_once_with_a_one_line_error(seed):
    with pytest.raises(ValueError, match=r"seed must be an integer in \[0, 9223372036854775807\]"):
        SeriesStreams(seed, [0])


def test_keys_are_normalised_in_one_place():
    streams = SeriesStreams(np.int64(3), ["north", -3, 7, np.int64(2)])
    want = (zlib.crc32(b"north"), zlib.crc32(b"-3"), 7, 2)  # names and negative ints: CRC-32 of the text
    assert streams.keys == want and streams.seed == 3 and len(streams) == 4
    assert [series_key(k) for k in streams.keys] == list(want)  # normalising again changes nothing
    assert streams.subset([3, 0]).keys == (2, want[0]) and streams.subset(slice(1, 3)).keys == want[1:3]


def test_initial_noise_is_each_series_noise_stream_in_any_blocks():
    streams = SeriesStreams(9, [3, 5])
    x_T = streams.initial_noise(6, H)
    for g, key in enumerate((3, 5)):
        np.testing.assert_array_equal(x_T[g], series_stream(9, key, "noise").standard_normal((6, H)))
    np.testing.assert_array_equal(streams.from_sample(2).initial_noise(4, H), x_T[:, 2:])
    np.testing.assert_array_equal(streams.subset([1]).initial_noise(6, H), x_T[1:])


def test_control_uniforms_of_consecutive_blocks_are_the_next_draws():
    streams = SeriesStreams(7, [11, 4])
    first, later = streams.control_uniforms(M, 3, H), streams.from_sample(3).control_uniforms(M, 2, H)
    assert first.shape == (2, M - 1, 2, 3, H) and later.shape == (2, M - 1, 2, 2, H)
    for g, key in enumerate((11, 4)):
        raw = series_stream(7, key, "control").random((M - 1) * 2 * 5 * H) + 2.0**-54
        np.testing.assert_array_equal(first[g].ravel(), raw[: (M - 1) * 2 * 3 * H])
        np.testing.assert_array_equal(later[g].ravel(), raw[(M - 1) * 2 * 3 * H:])
    assert streams.control_uniforms(1, 3, H).shape == (2, 0, 2, 3, H)  # one step: no choice to make
