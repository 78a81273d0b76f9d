"""One training step: batch in, losses and metrics out. The cluster launcher wraps this, not a copy.

The step knows models and ``Updater``s, nothing about where they run: a plain module with a torch
optimizer (``OptimizerUpdater``) and a DeepSpeed engine both offer ``backward(loss)``, ``step()`` and
``step_if(loss, gate)``. Every loss term is gated on its stage weight, so stages are data, not branches.

The step never waits for the device. Its metrics stay 0-dim device tensors (``read_metrics`` turns them
into floats once per log line); the D-skip decision is a device boolean that gates the D update
(``step_if``); the hole noise is keyed by the step number as a device tensor. So the step's three
pieces (``complete``, ``d_loss``, ``g_loss``) trace whole under ``torch.compile(fullgraph=True)``
(``StepFunctions``, ``runtime.compile``), and under CUDA graphs with mode ``reduce-overhead``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn

from facecomp import kernels, losses
from facecomp.config import Config, DiscriminatorConfig
from facecomp.models import crop_holes
from facecomp.models.identity import identity_distance
from facecomp.train.stages import loss_weights

Metrics = dict[str, torch.Tensor]  # 0-dim tensors on the step's device


class Updater(Protocol):
    """What steps one module: ``updaters`` of :func:`train_step` are keyed by the module's name
    (generator, d_local, d_global). ``optimizer`` is where the loop sets the learning rate."""

    optimizer: torch.optim.Optimizer

    def backward(self, loss: torch.Tensor) -> None: ...
    def step(self) -> None: ...

    def step_if(self, loss: torch.Tensor, gate: torch.Tensor) -> None:
        """backward + step where the 0-dim bool ``gate`` is true; where it is false the module and its
        optimizer state stay exactly as they were."""


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

    def step_if(self, loss: torch.Tensor, gate: torch.Tensor) -> None:
        """The gated update on the device: step, then put back what was there where the gate is off.

        Adam moves the weights even on a zero gradient (its momentum), so a skipped update must be
        undone, not merely fed zeros. State the optimizer creates in this step (its first) is zeroed
        instead: a zero gradient left its moments at zero, and its step count goes back to 0.
        """
        self.backward(loss * gate)
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        had_state = {id(p) for p in params if self.optimizer.state.get(p)}
        tracked = params + [t for p in params if id(p) in had_state
                            for t in self.optimizer.state[p].values() if torch.is_tensor(t)]
        before = [t.detach().clone() for t in tracked]
        self.step()
        with torch.no_grad():
            for t, old in zip(tracked, before, strict=True):
                t.copy_(torch.where(gate.to(t.device), t, old))
            for p in params:
                if id(p) not in had_state:
                    for t in self.optimizer.state[p].values():
                        if torch.is_tensor(t):
                            t.mul_(gate.to(t.device))


@dataclass
class Models:
    generator: nn.Module
    d_local: nn.Module | None = None
    d_global: nn.Module | None = None
    parsing: nn.Module | None = None  # frozen
    identity: nn.Module | None = None  # frozen (loss.identity)


@dataclass
class StepResult:
    metrics: Metrics  # read on the host with read_metrics, once per log line
    completed: torch.Tensor  # [N, 3, S, S], detached, for image logs


def read_metrics(metrics: Metrics) -> dict[str, float]:
    """A step's metrics as floats: one device-to-host copy for all of them (the loop's only sync)."""
    if not metrics:
        return {}
    names = list(metrics)
    values = torch.stack([metrics[k].detach().float().reshape(()) for k in names]).tolist()
    return dict(zip(names, values, strict=True))


AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}  # runtime.amp -> the autocast dtype


def autocast(cfg: Config, device: torch.device):
    if cfg.runtime.amp == "none":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=AMP_DTYPES[cfg.runtime.amp])


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


def generator_input(cfg: Config, x: torch.Tensor, m: torch.Tensor, seed: int,
                    offset: int | torch.Tensor) -> torch.Tensor:
    """G's input: faces ``x`` with the holes ``m`` filled with noise keyed by (seed, offset), the mask as
    the extra channel, in the memory format the run uses (training, validation and the EMA's statistics)."""
    x_in = kernels.fill(x, m, seed=seed, offset=offset, mask_channel=cfg.generator.mask_channel,
                        impl=cfg.runtime.kernels)
    return x_in.contiguous(memory_format=torch.channels_last if cfg.runtime.channels_last else torch.contiguous_format)


def adversarial_ramp(cfg: Config, step: int) -> float:
    """0 -> 1 over the warm-up, so a fresh D cannot swamp G's gradients at the start of a stage."""
    warm = cfg.adversarial.warmup_steps
    return 1.0 if warm <= 0 else min(1.0, (step + 1) / warm)


# --- the step's three pieces: pure functions of tensors, so each traces whole ------------------------

def _d_views(m: torch.Tensor, cfg: DiscriminatorConfig) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    return {"adv_local": lambda t: crop_holes(t, m, cfg.local_size, cfg.local_view), "adv_global": lambda t: t}


def _discriminator(models: Models, term: str) -> nn.Module:
    return models.d_local if term == "adv_local" else models.d_global


def complete(models: Models, cfg: Config, x: torch.Tensor, m: torch.Tensor,
             offset: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """G's raw output and the completed faces (known pixels put back). The noise of step s is keyed by
    (train.seed, s): a resumed run fills the same holes with the same noise."""
    x_in = generator_input(cfg, x, m, seed=cfg.train.seed, offset=offset)
    with autocast(cfg, x.device):
        out = models.generator(x_in)  # [N,3,S,S]
    return out, kernels.composite(x, out.to(x.dtype), m, impl=cfg.runtime.kernels)


def d_loss(models: Models, cfg: Config, term: str, real_in: torch.Tensor, fake_in: torch.Tensor
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """One D's loss on real and completed (detached) views, and its logits of the real ones (for R1)."""
    disc = _discriminator(models, term)
    with autocast(cfg, real_in.device):
        real = disc(real_in)
        fake = disc(fake_in)
    return losses.adversarial_d(real, fake, cfg.adversarial.real_label), real


def g_loss(models: Models, cfg: Config, w: dict[str, float], x: torch.Tensor, m: torch.Tensor, out: torch.Tensor,
           y: torch.Tensor, ramp: torch.Tensor) -> tuple[torch.Tensor, Metrics]:
    """G's total loss (the discriminators frozen by the caller) and its terms."""
    views = _d_views(m, cfg.discriminator)
    metrics: Metrics = {}
    recon = losses.reconstruction(out, x, m, cfg.loss.recon_known)
    total = w["recon"] * recon
    metrics["recon"] = recon.detach()
    with autocast(cfg, x.device):
        match = w["feature_match"] > 0
        fm = torch.zeros((), device=x.device)
        for term, view in views.items():
            if w[term] <= 0:
                continue
            disc = _discriminator(models, term)
            if match:  # the D's features of the real face are the target (no gradient)
                logits, fake_feats = disc.judge(view(y))
                with torch.no_grad():
                    _, real_feats = disc.judge(view(x))
                fm = fm + losses.feature_l1(fake_feats, real_feats)
            else:
                logits = disc(view(y))
            la = losses.adversarial_g(logits)
            total = total + ramp * w[term] * la
            metrics[term] = la.detach()
        if match:
            total = total + ramp * w["feature_match"] * fm
            metrics["feature_match"] = fm.detach()
        if w["parsing"] > 0 or w["perceptual"] > 0:
            with torch.no_grad():
                target_logits, target_feats = models.parsing.parse(x)
            logits, feats = models.parsing.parse(y)
            if w["parsing"] > 0:
                lp = losses.parsing(logits, target_logits.argmax(1))  # against the original face's labels
                total = total + w["parsing"] * lp
                metrics["parsing"] = lp.detach()
            if w["perceptual"] > 0:
                lf = losses.feature_l1(feats, target_feats)
                total = total + w["perceptual"] * lf
                metrics["perceptual"] = lf.detach()
        if w["identity"] > 0:
            li = identity_distance(models.identity, y, x)
            total = total + w["identity"] * li
            metrics["identity"] = li.detach()
    metrics["total"] = total.detach()
    return total, metrics


class StepFunctions:
    """The step's pieces, eager or each compiled once for the run (``runtime.compile``: "none",
    "default", or "reduce-overhead", which adds CUDA graphs). R1's double backward cannot run through a
    compiled graph, so with ``adversarial.r1`` > 0 the D loss stays eager."""

    def __init__(self, mode: str = "none", r1: bool = False):
        self.mode = mode
        wrap = (lambda f: f) if mode == "none" else (lambda f: torch.compile(f, fullgraph=True, mode=mode))
        self.complete, self.g_loss = wrap(complete), wrap(g_loss)
        self.d_loss = d_loss if r1 else wrap(d_loss)

    @classmethod
    def of(cls, cfg: Config) -> StepFunctions:
        return cls(cfg.runtime.compile, cfg.adversarial.r1 > 0)


EAGER = StepFunctions()


def train_step(models: Models, updaters: dict[str, Updater], batch: dict, cfg: Config, stage: int,
               step: int, agree: Callable[[torch.Tensor], torch.Tensor] | None = None,
               fns: StepFunctions = EAGER) -> StepResult:
    """One D update (if a D is on) then one G update. ``step`` counts from 0 within the stage.

    ``agree`` averages a scalar over data-parallel ranks (facecomp.cluster): every rank must take the
    same D-skip decision, or one rank's engine waits in a gradient all-reduce the others never join.
    Nothing here reads a device value on the host.
    """
    x, m = batch["image"], batch["mask"]  # [N,3,S,S] in [-1,1], [N,1,S,S]
    device = x.device
    w = loss_weights(cfg.loss, stage)
    # host scalars as 0-dim device tensors: a compiled piece (or a CUDA graph) takes a new value without a
    # new graph; a tiny host-to-device copy queues behind the work already launched, it waits for nothing
    ramp = torch.tensor(adversarial_ramp(cfg, step)).to(device, non_blocking=True)
    offset = torch.tensor(step, dtype=torch.int64).to(device, non_blocking=True)
    metrics: Metrics = {}

    out, y = fns.complete(models, cfg, x, m, offset)

    # --- discriminators -------------------------------------------------------------------
    r1 = cfg.adversarial.r1
    for term, view in _d_views(m, cfg.discriminator).items():
        if w[term] <= 0:
            continue
        real_in = view(x).detach().requires_grad_(r1 > 0)
        loss_d, real = fns.d_loss(models, cfg, term, real_in, view(y.detach()))
        value = loss_d.detach() if agree is None else agree(loss_d.detach())
        metrics[f"d_{term}"] = value
        # A D that already separates real from fake this well only starves G of gradient
        # (the paper, after [19]): let G catch up first. Decided on the device.
        gate = value >= cfg.adversarial.d_skip_below
        if r1 > 0:  # R1 keeps D flat around the real faces, so its gradient to G stays informative
            penalty = losses.r1_penalty(real, real_in)
            loss_d = loss_d + 0.5 * r1 * penalty
            metrics[f"r1_{term}"] = penalty.detach()
        updater = updaters[term.replace("adv", "d")]  # d_local / d_global
        if cfg.adversarial.d_skip_below > 0:
            updater.step_if(loss_d, gate)
        else:  # a loss >= 0 is never below: no gate to apply
            updater.backward(loss_d)
            updater.step()
        metrics[f"d_{term}_skipped"] = (~gate).float()

    # --- generator ------------------------------------------------------------------------
    with frozen(models.d_local, models.d_global):
        total, g_metrics = fns.g_loss(models, cfg, w, x, m, out, y, ramp)
    updaters["generator"].backward(total)
    updaters["generator"].step()
    metrics.update(g_metrics)
    return StepResult(metrics=metrics, completed=y.detach())
