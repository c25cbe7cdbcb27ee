"""What the score network predicts, and how its output becomes the data and noise predictions
(docs/model.md section 2.2). The one definition used by training, the runtime and the references.

The schedule is variance preserving: alpha^2 + sigma^2 = 1, x = alpha x0 + sigma eps.

    epsilon:  out = eps                      x0 = (x - sigma out) / alpha,  eps = out
    v:        out = v = alpha eps - sigma x0  x0 = alpha x - sigma out,     eps = sigma x + alpha out

Why v: the epsilon form divides by alpha, so an output error e becomes an x0 error of
e sigma / alpha (about 157 e at the first step of the shipped schedule); the v form's x0 error is
e sigma, never larger than e (benchmarks/x0_error.py, tests/runtime/test_parametrisation.py).

The functions use only + - * /, so the same code runs on NumPy arrays (float64 in the runtime) and
on torch tensors (the trainer and the PyTorch reference samplers); alpha and sigma may be scalars or
arrays that broadcast against x.
"""

from __future__ import annotations

import numpy as np

# Defined beside ModelConfig (which validates it and may not import the sampling package); this is
# the same tuple.
from dil.runtime.model.config import PREDICTIONS

__all__ = ["PREDICTIONS", "clip_x0", "to_x0", "to_x0_eps", "training_target"]


def _check(prediction: str) -> None:
    if prediction not in PREDICTIONS:
        raise ValueError(f"prediction must be one of {', '.join(PREDICTIONS)}, got {prediction!r}")


def to_x0(out, x, alpha, sigma, prediction: str):
    """x0: the data prediction of network output `out` at the noisy value `x` (to_x0_eps's first
    result, computed alone: the plain sampler reads no eps)."""
    _check(prediction)
    if prediction == "epsilon":
        return (x - sigma * out) / alpha
    return alpha * x - sigma * out


def to_x0_eps(out, x, alpha, sigma, prediction: str):
    """(x0, eps): the data and noise predictions of network output `out` at the noisy value `x`.

    out, x: arrays or tensors of one shape (e.g. [G, N, H]); alpha, sigma: the noise level
    (scalars or broadcastable). The runtime passes float64 arrays.
    """
    x0 = to_x0(out, x, alpha, sigma, prediction)
    return (x0, out) if prediction == "epsilon" else (x0, sigma * x + alpha * out)


def training_target(x0, eps, alpha, sigma, prediction: str):
    """What the network is trained to output for clean value x0 noised with eps at (alpha, sigma):
    eps (epsilon) or v = alpha eps - sigma x0."""
    _check(prediction)
    if prediction == "epsilon":
        return eps
    return alpha * eps - sigma * x0


def clip_x0(x0_hat: np.ndarray, x0_clip) -> np.ndarray:
    """The data-prediction guard (docs/sampler.md section 2): x0_hat clipped to [-x0_clip, x0_clip]
    on the standardised scale; x0_clip = 0 returns x0_hat itself (off, bit for bit). x0_clip may be
    a float64 [H] array of per-coordinate bounds (a frequency-domain model's, frequency.clip_bound).

    Why: an epsilon network's data prediction (x - sigma eps) / alpha carries the network's eps
    error times sigma / alpha, about 160 at the first step of the shipped schedule, so that a small
    eps error puts x0_hat tens of context standard deviations out; the solver then writes it into
    x and later steps follow it (benchmarks/x0_error.py). A v network's x0 error is its output
    error times sigma (parametrisation.py); the guard stays as a bound on what the sampler writes.
    """
    return np.clip(x0_hat, -x0_clip, x0_clip) if np.any(x0_clip) else x0_hat
