"""dil-run's outputs: the forecast table (CSV, CSV.gz, Parquet or stdout), checked before any work."""

from __future__ import annotations

import sys
from pathlib import Path

import click

TABLE_SUFFIXES = (".csv", ".csv.gz", ".parquet")


def output_kind(path: Path) -> str:
    name = path.name.lower()
    for suffix in TABLE_SUFFIXES:
        if name.endswith(suffix):
            return "parquet" if suffix == ".parquet" else "csv"
    raise click.ClickException(f"--out {path}: unsupported file type (use {', '.join(TABLE_SUFFIXES)})")


def check_outputs(out: Path | None, plot: Path | None) -> None:
    """Fail before any work when an output cannot be written (so nothing is half done)."""
    from dil.runtime.support.deps import require
    from dil.runtime.outputs.plot import FORMATS

    from dil.runtime.support.files import folder_problem

    for opt, path in (("--out", out), ("--plot", plot)):
        if path is None:
            continue
        if path.is_dir():
            raise click.ClickException(f"{opt} {path}: is a folder, not a file")
        problem = folder_problem(path.parent)  # missing folders are created when the output is written
        if problem:
            raise click.ClickException(f"{opt} {path}: {problem}")
    if out is not None and output_kind(out) == "parquet":
        require("pyarrow", "parquet")
    if plot is not None:
        if plot.suffix.lower().lstrip(".") not in FORMATS:
            raise click.ClickException(f"--plot {plot}: unsupported image type (use .{', .'.join(FORMATS)})")
        require("matplotlib", "plot")


def write_table(frame, path: Path, kind: str) -> None:
    from dil.runtime.support.files import atomic_path

    with atomic_path(path) as tmp:
        if kind == "parquet":
            frame.to_parquet(tmp, index=False)
        else:
            frame.to_csv(tmp, index=False, compression="gzip" if path.name.lower().endswith(".gz") else None)


def to_stdout(frame) -> None:
    try:
        frame.to_csv(sys.stdout, index=False)
        sys.stdout.flush()
    except BrokenPipeError:  # `dil-run ... | head`: the reader left; not an error
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
