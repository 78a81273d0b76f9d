"""Inference: ``Completer(weights).complete(image, mask, seed, samples, blend, align=...)``.

What goes in is what users have: an [H, W, 3] uint8 RGB array, a PIL image, or a path to an image file;
the mask likewise (an [H, W] array in [0, 1] or a PIL image or a file, white / 1 = missing, at the
image's size), or a name: ``O1``..``O6`` (a region of each face) or ``box:x0,y0,x1,y1`` (image pixels).
What comes out is a list of ``samples`` completions of the image's size and of its kind: arrays for an
array, PIL images for a PIL image or a path. Pixels outside the mask are never changed.

Which faces: ``align="auto"`` decides as ``facecomp complete --align auto`` does: a 178x218
CelebA-aligned face goes straight to the model; any other photo has its faces found (dlib, built once
per process), aligned to that layout, completed and pasted back (``facecomp.wild``), and a photo where
no face is found raises :class:`facecomp.NoFaceFound`. ``align=True`` looks for faces whatever the size;
``align=False`` takes the whole image as the face. An array's default is ``False`` (the array is the
model's input, as it always was); a PIL image's or a path's is ``"auto"`` (a photo).

The face itself: a 178x218 CelebA-aligned face is completed through the 128x128 face box of
:mod:`facecomp.layout`; any other image is stretched onto the 128x128 crop. The generator's pixels are
warped back to the input's resolution and pasted under the mask *at that resolution*, so a mask drawn
on the input is honoured pixel for pixel. The model only sees its face box. Masked pixels outside it (a
brush stroke that strays onto the hair or the neck) are filled by OpenCV's inpainting (Telea) from their
surroundings, the model's completion included, and counted in ``Completion.inpainted``; a mask with
nothing inside the face box is refused.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image

from facecomp import kernels, layout, masks, models, wild
from facecomp.blend import (  # noqa: F401  (re-exported: facecomp.complete.poisson_blend and the rest, as before)
    BLENDS,
    DEFAULT_BLEND,
    MAX_SEED,
    Completion,
    check_blends,
    check_image,
    check_request,
    inpaint,
    poisson_blend,
)
from facecomp.images import read_rgb, to_tensor, to_uint8

log = logging.getLogger(__name__)
ImageInput = np.ndarray | Image.Image | str | os.PathLike  # [H, W, 3] uint8 RGB, a PIL image, or an image file
MaskInput = np.ndarray | Image.Image | str | os.PathLike  # [H, W] (1 = missing), a mask image or file, or a name


def as_rgb(image: ImageInput) -> np.ndarray:
    """[H, W, 3] uint8 RGB from an array (as is), a PIL image (converted to RGB, its size kept) or a path
    (read as a viewer shows it: EXIF orientation applied)."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    if isinstance(image, str | os.PathLike):
        return read_rgb(image)
    if not isinstance(image, np.ndarray):
        raise ValueError(f"image must be [H, W, 3] uint8, a PIL image or a path, got {type(image).__name__}")
    check_image(image)
    return image


def as_mask(mask: MaskInput) -> np.ndarray | str:
    """A mask array ([H, W], 1 = missing), or a name for facecomp.wild to draw per face (O1..O6, box:, a file).
    A PIL image or a path other than a ``str`` is read as a mask file is: grey > 127 = missing."""
    if isinstance(mask, Image.Image):
        return (np.asarray(mask.convert("L")) > 127).astype(np.float32)
    if isinstance(mask, os.PathLike):
        return masks.from_image(mask)
    return mask if isinstance(mask, str) else np.asarray(mask)


def like(image: ImageInput, outs: list[np.ndarray]) -> list:
    """The completions in the kind of the input: arrays for an array, PIL images for a PIL image or a path."""
    return outs if isinstance(image, np.ndarray) else [Image.fromarray(o) for o in outs]


