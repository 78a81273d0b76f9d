"""Checkpoints: a folder of weights files (facecomp.weights) + optimizer state + JSON state, written atomically.

Checkpoint layout: ``RUN/checkpoints/step_0001000/`` holding ``generator.safetensors``,
``d_local.safetensors``, ``d_global.safetensors``, ``optim_<name>.safetensors`` and ``state.json``
(stage, step, full config). ``RUN/checkpoints/latest`` names the newest complete one.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

# The weights-file format lives in the leaf facecomp.weights; a checkpoint is a folder of such files.
from facecomp.weights import (  # noqa: F401  (re-exported: checkpoints are written and read through here)
    _atomic_write,
    convert_weights,
    copy_file,
    find_checkpoint,
    load_into,
    load_module,
    load_tensors,
    read_metadata,
    save_module,
    save_tensors,
    write_json,
)

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


# --- checkpoints ------------------------------------------------------------------------------

def save_checkpoint(run_dir: str | Path, step: int, modules: dict[str, tuple[nn.Module, dict]],
                    optimizers: dict[str, torch.optim.Optimizer], state: dict[str, Any], keep: int = 3,
                    protect: frozenset[int] = frozenset()) -> Path:
    """Write a checkpoint folder atomically (staged, then renamed), point ``latest`` at it, and
    delete all but the newest ``keep`` checkpoints and those whose step is in ``protect`` (the best
    on validation so far).

    modules: name -> (module, metadata for its weights file).
    """
    ckpt_root = Path(run_dir) / "checkpoints"
    ckpt_root.mkdir(parents=True, exist_ok=True)
    final = ckpt_root / f"step_{step:07d}"
    stage_dir = Path(tempfile.mkdtemp(dir=ckpt_root, prefix=".staging_"))
    try:
        for name, (module, meta) in modules.items():
            meta = dict(meta)
            kind = meta.pop("kind", name)  # generator_ema.safetensors holds 'generator' weights
            save_module(stage_dir / f"{name}.safetensors", module, kind, meta)
        for name, opt in optimizers.items():
            tensors, groups = optimizer_tensors(opt)
            save_tensors(stage_dir / f"optim_{name}.safetensors", tensors, f"optim_{name}", groups)
        (stage_dir / "state.json").write_text(json.dumps(state, indent=2))
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






def read_state(ckpt: Path) -> dict[str, Any]:
    try:
        return json.loads((ckpt / "state.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{ckpt}: unreadable state.json ({e})") from None

