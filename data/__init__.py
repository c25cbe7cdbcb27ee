"""Bundled datasets and table loading (torch-free: NumPy + pandas; pyarrow only for Parquet).

    from dil.data import load_dataset, get_spec, split_bounds, test_origins, gather_windows
    table = load_dataset("metro-traffic")          # SeriesTable: values [T, C] float64, NaN = missing
    bounds = split_bounds("metro-traffic", table.n_steps)

Provenance, licenses, cleaning and split conventions: PROVENANCE.md in this folder.
"""

from dil.data.registry import (
    DATASETS,
    DEFAULT_DATASET,
    FILES_DIR,
    DatasetSpec,
    Splits,
    file_spec,
    get_spec,
    season_for_freq,
    with_window,
)
from dil.data.datasets import load_dataset, resolve, resolve_table
from dil.runtime.inputs.table import DataError, SeriesTable, load_table
from dil.data.windows import (
    gather_series,
    gather_windows,
    observed_counts,
    split_bounds,
    test_origins,
    usable_windows,
    window_origins,
)

__all__ = [
    "DATASETS",
    "DEFAULT_DATASET",
    "FILES_DIR",
    "DataError",
    "DatasetSpec",
    "SeriesTable",
    "Splits",
    "file_spec",
    "gather_series",
    "gather_windows",
    "get_spec",
    "load_dataset",
    "load_table",
    "observed_counts",
    "resolve",
    "resolve_table",
    "season_for_freq",
    "split_bounds",
    "test_origins",
    "usable_windows",
    "window_origins",
    "with_window",
]
