"""The input rules' error types: one line each, naming the file, column, series or row at fault.

They live here, below everything that reads or forecasts inputs, so that a rule raises them
without importing upward; `dil.runtime` re-exports both.
"""

from __future__ import annotations


class DataError(ValueError):
    """Bad input data (unreadable file, unknown column, unparseable date, infinite value)."""


class ForecastError(ValueError):
    """The history cannot be forecast (too short, Inf values, an all-missing context, missing
    dates or covariates the model needs, ...)."""
