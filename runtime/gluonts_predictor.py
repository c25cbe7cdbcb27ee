"""A GluonTS Predictor over a dil Forecaster, so GluonTS's own evaluation scores dil next to its models.

    from gluonts.evaluation import Evaluator, backtest_metrics
    from dil.runtime import QUANTILE_LEVELS
    from dil.runtime.gluonts_predictor import DilPredictor
    predictor = DilPredictor()                     # the shipped model; or DilPredictor("engines/NAME.onnx")
    agg, per_item = backtest_metrics(test_data, predictor, Evaluator(quantiles=QUANTILE_LEVELS, num_workers=0))

`predict(dataset)` yields one gluonts SampleForecast per entry: samples float64 [num_samples,
horizon] on the entry's own scale, starting at the Period after the entry's last target step. The
entry's noise is keyed by its item_id (the series key of Forecaster.predict), so a forecast does not
depend on the other entries of the dataset nor on how they are batched: an entry whose item_id is
dil-eval's window id ("<series>@<origin row>", dil.evaluate.harness.window_ids) gets dil-eval's
samples exactly.

gluonts is an optional dependency (`pip install 'dil[gluonts]'`); importing this module without it
raises MissingDependency (an ImportError) with that line. `import dil.runtime` never imports it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from dil.runtime import Forecaster
from dil.runtime.support.deps import require

# Imported through require so that a missing gluonts is one line naming the extra, not a traceback.
_predictor = require("gluonts.model.predictor", "gluonts")
_forecast = require("gluonts.model.forecast", "gluonts")

# Entries per Forecaster call: enough windows to keep the engine's batches full, few enough that one
# call's samples (8 * batch * num_samples * horizon bytes) stay small.
DEFAULT_BATCH_SIZE = 64
_CONFIG_FILE = "dil-predictor.json"


class DilPredictorError(ValueError):
    """An entry cannot be forecast (too short, not univariate, no Period start). One line, naming
    the entry's item_id."""


