"""Weights files: the format, the shipped files, and where any path a user gives leads.

A weights file is safetensors carrying its kind, the component config that builds the model, and a
SHA-256 of its tensor bytes; loading checks all three plus every tensor's shape, so a tampered,
truncated or foreign file is refused with one clear line instead of a half-loaded model. Never a
pickle. That SHA-256 of the tensors is *the* identity of a weights file everywhere (``identity``):
the same weights saved twice, or converted to another dtype and back, are named by their tensors,
not by the bytes of one file.

A file may **borrow** tensors from a base file (``save_tensors(..., base=...)``): a generator fine-tuned
with part of it frozen (``train.frozen``) stores only what it changed, and names its base by identity
and file name. Loading finds the base beside the file or among the shipped weights, verifies it, and
checks the SHA-256 of the whole (own and borrowed tensors), which is also the file's identity: a
borrowing file and a self-contained copy of it are the same weights. This is how two generators ship
within the tracked tree's budget: the default one borrows the paper generator's 33.6 MB bottleneck.

``resolve(source, kind)`` is the one place that turns what a user typed into a file: ``shipped`` (or
nothing) for the weights in this package, a weights file, a checkpoint folder, or a run folder (a
finished run's chosen weights, else its newest checkpoint: the run folder's layout is
:class:`~facecomp.weights.run_folder.RunFolder`'s). Models are built from a file by ``facecomp.models.load``.

This package is a leaf: it imports torch and safetensors, and nothing of facecomp.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file
from torch import nn

from .files import atomic_write, copy_file, write_json
from .run_folder import RunFolder

__all__ = ["NAMED", "SHIPPED", "SHIPPED_NAME", "RunFolder", "convert_weights", "copy_file", "identity",
           "is_shipped_name", "load_into", "load_module", "load_tensors", "read_metadata", "resolve", "save_module",
           "save_tensors", "write_json"]

HERE = Path(__file__).resolve().parent
# The default weights of each kind. The default generator is the paper's with skips (MODEL_CARD.md); it
# borrows its frozen bottleneck from the paper generator, which ships beside it under its own name.
SHIPPED = {"generator": HERE / "generator.safetensors", "parsing": HERE / "parsing.safetensors",
           "identity": HERE / "identity.safetensors"}
SHIPPED_NAME = "shipped"  # `--model shipped`, Completer("shipped"): the default of its kind
# Further shipped weights by the name `--model` takes (beside "shipped"), each with its kind
NAMED = {"paper-generator": ("generator", HERE / "paper_generator.safetensors")}

FORMAT = "facecomp/1"


def _digest(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for key in sorted(tensors):
        t = tensors[key].contiguous()
        h.update(key.encode())
        h.update(str(t.dtype).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor], kind: str,
                 meta: dict[str, Any] | None = None, base: str | Path | None = None) -> None:
    """Write a weights file. With ``base`` (a weights file of the same kind), every floating-point
    tensor equal to the base's (same dtype, shape and values) is borrowed: left out of the file and
    named in its ``base`` metadata, and it loads as the base's tensor, bit for bit (equal values may
    differ in a zero's sign, which no output notices); the file's SHA-256 is that of all its tensors as
    they load. (Integer buffers, BatchNorm's batch counters, are a few bytes: they stay, rather than tie
    the file to a counter.)"""
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    base_entry = None
    if base is not None:
        base_tensors, base_meta = load_tensors(base, kind)
        borrowed = sorted(k for k, t in tensors.items() if t.is_floating_point() and _same(t, base_tensors.get(k)))
        if not borrowed:
            raise ValueError(f"{path}: no tensor is equal to {base}'s; nothing to borrow")
        base_entry = {"name": Path(base).name, "sha256": base_meta["sha256"], "keys": borrowed}
        tensors.update({k: base_tensors[k] for k in borrowed})
    metadata = {"format": FORMAT, "kind": kind, "sha256": _digest(tensors)}
    metadata.update({k: json.dumps(v) for k, v in (meta or {}).items()})
    if base_entry is not None:
        metadata["base"] = json.dumps(base_entry)
        tensors = {k: t for k, t in tensors.items() if k not in set(base_entry["keys"])}
    atomic_write(Path(path), lambda tmp: _save_file(tensors, tmp, metadata, Path(path)))


def _same(a: torch.Tensor, b: torch.Tensor | None) -> bool:
    return b is not None and a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)


_OS_ERROR = re.compile(r"\(os error (\d+)\)")


def _save_file(tensors: dict[str, torch.Tensor], tmp: str, metadata: dict[str, str], path: Path) -> None:
    """safetensors' ``save_file``, with a failed write raised as the ``OSError`` it is.

    safetensors reports an I/O failure (a full disk, a lost mount) as its own error type with the OS
    error number only in the text; callers must be able to tell a full disk (``errno.ENOSPC``) from
    a bug, so the number is given back as an ``OSError`` naming the file being written.
    """
    try:
        save_file(tensors, tmp, metadata=metadata)
    except SafetensorError as e:
        found = _OS_ERROR.search(str(e))
        if found is None:
            raise
        code = int(found.group(1))
        raise OSError(code, os.strerror(code), str(path)) from None


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
    if "base" in meta:
        tensors.update(_borrowed(Path(path), meta))
    if _digest(tensors) != meta["sha256"]:
        raise ValueError(f"{path}: checksum mismatch, the file was modified or damaged")
    return tensors, meta


def _borrowed(path: Path, meta: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The tensors a file borrows, from its base: the file of that name beside it, else whichever
    shipped weights file has the base's identity."""
    base = meta["base"]
    candidates = [path.parent / base["name"], *SHIPPED.values(), *(p for _, p in NAMED.values())]
    for candidate in candidates:
        if candidate.is_file() and candidate.resolve() != path.resolve() and identity(candidate) == base["sha256"]:
            tensors, _ = load_tensors(candidate, meta["kind"])
            return {k: tensors[k] for k in base["keys"]}
    raise ValueError(f"{path}: borrows {len(base['keys'])} tensors from {base['name']} (sha256 "
                     f"{base['sha256'][:12]}), which is neither beside it nor shipped; copy that file next to it")


