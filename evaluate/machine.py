"""The machine a benchmark ran on: cores, load, versions, and the import cost of dil.runtime."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import numpy as np


def default_threads() -> int:
    """The cores this process may use (its affinity mask), else os.cpu_count()."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def import_time(repeats: int = 3) -> dict:
    """`import dil.runtime` in fresh interpreters: seconds (median of `repeats`), and whether it
    loaded torch or onnxruntime (it must not: the runtime is NumPy plus one engine, loaded lazily)."""
    code = (
        "import json, sys, time; t = time.perf_counter(); import dil.runtime; dt = time.perf_counter() - t; "
        "print(json.dumps([dt, 'torch' in sys.modules, 'onnxruntime' in sys.modules]))"
    )
    out = []
    for _ in range(repeats):
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"import dil.runtime failed: {(proc.stderr.strip().splitlines() or ['?'])[-1]}")
        out.append(json.loads(proc.stdout))
    secs = [o[0] for o in out]
    return {"module": "dil.runtime", "seconds_median": float(np.median(secs)), "seconds": secs,
            "loads_torch": any(o[1] for o in out), "loads_onnxruntime": any(o[2] for o in out)}


def machine_info(threads: int) -> dict:
    model = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        pass
    try:
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        mem = None
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu": model or platform.processor(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": default_threads(),
        "memory_gib": None if mem is None else round(mem, 1),
        "threads": threads,
        "load_average_at_start": None if load is None else [round(x, 2) for x in load],
        "python": platform.python_version(),
    }


def versions() -> dict:
    from importlib import metadata

    import dil.runtime

    out = {"dil": dil.runtime.__version__, "python": platform.python_version()}
    for pkg in ("numpy", "onnxruntime", "torch"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def busy() -> str | None:
    """A warning when other work competes for the cores (1-minute load average above half of them):
    latencies then measure the contention, torch's spinning OpenMP pool most of all."""
    if not hasattr(os, "getloadavg"):
        return None
    load, cores = os.getloadavg()[0], default_threads()
    if load <= 0.5 * cores:
        return None
    return f"machine busy (load average {load:.1f} on {cores} cores): latencies are not reliable"
