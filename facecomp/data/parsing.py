"""Face + label-map pairs for training and scoring the parsing network.

The same crop and augmentation as completion training (``layout.crop_matrix``): the image is
resampled bilinearly, its label map with nearest neighbours, and a horizontal flip swaps the
image-left and image-right classes (brows, eyes) so labels stay "as seen in the image".
"""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from facecomp.data.parsing_labels import FLIP_PERMUTATION, label_path
from facecomp.data.pipeline import EpochBatchSampler, sample_rng
from facecomp.images import read_gray, read_rgb, to_tensor
from facecomp.layout import Augment, crop_matrix

log = logging.getLogger(__name__)


def labelled_pairs(files: list[Path], labels_dir: str | Path) -> list[tuple[Path, Path]]:
    """(image, label PNG) for the faces that have labels; the rest (landmarks failed) are left out."""
    labels_dir = Path(labels_dir).expanduser()
    if not labels_dir.is_dir():
        raise ValueError(f"{labels_dir}: no parsing labels there (run `facecomp parsing label --out {labels_dir}`)")
    pairs = [(f, label_path(labels_dir, f)) for f in files]
    kept = [(f, lbl) for f, lbl in pairs if lbl.exists()]
    if not kept:
        raise ValueError(f"{labels_dir}: none of the {len(files)} faces has a label")
    if len(kept) < len(pairs):
        log.info("%d of %d faces have no label (not labelled yet, or landmarks failed) and are left out",
                 len(pairs) - len(kept), len(pairs))
    return kept


def warp_pair(image: np.ndarray, labels: np.ndarray, size: int, aug: Augment | None = None,
              rng: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Crop (and augment) a face and its label map alike. -> ([S,S,3] uint8, [S,S] uint8)"""
    h, w = image.shape[:2]
    if labels.shape != (h, w):
        raise ValueError(f"label map {labels.shape} does not match its image {(h, w)}")
    m = crop_matrix(w, h, size, aug or Augment(), rng)
    face = cv2.warpAffine(image, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
    lbl = cv2.warpAffine(labels, m, (size, size), flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_REFLECT_101)
    if np.linalg.det(m[:, :2]) < 0:  # mirrored: image-left is now image-right
        lbl = FLIP_PERMUTATION[lbl].astype(np.uint8)
    return face, lbl


class ParsingDataset(Dataset):
    """Items addressed as (epoch, index), like ``pipeline.FaceDataset``, so runs are repeatable."""

    def __init__(self, pairs: list[tuple[Path, Path]], image_size: int, aug: Augment, seed: int):
        self.pairs, self.image_size, self.aug, self.seed = list(pairs), image_size, aug, seed

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, key: tuple[int, int] | int) -> dict | None:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        rng = sample_rng(self.seed, epoch, index) if self.aug != Augment() else None
        image, labels = self.pairs[index]
        try:
            face, lbl = warp_pair(read_rgb(image), read_gray(labels), self.image_size, self.aug, rng)
        except ValueError as e:
            log.warning("skipping %s", e)
            return None
        return {"image": to_tensor(face), "labels": torch.from_numpy(lbl.astype(np.int64)), "index": index}


def collate(items: list[dict | None]) -> dict:
    good = [it for it in items if it is not None]
    out = {"skipped": len(items) - len(good)}
    if not good:
        return {**out, "image": None, "labels": None, "index": None}
    return {**out, "image": torch.stack([it["image"] for it in good]),
            "labels": torch.stack([it["labels"] for it in good]),
            "index": torch.tensor([it["index"] for it in good])}


def train_loader(pairs: list[tuple[Path, Path]], image_size: int, aug: Augment, batch_size: int, seed: int,
                 start_step: int = 0, workers: int = 0) -> DataLoader:
    dataset = ParsingDataset(pairs, image_size, aug, seed)
    sampler = EpochBatchSampler(len(pairs), batch_size, seed, start_step)
    return DataLoader(dataset, batch_sampler=sampler, collate_fn=collate, num_workers=workers,
                      persistent_workers=workers > 0)


def eval_loader(pairs: list[tuple[Path, Path]], image_size: int, batch_size: int, workers: int = 0) -> DataLoader:
    """Unaugmented crops in file order."""
    return DataLoader(ParsingDataset(pairs, image_size, Augment(), 0), batch_size=batch_size, shuffle=False,
                      collate_fn=collate, num_workers=workers)