class Completer:
    """Face completion with a trained generator."""

    def __init__(self, generator: str | Path | Callable[[torch.Tensor], torch.Tensor] | None = None,
                 device: str | torch.device = "cpu", kernel_impl: str = "auto"):
        """``generator``: the weights to load (``shipped`` or None for the shipped model, a weights file,
        a checkpoint or a run; see facecomp.weights.resolve), or a generator already built: an eager
        module, or a compiled engine (``facecomp.export.load_engine``) — anything that maps the
        [N, 3 or 4, S, S] input to [N, 3, S, S] and carries its ``cfg`` (a GeneratorConfig).
        Fill and composite stay here whatever runs the generator."""
        self.device = torch.device(device)
        self.kernel_impl = kernel_impl
        if generator is None or isinstance(generator, str | Path):
            self.generator = models.load("generator", generator, self.device)
        elif callable(generator) and hasattr(generator, "cfg"):
            self.generator = generator
        else:
            raise TypeError(f"generator: weights (a path or 'shipped') or a generator with a cfg, got "
                            f"{type(generator).__name__}")
        self.size = self.generator.cfg.image_size

    def complete(self, image: ImageInput, mask: MaskInput, seed: int = 0, samples: int = 1,
                 blend: str = DEFAULT_BLEND, *, align: str | bool | None = None) -> list:
        """``samples`` completions of ``image`` under ``mask``, of the image's size and kind (module docstring):
        [H, W, 3] uint8 arrays for an array, PIL RGB images for a PIL image or a path.

        ``mask``: [H, W] in [0, 1] (1 = missing), a PIL image or a path (white = missing), or a name (O1..O6,
        box:x0,y0,x1,y1). ``align``: "auto" | True | False; default False for an array, "auto" otherwise.
        Raises ``facecomp.NoFaceFound`` (a ValueError) for a photo with no face to align.
        Sample k fills the hole with noise keyed by (seed, k): same seed, same completions.
        ``complete_full`` says, besides, how many faces were found and pixels took the inpainting fallback.
        """
        return self.complete_blends(image, mask, seed, samples, (blend,), align=align)[blend]

    def complete_blends(self, image: ImageInput, mask: MaskInput, seed: int = 0, samples: int = 1,
                        blends: tuple[str, ...] = (DEFAULT_BLEND,), *,
                        align: str | bool | None = None) -> dict[str, list]:
        """Like ``complete``, once per blend in ``blends`` from one generator pass (the plain completion is
        what Poisson blending starts from, so asking for both costs one forward, not two)."""
        done = self.complete_full(image, mask, seed, samples, blends, align=align)
        return {b: like(image, outs) for b, outs in done.by_blend.items()}

    def complete_full(self, image: ImageInput, mask: MaskInput, seed: int = 0, samples: int = 1,
                      blends: tuple[str, ...] = (DEFAULT_BLEND,), *, align: str | bool | None = None) -> Completion:
        """``complete_blends`` with the whole result, as arrays whatever the input: the images per blend, the
        faces completed, and the count of masked pixels the model never sees (off its face box), which
        OpenCV's inpainting filled."""
        if align is None:
            align = False if isinstance(image, np.ndarray) else "auto"
        return wild.complete_any(self, as_rgb(image), as_mask(mask), align, seed, samples, blends)

    @torch.no_grad()
    def complete_face(self, image: np.ndarray, mask: np.ndarray, seed: int = 0, samples: int = 1,
                      blends: tuple[str, ...] = ("none",)) -> Completion:
        """The model's own contract: ``image`` ([H, W, 3] uint8) is the face — a 178x218 CelebA-aligned one
        through its face box, anything else whole; ``mask`` [H, W] in [0, 1], 1 = missing."""
        check_blends(blends)
        check_image(image)
        h, w = image.shape[:2]
        mask = np.asarray(mask)
        if mask.shape != (h, w):
            raise ValueError(f"mask is {'x'.join(map(str, mask.shape[::-1]))} but the image is {w}x{h}")
        check_request(samples, seed)
        mask = np.nan_to_num(mask.astype(np.float32), nan=0.0)  # bool/uint8 masks too; NaN is not missing
        hole = mask > 0.5
        if not hole.any():
            raise ValueError("the mask is empty: nothing to complete")
        if hole.all():
            raise ValueError("the mask covers the whole image: nothing to complete from")

        x0, y0, x1, y1 = layout.face_box(w, h)
        inside = np.zeros((h, w), bool)
        inside[y0:y1, x0:x1] = True
        if not (hole & inside).any():
            raise ValueError(f"the mask lies wholly outside the face box ({x0},{y0},{x1},{y1}) the model completes")
        outside = hole & ~inside  # pixels the model never sees: inpainted after the model's pixels are in
        size = (self.size, self.size)
        crop = cv2.resize(image[y0:y1, x0:x1], size, interpolation=cv2.INTER_AREA)
        # A crop pixel is missing if any input pixel it covers is (area resampling, then > 0),
        # grown by one pixel so resampling at the hole's edge never mixes in a missing pixel.
        inner = np.where(inside, np.clip(mask, 0, 1), 0)[y0:y1, x0:x1]
        crop_mask = cv2.resize(inner, size, interpolation=cv2.INTER_AREA)
        crop_mask = cv2.dilate((crop_mask > 1e-3).astype(np.float32), np.ones((3, 3), np.uint8))

        x = to_tensor(crop)[None].to(self.device).expand(samples, -1, -1, -1)  # [K,3,S,S]
        m = torch.from_numpy(crop_mask)[None, None].to(self.device).expand(samples, -1, -1, -1)
        x_in = torch.cat([kernels.fill(x[k:k + 1], m[k:k + 1], seed=seed, offset=k, impl=self.kernel_impl,
                                      mask_channel=self.generator.cfg.mask_channel) for k in range(samples)])
        out = self.generator(x_in)  # [K,3,S,S]
        pasted = []
        for k in range(samples):
            back = image.copy()
            back[y0:y1, x0:x1] = cv2.resize(to_uint8(out[k]), (x1 - x0, y1 - y0), interpolation=cv2.INTER_CUBIC)
            pasted.append(np.where(hole[..., None], back, image))
        pasted = inpaint(pasted, outside)
        inpainted = int(outside.sum())
        if inpainted:
            log.debug("%d masked pixel(s) outside the face box filled by inpainting (Telea)", inpainted)
        results = {b: [poisson_blend(p, image, hole) if b == "poisson" else p for p in pasted] for b in blends}
        return Completion(results, inpainted)
