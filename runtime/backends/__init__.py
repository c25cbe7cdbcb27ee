"""Inference backends that run an artifact's graphs: ONNX Runtime (CPU or CUDA) and TensorRT.

    engine = load_engine("engines/metro-traffic.onnx")   # or .fp16.onnx, or .plan (TensorRT)
"""

from dil.runtime.backends.load import BACKENDS, backend_for, load_engine

__all__ = ["BACKENDS", "backend_for", "load_engine"]
