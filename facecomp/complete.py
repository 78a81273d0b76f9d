"""Inference: ``Completer(weights).complete(image, mask, seed, samples, blend)``.

An image of any size goes in; a list of completions of the same size comes out, each equal to the
input outside the mask. A 178x218 CelebA-aligned face is completed through the 128x128 face box of
:mod:`facecomp.layout`; any other image is stretched onto the 128x128 crop. The generator's pixels
are warped back to the input's resolution and pasted under the mask *at that resolution*, so a
mask drawn on the input is honoured pixel for pixel.

The model only sees its face box. Masked pixels outside it (a brush stroke that strays onto the hair
or the neck) are filled by OpenCV's inpainting (Telea) from their surroundings, the model's
completion included, and counted in ``Completion.inpainted``; a mask with nothing inside the face
box is refused.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from facecomp import contract, kernels, layout, models
from facecomp.images import to_tensor, to_uint8

log = logging.getLogger(__name__)
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


def inpaint(images: list[np.ndarray], region: np.ndarray) -> list[np.ndarray]:
    """Fill ``region`` ([H, W] bool) of each [H, W, 3] uint8 image by Telea's method, from every pixel around it.

    The exported generator's clients do the same (facecomp.contract.inpaint): Telea costs about 1.2 us per
    filled pixel here, so a region over INPAINT_MAX_PIXELS is filled on a scaled-down copy.
    """
    return [contract.inpaint(img, region) for img in images]


def check_request(samples: int, seed: int) -> None:
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    if not 0 <= seed < MAX_SEED:
        raise ValueError(f"seed must be in 0..2**64-1, got {seed}")


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

    def complete(self, image: np.ndarray, mask: np.ndarray, seed: int = 0, samples: int = 1,
                 blend: str = "none") -> list[np.ndarray]:
        """image: [H, W, 3] uint8; mask: [H, W] in [0, 1] (1 = missing) -> ``samples`` x [H, W, 3] uint8.

        Sample k fills the hole with noise keyed by (seed, k): same seed, same completions.
        ``complete_full`` says, besides, how many pixels took the inpainting fallback.
        """
        return self.complete_full(image, mask, seed, samples, (blend,)).by_blend[blend]

    def complete_blends(self, image: np.ndarray, mask: np.ndarray, seed: int = 0, samples: int = 1,
                        blends: tuple[str, ...] = ("none",)) -> dict[str, list[np.ndarray]]:
        """Like ``complete``, once per blend in ``blends`` from one generator pass (the plain completion is
        what Poisson blending starts from, so asking for both costs one forward, not two)."""
        return self.complete_full(image, mask, seed, samples, blends).by_blend

    @torch.no_grad()
    def complete_full(self, image: np.ndarray, mask: np.ndarray, seed: int = 0, samples: int = 1,
                      blends: tuple[str, ...] = ("none",)) -> Completion:
        """``complete_blends`` with the whole result: the images per blend and the count of masked pixels
        outside the face box, which OpenCV's inpainting filled because the model never sees them."""
        for blend in blends:
            if blend not in BLENDS:
                raise ValueError(f"unknown blend '{blend}' (valid: {', '.join(BLENDS)})")
        if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"image must be [H, W, 3] uint8, got {getattr(image, 'shape', type(image).__name__)} "
                             f"{getattr(image, 'dtype', '')}")
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
