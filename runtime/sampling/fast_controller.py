"""`FastController`: the lattice controller plus the E2-CRF refresh policy, plugged into
`dil.runtime.sampling.sampler.sample` through the `Controller` contract (docs/sampler.md).

    streams = SeriesStreams(seed, [k_0, ..., k_{G-1}])
    x_T = streams.initial_noise(N, H)
    result = sample(engine, schedule, ctx, x_T, config, streams, controller=FastController(config))

Per step i, `plan` decides from what the cache holds after step i-1 (its x0_hat, inputs and ages),
the current noisy horizon `cache.x`, the lattice state and the pre-drawn control uniforms which
tokens each row computes, each token's effective solver order and which series run a full step;
`observe` then measures probe errors and the core's event intensity and updates tau and the
full-step flags for step i+1. Every decision of a series depends only on its own rows and on its
control stream (streams.control_uniforms, drawn at `start`), never on the rest of the batch.
With lattice=False and cache=False it is the plain DPM-Solver++ sampler, bit for bit.

A frequency-domain model (start(..., domain="frequency"), docs/frequency.md): the tokens are the
horizon's spectral coordinates; the core is the K lowest frequencies (both coordinates of each);
every rule reads the coordinates divided by their noise gains G, so that values, changes and
energy shares are in time-domain units (Parseval); core follow is off (it interpolates in time).
"""

from __future__ import annotations

import numpy as np

from dil.runtime.sampling.rng import SeriesStreams
from dil.runtime.model import frequency
from dil.runtime.sampling import cache_policy as policy
from dil.runtime.sampling import lattice as lat
from dil.runtime.sampling.config import SamplerConfig
from dil.runtime.sampling.solver import DPMSolverPP
from dil.runtime.sampling.step_plan import StepPlan, subset_positions
from dil.runtime.sampling.parametrisation import clip_x0
from dil.runtime.sampling.token_cache import TokenCache

HISTORY = lat.TEMPORAL_WINDOW + 1  # x0_hat arrays kept: X0[i-1] .. X0[i-4]


