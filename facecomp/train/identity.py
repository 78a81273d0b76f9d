"""Training and scoring the identity network (``facecomp identity train | eval``).

CosFace (Wang et al. 2018): the embedding's cosine to each training identity's learnt centre, the true
one's lowered by a margin, scaled, under softmax cross-entropy. Trained on the training partitions only
(celeba/'s train identities and celeba_extra's, 4,952 people); scored on celeba/'s validation partition,
whose 26 people it never saw, as ``facecomp eval recognition`` scores dlib: each face's nearest other
face (cosine) must be the same person. Checkpoints and ``--resume`` work as in completion training; the
final weights are ``run_dir/identity.safetensors``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from facecomp import config as config_mod
from facecomp import runtime
from facecomp.config import Config
from facecomp.data.identities import as_input, batches, labelled_files, load_faces
from facecomp.models.identity import IdentityNet
from facecomp.train import checkpoint as ck
from facecomp.train.checkpoint import RunState
from facecomp.train.driver import Hooks, begin_network_run, drive
from facecomp.weights import RunFolder

log = logging.getLogger(__name__)


class CosFaceHead(nn.Module):
    """Class centres on the unit sphere; logits s * (cos - m at the true class). Training only."""

    def __init__(self, embed_dim: int, classes: int, margin: float, scale: float):
        super().__init__()
        self.centres = nn.Parameter(torch.randn(classes, embed_dim) * 0.01)
        self.margin, self.scale = margin, scale

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        cos = embeddings @ F.normalize(self.centres, dim=1).t()
        return self.scale * (cos - self.margin * F.one_hot(labels, cos.shape[1]))


@torch.no_grad()
def embed_all(net: nn.Module, images: torch.Tensor, batch: int = 256) -> torch.Tensor:
    """Unit embeddings of uint8 [N,3,S,S] faces, in eval mode."""
    was = net.training
    net.eval()
    out = torch.cat([net(as_input(images[i:i + batch])) for i in range(0, len(images), batch)])
    net.train(was)
    return out


@dataclass
class IdentityScore:
    faces: int
    people: int
    top1: float
    same: float  # mean cosine between two faces of one person
    different: float  # and of two people


def score_identity(net: nn.Module, val_faces) -> IdentityScore:
    """Leave-one-out on the validation faces: the share whose most similar other face is the same person, and
    the mean cosine of two faces of one person and of two people."""
    e = embed_all(net, val_faces.images)
    labels = val_faces.labels
    sim = e @ e.t()
    same = labels[:, None] == labels[None, :]
    off = ~torch.eye(len(labels), dtype=torch.bool)
    top1 = (labels[sim.masked_fill(~off, -2.0).argmax(1)] == labels).float().mean().item()
    return IdentityScore(len(labels), val_faces.classes, top1, sim[same & off].mean().item(),
                         sim[~same].mean().item())


@dataclass
class IdentityRun:
    run_dir: Path
    steps: int
    images: int
    seconds: float
    loss: float
    score: IdentityScore | None


class _IdentityHooks(Hooks):
    def __init__(self, cfg: Config, run_dir: Path, net: IdentityNet, head: CosFaceHead, opt, sched, device,
                 val_faces, writer, bar):
        self.cfg, self.run_dir, self.net, self.head, self.opt, self.sched = cfg, run_dir, net, head, opt, sched
        self.device, self.val_faces, self.writer, self.bar = device, val_faces, writer, bar
        self.loss, self.accuracy, self.score = float("nan"), float("nan"), None
        self.meta = {"config": config_mod.to_dict(cfg.identity), "trained": True,
                     "identities": head.centres.shape[0]}

    def step(self, batch: dict, step: int) -> float:
        x, y = batch["image"].to(self.device), batch["labels"].to(self.device)
        logits = self.head(self.net(x), y)
        loss = F.cross_entropy(logits, y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.loss = loss.item()
        self.accuracy = (logits.argmax(1) == y).float().mean().item()
        return self.loss

    def after_step(self, state: RunState, batch: dict, result, at_checkpoint: bool) -> None:
        self.sched.step()
        self.bar.update(1)
        it, step = self.cfg.identity_train, state.step
        if step % it.log_every == 0 or step == it.steps:
            for name, value in (("loss", self.loss), ("train_top1", self.accuracy),
                                ("lr", self.sched.get_last_lr()[0]),
                                ("images_per_s", state.images / max(state.seconds, 1e-9))):
                self.writer.add_scalar(f"identity/{name}", value, step)
            self.bar.set_postfix(loss=f"{self.loss:.3f}", acc=f"{self.accuracy:.2f}")
            log.info("step %d loss %.3f train top-1 %.3f", step, self.loss, self.accuracy)
        if at_checkpoint and self.val_faces is not None:
            self.score = score_identity(self.net, self.val_faces)
            for name in ("top1", "same", "different"):
                self.writer.add_scalar(f"identity/val_{name}", getattr(self.score, name), step)
            log.info("step %d validation: nearest-face top-1 %.3f on %d faces of %d people; cosine same %.3f, "
                     "different %.3f", step, self.score.top1, self.score.faces, self.score.people,
                     self.score.same, self.score.different)

    def save(self, state: RunState) -> None:
        state.scheduler = self.sched.state_dict()
        ck.save_checkpoint(self.run_dir, {"identity": (self.net, {**self.meta, "step": state.step}),
                                          "identity_head": (self.head, {"step": state.step})},
                           {"identity": self.opt}, state, keep=self.cfg.train.keep_checkpoints)


def identity_run_config(preset: str | None, overrides: list[str], run_dir: str | Path, resume: bool) -> Config:
    """A resumed run trains on with the config it started with (its ``config.toml``), a new one with ``preset``."""
    source = RunFolder(run_dir).config_toml if resume else preset
    return config_mod.load_config(str(source) if source is not None else None, overrides)


def train_identity(cfg: Config, roots: list[str | Path], run_dir: str | Path, val_root: str | Path | None = None,
                   resume: bool = False, progress: bool = True) -> IdentityRun:
    it = cfg.identity_train
    run_dir = Path(run_dir)
    device = runtime.start(cfg.runtime)
    threads = max(1, torch.get_num_threads())
    faces = load_faces(labelled_files(roots, "train"), cfg.identity.input_size, threads)
    val_faces = load_faces(labelled_files([val_root], "val"), cfg.identity.input_size, threads) if val_root else None
    log.info("%d training faces of %d people%s", len(faces.labels), faces.classes,
             f"; {len(val_faces.labels)} validation faces of {val_faces.classes}" if val_faces else "")

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.train.seed)
        net = IdentityNet(cfg.identity)
        head = CosFaceHead(cfg.identity.embed_dim, faces.classes, it.margin, it.scale)
    net, head = net.to(device).train(), head.to(device)
    params = [*net.parameters(), *head.parameters()]
    opt = torch.optim.AdamW(params, lr=it.lr, weight_decay=it.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=it.lr, total_steps=it.steps, pct_start=0.1)

    run, state = begin_network_run(cfg, run_dir, resume, {"identity": net, "identity_head": head}, {"identity": opt},
                                   sched)

    from torch.utils.tensorboard import SummaryWriter
    from tqdm import tqdm

    writer = SummaryWriter(str(run.tb), purge_step=state.step + 1 if resume else None)
    bar = tqdm(total=it.steps, initial=state.step, desc="identity", unit="step", disable=not progress)
    hooks = _IdentityHooks(cfg, run_dir, net, head, opt, sched, device, val_faces, writer, bar)
    drive(state, batches(faces, it.batch_size, cfg.train.seed, state.step), hooks, total=it.steps,
          ckpt_every=it.ckpt_every, saved=state.step)
    bar.close()
    writer.close()
    score = hooks.score
    result = {"finished": True, "stage": None, "steps": state.step, "images": state.images,
              "seconds": state.seconds, "loss": hooks.loss,
              **({"val_top1": score.top1, "val_same": score.same, "val_different": score.different} if score else {})}
    run.finish(result, RunFolder.weights_file(run.latest(), "identity"), "identity")
    return IdentityRun(run_dir, state.step, state.images, state.seconds, hooks.loss, score)
