"""The engine contract: what goes into an exported generator and what to do with what comes out.

Dependency-light on purpose (numpy and OpenCV only; no torch, no Pillow, no other facecomp module), so
any runtime's client (ONNX Runtime, Triton's Python backend, a TensorRT program) can reproduce
``Completer``:

    job = prepare(image, mask, seed)        # crop the face box to 128x128, fill the hole, add the mask channel
    generated = run(job.filled)              # float32 [1, 4, 128, 128] -> [1, 3, 128, 128], both in [-1, 1]
    completed = finish(job, generated)       # the model's pixels under the mask, at the input's size,
                                             # Poisson-blended (blend=DEFAULT_BLEND; blend="none": plain)

The steps are those of ``facecomp.complete.Completer.complete_full``, blends included, and the hole's
noise is the fused kernels' counter-based noise of ``kernels/reference.py``, ported to numpy bit for
bit, so same seed -> same noise -> the same pixels (tests/test_contract.py checks both).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from facecomp import __version__

BLENDS = ("none", "poisson")
# What every front door does unless told otherwise (facecomp complete, Completer.complete, serve, demo, and
# this contract's finish): the blend that wins on the validation partition (issue 16). Poisson blending
# (the paper's M5) beats the plain paste on SSIM, PSNR, hole PSNR, parsing agreement and identity distance
# for every mask (MODEL_CARD.md, "The default blend"); "none" stays one argument away. Stated here, not in
# facecomp.blend, because an engine's client imports this module alone.
DEFAULT_BLEND = "poisson"
MASK32 = 0xFFFFFFFF
C1, C2 = 0x7FEB352D, 0x846CA68B  # lowbias32 multipliers (kernels/reference.py)
MAX_SEED = 2**64
INPAINT_RADIUS = 5  # as facecomp.complete: masked pixels off the face box are filled by Telea's method
INPAINT_MAX_PIXELS = 250_000
# The aligned-face layout of facecomp/layout.py, stated here so this module needs nothing else
# (tests/test_contract.py checks they agree).
ALIGNED_SIZE = (178, 218)  # (width, height) of a CelebA-aligned face
CROP_BOX = (9, 41, 169, 201)  # (x0, y0, x1, y1), half-open, in the aligned face
CROP_SIZE = 128


def face_box(width: int, height: int) -> tuple[int, int, int, int]:
    """CROP_BOX for an aligned 178x218 face, else the whole image (as face_box in facecomp/layout.py)."""
    return CROP_BOX if (width, height) == ALIGNED_SIZE else (0, 0, width, height)


# ---- the fill noise (kernels/reference.py, in uint32 numpy arithmetic, which wraps mod 2**32 natively) ----

def _lowbias32_int(x: int) -> int:
    x ^= x >> 16
    x = (x * C1) & MASK32
    x ^= x >> 15
    x = (x * C2) & MASK32
    x ^= x >> 16
    return x


def keys(seed: int, offset: int) -> tuple[int, int]:
    """(seed, offset), each in [0, 2**64), -> the two 32-bit keys of the noise."""
    if not (0 <= seed < MAX_SEED and 0 <= offset < MAX_SEED):
        raise ValueError(f"seed and offset must be in [0, 2**64), got seed={seed}, offset={offset}")
    k0 = _lowbias32_int((seed & MASK32) ^ _lowbias32_int((seed >> 32) ^ 0x9E3779B9))
    k1 = _lowbias32_int((offset & MASK32) ^ _lowbias32_int((offset >> 32) ^ k0 ^ 0x85EBCA6B))
    return k0, k1


def _lowbias32(x: np.ndarray) -> np.ndarray:
    x = x ^ (x >> np.uint32(16))
    x = x * np.uint32(C1)
    x = x ^ (x >> np.uint32(15))
    x = x * np.uint32(C2)
    return x ^ (x >> np.uint32(16))


def noise(shape: tuple[int, ...], seed: int, offset: int = 0) -> np.ndarray:
    """Uniform noise in [-1, 1) for a tensor of ``shape`` (logical NCHW order), float32.

    Element i gets ``2 * (h >> 8) / 2**24 - 1`` with ``h = lowbias32(lowbias32(i ^ k0) + k1)`` and
    ``(k0, k1) = keys(seed, offset)``: the same bits as ``kernels.reference.noise`` and the fused kernels.
    """
    numel = int(np.prod(shape, dtype=np.int64))
    if numel >= 2**32:
        raise ValueError(f"tensor of {numel} elements is over the 2**32 the noise counter covers")
    k0, k1 = keys(seed, offset)
    i = np.arange(numel, dtype=np.uint32)
    h = _lowbias32(_lowbias32(i ^ np.uint32(k0)) + np.uint32(k1))
    u = (h >> np.uint32(8)).astype(np.float32) * np.float32(1.0 / 2**24)
    return (np.float32(2) * u - np.float32(1)).reshape(shape)


# ---- pre- and post-processing ----

@dataclass
class Job:
    """One sample on its way through an engine: ``filled`` goes in; ``finish`` needs the rest."""

    filled: np.ndarray  # [1, C, S, S] float32, C = 4 (RGB + mask) or 3
    image: np.ndarray  # [H, W, 3] uint8, the input
    hole: np.ndarray  # [H, W] bool, the pixels to complete
    box: tuple[int, int, int, int]  # (x0, y0, x1, y1) of the input the crop covers


def to_unit(image: np.ndarray) -> np.ndarray:
    """[H, W, 3] uint8 -> [3, H, W] float32 in [-1, 1] (x / 127.5 - 1, as facecomp.images.to_tensor)."""
    x = np.ascontiguousarray(image.transpose(2, 0, 1)).astype(np.float32)
    return x / np.float32(127.5) - np.float32(1.0)


def to_uint8(x: np.ndarray) -> np.ndarray:
    """[3, H, W] in [-1, 1] -> [H, W, 3] uint8 (clip, then round half to even, as facecomp.images.to_uint8)."""
    x = np.round((np.clip(x.astype(np.float32), -1, 1) + np.float32(1)) * np.float32(127.5))
    return x.astype(np.uint8).transpose(1, 2, 0)


def check_inputs(image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The same refusals as ``Completer``; returns the mask as float32 [H, W] and the hole as bool."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be [H, W, 3] uint8, got {image.shape} {image.dtype}")
    h, w = image.shape[:2]
    mask = np.asarray(mask)
    if mask.shape != (h, w):
        raise ValueError(f"mask is {'x'.join(map(str, mask.shape[::-1]))} but the image is {w}x{h}")
    mask = np.nan_to_num(mask.astype(np.float32), nan=0.0)
    hole = mask > 0.5
    if not hole.any():
        raise ValueError("the mask is empty: nothing to complete")
    if hole.all():
        raise ValueError("the mask covers the whole image: nothing to complete from")
    return mask, hole


def prepare(image: np.ndarray, mask: np.ndarray, seed: int = 0, sample: int = 0, mask_channel: bool = True,
            size: int = CROP_SIZE) -> Job:
    """image [H, W, 3] uint8 RGB; mask [H, W] in [0, 1] (1 = hole) -> the engine's input for sample ``sample``.

    The face box (:func:`face_box`: the 160x160 box of an aligned 178x218 face, else the
    whole image) is resampled to ``size`` (INTER_AREA); a crop pixel is in the hole if any input pixel it
    covers is, grown by one pixel; the hole holds ``noise((1, 3, S, S), seed, offset=sample)``.
    """
    mask, hole = check_inputs(image, mask)
    h, w = hole.shape
    x0, y0, x1, y1 = face_box(w, h)
    inside = np.zeros((h, w), bool)
    inside[y0:y1, x0:x1] = True
    if not (hole & inside).any():
        raise ValueError(f"the mask lies wholly outside the face box ({x0},{y0},{x1},{y1}) the model completes")
    crop = cv2.resize(image[y0:y1, x0:x1], (size, size), interpolation=cv2.INTER_AREA)
    inner = np.where(inside, np.clip(mask, 0, 1), 0)[y0:y1, x0:x1]
    crop_mask = cv2.resize(inner, (size, size), interpolation=cv2.INTER_AREA)
    m = cv2.dilate((crop_mask > 1e-3).astype(np.float32), np.ones((3, 3), np.uint8))[None]  # [1, S, S]

    x = to_unit(crop)  # [3, S, S]
    z = noise((1, 3, size, size), seed, sample)[0]
    filled = m * z + (np.float32(1) - m) * x  # the mask is binary here: each pixel is exactly z or x
    if mask_channel:
        filled = np.concatenate([filled, m])
    return Job(np.ascontiguousarray(filled[None], dtype=np.float32), np.asarray(image), hole, (x0, y0, x1, y1))


def finish(job: Job, generated: np.ndarray, blend: str = DEFAULT_BLEND) -> np.ndarray:
    """The engine's output ([1, 3, S, S] or [3, S, S] in [-1, 1]) -> the completed [H, W, 3] uint8 image.

    The generated crop is scaled back onto the face box (INTER_CUBIC) and pasted under the mask only;
    masked pixels outside the box (the model never saw them) are inpainted by Telea's method; then, with
    ``blend="poisson"``, the result is Poisson-blended into the original (:func:`poisson_blend`).
    """
    if blend not in BLENDS:
        raise ValueError(f"blend must be one of {', '.join(BLENDS)}, got {blend!r}")
    g = np.asarray(generated)
    if g.ndim == 4:
        g = g[0]
    x0, y0, x1, y1 = job.box
    back = job.image.copy()
    back[y0:y1, x0:x1] = cv2.resize(to_uint8(g), (x1 - x0, y1 - y0), interpolation=cv2.INTER_CUBIC)
    out = np.where(job.hole[..., None], back, job.image)
    inside = np.zeros(job.hole.shape, bool)
    inside[y0:y1, x0:x1] = True
    out = inpaint(out, job.hole & ~inside)
    return poisson_blend(out, job.image, job.hole) if blend == "poisson" else out


def poisson_blend(completed: np.ndarray, original: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The paper's M5: OpenCV's seamless cloning of the completed hole into the original. [H,W,3] uint8;
    ``mask`` [H, W], > 0.5 (or True) = hole. Pixels outside the hole stay the original's.

    seamlessClone needs the region off the image border, so both images are padded by reflection
    first and cropped back after.
    """
    pad = 8
    mask = np.asarray(mask, np.float32)
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


