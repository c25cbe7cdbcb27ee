"""The bundled datasets by name, and the one place a CLI turns --dataset / --data into a table."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from dil.data.registry import DEFAULT_DATASET, file_spec, get_spec
from dil.runtime.inputs.table import DataError, SeriesTable, load_table


def load_dataset(name: str, covariates=None) -> SeriesTable:
    """The bundled dataset `name` with its documented cleaning (see PROVENANCE.md); covariates:
    names of its columns to read raw into `SeriesTable.covariates` (e.g. metro's temp, holiday)."""
    spec = get_spec(name)
    table = load_table(
        spec.path, spec.date_column, spec.columns, names=spec.names, missing_values=spec.missing_values,
        **({"covariates": list(covariates)} if covariates else {}),
    )
    if spec.freq is not None and table.freq is None:
        table.freq = spec.freq  # headerless files (exchange rate) carry their frequency in the spec
    table.notes = []  # the bundled cleaning is documented in PROVENANCE.md, not news to the user
    return table


def _names(value) -> list[str]:
    """A comma-separated option (or a list) as a list of names."""
    if isinstance(value, str):
        return [c.strip() for c in value.split(",") if c.strip()]
    return list(value or [])


def resolve(dataset=None, data=None, date_column=None, columns=None, *, date_format=None, dayfirst=None,
            covariates=None, missing_values=()):
    """(DatasetSpec, SeriesTable) for a CLI: a bundled dataset by name or a user file.

    Exactly one of dataset / data may be given (neither: the default dataset). date_column,
    date_format (strptime) and dayfirst (True / False / None = decide, see load_table) apply to a
    user file; for a bundled dataset `columns` may pick a subset of its series. covariates: columns
    read raw into the table's `covariates` (never targets; a name also in `columns` is a DataError).
    missing_values: values read as missing (--missing-value), beside a bundled dataset's own. The
    table's `notes` say what reading a user file repaired (print them).
    """
    missing_values = tuple(float(v) for v in missing_values or ())
    if dataset is not None and data is not None:
        raise DataError("give either a bundled dataset or a data file, not both")
    columns, covariates = _names(columns), _names(covariates)
    both = [c for c in covariates if c in columns]
    if both:
        raise DataError(f"column {both[0]!r} is both a covariate and a target column (--columns)")
    cov = {"covariates": covariates} if covariates else {}
    if data is not None:
        table = load_table(data, date_column=date_column, columns=columns or None, date_format=date_format,
                           dayfirst=dayfirst, missing_values=missing_values, **cov)
        spec = file_spec(data, table, date_column=date_column, date_format=date_format, dayfirst=dayfirst,
                         missing_values=missing_values)
        return spec, table
    for given, option in ((date_column, "--date-column"), (date_format, "--date-format"),
                          (dayfirst, "--dayfirst/--monthfirst")):
        if given is not None:
            raise DataError(f"{option} applies to a data file (--data), not to a bundled dataset")
    spec = get_spec(dataset or DEFAULT_DATASET)
    table = load_dataset(spec.name, covariates)
    extra = [v for v in missing_values if v not in spec.missing_values]
    if extra:
        table.values[np.isin(table.values, extra)] = np.nan
        spec = replace(spec, missing_values=tuple(spec.missing_values) + tuple(extra))
    if columns:
        table = table.select(columns)
        spec = replace(spec, columns=tuple(columns))
    return spec, table


def resolve_table(dataset=None, data=None, date_column=None, columns=None, **dates) -> SeriesTable:
    """The SeriesTable of `resolve` (see there; `dates`: date_format, dayfirst)."""
    return resolve(dataset, data, date_column, columns, **dates)[1]
