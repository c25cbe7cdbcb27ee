"""The horizon's spectral layout (docs/frequency.md), written again in torch for the reference
samplers: torch.fft instead of the runtime's numpy.fft, the gains and core tokens from their
definitions, so that the runtime's frequency domain is checked against a second implementation.

Layout of H real values: positions 0 .. F = H // 2 hold Re X_k (k = 0 .. F), the positions after
them Im X_k (k = 1 .. ceil(H/2) - 1), X = rfft(x, norm="ortho").
"""

from __future__ import annotations

import math

import torch


def is_frequency(model) -> bool:
    """True for a frequency-domain model (ModelConfig.domain; absent = time)."""
    return getattr(model.config, "domain", "time") == "frequency"


def frequencies(H: int) -> torch.Tensor:
    """int64 [H]: the frequency each position carries."""
    i = torch.arange(H)
    return torch.where(i <= H // 2, i, i - H // 2)


def gains(H: int) -> torch.Tensor:
    """float64 [H]: the standard deviation of white unit time noise on each position."""
    k = frequencies(H)
    lone = (k == 0) | (2 * k == H)
    return torch.where(lone, torch.ones(H, dtype=torch.float64), torch.full((H,), math.sqrt(0.5), dtype=torch.float64))


def core_mask(K: int, H: int) -> torch.Tensor:
    """bool [H]: the positions of frequencies 0 .. K-1 (both coordinates of each)."""
    return frequencies(H) < int(K)


def to_spectrum(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """float64: the H spectral coordinates of x (float64, horizon on `dim`)."""
    x = x.to(torch.float64).movedim(dim, -1)
    H = x.shape[-1]
    X = torch.fft.rfft(x, dim=-1, norm="ortho")
    y = torch.cat([X.real, X.imag[..., 1 : (H + 1) // 2]], dim=-1)
    return y.movedim(-1, dim)


def from_spectrum(y: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """float64 time values of H spectral coordinates (horizon on `dim`)."""
    y = y.to(torch.float64).movedim(dim, -1)
    H = y.shape[-1]
    F = H // 2
    imag = torch.zeros(y.shape[:-1] + (F + 1,), dtype=torch.float64)
    imag[..., 1 : (H + 1) // 2] = y[..., F + 1 :]
    x = torch.fft.irfft(torch.complex(y[..., : F + 1], imag), n=H, dim=-1, norm="ortho")
    return x.movedim(-1, dim)


def clip_bound(x0_clip: float, H: int):
    """The per-position bound |y_i| <= G_i x0_clip sqrt(H) implied by a time clip (0.0: off)."""
    return gains(H) * (float(x0_clip) * math.sqrt(H)) if x0_clip else 0.0
