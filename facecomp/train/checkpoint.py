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

What long runs meet: a full disk while saving leaves the previous checkpoint as it was and raises
:class:`DiskFull` (nothing half-written stays); ``--resume`` takes the newest checkpoint that verifies
(:func:`resume_checkpoint`: checksums, a parsable ``state.json``, finite weights) and says which it
passed over; keep-k pruning never deletes a protected checkpoint nor the newest one whose weights were
finite when written (``RunState.finite``).
"""

from __future__ import annotations

import dataclasses
import errno
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

# The weights-file format lives in the leaf facecomp.weights; a checkpoint is a folder of such files.
from facecomp.weights import _atomic_write, load_tensors, save_tensors

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
        data = json.loads((Path(ckpt) / "state.json").read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{ckpt}: unreadable state.json ({e})") from None
    if not isinstance(data, dict):  # valid JSON, but not a state (a garbled or overwritten file)
        raise ValueError(f"{ckpt}: unreadable state.json (a JSON {type(data).__name__}, not an object)")
    return data


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
        save_tensors(folder / f"{name}.safetensors", tensors, kind, meta)
    for name, opt in optimizers.items():
        tensors, groups = optimizer_tensors(opt)
        save_tensors(folder / f"optim_{name}.safetensors", tensors, f"optim_{name}", groups)
    state = dataclasses.replace(state, finite=finite)
    (folder / "state.json").write_text(json.dumps(state.to_json(), indent=2))


EXIT_DISK_FULL = 74  # EX_IOERR of sysexits.h: `facecomp train` stopped because a checkpoint did not fit


class DiskFull(OSError):
    """A checkpoint did not fit on the disk (or in the quota). The staged files were removed, so the run's
    checkpoints are as they were before this save; ``last_good`` is the one to resume from (None: none yet)."""

    def __init__(self, ckpt: Path, step: int, last_good: Path | None):
        self.ckpt, self.step, self.last_good = ckpt, step, last_good
        good = f"the last good checkpoint is {last_good}" if last_good else "no checkpoint of this run was written yet"
        super().__init__(errno.ENOSPC, f"the disk is full: the checkpoint of step {step} did not fit in {ckpt.parent} "
                                       f"and was not written; {good}")

    def __str__(self) -> str:  # the message alone, without OSError's "[Errno 28]"
        return self.strerror


def is_disk_full(e: BaseException) -> bool:
    return isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT)


def save_checkpoint(run_dir: str | Path, modules: dict[str, tuple[nn.Module, dict]],
                    optimizers: dict[str, torch.optim.Optimizer], state: RunState, keep: int = 3,
                    protect: frozenset[int] = frozenset()) -> Path:
    """Write the checkpoint of ``state.step`` atomically (staged, then renamed), point ``latest`` at
    it, and delete all but the newest ``keep`` checkpoints and those whose step is in ``protect`` (the
    best on validation so far)."""
    ckpt_root = Path(run_dir) / "checkpoints"
    final = ckpt_root / f"step_{state.step:07d}"
    try:
        ckpt_root.mkdir(parents=True, exist_ok=True)
        _write_staged(ckpt_root, final, modules, optimizers, state)
    except OSError as e:
        if is_disk_full(e):
            raise DiskFull(final, state.step, last_good(ckpt_root)) from e
        raise
    try:
        _atomic_write(ckpt_root / "latest", lambda tmp: Path(tmp).write_text(final.name + "\n"))
    except OSError as e:
        if not is_disk_full(e):
            raise
        # A complete checkpoint that `latest` does not name is one that readers of `latest` pass over
        # and keep-k later prunes as old: drop it, so the newest checkpoint is again the one `latest` names.
        shutil.rmtree(final, ignore_errors=True)
        raise DiskFull(final, state.step, last_good(ckpt_root)) from e
    prune(ckpt_root, keep, protect)
    return final


def _write_staged(ckpt_root: Path, final: Path, modules: dict[str, tuple[nn.Module, dict]],
                  optimizers: dict[str, torch.optim.Optimizer], state: RunState) -> None:
    """The checkpoint written into a staging folder and renamed to ``final``: a reader (or a crash, or a
    full disk) never meets a half-written ``step_*`` folder; on any failure the staging folder goes."""
    stage_dir = Path(tempfile.mkdtemp(dir=ckpt_root, prefix=".staging_"))
    try:
        write_checkpoint(stage_dir, modules, optimizers, state)
        if final.exists():
            shutil.rmtree(final)
        os.replace(stage_dir, final)
    except BaseException:
        shutil.rmtree(stage_dir, ignore_errors=True)
        raise


def prune(ckpt_root: Path, keep: int, protect: frozenset[int] = frozenset()) -> None:
    """Delete all but the newest ``keep`` checkpoints, never one whose step is in ``protect`` nor the
    newest one written with finite weights: after a stretch of non-finite checkpoints (a loop without
    the divergence guard), the last result worth resuming from must still be there."""
    if keep <= 0:
        return
    folders = sorted(ckpt_root.glob("step_*"))
    good = last_good(ckpt_root)
    for old in folders[:-keep]:
        if checkpoint_step(old) not in protect and old != good:
            shutil.rmtree(old, ignore_errors=True)


def last_good(ckpt_root: Path) -> Path | None:
    """The newest checkpoint folder whose ``state.json`` says its weights were finite; without such
    marks (checkpoints from before they were recorded), the one ``latest`` names."""
    for folder in sorted(ckpt_root.glob("step_*"), reverse=True):
        try:
            if json.loads((folder / "state.json").read_text()).get("finite") is True:
                return folder
        except (OSError, ValueError, AttributeError):
            continue  # unreadable: not known to be good
    try:
        named = ckpt_root / (ckpt_root / "latest").read_text().strip()
    except OSError:
        return None
    return named if (named / "state.json").is_file() else None


def checkpoint_step(ckpt: Path) -> int:
    """The step of a ``step_NNNNNNN`` checkpoint folder."""
    return int(Path(ckpt).name.removeprefix("step_"))


def checkpoint_steps(run_dir: str | Path) -> set[int]:
    """Steps of the complete checkpoints of a run on disk."""
    root = Path(run_dir) / "checkpoints"
    return {checkpoint_step(p) for p in root.glob("step_*") if (p / "state.json").is_file()}


# --- resuming -------------------------------------------------------------------------------------

def verify_checkpoint(ckpt: Path, needs: Iterable[str] = ()) -> str | None:
    """Why a checkpoint folder cannot be resumed from (None: it can): ``state.json`` must parse as a
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
        names = {f"{stem}.safetensors", f"{LEGACY_FILES.get(stem, stem)}.safetensors"}
        if not any((ckpt / name).is_file() for name in names):
            return f"{stem}.safetensors is missing"
    for path in sorted(ckpt.glob("*.safetensors")):
        try:
            tensors, _ = load_tensors(path)
        except ValueError as e:
            return within(e)
        if not path.name.startswith("optim_") and not all_finite(tensors.values()):
            return f"{path.name} holds non-finite weights"
    return None


