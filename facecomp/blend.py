"""What face completion and photo completion share: the request checks, the result, and what is done
with the model's pixels once they are pasted under the mask (Poisson blending, the paper's M5; OpenCV's
Telea inpainting for masked pixels the model never sees).

Its own module so that ``facecomp.complete`` (the Completer, which hands unaligned photos to
``facecomp.wild``) and ``facecomp.wild`` (which hands each aligned face back to the Completer) both
import it and not each other's module in both directions.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from facecomp import contract

BLENDS = ("none", "poisson")
MAX_SEED = 2**64  # the fill noise is keyed by a 64-bit seed (kernels.reference.keys)


@dataclass
class Completion:
    """What a completion returns beyond the images."""

    by_blend: dict[str, list[np.ndarray]]  # blend -> ``samples`` x [H, W, 3] uint8, the input's size
    inpainted: int = 0  # masked pixels the model could not see, filled by OpenCV inpainting (Telea) instead
    faces: int = 1  # faces completed (photos in the wild can hold several)

    @property
    def images(self) -> list[np.ndarray]:
        """The samples of the first blend asked for."""
        return next(iter(self.by_blend.values()))


def check_image(image) -> None:
    """A one-line ``ValueError`` unless ``image`` is an [H, W, 3] uint8 array."""
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be [H, W, 3] uint8, got {getattr(image, 'shape', type(image).__name__)} "
                         f"{getattr(image, 'dtype', '')}")


def check_request(samples: int, seed: int) -> None:
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    if not 0 <= seed < MAX_SEED:
        raise ValueError(f"seed must be in 0..2**64-1, got {seed}")


def check_blends(blends: tuple[str, ...]) -> None:
    for blend in blends:
        if blend not in BLENDS:
            raise ValueError(f"unknown blend '{blend}' (valid: {', '.join(BLENDS)})")


def inpaint(images: list[np.ndarray], region: np.ndarray) -> list[np.ndarray]:
    """Fill ``region`` ([H, W] bool) of each [H, W, 3] uint8 image by Telea's method, from every pixel around it.

    The exported generator's clients do the same (facecomp.contract.inpaint): Telea costs about 1.2 us per
    filled pixel here, so a region over INPAINT_MAX_PIXELS is filled on a scaled-down copy.
    """
    return [contract.inpaint(img, region) for img in images]


def poisson_blend(completed: np.ndarray, original: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The paper's M5: OpenCV's seamless cloning of the completed hole into the original. [H,W,3] uint8

    seamlessClone needs the region off the image border, so both images are padded by reflection
    first and cropped back after.
    """
    pad = 8
    m = (mask > 0.5).astype(np.uint8) * 255
    if not m.any():
        return original.copy()
    src = cv2.copyMakeBorder(completed, pad, pad, pad, pad, cv2.BORDER_REFLECT_101)
    dst = cv2.copyMakeBorder(original, pad, pad, pad, pad, cv2.BORDER_REFLECT_101)
    mp = cv2.copyMakeBorder(m, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=0)
    # Dilate by one pixel: seamlessClone treats the region's edge as boundary condition.
    mp = cv2.dilate(mp, np.ones((3, 3), np.uint8))
    x, y, w, h = cv2.boundingRect(mp)
    center = (x + w // 2, y + h // 2)
    out = cv2.seamlessClone(src, dst, mp, center, cv2.NORMAL_CLONE)[pad:-pad, pad:-pad]
    keep = mask[..., None] <= 0.5
    return np.where(keep, original, out)