class FastController:
    """Lattice + token cache controller. config: a SamplerConfig. record: keep every step's
    decisions in `decisions` (for validation against the reference).

    After a forecast, `counters` holds probes, refinements and merges (copied into SamplerStats).
    """

    def __init__(self, config: SamplerConfig, record: bool = False):
        self.config = config
        self.record = record
        self.counters: dict[str, int] = {}

    # -- sampler hooks ---------------------------------------------------------------------------
    def start(self, G: int, N: int, H: int, solver: DPMSolverPP, streams: SeriesStreams, domain: str = "time") -> None:
        cfg = self.config
        self.spectral = frequency.check_domain(domain) == "frequency"
        # whitened view of the coordinates: y / G (None: the time domain, tokens as they are)
        self.inv_gain = 1.0 / frequency.noise_gains(H) if self.spectral else None
        if len(streams) != G:
            raise ValueError(f"FastController got the streams of {len(streams)} series for a batch of {G} series")
        self.shape, self.solver, self.steps = (G, N, H), solver, solver.steps
        # [G, M-1, 2, N, H]: the selection's Gumbel noise and the probe ranks of every step.
        self.uniforms = streams.control_uniforms(self.steps, N, H)
        self.s_max = lat.coarsest_scale(H, cfg.max_scales)
        self.lvl = np.full((G, N, H), self.s_max, dtype=np.int64)
        self.core = frequency.core_tokens(H, cfg.K) if self.spectral else policy.core_positions(H, cfg.K)
        self.core_mask = np.zeros(H, dtype=bool)
        self.core_mask[self.core] = True
        self.follow_weights = None if self.spectral else policy.interpolation_weights(self.core, H)
        self.tau = np.full(G, float(cfg.tau_0))
        self.pending = np.zeros(G, dtype=bool)
        self.run = np.zeros((G, N, H), dtype=np.int64)
        self.history: list[np.ndarray] = []
        self.full_pos = np.ascontiguousarray(np.broadcast_to(np.arange(H, dtype=np.int64), (G, N, H)))
        self.counters = {"probes": 0, "refinements": 0, "merges": 0}
        self.decisions: list[dict] = []

    def plan(self, i: int, cache: TokenCache) -> StepPlan:
        cfg, (G, N, H) = self.config, self.shape
        self._x0_before = cache.x0_hat
        self._probes = None
        margins = {}
        if i == 0:  # nothing cached, no history: every token, order 1
            computed = np.ones((G, N, H), dtype=bool)
            series_full = np.ones(G, dtype=bool)
            requested = np.ones((G, N, H), dtype=np.int64)
        else:
            series_full = ((i < cfg.warmup_steps) | (i % cfg.R == 0) | (cfg.final_full and i == self.steps - 1)
                           | self.pending | (not cfg.cache))
            self.pending = np.zeros(G, dtype=bool)
            Hn = None
            if cfg.lattice:
                Hn = self._lattice_step()
                requested = lat.lattice_orders(Hn, i, self.steps, cfg.stability_threshold_low,
                                               cfg.stability_threshold_high, cfg.max_solver_order)
            else:
                requested = np.full((G, N, H), cfg.solver_order, dtype=np.int64)
            if cfg.cache:
                computed, series_full = self._refresh(i, cache, Hn, series_full, margins)
            else:
                computed = np.ones((G, N, H), dtype=bool)
        order = np.where(computed, np.minimum(requested, self.run + 1), 1)
        order = np.minimum(order, self.solver.max_order(i))
        self._computed = computed
        full = bool(computed.all())
        pos_sub = self.full_pos if full else subset_positions(computed, cfg.bucket)
        if self.record:
            self.decisions.append({"computed": computed.copy(), "order": order.copy(),
                                   "series_full": np.asarray(series_full).copy(), "margins": margins})
        return StepPlan(pos_sub=pos_sub, order=order, full=full, mask=computed, series_full=series_full)

    def adjust(self, i: int, cache: TokenCache, computed: np.ndarray) -> None:
        """After the store of step i, before the solver update: with `core_follow`, every reused
        token's x0_hat moves by this step's change of the core, linearly interpolated over the
        horizon (docs/sampler.md section 6, "Core follow"), then is clipped by the guard (x0_clip), so
        that a moved token obeys the same bound as a computed one."""
        if not self.config.core_follow or self.spectral or i == 0 or self.core.size == 0 or computed.all():
            return
        core_now = cache.x0_hat[:, :, self.core]
        shift = (core_now - self.history[0][:, :, self.core]) @ self.follow_weights
        cache.x0_hat = np.where(computed, cache.x0_hat, clip_x0(cache.x0_hat + shift, self.config.x0_clip))

    def observe(self, i: int, cache: TokenCache) -> None:
        cfg = self.config
        self.run = np.where(self._computed, self.run + 1, 0)
        x0_hat = self._white(cache.x0_hat)
        if self._probes is not None and self._probes.any():
            error = policy.probe_error(x0_hat, self._white(self._x0_before), self._probes)
            self.tau = policy.feedback(self.tau, error, cfg.tau_0, cfg.probe_target)
            self.pending |= error > cfg.probe_warn  # NaN (no probes) compares False
            if self.record:
                self.decisions[-1]["margins"]["probe"] = error - cfg.probe_warn
        if i >= 1 and self.core.size:
            event = policy.event_intensity(x0_hat, self.history[0], self.core)
            self.pending |= event > cfg.tau_warn
            if self.record:
                self.decisions[-1]["margins"]["event"] = event - cfg.tau_warn
        self.history = [x0_hat] + self.history[: HISTORY - 1]

    def _white(self, a: np.ndarray) -> np.ndarray:
        """a itself in the time domain; a / G per coordinate in the frequency domain."""
        return a if self.inv_gain is None else a * self.inv_gain

    # -- the two halves of a step ----------------------------------------------------------------
    def _lattice_step(self) -> np.ndarray:
        """Signals -> Hn -> refine/merge -> Hn on the new partition (docs/sampler.md 5.1-5.3)."""
        cfg = self.config
        table = lat.ScaleTable(self.history, self.s_max)
        start, size = lat.node_geometry(self.lvl)
        Hn = lat.node_entropy(table.read(self.lvl, start, size), size, cfg.entropy_weights)
        self.lvl, refinements, merges = lat.adapt(self.lvl, Hn, self.s_max, cfg.refine_threshold,
                                                  cfg.refine_gap, cfg.merge_threshold)
        self.counters["refinements"] += refinements
        self.counters["merges"] += merges
        if refinements or merges:
            start, size = lat.node_geometry(self.lvl)
            Hn = lat.node_entropy(table.read(self.lvl, start, size), size, cfg.entropy_weights)
        return Hn

    def _refresh(self, i: int, cache: TokenCache, Hn, series_full, margins):
        """The cache rules (docs/sampler.md 6) -> (computed [G, N, H], series_full [G])."""
        cfg, H = self.config, self.shape[2]
        U1, U2 = self.uniforms[:, i - 1, 0], self.uniforms[:, i - 1, 1]
        change, change_margin = policy.change_trigger(self._white(cache.x), self._white(cache.x_in),
                                                      self._white(cache.x0_hat), self.tau, cfg.energy_eps)
        selected = self.core_mask | (cache.age >= cfg.max_age) | change
        if Hn is not None:
            nodes = lat.select_nodes(Hn, self.lvl, U1, self.s_max, cfg.entropy_budget, cfg.temperature)
            selected |= nodes & lat.stalest_token(self.lvl, cache.age)
        probes = policy.draw_probes(~selected, U2, cfg.random_probe_ratio)
        chosen = selected | probes
        S_g = policy.subset_size(chosen.sum(axis=-1), cfg.bucket, H)
        series_full = series_full | (S_g >= cfg.full_fraction * H)
        if cfg.fill:
            chosen = policy.fill_stalest(chosen, cache.age, S_g)
        self._probes = probes & ~series_full[:, None, None]
        self.counters["probes"] += int(np.count_nonzero(self._probes))
        if self.record:
            margins["probes"] = self._probes.copy()
            margins["change"] = change_margin
            margins["fraction"] = S_g - cfg.full_fraction * H
        return chosen | series_full[:, None, None], series_full
