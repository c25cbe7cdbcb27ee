"""The dil runtime: NumPy + ONNX Runtime, never torch (docs/architecture.md section 2; docs/model.md section 5).

    from dil.runtime import Forecaster
    forecast = Forecaster.load("engines/metro-traffic.onnx").predict(history, num_samples=100)
    # a model with covariates: .predict(history, covariates=frame), the history's rows then the horizon's

onnxruntime is imported when an engine is loaded and pandas only where a DataFrame is read or
written, so importing this package stays quick.
"""

__version__ = "0.1.0"

from dil.runtime.sampling.fast_controller import FastController
from dil.runtime.backends.onnx_engine import EngineError, EngineStats, OnnxEngine
from dil.runtime.forecaster import Forecast, ForecastError, Forecaster
from dil.runtime.inputs.errors import DataError
from dil.runtime.manifest import Manifest, ManifestError, load_manifest
from dil.runtime.outputs.quantiles import QUANTILE_LEVELS
from dil.runtime.sampling.rng import SeriesStreams
from dil.runtime.sampling.config import SamplerConfig
from dil.runtime.sampling.stats import SamplerStats
from dil.runtime.inputs.window_features import WindowFeatures

__all__ = [
    "DataError",
    "EngineError",
    "EngineStats",
    "FastController",
    "Forecast",
    "ForecastError",
    "Forecaster",
    "Manifest",
    "ManifestError",
    "OnnxEngine",
    "QUANTILE_LEVELS",
    "SamplerConfig",
    "SamplerStats",
    "SeriesStreams",
    "WindowFeatures",
    "load_manifest",
]
