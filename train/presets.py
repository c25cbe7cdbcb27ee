"""Presets of a new run: what dil-train chooses when an option is not given (docs/model.md section 4).

`run_configs` resolves a run's ModelConfig, TrainConfig and FeatureSpec from the command's options,
the stored values of a resumed run and these defaults; dil-train (dil.train.cli) only parses.
"""

from __future__ import annotations

from dil.data.registry import frequency_preset

# Options that default to the run's stored value on --resume and to the library default otherwise.
MODEL_OPTIONS = {"context": "context_length", "horizon": "horizon", "d_model": "d_model", "heads": "num_heads",
                 "layers": "num_layers", "ffn_dim": "ffn_dim", "prediction": "prediction",
                 "context_patch": "context_patch", "horizon_patch": "horizon_patch", "domain": "domain"}
TRAIN_OPTIONS = ("epochs", "steps_per_epoch", "batch_size", "noise_draws", "lr", "seed", "device", "patience")
# What a new run predicts (docs/model.md section 2.2); runs keep what they were trained with.
DEFAULT_PREDICTION = "v"
# Token budget of a window (docs/model.md section 4): a new run's patches are the smallest of its row
# frequency's natural step groups that keep the context within CONTEXT_TOKENS tokens and the horizon
# within HORIZON_TOKENS. On hourly rows this gives the measured preset (context 336 in day tokens, 14
# tokens; horizon 24 in 4-hour tokens, 6 tokens: docs/results.md); elsewhere it bounds a step's cost
# (weather's 10-minute rows made 144 horizon tokens and a projected 25-hour training).
CONTEXT_TOKENS = 16
HORIZON_TOKENS = 6


