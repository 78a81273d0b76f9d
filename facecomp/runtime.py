"""Process-level settings for fast CPU training, applied once at start-up."""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)


class MissingCapability(RuntimeError):
    """What a command needs is not on this machine (an optional extra, a GPU); the message says what to do.
    The CLI prints it as one line instead of a traceback."""

# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def tune_allocator(mmap_threshold: int = 1 << 30, trim_threshold: int = 1 << 30) -> bool:
    """Keep large freed blocks in the heap instead of returning them to the OS.

    A training step allocates and frees the same multi-MB activations every time. With glibc's
    defaults each of them is a fresh mmap: the kernel hands out zeroed pages and the first touch of
    every page faults. Raising the mmap and trim thresholds lets malloc reuse the freed memory;
    measured here, a cpu-preset stage-1 step went from 1.63 s to 1.30 s and stage 3 from 3.75 s
    to 2.68 s (bench/RESULTS.md). The cost is up to ``trim_threshold`` bytes of freed memory that
    the process keeps. No-op (returns False) where libc is not glibc.
    """
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    ok = bool(mallopt(_M_MMAP_THRESHOLD, mmap_threshold)) and bool(mallopt(_M_TRIM_THRESHOLD, trim_threshold))
    log.debug("malloc tuning %s", "applied" if ok else "refused")
    return ok


def start(rt) -> torch.device:  # noqa: F821  (torch imported lazily: this module stays light)
    """Apply a RuntimeConfig for a training process: thread count, allocator; the device to use."""
    import torch

    device = torch.device(rt.device)
    if rt.threads > 0:
        torch.set_num_threads(rt.threads)
    if rt.tune_malloc and device.type == "cpu":
        tune_allocator()
    return device
