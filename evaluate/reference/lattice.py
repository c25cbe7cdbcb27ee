"""PyTorch reference of the lattice controller's math (docs/sampler.md section 5), float64.

Written from the specification, independently of dil.runtime.sampling.lattice. The partition of a row is
held as `lvl` int64 [G, N, H]: the scale s of the active node that holds each token; node (s, j)
covers tokens [j 2^s, min((j+1) 2^s, H)), so a token's node starts at (h >> s) << s. Node values
are kept per token (every token of a node carries its node's value); `heads` marks a node's first
token, which counts the node once. H counts horizon tokens (of the model's horizon_patch steps each):
the lattice reads token values, never single steps.
"""

from __future__ import annotations

import math

import torch

STD_FLOOR = 1e-9  # floor of the per-row std in the standardisation (section 5.2)
SPECTRAL_FLOOR = 1e-30  # a node with less spectral power has spectral entropy 0
TEMPORAL_WINDOW = 3  # changes d_j used by the temporal entropy
THRESHOLD_GUARD = 1e-9  # a value passes a lattice threshold only by more than this (section 5.6)


def ceil_eps(a: torch.Tensor) -> torch.Tensor:
    """ceil(a - 1e-9): integer counts from float products such as 0.2 * 15."""
    return torch.ceil(a - 1e-9)


def top_scale(max_scales: int, H: int) -> int:
    """s_max = min(max_scales - 1, max(ceil(log2 H) - 1, 0)): the coarsest level has at least two
    nodes when H >= 2 (a lone node standardises to 0 and could never refine)."""
    return 0 if H <= 1 else min(max_scales - 1, max((H - 1).bit_length() - 1, 0))  # bit_length: ceil(log2 H)


def node_geometry(lvl: torch.Tensor):
    """(start, size, heads) per token: its node's first position, token count, and whether the token
    is that first position. lvl: int64 [G, N, H]."""
    H = lvl.shape[-1]
    h = torch.arange(H)
    start = (h >> lvl) << lvl
    size = torch.clamp(start + (1 << lvl), max=H) - start
    return start, size, start == h


def node_mean(values: torch.Tensor, start: torch.Tensor, size: torch.Tensor) -> torch.Tensor:
    """Per token, the mean of `values` [G, N, H] over its node's tokens."""
    sums = torch.zeros_like(values).scatter_add(-1, start, values)
    return torch.gather(sums, -1, start) / size


def token_signals(history: list[torch.Tensor]) -> torch.Tensor:
    """Score, solver and temporal entropy per token (section 5.1, items 1-3): float64 [3, G, N, H].

    history: the data predictions X0[i-1], X0[i-2], ... newest first, each [G, N, H].
    """
    x = history[0]
    mean = x.mean(dim=1, keepdim=True)
    e1 = torch.sqrt(((x - mean) ** 2).mean(dim=1, keepdim=True)).expand_as(x)  # std over the series' rows
    e2 = (history[0] - history[1]).abs() if len(history) >= 2 else torch.zeros_like(x)
    changes = [history[j] - history[j + 1] for j in range(min(TEMPORAL_WINDOW, len(history) - 1))]
    if len(changes) >= 2:
        d = torch.stack(changes)
        e3 = ((d - d.mean(dim=0)) ** 2).mean(dim=0)
    else:
        e3 = torch.zeros_like(x)
    return torch.stack([e1, e2, e3])


