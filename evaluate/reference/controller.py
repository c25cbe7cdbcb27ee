"""PyTorch reference of the fast sampler's controller: lattice + E2-CRF token cache (docs/sampler.md).

Re-implemented from the specification in torch float64, independently of dil.runtime.sampling.fast_controller /
lattice / cache (only the settings object, the random streams and the schedule are shared). It
plugs into `dil.evaluate.reference.sampler.ReferenceSampler` through start / plan / observe and reports with
every plan the margins of its decisions: how far the quantity behind a decision was from its
threshold, so that a decision that flips between the runtime and the reference in a free run can be
told apart from a real disagreement.

It works on the T horizon tokens (T = H / Ph, the model's horizon_patch Ph): every value it reads
is a token value, the mean over the token's Ph steps (the sampler's `x_tokens`, the cache's x0_hat
and x_in), and its plans, orders and margins are per token.

Margins (float64, inf where a decision does not hinge on a threshold), per token [G, N, T]:
  change     |mean_n delta - mean_n threshold| of the token's series, where the change rule decides
  selection  |key - cut-off key| of the token's node in the lattice's top-k selection
  lattice    |H_n - refine_threshold| or |H_n - merge_threshold|, the nearer (pre-adapt H_n), or
             for a refine candidate |gap to a neighbour - refine_gap| when nearer
  order      |u - stability threshold|, the nearer
  feedback   |probe error - probe_target| of the series at the last observe (tau_0 feedback)
and per series [G]:
  full       |event intensity - tau_warn| or |probe error - probe_warn| of the last observe
"""

from __future__ import annotations

import math

import numpy as np
import torch

from dil.runtime.sampling.rng import SeriesStreams, series_stream
from dil.evaluate.reference.cache import guard_x0
from dil.evaluate.reference.frequency import core_mask as spectral_core
from dil.evaluate.reference.frequency import gains as spectral_gains
from dil.evaluate.reference.frequency import is_frequency
from dil.evaluate.reference.sampler import ReferencePlan
from dil.evaluate.reference.lattice import (
    adapt,
    ceil_eps,
    lattice_orders,
    node_entropy,
    priority_tokens,
    select,
    token_signals,
    top_scale,
)

TIGHTEN, RELAX = 0.7, 1.05  # error feedback on tau (section 7)
TAU_BOUNDS = (0.5, 10.0)  # tau stays within these multiples of tau_0
RMS_EPS, ENERGY_EPS, EVENT_EPS = 1e-8, 1e-12, 1e-8
HISTORY = 4  # X0[i-1] .. X0[i-4]: the temporal entropy's three changes


def control_uniforms(streams: SeriesStreams, steps: int, N: int, H: int) -> torch.Tensor:
    """float64 [G, M-1, 2, N, H]: per series, rng.random((M-1, 2, N, H)) + 2^-54 from its own
    "control" stream, after the draws of the streams' first_sample earlier samples, (M-1, 2, H)
    each (section 3); [G, 0, 2, N, H] when M < 2."""
    if steps < 2:
        return torch.zeros((len(streams), 0, 2, N, H), dtype=torch.float64)
    draws = []
    for k in streams.keys:
        gen = series_stream(streams.seed, k, "control")
        for _ in range(streams.first_sample):  # the earlier samples' draws, one sample at a time
            gen.random((steps - 1) * 2 * H)
        draws.append(gen.random((steps - 1, 2, N, H)) + 2.0**-54)
    return torch.from_numpy(np.stack(draws))


