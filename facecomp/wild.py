"""Completing faces in unaligned photos of any size.

Each face is found (dlib, ``facecomp.faces``), mapped onto the 178x218 CelebA-aligned layout the
model was trained on by a similarity transform from five landmarks, completed there, and warped
back; the generated pixels are pasted under the mask in the photo's own coordinates (hard, or by
Poisson blending), so every pixel outside the mask keeps its value.

Masks: ``O1``..``O6`` name regions of each face (they are drawn in the aligned layout and warped
into the photo, for every face found); ``box:`` and mask images are in photo pixels and are
completed wherever they fall on a face's completion box.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import cv2
import numpy as np

from facecomp import layout, masks
from facecomp.complete import BLENDS, Completer, poisson_blend

log = logging.getLogger(__name__)
ALIGNED_W, ALIGNED_H = layout.ALIGNED_SIZE


@dataclass
class PhotoResult:
    images: list[np.ndarray]  # one per sample, the photo's size (the first of ``blends``)
    faces: int  # faces found
    completed: int  # faces whose completion box the mask touched
    uncovered: int  # masked photo pixels on no face's completion box (left as they were)
    mask: np.ndarray  # [H, W] bool, the pixels that were completed
    boxes: list[tuple[int, int, int, int]]  # each found face's completion box in the photo (x0, y0, x1, y1)
    by_blend: dict[str, list[np.ndarray]]  # the samples for each blend asked for


def _box_mask() -> np.ndarray:
    x0, y0, x1, y1 = layout.CROP_BOX
    box = np.zeros((ALIGNED_H, ALIGNED_W), np.float32)
    box[y0 + 1:y1 - 1, x0 + 1:x1 - 1] = 1  # one pixel in: interpolation at the border stays inside
    return box


def complete_photo(completer: Completer, photo: np.ndarray, mask_spec: str | np.ndarray, seed: int = 0,
                   samples: int = 1, blend: str = "none", detector=None,
                   blends: tuple[str, ...] | None = None) -> PhotoResult:
    """``mask_spec``: O1..O6 (for every face), 'box:...' or a mask image path, or a [H, W] array (1 = missing).
    ``blends``: several blends from one generator pass per face (default: just ``blend``)."""
    from facecomp.faces import align_faces

    blends = blends or (blend,)
    for b in blends:
        if b not in BLENDS:
            raise ValueError(f"unknown blend '{b}' (valid: {', '.join(BLENDS)})")
    h, w = photo.shape[:2]
    found = align_faces(photo, detector)
    if not found:
        raise ValueError("no face found in the photo")
    named = isinstance(mask_spec, str) and mask_spec.upper() in masks.OCCLUSIONS
    if named:
        user_mask = None
    elif isinstance(mask_spec, str):
        user_mask = masks.from_spec(mask_spec, w, h) > 0.5
    else:
        if mask_spec.shape != (h, w):
            raise ValueError(f"mask is {mask_spec.shape[1]}x{mask_spec.shape[0]} but the image is {w}x{h}")
        user_mask = mask_spec > 0.5
        if not user_mask.any():
            raise ValueError("the mask is empty: nothing to complete")
    results = {b: [photo.copy() for _ in range(samples)] for b in blends}
    box = _box_mask()
    covered = np.zeros((h, w), bool)
    completed = 0
    boxes = []
    for matrix, _ in found:
        back = cv2.invertAffineTransform(matrix)
        box_photo = cv2.warpAffine(box, back, (w, h), flags=cv2.INTER_NEAREST) > 0.5
        x, y, bw, bh = cv2.boundingRect(box_photo.astype(np.uint8))
        boxes.append((x, y, x + bw, y + bh))
        if named:
            region = cv2.warpAffine(masks.occlusion(mask_spec.upper(), ALIGNED_W, ALIGNED_H), back, (w, h),
                                    flags=cv2.INTER_LINEAR) > 0.5
        else:
            region = user_mask
        region = region & box_photo & ~covered  # overlapping faces: the first (largest) one completes
        if not region.any():
            continue
        aligned = cv2.warpAffine(photo, matrix, (ALIGNED_W, ALIGNED_H), flags=cv2.INTER_AREA
                                 if abs(np.linalg.det(matrix[:, :2])) < 0.5 else cv2.INTER_LINEAR,
                                 borderMode=cv2.BORDER_REFLECT_101)
        # Missing in the aligned face: every aligned pixel whose footprint touches the photo's hole.
        hole = cv2.warpAffine(region.astype(np.float32), matrix, (ALIGNED_W, ALIGNED_H), flags=cv2.INTER_LINEAR)
        hole = ((hole > 1e-3) & (box > 0)).astype(np.float32)
        if not hole.any():
            continue
        outs = completer.complete(aligned, hole, seed=seed, samples=samples)
        for k, out in enumerate(outs):
            filled = cv2.warpAffine(out, back, (w, h), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE)
            for b, imgs in results.items():
                pasted = np.where(region[..., None], filled, imgs[k])
                imgs[k] = poisson_blend(pasted, imgs[k], region.astype(np.float32)) if b == "poisson" else pasted
        covered |= region
        completed += 1
    uncovered = 0 if user_mask is None else int((user_mask & ~covered).sum())
    if completed == 0:
        raise ValueError(f"the mask touches none of the {len(found)} face(s) found")
    if uncovered:
        log.warning("%d masked pixel(s) lie on no face's completion box and were left as they were", uncovered)
    return PhotoResult(results[blends[0]], len(found), completed, uncovered, covered, boxes, results)


def complete_image(completer: Completer, image: np.ndarray, mask_spec: str | np.ndarray, align: str = "auto",
                   seed: int = 0, samples: int = 1, blend: str = "none") -> tuple[list[np.ndarray], int]:
    """The one entry for any input: (completions, faces found). ``align="auto"``: a 178x218
    CelebA-aligned face goes straight to the model (faces found = 1), anything else through
    detection and alignment; ``"none"``: the whole image is taken as the face."""
    by_blend, faces = complete_image_blends(completer, image, mask_spec, align, seed, samples, (blend,))
    return by_blend[blend], faces


def complete_image_blends(completer: Completer, image: np.ndarray, mask_spec: str | np.ndarray, align: str = "auto",
                          seed: int = 0, samples: int = 1, blends: tuple[str, ...] = ("none",),
                          ) -> tuple[dict[str, list[np.ndarray]], int]:
    """``complete_image`` for several blends from one generator pass: ({blend: completions}, faces found)."""
    if align not in ("auto", "none"):
        raise ValueError(f"unknown align '{align}' (valid: auto, none)")
    h, w = image.shape[:2]
    if align == "auto" and not layout.is_aligned_size(w, h):
        done = complete_photo(completer, image, mask_spec, seed=seed, samples=samples, blends=blends)
        return done.by_blend, done.faces
    mask = masks.from_spec(mask_spec, w, h) if isinstance(mask_spec, str) else mask_spec
    return completer.complete_blends(image, mask, seed=seed, samples=samples, blends=blends), 1
