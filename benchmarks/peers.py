"""Peer benchmark: GluonTS DeepAR (and PatchTST) next to dil on dil-eval's test windows of a bundled dataset.

Run from the repository root (the peers need the optional extra: pip install 'dil[peers]'):

    python benchmarks/peers.py                                # metro-traffic: DeepAR 3x64 vs the shipped model
    python benchmarks/peers.py --models 3x64,2x40,2x40-168,patchtst --json peers.json
    python benchmarks/peers.py --dataset etth1 --engine engines/etth1.json --models 3x64,patchtst
    python benchmarks/peers.py --windows 10 --epochs 1 --no-write      # a quick look, nothing written

The protocol, the same for every model of a run. The dataset is --dataset NAME, one of
dil.data.registry.DATASETS (default metro-traffic); its registry spec gives the row frequency, the
split, the horizon H and the season:

    dataset        series  rows    one row          train        validation      test            H    season
    metro-traffic   1      52,551  an hour          [0, 36786)   [36786, 42041)  [42041, 52551)   24  168
    exchange-rate   8       7,588  a business day   [0, 5464)    [5464, 6071)    [6071, 6221)     30    5
    etth1, etth2    7      17,420  an hour          [0, 8640)    [8640, 11520)   [11520, 14400)   24  168
    weather        21      52,704  10 minutes       [0, 36893)   [36893, 42163)  [42163, 52704)  144  144

- Data: the bundled table exactly as dil-eval builds it for the dil model and NAME
  (dil.evaluate.engine_eval.engine_data, as `dil-eval --engine E --dataset NAME`): every series of
  the dataset, its missing values NaN (hours missing from metro's file, weather's -9999, and those
  the model's manifest records). The dil model's covariate columns (those its manifest names, e.g.
  metro's temp) are read too, for dil only. Rows without dates (exchange-rate) start on 1990-01-01
  for GluonTS, where its own exchange_rate dataset starts them (only DeepAR's calendar features see
  it).
- Test windows: dil-eval's. Origins o = test start + H k while o + H <= the test end, one window per
  series at each origin: metro-traffic 437 x 1 series, exchange-rate 5 x 8, etth1 and etth2
  120 x 7, weather 73 x 21; H steps, 100 samples per window. A window whose context or target is all
  missing is not scored (dil-eval's rule; none of these is), missing target steps count in no
  score. --windows N keeps N evenly spaced origins (first and last included), every series of each.
- Peers (gluonts.torch estimators: freq the dataset's, prediction_length H, batch_size 32,
  num_batches_per_epoch 50) learn from the train rows, one GluonTS series per series of the dataset
  (one global model without series-id features, GluonTS's multi-series training), at most 30 epochs
  on the CPU after lightning's seed_everything(0). Their validation data are the windows whose
  H-step targets tile the validation rows, each one the series up to the end of its target:
  metro-traffic 218, exchange-rate 20 x 8 series, etth1 and etth2 120 x 7, weather 36 x 21;
  watched by EarlyStopping(val_loss, patience 5, min_delta 1e-3); GluonTS keeps the weights of the
  best validation epoch. A peer's context_length is --context-length, else the dil model's context
  L (on metro-traffic: 168, the context of every published metro run). Models:
  3x64 and 2x40: DeepAR with 3 LSTM layers of 64, 2 of 40, GluonTS's default lags and calendar
  features of the row frequency (the lags reach 721 hours, 780 business days or 1009 10-minute
  steps back beyond the context).
  2x40-168 (hourly datasets only): 2x40 held to 168 rows of history (context_length 145, lags 1..7,
  23, 24; the context of dil's first metro-traffic model).
  patchtst: PatchTST (Nie et al., ICLR 2023), gluonts.torch's PatchTSTEstimator: patches of 16 rows
  at stride 8, 2 encoder layers of width 32 with 4 heads (GluonTS's defaults), a Student-t output
  per step, each context standardised by its mean and standard deviation (scaling "std", the
  paper's RevIN); no calendar features, no lags beyond its context.
- Peers forecast each window from the whole series before its origin (predict, 100 samples;
  PatchTST's per-step Student-t distributions are sampled 100 times). dil (the shipped model for
  metro-traffic, else --engine, which another dataset requires) forecasts it from its context,
  the L rows before the origin (L = the manifest's model.context_length), with the inputs its
  manifest's FeatureSpec names: calendar features of those rows and of the forecast rows,
  covariate columns of the table (known ones for the forecast rows too), exactly as dil-eval
  builds them. It runs through dil-eval's forecaster: default sampler and steps, seed 0, each
  window's noise keyed by its id. Its horizon must be the protocol's H: the dataset's, or
  --horizon H (e.g. 96, the long horizon of docs/results.md: then the peers learn H steps ahead,
  validate on H-step windows and forecast H-step test windows at stride H). The test windows do not
  depend on L (dil-eval's origins, for any L up to the test start).
- Scores: dil.evaluate.metrics, as dil-eval computes them, over every scored (series, origin)
  window together. CRPS: the weighted quantile loss at the 19 levels 0.05..0.95 (quantiles of the
  samples by numpy's linear interpolation), averaged over the levels and divided by sum |y|; MAE of
  the median (in the data's units, e.g. vehicles per hour); coverage of the central 50% and 90%
  intervals. Seasonal naive is dil-eval's, at the dataset's season (the last column above): the
  step a season before, from the whole series before the origin (the same whatever dil's context).
- Times, wall clock in this process: a peer's training is the whole fit (validation included); "all
  windows" is one predict call over every window for a peer and every window through dil-eval's
  batches for dil; "one window" is the median of 5 single-window forecasts, after a warm-up call
  that also precedes the all-windows timing. dil's training time is the one its manifest records,
  not measured in the run. Times move with other work on the machine: compare ratios of one run.

The page section (--markdown) is the dataset's: metro-traffic's between <!-- peers:start --> and
<!-- peers:end -->, another dataset's between <!-- peers-NAME:start --> and <!-- peers-NAME:end -->;
a run replaces its own section in place (or appends it) and leaves the others as they are.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import shlex
import statistics
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import ClassVar

import numpy as np

DATASET = "metro-traffic"  # the default dataset, the shipped model's
METRO_CONTEXT = 168  # the peers' context on metro-traffic: that of every published metro run
UNDATED_START = "1990-01-01"  # row 0 of a table without dates, as GluonTS's exchange_rate dataset
MARK_START, MARK_END = "<!-- peers:start -->", "<!-- peers:end -->"  # metro-traffic's section
REPEATS = 5  # single-window timings, after one warm-up


def markers(dataset: str = DATASET) -> tuple[str, str]:
    """The markers of `dataset`'s section of the page: metro-traffic's are the first run's
    (MARK_START, MARK_END), another dataset's name it, e.g. <!-- peers-etth1:start -->."""
    if dataset == DATASET:
        return MARK_START, MARK_END
    return f"<!-- peers-{dataset}:start -->", f"<!-- peers-{dataset}:end -->"