def load_into(module: nn.Module, tensors: dict[str, torch.Tensor], source: str | Path,
              fresh: frozenset[str] = frozenset()) -> None:
    """Copy tensors into a module, refusing missing, unexpected or mis-shaped entries. Keys in ``fresh``
    may be missing: those parts keep their initial values (a model grown beyond the one saved)."""
    own = module.state_dict()
    missing = sorted(set(own) - set(tensors) - fresh)
    extra = sorted(set(tensors) - set(own))
    if missing or extra:
        raise ValueError(f"{source}: weights do not fit this model (missing {missing[:3]}, unexpected {extra[:3]})")
    for key, t in tensors.items():
        if own[key].shape != t.shape:
            raise ValueError(f"{source}: '{key}' has shape {list(t.shape)}, the model needs {list(own[key].shape)}")
    module.load_state_dict(tensors, strict=not fresh)


def save_module(path: str | Path, module: nn.Module, kind: str, meta: dict[str, Any] | None = None) -> None:
    save_tensors(path, module.state_dict(), kind, meta)


def load_module(path: str | Path, module: nn.Module, kind: str, fresh: frozenset[str] = frozenset()) -> dict[str, Any]:
    tensors, meta = load_tensors(path, kind)
    load_into(module, tensors, path, fresh)
    return meta



def convert_weights(src: str | Path, dst: str | Path, dtype: torch.dtype | None = None,
                    base: str | Path | None = None) -> None:
    """Re-save a weights file with its floating-point tensors in ``dtype`` (e.g. fp16 to ship), and/or
    borrowing what it shares with ``base`` (``facecomp weights convert``).

    Integer buffers (BatchNorm's batch counter) keep their type; the metadata is carried over.
    Loading converts back to the model's dtype.
    """
    tensors, meta = load_tensors(src)
    kind = meta.pop("kind")
    for key in ("format", "sha256", "base"):
        meta.pop(key, None)
    if dtype is not None:
        tensors = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in tensors.items()}
        meta["dtype"] = str(dtype).removeprefix("torch.")
    save_tensors(dst, tensors, kind, meta, base=base)


def identity(path: str | Path) -> str:
    """The SHA-256 of a weights file's tensors (from its metadata; ``load_tensors`` verifies it)."""
    return read_metadata(path)["sha256"]


# --- where a path leads ---------------------------------------------------------------------------

def is_shipped_name(source: str | Path | None) -> bool:
    """Whether ``source`` is the name of weights shipped with the package (``shipped``, ``paper-generator``)
    rather than a path."""
    return source is not None and str(source) in (SHIPPED_NAME, *NAMED)


def resolve(source: str | Path | None = None, kind: str = "generator") -> Path:
    """The ``kind`` weights file that ``source`` names (see the module docstring)."""
    if kind not in SHIPPED:
        raise ValueError(f"unknown weights kind '{kind}' (valid: {', '.join(SHIPPED)})")
    if source is None or str(source) in ("", SHIPPED_NAME):
        if not SHIPPED[kind].is_file():
            raise ValueError(f"no shipped {kind} weights in this install; name a weights file or run")
        return SHIPPED[kind]
    if str(source) in NAMED:
        named_kind, path = NAMED[str(source)]
        if named_kind != kind:
            raise ValueError(f"'{source}' names shipped {named_kind} weights, not {kind} weights")
        return path
    path = Path(source)
    if path.is_file():
        return path
    if not path.is_dir():
        raise ValueError(f"{path}: no such weights file, checkpoint or run directory ({kind} weights do not exist)")
    return RunFolder(path).resolve(kind)
