"""Writing outputs: the forecast table (CSV, CSV.gz, Parquet or stdout), each output checked
before any work so that a run fails before it computes anything it could not write."""

from __future__ import annotations

import sys
from pathlib import Path

TABLE_SUFFIXES = (".csv", ".csv.gz", ".parquet")


class OutputError(ValueError):
    """An output that cannot be written (one line naming the option and the path)."""


def output_kind(path: Path) -> str:
    """'csv' or 'parquet' for a forecast table's path (OutputError for another suffix)."""
    name = path.name.lower()
    for suffix in TABLE_SUFFIXES:
        if name.endswith(suffix):
            return "parquet" if suffix == ".parquet" else "csv"
    raise OutputError(f"--out {path}: unsupported file type (use {', '.join(TABLE_SUFFIXES)})")


def check_output(path: Path | None, option: str, folder: bool = False) -> None:
    """OutputError when `path` (a file, or a folder with folder=True) could not be written: its
    parent not writable, a folder where a file goes or the reverse. Missing folders are fine: they
    are created when the output is written (dil.runtime.support.files.made_folders)."""
    from dil.runtime.support.files import folder_problem

    if path is None:
        return
    path = Path(path)
    if not folder and path.is_dir():
        raise OutputError(f"{option} {path}: is a folder, not a file")
    if folder and path.exists() and not path.is_dir():
        raise OutputError(f"{option} {path}: exists and is not a folder")
    problem = folder_problem(path if folder else path.parent)
    if problem:
        raise OutputError(f"{option} {path}: {problem}")


def check_outputs(out: Path | None, plot: Path | None) -> None:
    """dil-run's outputs: the forecast table `out` and the fan chart `plot` (OutputError or
    MissingDependency, one line, before any work)."""
    from dil.runtime.outputs.plot import FORMATS
    from dil.runtime.support.deps import require

    check_output(out, "--out")
    check_output(plot, "--plot")
    if out is not None and output_kind(out) == "parquet":
        require("pyarrow", "parquet")
    if plot is not None:
        if plot.suffix.lower().lstrip(".") not in FORMATS:
            raise OutputError(f"--plot {plot}: unsupported image type (use .{', .'.join(FORMATS)})")
        require("matplotlib", "plot")


def write_table(frame, path: Path, kind: str) -> None:
    """The frame to `path`, atomically (complete or absent)."""
    from dil.runtime.support.files import atomic_path

    with atomic_path(path) as tmp:
        if kind == "parquet":
            frame.to_parquet(tmp, index=False)
        else:
            frame.to_csv(tmp, index=False, compression="gzip" if path.name.lower().endswith(".gz") else None)


def to_stdout(frame) -> None:
    """The frame as CSV on stdout; a reader that leaves early (`| head`) is not an error."""
    try:
        frame.to_csv(sys.stdout, index=False)
        sys.stdout.flush()
    except BrokenPipeError:
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