@dataclass(frozen=True)
class PeerModel:
    """One DeepAR configuration (gluonts.torch DeepAREstimator arguments)."""

    family: ClassVar[str] = "DeepAR"

    num_layers: int
    hidden_size: int
    context_length: int | None = None  # None: the run's (default_context)
    lags_seq: tuple | None = None  # None: GluonTS's default lags for the row frequency
    label: str = ""

    def estimator_kwargs(self) -> dict:
        kw = {"num_layers": self.num_layers, "hidden_size": self.hidden_size, "context_length": self.context_length}
        return kw if self.lags_seq is None else {**kw, "lags_seq": list(self.lags_seq)}

    def estimator(self, freq: str, horizon: int, training: "Training", trainer_kwargs: dict):
        deepar = require_peers()
        return deepar.DeepAREstimator(freq=freq, prediction_length=horizon, batch_size=training.batch_size,
                                      num_batches_per_epoch=training.num_batches_per_epoch,
                                      **self.estimator_kwargs(), trainer_kwargs=trainer_kwargs)


@dataclass(frozen=True)
class PatchTSTModel:
    """One PatchTST configuration (gluonts.torch PatchTSTEstimator arguments; GluonTS's defaults but
    the scaling, "std": the paper's RevIN standardisation of each context)."""

    family: ClassVar[str] = "PatchTST"

    patch_len: int = 16
    stride: int = 8
    d_model: int = 32
    nhead: int = 4
    num_encoder_layers: int = 2
    dim_feedforward: int = 128
    scaling: str = "std"
    context_length: int | None = None  # None: the run's (default_context)
    label: str = ""

    def estimator(self, freq: str, horizon: int, training: "Training", trainer_kwargs: dict):
        require_peers()
        from dil.runtime.support.deps import require

        patch_tst = require("gluonts.torch.model.patch_tst", "peers")
        kw = {k: v for k, v in asdict(self).items() if k != "label"}
        return patch_tst.PatchTSTEstimator(prediction_length=horizon, batch_size=training.batch_size,
                                           num_batches_per_epoch=training.num_batches_per_epoch, **kw,
                                           trainer_kwargs=trainer_kwargs)


