"""dil: train, export and run diffusion time-series forecasters.

The stages live in sub-packages: ``dil.train`` (PyTorch), ``dil.export`` (ONNX / TensorRT),
``dil.runtime`` (NumPy + one inference engine, no torch), ``dil.data`` (bundled datasets and table
loading) and ``dil.evaluate`` (metrics and the evaluation harness).
"""

__version__ = "0.1.0"
