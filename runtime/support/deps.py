"""Optional dependencies: import them or fail with one line naming the extra to install."""

from __future__ import annotations

import importlib


class MissingDependency(ImportError):
    """An optional dependency is not installed; the message names the pip extra."""


def require(module: str, extra: str):
    """Import `module` or raise MissingDependency("... pip install 'dil[extra]'")."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:  # noqa: F841 - the one-line message is the point
        raise MissingDependency(
            f"{module} is not installed: pip install 'dil[{extra}]'"
        ) from None
