"""What face completion and photo completion share: the request checks, the result, and what is done
with the model's pixels once they are pasted under the mask (Poisson blending, the paper's M5; OpenCV's
Telea inpainting for masked pixels the model never sees), both implemented in ``facecomp.contract``.

Its own module so that ``facecomp.complete`` (the Completer, which hands unaligned photos to
``facecomp.wild``) and ``facecomp.wild`` (which hands each aligned face back to the Completer) both
import it and not each other's module in both directions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from facecomp import contract

# The blends, the default every front door uses, and Poisson blending itself live in the engine contract,
# so that an exported engine's client (which imports facecomp.contract alone) finishes a completion
# exactly as the Completer does.
from facecomp.contract import BLENDS, DEFAULT_BLEND, poisson_blend  # noqa: F401  (re-exported)

MAX_SEED = contract.MAX_SEED  # the fill noise is keyed by a 64-bit seed (kernels.reference.keys)


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
