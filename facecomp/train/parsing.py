"""Training and scoring the face-parsing network (``facecomp parsing train | eval``).

Pixel-wise softmax cross-entropy against the landmark labels of ``facecomp parsing label``, with
class weights (median frequency / frequency) ** ``class_balance``: brows and eyes cover under 1%
of a face crop each, and unweighted they would be learnt last. The crop, flips (with left/right
classes swapped), shifts, rotations and scales are those of completion training. Checkpoints and
``--resume`` work as in completion training; the final weights are ``run_dir/parsing.safetensors``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from facecomp import config as config_mod
from facecomp import runtime
from facecomp.config import Config
from facecomp.data.celeba import CelebAIndex
from facecomp.data.parsing import labelled_pairs, train_loader
from facecomp.images import read_gray
from facecomp.layout import Augment
from facecomp.models.parsing import ParsingNet
from facecomp.train import checkpoint as ck
from facecomp.train.step import autocast

log = logging.getLogger(__name__)
SIZE = 128


def class_weights(pairs: list[tuple[Path, Path]], power: float, num_classes: int, sample: int = 400) -> torch.Tensor:
    """(median frequency / frequency) ** power, frequencies counted on up to ``sample`` label maps."""
    if power == 0:
        return torch.ones(num_classes)
    counts = np.zeros(num_classes, np.float64)
    step = max(1, len(pairs) // sample)
    for _, lbl in pairs[::step]:
        counts += np.bincount(read_gray(lbl).ravel(), minlength=num_classes)[:num_classes]
    freq = np.maximum(counts / counts.sum(), 1e-6)
    return torch.tensor((np.median(freq) / freq) ** power, dtype=torch.float32)


@dataclass
class ParsingRun:
    run_dir: Path
    steps: int
    images: int
    seconds: float
    loss: float


def train_parsing(cfg: Config, data_root: str | Path, run_dir: str | Path, resume: bool = False,
                  progress: bool = True) -> ParsingRun:
    pt = cfg.parsing_train
    run_dir = Path(run_dir)
    device = runtime.start(cfg.runtime)

    files = CelebAIndex.open(data_root).files(cfg.data.partition, cfg.data.limit)
    pairs = labelled_pairs(files, pt.labels)
    weights = class_weights(pairs, pt.class_balance, cfg.parsing.num_classes).to(device)
    log.info("%d labelled faces; class weights %s", len(pairs), np.round(weights.cpu().numpy(), 2).tolist())

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.train.seed)
        net = ParsingNet(cfg.parsing)
    fmt = torch.channels_last if cfg.runtime.channels_last else torch.contiguous_format
    net = net.to(device=device, memory_format=fmt).train()
    opt = torch.optim.AdamW(net.parameters(), lr=pt.lr, weight_decay=pt.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=pt.lr, total_steps=pt.steps, pct_start=0.1)

    start, images, seconds = 0, 0, 0.0
    if resume:
        ckpt = ck.find_checkpoint(run_dir)
        state = ck.read_state(ckpt)
        start, images, seconds = state["step"], state["images"], state["seconds"]
        ck.load_module(ckpt / "parsing.safetensors", net, "parsing")
        tensors, meta = ck.load_tensors(ckpt / "optim_parsing.safetensors", "optim_parsing")
        ck.load_optimizer(opt, tensors, meta["param_groups"])
        sched.load_state_dict(state["scheduler"])
        log.info("resumed %s at step %d", ckpt, start)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.toml").write_text(config_mod.to_toml(cfg))

    meta = {"config": config_mod.to_dict(cfg.parsing), "trained": True, "labels": "dlib 68 landmarks + GrabCut hair"}

    def save(step: int) -> Path:
        state = {"step": step, "images": images, "seconds": seconds, "scheduler": sched.state_dict(),
                 "config": config_mod.to_dict(cfg)}
        return ck.save_checkpoint(run_dir, step, {"parsing": (net, {**meta, "step": step})}, {"parsing": opt}, state,
                                  keep=cfg.train.keep_checkpoints)

    from torch.utils.tensorboard import SummaryWriter
    from tqdm import tqdm

    writer = SummaryWriter(str(run_dir / "tb"), purge_step=start + 1 if resume else None)
    loader = train_loader(pairs, SIZE, Augment.from_config(cfg.data), pt.batch_size, cfg.train.seed, start,
                          cfg.data.workers)
    bar = tqdm(total=pt.steps, initial=start, desc="parsing", unit="step", disable=not progress)
    step, loss_value, batches = start, float("nan"), iter(loader)
    while step < pt.steps:
        batch = next(batches)
        step += 1
        if batch["image"] is not None:
            tick = time.perf_counter()
            x = batch["image"].to(device).contiguous(memory_format=fmt)
            y = batch["labels"].to(device)
            with autocast(cfg, device):
                logits = net(x)
            loss = F.cross_entropy(logits.float(), y, weight=weights)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            seconds += time.perf_counter() - tick
            images += x.shape[0]
            loss_value = loss.item()
        sched.step()
        bar.update(1)
        if step % pt.log_every == 0 or step == pt.steps:
            writer.add_scalar("parsing/loss", loss_value, step)
            writer.add_scalar("parsing/lr", sched.get_last_lr()[0], step)
            writer.add_scalar("parsing/images_per_s", images / max(seconds, 1e-9), step)
            bar.set_postfix(loss=f"{loss_value:.3f}")
        if step % pt.ckpt_every == 0 or step == pt.steps:
            save(step)
    bar.close()
    writer.close()
    ck.copy_file(ck.find_checkpoint(run_dir) / "parsing.safetensors", run_dir / "parsing.safetensors")
    return ParsingRun(run_dir, step, images, seconds, loss_value)
