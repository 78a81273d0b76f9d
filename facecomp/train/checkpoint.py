"""Checkpoints: a folder of weights files (facecomp.weights), optimizer state and one JSON state.

One layout for every loop. A checkpoint folder ``step_0001000/`` holds ``<module>.safetensors`` for
each trained module (``generator``, ``d_local``, ``d_global``, ``generator_ema``; ``parsing`` for the
parsing network), ``optim_<module>.safetensors`` for each torch optimizer, and ``state.json`` (one
:class:`RunState`). Plain runs keep their folders under ``RUN/checkpoints/``, written atomically, with
``RUN/checkpoints/latest`` naming the newest complete one; a cluster run's folders are Ray Train's,
``RUN/step_*/``, and add DeepSpeed's ``ds_<module>/`` beside the same files (the optimizer state lives
there, so they have no ``optim_*`` files).

Checkpoints written before this layout still load: ``optim_g.safetensors`` is the generator's optimizer
and a ``state.json`` of the earlier plain, cluster and parsing schemas reads as a RunState.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

# The weights-file format lives in the leaf facecomp.weights; a checkpoint is a folder of such files.
from facecomp.weights import _atomic_write, load_tensors, save_tensors

# --- state.json -------------------------------------------------------------------------------

STATE_FORMAT = "facecomp-state/2"
# Before format 2: the plain loop's state had no "format", the cluster's said "facecomp-cluster/1",
# the parsing loop's had neither a format nor a stage. All three read as a RunState.
LEGACY_STATE_FORMATS = (None, "facecomp-cluster/1")


@dataclass(kw_only=True)
class RunState:
    """Where a run stands at a checkpoint: what every loop writes as ``state.json``, one schema.

    Every key is written by every loop; a key a loop does not use is null (or empty).
    """

    stage: int | None  # 1..3; None: the parsing network's run (facecomp parsing train)
    step: int = 0  # steps done in this stage
    images: int = 0  # images trained on, over all ranks
    seconds: float = 0.0  # time spent in steps
    wall_seconds: float = 0.0  # wall clock of every session of the run (loading, logs, checkpoints included)
    skipped: int = 0  # unreadable images left out so far (this rank's)
    world_size: int = 1  # data-parallel ranks
    restarts: list[int] = field(default_factory=list)  # the steps this run was resumed at
    validation: list[dict] = field(default_factory=list)  # validation records up to this step
    best: dict | None = None  # the best (step, variant) among checkpoints on disk (facecomp.train.validation)
    loader_state: str | None = None  # a plain run's DALI reader position (cluster ranks: loader_rank*.txt)
    scheduler: dict | None = None  # the parsing run's OneCycleLR state
    deepspeed: str | None = None  # a cluster run's DeepSpeed config (cluster.deepspeed)
    config: dict[str, Any] = field(default_factory=dict)  # the full config that wrote the checkpoint

    def to_json(self) -> dict[str, Any]:
        return {"format": STATE_FORMAT, **dataclasses.asdict(self)}

    @classmethod
    def from_json(cls, data: dict[str, Any], source: str | Path = "state.json") -> RunState:
        fmt = data.get("format")
        if fmt != STATE_FORMAT and fmt not in LEGACY_STATE_FORMATS:
            raise ValueError(f"{source}: state.json of format {fmt!r}, which this facecomp does not read "
                             f"(it reads {STATE_FORMAT} and earlier)")
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{"stage": None, **{k: v for k, v in data.items() if k in names}})

    @classmethod
    def read(cls, ckpt: str | Path) -> RunState:
        return cls.from_json(read_state(Path(ckpt)), Path(ckpt) / "state.json")

    def describe(self) -> str:
        return "a parsing-network run" if self.stage is None else f"a stage-{self.stage} run"


def read_state(ckpt: Path) -> dict[str, Any]:
    """The raw ``state.json`` of a checkpoint folder (:meth:`RunState.read` for the typed one)."""
    try:
        return json.loads((Path(ckpt) / "state.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{ckpt}: unreadable state.json ({e})") from None


# --- optimizer state as flat tensors + JSON ---------------------------------------------------

# File names of the layout before optimizers were named like their modules.
LEGACY_FILES = {"optim_generator": "optim_g"}


def optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    sd = opt.state_dict()
    tensors = {f"{idx}.{name}": v for idx, st in sd["state"].items() for name, v in st.items()}
    return tensors, {"param_groups": sd["param_groups"]}


def load_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], groups: list[dict]) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, v in tensors.items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = v
    opt.load_state_dict({"state": state, "param_groups": groups})


def load_optimizers(ckpt: Path, optimizers: dict[str, torch.optim.Optimizer]) -> None:
    """Each optimizer from ``optim_<name>.safetensors`` (or its name in the earlier layout)."""
    for name, opt in optimizers.items():
        kind = f"optim_{name}"
        if not (ckpt / f"{kind}.safetensors").is_file() and kind in LEGACY_FILES:
            kind = LEGACY_FILES[kind]
        tensors, meta = load_tensors(ckpt / f"{kind}.safetensors", kind)
        load_optimizer(opt, tensors, meta["param_groups"])


# --- checkpoints ------------------------------------------------------------------------------

def write_checkpoint(folder: Path, modules: dict[str, tuple[nn.Module, dict]],
                     optimizers: dict[str, torch.optim.Optimizer], state: RunState) -> None:
    """The files of the layout into ``folder``: weights in float32 whatever a module trains in (the
    files facecomp reads), optimizer states, and ``state.json``.

    modules: name -> (module, metadata for its weights file; ``kind`` there when it differs from name).
    """
    for name, (module, meta) in modules.items():
        meta = dict(meta)
        kind = meta.pop("kind", name)  # generator_ema.safetensors holds 'generator' weights
        tensors = {k: v.float() if v.is_floating_point() else v for k, v in module.state_dict().items()}
        save_tensors(folder / f"{name}.safetensors", tensors, kind, meta)
    for name, opt in optimizers.items():
        tensors, groups = optimizer_tensors(opt)
        save_tensors(folder / f"optim_{name}.safetensors", tensors, f"optim_{name}", groups)
    (folder / "state.json").write_text(json.dumps(state.to_json(), indent=2))


def save_checkpoint(run_dir: str | Path, modules: dict[str, tuple[nn.Module, dict]],
                    optimizers: dict[str, torch.optim.Optimizer], state: RunState, keep: int = 3,
                    protect: frozenset[int] = frozenset()) -> Path:
    """Write the checkpoint of ``state.step`` atomically (staged, then renamed), point ``latest`` at
    it, and delete all but the newest ``keep`` checkpoints and those whose step is in ``protect`` (the
    best on validation so far)."""
    ckpt_root = Path(run_dir) / "checkpoints"
    ckpt_root.mkdir(parents=True, exist_ok=True)
    final = ckpt_root / f"step_{state.step:07d}"
    stage_dir = Path(tempfile.mkdtemp(dir=ckpt_root, prefix=".staging_"))
    try:
        write_checkpoint(stage_dir, modules, optimizers, state)
        if final.exists():
            shutil.rmtree(final)
        os.replace(stage_dir, final)
    except BaseException:
        shutil.rmtree(stage_dir, ignore_errors=True)
        raise
    _atomic_write(ckpt_root / "latest", lambda tmp: Path(tmp).write_text(final.name + "\n"))
    for old in sorted(ckpt_root.glob("step_*"))[:-keep] if keep > 0 else []:
        if checkpoint_step(old) not in protect:
            shutil.rmtree(old, ignore_errors=True)
    return final


def checkpoint_step(ckpt: Path) -> int:
    """The step of a ``step_NNNNNNN`` checkpoint folder."""
    return int(Path(ckpt).name.removeprefix("step_"))


def checkpoint_steps(run_dir: str | Path) -> set[int]:
    """Steps of the complete checkpoints of a run on disk."""
    root = Path(run_dir) / "checkpoints"
    return {checkpoint_step(p) for p in root.glob("step_*") if (p / "state.json").is_file()}
