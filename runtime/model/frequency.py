"""The frequency domain of a horizon: its orthonormal real DFT in H real coordinates (docs/frequency.md).

The single source of truth for training, export, the runtime and the references.

Layout of a horizon x of H real values, X = rfft(x, norm="ortho"), F = floor(H / 2):

    position i = 0 .. F            Re X_i
    position i = F+1 .. H-1        Im X_(i-F)          (frequencies 1 .. ceil(H/2) - 1)

Im X_0 (and Im X_(H/2) for even H) are always 0 and are not stored, so the layout has exactly H
coordinates and the map is an orthogonal change of basis up to the per-coordinate gains G:
white time noise of variance 1 has variance G_i^2 on coordinate i, with G_i = 1 on DC (and Nyquist
for even H) and 1/sqrt(2) elsewhere; Parseval reads sum_t x_t^2 = sum_i (y_i / G_i)^2.

Everything is float64 NumPy and vectorised over leading axes (`axis` picks the horizon axis).
"""

from __future__ import annotations

import numpy as np

DOMAINS = ("time", "frequency")
LAYOUT_NAME = "rfft-ortho-re-im"
# The manifest key of the layout record of a frequency-domain artifact.
LAYOUT_KEY = "spectral_layout"


class LayoutError(ValueError):
    """A frequency-domain record is missing or does not describe this module's layout."""


def check_domain(domain, horizon: int | None = None) -> str:
    """domain itself when it is "time" or "frequency" (and the horizon has a spectrum); else
    ValueError naming --domain."""
    if domain not in DOMAINS:
        raise ValueError(f"--domain must be time or frequency, got {domain!r}")
    if domain == "frequency" and horizon is not None and int(horizon) < 2:
        raise ValueError(f"--domain frequency needs a horizon of at least 2 steps (a horizon of {horizon} "
                         f"has no spectrum beyond its mean); use --domain time")
    return domain


def _split(H: int) -> tuple[int, int]:
    """(F + 1 real parts, the imaginary parts stored): floor(H/2) + 1 and ceil(H/2) - 1."""
    return H // 2 + 1, (H + 1) // 2 - 1


def to_spectrum(x, axis: int = -1) -> np.ndarray:
    """float64 array of x's shape: the H real coordinates of x's orthonormal rfft along `axis`."""
    x = np.moveaxis(np.asarray(x, dtype=np.float64), axis, -1)
    _, n_im = _split(x.shape[-1])
    X = np.fft.rfft(x, axis=-1, norm="ortho")
    y = np.concatenate([X.real, X.imag[..., 1 : 1 + n_im]], axis=-1)
    return np.moveaxis(y, -1, axis)


def from_spectrum(y, axis: int = -1) -> np.ndarray:
    """The inverse of to_spectrum: float64 time values from H spectral coordinates along `axis`."""
    y = np.moveaxis(np.asarray(y, dtype=np.float64), axis, -1)
    H = y.shape[-1]
    n_re, n_im = _split(H)
    X = y[..., :n_re].astype(np.complex128)
    X[..., 1 : 1 + n_im] += 1j * y[..., n_re:]
    x = np.fft.irfft(X, n=H, axis=-1, norm="ortho")
    return np.moveaxis(x, -1, axis)


def token_frequency(H: int) -> np.ndarray:
    """int64 [H]: the frequency k each coordinate carries (i for i <= F, i - F after)."""
    F = H // 2
    i = np.arange(H, dtype=np.int64)
    return np.where(i <= F, i, i - F)


def noise_gains(H: int) -> np.ndarray:
    """float64 [H]: G_i, the standard deviation on coordinate i of white unit time noise."""
    k = token_frequency(H)
    lone = (k == 0) | (2 * k == H)  # DC, and Nyquist for even H: no imaginary partner
    return np.where(lone, 1.0, np.sqrt(0.5))


def core_tokens(H: int, K: int) -> np.ndarray:
    """int64, ascending: the positions of frequencies 0 .. K-1 (both coordinates of each)."""
    return np.flatnonzero(token_frequency(H) < int(K)).astype(np.int64)


def energy_shares(y: np.ndarray) -> np.ndarray:
    """Each coordinate's share of its row's time-domain energy, (y_i / G_i)^2 / sum_j (y_j / G_j)^2
    (Parseval), float64 of y's shape (horizon on the last axis); rows of zeros give 0."""
    w = y * y / noise_gains(y.shape[-1]) ** 2
    return w / (np.sum(w, axis=-1, keepdims=True) + 1e-12)


def clip_bound(x0_clip: float, H: int):
    """The per-coordinate bound a time-domain clip |x_t| <= x0_clip implies (Parseval: the row's
    energy is at most H x0_clip^2, so |y_i| <= G_i x0_clip sqrt(H)); float64 [H], or 0.0 (off)."""
    return noise_gains(H) * (float(x0_clip) * np.sqrt(H)) if x0_clip else 0.0


def layout_record(H: int) -> dict:
    """The manifest's description of the layout (checked by check_layout when an artifact loads)."""
    F = H // 2
    return {
        "name": LAYOUT_NAME,
        "horizon": int(H),
        "transform": "rfft(x, norm='ortho')",
        "real_positions": [0, F],
        "imag_positions": [F + 1, H - 1] if H - 1 > F else [],
        "imag_frequencies": [1, (H + 1) // 2 - 1] if H - 1 > F else [],
        "noise_gains": "1 on DC (and Nyquist for even H), 1/sqrt(2) elsewhere",
    }


def check_layout(record, H: int, where: str) -> None:
    """LayoutError (one line, naming `where`) unless record is layout_record(H)."""
    if record is None:
        raise LayoutError(f"{where}: a frequency-domain model needs the '{LAYOUT_KEY}' record (re-export with dil-export)")
    want = layout_record(H)
    if not isinstance(record, dict) or any(record.get(k) != v for k, v in want.items()):
        got = record.get("name") if isinstance(record, dict) else record
        raise LayoutError(f"{where}: '{LAYOUT_KEY}' does not describe the layout {LAYOUT_NAME} of horizon {H} "
                          f"(got {got!r}); re-export with dil-export")
