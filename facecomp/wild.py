"""Completing faces in unaligned photos of any size.

Each face is found (dlib, ``facecomp.faces``), mapped onto the 178x218 CelebA-aligned layout the
model was trained on by a similarity transform from five landmarks, completed there, and warped
back; the generated pixels are pasted under the mask in the photo's own coordinates (hard, or by
Poisson blending), so every pixel outside the mask keeps its value.

Masks: ``O1``..``O6`` name regions of each face (they are drawn in the aligned layout and warped
into the photo, for every face found); ``box:`` and mask images are in photo pixels and are
completed by the model wherever they fall on a face's completion box. Masked pixels on no face's
box are filled by OpenCV's inpainting (Telea) and counted (``inpainted``); a mask that touches no
face at all is refused; a photo where no face is found raises :class:`facecomp.NoFaceFound`.

The Python entry is ``facecomp.Completer.complete(photo, mask, align="auto")`` (a path, a PIL image or an
array); :func:`complete_any` is the same on arrays, for the CLI and the server, and reports the faces
found and the pixels inpainted. The detector is dlib's, built once per process
(``facecomp.faces.shared_detector``) unless one is passed in.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Protocol

import cv2
import numpy as np

from facecomp import layout, masks
from facecomp.blend import DEFAULT_BLEND, Completion, check_blends, check_request, inpaint, poisson_blend
from facecomp.faces import NoFaceFound, align_faces

log = logging.getLogger(__name__)
ALIGNED_W, ALIGNED_H = layout.ALIGNED_SIZE
ALIGNS = ("auto", "none")  # detect + align unaligned photos, or take the whole image as the face
# Python callers may say True (look for faces whatever the image's size) and False (= "none") too.


class FaceCompleter(Protocol):
    """What completes one face: ``facecomp.Completer`` (its ``complete_face``)."""

    def complete_face(self, image: np.ndarray, mask: np.ndarray, seed: int = 0, samples: int = 1,
                      blends: tuple[str, ...] = ("none",)) -> Completion: ...


@dataclass
class PhotoResult:
    images: list[np.ndarray]  # one per sample, the photo's size (the first of ``blends``)
    faces: int  # faces found
    completed: int  # faces whose completion box the mask touched
    uncovered: int  # masked photo pixels on no face's completion box (filled by inpainting, see ``inpainted``)
    mask: np.ndarray  # [H, W] bool, the pixels that were completed (by the model or inpainted)
    boxes: list[tuple[int, int, int, int]]  # each found face's completion box in the photo (x0, y0, x1, y1)
    by_blend: dict[str, list[np.ndarray]]  # the samples for each blend asked for

    @property
    def inpainted(self) -> int:
        """Masked pixels the model could not complete (on no face's box), filled by OpenCV's Telea inpainting."""
        return self.uncovered


def _box_mask() -> np.ndarray:
    x0, y0, x1, y1 = layout.CROP_BOX
    box = np.zeros((ALIGNED_H, ALIGNED_W), np.float32)
    box[y0 + 1:y1 - 1, x0 + 1:x1 - 1] = 1  # one pixel in: interpolation at the border stays inside
    return box


def complete_photo(completer: FaceCompleter, photo: np.ndarray, mask_spec: str | np.ndarray, seed: int = 0,
                   samples: int = 1, blend: str = DEFAULT_BLEND, detector=None,
                   blends: tuple[str, ...] | None = None) -> PhotoResult:
    """``mask_spec``: O1..O6 (for every face), 'box:...' or a mask image path, or a [H, W] array (1 = missing).
    ``blends``: several blends from one generator pass per face (default: just ``blend``)."""
    blends = blends or (blend,)
    check_blends(blends)
    check_request(samples, seed)  # before detection: a bad request costs nothing
    h, w = photo.shape[:2]
    if not isinstance(mask_spec, str) and np.asarray(mask_spec).shape != (h, w):
        mask_spec = np.asarray(mask_spec)
        raise ValueError(f"mask is {'x'.join(map(str, mask_spec.shape[::-1]))} but the image is {w}x{h}")
    found = align_faces(photo, detector)
    if not found:
        raise NoFaceFound(f"no face found in this {w}x{h} photo: give an aligned 178x218 face crop, or take the "
                          "whole image as the face (align=False in Python, --align none on the command line)")
    named = isinstance(mask_spec, str) and mask_spec.upper() in masks.OCCLUSIONS
    if named:
        user_mask = None
    elif isinstance(mask_spec, str):
        user_mask = masks.from_spec(mask_spec, w, h) > 0.5
    else:
        user_mask = np.asarray(mask_spec) > 0.5
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
        outs = completer.complete_face(aligned, hole, seed=seed, samples=samples).images
        for k, out in enumerate(outs):
            filled = cv2.warpAffine(out, back, (w, h), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE)
            for b, imgs in results.items():
                pasted = np.where(region[..., None], filled, imgs[k])
                imgs[k] = poisson_blend(pasted, imgs[k], region.astype(np.float32)) if b == "poisson" else pasted
        covered |= region
        completed += 1
    if completed == 0:
        raise ValueError(f"the mask touches none of the {len(found)} face(s) found")
    # A user who masked pixels wants them gone, face or not: what no face's completion covers is inpainted
    # from its surroundings (the faces' completions included).
    rest = np.zeros((h, w), bool) if user_mask is None else user_mask & ~covered
    if rest.any():
        log.debug("%d masked pixel(s) on no face's completion box filled by inpainting (Telea)", int(rest.sum()))
        results = {b: inpaint(imgs, rest) for b, imgs in results.items()}
    return PhotoResult(results[blends[0]], len(found), completed, int(rest.sum()), covered | rest, boxes, results)


def complete_any(completer: FaceCompleter, image: np.ndarray, mask_spec: str | np.ndarray, align: str | bool = "auto",
                 seed: int = 0, samples: int = 1, blends: tuple[str, ...] = (DEFAULT_BLEND,),
                 detector=None) -> Completion:
    """Any [H, W, 3] uint8 image: images per blend, faces completed, and how many masked pixels the model could
    not see and OpenCV's inpainting filled (``inpainted``). ``align``: "auto" (a 178x218 CelebA-aligned face
    goes straight to the model, anything else through detection and alignment), "none" or False (the whole
    image is the face), True (detection and alignment whatever the size). ``detector``: a
    ``faces.LandmarkDetector`` to reuse (default: this process's shared one)."""
    if isinstance(align, np.bool_):
        align = bool(align)
    if align is not True and align is not False and align not in ALIGNS:
        raise ValueError(f"unknown align {align!r} (valid: {', '.join(ALIGNS)}; in Python also True, False)")
    h, w = image.shape[:2]
    if align is True or (align == "auto" and not layout.is_aligned_size(w, h)):
        done = complete_photo(completer, image, mask_spec, seed=seed, samples=samples, blends=blends,
                              detector=detector)
        return Completion(done.by_blend, done.inpainted, done.faces)
    mask = masks.from_spec(mask_spec, w, h) if isinstance(mask_spec, str) else mask_spec
    return completer.complete_face(image, mask, seed=seed, samples=samples, blends=blends)
