"""Compiled inference (importable as ``facecomp.export``): the generator exported once with
``torch.export`` and compiled to an AOTInductor package, ONNX, or a Torch-TensorRT program and plan.

    facecomp export --format aoti|onnx|tensorrt [--precision fp32|fp16|bf16] [--batch 1:8:32] -o OUT
    facecomp complete ... --engine OUT
"""

from facecomp.export.build import export_artifact, parity
from facecomp.export.engine import Engine, load_engine, open_generator
from facecomp.export.formats import FORMATS, ExportUnavailable
from facecomp.export.metadata import ArtifactMeta, ArtifactMismatch
from facecomp.export.spec import BatchRange, ExportConfig

__all__ = ["ArtifactMeta", "ArtifactMismatch", "BatchRange", "Engine", "ExportConfig", "ExportUnavailable", "FORMATS",
           "export_artifact", "load_engine", "open_generator", "parity"]
