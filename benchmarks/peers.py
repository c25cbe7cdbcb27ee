"""Peer benchmark: GluonTS DeepAR next to dil on dil's own metro-traffic test windows, in one run.

Run from the repository root (DeepAR needs the optional extra: pip install 'dil[peers]'):

    python benchmarks/peers.py                                # DeepAR 3x64 vs the shipped model
    python benchmarks/peers.py --models 3x64,2x40,2x40-168 --json peers.json
    python benchmarks/peers.py --windows 10 --epochs 1 --no-write      # a quick look, nothing written

The protocol, the same for every model of a run:

- Data: the bundled metro-traffic table (traffic_volume) exactly as dil.data builds it: hourly rows,
  hours missing from the file NaN, 52,551 rows; split 70/10/20 into rows [0, 36786) train,
  [36786, 42041) validation and [42041, 52551) test. The dil model's covariate columns (those its
  manifest names, e.g. temp) are read too, for dil only.
- Test windows: dil-eval's. Origins 42041 + 24k while origin + 24 <= 52551 (437 windows), horizon
  24, 100 samples per window; missing target hours count in no score. --windows N keeps N evenly
  spaced origins (first and last included).
- DeepAR (gluonts.torch DeepAREstimator, freq "h", prediction_length 24, batch_size 32,
  num_batches_per_epoch 50, default time features) learns from the train rows as one series, at
  most 30 epochs on the CPU after lightning's seed_everything(0). Its validation data are the 218
  windows whose 24-hour targets lie in the validation rows (each one the series up to the end of
  its target), watched by EarlyStopping(val_loss, patience 5, min_delta 1e-3); GluonTS keeps the
  weights of the best validation epoch. Models: 3x64 (3 LSTM layers of 64), 2x40 (2 of 40), both
  with context_length 168 and the default lags (reaching 721 hours back), and 2x40-168: 2x40 held
  to 168 rows of history (context_length 145, lags 1..7, 23, 24; the context of dil's first
  metro-traffic model).
- DeepAR forecasts each window from the whole series before its origin (predict, 100 samples).
  dil (the shipped model, or --engine) forecasts it from its context, the L hours before the
  origin (L = the manifest's model.context_length), with the inputs its manifest's FeatureSpec
  names: calendar features of those hours and of the forecast hours, covariate columns of the
  table (known ones for the forecast hours too), exactly as dil-eval builds them. It runs through
  dil-eval's forecaster: default sampler and steps, seed 0, each window's noise keyed by its id.
  The test windows do not depend on L (dil-eval's origins, for any L up to 42041).
- Scores: dil.evaluate.metrics, as dil-eval computes them. CRPS: the weighted quantile loss at the
  19 levels 0.05..0.95 (quantiles of the samples by numpy's linear interpolation), averaged over
  the levels and divided by sum |y|; MAE of the median (traffic volume, vehicles per hour);
  coverage of the central 50% and 90% intervals. Seasonal naive (lag 168) is dil-eval's: the hour
  a week before, from the whole series before the origin (the same whatever dil's context).
- Times, wall clock in this process: DeepAR training is the whole fit (validation included); "all
  windows" is one predict call over every window for DeepAR and every window through dil-eval's
  batches for dil; "one window" is the median of 5 single-window forecasts, after a warm-up call
  that also precedes the all-windows timing. dil's training time is the one its manifest records,
  not measured in the run. Times move with other work on the machine: compare ratios of one run.
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
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

DATASET = "metro-traffic"
HORIZON = 24
MARK_START, MARK_END = "<!-- peers:start -->", "<!-- peers:end -->"
REPEATS = 5  # single-window timings, after one warm-up


@dataclass(frozen=True)
class PeerModel:
    """One DeepAR configuration (gluonts.torch DeepAREstimator arguments)."""

    num_layers: int
    hidden_size: int
    context_length: int = 168
    lags_seq: tuple | None = None  # None: GluonTS's default lags for hourly data
    label: str = ""

    def estimator_kwargs(self) -> dict:
        kw = {"num_layers": self.num_layers, "hidden_size": self.hidden_size, "context_length": self.context_length}
        return kw if self.lags_seq is None else {**kw, "lags_seq": list(self.lags_seq)}


MODELS = {
    "3x64": PeerModel(3, 64, label="DeepAR 3x64"),
    "2x40": PeerModel(2, 40, label="DeepAR 2x40"),
    # 145 context rows + the longest lag (24) = 168 rows of history, the context of dil's first
    # metro-traffic model.
    "2x40-168": PeerModel(2, 40, context_length=145, lags_seq=(1, 2, 3, 4, 5, 6, 7, 23, 24),
                          label="DeepAR 2x40, history held to 168 rows"),
}


@dataclass(frozen=True)
class Training:
    """How every DeepAR of a run is trained (the protocol's values by default)."""

    epochs: int = 30
    batch_size: int = 32
    num_batches_per_epoch: int = 50
    patience: int = 5
    min_delta: float = 1e-3
    seed: int = 0


@dataclass
class PeerData:
    """The rows and windows of the protocol for one series.

    values: float64 [T] (NaN = missing); start: the time of row 0. train_end: rows [0, train_end)
    train DeepAR. val_origins: int64 [V], validation windows (targets [o, o + 24) inside the
    validation rows). windows: dil.evaluate.harness.EvalWindows of the test origins (contexts of the
    dil model's length L, and its WindowFeatures where it has features). test_origins: int64 [W],
    the origins of the valid (scored) test windows.
    """

    values: np.ndarray
    start: object
    train_end: int
    val_origins: np.ndarray
    windows: object
    test_origins: np.ndarray


def peer_data(table, spec, context: int, n_windows: int | None = None, features=None,
              horizon: int = HORIZON) -> PeerData:
    """The protocol's bookkeeping from a single-series dil.data table and its DatasetSpec, for a dil
    model of context `context` and FeatureSpec `features` (None: none; the table then holds the dates
    and covariate columns it needs). horizon: the test windows' (the protocol's 24; another only to
    test a model of another horizon); the validation windows are always the protocol's."""
    from dil.data.windows import split_bounds, window_origins
    from dil.evaluate.harness import protocol_windows

    values = np.asarray(table.values, dtype=np.float64)
    if values.ndim != 2 or values.shape[1] != 1:
        raise ValueError(f"the peer protocol is univariate, got {values.shape[-1]} series")
    bounds = split_bounds(spec, values.shape[0])
    (_, train_end), (val_start, val_end) = bounds["train"], bounds["val"]
    val_origins = window_origins(values.shape[0], 1, HORIZON, val_start, val_end, stride=HORIZON)
    w = protocol_windows(table, spec, context, horizon, n_windows, features=features)
    return PeerData(values=values[:, 0], start=np.asarray(table.timestamps)[0], train_end=int(train_end),
                    val_origins=val_origins, windows=w, test_origins=w.origins[w.valid[:, 0]])


def peer_entries(data: PeerData) -> tuple[list, list, list]:
    """GluonTS data entries (dicts with a pandas Period start and a float32 target): the training
    series (rows [0, train_end)), one validation series per validation window (up to the end of its
    target) and one test series per scored test window (everything before its origin)."""
    import pandas as pd

    start = pd.Period(pd.Timestamp(data.start), freq="h")

    def entry(end: int) -> dict:
        return {"start": start, "target": data.values[:end].astype(np.float32), "item_id": f"rows<{end}"}

    return ([entry(data.train_end)], [entry(int(o) + HORIZON) for o in data.val_origins],
            [entry(int(o)) for o in data.test_origins])


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


def train_deepar(model: PeerModel, data: PeerData, training: Training) -> tuple[object, dict]:
    """Fit one DeepAR on the train rows with the validation windows: (predictor, facts), facts =
    {train_s, epochs_run, stopped_early}. Lightning's checkpoints go to a temporary folder."""
    deepar = require_peers()
    from lightning.pytorch import seed_everything
    from lightning.pytorch.callbacks import EarlyStopping

    _quiet()
    train, val, _ = peer_entries(data)
    stop = EarlyStopping(monitor="val_loss", patience=training.patience, min_delta=training.min_delta)
    with tempfile.TemporaryDirectory(prefix="dil-peers-") as tmp:
        seed_everything(training.seed, verbose=False)
        estimator = deepar.DeepAREstimator(
            freq="h", prediction_length=HORIZON, batch_size=training.batch_size,
            num_batches_per_epoch=training.num_batches_per_epoch, **model.estimator_kwargs(),
            trainer_kwargs={"max_epochs": training.epochs, "accelerator": "cpu", "callbacks": [stop],
                            "default_root_dir": tmp, "logger": False, "enable_progress_bar": False,
                            "enable_model_summary": False},
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


def deepar_forecasts(predictor, data: PeerData, samples: int, seed: int = 0) -> tuple[np.ndarray, dict]:
    """DeepAR's samples float64 [W, samples, 24] of the scored test windows, and the times
    {all_s, one_ms}."""
    import torch

    _, _, test = peer_entries(data)

    def predict(entries):
        return np.stack([f.samples for f in predictor.predict(entries, num_samples=samples)])

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


def load_dil(engine=None, threads: int | None = None):
    """The dil Forecaster to compare (None: the shipped model; threads: ONNX Runtime's intra-op
    threads, None: its default); ValueError when it does not forecast the protocol's 24 hours."""
    from dil.runtime import Forecaster

    fc = Forecaster.load(engine, threads=threads)
    if fc.horizon != HORIZON:
        raise ValueError(f"engine {engine} forecasts {fc.horizon} steps; the peer protocol forecasts {HORIZON}")
    return fc


def peer_inputs(fc, n_windows: int | None = None, horizon: int = HORIZON) -> tuple:
    """(DatasetSpec, SeriesTable, PeerData) of the protocol for the dil Forecaster `fc`: the bundled
    table with the covariate columns its model reads, the windows of its context and features.
    DataError / FeatureError (one line) when the table lacks what the model needs."""
    from dil.data.datasets import resolve

    spec, table = resolve(DATASET, covariates=[c.name for c in fc.features.covariates] or None)
    return spec, table, peer_data(table, spec, fc.context_length, n_windows, fc.features, horizon)


def dil_inputs(context: int, features) -> str:
    """What dil forecasts a window from, in words (features: the model's FeatureSpec), e.g. "the 336
    hours before it and the calendar features (hour_of_day, ...) of those and the forecast hours"."""
    def plural(names):
        return "s" * (len(names) != 1) + " " + ", ".join(names)

    parts, ahead = [f"the {context} hours before it"], []
    if features.time_features:
        ahead.append(f"the calendar features ({', '.join(features.time_features)})")
    if features.known_covariates:
        ahead.append(f"the covariate{plural(features.known_covariates)}")
    if ahead:
        parts.append(" and ".join(ahead) + " of those and the forecast hours")
    if features.past_covariates:
        parts.append(f"the past-only covariate{plural(features.past_covariates)} of those hours")
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def run_peers(models: dict, fc, engine=None, samples: int = 100, n_windows: int | None = None,
              training: Training = Training(), threads: int | None = None, keep_samples: bool = False,
              inputs: tuple | None = None) -> dict:
    """The whole comparison of the dil Forecaster `fc` (loaded from `engine`, None: the shipped
    model) with DeepAR `models` {key: PeerModel}: {"protocol", "rows": {key: scores and times},
    "machine", "versions"}. threads: torch's intra-op threads (None: its default; give ONNX Runtime
    the same through load_dil). keep_samples: also return DeepAR's samples per model, float64
    [W, samples, 24], under result["samples"] (arrays, not JSON). inputs: peer_inputs(fc, n_windows)
    when already at hand."""
    import torch

    from dil.evaluate.harness import score_point, score_samples
    from dil.evaluate.machine import busy, machine_info

    require_peers()
    if threads is not None:
        torch.set_num_threads(threads)
    machine = {**machine_info(threads), "busy": busy()}
    spec, table, data = inputs or peer_inputs(fc, n_windows)
    w = data.windows
    trained = (fc.manifest.extra.get("checkpoint") or {}).get("training") or {}
    rows = {"dil": {"label": f"dil ({fc.manifest.name}, {fc.default_config.steps} steps)",
                    "train_s": trained.get("seconds"), "distilled": "distill" in trained,
                    **dil_scores(fc, data, samples, training.seed)}}
    kept = {}
    for key, model in models.items():
        print(f"training {model.label or key} (at most {training.epochs} epochs) ...", file=sys.stderr, flush=True)
        predictor, facts = train_deepar(model, data, training)
        s, times = deepar_forecasts(predictor, data, samples, training.seed)
        rows[key] = {"label": model.label or key, **score_samples(w, w.valid, s), **facts, **times,
                     "settings": asdict(model)}
        kept[key] = s
    naive = score_point(w, w.baseline)
    rows["seasonal_naive"] = {"label": f"seasonal naive (lag {spec.season})", "crps": naive["crps"],
                              "mae": naive["mae"]}
    for key, row in rows.items():
        if key in models:
            row["ratios"] = {k: rows["dil"][k] / row[k] for k in ("crps", "all_s", "one_ms")}
    result = {"protocol": protocol(data, fc, engine, samples, training, table), "rows": rows,
              "machine": machine, "versions": _versions()}
    return {**result, "samples": kept} if keep_samples else result


def protocol(data: PeerData, fc, engine, samples: int, training: Training, table) -> dict:
    w = data.windows
    return {"dataset": DATASET, "rows": int(data.values.size), "sha256": getattr(table, "sha256", ""),
            "train_rows": [0, data.train_end], "validation_windows": int(data.val_origins.size),
            "test_windows": int(data.test_origins.size), "first_origin": int(w.origins[0]),
            "last_origin": int(w.origins[-1]), "horizon": HORIZON, "samples": samples,
            "dil_engine": str(engine) if engine else "shipped default", "dil_context": fc.context_length,
            "dil_inputs": dil_inputs(fc.context_length, fc.features), "training": asdict(training)}


def _versions() -> dict:
    from importlib import metadata

    from dil.evaluate.machine import versions

    return {**versions(), **{pkg: metadata.version(pkg) for pkg in ("gluonts", "lightning", "pandas")}}


def _f(v, digits: int = 4) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def markdown(result: dict, command: str) -> str:
    """The section of docs/results.md (between the markers) for one run."""
    p, m, v, rows = result["protocol"], result["machine"], result["versions"], result["rows"]
    dil = rows["dil"]
    lines = [
        MARK_START,
        "## dil next to DeepAR (metro-traffic)",
        "",
        f"Made by `{command}` on {datetime.date.today().isoformat()}. The protocol is in the docstring of "
        "`benchmarks/peers.py`: both models forecast the same "
        f"{p['test_windows']} test windows of dil-eval (origins {p['first_origin']}..{p['last_origin']}, "
        f"horizon {p['horizon']}, {p['samples']} samples) and are scored by the same code (dil.evaluate.metrics). "
        f"DeepAR (GluonTS) learns from rows 0..{p['train_rows'][1] - 1} with the {p['validation_windows']} "
        f"validation windows for early stopping (at most {p['training']['epochs']} epochs) and forecasts each "
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
            f"| {r['label']} | {_f(r['crps'])} | {_f(r['mae'], 1)} | {_f(r.get('coverage_50'), 3)} | "
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
        MARK_END,
    ]
    return "\n".join(lines) + "\n"


def replace_section(page: str, section: str) -> str:
    """`page` with its peers section (between the markers) replaced by `section`, or `section`
    appended when the page has none. ValueError for a page with unmatched markers."""
    a, b = page.find(MARK_START), page.find(MARK_END)
    if a < 0 and b < 0:
        return page.rstrip("\n") + ("\n\n" if page.strip() else "") + section
    if a < 0 or b < a or page.count(MARK_START) > 1 or page.count(MARK_END) > 1:
        raise ValueError(f"the page must hold {MARK_START} ... {MARK_END} once, in that order")
    return page[:a] + section.rstrip("\n") + page[b + len(MARK_END):]


def _models(spec: str) -> dict:
    keys = [k.strip() for k in spec.split(",") if k.strip()]
    bad = [k for k in keys if k not in MODELS]
    if bad or not keys:
        raise ValueError(f"--models takes a comma list of {', '.join(MODELS)}, got {spec!r}")
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
            replace_section(Path(args.markdown).read_text(encoding="utf-8"), "")
        except ValueError as exc:
            return f"{args.markdown}: {exc}"
    return None


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="3x64", help=f"DeepAR sizes, a comma list of {', '.join(MODELS)} "
                    "(default: %(default)s; about 2 minutes of training each on 2 idle cores)")
    ap.add_argument("--engine", default=None, help="dil artifact to compare (default: the shipped model)")
    ap.add_argument("--samples", type=_positive, default=100, help="samples per window (default: %(default)s)")
    ap.add_argument("--epochs", type=_positive, default=30, help="DeepAR's most epochs (default: %(default)s)")
    ap.add_argument("--windows", type=_positive, default=None, help="evenly spaced test windows (default: all 437)")
    ap.add_argument("--threads", type=_positive, default=None,
                    help="intra-op threads of torch and ONNX Runtime (default: each library's own); on a busy "
                    "machine 1 keeps torch's thread pool from spinning against other work")
    ap.add_argument("--json", default=None, help="also write the result here")
    ap.add_argument("--markdown", default="docs/results.md",
                    help="page whose peers section is replaced in place, or appended (default: %(default)s)")
    ap.add_argument("--no-write", action="store_true", help="print the table, write no page")
    args = ap.parse_args(argv)
    try:  # everything a user can get wrong, before any work
        models = _models(args.models)
        problem = _check_outputs(args)
        if problem:
            raise ValueError(problem)
        require_peers()
        fc = load_dil(args.engine, args.threads)
        inputs = peer_inputs(fc, args.windows)
    except (ImportError, ValueError) as exc:  # MissingDependency, ManifestError, EngineError, DataError, ...
        raise SystemExit(f"error: {exc}") from None
    result = run_peers(models, fc, args.engine, args.samples, args.windows, Training(epochs=args.epochs),
                       args.threads, inputs=inputs)
    command = ["python", "benchmarks/peers.py"] + list(sys.argv[1:] if argv is None else argv)
    section = markdown(result, shlex.join(command))
    print(section)
    from dil.runtime.support.files import write_text

    if args.json:
        write_text(args.json, json.dumps(result, indent=2) + "\n")
    if not args.no_write:
        page = Path(args.markdown)
        write_text(page, replace_section(page.read_text(encoding="utf-8") if page.is_file() else "", section))
        print(f"wrote the peers section of {page}", file=sys.stderr)


if __name__ == "__main__":
    main()
