"""Process-level settings for fast CPU training, applied once at start-up."""

from __future__ import annotations

import ctypes
import ctypes.util
import importlib
import logging
import os
from collections.abc import Mapping
from types import ModuleType

log = logging.getLogger(__name__)


class MissingCapability(RuntimeError):
    """What a command needs is not on this machine (a GPU, a runtime provider); the message says what to do.
    The CLI prints it as one line instead of a traceback."""


class MissingExtra(ImportError):
    """An optional extra of facecomp is not installed: the one error for it everywhere. The message names
    what needed it, the extra, and the pip command that installs it; the CLI prints it as one line."""

    def __init__(self, extra: str, what: str, missing: str = ""):
        self.extra, self.what = extra, what
        self.command = f"pip install 'facecomp[{extra}]'"
        why = f" ({missing} is not installed)" if missing else ""
        super().__init__(f"{what} needs the '{extra}' extra{why}: {self.command}")


def require(module: str, extra: str, what: str) -> ModuleType:
    """``import module``, or :class:`MissingExtra` naming ``extra``."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingExtra(extra, what, e.name or module) from None

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


def cores_per_local_rank(env: Mapping[str, str] | None = None, cores: int | None = None) -> int:
    """This process's share of the cores it may run on, when several ranks of one job share a node.

    ``cores``: the CPUs this process may use (its affinity mask, which Slurm and containers narrow).
    The ranks on this node: ``LOCAL_WORLD_SIZE`` (torchrun, Ray Train's TorchTrainer and DeepSpeed's
    launcher set it), else Slurm's tasks on this node (``SLURM_NTASKS_PER_NODE``, or the first count
    of ``SLURM_TASKS_PER_NODE`` such as "8(x2)"). Slurm's ``SLURM_CPUS_PER_TASK`` caps the result
    (it is what the job asked for per rank). At least 1.
    """
    env = os.environ if env is None else env
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    ranks = _positive_int(env.get("LOCAL_WORLD_SIZE")) or _positive_int(env.get("SLURM_NTASKS_PER_NODE")) \
        or _positive_int(env.get("SLURM_TASKS_PER_NODE", "").split("(")[0].split(",")[0]) or 1
    share = max(1, cores // ranks)
    per_task = _positive_int(env.get("SLURM_CPUS_PER_TASK"))
    return min(share, per_task) if per_task else share


def _positive_int(text: str | None) -> int | None:
    try:
        value = int(text) if text else 0
    except ValueError:
        return None
    return value if value > 0 else None


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes in bf16 natively (AVX512-BF16 or AMX: oneDNN's own test). Without it
    PyTorch's CPU convolutions in bf16 fall back to a reference GEMM (``slow_conv2d``), far slower than fp32."""
    import torch

    return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def settle_amp(rt, quiet: bool = False) -> None:
    """``runtime.amp`` as this machine runs it: bf16 on a CPU without native bf16 becomes "none", in the config
    the run records. On an AVX2-only EPYC the cpu preset's bf16 stage-3 step ran under 20 steps in 17 minutes,
    where fp32 runs one in seconds; mixed precision is a speed setting, so the run goes on, at speed, and says
    so (unless ``quiet``: a resumed run's candidate config, settled the same way before it is compared)."""
    import torch

    if torch.device(rt.device).type == "cpu" and rt.amp == "bf16" and not cpu_has_native_bf16():
        if not quiet:
            log.warning("runtime.amp=bf16 asked for, but this CPU has no native bf16 (AVX512-BF16 or AMX; it has "
                        "%s): bf16 convolutions would run on a reference GEMM, many times slower, so this run "
                        "trains in fp32 (runtime.amp=none)", torch.backends.cpu.get_cpu_capability())
        rt.amp = "none"


def start(rt) -> torch.device:  # noqa: F821  (torch imported lazily: this module stays light)
    """Apply a RuntimeConfig for a training process: mixed precision as this machine runs it (``settle_amp``),
    thread count, allocator; the device to use."""
    import torch

    settle_amp(rt)
    device = torch.device(rt.device)
    if rt.threads > 0:
        torch.set_num_threads(rt.threads)
    if rt.tune_malloc and device.type == "cpu":
        tune_allocator()
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = rt.cudnn_benchmark
    return device
