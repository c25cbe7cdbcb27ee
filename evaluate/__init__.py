"""Metrics and the evaluation harness (docs/model.md section 6). Torch-free.

    from dil.evaluate import evaluate, crps_quantile
    report = evaluate(forecast_fn, table, spec, context=168, horizon=24)   # JSON-ready dict

`forecast_fn(contexts [B, L], ids[, features]) -> samples [B, N, H]` is any forecaster (features: the
batch's WindowFeatures, passed when the evaluation has any, see harness.py); `evaluate_engine` wires
an exported artifact (dil.runtime.Forecaster) into it. The CLI is `dil-eval`.
"""

from dil.evaluate.engine_eval import evaluate_engine, forecaster_fn
from dil.evaluate.harness import (
    EvalWindows,
    Evaluation,
    EvaluationError,
    evaluate,
    protocol_windows,
    run_evaluation,
)
from dil.evaluate.metrics import (
    coverage,
    crps_pointwise,
    crps_quantile,
    crps_sample,
    crps_sum,
    mae,
    median_forecast,
    mse,
    seasonal_naive,
    weighted_quantile_loss,
)

__all__ = [
    "EvalWindows",
    "Evaluation",
    "EvaluationError",
    "coverage",
    "crps_pointwise",
    "crps_quantile",
    "crps_sample",
    "crps_sum",
    "evaluate",
    "evaluate_engine",
    "forecaster_fn",
    "mae",
    "median_forecast",
    "mse",
    "protocol_windows",
    "run_evaluation",
    "seasonal_naive",
    "weighted_quantile_loss",
]