MODELS = {
    "3x64": PeerModel(3, 64, label="DeepAR 3x64"),
    "2x40": PeerModel(2, 40, label="DeepAR 2x40"),
    # 145 context rows + the longest lag (24) = 168 rows of history, the context of dil's first
    # metro-traffic model.
    "2x40-168": PeerModel(2, 40, context_length=145, lags_seq=(1, 2, 3, 4, 5, 6, 7, 23, 24),
                          label="DeepAR 2x40, history held to 168 rows"),
    "patchtst": PatchTSTModel(label="PatchTST 2x32, patches of 16"),
}
HOURLY_ONLY = {"2x40-168"}  # lags that are hours of a day


def default_context(spec, fc=None) -> int:
    """The context_length of a peer that names none: on metro-traffic METRO_CONTEXT (168), else the
    dil model's context (fc, a Forecaster), else the dataset's (spec.context_length)."""
    if spec.name == DATASET:
        return METRO_CONTEXT
    return int(fc.context_length) if fc is not None else int(spec.context_length)


@dataclass(frozen=True)
class Training:
    """How every peer of a run is trained (the protocol's values by default)."""

    epochs: int = 30
    batch_size: int = 32
    num_batches_per_epoch: int = 50
    patience: int = 5
    min_delta: float = 1e-3
    seed: int = 0


@dataclass
class PeerData:
    """The rows and windows of the protocol for one dataset.

    series: float64 [C, T], one row per series of the table (NaN = missing); start: the time of row 0
    (None for a table without dates). train_end: rows [0, train_end) train the peers. val_origins:
    int64 [V], validation origins (targets [o, o + horizon) inside the validation rows; one window
    per series at each). windows: dil.evaluate.harness.EvalWindows of the test origins (contexts of
    the dil model's length L, and its WindowFeatures where it has features). test_origins,
    test_series: int64 [W], the origin and series of each scored test window, origin-major (the
    order of dil-eval's forecasts and of score_samples). spec: the DatasetSpec; horizon: its H, the
    peers' prediction length and the validation windows' (the test windows' unless a test asked
    for another).
    """

    series: np.ndarray
    start: object
    train_end: int
    val_origins: np.ndarray
    windows: object
    test_origins: np.ndarray
    test_series: np.ndarray
    spec: object
    horizon: int

    @property
    def values(self) -> np.ndarray:
        """float64 [T]: the one series of a single-series table (metro-traffic's traffic_volume)."""
        if self.series.shape[0] != 1:
            raise ValueError(f"{self.spec.name} has {self.series.shape[0]} series: read PeerData.series")
        return self.series[0]


def peer_data(table, spec, context: int, n_windows: int | None = None, features=None,
              horizon: int | None = None) -> PeerData:
    """The protocol's bookkeeping from a dil.data table and its DatasetSpec, for a dil model of context
    `context` and FeatureSpec `features` (None: none; the table then holds the dates and covariate
    columns it needs). horizon: the test windows' (None: the dataset's H; another only to test a
    model of another horizon); the validation windows and the peers always have the dataset's."""
    from dil.data.windows import split_bounds, window_origins
    from dil.evaluate.harness import protocol_windows

    values = np.asarray(table.values, dtype=np.float64)
    if values.ndim != 2:
        raise ValueError(f"expected a table of values [rows, series], got shape {values.shape}")
    h = int(spec.horizon)
    bounds = split_bounds(spec, values.shape[0])
    (_, train_end), (val_start, val_end) = bounds["train"], bounds["val"]
    val_origins = window_origins(values.shape[0], 1, h, val_start, val_end, stride=h)
    w = protocol_windows(table, spec, context, h if horizon is None else int(horizon), n_windows, features=features)
    o, c = np.argwhere(w.valid).T  # origin-major, as dil-eval forecasts them
    return PeerData(series=np.ascontiguousarray(values.T), start=None if table.timestamps is None else
                    np.asarray(table.timestamps)[0], train_end=int(train_end), val_origins=val_origins,
                    windows=w, test_origins=w.origins[o], test_series=c.astype(np.int64), spec=spec, horizon=h)


