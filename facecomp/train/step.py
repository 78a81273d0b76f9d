"""One training step: batch in, losses and metrics out. The cluster launcher wraps this, not a copy.

The step knows models and ``Updater``s, nothing about where they run: a plain module with a torch
optimizer (``OptimizerUpdater``) and a DeepSpeed engine both offer ``backward(loss)`` and ``step()``.
Every loss term is gated on its stage weight, so stages are data, not branches.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn

from facecomp import kernels, losses
from facecomp.config import Config
from facecomp.models import crop_holes
from facecomp.train.stages import loss_weights


class Updater(Protocol):
    """What steps one module: ``updaters`` of :func:`train_step` are keyed by the module's name
    (generator, d_local, d_global). ``optimizer`` is where the loop sets the learning rate."""

    optimizer: torch.optim.Optimizer

    def backward(self, loss: torch.Tensor) -> None: ...
    def step(self) -> None: ...


class OptimizerUpdater:
    """A module's parameters under a torch optimizer, with optional gradient clipping."""

    def __init__(self, module: nn.Module, optimizer: torch.optim.Optimizer, clip: float = 0.0):
        self.module, self.optimizer, self.clip = module, optimizer, clip

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def step(self) -> None:
        if self.clip > 0:
            nn.utils.clip_grad_norm_(self.module.parameters(), self.clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


@dataclass
class Models:
    generator: nn.Module
    d_local: nn.Module | None = None
    d_global: nn.Module | None = None
    parsing: nn.Module | None = None  # frozen


@dataclass
class StepResult:
    metrics: dict[str, float]
    completed: torch.Tensor  # [N, 3, S, S], detached, for image logs


def autocast(cfg: Config, device: torch.device):
    if cfg.runtime.amp == "none":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if cfg.runtime.amp == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


@contextlib.contextmanager
def frozen(*modules: nn.Module | None):
    """No gradients into these modules' parameters while G's loss flows through them."""
    params = [p for mod in modules if mod is not None for p in mod.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def generator_input(cfg: Config, x: torch.Tensor, m: torch.Tensor, seed: int, offset: int) -> torch.Tensor:
    """G's input: faces ``x`` with the holes ``m`` filled with noise keyed by (seed, offset), the mask as
    the extra channel, in the memory format the run uses (training, validation and the EMA's statistics)."""
    x_in = kernels.fill(x, m, seed=seed, offset=offset, mask_channel=cfg.generator.mask_channel,
                        impl=cfg.runtime.kernels)
    return x_in.contiguous(memory_format=torch.channels_last if cfg.runtime.channels_last else torch.contiguous_format)


def adversarial_ramp(cfg: Config, step: int) -> float:
    """0 -> 1 over the warm-up, so a fresh D cannot swamp G's gradients at the start of a stage."""
    warm = cfg.adversarial.warmup_steps
    return 1.0 if warm <= 0 else min(1.0, (step + 1) / warm)


def train_step(models: Models, updaters: dict[str, Updater], batch: dict, cfg: Config, stage: int,
               step: int, agree: Callable[[torch.Tensor], torch.Tensor] | None = None) -> StepResult:
    """One D update (if a D is on) then one G update. ``step`` counts from 0 within the stage.

    ``agree`` averages a scalar over data-parallel ranks (facecomp.cluster): every rank must take the
    same D-skip decision, or one rank's engine waits in a gradient all-reduce the others never join.
    """
    x, m = batch["image"], batch["mask"]  # [N,3,S,S] in [-1,1], [N,1,S,S]
    device = x.device
    w = loss_weights(cfg.loss, stage)
    ramp = adversarial_ramp(cfg, step)
    metrics: dict[str, float] = {}

    # The noise of step s is keyed by (seed, s): a resumed run fills the same holes with the same noise.
    impl = cfg.runtime.kernels
    x_in = generator_input(cfg, x, m, seed=cfg.train.seed, offset=step)
    with autocast(cfg, device):
        out = models.generator(x_in)  # [N,3,S,S]
    y = kernels.composite(x, out.to(x.dtype), m, impl=impl)
    size = cfg.discriminator.local_size

    # --- discriminators -------------------------------------------------------------------
    d_terms = [("adv_local", models.d_local, lambda t: crop_holes(t, m, size)),
               ("adv_global", models.d_global, lambda t: t)]
    for term, disc, view in d_terms:
        if w[term] <= 0:
            continue
        r1 = cfg.adversarial.r1
        real_in = view(x).detach().requires_grad_(r1 > 0)
        with autocast(cfg, device):
            real = disc(real_in)
            fake = disc(view(y.detach()))
        loss_d = losses.adversarial_d(real, fake, cfg.adversarial.real_label)
        # one host sync per D: needed to decide the skip below
        value = (loss_d.detach() if agree is None else agree(loss_d.detach())).item()
        metrics[f"d_{term}"] = value
        # A D that already separates real from fake this well only starves G of gradient
        # (the paper, after [19]): let G catch up first.
        if value >= cfg.adversarial.d_skip_below:
            if r1 > 0:  # R1 keeps D flat around the real faces, so its gradient to G stays informative
                penalty = losses.r1_penalty(real, real_in)
                loss_d = loss_d + 0.5 * r1 * penalty
                metrics[f"r1_{term}"] = penalty.item()
            updater = updaters[term.replace("adv", "d")]  # d_local / d_global
            updater.backward(loss_d)
            updater.step()
        metrics[f"d_{term}_skipped"] = float(value < cfg.adversarial.d_skip_below)

    # --- generator ------------------------------------------------------------------------
    total = w["recon"] * losses.reconstruction(out, x, m, cfg.loss.recon_known)
    metrics["recon"] = total.item() / max(w["recon"], 1e-12)
    with autocast(cfg, device), frozen(models.d_local, models.d_global):
        match = w["feature_match"] > 0
        fm = torch.zeros((), device=device)
        for term, disc, view in d_terms:
            if w[term] <= 0:
                continue
            if match:  # the D's features of the real face are the target (no gradient)
                logits, fake_feats = disc.judge(view(y))
                with torch.no_grad():
                    _, real_feats = disc.judge(view(x))
                fm = fm + losses.feature_l1(fake_feats, real_feats)
            else:
                logits = disc(view(y))
            la = losses.adversarial_g(logits)
            total = total + ramp * w[term] * la
            metrics[term] = la.item()
        if match:
            total = total + ramp * w["feature_match"] * fm
            metrics["feature_match"] = fm.item()
        if w["parsing"] > 0 or w["perceptual"] > 0:
            with torch.no_grad():
                target_logits, target_feats = models.parsing.parse(x)
            logits, feats = models.parsing.parse(y)
            if w["parsing"] > 0:
                lp = losses.parsing(logits, target_logits.argmax(1))  # against the original face's labels
                total = total + w["parsing"] * lp
                metrics["parsing"] = lp.item()
            if w["perceptual"] > 0:
                lf = losses.feature_l1(feats, target_feats)
                total = total + w["perceptual"] * lf
                metrics["perceptual"] = lf.item()
    updaters["generator"].backward(total)
    updaters["generator"].step()
    metrics["total"] = total.item()
    metrics["adv_ramp"] = ramp
    return StepResult(metrics=metrics, completed=y.detach())
