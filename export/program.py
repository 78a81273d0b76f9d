"""The generator as one ``torch.export`` program with a dynamic batch: what every format compiles.

The exported graph takes the noise-filled face (float32 [N, C, S, S], C = 3 or 4 with the mask
channel) and returns the generated face (float32 [N, 3, S, S] in [-1, 1]). Casting to the compute
precision happens inside the graph, so every artifact has the same float32 signature whatever its
precision: callers, the Triton config and the parity tests never change with ``--precision``.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from facecomp.export.spec import ExportConfig

INPUT_NAME = "filled"
OUTPUT_NAME = "generated"


class ExportableGenerator(nn.Module):
    """The generator in eval mode at a compute precision, with float32 input and output."""

    def __init__(self, generator: nn.Module, dtype: torch.dtype, channels_last: bool):
        super().__init__()
        self.generator = copy.deepcopy(generator).eval().to(dtype)
        drop_unused_buffers(self.generator)
        if channels_last:
            self.generator = self.generator.to(memory_format=torch.channels_last)
        self.dtype = dtype
        self.channels_last = channels_last

    def forward(self, filled: torch.Tensor) -> torch.Tensor:
        x = filled.to(self.dtype)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.generator(x).float().contiguous()


def drop_unused_buffers(module: nn.Module) -> None:
    """Remove BatchNorm's ``num_batches_tracked``: a 0-dim int64 counter that only training with
    ``momentum=None`` reads, so an eval-mode program has no use for it. Exported, each became a 0-dim
    constant of the compiled program; pytorch/pytorch#172739 reports AOTInductor crashing on such
    constants, and it was the first suspect of our CUDA load crash. Without them that crash still
    happened (bench/RESULTS.md, "Device check on a GPU"): they are dropped as dead weight, not as its fix."""
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.num_batches_tracked is not None:
            m.register_buffer("num_batches_tracked", None)


def input_shape(generator: nn.Module) -> tuple[int, int, int]:
    """[C, S, S] of one sample."""
    s = generator.cfg.image_size
    return (generator.in_channels, s, s)


def example_input(generator: nn.Module, batch: int, device: str | torch.device = "cpu") -> torch.Tensor:
    return torch.rand(batch, *input_shape(generator), device=device) * 2 - 1


def export_program(generator: nn.Module, cfg: ExportConfig) -> torch.export.ExportedProgram:
    """torch.export of the wrapped generator on ``cfg.device`` with batch in [cfg.batch.min, cfg.batch.max]."""
    module = ExportableGenerator(generator, cfg.dtype, cfg.channels_last).to(cfg.device)
    # The example batch must not be 1: torch.export specialises a size-1 dimension to a constant.
    example = example_input(generator, max(2, min(cfg.batch.opt, cfg.batch.max)), cfg.device)
    if cfg.batch.min == cfg.batch.max:
        example = example_input(generator, cfg.batch.min, cfg.device)
        dynamic = None
    else:
        batch = torch.export.Dim("batch", min=cfg.batch.min, max=cfg.batch.max)
        dynamic = {INPUT_NAME: {0: batch}}
    with torch.no_grad():
        return torch.export.export(module, (example,), dynamic_shapes=dynamic)