def peer_entries(data: PeerData) -> tuple[list, list, list]:
    """GluonTS data entries (dicts with a pandas Period start of the dataset's frequency and a float32
    target; the targets of one series are views of one float32 copy of it): the training series
    (rows [0, train_end) of each series), one validation series per validation window (a series up
    to the end of its target; origin-major) and one test series per scored test window (the series
    before its origin; in the order of test_origins)."""
    import pandas as pd

    with warnings.catch_warnings():  # pandas deprecates business-day Periods; GluonTS 0.17 still takes them
        warnings.filterwarnings("ignore", "Period with BDay freq", FutureWarning)
        start = pd.Period(UNDATED_START if data.start is None else pd.Timestamp(data.start), freq=data.spec.freq)
    names = data.windows.names
    columns = [s.astype(np.float32) for s in data.series]

    def entry(c: int, end: int) -> dict:
        return {"start": start, "target": columns[c][:end], "item_id": f"{names[c]}@rows<{end}"}

    every = range(len(columns))
    return ([entry(c, data.train_end) for c in every],
            [entry(c, int(o) + data.horizon) for o in data.val_origins for c in every],
            [entry(int(c), int(o)) for o, c in zip(data.test_origins, data.test_series)])


def require_peers():
    """gluonts (torch part) and lightning, or MissingDependency naming the extra."""
    from dil.runtime.support.deps import require

    require("gluonts", "peers")
    require("lightning", "peers")
    return require("gluonts.torch.model.deepar", "peers")


def _quiet() -> None:
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning", "gluonts"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module=r"(lightning|pytorch_lightning|gluonts)(\..*)?")


def train_peer(model, data: PeerData, training: Training) -> tuple[object, dict]:
    """Fit one peer (a PeerModel or PatchTSTModel whose context_length is set) on the train rows with
    the validation windows: (predictor, facts), facts = {train_s, epochs_run, stopped_early}.
    Lightning's checkpoints go to a temporary folder."""
    require_peers()
    from lightning.pytorch import seed_everything
    from lightning.pytorch.callbacks import EarlyStopping

    _quiet()
    train, val, _ = peer_entries(data)
    stop = EarlyStopping(monitor="val_loss", patience=training.patience, min_delta=training.min_delta)
    with tempfile.TemporaryDirectory(prefix="dil-peers-") as tmp:
        seed_everything(training.seed, verbose=False)
        estimator = model.estimator(
            data.spec.freq, data.horizon, training,
            {"max_epochs": training.epochs, "accelerator": "cpu", "callbacks": [stop], "default_root_dir": tmp,
             "logger": False, "enable_progress_bar": False, "enable_model_summary": False},
        )
        t0 = time.perf_counter()
        out = estimator.train_model(train, validation_data=val)
        seconds = time.perf_counter() - t0
    return out.predictor, {"train_s": seconds, "epochs_run": int(out.trainer.current_epoch),
                           "stopped_early": bool(stop.stopped_epoch)}



def _timed_single(call, repeats: int = REPEATS) -> float:
    """Median milliseconds of `repeats` calls (the caller has warmed up)."""
    return 1e3 * statistics.median(_seconds(call) for _ in range(repeats))


def _seconds(call) -> float:
    t0 = time.perf_counter()
    call()
    return time.perf_counter() - t0


def _samples(forecast, n: int) -> np.ndarray:
    """A GluonTS forecast's samples [n, H]: a SampleForecast's own (DeepAR), or n drawn from a
    DistributionForecast (PatchTST) by torch's generator."""
    return forecast.samples if hasattr(forecast, "samples") else forecast.to_sample_forecast(n).samples


def peer_forecasts(predictor, data: PeerData, samples: int, seed: int = 0) -> tuple[np.ndarray, dict]:
    """A peer's samples float64 [W, samples, H] of the scored test windows, and the times
    {all_s, one_ms}."""
    import torch

    _, _, test = peer_entries(data)

    def predict(entries):
        return np.stack([_samples(f, samples) for f in predictor.predict(entries, num_samples=samples)])

    predict(test[:1])  # warm-up
    torch.manual_seed(seed)  # the sample paths of one run are reproducible
    out = []
    all_s = _seconds(lambda: out.append(predict(test)))
    return out[0].astype(np.float64), {"all_s": all_s, "one_ms": _timed_single(lambda: predict(test[:1]))}



