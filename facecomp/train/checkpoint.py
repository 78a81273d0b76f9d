"""What a checkpoint holds: weights files (facecomp.weights), optimizer state and one JSON state.

A checkpoint folder holds ``<module>.safetensors`` for each trained module (``generator``, ``d_local``,
``d_global``, ``generator_ema``; ``parsing`` for the parsing network), ``optim_<module>.safetensors`` for
each torch optimizer, and ``state.json`` (one :class:`RunState`). Where the folders go, which is newest,
what is pruned and what a run resumes from is the run folder's (facecomp.weights.run_folder.RunFolder):
this module writes and verifies the contents. A cluster run's folders add DeepSpeed's ``ds_<module>/``
(the optimizer state lives there, so they have no ``optim_*`` files).

Checkpoints written before this layout still load: ``optim_g.safetensors`` is the generator's optimizer
and a ``state.json`` of the earlier plain, cluster and parsing schemas reads as a RunState.

What long runs meet: a full disk while saving leaves the previous checkpoint as it was and raises
:class:`~facecomp.weights.run_folder.DiskFull`; ``--resume`` takes the newest checkpoint that verifies
(:func:`resume_checkpoint`: checksums, a readable ``state.json``, finite weights) and says which it
passed over; keep-k pruning never deletes a protected checkpoint nor the newest one whose weights were
finite when written (``RunState.finite``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

# The weights-file format and the run folder's layout live in the leaf facecomp.weights.
from facecomp.weights import RunFolder, load_tensors, save_tensors

log = logging.getLogger(__name__)

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
    # every float weight of the checkpoint's modules was finite when written (None: written before this was
    # recorded); pruning keeps the newest finite checkpoint, resume passes over non-finite ones
    finite: bool | None = None
    lr_scale: float = 1.0  # every learning rate times this: lowered by each rollback (train.rollbacks)
    rollbacks: list[dict] = field(default_factory=list)  # each: the step that diverged, the step gone back to, why

    def to_json(self) -> dict[str, Any]:
        return {"format": STATE_FORMAT, **dataclasses.asdict(self)}

    @classmethod
    def from_json(cls, data: dict[str, Any], source: str | Path = RunFolder.STATE) -> RunState:
        fmt = data.get("format")
        if fmt != STATE_FORMAT and fmt not in LEGACY_STATE_FORMATS:
            raise ValueError(f"{source}: state.json of format {fmt!r}, which this facecomp does not read "
                             f"(it reads {STATE_FORMAT} and earlier)")
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{"stage": None, **{k: v for k, v in data.items() if k in names}})

    @classmethod
    def read(cls, ckpt: str | Path) -> RunState:
        return cls.from_json(read_state(Path(ckpt)), RunFolder.state_file(ckpt))

    def describe(self) -> str:
        return "a parsing- or identity-network run" if self.stage is None else f"a stage-{self.stage} run"


def read_state(ckpt: Path) -> dict[str, Any]:
    """The raw ``state.json`` of a checkpoint folder (:meth:`RunState.read` for the typed one)."""
    try:
        data = json.loads(RunFolder.state_file(ckpt).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{ckpt}: unreadable state.json ({e})") from None
    if not isinstance(data, dict):  # valid JSON, but not a state (a garbled or overwritten file)
        raise ValueError(f"{ckpt}: unreadable state.json (a JSON {type(data).__name__}, not an object)")
    return data


# --- optimizer state as flat tensors + JSON ---------------------------------------------------

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
        path = RunFolder.optimizer_file(ckpt, name)
        tensors, meta = load_tensors(path, path.stem)
        load_optimizer(opt, tensors, meta["param_groups"])


# --- checkpoints ------------------------------------------------------------------------------

def all_finite(tensors: Iterable[torch.Tensor]) -> bool:
    """No NaN or infinity in any floating-point tensor."""
    return all(bool(torch.isfinite(t).all()) for t in tensors if t.is_floating_point())


def write_checkpoint(folder: Path, modules: dict[str, tuple[nn.Module, dict]],
                     optimizers: dict[str, torch.optim.Optimizer], state: RunState) -> None:
    """The files of the layout into ``folder``: weights in float32 whatever a module trains in (the
    files facecomp reads), optimizer states, and ``state.json`` (with ``finite`` measured on the weights
    written, not taken on trust: pruning and resume rely on it).

    modules: name -> (module, metadata for its weights file; ``kind`` there when it differs from name).
    """
    finite = True
    for name, (module, meta) in modules.items():
        meta = dict(meta)
        kind = meta.pop("kind", name)  # generator_ema.safetensors holds 'generator' weights
        # on the host here (save_tensors copies there anyway), so the finiteness check costs no device syncs
        tensors = {k: (v.float() if v.is_floating_point() else v).detach().cpu()
                   for k, v in module.state_dict().items()}
        finite = finite and all_finite(tensors.values())
        save_tensors(RunFolder.weights_file(folder, name), tensors, kind, meta)
    for name, opt in optimizers.items():
        tensors, groups = optimizer_tensors(opt)
        save_tensors(RunFolder.optimizer_file(folder, name), tensors, RunFolder.optimizer_stem(name), groups)
    state = dataclasses.replace(state, finite=finite)
    RunFolder.state_file(folder).write_text(json.dumps(state.to_json(), indent=2))


def save_checkpoint(run_dir: str | Path, modules: dict[str, tuple[nn.Module, dict]],
                    optimizers: dict[str, torch.optim.Optimizer], state: RunState, keep: int = 3,
                    protect: frozenset[int] = frozenset()) -> Path:
    """The checkpoint of ``state.step`` into the run (:meth:`RunFolder.save`: staged, renamed, ``latest``,
    keep-k but never the steps in ``protect`` nor the last finite one; a full disk raises ``DiskFull``)."""
    return RunFolder(run_dir).save(state.step, lambda folder: write_checkpoint(folder, modules, optimizers, state),
                                   keep, protect)


# --- resuming -------------------------------------------------------------------------------------

def verify_checkpoint(ckpt: Path, needs: Iterable[str] = ()) -> str | None:
    """Why a checkpoint folder cannot be resumed from (None: it can): ``state.json`` must read as a
    RunState not marked non-finite, each ``needs`` file (stems, e.g. ``generator``, ``optim_generator``)
    must be there, and every weights file must load with its checksum and hold only finite numbers."""
    def within(e: Exception) -> str:  # the reason without the folder's path, which the caller names
        return str(e).replace(f"{ckpt}/", "").replace(f"{ckpt}: ", "")

    try:
        state = RunState.read(ckpt)
    except ValueError as e:
        return within(e)
    if state.finite is False:
        return "its weights were not finite when written"
    for stem in needs:
        if not RunFolder.checkpoint_file(ckpt, stem).is_file():
            return f"{stem}.safetensors is missing"
    for path in RunFolder.checkpoint_files(ckpt):
        try:
            tensors, _ = load_tensors(path)
        except ValueError as e:
            return within(e)
        if not RunFolder.is_optimizer_file(path) and not all_finite(tensors.values()):
            return f"{path.name} holds non-finite weights"
    return None


def resume_checkpoint(run_dir: str | Path, needs: Iterable[str] = (), warn: bool = True) -> Path:
    """The checkpoint a run resumes from: its newest one that verifies (:func:`verify_checkpoint`).

    A damaged newest checkpoint (a truncated or bit-flipped weights file, a garbled ``state.json``, weights
    that are not finite) is passed over for the previous complete one, said in one warning line (unless
    ``warn`` is False). ``run_dir`` may also be a checkpoint folder: then it alone is verified.
    """
    needs = tuple(needs)
    return RunFolder(run_dir).resume(lambda ckpt: verify_checkpoint(ckpt, needs), warn)
