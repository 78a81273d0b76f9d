"""Files written whole or not at all: a reader (or a crash, or a full disk) never meets half of one."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def atomic_write(path: Path, write: Callable[[str], None]) -> None:
    """``write(tmp)`` into a temporary file beside ``path``, then rename it over ``path``."""
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


def copy_file(src: str | Path, dst: str | Path) -> None:
    """Copy a file atomically."""
    atomic_write(Path(dst), lambda tmp: shutil.copyfile(src, tmp))


def write_json(path: str | Path, obj: Any) -> None:
    """Write a JSON file atomically."""
    atomic_write(Path(path), lambda tmp: Path(tmp).write_text(json.dumps(obj, indent=2)))


def write_text(path: str | Path, text: str) -> None:
    """Write a text file atomically."""
    atomic_write(Path(path), lambda tmp: Path(tmp).write_text(text))
