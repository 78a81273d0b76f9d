"""An exponential moving average of the generator's weights (Karras et al.; Yazici et al. 2019).

GAN generators oscillate around a good solution; the average of their recent weights is usually
smoother and scores better than any single step. The average is kept in float32 beside the trained
module, saved with every checkpoint as ``generator_ema.safetensors``, and scored by validation
against the raw weights, so whether it wins is measured, not assumed.

BatchNorm's running statistics are not averaged: they describe the activations of one set of weights,
and the averaged weights produce other activations. Copying the raw module's statistics into the
average (what this module did first) cost the average ~1 dB of hole PSNR at stage-1 step 2,750 of the
28,560-face run (16.42 dB against 17.42 dB raw); re-estimating them on 512 training faces gave the
average 17.86 dB, ahead of raw. So the average's statistics are re-estimated (:meth:`EMA.recalibrate`)
on a fixed set of training inputs before it is scored or saved (Izmailov et al. 2018 do the same for
SWA's averaged weights).
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from facecomp.config import Config
from facecomp.train.step import generator_input

BN_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


def batchnorm_buffer_names(module: nn.Module) -> set[str]:
    """Qualified names of the running statistics of every BatchNorm layer in ``module``."""
    return {f"{prefix}.{b}" if prefix else b for prefix, mod in module.named_modules()
            if isinstance(mod, _BatchNorm) for b in BN_BUFFERS}


@torch.no_grad()
def recalibrate_batchnorm(module: nn.Module, inputs: Iterable[torch.Tensor]) -> int:
    """Re-estimate every BatchNorm's running mean and variance as the plain average over ``inputs``.

    The module runs in training mode with momentum None (a cumulative average), so the result does not
    depend on the statistics it had; momentum and mode are put back. Returns the number of batches seen
    (0: nothing was changed).
    """
    norms = [m for m in module.modules() if isinstance(m, _BatchNorm)]
    batches = list(inputs)
    if not norms or not batches:
        return 0
    was_training, momenta = module.training, [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    module.train()
    try:
        for x in batches:
            module(x)
    finally:
        for m, momentum in zip(norms, momenta, strict=True):
            m.momentum = momentum
        module.train(was_training)
    return len(batches)


class EMA:
    """``average = decay * average + (1 - decay) * weights`` after each G step.

    Buffers other than BatchNorm's running statistics are copied. Those are re-estimated on the fixed
    ``calibration`` inputs whenever :attr:`module` is read after an update, so whoever scores, saves or
    exports the average gets statistics that belong to its weights (see the module docstring); with no
    calibration inputs they are copied from the raw module, as before. The decay ramps up as
    (1 + step) / (10 + step) early on, so the average does not drag the random initial weights through
    the first thousand steps.
    """

    def __init__(self, module: nn.Module, decay: float, calibration: Sequence[torch.Tensor] = ()):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.calibration = list(calibration)
        self._average = copy.deepcopy(module).float().eval().requires_grad_(False)
        # parameters a stage leaves as they start (train.frozen) are not averaged: they keep their bits
        # (a lerp towards an equal value keeps the value but turns -0.0 into +0.0)
        self._averaged = [i for i, p in enumerate(module.parameters()) if p.requires_grad]
        # buffers taken from the raw module at each update: all of them without calibration inputs
        bn = batchnorm_buffer_names(self._average) if self.calibration else set()
        self._copied = [name for name, _ in self._average.named_buffers() if name not in bn]
        self._stale = False  # the copy's statistics are those of its (equal) weights

    @property
    def module(self) -> nn.Module:
        """The averaged generator, its BatchNorm statistics re-estimated if it changed since last read."""
        if self._stale:
            self.recalibrate(self.calibration)
            self._stale = False
        return self._average

    def decay_at(self, step: int) -> float:
        return min(self.decay, (1 + step) / (10 + step))

    @torch.no_grad()
    def update(self, module: nn.Module, step: int) -> None:
        avg, cur = list(self._average.parameters()), list(module.parameters())
        torch._foreach_lerp_([avg[i] for i in self._averaged], [cur[i].detach().float() for i in self._averaged],
                             1.0 - self.decay_at(step))
        if self._copied:
            current, average = dict(module.named_buffers()), dict(self._average.named_buffers())
            for name in self._copied:
                average[name].copy_(current[name])
        self._stale = bool(self.calibration)

    def recalibrate(self, inputs: Iterable[torch.Tensor]) -> int:
        """BatchNorm statistics of the average, from ``inputs`` (generator inputs); returns batches seen."""
        return recalibrate_batchnorm(self._average, inputs)


def calibration_inputs(cfg: Config, files: list[Path], device: torch.device) -> list[torch.Tensor]:
    """Generator inputs of ``train.ema_bn_images`` training faces, the same at every call and on resume.

    The first batches of the stage's sample order, read by the reference pipeline in this process and
    filled with noise keyed by the train seed: a fixed set, so the average's statistics are a function
    of its weights alone and a resumed run re-estimates them exactly as an uninterrupted one.
    """
    n = cfg.train.ema_bn_images
    if n <= 0:
        return []
    from facecomp.data.pipeline import build_loader

    data = dataclasses.replace(cfg.data, workers=0)  # a few hundred faces, once: no worker processes
    loader = build_loader(files, cfg.generator.image_size, data, cfg.mask, cfg.train.batch_size, cfg.train.seed)
    inputs, seen = [], 0
    for i, batch in enumerate(loader):
        if seen >= n:
            break
        if batch["image"] is None:  # every file of the batch unreadable
            continue
        x, m = batch["image"][: n - seen].to(device), batch["mask"][: n - seen].to(device)
        inputs.append(generator_input(cfg, x, m, seed=cfg.train.seed, offset=i))
        seen += len(x)
    return inputs
