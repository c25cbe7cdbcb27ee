"""The lattice controller (exact rules in docs/sampler.md section 5).

Dynamic Information Lattices, made well-defined: per row (series g, sample n), a dyadic partition of
the H horizon tokens into active nodes (s, j) covering [j 2^s, min((j+1) 2^s, H)), stored per token
as `lvl[g, n, h]` = the scale of the node holding h (a node's tokens share it, its start is j 2^s,
so the nodes always partition the horizon). Each step, from signals the sampler already has:

    signals  score / solver / temporal per token, spectral per node (section 5.1)
    Hn       per node: per-row standardised components, weighted, squashed to (0, 1) (5.2)
    adapt    refine high-entropy nodes that differ from a neighbour, merge low siblings (5.3)
    select   budgeted, stratified, temperature-weighted Gumbel-top-k of nodes (5.4)
    orders   solver order from the instability u = Hn (1 - i / (M-1)) (5.5)

Everything is float64 NumPy, vectorised over series, rows and tokens; loops run over the
<= max_scales levels only. Per-step quantities are computed once (`ScaleTable`: prefix sums of the
token signals, spectral entropy of every block of every scale), then read through a partition.
"""

from __future__ import annotations

import numpy as np

STD_FLOOR = 1e-9  # standardisation: (v - mean) / max(std, STD_FLOOR)
TEMPORAL_WINDOW = 3  # temporal entropy: variance of the last W per-token changes
# Threshold guard (section 5.6): Hn, gaps and u must pass a threshold by more than this. With two
# active nodes Hn = 1/2 exactly in exact arithmetic whenever the weighted signs cancel; rounding
# would otherwise decide that tie against merge_threshold = 1/2 differently in every implementation.
TIE_EPS = 1e-9


def coarsest_scale(horizon: int, max_scales: int) -> int:
    """s_max = min(max_scales - 1, max(ceil(log2 H) - 1, 0)): the start scale of every row. The
    coarsest level has at least two nodes when H >= 2 (a lone node has no neighbour to differ from
    and standardises to 0, so it could never refine)."""
    return min(max_scales - 1, max((int(horizon) - 1).bit_length() - 1, 0))


def ceil_eps(a):
    """ceil(a - 1e-9): a count from a float product, immune to 0.07 * 100 = 7.000000000000001."""
    return np.ceil(np.asarray(a, dtype=np.float64) - 1e-9).astype(np.int64)


def _blocks(a: np.ndarray, s: int, fill) -> np.ndarray:
    """[..., H] -> [..., B, 2^s], the tokens of each scale-s block; positions >= H get `fill`
    ('edge': the row's last value)."""
    size = 1 << s
    H = a.shape[-1]
    pad = -H % size
    if pad:
        tail = a[..., -1:] if fill == "edge" else np.full(a.shape[:-1] + (1,), fill, dtype=a.dtype)
        a = np.concatenate([a, np.broadcast_to(tail, a.shape[:-1] + (pad,))], axis=-1)
    return a.reshape(a.shape[:-1] + (-1, size))


def _expand(per_block: np.ndarray, s: int, horizon: int) -> np.ndarray:
    """[..., B] -> [..., H]: each token gets the value of its scale-s block."""
    return np.repeat(per_block, 1 << s, axis=-1)[..., :horizon]


def node_geometry(lvl: np.ndarray):
    """(start, size) int64 [G, N, H] of the active node holding each token."""
    H = lvl.shape[-1]
    h = np.arange(H, dtype=np.int64)
    start = (h >> lvl) << lvl
    size = np.minimum(start + (np.int64(1) << lvl), H) - start
    return start, size


def token_signals(history: list) -> np.ndarray:
    """Per-token score, solver and temporal signals, float64 [3, G, N, H] (section 5.1).

    history: x0_hat arrays [G, N, H] after the latest steps, newest first (X0[i-1], X0[i-2], ...).
    """
    m0 = history[0]
    score = np.broadcast_to(m0.std(axis=1, keepdims=True), m0.shape)
    solver = np.abs(m0 - history[1]) if len(history) >= 2 else np.zeros_like(m0)
    changes = [history[j] - history[j + 1] for j in range(min(TEMPORAL_WINDOW, len(history) - 1))]
    temporal = np.var(np.stack(changes), axis=0) if len(changes) >= 2 else np.zeros_like(m0)
    return np.stack([score, solver, temporal])


