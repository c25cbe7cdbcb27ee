"""`FullController`: every token at every step with one solver order, the plain DPM-Solver++
sampler (lattice and cache off). It implements the `Controller` contract (contracts.py) with
nothing to adjust, observe or count."""

from __future__ import annotations

import numpy as np

from dil.runtime.sampling.rng import SeriesStreams
from dil.runtime.sampling.config import SamplerConfig
from dil.runtime.sampling.solver import DPMSolverPP
from dil.runtime.sampling.step_plan import StepPlan
from dil.runtime.sampling.token_cache import TokenCache


class FullController:
    """Every token at every step with config.solver_order."""

    def __init__(self, config: SamplerConfig):
        self.config = config
        self.counters: dict[str, int] = {}

    def start(self, G: int, N: int, H: int, solver: DPMSolverPP, streams: SeriesStreams, domain: str = "time") -> None:
        pos = np.ascontiguousarray(np.broadcast_to(np.arange(H, dtype=np.int64), (G, N, H)))
        # Every step computes every token: no cached key is ever attended to, so none is needed.
        # One plan (and its all-ones mask) serves every step: nothing is built per step.
        self._plan = StepPlan(pos_sub=pos, order=self.config.solver_order, full=True,
                              mask=np.ones((G, N, H), dtype=bool), needs_kv=False)

    def plan(self, i: int, cache: TokenCache) -> StepPlan:
        return self._plan

    def adjust(self, i: int, cache: TokenCache, computed: np.ndarray) -> None:
        """Every token was computed: nothing to move."""

    def observe(self, i: int, cache: TokenCache) -> None:
        """Nothing to adapt: the plan is the same at every step."""
