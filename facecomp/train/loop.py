"""The training loop of one stage: build, (init | resume), step, log, checkpoint.

A stage is its own run directory. ``init`` starts from a previous stage's run (weights only);
``resume`` continues this run from its latest checkpoint at the exact step, with the same data
order and noise, so the result equals an uninterrupted run's.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from facecomp import config as config_mod
from facecomp import runtime
from facecomp.config import Config
from facecomp.data.celeba import partition_files
from facecomp.data.loaders import make_loader
from facecomp.models import Generator, build_discriminators
from facecomp.train import checkpoint as ck
from facecomp.train import validation as val
from facecomp.train.ema import EMA
from facecomp.train.runs import RESULT_FILE, read_result
from facecomp.train.schedule import lr_factor, set_lr
from facecomp.train.stages import STAGES, check_stage
from facecomp.train.step import Models, OptimizerUpdater, train_step

log = logging.getLogger(__name__)


def build_models(cfg: Config, stage: int, device: torch.device) -> Models:
    """Fresh models for a stage, initialised from a generator seeded by train.seed."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.train.seed)
        gen = Generator(cfg.generator)
        d_local, d_global = build_discriminators(cfg.discriminator, cfg.generator.image_size)
    models = Models(generator=gen, d_local=d_local, d_global=d_global)
    if "parsing" in STAGES[stage] and cfg.loss.parsing > 0:
        models.parsing = load_parsing(cfg)
    fmt = torch.channels_last if cfg.runtime.channels_last else torch.contiguous_format
    for name in ("generator", "d_local", "d_global", "parsing"):
        mod = getattr(models, name)
        if mod is not None:
            setattr(models, name, mod.to(device=device, memory_format=fmt))
    return models


def load_parsing(cfg: Config) -> nn.Module:
    """The frozen parsing network of the stage-3 loss: parsing.weights, or the shipped one."""
    from facecomp import models

    try:
        return models.load("parsing", cfg.parsing.weights or None)
    except ValueError as e:
        raise ValueError(f"stage 3 needs face-parsing weights: {e} (set parsing.weights=PATH, or train them: "
                         "facecomp parsing train)") from None


def weights_meta(cfg: Config, name: str, stage: int, step: int) -> dict:
    component = {"generator": cfg.generator, "d_local": cfg.discriminator, "d_global": cfg.discriminator}[name]
    return {"config": config_mod.to_dict(component), "stage": stage, "step": step}


def init_from(models: Models, source: str | Path) -> Path:
    """Start a stage from a previous stage: a run directory (its chosen checkpoint when it finished,
    else its latest), a checkpoint (its generator, and its discriminators where it has them), or a
    bare generator weights file."""
    source = Path(source)
    if source.is_file() and source.suffix == ".safetensors" and not (source.parent / "state.json").is_file():
        ck.load_module(source, models.generator, "generator")
        return source
    result = read_result(source) if source.is_dir() else None
    if result is not None and result.get("chosen"):
        chosen = result["chosen"]
        ckpt = source / "checkpoints" / f"step_{chosen['step']:07d}"
        weights = "generator_ema.safetensors" if chosen["variant"] == "ema" else "generator.safetensors"
    else:
        ckpt, weights = ck.find_checkpoint(source), "generator.safetensors"
    ck.load_module(ckpt / weights, models.generator, "generator")
    for name in ("d_local", "d_global"):
        path = ckpt / f"{name}.safetensors"
        if path.is_file():
            ck.load_module(path, getattr(models, name), name)
    return ckpt


@dataclass
class RunResult:
    run_dir: Path
    steps: int
    images: int
    seconds: float
    metrics: dict[str, float]
    finished: bool = True  # False: stopped early (stop_at or a signal) with a checkpoint to resume from


