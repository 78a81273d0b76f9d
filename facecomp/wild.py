"""Faces in unaligned photos of any size: which photos are searched, where each face found lies, and which
of the mask's pixels it completes.

Each face is found (dlib, ``facecomp.faces``) and mapped onto the 178x218 CelebA-aligned layout the model
was trained on by a similarity transform from five landmarks; ``facecomp.Completer`` completes it there
through the engine contract (``facecomp.contract.prepare`` with that transform, ``finish`` warps back) and
pastes the generated pixels under the mask in the photo's own coordinates, so every pixel outside the mask
keeps its value.

Masks: ``O1``..``O6`` name regions of each face (drawn in the aligned layout and warped into the photo, for
every face found); ``box:`` and mask images are in photo pixels and are completed by the model wherever
they fall on a face's completion box; the rest of such a mask is inpainted (``Completer``). The detector
is dlib's, built once per process (``facecomp.faces.shared_detector``) unless one is passed in.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from facecomp import contract, layout, masks
from facecomp.faces import NoFaceFound, align_faces

ALIGNS = ("auto", "none")  # detect + align unaligned photos, or take the whole image as the face
# Python callers may say True (look for faces whatever the image's size) and False (= "none") too.


def finds_faces(align: str | bool, width: int, height: int) -> bool:
    """Whether a width x height image has its faces found (True) or is the face itself (False).

    ``align``: "auto" (a 178x218 CelebA-aligned face goes straight to the model, anything else is searched),
    "none" or False (the whole image is the face), True (searched whatever its size)."""
    if isinstance(align, np.bool_):
        align = bool(align)
    if align is not True and align is not False and align not in ALIGNS:
        raise ValueError(f"unknown align {align!r} (valid: {', '.join(ALIGNS)}; in Python also True, False)")
    return align is True or (align == "auto" and not layout.is_aligned_size(width, height))


@dataclass(frozen=True)
class Face:
    """One face found in a photo."""

    to_face: np.ndarray  # 2x3, the photo's pixels -> the aligned layout's (``contract.prepare``'s to_face)
    box: tuple[int, int, int, int]  # (x0, y0, x1, y1), the photo's bounding box of its completion box
    region: np.ndarray  # [H, W] bool, the masked photo pixels on its completion box


def find_faces(photo: np.ndarray, mask: np.ndarray | str, detector=None) -> list[Face]:
    """Every face of ``photo`` (largest first), each with the part of ``mask`` it completes: a region's name
    (O1..O6, drawn on each face) or an [H, W] bool hole in photo pixels. Raises :class:`NoFaceFound`."""
    h, w = photo.shape[:2]
    found = align_faces(photo, detector)
    if not found:
        raise NoFaceFound(f"no face found in this {w}x{h} photo: give an aligned 178x218 face crop, or take the "
                          "whole image as the face (align=False in Python, --align none on the command line)")
    faces = []
    for to_face, _ in found:
        inside = contract.face_pixels(w, h, to_face)
        x, y, bw, bh = cv2.boundingRect(inside.astype(np.uint8))
        hole = _occlusion_in_photo(mask, to_face, w, h) if isinstance(mask, str) else mask
        faces.append(Face(to_face, (x, y, x + bw, y + bh), hole & inside))
    return faces


def _occlusion_in_photo(name: str, to_face: np.ndarray, width: int, height: int) -> np.ndarray:
    """[H, W] bool: the region ``name`` (O1..O6) of the face that ``to_face`` aligns, in photo pixels."""
    aligned_w, aligned_h = layout.ALIGNED_SIZE
    drawn = masks.occlusion(name, aligned_w, aligned_h)
    back = cv2.invertAffineTransform(to_face)
    return cv2.warpAffine(drawn, back, (width, height), flags=cv2.INTER_LINEAR) > 0.5
