"""One cluster checkpoint = one Ray Train checkpoint folder, merged from every rank's report:

  ds_g/, ds_d_local/, ds_d_global/   DeepSpeed's save_checkpoint (model + ZeRO shard of each rank)
  generator.safetensors, d_local.safetensors, d_global.safetensors   facecomp weights (rank 0)
  state.json                          stage, step, config, restarts (rank 0)
  loader_rank0000.txt, ...            each rank's DALI reader position (text; data.loader=dali only)

The safetensors files and state.json make the folder a facecomp checkpoint: ``facecomp complete
--model``, ``export`` and ``--init`` of the next stage read those and nothing else. DeepSpeed's
files are pickles: only :func:`restore` loads them, and only from the checkpoint Ray Train hands
back for this run (its own storage), never from a path a user names.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from facecomp.config import Config
from facecomp.train import checkpoint as ck
from facecomp.train.loop import weights_meta

from .engines import ENGINES, Engines

DS_TAG = "ds"  # one DeepSpeed tag per folder: each Ray checkpoint is its own folder


def dir_name(step: int) -> str:
    return f"step_{step:07d}"


def save(engines: Engines, out: Path, rank: int, cfg: Config, stage: int, step: int, state: dict[str, Any]) -> None:
    """Every rank calls this (DeepSpeed's save is collective: each rank writes its own ZeRO shard)."""
    for name, engine in engines.updaters().items():
        engine.save_checkpoint(str(out / f"ds_{name}"), tag=DS_TAG)
    if rank != 0:
        return
    for name, module in engines.modules().items():
        # fp32 whatever the engine trains in (bf16 engines hold bf16 weights): the files facecomp reads
        tensors = {k: v.float() if v.is_floating_point() else v for k, v in module.state_dict().items()}
        ck.save_tensors(out / f"{name}.safetensors", tensors, name, weights_meta(cfg, name, stage, step))
    (out / "state.json").write_text(json.dumps(state, indent=2))


def restore(engines: Engines, ckpt: Path, stage: int) -> dict[str, Any]:
    """Load every engine (weights, optimizer, ZeRO shard of this rank) from this run's own checkpoint."""
    state = ck.read_state(ckpt)
    if state["stage"] != stage:
        raise ValueError(f"{ckpt} holds a stage-{state['stage']} run; cannot resume it as stage {stage}")
    for name in ENGINES:
        engine = getattr(engines, name)
        path, _ = engine.load_checkpoint(str(ckpt / f"ds_{name}"), tag=DS_TAG, load_optimizer_states=True,
                                         load_lr_scheduler_states=False)
        if path is None:
            raise ValueError(f"{ckpt / f'ds_{name}'}: DeepSpeed found no checkpoint to load")
    return state


def save_loader_state(out: Path, rank: int, loader) -> None:
    """This rank's input position, where the loader has one (DALI's reader; the torch loader resumes from
    the step alone). Every rank reports its own folder and Ray Train merges them into one checkpoint."""
    if hasattr(loader, "state"):
        (out / f"loader_rank{rank:04d}.txt").write_text(loader.state())


def loader_state(ckpt: Path, rank: int, world_size: int, state: dict[str, Any]) -> str | None:
    """The position this rank saved, if the run had as many ranks then (shards differ otherwise)."""
    path = ckpt / f"loader_rank{rank:04d}.txt"
    if not path.is_file() or state.get("world_size") != world_size:
        return None
    return path.read_text()


def latest(run_dir: str | Path) -> Path:
    """The newest complete checkpoint of a cluster run directory (or the folder itself if it is one)."""
    run_dir = Path(run_dir)
    if (run_dir / "state.json").is_file():
        return run_dir
    found = sorted(p for p in run_dir.glob("step_*") if (p / "state.json").is_file())
    if not found:
        raise ValueError(f"{run_dir}: no cluster checkpoint here (expected step_*/state.json)")
    return found[-1]
