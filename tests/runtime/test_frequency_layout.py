"""The horizon's spectral layout (dil.runtime.model.frequency, docs/frequency.md): exact round trip,
Parseval with the noise gains, hand-worked small horizons, numpy.fft, core tokens and the record."""

import numpy as np
import pytest

from dil.runtime.model import frequency as sp


@pytest.mark.parametrize("H", [2, 3, 4, 5, 24, 25, 96, 97])
def test_round_trip_exact_in_float64(H):
    x = np.random.default_rng(H).standard_normal((3, 7, H)) * 10.0
    assert np.max(np.abs(sp.from_spectrum(sp.to_spectrum(x)) - x)) < 1e-12
    y = np.random.default_rng(H + 1).standard_normal((5, H))
    assert np.max(np.abs(sp.to_spectrum(sp.from_spectrum(y)) - y)) < 1e-12


def test_axis_argument_moves_the_horizon():
    x = np.random.default_rng(0).standard_normal((2, 6, 3))  # horizon on axis 1
    y = sp.to_spectrum(x, axis=1)
    assert np.allclose(y, np.moveaxis(sp.to_spectrum(np.moveaxis(x, 1, -1)), -1, 1), atol=0, rtol=0)
    assert np.max(np.abs(sp.from_spectrum(y, axis=1) - x)) < 1e-12


def test_hand_worked_h4():
    a, b, c, d = 1.0, 2.0, -3.0, 5.0
    # X_k = (1/2) sum x_t exp(-2 pi i k t / 4): X0 = sum/2, X1 = ((a - c) + i (d - b))/2, X2 = (a - b + c - d)/2
    want = [(a + b + c + d) / 2, (a - c) / 2, (a - b + c - d) / 2, (d - b) / 2]
    assert np.allclose(sp.to_spectrum([a, b, c, d]), want, atol=1e-15)
    assert list(sp.token_frequency(4)) == [0, 1, 2, 1]
    assert np.allclose(sp.noise_gains(4), [1, 2 ** -0.5, 1, 2 ** -0.5])


def test_hand_worked_h5():
    # a unit impulse at t = 1: Re X_k = cos(2 pi k / 5) / sqrt 5, Im X_k = -sin(2 pi k / 5) / sqrt 5
    r5 = np.sqrt(5.0)
    cos1, cos2 = (r5 - 1) / 4, -(r5 + 1) / 4
    sin1, sin2 = np.sqrt(10 + 2 * r5) / 4, np.sqrt(10 - 2 * r5) / 4
    want = np.array([1.0, cos1, cos2, -sin1, -sin2]) / r5
    assert np.allclose(sp.to_spectrum([0.0, 1.0, 0.0, 0.0, 0.0]), want, atol=1e-15)
    assert list(sp.token_frequency(5)) == [0, 1, 2, 1, 2]
    assert np.allclose(sp.noise_gains(5), [1] + [2 ** -0.5] * 4)


@pytest.mark.parametrize("H", [6, 7])
def test_against_numpy_fft(H):
    x = np.random.default_rng(3).standard_normal(H)
    X = np.fft.fft(x) / np.sqrt(H)  # the full orthonormal DFT
    F = H // 2
    y = sp.to_spectrum(x)
    assert np.allclose(y[: F + 1], X[: F + 1].real, atol=1e-14)
    assert np.allclose(y[F + 1 :], X[1 : H - F].imag, atol=1e-14)


@pytest.mark.parametrize("H", [8, 9])
def test_parseval_and_white_noise_variance(H):
    x = np.random.default_rng(H).standard_normal((200_000, H))
    y = sp.to_spectrum(x)
    G = sp.noise_gains(H)
    # Parseval with the gains: exact per row
    assert np.allclose(np.sum((y / G) ** 2, axis=-1), np.sum(x * x, axis=-1), rtol=1e-12)
    # white unit time noise has variance G_i^2 on coordinate i (and the coordinates are uncorrelated)
    cov = np.cov(y.T)
    assert np.allclose(np.diag(cov), G ** 2, atol=0.01)
    assert np.max(np.abs(cov - np.diag(np.diag(cov)))) < 0.01
    # so G * white spectral noise, mapped back, is white unit time noise
    back = sp.from_spectrum(G * np.random.default_rng(1).standard_normal((200_000, H)))
    assert np.allclose(np.cov(back.T), np.eye(H), atol=0.01)


def test_core_tokens_and_energy_shares():
    assert list(sp.core_tokens(8, 3)) == [0, 1, 2, 5, 6]  # freq 0, 1, 2 (re), 1, 2 (im)
    assert list(sp.core_tokens(5, 5)) == [0, 1, 2, 3, 4]
    assert list(sp.core_tokens(6, 1)) == [0]
    y = sp.to_spectrum(np.array([[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]))
    shares = sp.energy_shares(y)
    # an impulse spreads its energy evenly over the 4 frequency-bin energies: DC 1/4, Nyquist 1/4, bin 1 1/2
    assert np.allclose(shares[0], [0.25, 0.5, 0.25, 0.0]) and np.all(shares[1] == 0)


def test_clip_bound_holds_every_bounded_signal():
    H, c = 24, 3.0
    x = np.random.default_rng(0).choice([-c, c], size=(5000, H))  # on the corners of the time box
    assert np.all(np.abs(sp.to_spectrum(x)) <= sp.clip_bound(c, H) + 1e-12)
    assert sp.clip_bound(0.0, H) == 0.0


def test_layout_record_check():
    rec = sp.layout_record(24)
    sp.check_layout(dict(rec), 24, "manifest m.json")
    with pytest.raises(sp.LayoutError, match="m.json.*needs the 'spectral_layout' record"):
        sp.check_layout(None, 24, "manifest m.json")
    with pytest.raises(sp.LayoutError, match="horizon 25"):
        sp.check_layout(rec, 25, "manifest m.json")
    with pytest.raises(sp.LayoutError, match="'other'"):
        sp.check_layout(dict(rec, name="other"), 24, "manifest m.json")


def test_domain_check():
    assert sp.check_domain("time", 1) == "time"
    with pytest.raises(ValueError, match="--domain must be time or frequency"):
        sp.check_domain("wavelet")
    with pytest.raises(ValueError, match="--domain frequency needs a horizon of at least 2"):
        sp.check_domain("frequency", 1)
