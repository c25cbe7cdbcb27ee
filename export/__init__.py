"""Export stage (torch + onnx): ONNX graphs, validation against PyTorch, the artifact manifest.

    from dil.export.artifact import export_artifact, ExportError
    manifest = export_artifact("runs/metro-traffic", "engines")   # or the CLI: dil-export

Submodules import torch; this package itself does not, so `dil-export` can report a missing extra.
"""
