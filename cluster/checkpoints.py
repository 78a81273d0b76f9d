"""One cluster checkpoint = one Ray Train checkpoint folder, merged from every rank's report.

The layout of facecomp.train.checkpoint (weights files and ``state.json``, written by rank 0), plus:

  ds_generator/, ds_d_local/, ds_d_global/   DeepSpeed's save_checkpoint (model, optimizer, each rank's ZeRO shard)
  loader_rank0000.txt, ...                   each rank's DALI reader position (text; data.loader=dali only)

The safetensors files and state.json make the folder a facecomp checkpoint: ``facecomp complete
--model``, ``export`` and ``--init`` of the next stage read those and nothing else. DeepSpeed's
files are pickles: only :func:`restore` loads them, and only from the checkpoint Ray Train hands
back for this run (its own storage), never from a path a user names. Checkpoints from before the
DeepSpeed engines were named like the modules keep the generator's engine in ``ds_g/``; they still restore.
"""

from __future__ import annotations

from pathlib import Path

from facecomp.config import Config
from facecomp.train import checkpoint as ck
from facecomp.train.checkpoint import RunState
from facecomp.train.loop import weights_meta

from .deepspeed_models import DeepSpeedModels

DS_TAG = "ds"  # one DeepSpeed tag per folder: each Ray checkpoint is its own folder
LEGACY_DS = {"generator": "ds_g"}


def save(wrapped: DeepSpeedModels, out: Path, rank: int, cfg: Config, state: RunState) -> None:
    """Every rank calls this (DeepSpeed's save is collective: each rank writes its own ZeRO shard)."""
    for name, engine in wrapped.updaters().items():
        engine.save_checkpoint(str(out / f"ds_{name}"), tag=DS_TAG)
    if rank == 0:
        mods = {name: (module, weights_meta(cfg, name, state.stage, state.step))
                for name, module in wrapped.modules().items()}
        ck.write_checkpoint(out, mods, {}, state)


def restore(wrapped: DeepSpeedModels, ckpt: Path) -> None:
    """Load every engine (weights, optimizer, ZeRO shard of this rank) from this run's own checkpoint."""
    for name, engine in wrapped.updaters().items():
        folder = ckpt / f"ds_{name}"
        if not folder.is_dir() and name in LEGACY_DS:
            folder = ckpt / LEGACY_DS[name]
        path, _ = engine.load_checkpoint(str(folder), tag=DS_TAG, load_optimizer_states=True,
                                         load_lr_scheduler_states=False)
        if path is None:
            raise ValueError(f"{folder}: DeepSpeed found no checkpoint to load")


def save_loader_state(out: Path, rank: int, loader) -> None:
    """This rank's input position, where the loader has one (DALI's reader; the torch loader resumes from
    the step alone). Every rank reports its own folder and Ray Train merges them into one checkpoint."""
    if hasattr(loader, "state"):
        (out / f"loader_rank{rank:04d}.txt").write_text(loader.state())


def loader_state(ckpt: Path, rank: int, world_size: int, state: RunState) -> str | None:
    """The position this rank saved, if the run had as many ranks then (shards differ otherwise)."""
    path = ckpt / f"loader_rank{rank:04d}.txt"
    if not path.is_file() or state.world_size != world_size:
        return None
    return path.read_text()
