"""The step driver every training loop runs, and how a run's state is started or resumed.

:func:`drive` steps from the state's step to the total with a checkpoint every so many steps; each loop
brings its own :class:`Hooks` (the plain stage loop and the cluster's, facecomp.train.loop and
facecomp.cluster.worker; a network's own run, facecomp.train.parsing and facecomp.train.identity, which
:func:`begin_network_run` starts or resumes). It counts steps, images, time and unreadable images into one
:class:`~facecomp.train.checkpoint.RunState`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from facecomp import config as config_mod
from facecomp.config import Config
from facecomp.train import checkpoint as ck
from facecomp.train.checkpoint import RunState
from facecomp.weights import RunFolder, load_module

log = logging.getLogger(__name__)


def begin_network_run(cfg: Config, run_dir: str | Path, resume: bool, modules: dict[str, nn.Module],
                      optimizers: dict[str, torch.optim.Optimizer], scheduler) -> tuple[RunFolder, RunState]:
    """A run that trains one network outside the stages (the parsing or the identity network): a fresh state,
    or with ``resume`` the newest checkpoint's state, ``modules`` (checkpoint names), ``optimizers`` and
    ``scheduler``; the run folder begun with ``cfg``."""
    run = RunFolder(run_dir)
    ckpt = run.latest() if resume else None
    state = resume_state(ckpt, None) if ckpt is not None else RunState(stage=None)
    state.config = config_mod.to_dict(cfg)
    if ckpt is not None:
        for name, module in modules.items():
            load_module(RunFolder.weights_file(ckpt, name), module, name)
        ck.load_optimizers(ckpt, optimizers)
        scheduler.load_state_dict(state.scheduler)
        log.info("resumed %s at step %d", ckpt, state.step)
    run.begin(config_mod.to_toml(cfg))
    return run, state


def resume_state(ckpt: Path, stage: int | None) -> RunState:
    """The state a run resumes from, if it is a run of ``stage`` (None: a network's own run, begin_network_run)."""
    state = RunState.read(ckpt)
    if state.stage != stage:
        wanted = "a network's own run" if stage is None else f"stage {stage}"
        raise ValueError(f"{ckpt} holds {state.describe()}; cannot resume it as {wanted}")
    state.restarts = [*state.restarts, state.step]
    return state


class Hooks:
    """What one loop does around the driver's steps."""

    def empty(self, batch: dict) -> bool:
        """No readable image in this batch (on any rank, where there are several): the step passes
        without an update; the step number still advances, so the data stays that of an uninterrupted run."""
        return batch["image"] is None

    def step(self, batch: dict, step: int) -> Any:
        """The update of step ``step`` (0-based) on a batch that has images; returns what ``after_step`` sees."""
        raise NotImplementedError

    def after_step(self, state: RunState, batch: dict, result: Any, at_checkpoint: bool) -> None:
        """Logs, images, validation, schedulers; ``result`` is None after an empty batch."""

    def save(self, state: RunState) -> None:
        """Write the checkpoint of ``state.step``."""
        raise NotImplementedError


def drive(state: RunState, batches: Iterator[dict], hooks: Hooks, *, total: int, ckpt_every: int,
          until: int | None = None, stop: Callable[[], bool] | None = None, saved: int | None = None) -> bool:
    """Steps from ``state.step`` to ``total`` (or ``until``), a checkpoint every ``ckpt_every`` steps and
    at ``total``. ``stop`` is asked before each step (once per step on every rank: it may be a collective).
    A session that ends before ``total`` leaves a checkpoint at the step reached (even step 0) unless
    one is there already (``saved``: the step of this run's newest checkpoint). True when the stage is done.
    """
    until = total if until is None else min(until, total)
    started, wall = time.perf_counter(), state.wall_seconds
    while state.step < until and not (stop is not None and stop()):
        batch = next(batches)
        if batch["skipped"]:
            state.skipped += batch["skipped"]
            log.warning("%d unreadable image(s) skipped so far", state.skipped)
        result = None
        if not hooks.empty(batch):
            tick = time.perf_counter()
            result = hooks.step(batch, state.step)
            state.seconds += time.perf_counter() - tick
            state.images += batch["image"].shape[0] * state.world_size
        state.step += 1
        state.wall_seconds = wall + time.perf_counter() - started
        at_checkpoint = state.step % ckpt_every == 0 or state.step == total
        hooks.after_step(state, batch, result, at_checkpoint)
        if at_checkpoint:
            hooks.save(state)
            saved = state.step
    state.wall_seconds = wall + time.perf_counter() - started
    if state.step < total and saved != state.step:
        hooks.save(state)
    return state.step >= total