_DFT: dict = {}


def _dft_matrix(size: int) -> np.ndarray:
    """float64 [size, size]: columns cos then sin of the real DFT bins 1 .. size/2 (DC dropped)."""
    if size not in _DFT:
        t = np.arange(size)[:, None]
        k = np.arange(1, size // 2 + 1)[None, :]
        angle = 2.0 * np.pi * ((t * k) % size) / size
        _DFT[size] = np.concatenate([np.cos(angle), np.sin(angle)], axis=1)
    return _DFT[size]


def spectral_entropy(x0: np.ndarray, s: int) -> np.ndarray:
    """Normalised spectral entropy of every scale-s block of x0 [G, N, H] -> [G, N, B] (s >= 2;
    0 for s <= 1). Blocks past the horizon repeat the row's last value; the DC bin is dropped."""
    if s <= 1:
        return np.zeros(x0.shape[:-1] + (-(-x0.shape[-1] // (1 << s)),))
    v = _blocks(x0, s, "edge")
    v = v - v.mean(axis=-1, keepdims=True)
    size = 1 << s
    proj = (v.reshape(-1, size) @ _dft_matrix(size)).reshape(v.shape[:-1] + (size,))  # one BLAS call
    power = proj[..., : size // 2] ** 2 + proj[..., size // 2 :] ** 2  # |rfft(v)_k|^2, k = 1 .. size/2
    total = power.sum(axis=-1, keepdims=True)
    flat = total[..., 0] <= 1e-30
    p = power / np.where(total > 1e-30, total, 1.0)
    plogp = p * np.log(np.where(p > 0, p, 1.0))
    ent = -plogp.sum(axis=-1) / np.log(power.shape[-1])
    return np.where(flat, 0.0, ent)


class ScaleTable:
    """Node values of the four measured components (score, solver, temporal, spectral), readable
    for any partition. Built once per step: prefix sums of the token signals (a node's mean is a
    difference of two prefix sums) and the spectral entropy of every block of every scale >= 2."""

    def __init__(self, history: list, s_max: int):
        signals = token_signals(history)
        self.horizon = H = signals.shape[-1]
        self.cumsum = np.concatenate([np.zeros(signals.shape[:-1] + (1,)), np.cumsum(signals, axis=-1)], axis=-1)
        self.spectral = {s: _expand(spectral_entropy(history[0], s), s, H) for s in range(2, s_max + 1)}

    def read(self, lvl: np.ndarray, start: np.ndarray, size: np.ndarray) -> np.ndarray:
        """float64 [4, G, N, H]: each token's active-node component values under partition lvl
        (start, size: node_geometry(lvl))."""
        # flat gathers from the prefix sums [3, G, N, H + 1]: row (c, g, n), column start (+ size)
        C, G, N, width = self.cumsum.shape
        rows = (np.arange(C * G * N) * width).reshape(C, G, N, 1)
        flat = self.cumsum.reshape(-1)
        lo = flat[rows + start]
        hi = flat[rows + start + size]
        spectral = np.zeros(start.shape)
        for s, values in self.spectral.items():
            spectral = np.where(lvl == s, values, spectral)
        return np.concatenate([(hi - lo) / size, spectral[None]])


def node_entropy(values: np.ndarray, size: np.ndarray, weights) -> np.ndarray:
    """Hn per token (its node's entropy) in (0, 1), float64 [G, N, H] (section 5.2).

    values: [4, G, N, H] node component values per token; size: int [G, N, H] node sizes (token
    weights 1/size turn token sums into node sums); weights: the five entropy_weights.
    """
    w = 1.0 / size
    nodes = w.sum(axis=-1, keepdims=True)
    mean = (values * w).sum(axis=-1, keepdims=True) / nodes
    std = np.sqrt((w * (values - mean) ** 2).sum(axis=-1, keepdims=True) / nodes)
    z = (values - mean) / np.maximum(std, STD_FLOOR)
    weights = np.asarray(weights, dtype=np.float64)
    combined = np.tensordot(weights[:4], z, axes=1) / weights.sum()  # guidance z is 0
    return 1.0 / (1.0 + np.exp(-combined))


def adapt(lvl: np.ndarray, Hn: np.ndarray, s_max: int, refine_threshold: float, refine_gap: float,
          merge_threshold: float):
    """One refine/merge pass (section 5.3, thresholds guarded by TIE_EPS) -> (new lvl, refinements,
    merges).

    lvl: int64 [G, N, H]; Hn: [G, N, H] per token (constant on a node).
    """
    H = lvl.shape[-1]
    start, size = node_geometry(lvl)
    end = start + size
    left = np.take_along_axis(Hn, np.maximum(start - 1, 0), axis=-1)
    right = np.take_along_axis(Hn, np.minimum(end, H - 1), axis=-1)
    gap = refine_gap + TIE_EPS
    differs = ((start > 0) & (np.abs(Hn - left) > gap)) | ((end < H) & (np.abs(Hn - right) > gap))
    refine = (lvl >= 1) & (Hn > refine_threshold + TIE_EPS) & differs
    refinements = int(np.count_nonzero(refine & (np.arange(H) == start)))

    new = lvl - refine
    merges = 0
    low = Hn < merge_threshold - TIE_EPS
    h = np.arange(H)
    zero = np.zeros(lvl.shape[:-1] + (1,), dtype=np.int64)
    for s in range(s_max):
        p_start = (h >> (s + 1)) << (s + 1)  # the parent (s+1) block of every token
        p_end = np.minimum(p_start + (1 << (s + 1)), H)
        counts = np.concatenate([zero, np.cumsum((lvl == s) & low, axis=-1)], axis=-1)
        joint = counts[..., p_end] - counts[..., p_start] == p_end - p_start  # all children active and low
        merges += int(np.count_nonzero(joint & (h == p_start)))
        new = np.where(joint, s + 1, new)
    return new, refinements, merges


def select_nodes(Hn: np.ndarray, lvl: np.ndarray, U1: np.ndarray, s_max: int, budget: float,
                 temperature: float) -> np.ndarray:
    """bool [G, N, H]: True on every token of the selected nodes (section 5.4).

    U1: float64 [G, N, H] uniforms in (0, 1); a node's Gumbel noise is U1 at its first token.
    """
    H = lvl.shape[-1]
    h = np.arange(H, dtype=np.int64)
    start, _ = node_geometry(lvl)
    is_start = h == start
    n_act = is_start.sum(axis=-1)
    k = ceil_eps(budget * n_act)
    blocks = -(-H // (1 << s_max))
    quota = -(-k // blocks)
    key = np.where(is_start, temperature * Hn - np.log(-np.log(U1)), -np.inf)

    kb = _blocks(key, s_max, -np.inf)  # in-block rank by (key desc, position asc)
    rank = np.empty(kb.shape, dtype=np.int64)
    np.put_along_axis(rank, np.argsort(-kb, axis=-1, kind="stable"), np.arange(kb.shape[-1]), axis=-1)
    rank = rank.reshape(rank.shape[:-2] + (-1,))[..., :H]
    eligible = is_start & (rank < quota[..., None])

    order = np.lexsort((np.broadcast_to(h, key.shape), -key, ~eligible), axis=-1)
    overall = np.empty_like(order)
    np.put_along_axis(overall, order, np.arange(H), axis=-1)
    chosen = is_start & (overall < k[..., None])
    return np.take_along_axis(chosen, start, axis=-1)


def stalest_token(lvl: np.ndarray, age: np.ndarray) -> np.ndarray:
    """bool [G, N, H]: per active node, its token with the largest age (ties: lowest position)."""
    H = lvl.shape[-1]
    h = np.arange(H)
    akey = age.astype(np.int64) * (H + 1) + (H - 1 - h)  # unique per row: age first, then position
    out = np.zeros(lvl.shape, dtype=bool)
    for s in range(int(lvl.max()) + 1 if lvl.size else 0):
        best = np.maximum.reduceat(akey, np.arange(0, H, 1 << s), axis=-1)[..., h >> s]
        out |= (lvl == s) & (akey == best)
    return out


def lattice_orders(Hn: np.ndarray, i: int, steps: int, low: float, high: float, max_order: int) -> np.ndarray:
    """Requested solver order per token, int64 [G, N, H] (section 5.5, before the caps; thresholds
    guarded by TIE_EPS, section 5.6)."""
    u = Hn * (1.0 - i / max(steps - 1, 1))
    order = np.where(u < low - TIE_EPS, 3, np.where(u < high - TIE_EPS, 2, 1))
    return np.minimum(order, max_order).astype(np.int64)
