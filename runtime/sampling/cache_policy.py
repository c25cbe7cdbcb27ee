"""The E2-CRF refresh policy (exact rules in docs/sampler.md sections 4, 6 and 7).

E2-CRF (error-feedback, event-driven token caching) decides per row and token whether the network
recomputes it this step or the sampler reuses its cached x0_hat. A token is recomputed when

    core        it is one of K low-frequency skeleton tokens (centres of K equal segments);
    staleness   it was reused max_age consecutive steps already;
    change      its noisy input moved, relative to the row's scale, by more than
                tau[g] / (energy_eps + e), e its relative energy (high energy refreshes sooner);
    priority    the lattice gave it top refresh priority;
    probe       it was drawn as a random probe among the remaining tokens.

A series' step is computed in full at warm-up, every R steps, after an event (the core's relative
change above tau_warn) or a probe warning, and when its selection is so large that the call would
cost about a full one. Probes close the loop: their median relative error tightens or relaxes
tau[g]. All functions are float64 NumPy, vectorised over series, rows and tokens; the arrays these
rules read live in the sampler's TokenCache (token_cache.py).
"""

from __future__ import annotations

import numpy as np

from dil.runtime.sampling.lattice import ceil_eps

TIGHTEN = 0.7  # tau[g] *= TIGHTEN when the probe error is above target
RELAX = 1.05  # tau[g] *= RELAX otherwise (slowly)
TAU_RANGE = (0.5, 10.0)  # tau[g] stays within these multiples of tau_0
REL_FLOOR = 1e-8  # denominators of relative changes and errors


def core_positions(horizon: int, K: int) -> np.ndarray:
    """int64 [min(K, H)]: floor((2j+1) H / (2K')), the centres of K' equal horizon segments."""
    k = min(int(K), int(horizon))
    j = np.arange(k, dtype=np.int64)
    return (2 * j + 1) * int(horizon) // (2 * k) if k else j


def interpolation_weights(core: np.ndarray, horizon: int) -> np.ndarray:
    """float64 [K, H]: values at the core positions -> their piecewise-linear interpolation over the
    horizon (constant beyond the first and last core token), as a matrix: interp = values @ W."""
    eye = np.eye(len(core))
    return np.stack([np.interp(np.arange(horizon), core, eye[k]) for k in range(len(core))]) if len(core) else np.zeros((0, horizon))


def rms_rows(a: np.ndarray) -> np.ndarray:
    """sqrt(mean_h a^2) per row, [G, N, 1]."""
    return np.sqrt(np.mean(a * a, axis=-1, keepdims=True))


def change_trigger(x: np.ndarray, x_in: np.ndarray, x0_hat: np.ndarray, tau: np.ndarray,
                   energy_eps: float):
    """(trigger bool [G, N, H], margin float64 [G, 1, H]): tokens whose relative input change is
    above the energy-weighted threshold, decided per series and token so that all rows of a series
    refresh the same tokens (a series' call costs its busiest row: per-row triggers would pad).

    x: current noisy horizon, x_in: input when the token was last computed, x0_hat: its cached data
    prediction (all [G, N, H]); tau: float64 [G], the series' current tau. Per row and token,
    delta = |x - x_in| / (rms_row(x) + 1e-8) and threshold = tau / (energy_eps + e), e the token's
    share of its row's x0_hat energy (shares of a row sum to 1); the series triggers token h when
    mean_n delta > mean_n threshold; margin = mean_n delta - mean_n threshold.
    """
    delta = np.abs(x - x_in) / (rms_rows(x) + REL_FLOOR)
    energy = x0_hat * x0_hat / (np.sum(x0_hat * x0_hat, axis=-1, keepdims=True) + 1e-12)
    threshold = tau[:, None, None] / (energy_eps + energy)
    margin = delta.mean(axis=1, keepdims=True) - threshold.mean(axis=1, keepdims=True)
    return np.broadcast_to(margin > 0, x.shape), margin


