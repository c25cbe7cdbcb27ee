"""Watching a training run: its loss (LossGuard stops a run that diverges) and its progress
(tqdm's bar on a terminal, one line per epoch in a log)."""

from __future__ import annotations

import math
import sys
import time

import numpy as np

# A batch loss this many times the median of the recent ones (or not finite) stops the run: the
# optimizer would carry such a step into every later one (docs/model.md section 4).
DIVERGENCE_FACTOR = 1e3
RECENT_LOSSES = 50
# A loss no healthy run comes near: with the scale floor the bundled datasets' training windows have
# mean squared standardised targets below 300 (docs/model.md section 1.3), and the loss is of that order.
MAX_LOSS = 1e6


class TrainingDiverged(ValueError):
    """A batch's loss was not finite or grew by orders of magnitude; one line naming its worst window."""


class LossGuard:
    """TrainingDiverged when a batch's loss is not finite, above MAX_LOSS, or DIVERGENCE_FACTOR x the
    median of the last RECENT_LOSSES batches. windows: the train WindowSet (origins, channels,
    context, horizon), names: its table's series, source: the table's file name."""

    def __init__(self, windows, names: list, source: str):
        self.windows, self.names, self.source = windows, names, source
        self.recent: list[float] = []

    def check(self, loss: float, step: int, index: np.ndarray, batch, epoch: int) -> None:
        """TrainingDiverged when the batch loss is not finite or DIVERGENCE_FACTOR x the median of the
        last RECENT_LOSSES; the run folder keeps its last epoch (nothing of this one is written)."""
        recent = self.recent
        if math.isfinite(loss) and loss <= MAX_LOSS and (len(recent) < 10 or
                                                          loss <= DIVERGENCE_FACTOR * float(np.median(recent))):
            recent.append(loss)
            del recent[:-RECENT_LOSSES]
            return
        why = ("not finite" if not math.isfinite(loss) else f"above {MAX_LOSS:g}" if loss > MAX_LOSS else
               f"{loss / float(np.median(recent)):.3g} x the median of the last {len(recent)} batches")
        # the worst window: the largest mean squared standardised target (what a loss grows with)
        sq = np.where(batch.mask > 0, np.asarray(batch.target, dtype=np.float64) ** 2, 0.0)
        w = int(np.argmax(sq.reshape(len(index), -1).mean(axis=1)))
        ws = self.windows
        origin, series = int(ws.origins[index[w]]), self.names[int(ws.channels[index[w]])]
        kept = (f"the run folder keeps epoch {epoch} (--resume continues from it)" if epoch
                else "no epoch was completed, so nothing is kept")
        raise TrainingDiverged(
            f"training stopped at step {step + 1}: the batch loss {loss:.3g} is {why}; its worst window is series "
            f"{series!r}, data rows {origin - ws.context + 1}..{origin + ws.horizon} of {self.source} (check them for "
            f"sentinels or outliers: --missing-value V reads V as missing; a lower --lr helps a run that blows up); "
            f"{kept}")


class EpochLines:
    """Progress when stderr is not a terminal (a log, CI, a pipe): one line per epoch, where tqdm's bar
    would write a line per refresh (27 KB per 150 steps)."""

    def __init__(self, total: int, initial: int):
        self.total, self.n, self.start = total, initial, time.perf_counter()

    def update(self, n: int = 1) -> None:
        self.n += n

    def set_postfix(self, **values) -> None:
        if "val" in values:  # the epoch's end: its training and validation loss are known
            shown = ", ".join(f"{k} {v}" for k, v in values.items())
            print(f"train: step {self.n}/{self.total}, {shown}, {time.perf_counter() - self.start:.0f} s",
                  file=sys.stderr, flush=True)

    def close(self) -> None:
        pass


def progress_bar(total: int, initial: int, enabled: bool):
    from tqdm.auto import tqdm

    if enabled and not sys.stderr.isatty():
        return EpochLines(total, initial)
    return tqdm(total=total, initial=initial, desc="train", unit="step", file=sys.stderr, disable=not enabled,
                dynamic_ncols=True)
