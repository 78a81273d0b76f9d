"""Faces with their identities, for training and scoring the identity network (facecomp.models.identity).

The network sees what the generator completes: the 128-px crop of ``layout`` area-downsampled to its input
size. Those small crops are decoded once and held in memory (28,560 faces at 64 px are 350 MB), and the
augmentation (flip, a small similarity warp, brightness and contrast) runs on whole batches as tensors:
decoding a JPEG per sample would cost more than the network's step on a CPU.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from facecomp.data.celeba import CelebAIndex
from facecomp.data.pipeline import sample_rng
from facecomp.layout import CROP_SIZE, load_face


@dataclass
class IdentityFaces:
    images: torch.Tensor  # [N, 3, S, S] uint8
    labels: torch.Tensor  # [N] int64, 0..classes-1
    identities: list[int]  # CelebA identity number of each label

    @property
    def classes(self) -> int:
        return len(self.identities)


def labelled_files(roots: list[str | Path], partition: str) -> list[tuple[Path, int]]:
    """(image, CelebA identity) of a partition of several CelebA folders; faces without an identity are left out."""
    out = []
    for root in roots:
        index = CelebAIndex.open(root)
        if not index.identity_of:
            raise ValueError(f"{root}: no identity_CelebA.txt, so no identities to learn")
        out += [(f, i) for f in index.files(partition) if (i := index.identity(f)) is not None]
    if not out:
        raise ValueError(f"no face of partition '{partition}' in {[str(r) for r in roots]} has an identity")
    return out


def small_crop(path: Path, size: int) -> np.ndarray:
    """The generator's 128-px crop at ``size`` px (area), as uint8 [S, S, 3]."""
    return cv2.resize(load_face(path, CROP_SIZE), (size, size), interpolation=cv2.INTER_AREA)


def load_faces(files: list[tuple[Path, int]], size: int, threads: int = 2) -> IdentityFaces:
    with ThreadPoolExecutor(max(1, threads)) as pool:  # OpenCV's decoding and resizing release the GIL
        crops = list(pool.map(lambda fi: small_crop(fi[0], size), files))
    identities = sorted({i for _, i in files})
    label_of = {ident: k for k, ident in enumerate(identities)}
    images = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).contiguous()
    labels = torch.tensor([label_of[i] for _, i in files], dtype=torch.int64)
    return IdentityFaces(images, labels, identities)


def as_input(images: torch.Tensor) -> torch.Tensor:
    """uint8 [N,3,S,S] -> float in [-1, 1], as the generator's faces (``images.to_tensor``)."""
    return images.float().div(127.5).sub(1.0)


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """A batch in [-1, 1], each face flipped at random, warped by a small similarity (rotation up to 8 degrees,
    scale 0.92-1.08, shift up to 6%; reflected borders) and jittered in brightness and contrast."""
    n = x.shape[0]

    def uniform(lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(n, generator=gen)

    angle, scale = uniform(-8, 8) * math.pi / 180, uniform(0.92, 1.08)
    flip = torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos * flip, -sin, uniform(-0.12, 0.12)], 1),
                         torch.stack([sin * flip, cos, uniform(-0.12, 0.12)], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    contrast, brightness = uniform(0.8, 1.2).view(n, 1, 1, 1), uniform(-0.15, 0.15).view(n, 1, 1, 1)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return ((x - mean) * contrast + mean + brightness).clamp(-1, 1)


def batches(faces: IdentityFaces, batch_size: int, seed: int, start_step: int = 0):
    """Endless augmented batches, an epoch a fresh permutation keyed by (seed, epoch); batch ``start_step``
    first, so a resumed run sees the data of an uninterrupted one. Yields the loop's batch dicts."""
    n = len(faces.labels)
    per_epoch = n // batch_size
    step = start_step
    while True:
        epoch, k = divmod(step, per_epoch)
        order = torch.from_numpy(np.random.default_rng([seed, epoch]).permutation(n))
        index = order[k * batch_size:(k + 1) * batch_size]
        gen = torch.Generator().manual_seed(int(sample_rng(seed, epoch, k).integers(2 ** 62)))
        yield {"image": augment(as_input(faces.images[index]), gen), "labels": faces.labels[index],
               "skipped": 0}
        step += 1
