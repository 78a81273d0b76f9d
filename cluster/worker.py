"""The per-worker loop Ray Train runs on every rank: the loop driver of facecomp.train.driver with the
cluster's hooks.

What differs from the plain loop is only in the hooks: the models are DeepSpeed engines, the data is
this rank's shard, a step whose batch is empty on any rank passes on every rank, and checkpoints go to
Ray Train (every rank reports its part; Ray merges them into one folder in the run's storage). The step
itself is facecomp.train.step.train_step, as in the plain loop.

A stop marker written by the driver on SIGTERM/SIGUSR1 (facecomp.cluster.stop) makes every rank
checkpoint at the same step and return. Rank 0 writes TensorBoard logs to ``STORAGE/NAME/tb``: the
scalars and image grids of ``facecomp train``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from facecomp import config as config_mod
from facecomp import runtime
from facecomp.config import Config
from facecomp.train.checkpoint import RunState
from facecomp.train.driver import drive
from facecomp.train.guard import Diverged, write_diverged
from facecomp.train.loop import StageHooks, StageSetup, setup_stage
from facecomp.train.step import Models
from facecomp.weights import RunFolder

from . import checkpoints

log = logging.getLogger("facecomp.cluster")

# report(step, metrics, folder): hand a checkpoint folder of this rank to Ray Train (ray.train.report)
Report = Callable[[int, dict[str, float], Path], None]


def _accelerator(device: torch.device) -> None:
    # DeepSpeed picks its accelerator when first imported; say it, rather than let it guess from the
    # packages it finds (a CPU worker on a node with CUDA libraries must still use gloo).
    os.environ.setdefault("DS_ACCELERATOR", "cuda" if device.type == "cuda" else "cpu")


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train's entry on every worker: Ray's context, then :func:`run_stage`."""
    import ray.train
    import ray.train.torch

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg = config_mod.from_dict(config["config"])
    ctx = ray.train.get_context()
    device = ray.train.torch.get_device()  # cuda:<local rank> on GPU workers, cpu otherwise
    torch.set_num_threads(cfg.cluster.cpus_per_worker)
    if cfg.runtime.tune_malloc and device.type == "cpu":
        runtime.tune_allocator()  # as facecomp train does (facecomp.runtime: ~20% of a CPU step)

    def report(step: int, metrics: dict[str, float], folder: Path) -> None:
        ray.train.report({"step": step, **metrics}, checkpoint=ray.train.Checkpoint.from_directory(str(folder)),
                         checkpoint_dir_name=RunFolder.checkpoint_name(step))

    run_stage(cfg, config["stage"], Path(config["run_dir"]), ctx.get_world_rank(), ctx.get_world_size(), device,
              report, restore=ray.train.get_checkpoint(), init=config.get("init"))


def run_stage(cfg: Config, stage: int, run_dir: Path, rank: int, world: int, device: torch.device,
              report: Report, restore=None, init: str | None = None) -> RunState:
    """One rank of a stage, inside an initialised process group: DeepSpeed engines (restored from
    ``restore``, this run's own checkpoint as Ray Train hands it back: anything with ``as_directory()``;
    else initialised from ``init``), then the loop driver. Rank 0 logs."""
    from .deepspeed_models import make_agree
    from .stop import STOP_FILE, StopAgreement, max_reduce, stop_group

    _accelerator(device)
    cfg.runtime.device = str(device)
    # Ray Train hands this run's own checkpoint back as a folder that exists only inside the context
    with restore.as_directory() if restore is not None else contextlib.nullcontext() as ckpt:
        setup = setup_stage(cfg, stage, run_dir, device, _DeepSpeedWrap, roots=cfg.data.roots,
                            ckpt=Path(ckpt) if ckpt else None, init=init, rank=rank, world=world)
    state = dataclasses.replace(setup.state, deepspeed=cfg.cluster.deepspeed)
    if restore is not None and rank == 0:
        log.info("(checkpoint %s of Ray Train's storage)", getattr(restore, "path", restore))
    # one gloo all_reduce(MAX) per check on every rank, so all ranks take the same decision
    reduce = max_reduce(stop_group()) if world > 1 else None
    stop = StopAgreement(run_dir / STOP_FILE, reduce)
    writer = setup.writer
    hooks = _ClusterStage(cfg, stage, setup, device, rank=rank, report=report, agree=make_agree(world),
                          any_rank=reduce)
    total = cfg.train.stage_steps[stage - 1]
    try:
        finished = drive(state, iter(setup.loader), hooks, total=total, ckpt_every=cfg.train.ckpt_every, stop=stop,
                         saved=state.step if restore is not None else None)
    except Diverged as e:
        # Every rank stops at the same check (the guard agrees over ranks) and returns normally: a raised
        # error would make Ray Train restart the workers from the last checkpoint, into the same
        # divergence, max_failures times. The driver reads the marker and stops with one line.
        if rank == 0:
            log.error("%s", e)
            write_diverged(run_dir, e)
        if writer is not None:
            writer.close()
        return state
    if not finished and rank == 0:
        log.info("stage %d stopped at step %d/%d on request; checkpoint %s", stage, state.step, total,
                 RunFolder.checkpoint_name(state.step))
    if writer is not None:
        writer.close()
    return state


class _DeepSpeedWrap:
    """The cluster's wrap of the one setup (facecomp.train.loop.setup_stage): a DeepSpeed engine per trained
    module, restored from (and saved to) the engines' own checkpoint files, with each rank's input position."""

    def __init__(self, models: Models, cfg: Config, device: torch.device):
        from .deepspeed_models import wrap_models

        self.engines = wrap_models(models, cfg, device)

    def updaters(self) -> dict[str, Any]:
        return self.engines.updaters()

    def models(self, parsing: torch.nn.Module | None, identity: torch.nn.Module | None = None) -> Models:
        return self.engines.models(parsing, identity)

    def restore(self, ckpt: Path) -> None:
        checkpoints.restore(self.engines, ckpt)

    def loader_position(self, ckpt: Path, state: RunState, rank: int, world: int) -> str | None:
        return checkpoints.loader_state(ckpt, rank, world, state)


class _ClusterStage(StageHooks):
    """DeepSpeed engines on this rank's shard; checkpoints reported to Ray Train by every rank."""

    def __init__(self, cfg: Config, stage: int, setup: StageSetup, device: torch.device, *, rank: int,
                 report: Report, agree, any_rank: Callable[[torch.Tensor], torch.Tensor] | None):
        super().__init__(cfg, stage, setup.models, setup.wrapped.updaters(), device, writer=setup.writer,
                         log_lines=rank == 0, agree=agree)
        self.wrapped, self.rank, self.loader = setup.wrapped.engines, rank, setup.loader
        self.report, self.any_rank = report, any_rank

    def empty(self, batch: dict) -> bool:
        # The engines' collectives need every rank in every update: a step passes on all ranks or on none.
        flag = torch.tensor([1 if batch["image"] is None else 0], dtype=torch.int32)
        return bool((self.any_rank(flag) if self.any_rank is not None else flag).item())

    def save(self, state: RunState) -> None:
        self.ensure_finite(state)
        with tempfile.TemporaryDirectory(prefix="facecomp-ckpt-") as tmp:
            checkpoints.save(self.wrapped, Path(tmp), self.rank, self.cfg, state)
            checkpoints.save_loader_state(Path(tmp), self.rank, self.loader)
            self.report(state.step, self.read_now(), Path(tmp))
        if self.writer is not None:
            self.writer.flush()
