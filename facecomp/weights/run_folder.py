"""A run folder and the one class that knows its layout: every path a run writes or reads is built here.

::

    RUN/
      config.toml, config.json     the config the run was started with (config.json adds the stage)
      tb/                          TensorBoard events
      validation.json              the validation records so far
      checkpoints/step_NNNNNNN/    a plain run's checkpoints, each written staged and renamed
      checkpoints/latest           names the newest complete one
      step_NNNNNNN/                a cluster run's checkpoints (Ray Train's folders, same contents
                                   plus DeepSpeed's ds_<module>/)
      diverged.json                a cluster run's marker: its workers stopped on a divergence
      result.json                  written when the stage finishes: steps, the chosen checkpoint, scores
      generator.safetensors        the finished run's chosen weights (parsing.safetensors for a
                                   parsing-network run): what ``--model RUN`` and ``--init RUN`` read

    A checkpoint folder:
      <module>.safetensors         generator, d_local, d_global (parsing for the parsing network)
      generator_ema.safetensors    the generator's moving average, when train.ema > 0
      optim_<module>.safetensors   each torch optimizer's state (optim_g: the generator's, earlier layout)
      state.json                   where the run stood (facecomp.train.checkpoint.RunState)

What a checkpoint *holds* is the trainer's business (facecomp.train.checkpoint writes and verifies the
contents); where it goes, which one is newest, which may be pruned, which one a run resumes from and
which weights a finished run chose is this class's, for the plain loop, the cluster, the CLI and
:func:`facecomp.weights.resolve` alike. Like the rest of facecomp.weights it imports nothing of facecomp
beyond this package, so inference can read runs without importing the trainer.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .files import copy_file, write_json, write_text

log = logging.getLogger(__name__)

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


class RunFolder:
    """One run's folder (or, for the reading side, a single checkpoint folder given in its place)."""

    STATE = "state.json"
    RESULT = "result.json"
    EMA = "generator_ema"  # the module name (and file stem) of the generator's moving average
    # What a run writes, and so what ``--overwrite`` deletes (nothing else a user keeps beside it).
    ITEMS = ("checkpoints", "tb", "config.toml", "config.json", "validation.json", RESULT, "diverged.json",
             "generator.safetensors", "parsing.safetensors")
    # Optimizer files of the layout before optimizers were named like their modules.
    LEGACY_OPTIMIZERS = {"generator": "optim_g"}

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.root)!r})"

    # --- names -----------------------------------------------------------------------------------

    @staticmethod
    def checkpoint_name(step: int) -> str:
        """The folder name of the checkpoint of ``step`` (plain runs; the cluster names Ray's folders so)."""
        return f"step_{step:07d}"

    @staticmethod
    def step_of(ckpt: str | Path) -> int:
        """The step of a ``step_NNNNNNN`` checkpoint folder."""
        return int(Path(ckpt).name.removeprefix("step_"))

    @classmethod
    def state_file(cls, ckpt: str | Path) -> Path:
        return Path(ckpt) / cls.STATE

    @staticmethod
    def weights_file(ckpt: str | Path, name: str) -> Path:
        """A module's weights in a checkpoint folder (``generator_ema``: the generator's average)."""
        return Path(ckpt) / f"{name}.safetensors"

    @classmethod
    def variant_file(cls, ckpt: str | Path, variant: str) -> Path:
        """The generator weights of a validation variant: ``raw`` or ``ema``."""
        if variant not in ("raw", "ema"):
            raise ValueError(f"unknown generator variant {variant!r} (raw or ema)")
        return cls.weights_file(ckpt, cls.EMA if variant == "ema" else "generator")

    @staticmethod
    def optimizer_stem(name: str) -> str:
        """The file stem (and weights-file kind) of a module's optimizer state."""
        return f"optim_{name}"

    @classmethod
    def optimizer_file(cls, ckpt: str | Path, name: str) -> Path:
        """A module's optimizer state in a checkpoint folder (the earlier layout's name where that is the one
        there)."""
        path = cls.weights_file(ckpt, cls.optimizer_stem(name))
        legacy = cls.LEGACY_OPTIMIZERS.get(name)
        if not path.is_file() and legacy and cls.weights_file(ckpt, legacy).is_file():
            return cls.weights_file(ckpt, legacy)
        return path

    @classmethod
    def is_optimizer_file(cls, path: str | Path) -> bool:
        return Path(path).stem.startswith(cls.optimizer_stem(""))

    @classmethod
    def checkpoint_file(cls, ckpt: str | Path, stem: str) -> Path:
        """A checkpoint's file by its stem (``generator``, ``optim_generator``: the earlier layout's name too)."""
        prefix = cls.optimizer_stem("")
        return cls.optimizer_file(ckpt, stem.removeprefix(prefix)) if stem.startswith(prefix) \
            else cls.weights_file(ckpt, stem)

    @staticmethod
    def checkpoint_files(ckpt: str | Path) -> list[Path]:
        """Every weights and optimizer file of a checkpoint folder."""
        return sorted(Path(ckpt).glob("*.safetensors"))

    @classmethod
    def is_checkpoint(cls, path: str | Path) -> bool:
        return cls.state_file(path).is_file()

    @property
    def config_toml(self) -> Path:
        return self.root / "config.toml"

    @property
    def config_json(self) -> Path:
        return self.root / "config.json"

    @property
    def tb(self) -> Path:
        return self.root / "tb"

    @property
    def validation_file(self) -> Path:
        return self.root / "validation.json"

    @property
    def result_file(self) -> Path:
        return self.root / self.RESULT

    @property
    def diverged_file(self) -> Path:
        return self.root / "diverged.json"

    def published(self, kind: str = "generator") -> Path:
        """The finished run's chosen ``kind`` weights."""
        return self.root / f"{kind}.safetensors"

    # --- checkpoints on disk ---------------------------------------------------------------------

    @property
    def _plain(self) -> Path:
        return self.root / "checkpoints"

    def checkpoint(self, step: int) -> Path:
        """Where a plain run keeps the checkpoint of ``step``."""
        return self._plain / self.checkpoint_name(step)

    def checkpoints(self) -> list[Path]:
        """The run's checkpoint folders, newest first: a plain run's ``checkpoints/step_*`` (or a cluster
        run's ``step_*``), half-written ones included (resume verifies them)."""
        plain = sorted(self._plain.glob("step_*"), key=self.step_of, reverse=True)
        return plain or sorted(self.root.glob("step_*"), key=self.step_of, reverse=True)

    def complete(self) -> list[Path]:
        """The checkpoint folders that have their ``state.json`` (written last), newest first."""
        return [c for c in self.checkpoints() if self.is_checkpoint(c)]

    def steps(self) -> set[int]:
        """Steps of the complete checkpoints on disk."""
        return {self.step_of(c) for c in self.complete()}

    def latest(self) -> Path:
        """The newest complete checkpoint: the folder itself when it is one, the checkpoint a weights file
        lies in, the one ``checkpoints/latest`` names, else the newest complete ``step_*``."""
        path = self.root.parent if self.root.is_file() else self.root
        if self.is_checkpoint(path):
            return path
        pointer = path / "checkpoints" / "latest"
        if pointer.is_file():
            named = path / "checkpoints" / pointer.read_text().strip()
            if self.is_checkpoint(named):
                return named
        found = RunFolder(path).complete()
        if found:
            return found[0]
        raise ValueError(f"{path}: no checkpoint here (expected a run directory or a checkpoint folder)")

    def last_good(self) -> Path | None:
        """The newest checkpoint whose ``state.json`` says its weights were finite; without such marks
        (checkpoints from before they were recorded), the newest complete one."""
        for ckpt in self.checkpoints():
            try:
                if json.loads(self.state_file(ckpt).read_text()).get("finite") is True:
                    return ckpt
            except (OSError, ValueError, AttributeError):
                continue  # unreadable: not known to be good
        try:
            return self.latest()
        except ValueError:
            return None

    # --- writing checkpoints ---------------------------------------------------------------------

    def save(self, step: int, write: Callable[[Path], None], keep: int = 3,
             protect: frozenset[int] = frozenset()) -> Path:
        """The checkpoint of ``step``: ``write(folder)`` fills a staging folder, which is renamed into place
        (a reader, a crash or a full disk never leaves a half-written ``step_*``), ``latest`` is pointed at
        it, and all but the newest ``keep`` are pruned (:meth:`prune`). A full disk raises :class:`DiskFull`
        with the run's checkpoints as they were."""
        final = self.checkpoint(step)
        try:
            self._plain.mkdir(parents=True, exist_ok=True)
            self._write_staged(final, write)
        except OSError as e:
            if is_disk_full(e):
                raise DiskFull(final, step, self.last_good()) from e
            raise
        try:
            write_text(self._plain / "latest", final.name + "\n")
        except OSError as e:
            if not is_disk_full(e):
                raise
            # A complete checkpoint that `latest` does not name is one that readers of `latest` pass over
            # and keep-k later prunes as old: drop it, so the newest checkpoint is again the one `latest` names.
            shutil.rmtree(final, ignore_errors=True)
            raise DiskFull(final, step, self.last_good()) from e
        self.prune(keep, protect)
        return final

    def _write_staged(self, final: Path, write: Callable[[Path], None]) -> None:
        staging = Path(tempfile.mkdtemp(dir=self._plain, prefix=".staging_"))
        try:
            write(staging)
            if final.exists():
                shutil.rmtree(final)
            os.replace(staging, final)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise

    def prune(self, keep: int, protect: frozenset[int] = frozenset()) -> None:
        """Delete all but the newest ``keep`` checkpoints, never one whose step is in ``protect`` (the best on
        validation) nor the newest one written with finite weights: after a stretch of non-finite
        checkpoints, the last result worth resuming from must still be there."""
        if keep <= 0:
            return
        good = self.last_good()
        for old in sorted(self._plain.glob("step_*"), key=self.step_of)[:-keep]:
            if self.step_of(old) not in protect and old != good:
                shutil.rmtree(old, ignore_errors=True)

    # --- resuming --------------------------------------------------------------------------------

    def resume(self, verify: Callable[[Path], str | None], warn: bool = True) -> Path:
        """The checkpoint a run resumes from: its newest one that ``verify`` passes (``verify`` says why a
        folder cannot be resumed from, or None). Damaged newer ones are passed over, said in one warning
        line (unless ``warn`` is False: a caller that only peeks before the run itself resumes). A
        checkpoint folder given as the run is verified alone. None verifies: a ``ValueError`` listing why."""
        candidates = [self.root] if self.is_checkpoint(self.root) else self.checkpoints()
        if not candidates:
            raise ValueError(f"{self.root}: no checkpoint here (expected a run directory or a checkpoint folder)")
        bad: list[str] = []
        for ckpt in candidates:
            why = verify(ckpt)
            if why is None:
                if bad and warn:
                    log.warning("passing over damaged checkpoint(s) %s; resuming from %s", "; ".join(bad), ckpt)
                return ckpt
            bad.append(f"{ckpt} ({why})")
        raise ValueError(f"{self.root}: no checkpoint to resume from verifies: {'; '.join(bad)}")

    # --- the run as a whole ----------------------------------------------------------------------

    def is_started(self) -> bool:
        """A run is started once it has ``config.json`` or a checkpoint."""
        return self.config_json.is_file() or bool(self.complete()) or any(self._plain.glob("step_*"))

    def refuse_started(self) -> None:
        if self.is_started():
            raise ValueError(f"{self.root} already holds a run: continue it with --resume, or start it again "
                             "with --overwrite (its checkpoints and logs are deleted)")

    def clear(self) -> None:
        """Remove what a run wrote (``--overwrite``), and nothing else a user may keep beside it."""
        for name in self.ITEMS:
            path = self.root / name
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)

    def begin(self, config_toml: str, config_json: dict[str, Any] | None = None) -> None:
        """A session starts writing: the config it runs with, and no result until the stage finishes."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.result_file.unlink(missing_ok=True)
        self.diverged_file.unlink(missing_ok=True)
        self.config_toml.write_text(config_toml)
        if config_json is not None:
            self.config_json.write_text(json.dumps(config_json, indent=2))

    def read_result(self) -> dict | None:
        """``result.json`` of a finished run (None: not finished)."""
        return json.loads(self.result_file.read_text()) if self.result_file.is_file() else None

    def finish(self, result: dict[str, Any], weights: Path, kind: str = "generator") -> None:
        """The stage is done: its chosen ``weights`` published as ``RUN/<kind>.safetensors``, and
        ``result.json`` (which names them)."""
        copy_file(weights, self.published(kind))
        write_json(self.result_file, {**result, kind: self.published(kind).name})

    def check_finished(self, allow_unfinished: bool) -> None:
        """A run given to ``--init`` must have finished, unless allowed. A checkpoint folder or a weights
        file named explicitly is taken as it is: the user chose it."""
        if not self.root.is_dir() or not self.is_started() or self.is_checkpoint(self.root):
            return
        if self.read_result() is None and not allow_unfinished:
            raise ValueError(f"--init {self.root}: that run has not finished (no {self.RESULT}); wait for it, resume "
                             "it, or pass --init-unfinished to start from its latest checkpoint anyway")

    def chosen(self) -> tuple[Path, Path]:
        """(checkpoint, generator weights) a later stage starts from: a finished run's chosen checkpoint and
        variant (validation's pick), else the newest checkpoint's raw generator."""
        result = self.read_result() if self.root.is_dir() else None
        if result is not None and result.get("chosen"):
            ckpt = self.checkpoint(result["chosen"]["step"])
            return ckpt, self.variant_file(ckpt, result["chosen"]["variant"])
        ckpt = self.latest()
        return ckpt, self.weights_file(ckpt, "generator")

    def resolve(self, kind: str) -> Path:
        """The ``kind`` weights a run folder or checkpoint folder stands for: a finished run's published
        weights (or a checkpoint folder's own), else its newest checkpoint's."""
        if self.published(kind).is_file():
            return self.published(kind)
        return self.weights_file(self.latest(), kind)
