"""Inference: ``Completer(weights).complete(image, mask, seed, samples, blend, align=...)``, the one door.

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

The face itself goes through the engine contract (``facecomp.contract.prepare`` and ``finish``), as an
exported engine's client does: a 178x218 CelebA-aligned face is completed through the 128x128 face box of
:mod:`facecomp.layout`; any other image is stretched onto the 128x128 crop; a face found in a photo is
warped into the aligned layout first. The generator's pixels are warped back to the input's resolution
and pasted under the mask *at that resolution*, so a mask drawn on the input is honoured pixel for pixel.
The model only sees its face box. Masked pixels outside it (a brush stroke that strays onto the hair or
the neck) are filled by OpenCV's inpainting (Telea) from their surroundings, the model's completion
included, and counted in ``Completion.inpainted``; a mask with nothing inside the face box is refused.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from facecomp import contract, masks, models, wild
from facecomp.contract import DEFAULT_BLEND
from facecomp.images import read_rgb

log = logging.getLogger(__name__)
ImageInput = np.ndarray | Image.Image | str | os.PathLike  # [H, W, 3] uint8 RGB, a PIL image, or an image file
MaskInput = np.ndarray | Image.Image | str | os.PathLike  # [H, W] (1 = missing), a mask image or file, or a name


@dataclass
class Completion:
    """What a completion did, beyond the images (what facecomp's command line, server and demo report)."""

    by_blend: dict[str, list[np.ndarray]]  # blend -> ``samples`` x [H, W, 3] uint8, the input's size
    faces: int  # faces found (1 where the image is the face)
    completed: int  # faces the mask touched, completed by the model
    inpainted: int  # masked pixels the model could not see (on no face box), filled by OpenCV inpainting (Telea)
    mask: np.ndarray  # [H, W] bool, the pixels completed (by the model or inpainted)
    boxes: list[tuple[int, int, int, int]]  # each face's completion box in the image (x0, y0, x1, y1)

    @property
    def images(self) -> list[np.ndarray]:
        """The samples of the first blend asked for."""
        return next(iter(self.by_blend.values()))


def _as_rgb(image: ImageInput) -> np.ndarray:
    """[H, W, 3] uint8 RGB from an array (as is), a PIL image (converted to RGB, its size kept) or a path
    (read as a viewer shows it: EXIF orientation applied)."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    if isinstance(image, str | os.PathLike):
        return read_rgb(image)
    if not isinstance(image, np.ndarray):
        raise ValueError(f"image must be [H, W, 3] uint8, a PIL image or a path, got {type(image).__name__}")
    contract.check_image(image)
    return image


def _as_mask(mask: MaskInput, width: int, height: int, per_face: bool) -> np.ndarray | str:
    """The one place a user's mask becomes what a completion takes: an [H, W] array (1 = missing), or, where
    faces are found, the name of a region (O1..O6) to draw on each face. A PIL image or a path other than a
    ``str`` is read as a mask file is (grey > 127 = missing); a ``str`` is a name, ``box:...`` or a file."""
    if isinstance(mask, Image.Image):
        return (np.asarray(mask.convert("L")) > 127).astype(np.float32)
    if isinstance(mask, os.PathLike):
        return masks.from_image(mask)
    if isinstance(mask, str):
        if per_face and mask.upper() in masks.OCCLUSIONS:
            return mask.upper()
        return masks.from_spec(mask, width, height)
    return np.asarray(mask)


def _like(image: ImageInput, outs: list[np.ndarray]) -> list:
    """The completions in the kind of the input: arrays for an array, PIL images for a PIL image or a path."""
    return outs if isinstance(image, np.ndarray) else [Image.fromarray(o) for o in outs]


class Completer:
    """Face completion with a trained generator."""

    def __init__(self, generator: str | Path | Callable[[torch.Tensor], torch.Tensor] | None = None,
                 device: str | torch.device = "cpu"):
        """``generator``: the weights to load (``shipped`` or None for the shipped model, a weights file,
        a checkpoint or a run; see facecomp.weights.resolve), or a generator already built: an eager
        module, or a compiled engine (``facecomp.export.load_engine``) — anything that maps the
        [N, 3 or 4, S, S] input to [N, 3, S, S] and carries its ``cfg`` (a GeneratorConfig).
        Crop, fill and paste stay the engine contract's whatever runs the generator."""
        self.device = torch.device(device)
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
        """
        return _like(image, self._complete(image, mask, seed, samples, (blend,), align=align).by_blend[blend])

    def _complete(self, image: ImageInput, mask: MaskInput, seed: int = 0, samples: int = 1,
                  blends: tuple[str, ...] = (DEFAULT_BLEND,), *, align: str | bool | None = None,
                  detector=None) -> Completion:
        """``complete`` for facecomp's own front ends (command line, server, demo): the images as arrays for
        each blend in ``blends`` from one generator pass (the plain paste is what Poisson blending starts
        from), with the faces found and completed and the masked pixels inpainted. ``detector``: a
        ``faces.LandmarkDetector`` to reuse (default: this process's shared one)."""
        contract.check_request(samples, seed)  # before detection: a bad request costs nothing
        contract.check_blends(blends)
        photo = _as_rgb(image)
        h, w = photo.shape[:2]
        if align is None:
            align = False if isinstance(image, np.ndarray) else "auto"
        per_face = wild.finds_faces(align, w, h)
        spec = _as_mask(mask, w, h, per_face)
        if per_face:
            return self._complete_photo(photo, spec, seed, samples, blends, detector)
        by_blend, job = self._run(photo, spec, seed, samples, blends)
        off_box = job.hole & ~job.inside
        if off_box.any():
            log.debug("%d masked pixel(s) outside the face box filled by inpainting (Telea)", int(off_box.sum()))
        return Completion(by_blend, 1, 1, int(off_box.sum()), job.hole, [job.box])

    def _complete_photo(self, photo: np.ndarray, mask: np.ndarray | str, seed: int, samples: int,
                        blends: tuple[str, ...], detector) -> Completion:
        """Each face found, completed in the aligned layout and pasted back; masked pixels on no face's
        completion box inpainted after."""
        h, w = photo.shape[:2]
        hole = None if isinstance(mask, str) else contract.read_mask(mask, w, h)[1]  # refused before detection
        found = wild.find_faces(photo, mask if hole is None else hole, detector)
        by_blend = {b: [photo] * samples for b in blends}
        covered = np.zeros((h, w), bool)
        completed = 0
        for face in found:
            region = face.region & ~covered  # overlapping faces: the first (largest) one completes
            if not region.any():
                continue
            try:
                by_blend, _ = self._run(photo, region, seed, samples, blends, face.to_face, onto=by_blend)
            except contract.OutsideFaceBox:  # a sliver too thin to reach any pixel of the aligned face
                continue
            covered |= region
            completed += 1
        if completed == 0:
            raise ValueError(f"the mask touches none of the {len(found)} face(s) found")
        # A user who masked pixels wants them gone, face or not: what no face's completion covers is inpainted
        # from its surroundings (the faces' completions included).
        rest = np.zeros((h, w), bool) if hole is None else hole & ~covered
        if rest.any():
            log.debug("%d masked pixel(s) on no face's completion box filled by inpainting (Telea)", int(rest.sum()))
            by_blend = {b: [contract.inpaint(img, rest) for img in imgs] for b, imgs in by_blend.items()}
        return Completion(by_blend, len(found), completed, int(rest.sum()), covered | rest, [f.box for f in found])

    def _run(self, image: np.ndarray, mask: np.ndarray, seed: int, samples: int, blends: tuple[str, ...],
             to_face: np.ndarray | None = None,
             onto: dict[str, list[np.ndarray]] | None = None) -> tuple[dict[str, list[np.ndarray]], contract.Job]:
        """One face through the contract: ``samples`` samples in one generator pass, finished for each blend
        (into ``onto``'s pictures, per blend and sample, where given). Returns them and the first sample's job."""
        jobs = contract.prepare_samples(image, mask, seed, samples, self.generator.cfg.mask_channel, self.size,
                                        to_face)
        generated = self._generate(np.concatenate([job.filled for job in jobs]))
        finished = [contract.finish_blends(job, g, blends, None if onto is None else {b: onto[b][k] for b in blends})
                    for k, (job, g) in enumerate(zip(jobs, generated, strict=True))]
        return {b: [f[b] for f in finished] for b in blends}, jobs[0]

    @torch.no_grad()
    def _generate(self, filled: np.ndarray) -> np.ndarray:
        """The generator on the engine's input: [N, C, S, S] float32 -> [N, 3, S, S] float32, both in [-1, 1]."""
        return self.generator(torch.from_numpy(filled).to(self.device)).float().cpu().numpy()
