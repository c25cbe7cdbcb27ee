"""The artifact manifest: what `dil-export` writes and `dil-run` reads (docs/architecture.md).

An exported model NAME is a folder entry of sibling files:
    NAME.json           this manifest (written last: its presence means the artifact is complete)
    NAME.encode.onnx    the encode graph
    NAME.denoise.onnx   the denoise graph
    NAME.denoise_full.onnx  optional: the full-step graph (every token, no cache; OPTIONAL_GRAPHS)
    NAME.denoise_full_kv.onnx  optional: the same full step, also returning every token's keys/values
    NAME.*.plan         TensorRT engines, where built (graphs[g]["plan_file"], the "tensorrt" record)
`--engine` may name any of NAME.onnx, NAME.plan, NAME.json, NAME.encode.onnx, ... : they all resolve
to NAME.json, and the graph files come from it. The FP16 variant is the artifact NAME.fp16
(NAME.fp16.json, NAME.fp16.encode.onnx, ...; `--engine engines/NAME.fp16.onnx`), precision "fp16".
Sections of the JSON not named below (e.g. "tensorrt", "fp16", "dynamic_axes") are kept in
`Manifest.extra` and written back unchanged. The optional "sampler_defaults" record (the sampler and
steps a call without them runs, measured on the validation windows by `dil-bench --frontier
--write-defaults`; docs/sampler.md section 14) is checked on load and added by
`write_sampler_defaults`, which rewrites NAME.json atomically with its other content unchanged.

A manifest is untrusted input: every file it names must lie inside the manifest's own folder (no
absolute path, no `..`, no symlink leading out; `Manifest.member`), and every graph must carry its
sha256, which `load_manifest` always checks.

The shipped default model (`dil-run` without `--engine`, `Forecaster.load()` without a path) is
package data of `dil.engines`; `default_artifact()` finds it wherever dil is installed.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePath

from dil.runtime.support.files import sha256_file, write_text
from dil.runtime.model.config import ModelConfig
from dil.runtime.model.frequency import LAYOUT_KEY, LayoutError, check_layout
from dil.runtime.sampling.config import SamplerConfig, check_int
from dil.runtime.sampling.schedule import NoiseSchedule
from dil.runtime.sampling.solver import MAX_ORDER

FORMAT_VERSION = 1
GRAPHS = ("encode", "denoise")
# Suffixes a user may point --engine at; stripping one gives NAME.
_SUFFIXES = (".encode.onnx", ".denoise.onnx", ".denoise_full.onnx", ".denoise_full_kv.onnx", ".encode.plan", ".denoise.plan", ".cache_update.plan",
             ".onnx", ".plan", ".json")
# Keys of the manifest JSON that Manifest holds as fields; everything else goes to Manifest.extra.
_FIELDS = ("format_version", "name", "precision", "model", "schedule", "data", "graphs", "io", "validation", "versions",
           "features", "sampler_defaults")
# Fields every format-1 manifest carries (what dil-export has always written), with their JSON types.
_REQUIRED = {"name": str, "precision": str, "model": dict, "schedule": dict, "data": dict, "graphs": dict}
_MODEL_KEYS = ("context_length", "horizon", "d_model", "num_heads", "num_layers", "ffn_dim", "time_embed_dim",
               "context_features", "horizon_features", "prediction")
_SCHEDULE_KEYS = ("num_steps", "kind", "beta_start", "beta_end")
_SHA256 = re.compile(r"[0-9a-f]{64}")
# The SamplerConfig fields an artifact's "sampler_defaults" sets (the rest of the record documents
# how they were chosen: CRPS, windows, the measured table, "why").
SAMPLER_DEFAULT_KEYS = ("lattice", "cache", "steps")
# ... and the ones it may set: a distilled student's record gives its solver order (docs/distillation.md).
SAMPLER_OPTIONAL_KEYS = ("solver_order",)
# The shipped default model: NAME.* in the package dil.engines (pyproject's package-data).
DEFAULT_ARTIFACT = "metro-traffic"

ENCODE_INPUTS = ("ctx",)
ENCODE_OUTPUTS = ("k_ctx", "v_ctx")
DENOISE_INPUTS = ("x_sub", "pos_sub", "t_feat", "k_ctx", "v_ctx", "k_hor", "v_hor", "hor_valid")
DENOISE_OUTPUTS = ("eps_sub", "k_sub", "v_sub")
# Optional graphs: an artifact exported before one existed has none and works without it.
# denoise_full: the full step (every token, no cache, no masks) for samplers that need no keys/values;
# denoise_full_kv: the same step also returning the tokens' keys/values (the fast sampler's full steps,
# whose keys/values later cached steps attend to).
OPTIONAL_GRAPHS = ("denoise_full", "denoise_full_kv")
DENOISE_FULL_INPUTS = ("x_hor", "t_feat", "k_ctx", "v_ctx")
DENOISE_FULL_OUTPUTS = ("out",)
DENOISE_FULL_KV_OUTPUTS = ("out", "k_sub", "v_sub")
# Each graph's (inputs, outputs) names.
GRAPH_IO = {"encode": (ENCODE_INPUTS, ENCODE_OUTPUTS), "denoise": (DENOISE_INPUTS, DENOISE_OUTPUTS),
            "denoise_full": (DENOISE_FULL_INPUTS, DENOISE_FULL_OUTPUTS),
            "denoise_full_kv": (DENOISE_FULL_INPUTS, DENOISE_FULL_KV_OUTPUTS)}


class ManifestError(ValueError):
    """The artifact is missing, incomplete or inconsistent."""


def default_artifact() -> Path:
    """NAME.json of the shipped default model (DEFAULT_ARTIFACT), from the installed package dil.engines.

    Found through the import system, so it does not depend on the working folder. Raises
    ManifestError (one line) when the package or its files are not installed.
    """
    from importlib.resources import files

    try:
        folder = files("dil.engines")
    except ModuleNotFoundError:
        raise ManifestError("the shipped default model (package dil.engines) is not installed: reinstall dil, "
                            "or pass --engine PATH") from None
    path = Path(str(folder.joinpath(f"{DEFAULT_ARTIFACT}.json")))
    if not path.is_file():
        raise ManifestError(f"the shipped default model {path} is missing: reinstall dil, or pass --engine PATH")
    return path


def inside(folder: Path, name, what: str) -> Path:
    """folder / name, refusing a name that could leave `folder`: not a non-empty string, absolute, with a
    `..` part, or resolving (through symlinks) outside it. `what` names the entry in the one-line error."""
    if not isinstance(name, str) or not name:
        raise ManifestError(f"{what} is {name!r}, not a file name")
    part = PurePath(name)
    if part.is_absolute() or part.drive or ".." in part.parts:
        raise ManifestError(f"{what} {name!r} is not inside the artifact's folder (absolute paths and '..' are refused)")
    path = Path(folder) / part
    if not path.resolve().is_relative_to(Path(folder).resolve()):
        raise ManifestError(f"{what} {name!r} resolves outside the artifact's folder (a symlink leading out)")
    return path


def _no_features():
    # dil.runtime.inputs.features imports pandas: loaded on first use, not when dil.runtime is imported.
    from dil.runtime.inputs.features import FeatureSpec

    return FeatureSpec()


def manifest_path(engine) -> Path:
    """NAME.json for any path naming the artifact (see module docstring)."""
    p = Path(engine)
    name = p.name
    for suffix in _SUFFIXES:
        if name.endswith(suffix):
            return p.with_name(name[: -len(suffix)] + ".json")
    return p.with_name(name + ".json")


@dataclass
class Manifest:
    """Parsed manifest. `graphs[name]` = {"file": relative file name, "sha256": ...}.

    features: the dil.runtime.inputs.features.FeatureSpec of the model's inputs beyond the target (time
    features, covariates); the JSON key "features", absent in artifacts exported before it
    existed (= FeatureSpec(): the target only).
    sampler_defaults: the checked "sampler_defaults" record (lattice, cache, steps, why,
    ...) or None (the artifact has none: the built-in SamplerConfig defaults apply).
    """

    name: str
    model: ModelConfig
    schedule: NoiseSchedule
    data: dict
    graphs: dict
    precision: str = "fp32"
    validation: dict = field(default_factory=dict)
    versions: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)
    features: object = field(default_factory=_no_features)  # FeatureSpec
    path: Path | None = None  # where it was read from
    sampler_defaults: dict | None = None
    # Artifacts written by the same export (the FP16 variant); not part of the JSON.
    variants: list = field(default_factory=list, repr=False, compare=False)

    def to_dict(self) -> dict:
        d = {
            "format_version": FORMAT_VERSION,
            "name": self.name,
            "precision": self.precision,
            "model": self.model.to_dict(),
            "schedule": self.schedule.to_dict(),
            "data": self.data,
            "graphs": self.graphs,
            "io": {g: {"inputs": list(GRAPH_IO[g][0]), "outputs": list(GRAPH_IO[g][1])}
                   for g in GRAPHS + OPTIONAL_GRAPHS if g in GRAPHS or g in self.graphs},
            "validation": self.validation,
            "versions": self.versions,
            "features": self.features.to_dict(),
        }
        if self.sampler_defaults is not None:
            d["sampler_defaults"] = self.sampler_defaults
        d.update(self.extra)
        return d

    def default_sampler(self) -> SamplerConfig:
        """The SamplerConfig a call without sampler settings runs: the artifact's "sampler_defaults"
        (lattice, cache, steps, and solver_order where given) over the built-in defaults;
        SamplerConfig() without them."""
        if self.sampler_defaults is None:
            return SamplerConfig()
        keys = SAMPLER_DEFAULT_KEYS + tuple(k for k in SAMPLER_OPTIONAL_KEYS if k in self.sampler_defaults)
        return SamplerConfig(**{k: self.sampler_defaults[k] for k in keys})

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n"

    def member(self, name, what: str = "file") -> Path:
        """Path of a file of the artifact, `name` relative to the manifest's folder (see `inside`)."""
        return inside(self.path.parent if self.path else Path("."), name, f"manifest {self.path}: {what}")

    def graph_path(self, graph: str, kind: str = "onnx") -> Path:
        """Path of a graph file ('encode'/'denoise'; kind 'onnx' or 'plan'), inside the manifest's folder."""
        key = "file" if kind == "onnx" else f"{kind}_file"
        entry = self.graphs.get(graph, {})
        if key not in entry:
            raise ManifestError(f"manifest {self.path} has no {kind} file for graph {graph!r}")
        return self.member(entry[key], f"graphs.{graph}.{key}")


