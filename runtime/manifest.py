"""The artifact manifest: what `dil-export` writes and `dil-run` reads (DESIGN section 10).

An exported model NAME is a folder entry of sibling files:
    NAME.json           this manifest (written last: its presence means the artifact is complete)
    NAME.encode.onnx    the encode graph
    NAME.denoise.onnx   the denoise graph
    NAME.*.plan         TensorRT engines, where built (graphs[g]["plan_file"], the "tensorrt" record)
`--engine` may name any of NAME.onnx, NAME.plan, NAME.json, NAME.encode.onnx, ... : they all resolve
to NAME.json, and the graph files come from it. The FP16 variant is the artifact NAME.fp16
(NAME.fp16.json, NAME.fp16.encode.onnx, ...; `--engine engines/NAME.fp16.onnx`), precision "fp16".
Sections of the JSON not named below (e.g. "tensorrt", "fp16", "dynamic_axes") are kept in
`Manifest.extra` and written back unchanged.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from dil.runtime.files import sha256_file
from dil.runtime.model_config import ModelConfig
from dil.runtime.sampling.schedule import NoiseSchedule

FORMAT_VERSION = 1
GRAPHS = ("encode", "denoise")
# Suffixes a user may point --engine at; stripping one gives NAME.
_SUFFIXES = (".encode.onnx", ".denoise.onnx", ".encode.plan", ".denoise.plan", ".cache_update.plan", ".onnx", ".plan",
             ".json")
# Keys of the manifest JSON that Manifest holds as fields; everything else goes to Manifest.extra.
_FIELDS = ("format_version", "name", "precision", "model", "schedule", "data", "graphs", "io", "validation", "versions")

ENCODE_INPUTS = ("ctx",)
ENCODE_OUTPUTS = ("k_ctx", "v_ctx")
DENOISE_INPUTS = ("x_sub", "pos_sub", "t_feat", "k_ctx", "v_ctx", "k_hor", "v_hor", "hor_valid")
DENOISE_OUTPUTS = ("eps_sub", "k_sub", "v_sub")


class ManifestError(ValueError):
    """The artifact is missing, incomplete or inconsistent."""


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
    """Parsed manifest. `graphs[name]` = {"file": relative file name, "sha256": ...}."""

    name: str
    model: ModelConfig
    schedule: NoiseSchedule
    data: dict
    graphs: dict
    precision: str = "fp32"
    validation: dict = field(default_factory=dict)
    versions: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)
    path: Path | None = None  # where it was read from
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
            "io": {
                "encode": {"inputs": list(ENCODE_INPUTS), "outputs": list(ENCODE_OUTPUTS)},
                "denoise": {"inputs": list(DENOISE_INPUTS), "outputs": list(DENOISE_OUTPUTS)},
            },
            "validation": self.validation,
            "versions": self.versions,
        }
        d.update(self.extra)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n"

    def graph_path(self, graph: str, kind: str = "onnx") -> Path:
        """Absolute path of a graph file ('encode'/'denoise'), next to the manifest."""
        key = "file" if kind == "onnx" else f"{kind}_file"
        entry = self.graphs.get(graph, {})
        if key not in entry:
            raise ManifestError(f"manifest {self.path} has no {kind} file for graph {graph!r}")
        return (self.path.parent if self.path else Path(".")) / entry[key]


def load_manifest(engine, verify_hashes: bool = True) -> Manifest:
    """Read and check the manifest for an artifact path. Raises ManifestError with one line."""
    mpath = manifest_path(engine)
    if not mpath.is_file():
        raise ManifestError(f"no manifest {mpath} for engine {engine} (export with dil-export)")
    try:
        d = json.loads(mpath.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestError(f"manifest {mpath} is not valid JSON: {exc}") from None
    if not isinstance(d, dict) or d.get("format_version") != FORMAT_VERSION:
        raise ManifestError(f"manifest {mpath} has format_version {d.get('format_version')!r}, expected {FORMAT_VERSION}")
    try:
        m = Manifest(
            name=d["name"],
            model=ModelConfig.from_dict(d["model"]),
            schedule=NoiseSchedule.from_dict(d["schedule"]),
            data=d["data"],
            graphs=d["graphs"],
            precision=d.get("precision", "fp32"),
            validation=d.get("validation", {}),
            versions=d.get("versions", {}),
            extra={k: v for k, v in d.items() if k not in _FIELDS},
            path=mpath,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ManifestError(f"manifest {mpath} is incomplete or invalid: {exc}") from None
    for g in GRAPHS:
        p = m.graph_path(g)
        if not p.is_file():
            raise ManifestError(f"graph file {p} named by {mpath} is missing")
        want = m.graphs[g].get("sha256")
        if verify_hashes and want and sha256_file(p) != want:
            raise ManifestError(f"graph file {p} does not match its manifest {mpath} (sha256 differs): re-export")
    return m


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
