"""The divergence guard: a run that has gone non-finite stops before it writes a checkpoint.

A GAN run that diverges keeps stepping: its losses turn NaN, its weights follow, and checkpoints of
NaN weights would push the good ones out of keep-k. The guard watches every step's losses on the device
(no host read per step: :meth:`DivergenceGuard.observe` only records, on the device, the first step
whose losses were not finite and its metrics), and is asked on the host at each log line and before
each checkpoint (:meth:`DivergenceGuard.check`), where it also checks the weights. A non-finite loss or
weight raises :class:`Diverged`, which names the step and the loss; the run stops without saving, so
its newest checkpoint is still the last finite one and ``--resume`` continues from there.

Non-finite gradients need no check of their own: the update they make leaves non-finite weights, and
those give non-finite losses in the next step (and fail the weight check before any save).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from torch import nn

from facecomp.weights import RunFolder

EXIT_DIVERGED = 3  # `facecomp train` / `facecomp cluster train` exit status of a run the guard stopped


class Diverged(RuntimeError):
    """The run's losses or weights are no longer finite."""

    def __init__(self, stage: int, step: int, what: str):
        self.stage, self.step, self.what = stage, step, what
        super().__init__(f"stage {stage} diverged at step {step}: {what}; nothing was saved after it, "
                         "so --resume continues from the last finite checkpoint")


class DivergenceGuard:
    """First non-finite step and its metrics, kept on the device; one host read per :meth:`check`.

    ``agree`` (data-parallel runs) sums a flag over ranks, so every rank stops at the same check.
    """

    def __init__(self, stage: int, agree: Callable[[torch.Tensor], torch.Tensor] | None = None):
        self.stage, self.agree = stage, agree
        self.names: list[str] = []
        self.first_bad: torch.Tensor | None = None  # 0-dim int64: the step, or -1 while all is finite
        self.bad_values: torch.Tensor | None = None  # the metrics of that step

    def observe(self, step: int, metrics: dict[str, torch.Tensor]) -> None:
        """Record step ``step`` (1-based: the step count after it) on the device."""
        names = list(metrics)
        values = torch.stack([metrics[k].detach().float().reshape(()) for k in names])
        if self.first_bad is None or names != self.names:
            if self.first_bad is not None:  # the stage's terms changed: carry the verdict over
                values = torch.where(self.first_bad >= 0, torch.full_like(values, float("nan")), values)
            self.names = names
            self.first_bad = torch.full((), -1, dtype=torch.int64, device=values.device)
            self.bad_values = torch.zeros_like(values)
        newly = (self.first_bad < 0) & ~torch.isfinite(values).all()
        self.first_bad = torch.where(newly, torch.full_like(self.first_bad, step), self.first_bad)
        self.bad_values = torch.where(newly, values, self.bad_values)

    def check(self, step: int, modules: Iterable[nn.Module]) -> None:
        """Raise :class:`Diverged` if a recorded step had a non-finite loss or a weight is not finite now.
        The one host read of the guard; called at log lines and before every checkpoint."""
        params = [p for mod in modules if mod is not None for p in mod.parameters()]
        weights_ok = torch.stack([torch.isfinite(p.detach()).all() for p in params]).all()
        loss_bad = self.first_bad >= 0 if self.first_bad is not None else torch.zeros((), dtype=torch.bool)
        flags = torch.stack([loss_bad.to(weights_ok.device).float(), (~weights_ok).float()])
        if self.agree is not None:
            flags = self.agree(flags)
        loss_flag, weight_flag = flags.tolist()
        if loss_flag > 0 and self.first_bad is not None and int(self.first_bad) >= 0:
            values = dict(zip(self.names, self.bad_values.tolist(), strict=True))
            bad = [k for k, v in values.items() if not _finite(v)]
            shown = ", ".join(f"{k} {values[k]:.4g}" for k in bad + [k for k in values if k not in bad][:3])
            raise Diverged(self.stage, int(self.first_bad), f"non-finite loss ({shown})")
        if loss_flag > 0:
            raise Diverged(self.stage, step, "non-finite loss on another rank")
        if weight_flag > 0:
            raise Diverged(self.stage, step, "non-finite weights")


def _finite(v: float) -> bool:
    return v == v and abs(v) != float("inf")


def write_diverged(run_dir: str | Path, error: Diverged) -> None:
    """The marker a cluster run's rank 0 leaves for the driver (workers cannot raise to it without Ray
    Train restarting them)."""
    marker = {"stage": error.stage, "step": error.step, "what": error.what}
    RunFolder(run_dir).diverged_file.write_text(json.dumps(marker))


def read_diverged(run_dir: str | Path) -> Diverged | None:
    """The divergence a cluster run's workers stopped on, if they did."""
    path = RunFolder(run_dir).diverged_file
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    return Diverged(data["stage"], data["step"], data["what"])
