"""What to export: a small typed config, read from the command line and recorded in the artifact."""

from __future__ import annotations

from dataclasses import dataclass

import torch

# The names of facecomp.export.formats.FORMATS (that registry checks it holds these), for ExportConfig's check
FORMAT_NAMES = ("aoti", "onnx", "tensorrt")
PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class BatchRange:
    """Dynamic batch dimension of the artifact: the engine accepts any batch in [min, max]; ``opt`` is
    the size TensorRT tunes its kernels for (the other formats record it for Triton's preferred batch)."""

    min: int = 1
    opt: int = 1
    max: int = 32

    @classmethod
    def from_text(cls, text: str) -> BatchRange:
        """'MIN:OPT:MAX' or a single 'N' (a fixed batch)."""
        parts = text.split(":")
        try:
            values = [int(p) for p in parts]
        except ValueError:
            raise ValueError(f"--batch must be MIN:OPT:MAX or N, got '{text}'") from None
        if len(values) == 1:
            values = values * 3
        if len(values) != 3:
            raise ValueError(f"--batch must be MIN:OPT:MAX or N, got '{text}'")
        rng = cls(*values)
        if not 1 <= rng.min <= rng.opt <= rng.max:
            raise ValueError(f"--batch needs 1 <= MIN <= OPT <= MAX, got '{text}'")
        return rng

    def __str__(self) -> str:
        return f"{self.min}:{self.opt}:{self.max}"


def default_device(fmt: str) -> str:
    """Where an artifact of format ``fmt`` runs unless told: TensorRT engines on CUDA only, the others on the CPU."""
    return "cuda" if fmt == "tensorrt" else "cpu"


@dataclass(frozen=True)
class ExportConfig:
    format: str = "aoti"
    precision: str = "fp32"  # the generator's compute precision; inputs and outputs stay float32
    batch: BatchRange = BatchRange()
    device: str = "cpu"  # where the artifact runs: cpu | cuda (TensorRT: cuda only)
    channels_last: bool = True  # NHWC activations inside the graph (measured faster on CPU, see bench/)

    def __post_init__(self):
        if self.format not in FORMAT_NAMES:
            raise ValueError(f"unknown export format '{self.format}' (valid: {', '.join(FORMAT_NAMES)})")
        if self.precision not in PRECISIONS:
            raise ValueError(f"unknown precision '{self.precision}' (valid: {', '.join(PRECISIONS)})")
        if self.device not in ("cpu", "cuda"):
            raise ValueError(f"export device must be cpu or cuda, got '{self.device}'")

    @property
    def dtype(self) -> torch.dtype:
        return PRECISIONS[self.precision]