def spectral_entropy(x: torch.Tensor, lvl: torch.Tensor, s_max: int) -> torch.Tensor:
    """Normalised spectral entropy of x [G, N, H] over each token's node (section 5.1, item 4)."""
    G, N, H = x.shape
    out = torch.zeros_like(x)
    h = torch.arange(H)
    for s in range(2, s_max + 1):
        width = 1 << s
        J = -(-H // width)
        pad = x[..., -1:].expand(G, N, J * width - H)  # positions >= H take the row's last value
        v = torch.cat([x, pad], dim=-1).reshape(G, N, J, width)
        v = v - v.mean(dim=-1, keepdim=True)
        f = torch.fft.rfft(v, dim=-1)[..., 1:]  # k = 1 .. 2^(s-1): DC dropped, Nyquist kept
        power = f.real**2 + f.imag**2
        total = power.sum(dim=-1, keepdim=True)
        p = power / torch.where(total > SPECTRAL_FLOOR, total, torch.ones_like(total))
        plogp = torch.where(p > 0, p * torch.log(torch.where(p > 0, p, torch.ones_like(p))), torch.zeros_like(p))
        ent = -plogp.sum(dim=-1) / math.log(width // 2)
        ent = torch.where(total[..., 0] > SPECTRAL_FLOOR, ent, torch.zeros_like(ent))  # [G, N, J]
        at_level = torch.gather(ent, -1, (h >> s).expand(G, N, H))
        out = torch.where(lvl == s, at_level, out)
    return out


def node_entropy(signals: torch.Tensor, x: torch.Tensor, lvl: torch.Tensor, weights, s_max: int) -> torch.Tensor:
    """H_n in (0, 1) per token (its node's), section 5.2.

    signals: [3, G, N, H] token signals (score, solver, temporal); x: X0[i-1] for the spectral
    entropy; weights: the five component weights (the fifth, guidance, has value 0 here).
    """
    start, size, _ = node_geometry(lvl)
    comps = [node_mean(signals[c], start, size) for c in range(3)]
    comps.append(spectral_entropy(x, lvl, s_max))
    comps.append(torch.zeros_like(x))  # guidance: no observed horizon values in forecasting
    w = [float(v) for v in weights]
    # Per-row statistics over nodes, each counted once: token weights 1/|node| (the spec's
    # vectorised form) make a sum over tokens a sum over nodes.
    tw = 1.0 / size.to(torch.float64)
    n_act = tw.sum(dim=-1, keepdim=True)
    z = torch.zeros_like(x)
    for c, v in enumerate(comps):
        m = (v * tw).sum(dim=-1, keepdim=True) / n_act
        s = torch.sqrt((tw * (v - m) ** 2).sum(dim=-1, keepdim=True) / n_act)
        z = z + w[c] * ((v - m) / torch.clamp(s, min=STD_FLOOR))
    z = z / sum(w)
    return 1.0 / (1.0 + torch.exp(-z))


def adapt(lvl: torch.Tensor, Hn: torch.Tensor, cfg, s_max: int):
    """Refine and merge once from the same pre-adapt H_n (section 5.3).

    Returns (new lvl, refinements, merges, margin): the operation counts and, per token, the distance
    of its node's H_n from the refine and merge thresholds, or of a refine candidate's gap to a
    neighbour from refine_gap, the nearest (float64 [G, N, H]).
    """
    G, N, H = lvl.shape
    start, size, heads = node_geometry(lvl)
    end = start + size
    # Neighbours' H_n: the node holding start - 1 (left) and end (right); missing ones do not count.
    left = torch.gather(Hn, -1, torch.clamp(start - 1, min=0))
    right = torch.gather(Hn, -1, torch.clamp(end, max=H - 1))
    # Every threshold is passed by more than THRESHOLD_GUARD or not at all (section 5.6): with two
    # active nodes H_n is exactly 1/2 in exact arithmetic when the weighted signs cancel, and
    # rounding must not decide that tie against merge_threshold = 1/2.
    gap = cfg.refine_gap + THRESHOLD_GUARD
    gap_left = ((Hn - left).abs() > gap) & (start > 0)
    gap_right = ((Hn - right).abs() > gap) & (end < H)
    refine = (lvl >= 1) & (Hn > cfg.refine_threshold + THRESHOLD_GUARD) & (gap_left | gap_right)

    # Merge: this node (s, c) and its sibling (s, c ^ 1) both active and low; an empty sibling
    # (beyond H) counts as active and low.
    low = Hn < cfg.merge_threshold - THRESHOLD_GUARD
    sib_start = ((start >> lvl) ^ 1) << lvl
    sib_in = sib_start < H
    sib_pos = torch.clamp(sib_start, max=H - 1)
    sib_active = torch.gather(lvl, -1, sib_pos) == lvl
    sib_low = torch.gather(low.to(torch.int64), -1, sib_pos).bool()
    merge = (lvl < s_max) & low & (~sib_in | (sib_active & sib_low))

    new = torch.where(refine, lvl - 1, torch.where(merge, lvl + 1, lvl))
    refinements = (refine & heads).sum(dim=(1, 2))
    parent_heads = merge & heads & (((start >> lvl) & 1) == 0)  # each merged parent once (its left child)
    merges = parent_heads.sum(dim=(1, 2))
    margin = torch.minimum((Hn - cfg.refine_threshold).abs(), (Hn - cfg.merge_threshold).abs())
    # A node above the refine threshold refines or not by its gaps to its neighbours too.
    inf = torch.full_like(Hn, math.inf)
    candidate = (lvl >= 1) & (Hn > cfg.refine_threshold + THRESHOLD_GUARD)
    for present, nb in ((start > 0, left), (end < H, right)):
        gap_margin = ((Hn - nb).abs() - cfg.refine_gap).abs()
        margin = torch.minimum(margin, torch.where(candidate & present, gap_margin, inf))
    return new, refinements, merges, margin


def _before(key: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """bool [..., H, H]: [.., a, b] = node b sorts before node a by (key descending, position ascending)."""
    ka, kb = key[..., :, None], key[..., None, :]
    pa, pb = pos[..., :, None], pos[..., None, :]
    return (kb > ka) | ((kb == ka) & (pb < pa))


def select(Hn: torch.Tensor, lvl: torch.Tensor, u1: torch.Tensor, cfg, s_max: int):
    """Stratified, temperature-weighted Gumbel-top-k of nodes per row (section 5.4).

    u1: float64 [G, N, H] uniforms of this step. Returns (selected node heads bool [G, N, H],
    margin float64 [G, N, H]: per token, how far its node's key was from the selection cut-off).
    """
    G, N, H = lvl.shape
    start, _, heads = node_geometry(lvl)
    n_act = heads.sum(dim=-1, keepdim=True).to(torch.float64)
    k = ceil_eps(cfg.entropy_budget * n_act).to(torch.int64)  # [G, N, 1]
    B = -(-H // (1 << s_max))
    q = -torch.div(-k, B, rounding_mode="floor")  # ceil(k / B)
    gumbel = -torch.log(-torch.log(torch.gather(u1, -1, start)))
    key = cfg.temperature * Hn + gumbel
    pos = torch.arange(H).expand(G, N, H)
    block = start >> s_max
    other = heads[..., None, :]
    same_block = block[..., :, None] == block[..., None, :]
    rank_in_block = (_before(key, pos) & other & same_block).sum(dim=-1)
    eligible = heads & (rank_in_block < q)
    ea, eb = eligible[..., :, None], eligible[..., None, :]
    before = (eb & ~ea) | ((eb == ea) & _before(key, pos))
    rank = (before & other).sum(dim=-1)
    selected = heads & (rank < k)
    inf = torch.full_like(key, math.inf)
    lowest_in = torch.where(selected, key, inf).amin(dim=-1, keepdim=True)
    highest_out = torch.where(heads & ~selected, key, -inf).amax(dim=-1, keepdim=True)
    node_selected = torch.gather(selected.to(torch.int64), -1, start).bool()  # on every token of the node
    margin = torch.where(node_selected, key - highest_out, lowest_in - key).abs()
    return selected, margin


def priority_tokens(selected: torch.Tensor, lvl: torch.Tensor, age: torch.Tensor) -> torch.Tensor:
    """bool [G, N, H]: the stalest token (largest age, ties to the lowest position) of each selected node."""
    H = lvl.shape[-1]
    start, _, _ = node_geometry(lvl)
    score = age.to(torch.int64) * (H + 1) + (H - 1 - torch.arange(H))
    best = torch.full_like(score, -1).scatter_reduce(-1, start, score, reduce="amax")
    node_selected = torch.gather(selected.to(torch.int64), -1, start).bool()
    return node_selected & (score == torch.gather(best, -1, start))


def lattice_orders(Hn: torch.Tensor, i: int, steps: int, cfg):
    """Requested order per token from u = H_n (1 - i / max(M-1, 1)) (section 5.5; a threshold is
    passed by more than THRESHOLD_GUARD, section 5.6), and the distance of u from the nearer
    stability threshold."""
    u = Hn * (1.0 - i / max(steps - 1, 1))
    low, high = cfg.stability_threshold_low, cfg.stability_threshold_high
    order = torch.where(u < low - THRESHOLD_GUARD, 3, torch.where(u < high - THRESHOLD_GUARD, 2, 1)).to(torch.int64)
    margin = torch.minimum((u - low).abs(), (u - high).abs())
    return torch.clamp(order, max=cfg.max_solver_order), margin
