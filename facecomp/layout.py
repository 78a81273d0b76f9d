"""The aligned-face layout: where the 128x128 training crop sits in a CelebA-aligned face.

CelebA's ``img_align_celeba`` faces are 178x218 with the eyes at about y=111 and the mouth at
about y=152. The paper trains on 128x128 faces. We take the square box
``CROP_BOX = (9, 41, 169, 201)`` (x0, y0, x1, y1; half-open, 160x160 pixels, centred on x=89,
y=121) and resample it to 128x128 (scale 0.8). In the crop the eyes land near (48, 55) and
(79, 57), the nose tip near (63, 75) and the mouth near y=89: the whole face from hairline to
chin, with a little hair and background, as in the paper's figures.
"""

from __future__ import annotations

import numpy as np

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