def core_mask(K: int, H: int) -> torch.Tensor:
    """bool [H]: the centres floor((2j+1) H / (2K')) of K' = min(K, H) equal segments."""
    Kp = min(K, H)
    mask = torch.zeros(H, dtype=torch.bool)
    if Kp:
        mask[[((2 * j + 1) * H) // (2 * Kp) for j in range(Kp)]] = True
    return mask


def follow_weights(core: torch.Tensor, H: int) -> torch.Tensor:
    """float64 [K', H]: values at the core positions -> their piecewise-linear interpolation over the
    horizon, constant before the first and after the last core token (core follow, section 6)."""
    pos = core.nonzero().flatten().tolist()
    W = torch.zeros((len(pos), H), dtype=torch.float64)
    for h in range(H):
        if h <= pos[0]:
            W[0, h] = 1.0
        elif h >= pos[-1]:
            W[-1, h] = 1.0
        else:
            j = max(k for k in range(len(pos)) if pos[k] <= h)
            if pos[j] == h:
                W[j, h] = 1.0
            else:  # the line through (pos[j], 1 or 0) and (pos[j+1], 0 or 1), in np.interp's form
                slope = 1.0 / (pos[j + 1] - pos[j])
                W[j, h] = -slope * (h - pos[j]) + 1.0
                W[j + 1, h] = slope * (h - pos[j]) + 0.0
    return W


def rms_row(a: torch.Tensor) -> torch.Tensor:
    return torch.sqrt((a**2).mean(dim=-1, keepdim=True))


def numpy_median(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per series g, the median of values[g][mask[g]] as numpy.median takes it (even count: mean of
    the two middle values); NaN where the mask is empty. values, mask: [G, ...]."""
    G = values.shape[0]
    v = torch.where(mask, values, torch.full_like(values, math.inf)).reshape(G, -1).sort(dim=-1).values
    count = mask.reshape(G, -1).sum(dim=-1)
    lo = torch.gather(v, 1, ((count - 1).clamp(min=0) // 2)[:, None])[:, 0]
    hi = torch.gather(v, 1, (count // 2).clamp(max=v.shape[1] - 1)[:, None])[:, 0]
    return torch.where(count > 0, (lo + hi) / 2, torch.full_like(lo, math.nan))


class ReferenceController:
    """The lattice controller and the E2-CRF refresh policy (docs/sampler.md sections 3-7).

    config: the sampler settings (any object with the SamplerConfig attribute names); the control
    streams come with `start`. `counters` holds refinements, merges and probes. H in its code is the
    number of horizon tokens the sampler plans on (sampler.shape[2], T = horizon / Ph).
    """

    def __init__(self, config):
        self.cfg = config

    def start(self, sampler, streams: SeriesStreams) -> None:
        cfg = self.cfg
        G, N, H = sampler.shape
        self.steps, self.H = sampler.steps, H
        self.U = control_uniforms(streams, self.steps, N, H)
        self.s_max = top_scale(cfg.max_scales, H)
        self.lvl = torch.full((G, N, H), self.s_max, dtype=torch.int64)  # start coarse
        self.tau = torch.full((G,), float(cfg.tau_0), dtype=torch.float64)
        self.pending = torch.zeros(G, dtype=torch.bool)
        self.run = torch.zeros((G, N, H), dtype=torch.int64)
        # A frequency-domain model (docs/frequency.md): the core is the K lowest frequencies, every
        # rule reads positions divided by their noise gains, and nothing follows the core.
        self.freq = is_frequency(sampler.model)
        self.w = 1.0 / spectral_gains(H) if self.freq else None
        self.core = spectral_core(cfg.K, H) if self.freq else core_mask(cfg.K, H)
        self.follow = follow_weights(self.core, H) if bool(self.core.any()) and not self.freq else None
        self.history: list[torch.Tensor] = []  # X0[i-1], X0[i-2], ... newest first
        self.counters = {"refinements": 0, "merges": 0, "probes": 0}
        self.full_margin = torch.full((G,), math.inf, dtype=torch.float64)
        self.feedback_margin = torch.full((G,), math.inf, dtype=torch.float64)

    def _white(self, a: torch.Tensor) -> torch.Tensor:
        """a itself in the time domain; a / G per position in the frequency domain."""
        return a if self.w is None else a * self.w

    # -- plan ------------------------------------------------------------------------------------
    def plan(self, i: int, sampler) -> ReferencePlan:
        cfg = self.cfg
        G, N, H = sampler.shape
        cache = sampler.cache
        self.x0_old = self._white(cache.x0_hat).clone()
        self.probes = torch.zeros((G, N, H), dtype=torch.bool)
        if i == 0:  # nothing cached, no history: every token, order 1
            self.computed = torch.ones((G, N, H), dtype=torch.bool)
            return ReferencePlan(self.computed, torch.ones((G, N, H), dtype=torch.int64), torch.ones(G, dtype=torch.bool))

        inf = torch.full((G, N, H), math.inf, dtype=torch.float64)
        margins = {k: inf.clone() for k in ("change", "selection", "lattice", "order")}
        final = bool(getattr(cfg, "final_full", False)) and i == self.steps - 1
        schedule_full = self.pending | (i < cfg.warmup_steps) | (i % cfg.R == 0) | final | (not cfg.cache)
        self.pending = torch.zeros(G, dtype=torch.bool)

        if cfg.lattice:
            signals = token_signals(self.history[:HISTORY])
            Hn = node_entropy(signals, self.history[0], self.lvl, cfg.entropy_weights, self.s_max)
            self.lvl, refined, merged, margins["lattice"] = adapt(self.lvl, Hn, cfg, self.s_max)
            self.counters["refinements"] += int(refined.sum())
            self.counters["merges"] += int(merged.sum())
            Hn = node_entropy(signals, self.history[0], self.lvl, cfg.entropy_weights, self.s_max)
            order, margins["order"] = lattice_orders(Hn, i, self.steps, cfg)
        else:
            order = torch.full((G, N, H), cfg.solver_order, dtype=torch.int64)

        series_full = torch.ones(G, dtype=torch.bool)
        computed = torch.ones((G, N, H), dtype=torch.bool)
        if cfg.cache:
            x, x0c = self._white(sampler.x_tokens), self._white(cache.x0_hat)
            forced = self.core.expand(G, N, H) | (cache.age >= cfg.max_age)
            # The change rule is decided per series and token, on means over the series' rows.
            delta = (x - self._white(cache.x_in)).abs() / (rms_row(x) + RMS_EPS)
            energy = x0c**2 / ((x0c**2).sum(dim=-1, keepdim=True) + ENERGY_EPS)  # the token's share
            threshold = self.tau[:, None, None] / (cfg.energy_eps + energy)
            change_margin = delta.mean(dim=1, keepdim=True) - threshold.mean(dim=1, keepdim=True)  # [G, 1, H]
            change = (change_margin > 0).expand(G, N, H)
            change_margin = change_margin.abs().expand(G, N, H)
            selected = forced | change
            if cfg.lattice:
                nodes, sel_margin = select(Hn, self.lvl, self.U[:, i - 1, 0], cfg, self.s_max)
                priority = priority_tokens(nodes, self.lvl, cache.age)
                margins["change"] = torch.where(forced | priority, inf, change_margin)
                margins["selection"] = torch.where(forced | change, inf, sel_margin)
                selected = selected | priority
            else:
                margins["change"] = torch.where(forced, inf, change_margin)
            probes = self._probes(~selected, self.U[:, i - 1, 1])
            count = (selected | probes).sum(dim=-1)  # [G, N]
            S = torch.clamp(cfg.bucket * -torch.div(-count.amax(dim=-1), cfg.bucket, rounding_mode="floor"), max=H)
            series_full = schedule_full | (S >= cfg.full_fraction * H)
            full3 = series_full[:, None, None]
            chosen = selected | probes
            if cfg.fill:  # a partial series' rows all compute S_g tokens: the call pays for them anyway
                chosen = self._fill(chosen, cache.age, S)
            computed = full3 | chosen
            self.probes = probes & ~full3
            self.counters["probes"] += int(self.probes.sum())
            for k in ("change", "selection"):
                margins[k] = torch.where(full3, inf, margins[k])

        # Final orders: reused tokens 1; computed ones capped by their run of computed steps and by
        # the solver's history cap (1 on the last step).
        cap = 1 if i == self.steps - 1 else min(3, i + 1)
        order = torch.where(computed, torch.minimum(order, self.run + 1), torch.ones_like(order)).clamp(1, cap)
        margins["order"] = torch.where(computed & (cap > 1), margins["order"], inf)
        margins["feedback"] = self.feedback_margin[:, None, None].expand(G, N, H).clone()
        margins["full"] = self.full_margin.clone()
        self.computed = computed
        return ReferencePlan(computed, order, series_full, {k: v.numpy() for k, v in margins.items()})

    @staticmethod
    def _fill(chosen: torch.Tensor, age: torch.Tensor, S: torch.Tensor) -> torch.Tensor:
        """chosen plus, per row, its stalest other tokens (largest age, ties: lower position) until
        the row has S[g] tokens."""
        H = chosen.shape[-1]
        h = torch.arange(H)
        key = age.to(torch.int64) * (H + 1) + (H - 1 - h)
        ka, kb = key[..., :, None], key[..., None, :]
        rank = ((kb > ka) & ~chosen[..., None, :]).sum(dim=-1)  # keys are distinct within a row
        extra = S[:, None, None] - chosen.sum(dim=-1, keepdim=True)
        return chosen | (~chosen & (rank < extra))

    def _probes(self, candidates: torch.Tensor, u2: torch.Tensor) -> torch.Tensor:
        """The p = min(n_c, ceil_eps(ratio n_c)) candidates with the smallest u2 (ties: lower h)."""
        H = candidates.shape[-1]
        n_c = candidates.sum(dim=-1, keepdim=True)
        p = torch.minimum(n_c, ceil_eps(self.cfg.random_probe_ratio * n_c.to(torch.float64)).to(torch.int64))
        h = torch.arange(H)
        ua, ub = u2[..., :, None], u2[..., None, :]
        before = (ub < ua) | ((ub == ua) & (h[None, :] < h[:, None]))
        rank = (before & candidates[..., None, :]).sum(dim=-1)
        return candidates & (rank < p)

    # -- adjust (after the store, before the solver update) ------------------------------------
    def adjust(self, i: int, sampler, computed: torch.Tensor) -> None:
        """Core follow: every token not computed at step i moves its x0_hat by the core's change since
        step i-1, interpolated over the horizon (so reused tokens follow the low-frequency shape),
        and is then held to the cache's data-prediction guard, [-x0_clip, x0_clip]. Token values:
        the cache moves each reused token's steps by its token's change (ReferenceCache.x0_hat)."""
        if not getattr(self.cfg, "core_follow", False) or i == 0 or self.follow is None or bool(computed.all()):
            return
        cache = sampler.cache
        shift = (cache.x0_hat[:, :, self.core] - self.history[0][:, :, self.core]) @ self.follow
        moved = guard_x0(cache.x0_hat + shift, cache.x0_clip)
        cache.x0_hat = torch.where(computed, cache.x0_hat, moved)

    # -- observe ---------------------------------------------------------------------------------
    def observe(self, i: int, sampler) -> None:
        cfg = self.cfg
        G = sampler.shape[0]
        new = self._white(sampler.cache.x0_hat)
        self.run = torch.where(self.computed, self.run + 1, torch.zeros_like(self.run))
        self.full_margin = torch.full((G,), math.inf, dtype=torch.float64)
        self.feedback_margin = torch.full((G,), math.inf, dtype=torch.float64)

        has = self.probes.flatten(1).any(dim=1)
        if bool(has.any()):
            r = (new - self.x0_old).abs() / (rms_row(new) + RMS_EPS)
            err = numpy_median(r, self.probes)
            tau0 = float(cfg.tau_0)
            tighter = torch.clamp(self.tau * TIGHTEN, min=TAU_BOUNDS[0] * tau0)
            looser = torch.clamp(self.tau * RELAX, max=TAU_BOUNDS[1] * tau0)
            self.tau = torch.where(has, torch.where(err > cfg.probe_target, tighter, looser), self.tau)
            self.pending |= has & (err > cfg.probe_warn)
            self.feedback_margin = torch.where(has, (err - cfg.probe_target).abs(), self.feedback_margin)
            self.full_margin = torch.where(has, (err - cfg.probe_warn).abs(), self.full_margin)

        if i >= 1 and bool(self.core.any()):
            now, before = new[:, :, self.core], self.history[0][:, :, self.core]
            ev = torch.sqrt(((now - before) ** 2).sum(dim=(1, 2))) / (torch.sqrt((before**2).sum(dim=(1, 2))) + EVENT_EPS)
            self.pending |= ev > cfg.tau_warn
            self.full_margin = torch.minimum(self.full_margin, (ev - cfg.tau_warn).abs())
        self.history = [new.clone()] + self.history[: HISTORY - 1]
