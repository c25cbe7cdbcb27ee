"""Training stage (PyTorch): score network, datasets, training loop, reference sampler."""

from dil._deps import require as _require

_require("torch", "train")