def dil_scores(forecaster, data: PeerData, samples: int, seed: int = 0) -> dict:
    """The dil forecaster's scores on the scored test windows and its times {all_s, one_ms}. Each
    window gets its WindowFeatures (data.windows.features) when the model has features, as in
    dil-eval."""
    from dil.evaluate.engine_eval import forecaster_fn
    from dil.evaluate.harness import ALL, EvalOptions, stream_forecasts, window_ids

    w = data.windows
    fn = forecaster_fn(forecaster, samples, None, seed)
    spent = []

    def timed(contexts, ids, *features):
        out = []
        spent.append(_seconds(lambda: out.append(fn(contexts, ids, *features))))
        return out[0]

    o, c = np.argwhere(w.valid)[0]
    one = (w.contexts[o, c][None], [window_ids(w.names, w.origins)[o][c]],
           *(() if w.features is None else (w.features.take(np.array([o])),)))
    fn(*one)  # warm-up: ONNX Runtime's first run sizes its arenas
    scores = stream_forecasts(timed, w, w.valid, EvalOptions(samples=samples, seed=seed), desc="dil").scores(ALL)
    return {**scores, "all_s": sum(spent), "one_ms": _timed_single(lambda: fn(*one))}


def _check_engine(engine, dataset: str) -> None:
    """ValueError when `dataset` needs an engine and none is given (the shipped model is metro's)."""
    if engine is None and dataset != DATASET:
        raise ValueError(f"--dataset {dataset} needs --engine, a dil artifact to compare (the shipped model is "
                         f"{DATASET}'s)")


def load_dil(engine=None, threads: int | None = None, dataset: str = DATASET, horizon: int | None = None):
    """The dil Forecaster to compare on `dataset` (engine None: the shipped model, metro-traffic's
    only; threads: ONNX Runtime's intra-op threads, None: its default; horizon: the protocol's H,
    None: the dataset's); ValueError when the dataset needs an engine or the engine does not
    forecast the protocol's horizon."""
    from dil.data.registry import get_spec
    from dil.runtime import Forecaster

    spec = get_spec(dataset)
    _check_engine(engine, dataset)
    fc = Forecaster.load(engine, threads=threads)
    want = spec.horizon if horizon is None else int(horizon)
    if fc.horizon != want:
        raise ValueError(f"engine {engine or 'shipped default'} forecasts {fc.horizon} steps; the peer protocol of "
                         f"{dataset} forecasts {want}" + ("" if horizon else f" (--horizon {fc.horizon} sets it)"))
    return fc


def peer_inputs(fc, n_windows: int | None = None, horizon: int | None = None, dataset: str = DATASET,
                protocol_horizon: int | None = None) -> tuple:
    """(DatasetSpec, SeriesTable, PeerData) of the protocol for the dil Forecaster `fc` on the bundled
    `dataset`: its table as dil-eval reads it for the model (engine_data: every series, the missing
    values the manifest records, the covariate columns the model reads), the windows of its
    context and features. protocol_horizon: the protocol's H for peers, validation and test windows
    alike (None: the dataset's; the spec is then that of the dataset with this horizon). DataError /
    FeatureError (one line) when the table lacks what the model needs."""
    from dil.evaluate.engine_eval import engine_data

    spec, table = engine_data(None, fc.manifest, dataset=dataset)
    if protocol_horizon is not None:
        spec = replace(spec, horizon=int(protocol_horizon))
    return spec, table, peer_data(table, spec, fc.context_length, n_windows, fc.features, horizon)


# What one row is, in words, by row frequency (dil_inputs); other frequencies: "steps".
ROW_WORDS = {"h": "hours", "10min": "10-minute steps", "B": "business days", "D": "days"}


