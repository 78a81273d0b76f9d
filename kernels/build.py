"""Build the fused kernels on first use with torch.utils.cpp_extension, cached by a source hash.

The cache key covers the sources, the compiler flags, torch's version and this CPU's instruction
sets (the CPU code is compiled with -march=native). Each build happens in its own staging folder
and is renamed into place, so a reader never sees half a build and two processes building at once
both succeed (the loser of the rename uses the winner's build). CUDA sources are compiled only when
this torch has CUDA and a GPU is visible.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.machinery
import importlib.util
import os
import platform
import shutil
import sys
import tempfile
from pathlib import Path
from types import ModuleType

import torch

CSRC = Path(__file__).resolve().parent / "csrc"
CPP_SOURCES = ["fused.cpp"]
CUDA_SOURCES = ["fused_cuda.cu"]
HEADERS = ["noise.h"]
# -ffp-contract=off: no fused multiply-add, so every product rounds as in the PyTorch reference.
CFLAGS = ["-O3", "-march=native", "-ffp-contract=off"]
CUDA_FLAGS = ["-O3", "-fmad=false"]


def cache_root() -> Path:
    root = os.environ.get("FACECOMP_KERNEL_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "facecomp" / "kernels"


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line
    except OSError:
        pass
    return platform.processor()


def with_cuda() -> bool:
    return torch.version.cuda is not None and torch.cuda.is_available()


def build_key(cuda: bool) -> str:
    h = hashlib.sha256()
    for name in CPP_SOURCES + HEADERS + (CUDA_SOURCES if cuda else []):
        h.update(name.encode())
        h.update((CSRC / name).read_bytes())
    h.update(" ".join(CFLAGS + (CUDA_FLAGS if cuda else [])).encode())
    h.update(f"{torch.__version__}|{sys.version_info[:2]}|{platform.machine()}|{_cpu_flags()}".encode())
    return h.hexdigest()[:16]


def _import_from(folder: Path, name: str) -> ModuleType:
    matches = sorted(folder.glob(f"{name}*.so")) + sorted(folder.glob(f"{name}*.pyd"))
    if not matches:
        raise RuntimeError(f"no compiled module {name} in {folder}")
    loader = importlib.machinery.ExtensionFileLoader(name, str(matches[0]))
    spec = importlib.util.spec_from_file_location(name, matches[0], loader=loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


@functools.cache
def load() -> ModuleType:
    """The compiled extension (built now if this machine has none cached). Raises on failure."""
    cuda = with_cuda()
    key = build_key(cuda)
    name = f"facecomp_fused_{key}"
    root = cache_root()
    final = root / name
    if final.is_dir():
        return _import_from(final, name)
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=root, prefix=f".build_{key}_"))
    try:
        from torch.utils import cpp_extension

        sources = [str(CSRC / s) for s in CPP_SOURCES + (CUDA_SOURCES if cuda else [])]
        module = cpp_extension.load(
            name=name, sources=sources, build_directory=str(staging), verbose=False,
            extra_cflags=CFLAGS + (["-DWITH_CUDA"] if cuda else []),
            extra_cuda_cflags=CUDA_FLAGS, extra_include_paths=[str(CSRC)], with_cuda=cuda)
        try:
            os.rename(staging, final)
        except OSError:  # another process finished first: keep its build, drop ours
            shutil.rmtree(staging, ignore_errors=True)
        return module
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
