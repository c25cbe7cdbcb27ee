"""Training stage (PyTorch): score network, datasets, training loop, reference sampler."""

import os as _os
import sys as _sys

from dil.runtime.support.deps import MissingDependency as _MissingDependency
from dil.runtime.support.deps import require as _require

try:
    _require("torch", "train")
except _MissingDependency:
    # A console script (dil-train imports this package to reach dil.train.cli) must still parse its
    # options and answer --help without torch; each script checks its extra itself before it imports
    # a torch module, and says so in one line. A library import fails here.
    if not _os.path.basename(_sys.argv[0] if _sys.argv else "").startswith("dil-"):
        raise