def dil_inputs(context: int, features, freq: str | None = "h") -> str:
    """What dil forecasts a window from, in words (features: the model's FeatureSpec; freq: the rows'),
    e.g. "the 336 hours before it and the calendar features (hour_of_day, ...) of those and the
    forecast hours"."""
    def plural(names):
        return "s" * (len(names) != 1) + " " + ", ".join(names)

    rows = ROW_WORDS.get(freq or "", "steps")
    parts, ahead = [f"the {context} {rows} before it"], []
    if features.time_features:
        ahead.append(f"the calendar features ({', '.join(features.time_features)})")
    if features.known_covariates:
        ahead.append(f"the covariate{plural(features.known_covariates)}")
    if ahead:
        parts.append(" and ".join(ahead) + f" of those and the forecast {rows}")
    if features.past_covariates:
        parts.append(f"the past-only covariate{plural(features.past_covariates)} of those {rows}")
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def run_peers(models: dict, fc, engine=None, samples: int = 100, n_windows: int | None = None,
              training: Training = Training(), threads: int | None = None, keep_samples: bool = False,
              inputs: tuple | None = None, dataset: str = DATASET, context: int | None = None) -> dict:
    """The whole comparison of the dil Forecaster `fc` (loaded from `engine`, None: the shipped
    model) with the peer `models` {key: PeerModel or PatchTSTModel} on the bundled `dataset`:
    {"protocol", "rows": {key: scores and times}, "machine", "versions"}. context: the
    context_length of the peers that name none (None: default_context). threads: torch's intra-op
    threads (None: its default; give ONNX Runtime the same through load_dil). keep_samples: also
    return each peer's samples, float64 [W, samples, H], under result["samples"] (arrays, not JSON).
    inputs: peer_inputs(fc, n_windows, dataset=dataset) when already at hand."""
    import torch

    from dil.evaluate.harness import resolve_season, score_point, score_samples
    from dil.evaluate.machine import busy, machine_info

    require_peers()
    if threads is not None:
        torch.set_num_threads(threads)
    machine = {**machine_info(threads), "busy": busy()}
    spec, table, data = inputs or peer_inputs(fc, n_windows, dataset=dataset)
    w = data.windows
    own = int(context) if context is not None else default_context(spec, fc)
    models = {k: m if m.context_length else replace(m, context_length=own) for k, m in models.items()}
    trained = (fc.manifest.extra.get("checkpoint") or {}).get("training") or {}
    rows = {"dil": {"label": f"dil ({fc.manifest.name}, {fc.default_config.steps} steps)",
                    "train_s": trained.get("seconds"), "distilled": "distill" in trained,
                    **dil_scores(fc, data, samples, training.seed)}}
    kept = {}
    for key, model in models.items():
        print(f"training {model.label or key} (at most {training.epochs} epochs) ...", file=sys.stderr, flush=True)
        predictor, facts = train_peer(model, data, training)
        s, times = peer_forecasts(predictor, data, samples, training.seed)
        rows[key] = {"label": model.label or key, **score_samples(w, w.valid, s), **facts, **times,
                     "family": model.family, "settings": asdict(model)}
        kept[key] = s
    naive = score_point(w, w.baseline)
    rows["seasonal_naive"] = {"label": f"seasonal naive (lag {resolve_season(spec)})", "crps": naive["crps"],
                              "mae": naive["mae"]}
    for key, row in rows.items():
        if key in models:
            row["ratios"] = {k: rows["dil"][k] / row[k] for k in ("crps", "all_s", "one_ms")}
    result = {"protocol": {**protocol(data, fc, engine, samples, training, table), "peer_context": own},
              "rows": rows, "machine": machine, "versions": _versions()}
    return {**result, "samples": kept} if keep_samples else result


def protocol(data: PeerData, fc, engine, samples: int, training: Training, table) -> dict:
    from dil.evaluate.harness import resolve_season

    w, spec = data.windows, data.spec
    return {"dataset": spec.name, "rows": int(data.series.shape[1]), "sha256": getattr(table, "sha256", ""),
            "series": int(data.series.shape[0]), "freq": spec.freq, "season": resolve_season(spec),
            "train_rows": [0, data.train_end], "validation_windows": int(data.val_origins.size * data.series.shape[0]),
            "validation_origins": int(data.val_origins.size), "test_windows": int(data.test_origins.size),
            "test_origins": int(w.origins.size), "first_origin": int(w.origins[0]), "last_origin": int(w.origins[-1]),
            "horizon": data.horizon, "samples": samples,
            "dil_engine": str(engine) if engine else "shipped default", "dil_context": fc.context_length,
            "dil_inputs": dil_inputs(fc.context_length, fc.features, spec.freq), "training": asdict(training)}


def _versions() -> dict:
    from importlib import metadata

    from dil.evaluate.machine import versions

    return {**versions(), **{pkg: metadata.version(pkg) for pkg in ("gluonts", "lightning", "pandas")}}


def _f(v, digits: int = 4) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def _mae(v) -> str:
    """An MAE in the data's units: 1 decimal from 100 up (metro's vehicles per hour), else 4
    significant digits (exchange rates near 1, temperatures, ...)."""
    return "–" if v is None else f"{v:.1f}" if abs(v) >= 100 else f"{v:.4g}"


def _families(rows: dict) -> list:
    """The peer families of a run's rows in their order (["DeepAR"] for a result without them)."""
    found = [r["family"] for k, r in rows.items() if k not in ("dil", "seasonal_naive") and r.get("family")]
    return list(dict.fromkeys(found)) or ["DeepAR"]