def draw_probes(candidates: np.ndarray, U2: np.ndarray, ratio: float) -> np.ndarray:
    """bool [G, N, H]: per row, the p = min(n_c, ceil_eps(ratio * n_c)) candidates with the smallest
    U2 (ties: lower position); n_c = the row's candidate count."""
    n_c = candidates.sum(axis=-1)
    p = np.minimum(n_c, ceil_eps(ratio * n_c))
    keyed = np.where(candidates, U2, 2.0)
    rank = np.empty(keyed.shape, dtype=np.int64)
    np.put_along_axis(rank, np.argsort(keyed, axis=-1, kind="stable"), np.arange(keyed.shape[-1]), axis=-1)
    return candidates & (rank < p[..., None])


def fill_stalest(chosen: np.ndarray, age: np.ndarray, target: np.ndarray) -> np.ndarray:
    """bool [G, N, H]: chosen plus, per row, its stalest other tokens (largest age, ties: lower
    position) until the row computes target[g] tokens (the series' S_g, paid for anyway)."""
    G, N, H = chosen.shape
    key = np.where(chosen, -1, age.astype(np.int64) * (H + 1) + (H - 1 - np.arange(H)))  # larger = sooner
    rank = np.empty(key.shape, dtype=np.int64)
    np.put_along_axis(rank, np.argsort(-key, axis=-1, kind="stable"), np.arange(H), axis=-1)
    extra = target[:, None] - chosen.sum(axis=-1)  # [G, N]
    return chosen | (~chosen & (rank < extra[..., None]))


def subset_size(count: np.ndarray, bucket: int, horizon: int) -> np.ndarray:
    """int64 [G]: S_g = min(H, bucket * ceil(max_n count[g, n] / bucket)) for counts [G, N]."""
    need = count.max(axis=1)
    return np.minimum(horizon, -(-need // bucket) * bucket)


def probe_error(x0_new: np.ndarray, x0_old: np.ndarray, probes: np.ndarray) -> np.ndarray:
    """float64 [G]: median over a series' probe tokens of |new - old| / (rms_row(new) + 1e-8);
    NaN for a series without probes."""
    rel = np.abs(x0_new - x0_old) / (rms_rows(x0_new) + REL_FLOOR)
    ordered = np.sort(np.where(probes, rel, np.inf).reshape(rel.shape[0], -1), axis=1)  # probes first
    count = probes.reshape(rel.shape[0], -1).sum(axis=1)
    lo = np.take_along_axis(ordered, np.maximum((count - 1) // 2, 0)[:, None], axis=1)[:, 0]
    hi = np.take_along_axis(ordered, (count // 2)[:, None], axis=1)[:, 0] if ordered.shape[1] else lo
    with np.errstate(invalid="ignore"):
        return np.where(count > 0, 0.5 * (lo + hi), np.nan)  # numpy.median: mean of the middle two


def feedback(tau: np.ndarray, error: np.ndarray, tau_0: float, target: float) -> np.ndarray:
    """Closed-loop tau update per series: tighten when the probe error is above target, relax slowly
    otherwise, within TAU_RANGE * tau_0; series without probes (NaN) keep tau."""
    has = ~np.isnan(error)
    new = np.where(error > target, tau * TIGHTEN, tau * RELAX)
    new = np.clip(new, TAU_RANGE[0] * tau_0, TAU_RANGE[1] * tau_0)
    return np.where(has, new, tau)


def event_intensity(x0_new: np.ndarray, x0_prev: np.ndarray, core: np.ndarray) -> np.ndarray:
    """float64 [G]: ||new - prev||_F / (||prev||_F + 1e-8) over a series' rows and core tokens."""
    if core.size == 0:
        return np.zeros(x0_new.shape[0])
    a, b = x0_new[:, :, core], x0_prev[:, :, core]
    num = np.sqrt(((a - b) ** 2).sum(axis=(1, 2)))
    return num / (np.sqrt((b * b).sum(axis=(1, 2))) + REL_FLOOR)
