"""Learning-rate schedules as pure functions of the step, so a resumed run needs no scheduler state."""

from __future__ import annotations

import math

import torch

from facecomp.config import OptimConfig


def lr_factor(cfg: OptimConfig, step: int, total: int) -> float:
    """Multiplier on the base learning rate at ``step`` (0-based) of a stage of ``total`` steps.

    1 until ``decay_start * total``, then down to ``lr_final`` at the last step, linearly or along a
    half cosine.
    """
    if cfg.lr_decay == "none" or total <= 1:
        return 1.0
    start = int(cfg.decay_start * total)
    if step < start:
        return 1.0
    t = min(1.0, (step - start) / max(1, total - 1 - start))
    shape = t if cfg.lr_decay == "linear" else 0.5 * (1.0 - math.cos(math.pi * t))
    return 1.0 - (1.0 - cfg.lr_final) * shape


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