def _field(d: dict, dotted: str, kind, mpath: Path):
    """d["a"]["b"] for dotted "a.b"; ManifestError naming the field when it is absent or of the wrong type."""
    value = d
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            raise ManifestError(f"manifest {mpath} lacks the field {dotted!r}: re-export with dil-export")
        value = value[part]
    if kind is not None and not isinstance(value, kind):
        raise ManifestError(f"manifest {mpath}: field {dotted!r} is a {type(value).__name__}, expected a {kind.__name__}")
    return value


def _check_fields(d, mpath: Path) -> None:
    """Every required field is there, before anything is built from them or any graph file is read."""
    if not isinstance(d, dict):
        raise ManifestError(f"manifest {mpath} is not a JSON object")
    version = _field(d, "format_version", None, mpath)
    if version != FORMAT_VERSION:
        raise ManifestError(f"manifest {mpath} has format_version {version!r}, expected {FORMAT_VERSION}")
    for key, kind in _REQUIRED.items():
        _field(d, key, kind, mpath)
    for key in _MODEL_KEYS:
        _field(d, f"model.{key}", None, mpath)
    for key in _SCHEDULE_KEYS:
        _field(d, f"schedule.{key}", None, mpath)
    for g in GRAPHS + tuple(g for g in OPTIONAL_GRAPHS if g in d["graphs"]):
        _field(d, f"graphs.{g}.file", str, mpath)
        if not _SHA256.fullmatch(_field(d, f"graphs.{g}.sha256", str, mpath)):
            raise ManifestError(f"manifest {mpath}: field 'graphs.{g}.sha256' is not a sha256 (64 lowercase hex digits)")


