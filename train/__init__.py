"""Training stage (PyTorch): score network, datasets, training loop, reference sampler."""

import os as _os
import sys as _sys

from dil.runtime.deps import MissingDependency as _MissingDependency
from dil.runtime.deps import require as _require

try:
    _require("torch", "train")
except _MissingDependency as _exc:
    # A console script (dil-train, dil-export) imports this package before its click command can
    # catch anything: print the one-line message instead of a traceback.
    if _os.path.basename(_sys.argv[0] if _sys.argv else "").startswith("dil-"):
        _sys.exit(f"Error: {_exc}")
    raise
