"""What a run folder says about itself, and the checks that keep runs from clobbering each other.

* a run folder is *started* once it has ``config.json`` or a checkpoint, and *finished* once the loop
  wrote ``result.json`` (facecomp.train.loop.RESULT_FILE); plain and cluster runs alike;
* training into a started run without ``--resume`` is refused unless the user asks to overwrite it;
* resuming with a config that differs from the run's is refused unless the user allows it, except
  for keys that change how fast a run goes, not what it trains;
* the next stage starts only from a finished stage, unless the user says otherwise.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

RESULT_FILE = "result.json"
# Keys a resumed run may change freely: they change speed or logging, never the trained weights.
RESUME_FREE = frozenset({"runtime.threads", "runtime.kernels", "data.workers", "train.log_every",
                         "train.image_every", "validation.batch_size"})
RUN_ITEMS = ("checkpoints", "tb", "config.toml", "config.json", "validation.json", RESULT_FILE,
             "generator.safetensors")


def is_started(run_dir: str | Path) -> bool:
    run_dir = Path(run_dir)
    return (run_dir / "config.json").is_file() or any(run_dir.glob("checkpoints/step_*")) \
        or any(run_dir.glob("step_*/state.json"))


def read_result(run_dir: str | Path) -> dict | None:
    path = Path(run_dir) / RESULT_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def clear(run_dir: str | Path) -> None:
    """Remove what a run wrote (``--overwrite``), and nothing else a user may keep beside it."""
    for name in RUN_ITEMS:
        path = Path(run_dir) / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def refuse_started(run_dir: str | Path) -> None:
    if is_started(run_dir):
        raise ValueError(f"{run_dir} already holds a run: continue it with --resume, or start it again "
                         "with --overwrite (its checkpoints and logs are deleted)")


def config_changes(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two config dicts (``a.b: old -> new``)."""
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        path = f"{prefix}{key}"
        if isinstance(a, dict) and isinstance(b, dict):
            out += config_changes(a, b, f"{path}.")
        elif a != b and path not in RESUME_FREE:
            out.append(f"{path}: {a!r} -> {b!r}")
    return out


def check_init_source(source: str | Path, allow_unfinished: bool) -> None:
    """A run folder given to ``--init`` must have finished (result.json), unless allowed.

    A checkpoint folder or a weights file named explicitly is taken as it is: the user chose it.
    """
    source = Path(source)
    if not source.is_dir() or not is_started(source) or (source / "state.json").is_file():
        return
    if read_result(source) is None and not allow_unfinished:
        raise ValueError(f"--init {source}: that run has not finished (no {RESULT_FILE}); wait for it, resume it, "
                         "or pass --init-unfinished to start from its latest checkpoint anyway")
