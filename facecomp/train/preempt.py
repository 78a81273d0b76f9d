"""Stopping a run cleanly when the cluster asks: SIGTERM (preemption, `scancel`) or SIGUSR1 (Slurm's
``--signal=B:USR1@<lead>`` before the time limit).

The handler only records the signal; the loop checks it between steps, writes a checkpoint at the
step it reached and returns, and the command exits with ``EXIT_STOPPED`` so a batch script can tell
"stopped, resume me" (requeue) from "finished" (0) and "failed" (anything else).
"""

from __future__ import annotations

import contextlib
import signal
import threading

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
EXIT_STOPPED = 75  # EX_TEMPFAIL of sysexits.h: "try again later" — the batch scripts requeue on it


class StopRequest:
    """Truthy once a stop signal arrived (or :meth:`set` was called)."""

    def __init__(self):
        self.signum: int | None = None

    def set(self, signum: int = signal.SIGTERM) -> None:
        self.signum = signum

    def __bool__(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else ""

    @contextlib.contextmanager
    def installed(self):
        """Catch STOP_SIGNALS while inside; the previous handlers come back on the way out.

        Outside the main thread (Python allows handlers only there) nothing is installed; the
        request can still be set by :meth:`set`.
        """
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = {s: signal.signal(s, lambda signum, frame: self.set(signum)) for s in STOP_SIGNALS}
        try:
            yield self
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
