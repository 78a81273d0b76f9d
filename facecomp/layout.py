"""The aligned-face layout: where the 128x128 training crop sits in a CelebA-aligned face.

CelebA's ``img_align_celeba`` faces are 178x218 with the eyes at about y=111 and the mouth at
about y=152. The paper trains on 128x128 faces. We take the square box
``CROP_BOX = (9, 41, 169, 201)`` (x0, y0, x1, y1; half-open, 160x160 pixels, centred on x=89,
y=121) and resample it to 128x128 (scale 0.8). In the crop the eyes land near (48, 55) and
(79, 57), the nose tip near (63, 75) and the mouth near y=89: the whole face from hairline to
chin, with a little hair and background, as in the paper's figures.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

if TYPE_CHECKING:
    from facecomp.config import DataConfig

ALIGNED_SIZE = (178, 218)  # (width, height) of a CelebA-aligned face
CROP_BOX = (9, 41, 169, 201)  # (x0, y0, x1, y1) in the aligned face
CROP_SIZE = 128


def is_aligned_size(width: int, height: int) -> bool:
    return (width, height) == ALIGNED_SIZE


def face_box(width: int, height: int) -> tuple[int, int, int, int]:
    """The region of an input that maps onto the 128x128 crop: CROP_BOX for a CelebA-aligned face,
    the whole image for anything else (treated as the face itself)."""
    return CROP_BOX if is_aligned_size(width, height) else (0, 0, width, height)


def crop_to_input(width: int, height: int) -> np.ndarray:
    """2x3 affine matrix mapping crop pixel coordinates to input pixel coordinates."""
    x0, y0, x1, y1 = face_box(width, height)
    sx, sy = (x1 - x0) / CROP_SIZE, (y1 - y0) / CROP_SIZE
    return np.array([[sx, 0.0, x0], [0.0, sy, y0]], dtype=np.float64)


def input_to_crop(width: int, height: int) -> np.ndarray:
    """Inverse of :func:`crop_to_input`."""
    x0, y0, x1, y1 = face_box(width, height)
    sx, sy = CROP_SIZE / (x1 - x0), CROP_SIZE / (y1 - y0)
    return np.array([[sx, 0.0, -x0 * sx], [0.0, sy, -y0 * sy]], dtype=np.float64)


# --- the crop every consumer takes: training, validation, evaluation, parsing -------------------

@dataclass(frozen=True)
class Augment:
    flip: float = 0.0
    shift: float = 0.0
    rotate: float = 0.0
    scale_min: float = 1.0
    scale_max: float = 1.0

    @classmethod
    def from_config(cls, cfg: DataConfig) -> Augment:
        return cls(cfg.flip, cfg.shift, cfg.rotate, cfg.scale_min, cfg.scale_max)


def crop_matrix(width: int, height: int, size: int, aug: Augment, rng: np.random.Generator | None) -> np.ndarray:
    """2x3 matrix taking input pixels to the size x size face crop, with a random similarity
    transform (flip, shift, rotation, scale about the crop centre) composed in when ``rng`` is given."""
    base = np.vstack([input_to_crop(width, height), [0, 0, 1]])
    base = np.diag([size / CROP_SIZE, size / CROP_SIZE, 1.0]) @ base
    if rng is None:
        return base[:2]
    c = size / 2.0
    flip = -1.0 if rng.random() < aug.flip else 1.0
    angle = np.deg2rad(rng.uniform(-aug.rotate, aug.rotate))
    scale = rng.uniform(aug.scale_min, aug.scale_max)
    tx, ty = rng.uniform(-aug.shift, aug.shift, size=2) * size
    cos, sin = scale * np.cos(angle), scale * np.sin(angle)
    about_centre = np.array([[cos * flip, -sin, 0], [sin * flip, cos, 0], [0, 0, 1]])
    to_origin = np.array([[1, 0, -c], [0, 1, -c], [0, 0, 1]])
    back = np.array([[1, 0, c + tx], [0, 1, c + ty], [0, 0, 1]])
    return (back @ about_centre @ to_origin @ base)[:2]


def load_face(path: str | Path, size: int, aug: Augment = Augment(),
              rng: np.random.Generator | None = None) -> np.ndarray:
    """Read a face and return its (augmented) size x size crop. [S, S, 3] uint8"""
    from facecomp.images import read_rgb  # here, not above: the geometry stays numpy + OpenCV only

    img = read_rgb(path)
    h, w = img.shape[:2]
    m = crop_matrix(w, h, size, aug, rng)
    return cv2.warpAffine(img, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