def run_checkpoints(run_dir: Path) -> list[Path]:
    """A run's checkpoint folders, newest first: a plain run's ``checkpoints/step_*`` (or a cluster run's
    ``step_*``), half-written ones included (they are what :func:`verify_checkpoint` is for)."""
    run_dir = Path(run_dir)
    plain = sorted((run_dir / "checkpoints").glob("step_*"), key=checkpoint_step, reverse=True)
    return plain or sorted(run_dir.glob("step_*"), key=checkpoint_step, reverse=True)


def resume_checkpoint(run_dir: str | Path, needs: Iterable[str] = (), warn: bool = True) -> Path:
    """The checkpoint a run resumes from: its newest one that verifies (:func:`verify_checkpoint`).

    A damaged newest checkpoint (a truncated or bit-flipped weights file, a garbled ``state.json``, weights
    that are not finite) is passed over for the previous complete one, said in one warning line (unless
    ``warn`` is False: a caller that only peeks before the run itself resumes). ``run_dir`` may also be a
    checkpoint folder: then it alone is verified. None verifies: a ``ValueError`` listing why.
    """
    run_dir, needs = Path(run_dir), tuple(needs)
    candidates = [run_dir] if (run_dir / "state.json").is_file() else run_checkpoints(run_dir)
    if not candidates:
        raise ValueError(f"{run_dir}: no checkpoint here (expected a run directory or a checkpoint folder)")
    bad: list[str] = []
    for ckpt in candidates:
        why = verify_checkpoint(ckpt, needs)
        if why is None:
            if bad and warn:
                log.warning("passing over damaged checkpoint(s) %s; resuming from %s", "; ".join(bad), ckpt)
            return ckpt
        bad.append(f"{ckpt} ({why})")
    raise ValueError(f"{run_dir}: no checkpoint to resume from verifies: {'; '.join(bad)}")