def markdown(result: dict, command: str) -> str:
    """The section of docs/results.md (between the dataset's markers) for one run."""
    p, m, v, rows = result["protocol"], result["machine"], result["versions"], result["rows"]
    dataset = p.get("dataset", DATASET)
    start, end = markers(dataset)
    dil = rows["dil"]
    families = _families(rows)
    peers = " and ".join(families)
    series, val_origins = p.get("series", 1), p.get("validation_origins", p["validation_windows"])
    if series == 1:
        windows = f"(origins {p['first_origin']}..{p['last_origin']}, "
        trained = f"from rows 0..{p['train_rows'][1] - 1} with the {p['validation_windows']} validation windows"
    else:
        windows = (f"(the {series} series at {p['test_origins']} origins {p['first_origin']}..{p['last_origin']}, ")
        trained = (f"from rows 0..{p['train_rows'][1] - 1} of the {series} series (one GluonTS series each) with the "
                   f"{p['validation_windows']} validation windows ({val_origins} origins x {series} series)")
    lines = [
        start,
        f"## dil next to {peers} ({dataset})",
        "",
        f"Made by `{command}` on {datetime.date.today().isoformat()}. The protocol is in the docstring of "
        f"`benchmarks/peers.py`: {'both models' if len(families) == 1 else 'all models'} forecast the same "
        f"{p['test_windows']} test windows of dil-eval {windows}"
        f"horizon {p['horizon']}, {p['samples']} samples) and are scored by the same code (dil.evaluate.metrics). "
        f"{peers} (GluonTS) {'learns' if len(families) == 1 else 'learn'} {trained} for early stopping (at most "
        f"{p['training']['epochs']} epochs) and {'forecasts' if len(families) == 1 else 'forecast'} each "
        f"window from the whole series before it; dil forecasts it from {p['dil_inputs']}.",
        "",
        f"Machine: {m['cpu']} ({m['usable_cpus']} usable cores), intra-op threads of torch and ONNX Runtime: "
        f"{m['threads'] or 'their defaults'}, load average at start {m['load_average_at_start']}"
        f"{' (' + m['busy'] + ')' if m.get('busy') else ''}. Versions: dil {v['dil']}, gluonts {v['gluonts']}, "
        f"lightning {v['lightning']}, torch {v['torch']}, onnxruntime {v['onnxruntime']}, numpy {v['numpy']}.",
        "",
        "| model | CRPS | MAE of median | coverage 50 | coverage 90 | training s | all windows s | one window ms "
        "| CRPS dil / model | all windows dil / model | one window dil / model |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for key, r in rows.items():
        ratio = r.get("ratios") or {}
        train = r.get("train_s")
        train_cell = "–" if train is None else f"{train:.0f}" + (" *" if key == "dil" else "")
        if key not in ("dil", "seasonal_naive"):
            train_cell += f" ({r['epochs_run']} epochs{', stopped early' if r['stopped_early'] else ''})"
        crps_ratio = ratio.get("crps", dil["crps"] / r["crps"] if key == "seasonal_naive" else None)
        lines.append(
            f"| {r['label']} | {_f(r['crps'])} | {_mae(r['mae'])} | {_f(r.get('coverage_50'), 3)} | "
            f"{_f(r.get('coverage_90'), 3)} | {train_cell} | {_f(r.get('all_s'), 2)} | {_f(r.get('one_ms'), 1)} | "
            f"{_f(crps_ratio, 3)} | {_f(ratio.get('all_s'), 3)} | {_f(ratio.get('one_ms'), 3)} |"
        )
    lines += [
        "",
        "Ratios below 1 favour dil. * dil's training time is the one its manifest records (it is not trained "
        "in this run)" + ("; for this distilled student that is the distillation alone, without its teacher's "
                          "training (docs/distillation.md)" if rows["dil"].get("distilled") else "") + ". "
        "Times are wall clock on the machine above and move from run to run with other work "
        "on it; compare the ratios of one run.",
        end,
    ]
    return "\n".join(lines) + "\n"


def replace_section(page: str, section: str, dataset: str = DATASET) -> str:
    """`page` with `dataset`'s peers section (between its markers) replaced by `section`, or `section`
    appended when the page has none; other datasets' sections are left as they are. ValueError for
    a page with unmatched markers of the dataset."""
    start, end = markers(dataset)
    a, b = page.find(start), page.find(end)
    if a < 0 and b < 0:
        return page.rstrip("\n") + ("\n\n" if page.strip() else "") + section
    if a < 0 or b < a or page.count(start) > 1 or page.count(end) > 1:
        raise ValueError(f"the page must hold {start} ... {end} once, in that order")
    return page[:a] + section.rstrip("\n") + page[b + len(end):]


def _models(spec: str, dataset: str = DATASET) -> dict:
    from dil.data.registry import get_spec

    keys = [k.strip() for k in spec.split(",") if k.strip()]
    bad = [k for k in keys if k not in MODELS]
    if bad or not keys:
        raise ValueError(f"--models takes a comma list of {', '.join(MODELS)}, got {spec!r}")
    freq = get_spec(dataset).freq
    hourly = [k for k in keys if k in HOURLY_ONLY and freq != "h"]
    if hourly:
        raise ValueError(f"--models {hourly[0]} is for hourly data (its lags are hours of a day); {dataset} has rows "
                         f"of {freq}")
    return {k: MODELS[k] for k in dict.fromkeys(keys)}


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _check_outputs(args) -> str | None:
    """Why the outputs could not be written (before any work), or None."""
    from dil.runtime.support.files import folder_problem

    for path in [p for p in (args.json, None if args.no_write else args.markdown) if p]:
        folder = Path(path).parent
        problem = folder_problem(folder) or (None if folder.is_dir() else f"output folder {folder} does not exist")
        if problem:
            return problem
    if not args.no_write and Path(args.markdown).is_file():
        try:
            replace_section(Path(args.markdown).read_text(encoding="utf-8"), "", args.dataset)
        except ValueError as exc:
            return f"{args.markdown}: {exc}"
    return None


def main(argv=None) -> None:
    from dil.data.registry import DATASETS, get_spec

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default=DATASET, help=f"bundled dataset, one of {', '.join(DATASETS)} "
                    "(default: %(default)s)")
    ap.add_argument("--models", default="3x64", help=f"peers, a comma list of {', '.join(MODELS)} "
                    "(default: %(default)s; on metro-traffic about 2 minutes of training each on 2 idle cores)")
    ap.add_argument("--engine", default=None, help="dil artifact to compare (default: the shipped model, for "
                    f"{DATASET} only: another dataset needs one)")
    ap.add_argument("--context-length", type=_positive, default=None,
                    help="context_length of the peers that name none (default: the dil model's context; "
                    f"{METRO_CONTEXT} on {DATASET})")
    ap.add_argument("--horizon", type=_positive, default=None,
                    help="the protocol's horizon H (default: the dataset's); the dil model must forecast H steps")
    ap.add_argument("--samples", type=_positive, default=100, help="samples per window (default: %(default)s)")
    ap.add_argument("--epochs", type=_positive, default=30, help="peers' most epochs (default: %(default)s)")
    ap.add_argument("--windows", type=_positive, default=None,
                    help="evenly spaced test origins, every series of each (default: all of the dataset's)")
    ap.add_argument("--threads", type=_positive, default=None,
                    help="intra-op threads of torch and ONNX Runtime (default: each library's own); on a busy "
                    "machine 1 keeps torch's thread pool from spinning against other work")
    ap.add_argument("--json", default=None, help="also write the result here")
    ap.add_argument("--markdown", default="docs/results.md",
                    help="page whose section of the dataset is replaced in place, or appended (default: %(default)s)")
    ap.add_argument("--no-write", action="store_true", help="print the table, write no page")
    args = ap.parse_args(argv)
    try:  # everything a user can get wrong, before any work
        get_spec(args.dataset)
        models = _models(args.models, args.dataset)
        _check_engine(args.engine, args.dataset)
        problem = _check_outputs(args)
        if problem:
            raise ValueError(problem)
        require_peers()
        fc = load_dil(args.engine, args.threads, args.dataset, args.horizon)
        inputs = peer_inputs(fc, args.windows, dataset=args.dataset, protocol_horizon=args.horizon)
    except (ImportError, ValueError) as exc:  # MissingDependency, ManifestError, EngineError, DataError, ...
        raise SystemExit(f"error: {exc}") from None
    trained_on = (fc.manifest.data or {}).get("dataset")
    if trained_on and trained_on != args.dataset:
        print(f"note: {args.engine} was trained on {trained_on}; it forecasts {args.dataset} here", file=sys.stderr)
    result = run_peers(models, fc, args.engine, args.samples, args.windows, Training(epochs=args.epochs),
                       args.threads, inputs=inputs, dataset=args.dataset, context=args.context_length)
    command = ["python", "benchmarks/peers.py"] + list(sys.argv[1:] if argv is None else argv)
    section = markdown(result, shlex.join(command))
    print(section)
    from dil.runtime.support.files import write_text

    if args.json:
        write_text(args.json, json.dumps(result, indent=2) + "\n")
    if not args.no_write:
        page = Path(args.markdown)
        write_text(page, replace_section(page.read_text(encoding="utf-8") if page.is_file() else "", section,
                                         args.dataset))
        print(f"wrote the {args.dataset} peers section of {page}", file=sys.stderr)


if __name__ == "__main__":
    main()
