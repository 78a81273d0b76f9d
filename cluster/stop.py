"""Stopping a cluster run on a signal: every rank checkpoints at the same step and returns.

The driver (``facecomp cluster train``) catches SIGTERM/SIGUSR1 (the signals of
facecomp.train.preempt) and writes a stop marker into the run's folder, ``STORAGE/NAME/STOP_FILE``,
which every node sees (checkpoints need that storage shared anyway). Each rank looks for the marker
(a ``stat``, at most every ``check_seconds``), and at every step all ranks combine what they saw with
one ``all_reduce(MAX)`` of a flag: they stop after the same step even when only some of them see the
marker yet (a shared file system caches attributes for seconds on some nodes), and no rank waits in a
collective the others skipped. The flag is a CPU tensor on a gloo group, so the check adds no
CPU-GPU synchronisation to a GPU step.

Nothing here needs Ray: the tests run it on torch.distributed processes of their own.
"""

from __future__ import annotations

import contextlib
import json
import math
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from facecomp.train.preempt import STOP_SIGNALS, StopRequest

STOP_FILE = "stop_request.json"


def request_stop(run_dir: str | Path, signum: int) -> None:
    """Write the marker the workers look for (atomically: a rank never reads half a file)."""
    path = Path(run_dir) / STOP_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"signal": signal.Signals(signum).name, "time": time.time()}))
    tmp.replace(path)


def clear_stop(run_dir: str | Path) -> None:
    """Remove a marker left by an earlier session (the rerun after a requeue must not stop at once)."""
    (Path(run_dir) / STOP_FILE).unlink(missing_ok=True)


@contextlib.contextmanager
def stop_on_signal(run_dir: str | Path) -> Iterator[tuple[StopRequest, Callable[[], None]]]:
    """Inside: SIGTERM/SIGUSR1 set the returned StopRequest and write the stop marker of ``run_dir``.

    Yields ``(request, install)``: call ``install()`` again after anything that sets its own handlers
    (``ray.init`` makes SIGTERM exit the driver). The previous handlers come back on the way out.
    Outside the main thread nothing is installed.
    """
    request = StopRequest()
    main = threading.current_thread() is threading.main_thread()
    previous = {s: signal.getsignal(s) for s in STOP_SIGNALS} if main else {}

    def handler(signum, frame) -> None:
        request.set(signum)
        request_stop(run_dir, signum)

    def install() -> None:
        if main:
            for s in STOP_SIGNALS:
                signal.signal(s, handler)

    install()
    try:
        yield request, install
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def max_reduce(group=None) -> Callable[[torch.Tensor], torch.Tensor]:
    """The MAX of a CPU tensor over the ranks of ``group`` (gloo)."""
    import torch.distributed as dist

    def reduce(t: torch.Tensor) -> torch.Tensor:
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=group)
        return t

    return reduce


def stop_group():
    """A gloo group over all ranks for the stop flag: the default group where it is gloo already,
    a new one beside NCCL (every rank must call this, in the same order as other new groups)."""
    import torch.distributed as dist

    return None if dist.get_backend() == "gloo" else dist.new_group(backend="gloo")


class StopAgreement:
    """Called once per step on every rank (same number of calls everywhere); True on all ranks at
    the same call once any rank has seen ``marker``.

    ``reduce`` combines the flag over the ranks (:func:`max_reduce`; None for one process).
    ``check_seconds`` bounds how often the file system is asked; the collective runs every call.
    """

    def __init__(self, marker: str | Path, reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 check_seconds: float = 1.0, clock: Callable[[], float] = time.monotonic):
        self.marker = Path(marker)
        self.reduce = reduce
        self.check_seconds = check_seconds
        self.clock = clock
        self.seen = False  # this rank saw the marker
        self._last = -math.inf

    def __call__(self) -> bool:
        now = self.clock()
        if not self.seen and now - self._last >= self.check_seconds:
            self._last = now
            self.seen = self.marker.exists()
        flag = torch.tensor([1 if self.seen else 0], dtype=torch.int32)
        if self.reduce is not None:
            flag = self.reduce(flag)
        return bool(flag.item())