def train(cfg: Config, stage: int, data_root: str | Path | list[str], run_dir: str | Path,
          init: str | Path | None = None, resume: bool = False, progress: bool = True,
          stop_at: int | None = None, stop: Callable[[], bool] | None = None) -> RunResult:
    """Train ``stage`` into ``run_dir``.

    ``stop_at`` (a step) or ``stop`` (checked between steps; e.g. a :class:`~facecomp.train.preempt.
    StopRequest`) end this session early with a checkpoint at the step reached: an interrupted run,
    continued with ``resume``, and ``RunResult.finished`` is False.
    """
    check_stage(stage)
    run_dir = Path(run_dir)
    device = runtime.start(cfg.runtime)

    start_step, skipped, images_seen, seconds, wall = 0, 0, 0, 0.0, 0.0
    ckpt, loader_state, history = None, None, []
    if resume:
        ckpt = ck.find_checkpoint(run_dir)
        state = ck.read_state(ckpt)
        if state["stage"] != stage:
            raise ValueError(f"{run_dir} holds a stage-{state['stage']} run; cannot resume it as stage {stage}")
        start_step, skipped = state["step"], state.get("skipped", 0)
        images_seen, seconds = state.get("images", 0), state.get("seconds", 0.0)
        wall = state.get("wall_seconds", 0.0)
        loader_state = state.get("loader_state")  # DALI's reader position (text); absent for the torch loader
        history = state.get("validation", [])  # validation records up to this checkpoint

    models = build_models(cfg, stage, device)
    opt_g = torch.optim.Adam(models.generator.parameters(), lr=cfg.optim.lr_g, betas=(cfg.optim.beta1, cfg.optim.beta2))
    opts = {"g": opt_g}
    for name in ("d_local", "d_global"):
        opts[name] = torch.optim.Adam(getattr(models, name).parameters(), lr=cfg.optim.lr_d,
                                      betas=(cfg.optim.beta1, cfg.optim.beta2))
    updaters = {"g": OptimizerUpdater(models.generator, opt_g, cfg.optim.grad_clip),
                "d_local": OptimizerUpdater(models.d_local, opts["d_local"], cfg.optim.grad_clip),
                "d_global": OptimizerUpdater(models.d_global, opts["d_global"], cfg.optim.grad_clip)}

    base_lr = {"g": cfg.optim.lr_g, "d_local": cfg.optim.lr_d, "d_global": cfg.optim.lr_d}

    if ckpt is not None:
        for name in ("generator", "d_local", "d_global"):
            ck.load_module(ckpt / f"{name}.safetensors", getattr(models, name), name)
        for name, opt in opts.items():
            tensors, meta = ck.load_tensors(ckpt / f"optim_{name}.safetensors", f"optim_{name}")
            ck.load_optimizer(opt, tensors, meta["param_groups"])
        log.info("resumed %s at step %d", ckpt, start_step)
    elif init is not None:
        log.info("initialised from %s", init_from(models, init))
    ema = EMA(models.generator, cfg.train.ema) if cfg.train.ema > 0 else None
    if ema is not None and ckpt is not None:
        if (ckpt / "generator_ema.safetensors").is_file():
            ck.load_module(ckpt / "generator_ema.safetensors", ema.module, "generator")
        else:  # a checkpoint from before train.ema was set: the average starts here
            log.warning("%s has no generator_ema.safetensors; the EMA starts from the current weights", ckpt)

    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / RESULT_FILE).unlink(missing_ok=True)  # written again when this run finishes
    (run_dir / "config.toml").write_text(config_mod.to_toml(cfg))
    (run_dir / "config.json").write_text(json.dumps({"stage": stage, "config": config_mod.to_dict(cfg)}, indent=2))

    roots = data_root if isinstance(data_root, list | tuple) else [data_root]
    files = partition_files(roots, cfg.data.partition, cfg.data.limit)
    vset = val.load_validation_set(cfg)
    total_steps = cfg.train.stage_steps[stage - 1]
    loader = make_loader(cfg, files, start_step=start_step, device=device, loader_state=loader_state)

    from torch.utils.tensorboard import SummaryWriter
    from tqdm import tqdm

    writer = SummaryWriter(str(run_dir / "tb"), purge_step=start_step + 1 if resume else None)
    for mod in (models.generator, models.d_local, models.d_global):
        mod.train()

    v_cfg = cfg.validation

    def best(step: int) -> dict | None:
        """The best (step, variant) among checkpoints on disk and the one being written at ``step``."""
        return val.choose(history, v_cfg.select, v_cfg.select_after, ck.checkpoint_steps(run_dir) | {step})

    def validate(step: int) -> None:
        record: dict = {"step": step, "raw": val.score(models.generator, vset, cfg, device)}
        if ema is not None:
            record["ema"] = val.score(ema.module, vset, cfg, device)
        history[:] = [r for r in history if r["step"] < step] + [record]
        for variant in ("raw", "ema"):
            for key, value in record.get(variant, {}).items():
                writer.add_scalar(f"stage{stage}/val_{variant}/{key}", value, step)
        ck.write_json(run_dir / "validation.json", history)
        log.info("validation at step %d: %s", step, {k: round(r[k], 3) for k in ("hole_psnr", "ssim")
                                                      for r in [record["raw"]]})

    def save(step: int) -> None:
        state = {"stage": stage, "step": step, "skipped": skipped, "images": images_seen, "seconds": seconds,
                 "wall_seconds": wall + time.perf_counter() - started, "config": config_mod.to_dict(cfg),
                 "validation": history, "best": best(step)}
        if hasattr(loader, "state"):  # a loader that keeps its own position (DALI): resume it from there
            state["loader_state"] = loader.state()
        names = ("generator", "d_local", "d_global")
        mods = {n: (getattr(models, n), weights_meta(cfg, n, stage, step)) for n in names}
        if ema is not None:
            mods["generator_ema"] = (ema.module, {**weights_meta(cfg, "generator", stage, step), "kind": "generator",
                                                  "ema_decay": ema.decay})
        protect = frozenset([state["best"]["step"]] if state["best"] else [])
        ck.save_checkpoint(run_dir, step, mods, opts, state, keep=cfg.train.keep_checkpoints, protect=protect)

    metrics: dict[str, float] = {}
    bar = tqdm(total=total_steps, initial=start_step, desc=f"stage {stage}", disable=not progress, unit="step")
    step = start_step
    started = time.perf_counter()  # wall clock of this session (data loading, logging, checkpoints included)
    batches = iter(loader)
    until = total_steps if stop_at is None else min(stop_at, total_steps)
    while step < until and not (stop is not None and stop()):
        batch = next(batches)
        skipped += batch["skipped"]
        if batch["skipped"]:
            log.warning("%d unreadable image(s) skipped so far", skipped)
        if batch["image"] is None:  # every file of the batch unreadable: the step passes without an update,
            step += 1                # so step numbers stay aligned with the sampler (exact resume)
            bar.update(1)
            continue
        tick = time.perf_counter()
        batch = {**batch, "image": batch["image"].to(device), "mask": batch["mask"].to(device)}
        factor = lr_factor(cfg.optim, step, total_steps)
        for name, opt in opts.items():
            set_lr(opt, base_lr[name] * factor)
        result = train_step(models, updaters, batch, cfg, stage, step)
        if ema is not None:
            ema.update(models.generator, step)
        seconds += time.perf_counter() - tick
        images_seen += batch["image"].shape[0]
        step += 1
        metrics = result.metrics
        bar.update(1)
        if step % cfg.train.log_every == 0 or step == total_steps:
            for k, v in metrics.items():
                writer.add_scalar(f"stage{stage}/{k}", v, step)
            writer.add_scalar(f"stage{stage}/images_per_s", images_seen / max(seconds, 1e-9), step)
            writer.add_scalar(f"stage{stage}/lr_factor", factor, step)
            bar.set_postfix(recon=f"{metrics['recon']:.1f}", total=f"{metrics['total']:.1f}")
            if not progress:  # a run in the background (nohup, a batch job): a line in its log instead of a bar
                log.info("stage %d step %d/%d recon %.1f total %.1f lr x%.3f %.1f images/s", stage, step,
                         total_steps, metrics["recon"], metrics["total"], factor, images_seen / max(seconds, 1e-9))
        if step % cfg.train.image_every == 0 or step == total_steps:
            grid = _grid(batch["image"], batch["mask"], result.completed)
            writer.add_image(f"stage{stage}/original_masked_completed", grid, step)
        at_checkpoint = step % cfg.train.ckpt_every == 0 or step == total_steps
        if vset is not None and (at_checkpoint or (v_cfg.every and step % v_cfg.every == 0)):
            validate(step)
        if at_checkpoint:
            save(step)
    bar.close()
    if step < total_steps:  # stopped early: leave a checkpoint to resume from, and no result
        if step not in ck.checkpoint_steps(run_dir):  # even at step 0: a requeued job resumes from it
            save(step)
        writer.close()
        return RunResult(run_dir, step, images_seen, seconds, metrics, finished=False)
    writer.close()
    chosen = best(step) if vset is not None else None
    if chosen is not None:
        final = run_dir / "checkpoints" / f"step_{chosen['step']:07d}"
        weights = final / ("generator_ema.safetensors" if chosen["variant"] == "ema" else "generator.safetensors")
    else:
        final = ck.find_checkpoint(run_dir)
        weights = final / "generator.safetensors"
    ck.copy_file(weights, run_dir / "generator.safetensors")
    scores = next((r[chosen["variant"]] for r in history if chosen and r["step"] == chosen["step"]), None)
    result = {"finished": True, "stage": stage, "steps": step, "images": images_seen, "seconds": seconds,
              "wall_seconds": wall + time.perf_counter() - started, "chosen": chosen, "scores": scores,
              "rule": f"max {v_cfg.select} over O1-O6 (raw or EMA) among checkpoints at step >= {v_cfg.select_after}"
              if chosen else "latest checkpoint (no validation)", "generator": "generator.safetensors"}
    ck.write_json(run_dir / RESULT_FILE, result)
    return RunResult(run_dir, step, images_seen, seconds, metrics)


def _grid(x: torch.Tensor, m: torch.Tensor, y: torch.Tensor, n: int = 8) -> torch.Tensor:
    """Rows of (original, masked, completed) as one [3, H, W] image in [0, 1]."""
    x, m, y = x[:n].float().cpu(), m[:n].float().cpu(), y[:n].float().cpu()
    masked = x * (1 - m) + m  # hole shown white
    rows = [torch.cat([a, b, c], dim=2) for a, b, c in zip(x, masked, y, strict=True)]
    return (torch.cat(rows, dim=1).clamp(-1, 1) + 1) / 2