class DilPredictor(_predictor.Predictor):
    """GluonTS Predictor for a dil Forecaster (an exported artifact).

    forecaster_or_artifact_path: a loaded Forecaster, a path naming an artifact (any of
    NAME.{json,encode.onnx,denoise.onnx}, see Forecaster.load), or None for the shipped model.
    num_samples: N, samples per forecast (predict's default). seed: the base seed of every
    entry's stream. batch_size: entries per Forecaster call (speed and memory only; the forecasts
    do not depend on it). settings: sampler settings passed to Forecaster.predict as they are
    (steps=, solver_order=, lattice=, cache=, ... ; none: the artifact's defaults, as dil-eval);
    a bad one raises ValueError on the first predict.

    prediction_length is the model's horizon H; an entry needs at least the model's
    context_length L observations (its last L are the context, NaN = missing).
    """

    def __init__(self, forecaster_or_artifact_path=None, num_samples: int = 100, seed: int = 0,
                 batch_size: int = DEFAULT_BATCH_SIZE, **settings):
        if isinstance(forecaster_or_artifact_path, Forecaster):
            self.forecaster, self.artifact = forecaster_or_artifact_path, None
            self._from_object = True
        else:
            self.forecaster = Forecaster.load(forecaster_or_artifact_path)
            self.artifact = None if forecaster_or_artifact_path is None else str(forecaster_or_artifact_path)
            self._from_object = False
        super().__init__(prediction_length=self.forecaster.horizon)
        if int(num_samples) < 1 or int(batch_size) < 1:
            raise ValueError(f"num_samples and batch_size must be >= 1, got {num_samples} and {batch_size}")
        self.num_samples, self.seed, self.batch_size = int(num_samples), int(seed), int(batch_size)
        self.settings = dict(settings)
        spec = self.forecaster.features
        if spec.covariates:
            # GluonTS's feat_dynamic_real arrays carry no column names to match the model's covariates by.
            names = ", ".join(c.name for c in spec.covariates)
            raise DilPredictorError(f"the model uses covariates ({names}); DilPredictor feeds only the target "
                                    "and time features: use Forecaster.predict(..., covariates=)")
        # Only a model with time features needs each entry's dates (and then shares a call only
        # between entries whose context covers the same periods).
        self._dated = bool(spec.time_features)

    @property
    def context_length(self) -> int:
        return self.forecaster.context_length

    def predict(self, dataset, num_samples: int | None = None, **kwargs):
        """Yield one SampleForecast per entry of `dataset`, in its order.

        dataset: an iterable of GluonTS entries: "target" float [T] (T >= context_length, NaN =
        missing), "start" a pandas Period (its freq is the series'), optional "item_id".
        num_samples: N (default: the predictor's). Each forecast: samples float64 [N, H] (original
        scale), start_date = start + T (the Period after the last target step), item_id = the
        entry's. The noise is keyed by item_id; an entry without one is keyed by its position in
        `dataset`. Entries sharing an item_id share their noise stream: give every window its own
        id (as dil-eval: "<series>@<origin row>") for independent forecasts.
        Other keyword arguments (GluonTS passes none to a sample predictor) are ignored.
        """
        n = self.num_samples if num_samples is None else int(num_samples)
        pending = []
        for position, entry in enumerate(dataset):
            pending.append(self._prepare(entry, position))
            if len(pending) == self.batch_size:
                yield from self._forecast(pending, n)
                pending = []
        if pending:
            yield from self._forecast(pending, n)

    def _prepare(self, entry, position: int) -> dict:
        """One entry as {"item_id", "key" (its noise stream), "context" float64 [L], "start" (the
        forecast's first Period), "group" (entries of one group can share a Forecaster call)}."""
        import pandas as pd

        item_id = entry.get("item_id")
        target = np.asarray(entry["target"], dtype=np.float64)
        L = self.context_length
        if target.ndim != 1:
            raise DilPredictorError(f"item_id {item_id!r}: target has shape {target.shape}, DilPredictor forecasts "
                                    "univariate series (a 1-D target)")
        if target.shape[0] < L:
            raise DilPredictorError(f"item_id {item_id!r}: {target.shape[0]} observations, the model needs at least "
                                    f"{L} (context_length)")
        start = entry["start"]
        if not isinstance(start, pd.Period):
            raise DilPredictorError(f"item_id {item_id!r}: start is {type(start).__name__}, not a pandas Period "
                                    "(GluonTS datasets make it one from their freq)")
        first = start + target.shape[0]  # the Period after the last observation
        # Keyed by position, not as None: every entry without an id would otherwise share one stream.
        key = item_id if item_id is not None else position
        group = (first, first.freqstr) if self._dated else None
        return {"item_id": item_id, "key": key, "context": target[-L:], "start": first, "group": group}

    def _forecast(self, entries: list, num_samples: int):
        """SampleForecasts of `entries` (from _prepare), in their order: one Forecaster call per
        group, the contexts as the columns of one history [L, G]."""
        groups: dict = {}
        for i, e in enumerate(entries):
            groups.setdefault(e["group"], []).append(i)
        samples = [None] * len(entries)
        for group, members in groups.items():
            history = np.stack([entries[i]["context"] for i in members], axis=1)  # [L, G]
            # Forecaster.predict keys stream g by series_ids[g]: the same key gives the same noise
            # whatever else is in the call, so a forecast does not depend on the batching above.
            fc = self.forecaster.predict(history, num_samples=num_samples, seed=self.seed,
                                         series_ids=[entries[i]["key"] for i in members],
                                         timestamps=self._timestamps(group), **self.settings)
            for g, i in enumerate(members):
                samples[i] = fc.samples[g]  # [N, H]
        for e, s in zip(entries, samples):
            yield _forecast.SampleForecast(samples=s, start_date=e["start"], item_id=e["item_id"])

    def _timestamps(self, group):
        """The dates of the L context steps of a dated group (None for a model without time
        features): the Periods before the forecast's first one, at their start, as the table
        rows' dates dil-train derived the model's time features from. Forecaster.predict infers
        their step and dates the H future steps from it."""
        if group is None:
            return None
        import pandas as pd

        first, _ = group
        return pd.period_range(end=first - 1, periods=self.context_length, freq=first.freq).to_timestamp()

    def serialize(self, path: Path) -> None:
        """GluonTS's predictor files plus dil-predictor.json (the artifact path and settings). A
        predictor built from a Forecaster object has no path to record: DilPredictorError."""
        if self._from_object:
            raise DilPredictorError("a DilPredictor built from a Forecaster object cannot be serialised: build it "
                                    "from the artifact's path (or None for the shipped model)")
        path = Path(path)
        super().serialize(path)
        config = {"artifact": self.artifact, "num_samples": self.num_samples, "seed": self.seed,
                  "batch_size": self.batch_size, "settings": self.settings}
        (path / _CONFIG_FILE).write_text(json.dumps(config, indent=1), encoding="utf-8")

    @classmethod
    def deserialize(cls, path: Path, **kwargs) -> "DilPredictor":
        """The predictor `serialize` wrote to `path` (kwargs, GluonTS's device hints, are ignored)."""
        config = json.loads((Path(path) / _CONFIG_FILE).read_text(encoding="utf-8"))
        return cls(config["artifact"], num_samples=config["num_samples"], seed=config["seed"],
                   batch_size=config["batch_size"], **config["settings"])
