"""Weights (safetensors) and checkpoints (a folder of safetensors + JSON state), written atomically.

A weights file carries its kind, the component config that builds the model, and a SHA-256 of its
tensor bytes; loading checks all three plus every tensor's shape, so a tampered, truncated or
foreign file is refused with one clear line instead of a half-loaded model. Never a pickle.

Checkpoint layout: ``RUN/checkpoints/step_0001000/`` holding ``generator.safetensors``,
``d_local.safetensors``, ``d_global.safetensors``, ``optim_<name>.safetensors`` and ``state.json``
(stage, step, full config). ``RUN/checkpoints/latest`` names the newest complete one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file
from torch import nn

FORMAT = "facecomp/1"


def _digest(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for key in sorted(tensors):
        t = tensors[key].contiguous()
        h.update(key.encode())
        h.update(str(t.dtype).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _atomic_write(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor], kind: str,
                 meta: dict[str, Any] | None = None) -> None:
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    metadata = {"format": FORMAT, "kind": kind, "sha256": _digest(tensors)}
    metadata.update({k: json.dumps(v) for k, v in (meta or {}).items()})
    _atomic_write(Path(path), lambda tmp: save_file(tensors, tmp, metadata=metadata))


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The metadata of a facecomp weights file (JSON values decoded)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such weights file")
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(f"{path}: not a readable safetensors file ({e})") from None
    if raw.get("format") != FORMAT:
        raise ValueError(f"{path}: not a facecomp weights file (format {raw.get('format')!r})")
    out: dict[str, Any] = {"format": raw["format"], "kind": raw.get("kind"), "sha256": raw.get("sha256")}
    for k, v in raw.items():
        if k not in out:
            out[k] = json.loads(v)
    return out


def load_tensors(path: str | Path, kind: str | None = None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors and metadata of a weights file, after checking its kind and checksum."""
    meta = read_metadata(path)
    if kind is not None and meta["kind"] != kind:
        raise ValueError(f"{path}: holds '{meta['kind']}' weights, expected '{kind}'")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(f"{path}: corrupt weights file ({e})") from None
    if _digest(tensors) != meta["sha256"]:
        raise ValueError(f"{path}: checksum mismatch, the file was modified or damaged")
    return tensors, meta


def load_into(module: nn.Module, tensors: dict[str, torch.Tensor], source: str | Path) -> None:
    """Copy tensors into a module, refusing missing, unexpected or mis-shaped entries."""
    own = module.state_dict()
    missing = sorted(set(own) - set(tensors))
    extra = sorted(set(tensors) - set(own))
    if missing or extra:
        raise ValueError(f"{source}: weights do not fit this model (missing {missing[:3]}, unexpected {extra[:3]})")
    for key, t in tensors.items():
        if own[key].shape != t.shape:
            raise ValueError(f"{source}: '{key}' has shape {list(t.shape)}, the model needs {list(own[key].shape)}")
    module.load_state_dict(tensors)


def save_module(path: str | Path, module: nn.Module, kind: str, meta: dict[str, Any] | None = None) -> None:
    save_tensors(path, module.state_dict(), kind, meta)


def load_module(path: str | Path, module: nn.Module, kind: str) -> dict[str, Any]:
    tensors, meta = load_tensors(path, kind)
    load_into(module, tensors, path)
    return meta


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


def write_json(path: str | Path, obj: Any) -> None:
    """Write a JSON file atomically."""
    _atomic_write(Path(path), lambda tmp: Path(tmp).write_text(json.dumps(obj, indent=2)))


def checkpoint_step(ckpt: Path) -> int:
    """The step of a ``step_NNNNNNN`` checkpoint folder."""
    return int(Path(ckpt).name.removeprefix("step_"))


def checkpoint_steps(run_dir: str | Path) -> set[int]:
    """Steps of the complete checkpoints of a run on disk."""
    root = Path(run_dir) / "checkpoints"
    return {checkpoint_step(p) for p in root.glob("step_*") if (p / "state.json").is_file()}


def copy_file(src: str | Path, dst: str | Path) -> None:
    """Copy a file atomically (a reader never sees half of it)."""
    _atomic_write(Path(dst), lambda tmp: shutil.copyfile(src, tmp))


def find_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder from itself, a run directory (its latest), or a weights file's folder."""
    path = Path(path)
    if path.is_file():
        path = path.parent
    if (path / "state.json").is_file():
        return path
    latest = path / "checkpoints" / "latest"
    if latest.is_file():
        ckpt = path / "checkpoints" / latest.read_text().strip()
        if (ckpt / "state.json").is_file():
            return ckpt
    raise ValueError(f"{path}: no checkpoint here (expected a run directory or a checkpoint folder)")


def read_state(ckpt: Path) -> dict[str, Any]:
    try:
        return json.loads((ckpt / "state.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{ckpt}: unreadable state.json ({e})") from None


def convert_weights(src: str | Path, dst: str | Path, dtype: torch.dtype) -> None:
    """Re-save a weights file with its floating-point tensors in ``dtype`` (e.g. fp16 to ship).

    Integer buffers (BatchNorm's batch counter) keep their type; the metadata is carried over.
    Loading converts back to the model's dtype.
    """
    tensors, meta = load_tensors(src)
    kind = meta.pop("kind")
    for key in ("format", "sha256"):
        meta.pop(key)
    out = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in tensors.items()}
    meta["dtype"] = str(dtype).removeprefix("torch.")
    save_tensors(dst, out, kind, meta)
