"""benchmarks/results.py regenerates docs/results.md and keeps the sections other scripts wrote."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "results.py"


def _results():
    spec = importlib.util.spec_from_file_location("results_page", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
    finally:
        sys.modules.pop(spec.name, None)
    return module


def test_marked_sections_are_kept_in_a_fixed_order_and_the_rest_dropped():
    results = _results()
    page = ("# Results\nold tables\n<!-- peers:start -->\nP\n<!-- peers:end -->\nbetween\n"
            "<!-- frontiers:start -->\nF\n<!-- frontiers:end -->\n<!-- domains:end -->\n")
    # domains has an end marker only: not a section, dropped with the rest of the old text.
    assert results.kept_sections(page) == ("\n<!-- frontiers:start -->\nF\n<!-- frontiers:end -->\n"
                                           "\n<!-- peers:start -->\nP\n<!-- peers:end -->\n")
    assert results.kept_sections("# Results\nno sections\n") == ""
