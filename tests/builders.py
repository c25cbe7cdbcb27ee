"""Builders shared by the tests: small random score networks with patches, tables of hourly series
(wide and long) and scripted sampler decisions. The tiny model, its checkpoint and its exported
artifact are conftest.py's fixtures."""

from __future__ import annotations

import numpy as np
import pandas as pd

from dil.runtime.model.config import ModelConfig
from dil.runtime.sampling.step_plan import StepPlan

NAMES = ["east", "north", "south"]


def patch_model(horizon: int, patch: int, known: int = 0, prediction: str = "v", seed: int = 1):
    """A random ScoreNet: context 48 in patches of 12, `horizon` steps in tokens of `patch`, `known`
    known features per step, and a non-zero head (a zero head would make every output 0)."""
    import torch

    from dil.train.model import ScoreNet

    torch.manual_seed(seed)
    config = ModelConfig(context_length=48, horizon=horizon, d_model=16, num_heads=2, num_layers=2, ffn_dim=32,
                         time_embed_dim=8, context_patch=12, horizon_patch=patch, prediction=prediction,
                         context_features=2 + known, horizon_features=1 + known)
    model = ScoreNet(config)
    with torch.no_grad():
        model.head.weight.normal_(0.0, 0.2)
        model.head.bias.normal_(0.0, 0.1)
    return model.eval()


def wide_frame(rows: int = 400, names=NAMES, seed: int = 3) -> pd.DataFrame:
    """Hourly series (daily cycle + noise, a few gaps) with a date_time column, as the shipped model reads."""
    rng = np.random.default_rng(seed)
    t = np.arange(rows)
    data = {"date_time": pd.date_range("2018-01-01", periods=rows, freq="h").strftime("%Y-%m-%d %H:%M:%S")}
    for i, n in enumerate(names):
        x = 3000 + 1500 * np.sin(2 * np.pi * (t + 3 * i) / 24) + rng.normal(0, 100, rows)
        x[rng.choice(rows, 5, replace=False)] = np.nan
        data[n] = x
    return pd.DataFrame(data)


def to_long(wide: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """The long form of a wide frame, rows shuffled (a long table's rows come in any order)."""
    long = wide.melt(id_vars="date_time", var_name="id", value_name="value")[["id", "date_time", "value"]]
    return long.sample(frac=1.0, random_state=seed).reset_index(drop=True)


def scripted(G: int, N: int, H: int, steps: int, seed: int = 0):
    """Per step: computed bool [G, N, H] (all on step 0, ~40% later, never an empty row) and
    requested orders int [G, N, H] in 1..3."""
    rng = np.random.default_rng(seed)
    masks = rng.random((steps, G, N, H)) < 0.4
    masks[0] = True
    masks[:, :, :, 0] = True
    orders = rng.integers(1, 4, size=(steps, G, N, H))
    return masks, orders


def runtime_positions(mask: np.ndarray, bucket: int = 4) -> np.ndarray:
    """NumPy twin of subset_positions for the runtime side of the scripted controller."""
    G, N, H = mask.shape
    S = min(H, -(-int(mask.sum(-1).max()) // bucket) * bucket)
    return np.sort(np.where(mask, np.arange(H), H), axis=-1)[..., :S].astype(np.int64)


class ScriptedRuntime:
    """A runtime controller replaying fixed decisions."""

    def __init__(self, masks, orders):
        self.masks, self.orders = masks, orders

    counters: dict = {}

    def start(self, G, N, H, solver, streams, domain="time"):
        pass

    def plan(self, i, cache):
        m = self.masks[i]
        return StepPlan(pos_sub=runtime_positions(m), order=self.orders[i], full=bool(m.all()))

    def adjust(self, i, cache, computed):
        pass

    def observe(self, i, cache):
        pass


class ScriptedReference:
    """The reference twin of ScriptedRuntime."""

    def __init__(self, masks, orders):
        self.masks, self.orders = masks, orders

    def start(self, sampler, streams):
        pass

    def plan(self, i, sampler):
        import torch

        from dil.evaluate.reference.sampler import ReferencePlan

        m = torch.from_numpy(self.masks[i])
        return ReferencePlan(m, torch.from_numpy(self.orders[i]), m.all(dim=2).all(dim=1))

    def observe(self, i, sampler):
        pass
