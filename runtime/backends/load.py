"""Choose the inference backend for an artifact path (what `Forecaster.load` and `dil-run` call).

    engine = load_engine("engines/metro-traffic.plan")        # TensorRT (the `trt` extra, a GPU)
    engine = load_engine("engines/metro-traffic.fp16.onnx")   # ONNX Runtime, FP16 graphs
    engine = load_engine("engines/metro-traffic.onnx")        # ONNX Runtime: CUDA with onnxruntime-gpu, else CPU
    engine = load_engine()                                     # the shipped default model (ONNX Runtime)

The rule is the file name the user gave: a `.plan` means TensorRT (never a silent fall-back to
ONNX Runtime: a `.plan` on a machine without a GPU is refused with a message naming the .onnx),
anything else means ONNX Runtime. `backend=` overrides the rule.
"""

from __future__ import annotations

from pathlib import Path

from dil.runtime.backends.onnx_engine import EngineError, OnnxEngine
from dil.runtime.manifest import default_artifact

BACKENDS = ("onnxruntime", "tensorrt")


def backend_for(engine) -> str:
    """'tensorrt' for a path ending in .plan, else 'onnxruntime'."""
    return "tensorrt" if Path(engine).name.endswith(".plan") else "onnxruntime"


def load_engine(engine=None, backend: str | None = None, providers=None, threads: int | None = None, device: int = 0):
    """An OnnxEngine or TrtEngine for any path naming the artifact (see dil.runtime.manifest); None is
    the shipped default model (dil.runtime.manifest.default_artifact), wherever dil is installed.

    providers, threads: ONNX Runtime only (ignored by TensorRT). device: the GPU ordinal (TensorRT).
    Raises ManifestError, EngineError or MissingDependency with a one-line message.
    """
    if engine is None:
        engine = default_artifact()
    backend = backend or backend_for(engine)
    if backend not in BACKENDS:
        raise EngineError(f"unknown backend {backend!r} (choose from {', '.join(BACKENDS)})")
    if backend == "tensorrt":
        from dil.runtime.backends.trt_engine import TrtEngine  # imports tensorrt only when an engine is made

        return TrtEngine.load(engine, device=device)
    return OnnxEngine.load(engine, providers=providers, threads=threads)
