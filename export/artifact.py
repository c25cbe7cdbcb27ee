"""Export a checkpoint to a complete artifact: ONNX graphs + manifest (DESIGN section 10).

Minimal first version by the lead: the EXPORT helper extends it with validation, error handling
and the CLI. The manifest is written last, so its presence means the artifact is complete.
"""

from __future__ import annotations

from pathlib import Path

from dil._atomic import write_text
from dil.export.onnx_export import OPSET, export_onnx
from dil.runtime.manifest import Manifest, sha256_file
from dil.train.checkpoint import load_checkpoint


def export_artifact(run_dir, out_dir, name: str | None = None) -> Manifest:
    """Export run_dir's EMA model to out_dir/NAME.{encode,denoise}.onnx and NAME.json."""
    import onnx
    import onnxruntime
    import torch

    ckpt = load_checkpoint(run_dir)
    out_dir = Path(out_dir)
    name = name or Path(run_dir).name
    paths = export_onnx(ckpt.model, out_dir, name)
    graphs = {g: {"file": p.name, "sha256": sha256_file(p)} for g, p in paths.items()}
    manifest = Manifest(
        name=name,
        model=ckpt.config,
        schedule=ckpt.schedule,
        data=ckpt.data,
        graphs=graphs,
        versions={
            "torch": torch.__version__,
            "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__,
            "opset": OPSET,
        },
        path=out_dir / f"{name}.json",
    )
    write_text(manifest.path, manifest.to_json())
    return manifest
