"""Training and scoring the face-parsing network (``facecomp parsing train | eval``).

Pixel-wise softmax cross-entropy against the landmark labels of ``facecomp parsing label``, with
class weights (median frequency / frequency) ** ``class_balance``: brows and eyes cover under 1%
of a face crop each, and unweighted they would be learnt last. The crop, flips (with left/right
classes swapped), shifts, rotations and scales are those of completion training. Checkpoints and
``--resume`` work as in completion training; the final weights are ``run_dir/parsing.safetensors``.
"""

from __future__ import annotations

import logging
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
from facecomp.train.checkpoint import RunState
from facecomp.train.driver import Hooks, begin_network_run, drive
from facecomp.train.step import autocast
from facecomp.weights import RunFolder

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


class _ParsingHooks(Hooks):
    """The parsing network's step (weighted cross-entropy, AdamW, one-cycle schedule), logs, checkpoints."""

    def __init__(self, cfg: Config, run_dir: Path, net: torch.nn.Module, opt: torch.optim.Optimizer, sched,
                 weights: torch.Tensor, device: torch.device, writer, bar):
        self.cfg, self.run_dir, self.net, self.opt, self.sched = cfg, run_dir, net, opt, sched
        self.weights, self.device, self.writer, self.bar = weights, device, writer, bar
        self.fmt = torch.channels_last if cfg.runtime.channels_last else torch.contiguous_format
        self.loss = float("nan")
        self.meta = {"config": config_mod.to_dict(cfg.parsing), "trained": True,
                     "labels": "dlib 68 landmarks + GrabCut hair"}

    def step(self, batch: dict, step: int) -> float:
        x = batch["image"].to(self.device).contiguous(memory_format=self.fmt)
        y = batch["labels"].to(self.device)
        with autocast(self.cfg, self.device):
            logits = self.net(x)
        loss = F.cross_entropy(logits.float(), y, weight=self.weights)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.loss = loss.item()
        return self.loss

    def after_step(self, state: RunState, batch: dict, result: float | None, at_checkpoint: bool) -> None:
        self.sched.step()  # after empty batches too: the schedule follows the step number
        self.bar.update(1)
        pt, step = self.cfg.parsing_train, state.step
        if step % pt.log_every == 0 or step == pt.steps:
            self.writer.add_scalar("parsing/loss", self.loss, step)
            self.writer.add_scalar("parsing/lr", self.sched.get_last_lr()[0], step)
            self.writer.add_scalar("parsing/images_per_s", state.images / max(state.seconds, 1e-9), step)
            self.bar.set_postfix(loss=f"{self.loss:.3f}")

    def save(self, state: RunState) -> None:
        state.scheduler = self.sched.state_dict()
        ck.save_checkpoint(self.run_dir, {"parsing": (self.net, {**self.meta, "step": state.step})},
                           {"parsing": self.opt}, state, keep=self.cfg.train.keep_checkpoints)


def parsing_run_config(preset: str | None, overrides: list[str], run_dir: str | Path, resume: bool) -> Config:
    """The config of a parsing-network run: a resumed run trains on with the config it started with (its
    ``config.toml``), a new one with ``preset``; ``overrides`` on top of either."""
    source = RunFolder(run_dir).config_toml if resume else preset
    return config_mod.load_config(str(source) if source is not None else None, overrides)


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

    run, state = begin_network_run(cfg, run_dir, resume, {"parsing": net}, {"parsing": opt}, sched)

    from torch.utils.tensorboard import SummaryWriter
    from tqdm import tqdm

    writer = SummaryWriter(str(run.tb), purge_step=state.step + 1 if resume else None)
    loader = train_loader(pairs, SIZE, Augment.from_config(cfg.data), pt.batch_size, cfg.train.seed, state.step,
                          cfg.data.workers)
    bar = tqdm(total=pt.steps, initial=state.step, desc="parsing", unit="step", disable=not progress)
    hooks = _ParsingHooks(cfg, run_dir, net, opt, sched, weights, device, writer, bar)
    drive(state, iter(loader), hooks, total=pt.steps, ckpt_every=pt.ckpt_every, saved=state.step)
    bar.close()
    writer.close()
    result = {"finished": True, "stage": None, "steps": state.step, "images": state.images, "seconds": state.seconds,
              "loss": hooks.loss}
    run.finish(result, RunFolder.weights_file(run.latest(), "parsing"), "parsing")
    return ParsingRun(run_dir, state.step, state.images, state.seconds, hooks.loss)
