"""Export a checkpoint to a complete artifact: ONNX graphs, torch weights, manifest (docs/architecture.md section 6).

    export_artifact("runs/NAME", "engines")
        ->  engines/NAME.encode.onnx, NAME.denoise.onnx, NAME.weights.safetensors, NAME.json

The manifest's model config (with its per-step input widths, prediction and context patch) and its
"features" (time features, covariate statistics) are the run's, as dil-train recorded them.

The steps (`export_stages` lists them, in order, for the progress display): refuse a run whose
training did not finish (unless allowed), load the checkpoint, export the graphs into a temporary
folder inside the output folder, validate them against the PyTorch module
(`dil.export.graph_check`), copy the EMA weights beside them (`dil.export.weights`), then move
everything into place and write the manifest last. A failure at any point leaves nothing behind and
never touches a previous artifact of the same name; a successful export replaces it (its old
manifest is removed first, so a reader never pairs an old manifest with new files).

Output folder rule: a missing output folder is created when its parent exists (and removed again
if the export fails); a deeper missing path is an error, as it is most likely a typo.

Variants (docs/tensorrt.md), built and validated in the same temporary folder before anything is
published: `fp16` adds the artifact NAME.fp16 (FP16 graphs, float32 islands and I/O,
dil.export.fp16; it names the same weights file); `tensorrt` adds TensorRT plans to every artifact
written (dil.export.trt_artifact), and needs TensorRT and a GPU, checked before any work.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from dil.export.graph_check import FP32_TOLERANCE, REAL_WINDOWS, SUBSET_TOLERANCE, failures, validate_graphs
from dil.export.onnx_export import EXPORTED_GRAPHS, OPSET, dynamic_axes, export_onnx
from dil.export.real_data import training_windows
from dil.export.weights import weights_file_name, weights_record
from dil.runtime.backends.trt_profile import ProfileError, resolve_profile
from dil.runtime.support.files import sha256_file, write_text
from dil.runtime.manifest import Manifest
from dil.runtime.model.frequency import LAYOUT_KEY, layout_record
from dil.train.checkpoint import Checkpoint, load_checkpoint
from dil.train.distill import student_defaults
from dil.train.run_state import training_progress

PRECISION = "fp32"


@dataclass
class ExportOptions:
    """What `export_artifact` writes and how it checks it.

    name: artifact name (default: the run folder's name).
    validate: compare ONNX Runtime with the PyTorch module (dil.export.graph_check) and refuse the
        artifact beyond `tolerance` (max abs error, standardised scale) or `subset_tolerance`
        (subset equivalence). seed: of the validation inputs.
    data_path: the training table, for checkpoints trained on a user file (bundled datasets are
        found by name); without it real-input validation is skipped and the manifest says why.
    fp16: also write the FP16 artifact NAME.fp16.* (returned in `manifest.variants`).
    tensorrt: also build TensorRT plans for each artifact; trt_ranges: {axis: (min, opt, max)}
        profile overrides; strongly_typed: force the strongly typed FP16 route on TensorRT 10.x;
        timing_cache: its path (default out_dir/tensorrt.timing.cache).
    allow_incomplete: export a run whose training did not finish (refused otherwise).
    """

    name: str | None = None
    validate: bool = True
    tolerance: float = FP32_TOLERANCE
    subset_tolerance: float = SUBSET_TOLERANCE
    seed: int = 0
    data_path: Path | None = None
    fp16: bool = False
    tensorrt: bool = False
    trt_ranges: dict = field(default_factory=dict)
    strongly_typed: bool | None = None
    timing_cache: Path | None = None
    allow_incomplete: bool = False


def export_stages(options: ExportOptions) -> list[str]:
    """The named stages `export_artifact` reports to its progress callback with these options, in order."""
    from dil.export.trt_artifact import plan_stages

    precisions = ["fp32"] + ["fp16"] * options.fp16
    stages = ["load"] + [f"export {g}" for g in EXPORTED_GRAPHS] + ["validate"] * options.validate
    if options.fp16:
        stages += ["fp16 convert"] + ["fp16 validate"] * options.validate
    if options.tensorrt:
        stages += [f"tensorrt {p} {s}" for p in precisions for s in plan_stages(options.validate)]
    return stages + [f"write {p}" for p in precisions]


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
    record = {k: v for k, v in data.items() if k != "path"}  # where the run read its table: not the artifact's
    record.setdefault("context_length", config.context_length)
    record.setdefault("horizon", config.horizon)
    record.setdefault("scaling", "context-mean-std")
    return record


def export_artifact(run_dir, out_dir, options: ExportOptions | None = None, progress=None) -> Manifest:
    """Export run_dir's EMA model to out_dir/NAME.{encode,denoise}.onnx, NAME.weights.safetensors and
    NAME.json (see ExportOptions); returns the manifest.

    progress: optional callable(stage, message), called as each stage of `export_stages(options)`
    starts, with its name and a one-line message.
    Raises CheckpointError (bad checkpoint) or ExportError (anything else); nothing is written then.
    """
    opts = options or ExportOptions()
    say = progress or (lambda stage, message: None)
    run_dir = Path(run_dir)
    trt = _require_tensorrt(opts)  # before any work: no GPU or no TensorRT is a one-line refusal
    _check_finished(run_dir, opts)
    say("load", f"loading checkpoint {run_dir}")
    ckpt = load_checkpoint(run_dir)
    name = _check_name(opts.name or run_dir.resolve().name)
    _check_profile(ckpt, opts)
    out_dir = Path(out_dir)
    with _work_folder(out_dir, name) as work:
        fp32 = _fp32_artifact(ckpt, work, out_dir / f"{name}.json", opts, say)
        artifacts = [fp32]
        if opts.fp16:
            artifacts.append(_fp16_artifact(ckpt, fp32, work, opts, say))
        if opts.tensorrt:
            _add_tensorrt(artifacts, work, out_dir, opts, trt, say)
        fp32.manifest.variants = [a.manifest for a in artifacts[1:]]
        for a in artifacts:
            say(f"write {a.manifest.precision}", f"writing {a.manifest.path}")
            _publish(a.files, out_dir, a.manifest)
        if opts.tensorrt and not opts.timing_cache:  # updated in the work folder, moved back on success only
            from dil.export.tensorrt import TIMING_CACHE

            if (work / TIMING_CACHE).is_file():
                os.replace(work / TIMING_CACHE, out_dir / TIMING_CACHE)
    return fp32.manifest


@dataclass
class _Artifact:
    """One manifest being built, the files it publishes and its ONNX graphs (all in the work folder)."""

    manifest: Manifest
    files: list
    graphs: dict
    real: tuple | None = None  # (windows, info) of the validation, None when not validated


# -- checks before any work -------------------------------------------------------------------------
def _require_tensorrt(opts: ExportOptions):
    """(tensorrt module, GPU) when TensorRT plans are asked for, else None."""
    if not opts.tensorrt:
        return None
    from dil.export.tensorrt import TrtBuildError, require_tensorrt

    try:
        return require_tensorrt()
    except TrtBuildError as exc:
        raise ExportError(str(exc)) from None


def _check_finished(run_dir: Path, opts: ExportOptions) -> None:
    """Refuse a run whose training stopped before its planned epochs without early stopping."""
    progress = training_progress(run_dir)
    if progress.finished is False and not opts.allow_incomplete:
        raise ExportError(f"the training of {run_dir} did not finish: {progress.epochs_done} of "
                          f"{progress.epochs_planned} epochs done (continue it with dil-train --resume, "
                          "or export it anyway with --allow-incomplete)")


def _check_profile(ckpt: Checkpoint, opts: ExportOptions) -> None:
    if opts.tensorrt:
        try:
            resolve_profile(ckpt.config, **(opts.trt_ranges or {}))
        except ProfileError as exc:
            raise ExportError(str(exc)) from None


@contextlib.contextmanager
def _work_folder(out_dir: Path, name: str):
    """A temporary folder inside out_dir for everything built, removed at the end; an output folder
    created here (prepare_out_dir) is removed again when the export fails."""
    created = prepare_out_dir(out_dir)
    work = Path(tempfile.mkdtemp(prefix=f".{name}.export-", dir=out_dir))
    ok = False
    try:
        yield work
        ok = True
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if not ok and created:
            with contextlib.suppress(OSError):
                out_dir.rmdir()


# -- the float32 artifact ---------------------------------------------------------------------------
def _fp32_artifact(ckpt: Checkpoint, work: Path, manifest_path: Path, opts: ExportOptions, say) -> _Artifact:
    """Export and validate the float32 graphs, copy the weights, and build NAME.json's manifest."""
    name = manifest_path.name[: -len(".json")]
    graphs = _export_graphs(ckpt, work, name, say)
    real = None
    if opts.validate:
        say("validate", "validating against PyTorch (ONNX Runtime, CPU)")
        cfg = ckpt.config
        real = training_windows(ckpt.data, cfg.context_length, cfg.horizon, REAL_WINDOWS, opts.data_path)
    report = _validate(ckpt, graphs, real, opts.tolerance, opts.subset_tolerance, opts.seed, "")
    weights = work / weights_file_name(name)
    shutil.copyfile(ckpt.path / "model.safetensors", weights)  # byte for byte: the run's sha256
    axes = dynamic_axes(ckpt.config)
    run = Path(ckpt.path).resolve().name
    manifest = Manifest(
        name=name,
        model=ckpt.config,
        schedule=ckpt.schedule,
        data=_data_record(ckpt.data, ckpt.config),
        graphs={g: _graph_entry(p, axes) for g, p in graphs.items()},
        precision=PRECISION,
        features=ckpt.features,  # the run's time features and covariate statistics (docs/model.md 1.4)
        validation=report,
        versions=_versions(),
        extra={"dynamic_axes": axes,
               "checkpoint": {"run": run, "training": ckpt.training,
                              "progress": training_progress(ckpt.path).to_dict()},
               "weights": weights_record(weights, f"model.safetensors of the run {run}"),
               # a frequency-domain model's horizon layout, checked when the artifact loads (docs/frequency.md)
               **({LAYOUT_KEY: layout_record(ckpt.config.horizon)} if ckpt.config.domain == "frequency" else {})},
        path=manifest_path,
        # a distilled student runs the steps and order it was trained for (docs/distillation.md)
        sampler_defaults=student_defaults(ckpt.training),
    )
    return _Artifact(manifest, [*graphs.values(), weights], graphs, real)


def _export_graphs(ckpt: Checkpoint, work: Path, name: str, say) -> dict:
    """{graph: path} of the ONNX graphs (EXPORTED_GRAPHS) written into the work folder."""
    try:
        return export_onnx(ckpt.model, work, name,
                           progress=lambda g: say(f"export {g}", f"exporting the {g} graph"))
    except Exception as exc:  # the exporter's errors are long; keep their first line
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ExportError(f"ONNX export failed: {first}") from exc


def _validate(ckpt: Checkpoint, paths: dict, real, tolerance: float, subset_tolerance: float, seed: int,
              what: str) -> dict:
    """The validation section of graphs `paths` against the torch module (skipped when real is
    None); ExportError beyond tolerance. what: "" or "FP16 ", for the message."""
    if real is None:
        return {"skipped": True, "passed": None}
    windows, info = real
    report = validate_graphs(ckpt.model, paths, ckpt.schedule, windows, tolerance=tolerance,
                             subset_tolerance=subset_tolerance, seed=seed, real_info=info)
    if not report["passed"]:
        raise ExportError(f"{what}validation failed: " + "; ".join(failures(report)) + " (nothing written)", report)
    return report


# -- variants ---------------------------------------------------------------------------------------
def _fp16_artifact(ckpt: Checkpoint, fp32: _Artifact, work: Path, opts: ExportOptions, say) -> _Artifact:
    """Convert the float32 graphs to FP16, validate them against torch, and build NAME.fp16's manifest."""
    from dil.export.fp16 import FP16_SUBSET_TOLERANCE, FP16_TOLERANCE, KEEP_FP32_OPS, convert_files, fp16_name

    base = fp32.manifest
    say("fp16 convert", "converting the graphs to FP16")
    paths, conversion = convert_files(fp32.graphs, work, base.name)
    if fp32.real is not None:
        say("fp16 validate", "validating the FP16 graphs against PyTorch (ONNX Runtime, CPU)")
    report = _validate(ckpt, paths, fp32.real, FP16_TOLERANCE, FP16_SUBSET_TOLERANCE, opts.seed, "FP16 ")
    axes = dynamic_axes(ckpt.config)
    variant = fp16_name(base.name)
    manifest = Manifest(
        name=variant, model=ckpt.config, schedule=ckpt.schedule, data=base.data,
        graphs={g: _graph_entry(p, axes) for g, p in paths.items()}, precision="fp16", validation=report,
        versions=base.versions, features=base.features,
        extra={**base.extra, "fp16": {"source_artifact": base.path.name, "kept_fp32_ops": sorted(KEEP_FP32_OPS),
                                      "io": "float32", "conversion": conversion}},
        path=base.path.parent / f"{variant}.json",
    )
    return _Artifact(manifest, list(paths.values()), paths, fp32.real)


def _add_tensorrt(artifacts: list, work: Path, out_dir: Path, opts: ExportOptions, trt, say) -> None:
    """Build and validate the TensorRT plans of every artifact into the work folder."""
    from dil.export.tensorrt import TIMING_CACHE, TrtBuildError
    from dil.export.trt_artifact import add_plans

    sources = {"fp32": artifacts[0].graphs, "fp16": artifacts[1].graphs if len(artifacts) > 1 else None}
    # The folder's timing cache is updated in the work folder and moved back on success only.
    cache = Path(opts.timing_cache) if opts.timing_cache else work / TIMING_CACHE
    if not opts.timing_cache and (out_dir / TIMING_CACHE).is_file():
        shutil.copyfile(out_dir / TIMING_CACHE, cache)
    module, gpu = trt
    for a in artifacts:
        precision = a.manifest.precision
        try:
            a.files += add_plans(a.manifest, sources, work, opts.trt_ranges or {}, trt=module, gpu=gpu,
                                 strongly_typed=opts.strongly_typed, validate=opts.validate, seed=opts.seed,
                                 timing_cache_path=cache,
                                 progress=lambda stage, message, p=precision: say(f"tensorrt {p} {stage}", message))
        except TrtBuildError as exc:
            raise ExportError(str(exc)) from None
    for a in artifacts:  # the manifest names the folder's cache, where it will be
        a.manifest.extra["tensorrt"]["timing_cache"] = cache.name


def _publish(tmp_paths, out_dir: Path, manifest: Manifest) -> None:
    """Move the validated files (graphs, weights, plans) into place and write the manifest last."""
    with contextlib.suppress(FileNotFoundError):
        manifest.path.unlink()  # the old files are about to be replaced
    for tmp in tmp_paths:
        os.replace(tmp, out_dir / tmp.name)
    write_text(manifest.path, manifest.to_json())
