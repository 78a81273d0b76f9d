"""Masks: float arrays in [0, 1] of shape [H, W], 1 = missing.

Every random mask takes an explicit ``numpy.random.Generator``; nothing here touches a global RNG,
so a mask depends only on the seed that made its generator (reproducible across workers).

The paper's evaluation masks O1-O6 (its Fig. 8) are boxes on the aligned-face layout of
:mod:`facecomp.layout`, in 128x128 crop pixels (x0, y0, x1, y1; half-open; "left" as seen in the
image):

====  ===============  ======================  =========================================
name  what             box in the 128 crop     covers
====  ===============  ======================  =========================================
O1    left half        (20, 28, 64, 120)       left brow, eye, cheek, half nose and mouth
O2    right half       (64, 28, 108, 120)      the mirror of O1
O3    both eyes        (28, 38, 100, 72)       both brows and eyes
O4    left eye         (28, 38, 64, 72)        left brow and eye
O5    right eye        (64, 38, 100, 72)       right brow and eye
O6    lower half       (24, 76, 104, 124)      nose tip, mouth and chin
====  ===============  ======================  =========================================

Each covers at most 64x64 pixels' worth of area, the budget the paper suggests at test time.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from facecomp import layout

OCCLUSIONS: dict[str, tuple[int, int, int, int]] = {
    "O1": (20, 28, 64, 120),
    "O2": (64, 28, 108, 120),
    "O3": (28, 38, 100, 72),
    "O4": (28, 38, 64, 72),
    "O5": (64, 38, 100, 72),
    "O6": (24, 76, 104, 124),
}
OCCLUSION_NAMES = {"O1": "left half", "O2": "right half", "O3": "both eyes", "O4": "left eye",
                   "O5": "right eye", "O6": "lower half"}

SWEEP_SIZES = tuple(range(16, 81, 8))  # the paper's Fig. 9: 16, 24, ..., 80


def box(width: int, height: int, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    """A filled rectangle, clipped to the image. [H, W]"""
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"empty box ({x0},{y0},{x1},{y1}): need x0 < x1 and y0 < y1")
    m = np.zeros((height, width), np.float32)
    m[max(y0, 0):max(y1, 0), max(x0, 0):max(x1, 0)] = 1.0
    return m


def square(size: int, image_size: int, rng: np.random.Generator) -> np.ndarray:
    """The paper's training mask: a size x size square at a uniform random position. [S, S]"""
    if not 0 < size <= image_size:
        raise ValueError(f"square size {size} does not fit an image of {image_size}")
    y, x = rng.integers(0, image_size - size + 1, size=2)
    return box(image_size, image_size, int(x), int(y), int(x) + size, int(y) + size)


def occlusion(name: str, width: int = layout.CROP_SIZE, height: int = layout.CROP_SIZE) -> np.ndarray:
    """Mask O1..O6 at a given resolution. [H, W]

    128x128 is the crop itself; a 178x218 aligned face gets the box mapped through the crop box;
    any other size gets it scaled with the image.
    """
    key = name.upper()
    if key not in OCCLUSIONS:
        raise ValueError(f"unknown mask '{name}' (valid: {', '.join(OCCLUSIONS)})")
    return crop_box(width, height, *OCCLUSIONS[key])