def load_manifest(engine) -> Manifest:
    """Read and check the manifest for an artifact path. Raises ManifestError with one line.

    Checks, in order, before returning: valid JSON, every required field (the error names the missing
    one), graph files inside the manifest's folder, present, and matching their sha256 (always: the
    graphs are small, hashing them costs milliseconds).
    """
    mpath = manifest_path(engine)
    if not mpath.is_file():
        raise ManifestError(f"no manifest {mpath} for engine {engine} (export with dil-export)")
    try:
        d = json.loads(mpath.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestError(f"manifest {mpath} is not valid JSON: {exc}") from None
    _check_fields(d, mpath)
    try:
        m = Manifest(
            name=d["name"],
            model=ModelConfig.from_dict(d["model"]),
            schedule=NoiseSchedule.from_dict(d["schedule"]),
            data=d["data"],
            graphs=d["graphs"],
            precision=d["precision"],
            validation=d.get("validation", {}),
            versions=d.get("versions", {}),
            extra={k: v for k, v in d.items() if k not in _FIELDS},
            path=mpath,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ManifestError(f"manifest {mpath} is invalid: {str(exc).splitlines()[0] if str(exc) else exc!r}") from None
    m.features = _features(d.get("features"), mpath)
    if m.model.domain == "frequency":  # the spectral layout the graphs were trained in (docs/frequency.md)
        try:
            check_layout(d.get(LAYOUT_KEY), m.model.horizon, f"manifest {mpath}")
        except LayoutError as exc:
            raise ManifestError(str(exc)) from None
    if "sampler_defaults" in d:
        m.sampler_defaults = check_sampler_defaults(d["sampler_defaults"], f"manifest {mpath}")
    _check_widths(m)
    present = GRAPHS + tuple(g for g in OPTIONAL_GRAPHS if g in m.graphs)
    paths = {g: m.graph_path(g) for g in present}  # all refused or accepted before any file is read
    for g, p in paths.items():
        if not p.is_file():
            raise ManifestError(f"graph file {p} named by {mpath} is missing")
        if sha256_file(p) != m.graphs[g]["sha256"]:
            raise ManifestError(f"graph file {p} does not match its manifest {mpath} (sha256 differs): re-export")
    return m


def check_sampler_defaults(record, where: str) -> dict:
    """`record` when it is a valid "sampler_defaults" record, else ManifestError (one line, naming the
    key, prefixed by `where`): a dict whose lattice and cache are true/false and steps an
    integer in SamplerConfig's range; solver_order, when present, an integer in [1, 3]; "why", when
    present, a string. Other keys are kept as they are."""
    if not isinstance(record, dict):
        raise ManifestError(f"{where}: field 'sampler_defaults' is a {type(record).__name__}, expected a dict")
    if "steps" not in record and "inference_steps" in record:  # the key's name in manifests written before it was renamed
        record = {("steps" if k == "inference_steps" else k): v for k, v in record.items()}
    for key in SAMPLER_DEFAULT_KEYS:
        if key not in record:
            raise ManifestError(f"{where}: field 'sampler_defaults.{key}' is missing")
    for key in ("lattice", "cache"):
        if not isinstance(record[key], bool):
            raise ManifestError(f"{where}: field 'sampler_defaults.{key}' must be true or false, got {record[key]!r}")
    try:
        check_int("steps", record["steps"], 1, 1000)
    except ValueError as exc:  # the message's own words after the name: "must be an integer in [...], got ..."
        raise ManifestError(f"{where}: field 'sampler_defaults.steps'{str(exc)[len('steps'):]}"
                            ) from None
    if "solver_order" in record:
        try:
            check_int("solver_order", record["solver_order"], 1, MAX_ORDER)
        except ValueError as exc:
            raise ManifestError(f"{where}: field 'sampler_defaults.solver_order'{str(exc)[len('solver_order'):]}"
                                ) from None
    if "why" in record and not isinstance(record["why"], str):
        raise ManifestError(f"{where}: field 'sampler_defaults.why' is a {type(record['why']).__name__}, expected a "
                            "string")
    return record


def write_sampler_defaults(engine, record: dict) -> Path:
    """Record `record` as the "sampler_defaults" of the artifact `engine` (any path naming it),
    replacing an older one; returns NAME.json.

    The manifest must load (graphs present and matching) and the record must be valid
    (check_sampler_defaults) and strict JSON, all before anything is written; NAME.json is then
    rewritten in one rename (dil.runtime.support.files.write_text) with every other key, its value and its
    place unchanged. Raises ManifestError (one line) or OSError; on any error the file is as it was.
    """
    mpath = load_manifest(engine).path
    check_sampler_defaults(record, f"sampler defaults for {mpath}")
    try:
        d = json.loads(mpath.read_text(encoding="utf-8"))
        d["sampler_defaults"] = record
        text = json.dumps(d, indent=2, allow_nan=False) + "\n"
    except (TypeError, ValueError) as exc:
        raise ManifestError(f"sampler defaults for {mpath} are not strict JSON: {exc}") from None
    write_text(mpath, text)
    return mpath


def _features(d, mpath: Path):
    """The FeatureSpec of the manifest's "features" (None: an artifact from before it existed)."""
    from dil.runtime.inputs.features import TIME_FEATURES, FeatureSpec

    if d is None:
        return FeatureSpec()
    if not isinstance(d, dict):
        raise ManifestError(f"manifest {mpath}: field 'features' is a {type(d).__name__}, expected a dict")
    try:
        spec = FeatureSpec.from_dict(d)
    except (KeyError, TypeError, ValueError) as exc:
        raise ManifestError(f"manifest {mpath}: field 'features' is invalid ({str(exc).splitlines()[0]})") from None
    unknown = [n for n in spec.time_features if n not in TIME_FEATURES]
    if unknown:
        raise ManifestError(f"manifest {mpath}: unknown time feature {unknown[0]!r} in 'features'")
    for cov in spec.covariates:
        if cov.kind not in ("numeric", "categorical"):
            raise ManifestError(f"manifest {mpath}: covariate {cov.name!r} has kind {cov.kind!r}, expected "
                                "'numeric' or 'categorical'")
    return spec


def _check_widths(m: Manifest) -> None:
    """The model's per-step input widths are what its features make (docs/model.md section 1.4)."""
    f, model = m.features, m.model
    for key, want in (("context_features", f.context_width), ("horizon_features", f.horizon_width)):
        if getattr(model, key) != want:
            raise ManifestError(f"manifest {m.path}: model.{key} is {getattr(model, key)} but its 'features' make "
                                f"{want} per step: re-export with dil-export")


def checkpoint_run(manifest: Manifest, checkpoint=None) -> Path:
    """The dil-train run folder an artifact was exported from (for the PyTorch checks and baselines).

    `checkpoint` when given; else runs/RUN for the run the manifest records (`checkpoint.run`),
    looked up in the working folder, then beside the artifact's folder. Raises ManifestError (one
    line, saying to pass --checkpoint) when there is none.
    """
    if checkpoint is not None:
        run = Path(checkpoint)
        if not (run / "config.json").is_file():
            raise ManifestError(f"--checkpoint {run} is not a training run folder (no config.json)")
        return run
    name = (manifest.extra.get("checkpoint") or {}).get("run")
    if not isinstance(name, str) or not name:
        raise ManifestError(f"manifest {manifest.path} names no training run: pass --checkpoint runs/NAME")
    candidates = list(dict.fromkeys([Path("runs") / name, Path(manifest.path).resolve().parent.parent / "runs" / name]))
    for run in candidates:
        if (run / "config.json").is_file():
            return run
    raise ManifestError(
        f"checkpoint run {name!r} of {Path(manifest.path).name} not found (looked in "
        f"{', '.join(str(c) for c in candidates)}): pass --checkpoint runs/NAME"
    )
