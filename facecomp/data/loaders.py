"""Which input pipeline feeds a run: one seam, chosen once from ``data.loader``.

Both pipelines keep the batch contract of :mod:`facecomp.data.pipeline` and shard by
(rank, world_size), so the training loop and the cluster loop never know which one they got.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch

from facecomp.config import Config


def make_loader(cfg: Config, files: list[Path], start_step: int = 0, rank: int = 0, world_size: int = 1,
                device: torch.device | None = None, loader_state: str | None = None) -> Iterable[dict]:
    """Endless batches for ``cfg`` over ``files``; ``start_step`` batches are skipped (exact resume).

    A loader that keeps its own position (DALI) has a ``state()`` method returning text; a checkpoint
    stores it and passes it back as ``loader_state`` on resume. The torch loader needs only ``start_step``.
    """
    if cfg.data.loader == "dali":
        from facecomp.data import dali  # optional extra: facecomp[dali]; raises a one-line error without it

        return dali.build_dali_loader(cfg, files, start_step=start_step, rank=rank, world_size=world_size,
                                      device=device, state=loader_state)
    from facecomp.data.pipeline import build_loader

    return build_loader(files, cfg.generator.image_size, cfg.data, cfg.mask, cfg.train.batch_size, cfg.train.seed,
                        start_step=start_step, rank=rank, world_size=world_size,
                        pin_memory=device is not None and device.type == "cuda")
