"""An exponential moving average of the generator's weights (Karras et al.; Yazici et al. 2019).

GAN generators oscillate around a good solution; the average of their recent weights is usually
smoother and scores better than any single step. The average is kept in float32 beside the trained
module, saved with every checkpoint as ``generator_ema.safetensors``, and scored by validation
against the raw weights, so whether it wins is measured, not assumed.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    """``average = decay * average + (1 - decay) * weights`` after each G step; buffers copied.

    BatchNorm's running statistics are copied, not averaged: they describe the activations of the
    current weights and the average's are close enough that re-estimating them is not worth a pass.
    The decay ramps up as (1 + step) / (10 + step) early on, so the average does not drag the random
    initial weights through the first thousand steps.
    """

    def __init__(self, module: nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.module = copy.deepcopy(module).float().eval().requires_grad_(False)

    def decay_at(self, step: int) -> float:
        return min(self.decay, (1 + step) / (10 + step))

    @torch.no_grad()
    def update(self, module: nn.Module, step: int) -> None:
        avg = [p for p in self.module.parameters()]
        cur = [p.detach().float() for p in module.parameters()]
        torch._foreach_lerp_(avg, cur, 1.0 - self.decay_at(step))
        for b_avg, b in zip(self.module.buffers(), module.buffers(), strict=True):
            b_avg.copy_(b)