def _patch(length: int, groups: tuple, budget: int) -> int:
    """The smallest natural group dividing `length` into at most `budget` tokens; when none does
    (daily rows at 96 steps: no week divides 96), the smallest divisor of `length` that does."""
    fits = [g for g in groups if length % g == 0 and length // g <= budget]
    if fits:
        return min(fits)
    return min(d for d in range(1, length + 1) if length % d == 0 and length // d <= budget)


def default_context_patch(context_length: int, freq: str | None) -> int:
    """The context patch of a new run: the smallest natural step group of the row frequency that
    keeps the context within CONTEXT_TOKENS tokens (hourly 336: 24, a day)."""
    return _patch(context_length, frequency_preset(freq).groups, CONTEXT_TOKENS)


def default_horizon_patch(horizon: int, freq: str | None) -> int:
    """The horizon patch of a new run: the smallest natural step group of the row frequency that
    keeps the horizon within HORIZON_TOKENS tokens (hourly 24: 4)."""
    return _patch(horizon, frequency_preset(freq).groups, HORIZON_TOKENS)


# What a new run diffuses (docs/frequency.md): the horizon's steps ("time") or its orthonormal real
# DFT ("frequency"). Time: more accurate on metro-traffic (CRPS 0.0557 vs 0.0612) and ETTh1 at
# horizon 96 (0.297 vs 0.356), docs/results.md "Time vs frequency domain".
DEFAULT_DOMAIN = "time"

# Training length of a new run by its training part's rows (docs/model.md section 4). Early stopping
# ends the run; the schedule sets how far the cosine decay stretches. Measured with the default
# commands, 20 epochs / patience 4 against 40 / 8 (test CRPS, coverage 50/90): on the long histories
# metro-traffic (36,786 training rows) 0.0557, 0.56/0.91 against 0.0545, 0.51/0.88 and weather
# (36,893; best epoch the last of either schedule) 0.0606 against 0.0574; on the short ones the longer
# schedule lost: etth1 (8,640) 0.2100 against 0.2158, etth2 0.1020 against 0.1031, exchange-rate
# (5,464) 0.0069 against 0.0070. Either fits in 5 minutes on 2 quiet cores (docs/results.md).
LONG_HISTORY_ROWS = 20_000
LONG_SCHEDULE = {"epochs": 40, "patience": 8}


def default_schedule(train_rows: int) -> dict:
    """{"epochs", "patience"} of a new run that names neither: LONG_SCHEDULE when its training part
    has at least LONG_HISTORY_ROWS rows, else TrainConfig's own (20 epochs, patience 4)."""
    from dil.train.trainer import TrainConfig

    if int(train_rows) >= LONG_HISTORY_ROWS:
        return dict(LONG_SCHEDULE)
    return {"epochs": TrainConfig.epochs, "patience": TrainConfig.patience}


def train_rows(spec, table) -> int:
    """Rows of the table's training part under the dataset's split rule."""
    from dil.data.windows import split_bounds

    a, b = split_bounds(spec, table.n_steps)["train"]
    return int(b - a)


def run_configs(opts: dict, spec, table, stored: dict, known, past):
    """(ModelConfig, TrainConfig, FeatureSpec) of the run: options, else the run's values on
    --resume, else the defaults; the features fitted on the table's train part."""
    from dil.data.windows import split_bounds
    from dil.runtime.model.config import ModelConfig
    from dil.train.dataset import fit_feature_spec
    from dil.train.trainer import TrainConfig

    model = dict(stored.get("model") or {})
    if not model:
        model = dict(ModelConfig().to_dict(), context_length=spec.context_length, horizon=spec.horizon,
                     prediction=DEFAULT_PREDICTION)
    model.update({field: opts[opt] for opt, field in MODEL_OPTIONS.items() if opts[opt] is not None})
    freq = table.freq or spec.freq
    L, P = model["context_length"], model.get("context_patch")
    if opts["context_patch"] is None and not stored.get("model"):
        model["context_patch"] = P = default_context_patch(L, freq) if L >= 1 else 1
    if P is not None and P >= 1 and L % P:
        raise ValueError(f"--context-patch {P} does not divide --context-length {L}")
    H, Ph = model["horizon"], model.get("horizon_patch", 1)
    model.setdefault("domain", DEFAULT_DOMAIN)
    if opts["horizon_patch"] is None and not stored.get("model"):
        frequency = model["domain"] == "frequency"  # one token per spectral coordinate
        model["horizon_patch"] = Ph = 1 if frequency else default_horizon_patch(H, freq) if H >= 1 else 1
    if Ph is not None and Ph >= 1 and H % Ph:
        raise ValueError(f"--horizon-patch {Ph} does not divide --horizon {H}")
    time_features = opts["time_features"]
    if time_features is None and stored:  # the run's own names (what the default chose when it started)
        time_features = tuple((stored.get("features") or {}).get("time_features") or ())
    start, end = split_bounds(spec, table.n_steps)["train"]
    features = fit_feature_spec(table, freq, known, past, time_features, (start, end))
    model.update(context_features=features.context_width, horizon_features=features.horizon_width)
    # a resumed run or a student keeps its own schedule; a new run gets the preset's
    train = dict(stored.get("train") or default_schedule(end - start))
    train.update({k: opts[k] for k in TRAIN_OPTIONS if opts[k] is not None})
    return ModelConfig.from_dict(model), TrainConfig.from_dict(train), features


def describe_choices(model, freq: str | None, features, train=None, rows: int | None = None) -> str:
    """One line: the window, its tokens, the time features and the training schedule a run uses,
    and why (its row frequency's preset and the token budget; calendar features left out for too
    short a history; the schedule of a training part of `rows` rows). train: its TrainConfig (None:
    no schedule in the line)."""
    from dil.runtime.inputs.features import MIN_CYCLES, time_feature_names

    preset = frequency_preset(freq)
    ctx_tokens, hor_tokens = model.context_length // model.context_patch, model.horizon // model.horizon_patch
    text = (f"preset: {preset.name} rows ({freq or 'no frequency'}): context {model.context_length} steps in tokens "
            f"of {model.context_patch} ({ctx_tokens} tokens), horizon {model.horizon} in tokens of "
            f"{model.horizon_patch} ({hor_tokens}); token budget {CONTEXT_TOKENS} + {HORIZON_TOKENS}")
    names = features.time_features
    left = [n for n in (time_feature_names(freq) if freq else ()) if n not in names]
    text += f"; time features {', '.join(names)}" if names else "; no time features"
    if names and left:
        text += f" ({', '.join(left)} left out: the training rows span fewer than {MIN_CYCLES} of its cycles)"
    if train is not None:
        text += f"; {train.epochs} epochs at most, patience {train.patience}"
        if rows is not None and default_schedule(rows) == {"epochs": train.epochs, "patience": train.patience}:
            side = ">=" if rows >= LONG_HISTORY_ROWS else "<"
            text += f" ({rows} training rows {side} {LONG_HISTORY_ROWS})"
    return text
