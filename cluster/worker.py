"""The per-worker loop Ray Train runs on every rank: build, wrap in DeepSpeed, (restore | init), step.

It is the loop of facecomp.train.loop cut down to what differs: the models are DeepSpeed engines,
the data is this rank's shard, and checkpoints go to Ray Train (every rank reports its part; Ray
merges them into one folder in the run's storage). The step itself is facecomp.train.step.train_step.

A stop marker written by the driver on SIGTERM/SIGUSR1 (facecomp.cluster.stop) makes every rank
checkpoint at the same step and return. Rank 0 writes TensorBoard logs to ``STORAGE/NAME/tb``: the
scalars and image grids of ``facecomp train``.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from facecomp import config as config_mod
from facecomp import runtime

log = logging.getLogger("facecomp.cluster")


def _accelerator(device: torch.device) -> None:
    # DeepSpeed picks its accelerator when first imported; say it, rather than let it guess from the
    # packages it finds (a CPU worker on a node with CUDA libraries must still use gloo).
    os.environ.setdefault("DS_ACCELERATOR", "cuda" if device.type == "cuda" else "cpu")


def train_loop_per_worker(config: dict[str, Any]) -> None:
    import ray.train
    import ray.train.torch

    from facecomp.data.celeba import partition_files
    from facecomp.data.loaders import make_loader
    from facecomp.train.loop import _grid, build_models, init_from
    from facecomp.train.schedule import lr_factor, set_lr
    from facecomp.train.step import train_step

    from . import checkpoints
    from .engines import build_engines, make_agree
    from .stop import STOP_FILE, StopAgreement, max_reduce, stop_group

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg = config_mod.from_dict(config["config"])
    stage: int = config["stage"]
    run_dir = Path(config["run_dir"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()  # cuda:<local rank> on GPU workers, cpu otherwise
    _accelerator(device)
    torch.set_num_threads(cfg.cluster.cpus_per_worker)
    cfg.runtime.device = str(device)
    if cfg.runtime.tune_malloc and device.type == "cpu":
        runtime.tune_allocator()  # as facecomp train does (facecomp.runtime: ~20% of a CPU step)

    models = build_models(cfg, stage, device)
    ray_ckpt = ray.train.get_checkpoint()
    if ray_ckpt is None and config.get("init"):
        # weights only (safetensors), before the engines broadcast rank 0's parameters
        source = init_from(models, config["init"])
        if rank == 0:
            log.info("stage %d initialised from %s", stage, source)
    engines = build_engines(models, cfg, device)
    step_models = engines.models(models.parsing)
    updaters = engines.updaters()

    start_step, images, seconds, restarts, position = 0, 0, 0.0, [], None
    saved = None  # the step of this run's newest checkpoint
    if ray_ckpt is not None:
        with ray_ckpt.as_directory() as d:
            state = checkpoints.restore(engines, Path(d), stage)
            position = checkpoints.loader_state(Path(d), rank, world, state)
        start_step, images, seconds = state["step"], state["images"], state["seconds"]
        restarts, saved = [*state.get("restarts", []), start_step], start_step
        if rank == 0:
            log.info("resumed stage %d at step %d from %s", stage, start_step, ray_ckpt.path)

    files = partition_files(cfg.data.roots, cfg.data.partition, cfg.data.limit)
    loader = make_loader(cfg, files, start_step=start_step, rank=rank, world_size=world, device=device,
                         loader_state=position)
    agree = make_agree(world)
    stop = StopAgreement(run_dir / STOP_FILE, max_reduce(stop_group()) if world > 1 else None)
    for engine in updaters.values():
        engine.train()
    writer = None
    if rank == 0:
        from torch.utils.tensorboard import SummaryWriter

        # purge_step: events logged past the checkpoint a restart resumes from are dropped (step N's
        # scalars were written before checkpoint N, so they stay)
        writer = SummaryWriter(str(run_dir / "tb"), purge_step=start_step + 1 if ray_ckpt is not None else None)

    total = cfg.train.stage_steps[stage - 1]
    base_lr = {"g": cfg.optim.lr_g, "d_local": cfg.optim.lr_d, "d_global": cfg.optim.lr_d}

    def save(step: int, metrics: dict[str, float]) -> None:
        state = {"format": "facecomp-cluster/1", "stage": stage, "step": step, "images": images,
                 "seconds": seconds, "world_size": world, "deepspeed": cfg.cluster.deepspeed,
                 "restarts": restarts, "config": config_mod.to_dict(cfg)}
        with tempfile.TemporaryDirectory(prefix="facecomp-ckpt-") as tmp:
            checkpoints.save(engines, Path(tmp), rank, cfg, stage, step, state)
            checkpoints.save_loader_state(Path(tmp), rank, loader)
            ray.train.report({"step": step, **metrics},
                             checkpoint=ray.train.Checkpoint.from_directory(tmp),
                             checkpoint_dir_name=checkpoints.dir_name(step))
        if writer is not None:
            writer.flush()

    step, metrics = start_step, {}
    batches = iter(loader)
    # stop() is a collective: every rank calls it once per step, and all leave the loop at the same step
    while step < total and not stop():
        batch = next(batches)
        # A rank whose whole batch was unreadable still takes the step (an empty one is not possible:
        # the engines' collectives need every rank), so the pipeline's None batch is an error here.
        if batch["image"] is None:
            raise ValueError(f"rank {rank}: every image of batch {step} is unreadable")
        tick = time.perf_counter()
        batch = {**batch, "image": batch["image"].to(device), "mask": batch["mask"].to(device)}
        factor = lr_factor(cfg.optim, step, total)  # the plain loop's schedule (1 unless optim.lr_decay)
        for name, engine in updaters.items():
            set_lr(engine.optimizer, base_lr[name] * factor)
        result = train_step(step_models, updaters, batch, cfg, stage, step, agree=agree)
        metrics = result.metrics
        seconds += time.perf_counter() - tick
        images += batch["image"].shape[0] * world
        step += 1
        if rank == 0 and (step % cfg.train.log_every == 0 or step == total):
            log.info("stage %d step %d/%d recon %.2f total %.2f", stage, step, total, metrics["recon"],
                     metrics["total"])
            for k, v in metrics.items():
                writer.add_scalar(f"stage{stage}/{k}", v, step)
            writer.add_scalar(f"stage{stage}/images_per_s", images / max(seconds, 1e-9), step)
            writer.add_scalar(f"stage{stage}/lr_factor", factor, step)
        if writer is not None and (step % cfg.train.image_every == 0 or step == total):
            writer.add_image(f"stage{stage}/original_masked_completed",
                             _grid(batch["image"], batch["mask"], result.completed), step)
        if step % cfg.train.ckpt_every == 0 or step == total:
            save(step, metrics)
            saved = step
    if step < total:  # stopped: a checkpoint at the step reached (even step 0), which a rerun resumes from
        if saved != step:
            save(step, metrics)
        if rank == 0:
            log.info("stage %d stopped at step %d/%d on request; checkpoint %s", stage, step, total,
                     checkpoints.dir_name(step))
    if writer is not None:
        writer.close()
