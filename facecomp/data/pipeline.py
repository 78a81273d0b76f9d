"""The reference PyTorch input pipeline: decode, crop, augment, mask.

Batch contract (shared with the DALI pipeline): a dict with
  ``image``  [N, 3, S, S] float32 in [-1, 1]
  ``mask``   [N, 1, S, S] float32, 1 = missing
  ``index``  [N] int64, dataset index of each sample
  ``skipped`` int, how many unreadable files were dropped from this batch

Randomness: the sample order of an epoch comes from a generator seeded by (seed, epoch); each
sample's augmentation and mask from one seeded by (seed, epoch, index). Neither depends on the
number of workers or on where a run was resumed, which is what makes ``--resume`` exact.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from facecomp import masks
from facecomp.config import DataConfig, MaskConfig
from facecomp.images import to_tensor
from facecomp.layout import Augment, load_face

log = logging.getLogger(__name__)


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, epoch, index])


class FaceDataset(Dataset):
    """Items are addressed as (epoch, index) so each sample's randomness is fixed by its address."""

    def __init__(self, files: list[Path], image_size: int, aug: Augment, mask_cfg: MaskConfig, seed: int):
        self.files = list(files)
        self.image_size = image_size
        self.aug = aug
        self.mask_cfg = mask_cfg
        self.seed = seed

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, key: tuple[int, int]) -> dict | None:
        epoch, index = key
        rng = sample_rng(self.seed, epoch, index)
        try:
            face = load_face(self.files[index], self.image_size, self.aug, rng)
        except ValueError as e:  # unreadable file: dropped from its batch and counted, never fatal
            log.warning("skipping %s", e)
            return None
        except OSError as e:
            # the file went away (or its disk failed) between the existence check and the read: the same
            # loss of one image, which must not end a run of days over one missing face
            log.warning("skipping %s: unreadable (%s)", self.files[index], e.strerror or e)
            return None
        mask = masks.train_mask(self.mask_cfg.kind, self.mask_cfg.size, self.image_size, rng)
        return {"image": to_tensor(face), "mask": torch.from_numpy(mask)[None], "index": index}


def collate(items: list[dict | None]) -> dict:
    good = [it for it in items if it is not None]
    skipped = len(items) - len(good)
    if not good:
        return {"image": None, "mask": None, "index": None, "skipped": skipped}
    return {
        "image": torch.stack([it["image"] for it in good]),
        "mask": torch.stack([it["mask"] for it in good]),
        "index": torch.tensor([it["index"] for it in good], dtype=torch.long),
        "skipped": skipped,
    }


class EpochBatchSampler(Sampler):
    """Endless batches of (epoch, index), a fresh permutation per epoch, sharded by rank.

    ``start_step`` skips that many batches without touching the data, so a resumed run sees the
    batches an uninterrupted run would have seen next.
    """

    def __init__(self, n: int, batch_size: int, seed: int, start_step: int = 0, rank: int = 0, world_size: int = 1):
        self.per_rank = n // world_size
        if self.per_rank < batch_size:
            raise ValueError(f"{n} images cannot fill a batch of {batch_size} on {world_size} rank(s)")
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.start_step, self.rank, self.world_size = start_step, rank, world_size
        self.steps_per_epoch = self.per_rank // batch_size

    def epoch_order(self, epoch: int) -> np.ndarray:
        perm = np.random.default_rng([self.seed, epoch]).permutation(self.n)
        return perm[: self.per_rank * self.world_size][self.rank :: self.world_size]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        step = self.start_step
        while True:
            epoch, k = divmod(step, self.steps_per_epoch)
            order = self.epoch_order(epoch)
            for j in range(k, self.steps_per_epoch):
                batch = order[j * self.batch_size : (j + 1) * self.batch_size]
                yield [(epoch, int(i)) for i in batch]
            step = (epoch + 1) * self.steps_per_epoch

    def __len__(self) -> int:  # one epoch; the sampler itself never ends
        return self.steps_per_epoch


def build_loader(files: list[Path], image_size: int, data_cfg: DataConfig, mask_cfg: MaskConfig,
                 batch_size: int, seed: int, start_step: int = 0, rank: int = 0, world_size: int = 1,
                 pin_memory: bool = False) -> DataLoader:
    """``pin_memory``: batches in page-locked memory, so the step's copy to a GPU runs asynchronously
    (``non_blocking=True``) instead of stalling the host until the copy is done."""
    dataset = FaceDataset(files, image_size, Augment.from_config(data_cfg), mask_cfg, seed)
    sampler = EpochBatchSampler(len(files), batch_size, seed, start_step, rank, world_size)
    return DataLoader(dataset, batch_sampler=sampler, collate_fn=collate, num_workers=data_cfg.workers,
                      persistent_workers=data_cfg.workers > 0, pin_memory=pin_memory)