def inpaint(image: np.ndarray, region: np.ndarray) -> np.ndarray:
    """Telea's inpainting of ``region``, on a scaled-down copy past INPAINT_MAX_PIXELS (as facecomp.complete)."""
    if not region.any():
        return image
    n = int(region.sum())
    scale = min(1.0, (INPAINT_MAX_PIXELS / n) ** 0.5)
    if scale == 1.0:
        return cv2.inpaint(image, region.astype(np.uint8), INPAINT_RADIUS, cv2.INPAINT_TELEA)
    h, w = region.shape
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    m = (cv2.resize(region.astype(np.float32), size, interpolation=cv2.INTER_AREA) > 0).astype(np.uint8)
    small = cv2.inpaint(cv2.resize(image, size, interpolation=cv2.INTER_AREA), m, INPAINT_RADIUS, cv2.INPAINT_TELEA)
    return np.where(region[..., None], cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR), image)


def describe(in_channels: int = 4, size: int = CROP_SIZE) -> dict[str, str]:
    """The contract in words, for an artifact's record and the ONNX file's metadata_props."""
    x0, y0, x1, y1 = CROP_BOX
    aw, ah = ALIGNED_SIZE
    mask = ("channel 4 (index 3) is the mask: 1 = hole (to complete), 0 = known; binary"
            if in_channels == 4 else "no mask channel (3-channel generator): the hole shows only as noise")
    return {
        "layout": "NCHW",
        "color": "RGB",
        "value_range": "[-1, 1]: x / 127.5 - 1 for uint8 x; output to uint8: round((clip(y, -1, 1) + 1) * 127.5)",
        "input": f"float32 [batch, {in_channels}, {size}, {size}]: the face crop, hole filled with noise"
                 + (", then the mask" if in_channels == 4 else ""),
        "output": f"float32 [batch, 3, {size}, {size}]: the generated face crop, RGB in [-1, 1]",
        "mask": mask,
        "noise": (f"the hole holds uniform noise in [-1, 1): element i of the NCHW [1, 3, {size}, {size}] crop gets "
                  "2 * (h >> 8) / 2**24 - 1, h = lowbias32(lowbias32(i ^ k0) + k1) mod 2**32, (k0, k1) = "
                  "keys(seed, offset), counter-based, keyed by (seed, offset); sample k of a seed uses offset k "
                  "(facecomp.contract.noise = kernels/reference.py)"),
        "crop_box": f"{x0},{y0},{x1},{y1}",
        "crop": (f"an aligned {aw}x{ah} face: box x0,y0,x1,y1 = {x0},{y0},{x1},{y1} (half-open) resized to "
                 f"{size}x{size} (INTER_AREA); any other size: the whole image is the face box"),
        "postprocess": ("output resized back onto the box (INTER_CUBIC) and pasted under the mask only; masked "
                        "pixels off the box inpainted (Telea); then, by default, the hole Poisson-blended into the "
                        "original (OpenCV seamlessClone, NORMAL_CLONE) (facecomp.contract.finish)"),
        "facecomp_version": __version__,
    }
