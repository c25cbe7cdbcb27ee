"""TensorRT plans for an artifact: built during `dil-export --tensorrt`, or later on the GPU machine
from an existing artifact (`dil-export --engine engines/NAME.json --tensorrt`), which needs only
the ONNX graphs and their manifest, not the training run.

Plans are keyed (docs/tensorrt.md) on the source graphs' sha256, the TensorRT version, the compute
capability, the precision, the build mode and the profile: `tensorrt_for_artifact` rebuilds only
when that key (or a plan file) does not match, unless forced.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

from dil.runtime.support.files import write_text
from dil.export.tensorrt import GRAPHS as PLAN_GRAPHS
from dil.export.tensorrt import TIMING_CACHE, TrtBuildError, build_plans, require_tensorrt, up_to_date
from dil.export.trt_validate import tolerance_for, validate_plans
from dil.runtime.manifest import GRAPHS, Manifest, ManifestError, load_manifest
from dil.runtime.backends.trt_profile import resolve_profile


def sources_for(manifest: Manifest) -> dict:
    """{"fp32": {graph: path}, "fp16": {graph: path} or None}: the ONNX graphs the plans of this
    artifact are built from (an FP16 artifact also needs its float32 source artifact)."""
    own = {g: manifest.graph_path(g) for g in GRAPHS}
    if manifest.precision != "fp16":
        return {"fp32": own, "fp16": None}
    source = (manifest.extra.get("fp16") or {}).get("source_artifact")
    if not source:
        raise ManifestError(f"{manifest.path} is an FP16 artifact without its float32 source: re-export with --fp16")
    fp32 = load_manifest(manifest.member(source, "fp16.source_artifact"))
    return {"fp32": {g: fp32.graph_path(g) for g in GRAPHS}, "fp16": own}


def plan_stages(validate: bool = True) -> list[str]:
    """The stages `add_plans` reports to its progress callback, in order: one build per plan, then
    the validation against ONNX Runtime."""
    return [f"build {g}" for g in PLAN_GRAPHS] + ["validate"] * validate


def add_plans(manifest: Manifest, sources: dict, build_dir, ranges: dict, *, trt, gpu, strongly_typed=None,
              timing_cache_path=None, validate: bool = True, seed: int = 0, progress=None) -> list[Path]:
    """Build the plans of `manifest` into build_dir, validate them, and record them in `manifest`
    (graphs[g]["plan_file"...], extra["tensorrt"], validation["tensorrt"], versions["tensorrt"]).

    ranges: {axis: (min, opt, max)} overrides of the default profile. progress: optional
    callable(stage, message) for the stages of `plan_stages(validate)`. Returns the plan paths.
    Raises ProfileError (bad ranges) or TrtBuildError (build or validation failed).
    """
    say = progress or (lambda stage, message: None)
    build_dir = Path(build_dir)
    profile = resolve_profile(manifest.model, **ranges)
    record, entries = build_plans(manifest, sources, build_dir, profile, trt=trt, gpu=gpu,
                                  strongly_typed=strongly_typed, timing_cache_path=timing_cache_path, progress=say)
    for g, entry in entries.items():
        manifest.graphs[g] = {**manifest.graphs[g], **entry}
    manifest.extra["tensorrt"] = record
    manifest.versions = {**manifest.versions, "tensorrt": trt.__version__}
    if validate:
        from dil.runtime.backends.trt_engine import TrtEngine

        say("validate", f"validating the TensorRT {manifest.precision} engines against ONNX Runtime")
        engine = TrtEngine(manifest, plan_dir=build_dir)
        report = validate_plans(engine, sources["fp32"], manifest.schedule, tolerance_for(manifest.precision), seed)
        del engine
        manifest.validation = {**manifest.validation, "tensorrt": report}
        if not report["passed"]:
            errs = ", ".join(f"{g} {e['max_abs_err']:.3g}" for g, e in report["graphs"].items())
            raise TrtBuildError(f"TensorRT {manifest.precision} engines differ from ONNX Runtime beyond "
                                f"{report['tolerance']:.0e} (max abs error {errs}; device cache "
                                f"{report['device_cache']['max_abs_err']:.3g}): nothing written")
    else:
        manifest.validation = {**manifest.validation, "tensorrt": {"skipped": True, "passed": None}}
    plans = [build_dir / e["plan_file"] for e in entries.values()]
    return plans + [build_dir / record["cache_update"]["file"]]


def tensorrt_for_artifact(engine, ranges: dict | None = None, *, strongly_typed=None, timing_cache=None,
                          force: bool = False, validate: bool = True, progress=None) -> tuple[Manifest, bool]:
    """Build (or keep, when up to date) the plans of an existing artifact; returns (manifest, built).

    engine: any path naming the artifact (NAME.json, NAME.fp16.onnx, ...). timing_cache: path of
    the timing cache (default: tensorrt.timing.cache beside the manifest). The plans are moved into
    place and the manifest rewritten last; a failure leaves the artifact as it was. progress:
    optional callable(stage, message), as for add_plans.
    """
    trt, gpu = require_tensorrt()
    manifest = load_manifest(engine)
    sources = sources_for(manifest)
    folder = manifest.path.parent
    profile = resolve_profile(manifest.model, **(ranges or {}))
    if not force and up_to_date(manifest, sources, profile, trt, gpu, strongly_typed):
        return manifest, False
    work = Path(tempfile.mkdtemp(prefix=f".{manifest.name}.trt-", dir=folder))
    try:
        plans = add_plans(manifest, sources, work, ranges or {}, trt=trt, gpu=gpu, strongly_typed=strongly_typed,
                          timing_cache_path=timing_cache or folder / TIMING_CACHE, validate=validate,
                          progress=progress)
        for p in plans:
            os.replace(p, folder / p.name)
        write_text(manifest.path, manifest.to_json())
    finally:
        with contextlib.suppress(OSError):
            shutil.rmtree(work)
    return manifest, True


__all__ = ["TrtBuildError", "add_plans", "plan_stages", "sources_for", "tensorrt_for_artifact"]
