"""Requests that arrive together share one generator pass.

``BatchingGenerator`` stands in for the generator (same ``cfg``, same call): concurrent callers queue
their noise-filled inputs; whichever caller finds the model idle runs everything queued (up to
``max_batch`` images) as one batch and hands each caller its rows. No thread of its own and no
waiting window: a batch is exactly the work that arrived while the previous one ran, so a lone
request pays nothing and a burst is served in fewer, larger passes (measured in bench/serve_load.py).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import torch


@dataclass
class _Call:
    x: torch.Tensor
    out: torch.Tensor | None = None
    error: BaseException | None = None
    done: bool = False


@dataclass
class BatchStats:
    passes: int = 0
    calls: int = 0
    images: int = 0
    largest: int = 0  # calls in the largest pass
    largest_images: int = 0  # images in the largest pass


class BatchingGenerator:
    def __init__(self, generator, max_batch: int = 8):
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.generator = generator
        self.cfg = generator.cfg
        self.max_batch = max_batch
        self.stats = BatchStats()
        self._cv = threading.Condition()
        self._pending: list[_Call] = []
        self._running = False

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        call = _Call(x)
        with self._cv:
            self._pending.append(call)
        while True:
            with self._cv:
                while self._running and not call.done:
                    self._cv.wait()
                if call.done:
                    if call.error is not None:
                        raise call.error
                    return call.out
                self._running = True
                batch = self._take()
            self._run(batch)

    def _take(self) -> list[_Call]:
        """Queued calls in arrival order while they fit in max_batch images (always at least one)."""
        batch, images = [], 0
        while self._pending and (not batch or images + self._pending[0].x.shape[0] <= self.max_batch):
            call = self._pending.pop(0)
            batch.append(call)
            images += call.x.shape[0]
        return batch

    def _run(self, batch: list[_Call]) -> None:
        try:
            with torch.no_grad():
                out = self.generator(torch.cat([c.x for c in batch]) if len(batch) > 1 else batch[0].x)
            for c, part in zip(batch, out.split([c.x.shape[0] for c in batch]), strict=True):
                c.out = part
        except BaseException as e:  # every caller of the pass gets the error, none hangs
            for c in batch:
                c.error = e
        finally:
            with self._cv:
                for c in batch:
                    c.done = True
                s = self.stats
                s.passes += 1
                s.calls += len(batch)
                s.images += sum(c.x.shape[0] for c in batch)
                s.largest = max(s.largest, len(batch))
                s.largest_images = max(s.largest_images, sum(c.x.shape[0] for c in batch))
                self._running = False
                self._cv.notify_all()
