"""Export a checkpoint to a complete artifact: ONNX graphs + manifest (DESIGN section 10).

    export_artifact("runs/NAME", "engines")  ->  engines/NAME.encode.onnx, NAME.denoise.onnx, NAME.json

Order: load the checkpoint, export both graphs into a temporary folder inside the output folder,
validate them against the PyTorch module (`dil.export.graph_check`), and only then move them into
place and write the manifest last. A failure at any point leaves nothing behind and never touches
a previous artifact of the same name; a successful export replaces it (its old manifest is removed
first, so a reader never pairs an old manifest with new graphs).

Output folder rule: a missing output folder is created when its parent exists (and removed again
if the export fails); a deeper missing path is an error, as it is most likely a typo.

Variants (docs/tensorrt.md), built and validated in the same temporary folder before anything is
published: `fp16=True` adds the artifact NAME.fp16 (FP16 graphs, float32 islands and I/O,
dil.export.fp16); `tensorrt=True` adds TensorRT plans to every artifact written
(dil.export.trt_artifact), and needs TensorRT and a GPU, checked before any work.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

from dil.runtime.files import write_text
from dil.export.onnx_export import OPSET, dynamic_axes, export_onnx
from dil.export.real_data import training_windows
from dil.export.graph_check import FP32_TOLERANCE, REAL_WINDOWS, SUBSET_TOLERANCE, failures, validate_graphs
from dil.runtime.files import sha256_file
from dil.runtime.manifest import Manifest
from dil.runtime.backends.trt_profile import ProfileError, resolve_profile
from dil.train.checkpoint import load_checkpoint

PRECISION = "fp32"


class ExportError(RuntimeError):
    """The export failed (bad output path or name, exporter error, validation beyond tolerance).

    The message is one line. `report` holds the validation section when validation failed.
    """

    def __init__(self, message: str, report: dict | None = None):
        super().__init__(message)
        self.report = report


def _check_name(name: str) -> str:
    if not name or name.startswith(".") or "/" in name or "\\" in name or name != name.strip():
        raise ExportError(f"invalid artifact name {name!r}: use a plain file name such as 'metro-traffic'")
    return name


def prepare_out_dir(out_dir) -> bool:
    """Make sure out_dir exists (see the module docstring's rule). Returns True when created here."""
    out_dir = Path(out_dir)
    if out_dir.is_dir():
        return False
    if out_dir.exists():
        raise ExportError(f"output path {out_dir} exists and is not a folder")
    if not out_dir.parent.is_dir():
        raise ExportError(f"output folder {out_dir} does not exist, nor does its parent {out_dir.parent}")
    out_dir.mkdir()
    return True


def graph_io(path) -> dict:
    """Inputs and outputs of an ONNX file: {"inputs": [{"name", "dtype", "shape"}], "outputs": ...}.

    A shape lists ints for fixed axes and axis names (G, N, S, L, H) for dynamic ones.
    """
    import onnx
    from onnx.helper import tensor_dtype_to_np_dtype

    model = onnx.load(str(path), load_external_data=False)

    def describe(values):
        out = []
        for v in values:
            t = v.type.tensor_type
            shape = [d.dim_param or d.dim_value for d in t.shape.dim]
            out.append({"name": v.name, "dtype": tensor_dtype_to_np_dtype(t.elem_type).name, "shape": shape})
        return out

    return {"inputs": describe(model.graph.input), "outputs": describe(model.graph.output)}


def _graph_entry(path: Path, axes: dict) -> dict:
    io = graph_io(path)
    used = {a for v in io["inputs"] + io["outputs"] for a in v["shape"] if isinstance(a, str)}
    return {
        "file": path.name,
        "sha256": sha256_file(path),
        "bytes": path.stat().st_size,
        **io,
        "dynamic_axes": {a: r for a, r in axes.items() if a in used},
    }


def _versions() -> dict:
    import onnx
    import onnxruntime
    import onnxscript
    import torch

    import dil.runtime

    return {
        "dil": dil.runtime.__version__,
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "onnxscript": onnxscript.__version__,
        "opset": OPSET,
    }


def _data_record(data: dict, config) -> dict:
    """The manifest's data section: the checkpoint's record, with the window and scaling always set."""
    record = dict(data)
    record.setdefault("context_length", config.context_length)
    record.setdefault("horizon", config.horizon)
    record.setdefault("scaling", "context-mean-std")
    return record


def export_artifact(
    run_dir,
    out_dir,
    name: str | None = None,
    *,
    validate: bool = True,
    tolerance: float = FP32_TOLERANCE,
    subset_tolerance: float = SUBSET_TOLERANCE,
    seed: int = 0,
    data_path=None,
    progress=None,
    fp16: bool = False,
    tensorrt: bool = False,
    trt_ranges: dict | None = None,
    strongly_typed: bool | None = None,
    timing_cache=None,
) -> Manifest:
    """Export run_dir's EMA model to out_dir/NAME.{encode,denoise}.onnx + NAME.json; returns the manifest.

    fp16: also write the FP16 artifact NAME.fp16.* (returned in `manifest.variants`).
    tensorrt: also build TensorRT plans for each artifact; trt_ranges: {axis: (min, opt, max)}
    profile overrides; strongly_typed: force the strongly typed FP16 route on TensorRT 10.x;
    timing_cache: its path (default out_dir/tensorrt.timing.cache).

    name: artifact name (default: the run folder's name). validate: compare ONNX Runtime with the
    PyTorch module (see dil.export.graph_check) and refuse the artifact beyond `tolerance` (max abs
    error, standardised scale) or `subset_tolerance` (subset equivalence). seed: of the validation
    inputs. data_path: the training table, for checkpoints trained on a user file (bundled datasets
    are found by name); without it real-input validation is skipped and the manifest says why.
    progress: optional callable taking a one-line stage message.
    Raises CheckpointError (bad checkpoint) or ExportError (anything else); nothing is written then.
    """
    say = progress or (lambda message: None)
    run_dir = Path(run_dir)
    trt = gpu = None
    if tensorrt:  # before any work: no GPU or no TensorRT is a one-line refusal
        from dil.export.tensorrt import TrtBuildError, require_tensorrt

        try:
            trt, gpu = require_tensorrt()
        except TrtBuildError as exc:
            raise ExportError(str(exc)) from None
    say(f"loading checkpoint {run_dir}")
    ckpt = load_checkpoint(run_dir)
    name = _check_name(name or run_dir.resolve().name)
    if tensorrt:
        try:
            resolve_profile(ckpt.config, **(trt_ranges or {}))
        except ProfileError as exc:
            raise ExportError(str(exc)) from None
    out_dir = Path(out_dir)
    created = prepare_out_dir(out_dir)
    work = Path(tempfile.mkdtemp(prefix=f".{name}.export-", dir=out_dir))
    ok = False
    try:
        try:
            tmp_paths = export_onnx(ckpt.model, work, name, progress=lambda g: say(f"exporting the {g} graph"))
        except Exception as exc:  # the exporter's errors are long; keep their first line
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ExportError(f"ONNX export failed: {first}") from exc
        if validate:
            say("validating against PyTorch (ONNX Runtime, CPU)")
            cfg = ckpt.config
            windows, info = training_windows(ckpt.data, cfg.context_length, cfg.horizon, REAL_WINDOWS, data_path)
            report = validate_graphs(
                ckpt.model, tmp_paths, ckpt.schedule, windows, tolerance=tolerance,
                subset_tolerance=subset_tolerance, seed=seed, real_info=info,
            )
            if not report["passed"]:
                raise ExportError("validation failed: " + "; ".join(failures(report)) + " (nothing written)", report)
        else:
            report = {"skipped": True, "passed": None}
        axes = dynamic_axes(ckpt.config)
        manifest = Manifest(
            name=name,
            model=ckpt.config,
            schedule=ckpt.schedule,
            data=_data_record(ckpt.data, ckpt.config),
            graphs={g: _graph_entry(p, axes) for g, p in tmp_paths.items()},
            precision=PRECISION,
            validation=report,
            versions=_versions(),
            extra={"dynamic_axes": axes, "checkpoint": {"run": run_dir.resolve().name, "training": ckpt.training}},
            path=out_dir / f"{name}.json",
        )
        files = {manifest.path: list(tmp_paths.values())}
        manifests = [manifest]
        if fp16:
            m16, paths16 = _fp16_variant(ckpt, tmp_paths, work, out_dir, name, manifest, say, validate=validate,
                                         windows=windows if validate else None, info=info if validate else None,
                                         seed=seed)
            manifests.append(m16)
            files[m16.path] = list(paths16.values())
        if tensorrt:
            from dil.export.tensorrt import TIMING_CACHE, TrtBuildError
            from dil.export.trt_artifact import add_plans

            sources = {"fp32": tmp_paths, "fp16": paths16 if fp16 else None}
            # The folder's timing cache is updated in the work folder and moved back on success only.
            cache = Path(timing_cache) if timing_cache else work / TIMING_CACHE
            if not timing_cache and (out_dir / TIMING_CACHE).is_file():
                shutil.copyfile(out_dir / TIMING_CACHE, cache)
            for m in manifests:
                try:
                    files[m.path] += add_plans(m, sources, work, trt_ranges or {}, trt=trt, gpu=gpu,
                                               strongly_typed=strongly_typed, validate=validate, seed=seed,
                                               timing_cache_path=cache, progress=say)
                except TrtBuildError as exc:
                    raise ExportError(str(exc)) from None
            for m in manifests:  # the manifest names the folder's cache, where it will be
                m.extra["tensorrt"]["timing_cache"] = cache.name
        manifest.variants = manifests[1:]
        for m in manifests:
            say(f"writing {m.path}")
            _publish(files[m.path], out_dir, m)
        if tensorrt and not timing_cache and (work / TIMING_CACHE).is_file():
            os.replace(work / TIMING_CACHE, out_dir / TIMING_CACHE)
        ok = True
        return manifest
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if not ok and created:
            with contextlib.suppress(OSError):
                out_dir.rmdir()


def _publish(tmp_paths, out_dir: Path, manifest: Manifest) -> None:
    """Move the validated graphs (and plans) into place and write the manifest last."""
    with contextlib.suppress(FileNotFoundError):
        manifest.path.unlink()  # the old graphs are about to be replaced
    for tmp in tmp_paths:
        os.replace(tmp, out_dir / tmp.name)
    write_text(manifest.path, manifest.to_json())


def _fp16_variant(ckpt, tmp_paths: dict, work: Path, out_dir: Path, name: str, fp32: Manifest, say, *,
                  validate: bool, windows, info, seed: int) -> tuple[Manifest, dict]:
    """Convert the float32 graphs to FP16, validate them against torch, and build NAME.fp16's manifest."""
    from dil.export.fp16 import FP16_SUBSET_TOLERANCE, FP16_TOLERANCE, KEEP_FP32_OPS, convert_files, fp16_name

    say("converting the graphs to FP16")
    paths, conversion = convert_files(tmp_paths, work, name)
    if validate:
        say("validating the FP16 graphs against PyTorch (ONNX Runtime, CPU)")
        report = validate_graphs(ckpt.model, paths, ckpt.schedule, windows, tolerance=FP16_TOLERANCE,
                                 subset_tolerance=FP16_SUBSET_TOLERANCE, seed=seed, real_info=info)
        if not report["passed"]:
            raise ExportError("FP16 validation failed: " + "; ".join(failures(report)) + " (nothing written)", report)
    else:
        report = {"skipped": True, "passed": None}
    axes = dynamic_axes(ckpt.config)
    variant = fp16_name(name)
    manifest = Manifest(
        name=variant, model=ckpt.config, schedule=ckpt.schedule, data=fp32.data,
        graphs={g: _graph_entry(p, axes) for g, p in paths.items()}, precision="fp16", validation=report,
        versions=fp32.versions,
        extra={**fp32.extra, "fp16": {"source_artifact": fp32.path.name, "kept_fp32_ops": sorted(KEEP_FP32_OPS),
                                      "io": "float32", "conversion": conversion}},
        path=out_dir / f"{variant}.json",
    )
    return manifest, paths