def crop_box(width: int, height: int, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    """A box given in 128x128 crop pixels, drawn on an image of width x height. [H, W]

    128x128 is the crop itself; other sizes get the box mapped through :func:`layout.crop_to_input`.
    """
    if (width, height) == (layout.CROP_SIZE, layout.CROP_SIZE):
        return box(width, height, x0, y0, x1, y1)
    a = layout.crop_to_input(width, height)
    (u0, v0), (u1, v1) = (a[:, :2] @ np.array(p, float) + a[:, 2] for p in ((x0, y0), (x1, y1)))
    return box(width, height, round(u0), round(v0), round(u1), round(v1))


def strokes(image_size: int, rng: np.random.Generator, max_strokes: int = 4, max_vertices: int = 8,
            max_width: int = 16, max_length: int = 30) -> np.ndarray:
    """Free-form brush strokes (random polylines of random width), as users draw them. [S, S]"""
    m = np.zeros((image_size, image_size), np.uint8)
    for _ in range(int(rng.integers(1, max_strokes + 1))):
        x, y = rng.integers(0, image_size, size=2)
        width = int(rng.integers(max(2, max_width // 3), max_width + 1))
        for _ in range(int(rng.integers(2, max_vertices + 1))):
            angle = rng.uniform(0, 2 * np.pi)
            length = rng.uniform(max_length / 3, max_length)
            nx = int(np.clip(x + length * np.cos(angle), 0, image_size - 1))
            ny = int(np.clip(y + length * np.sin(angle), 0, image_size - 1))
            cv2.line(m, (int(x), int(y)), (nx, ny), 1, width)
            x, y = nx, ny
    return m.astype(np.float32)


def from_image(path: str | Path, size: tuple[int, int] | None = None) -> np.ndarray:
    """A user-drawn mask from an image file of any size (white = missing). [H, W]

    ``size=(width, height)`` resamples it (nearest, so the mask stays binary).
    """
    from facecomp.images import read_gray

    gray = read_gray(path)
    m = (gray > 127).astype(np.float32)
    if size is not None and (m.shape[1], m.shape[0]) != tuple(size):
        m = cv2.resize(m, tuple(size), interpolation=cv2.INTER_NEAREST)
    return m


def read_box(spec: str) -> tuple[int, int, int, int]:
    """'box:x0,y0,x1,y1' -> (x0, y0, x1, y1)."""
    try:
        x0, y0, x1, y1 = (int(v) for v in spec.split(":", 1)[1].split(","))
    except ValueError:
        raise ValueError(f"bad box mask '{spec}': expected box:x0,y0,x1,y1 with integers") from None
    return x0, y0, x1, y1


def from_spec(spec: str, width: int, height: int) -> np.ndarray:
    """A mask for an image of width x height from 'O1'..'O6', 'box:x0,y0,x1,y1' or an image path.

    Boxes are in the image's own pixels. A mask image must have the image's size.
    """
    if spec.upper() in OCCLUSIONS:
        return occlusion(spec, width, height)
    if spec.startswith("box:"):
        return box(width, height, *read_box(spec))
    path = Path(spec)
    if not path.exists():
        valid = ", ".join(OCCLUSIONS)
        raise ValueError(f"unknown mask '{spec}' (valid: {valid}, box:x0,y0,x1,y1, or a mask image file)")
    m = from_image(path)
    if m.shape != (height, width):
        raise ValueError(f"mask {path} is {m.shape[1]}x{m.shape[0]} but the image is {width}x{height}")
    return m


def check_spec(spec: str) -> None:
    """Raise now, before any model is loaded, for a spec that can never give a mask: neither O1-O6, nor a
    box, nor an existing file or folder."""
    if not (spec.upper() in OCCLUSIONS or spec.startswith("box:") or Path(spec).exists()):
        from_spec(spec, 1, 1)


def spec_for_image(image: Path, spec: str) -> str:
    """The mask spec of one image: ``spec`` itself, or, when it names a folder, the mask image there with the
    image's stem (face.jpg <- FOLDER/face.png, any image suffix: the pairing inpainting tools use, IOPaint's
    ``--image DIR --mask DIR``)."""
    from facecomp.images import list_images

    folder = Path(spec)
    if not folder.is_dir():
        return spec
    found = [p for p in list_images(folder) if p.stem == image.stem]
    if not found:
        raise ValueError(f"{image}: no mask named {image.stem}.* in {folder}")
    if len(found) > 1:
        raise ValueError(f"{image}: several masks named {image.stem}.* in {folder}: {', '.join(p.name for p in found)}")
    return str(found[0])


_PARTS = tuple(OCCLUSIONS.values())  # face_part's boxes, in crop pixels


def face_part(image_size: int, rng: np.random.Generator, jitter: float = 0.125) -> np.ndarray:
    """A box over a part of the face that real occluders cover: one of the regions of O1-O6 (half the face:
    a hand or a shadow; both eyes: sunglasses; one eye: a patch or a wink's hand; the lower half: a scarf, a
    mask, a microphone), chosen uniformly, with each edge moved by up to ``jitter`` of the box's side (so the
    evaluation's own boxes are just six of many). At the crop's layout; [S, S]."""
    x0, y0, x1, y1 = _PARTS[int(rng.integers(len(_PARTS)))]
    dx, dy = jitter * (x1 - x0), jitter * (y1 - y0)
    u0, u1 = x0 + rng.uniform(-dx, dx), x1 + rng.uniform(-dx, dx)
    v0, v1 = y0 + rng.uniform(-dy, dy), y1 + rng.uniform(-dy, dy)
    return crop_box(image_size, image_size, round(u0), round(v0), round(u1), round(v1))


def square_or_part(size: int, image_size: int, rng: np.random.Generator) -> np.ndarray:
    """The paper's square (size x size, anywhere) or, as often, a :func:`face_part` box. The squares keep
    every position in training; the parts put half the holes where faces are in fact covered, in shapes a
    64x64 square never makes: the lower half is 80 pixels wide and a half face 92 tall (a uniform square
    covers even the mouth alone, 40x20, only one time in seven)."""
    if rng.random() < 0.5:
        return square(size, image_size, rng)
    return face_part(image_size, rng)


# Training-mask registry: name -> (mask config size, crop size, rng) -> mask.
TRAIN_MASKS: dict[str, Callable[[int, int, np.random.Generator], np.ndarray]] = {
    "square": square,
    "strokes": lambda size, image_size, rng: strokes(image_size, rng, max_width=max(4, size // 4)),
    "parts": square_or_part,
}


def train_mask(kind: str, size: int, image_size: int, rng: np.random.Generator) -> np.ndarray:
    if kind not in TRAIN_MASKS:
        raise ValueError(f"unknown mask kind '{kind}' (valid: {', '.join(TRAIN_MASKS)})")
    return TRAIN_MASKS[kind](size, image_size, rng)
