"""`StepPlan`: a controller's decision for one sampler step, and the token subsets it describes
(docs/sampler.md section 2)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class StepPlan:
    """A controller's decision for one step.

    pos_sub: int64 [G, N, S], the horizon positions computed now; H marks a padding entry (S may be
        0: no call this step). order: int or int array broadcastable to [G, N, H], the solver order
        per token. full: True when every token is computed (pos_sub is arange(H) in every row).
    mask: optional bool [G, N, H], the computed tokens (derived from pos_sub when absent).
    series_full: optional bool [G], the series computed in full this step.
    needs_kv: whether a later step reads this step's fresh keys/values (from the token cache); False
        lets the sampler run a full step on an engine's lean full-step graph (contracts.FullStepEngine).
    """

    pos_sub: np.ndarray
    order: np.ndarray | int
    full: bool = False
    mask: np.ndarray | None = None
    series_full: np.ndarray | None = None
    needs_kv: bool = True

    def computed(self, horizon: int) -> np.ndarray:
        """bool [G, N, H]: True where a token is computed this step."""
        if self.mask is not None:
            return self.mask
        G, N, _ = self.pos_sub.shape
        if self.full:
            return np.ones((G, N, horizon), dtype=bool)
        mask = np.zeros((G, N, horizon + 1), dtype=bool)  # last column swallows padding entries
        np.put_along_axis(mask, self.pos_sub, True, axis=2)
        return mask[:, :, :horizon]


def subset_positions(computed: np.ndarray, bucket: int = 1) -> np.ndarray:
    """pos_sub int64 [G, N, S] for a computed mask bool [G, N, H] (docs/sampler.md section 2).

    Each row's computed positions in ascending order, then padding entries H; S = the largest row
    count rounded up to a multiple of `bucket`, at most H (0 when nothing is computed).
    """
    G, N, H = computed.shape
    need = int(computed.sum(axis=2).max()) if computed.size else 0
    S = min(H, -(-need // bucket) * bucket)
    key = np.where(computed, np.arange(H, dtype=np.int64), H)
    return np.sort(key, axis=2)[:, :, :S]
