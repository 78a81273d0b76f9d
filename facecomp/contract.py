"""The engine contract: the one transform between a photo and the generator, both ways.

``prepare`` turns an image and a mask into the generator's input and ``finish`` turns the generator's
output back into the image; ``facecomp.Completer`` (aligned faces, whole images, and each face of a photo
in the wild), serve, the Triton model and any client of an exported engine all go through them:

    job = prepare(image, mask, seed)        # crop the face box to 128x128, fill the hole, add the mask channel
    generated = run(job.filled)              # float32 [1, 4, 128, 128] -> [1, 3, 128, 128], both in [-1, 1]
    completed = finish(job, generated)       # the model's pixels under the mask, at the input's size,
                                             # Poisson-blended (blend=DEFAULT_BLEND; blend="none": plain)

Dependency-light on purpose (numpy, OpenCV and the aligned-face geometry of ``facecomp.layout``; no torch,
no Pillow), so any runtime's client (ONNX Runtime, Triton's Python backend, a TensorRT program) completes
exactly as ``Completer`` does. The hole's noise is the fused kernels' counter-based noise of
``kernels/reference.py``, ported to numpy bit for bit, so same seed -> same noise -> the same pixels
(tests/test_contract.py checks both).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace

import cv2
import numpy as np

from facecomp import __version__
from facecomp.layout import ALIGNED_SIZE, CROP_BOX, CROP_SIZE, face_box

BLENDS = ("none", "poisson")
# What every front door does unless told otherwise (facecomp complete, Completer.complete, serve, demo, and
# this contract's finish): the blend that wins on the validation partition. Poisson blending
# (the paper's M5) beats the plain paste on SSIM, PSNR, hole PSNR, parsing agreement and identity distance
# for every mask (MODEL_CARD.md, "The default blend"); "none" stays one argument away. Stated here because
# an engine's client imports this module alone.
DEFAULT_BLEND = "poisson"
MASK32 = 0xFFFFFFFF
C1, C2 = 0x7FEB352D, 0x846CA68B  # lowbias32 multipliers (kernels/reference.py)
MAX_SEED = 2**64
INPAINT_RADIUS = 5  # masked pixels off the face box are filled by Telea's method from this many pixels around
# Telea costs about 1.2 us per filled pixel, so a larger region is filled on a scaled-down copy.
INPAINT_MAX_PIXELS = 250_000
# Past this many input pixels per crop pixel the upscaled completion reads as a soft patch with a visible
# edge: its seam is feathered and the photo's grain added (an aligned 178x218 face is 1.25: left as is).
UPSCALED = 1.5
GRAIN_OFFSET = 2**63  # the grain's noise is noise(..., seed, GRAIN_OFFSET + sample): apart from the fill's
GRAIN_SIGMA = 1.0  # the grain is what a Gaussian blur of this sigma (input pixels) takes out of the photo


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


# ---- the refusals: one wording each, for every front door ----

class OutsideFaceBox(ValueError):
    """The mask has no pixel on the face box, the only part of the input the model sees."""


def check_image(image) -> None:
    """A one-line ``ValueError`` unless ``image`` is an [H, W, 3] uint8 array."""
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be [H, W, 3] uint8, got {getattr(image, 'shape', type(image).__name__)} "
                         f"{getattr(image, 'dtype', '')}".rstrip())


def check_request(samples: int, seed: int) -> None:
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    if not 0 <= seed < MAX_SEED:
        raise ValueError(f"seed must be in 0..2**64-1, got {seed}")


def check_blends(blends: tuple[str, ...]) -> None:
    for blend in blends:
        if blend not in BLENDS:
            raise ValueError(f"blend must be one of {', '.join(BLENDS)}, got {blend!r}")


def read_mask(mask, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """The one reading of a mask array: [H, W] of any number type or bool, 1 (> 0.5) = hole, NaN = known.
    Returns the mask as float32 [H, W] and the hole as bool; refuses another shape and an empty hole."""
    mask = np.asarray(mask)
    if mask.shape != (height, width):
        raise ValueError(f"mask is {'x'.join(map(str, mask.shape[::-1]))} but the image is {width}x{height}")
    mask = np.nan_to_num(mask.astype(np.float32), nan=0.0)
    hole = mask > 0.5
    if not hole.any():
        raise ValueError("the mask is empty: nothing to complete")
    return mask, hole


# ---- the transform ----

@dataclass(frozen=True)
class Job:
    """One sample on its way through an engine: ``filled`` goes in; ``finish`` needs the rest.

    The face is what the model's crop is cut from: the input itself (an aligned 178x218 face through its
    face box, any other image whole), or, given ``to_face``, the input warped into the aligned layout (a
    face found in a photo)."""

    filled: np.ndarray  # [1, C, S, S] float32, C = 4 (RGB + mask) or 3
    image: np.ndarray  # [H, W, 3] uint8, the input
    hole: np.ndarray  # [H, W] bool, the input's pixels to complete
    inside: np.ndarray  # [H, W] bool, the input's pixels on the face box; the rest of the hole is inpainted
    face: np.ndarray  # [h, w, 3] uint8, the face the crop is cut from
    face_hole: np.ndarray  # [h, w] bool, the hole in the face's pixels
    box: tuple[int, int, int, int]  # (x0, y0, x1, y1) of the face that the crop covers
    to_face: np.ndarray | None = None  # 2x3, the input's pixels -> the aligned layout's; None: the input is the face
    seed: int = 0
    sample: int = 0


def to_unit(image: np.ndarray) -> np.ndarray:
    """[H, W, 3] uint8 -> [3, H, W] float32 in [-1, 1] (x / 127.5 - 1, as facecomp.images.to_tensor)."""
    x = np.ascontiguousarray(image.transpose(2, 0, 1)).astype(np.float32)
    return x / np.float32(127.5) - np.float32(1.0)


def to_uint8(x: np.ndarray) -> np.ndarray:
    """[3, H, W] in [-1, 1] -> [H, W, 3] uint8 (clip, then round half to even, as facecomp.images.to_uint8)."""
    x = np.round((np.clip(x.astype(np.float32), -1, 1) + np.float32(1)) * np.float32(127.5))
    return x.astype(np.uint8).transpose(1, 2, 0)


def _aligned_box() -> np.ndarray:
    """[218, 178] float32: the aligned layout's face box, one pixel in, so interpolation at its border stays inside."""
    x0, y0, x1, y1 = CROP_BOX
    box = np.zeros(ALIGNED_SIZE[::-1], np.float32)
    box[y0 + 1:y1 - 1, x0 + 1:x1 - 1] = 1
    return box


def face_pixels(width: int, height: int, to_face: np.ndarray | None = None) -> np.ndarray:
    """[H, W] bool: the pixels of a width x height input that lie on the face box (see :class:`Job`)."""
    if to_face is None:
        x0, y0, x1, y1 = face_box(width, height)
        inside = np.zeros((height, width), bool)
        inside[y0:y1, x0:x1] = True
        return inside
    back = cv2.invertAffineTransform(to_face)
    return cv2.warpAffine(_aligned_box(), back, (width, height), flags=cv2.INTER_NEAREST) > 0.5


def _face(image: np.ndarray, mask: np.ndarray, hole: np.ndarray,
          to_face: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """The face the crop is cut from and its mask (float32, in [0, 1]; > 0 marks a crop pixel missing)."""
    if to_face is None:
        return image, np.clip(mask, 0, 1)
    shrinks = abs(np.linalg.det(to_face[:, :2])) < 0.5
    face = cv2.warpAffine(image, to_face, ALIGNED_SIZE, flags=cv2.INTER_AREA if shrinks else cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REFLECT_101)
    # Missing in the aligned face: every pixel whose footprint touches the input's hole, on the box.
    touched = cv2.warpAffine(hole.astype(np.float32), to_face, ALIGNED_SIZE, flags=cv2.INTER_LINEAR) > 1e-3
    return face, (touched & (_aligned_box() > 0)).astype(np.float32)


def prepare(image: np.ndarray, mask: np.ndarray, seed: int = 0, sample: int = 0, mask_channel: bool = True,
            size: int = CROP_SIZE, to_face: np.ndarray | None = None) -> Job:
    """image [H, W, 3] uint8 RGB; mask [H, W] in [0, 1] (1 = hole) -> the engine's input for sample ``sample``.

    The face box (:func:`facecomp.layout.face_box`: the 160x160 box of an aligned 178x218 face, else the
    whole image) is resampled to ``size`` (INTER_AREA); a crop pixel is in the hole if any input pixel it
    covers is, grown by one pixel; the hole holds ``noise((1, 3, S, S), seed, offset=sample)``. ``to_face``
    (a 2x3 matrix taking the input's pixels to the aligned layout's) first warps the input into that layout.
    """
    return _prepare(image, mask, seed, (sample,), mask_channel, size, to_face)[0]


def prepare_samples(image: np.ndarray, mask: np.ndarray, seed: int = 0, samples: int = 1, mask_channel: bool = True,
                    size: int = CROP_SIZE, to_face: np.ndarray | None = None) -> list[Job]:
    """:func:`prepare` for samples 0 .. samples - 1 of one seed, the crop cut once."""
    return _prepare(image, mask, seed, range(samples), mask_channel, size, to_face)


def _prepare(image: np.ndarray, mask: np.ndarray, seed: int, samples: Iterable[int], mask_channel: bool, size: int,
             to_face: np.ndarray | None) -> list[Job]:
    check_image(image)
    h, w = image.shape[:2]
    mask, hole = read_mask(mask, w, h)
    face, face_mask = _face(image, mask, hole, to_face)
    face_hole = face_mask > 0.5
    if face_hole.all():
        raise ValueError("the mask covers the whole image: nothing to complete from")
    x0, y0, x1, y1 = face_box(face.shape[1], face.shape[0])
    inner = face_mask[y0:y1, x0:x1]
    if not face_hole[y0:y1, x0:x1].any():
        raise OutsideFaceBox(f"the mask lies wholly outside the face box ({x0},{y0},{x1},{y1}) the model completes")
    crop = cv2.resize(face[y0:y1, x0:x1], (size, size), interpolation=cv2.INTER_AREA)
    # A crop pixel is missing if any face pixel it covers is (area resampling, then > 0),
    # grown by one pixel so resampling at the hole's edge never mixes in a missing pixel.
    crop_mask = cv2.resize(inner, (size, size), interpolation=cv2.INTER_AREA)
    m = cv2.dilate((crop_mask > 1e-3).astype(np.float32), np.ones((3, 3), np.uint8))[None]  # [1, S, S]
    x = to_unit(crop)  # [3, S, S]
    frame = Job(np.empty(0, np.float32), image, hole, face_pixels(w, h, to_face), face, face_hole, (x0, y0, x1, y1),
                to_face, seed)
    jobs = []
    for k in samples:
        z = noise((1, 3, size, size), seed, k)[0]
        filled = m * z + (np.float32(1) - m) * x  # the mask is binary here: each pixel is exactly z or x
        if mask_channel:
            filled = np.concatenate([filled, m])
        jobs.append(replace(frame, filled=np.ascontiguousarray(filled[None], dtype=np.float32), sample=k))
    return jobs


def finish(job: Job, generated: np.ndarray, blend: str = DEFAULT_BLEND) -> np.ndarray:
    """The engine's output ([1, 3, S, S] or [3, S, S] in [-1, 1]) -> the completed [H, W, 3] uint8 image.

    The generated crop is scaled back onto the face box (INTER_CUBIC; with ``to_face``, then warped back
    into the input, INTER_CUBIC) and pasted under the mask only; where that upscales the crop by more than
    UPSCALED (:func:`magnification`), the photo's grain is added in the hole and the seam feathered inside
    it; masked pixels off the box (the model never saw them) are inpainted by Telea's method; then, with
    ``blend="poisson"``, the result is Poisson-blended into the original (:func:`poisson_blend`).
    """
    return finish_blends(job, generated, (blend,))[blend]


def finish_blends(job: Job, generated: np.ndarray, blends: tuple[str, ...] = (DEFAULT_BLEND,),
                  onto: Mapping[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """:func:`finish` once per blend from one engine output. ``onto`` (blend -> [H, W, 3] uint8) pastes into
    other pictures than the input: a photo whose other faces were completed first, so that a face's
    Poisson blend takes its boundary from their completions, not from masked pixels."""
    check_blends(blends)
    completion = _in_input(job, generated)
    upscaled = magnification(job) > UPSCALED
    if upscaled:
        completion = _with_grain(job, completion)
    pasted: dict[int, np.ndarray] = {}  # by picture: plain and Poisson start from one paste where they share it
    done = {}
    for blend in blends:
        base = job.image if onto is None else onto[blend]
        if id(base) not in pasted:
            fill = _feathered(job, completion, base) if upscaled else completion
            out = np.where(job.hole[..., None], fill, base)
            pasted[id(base)] = inpaint(out, job.hole & ~job.inside)
        done[blend] = poisson_blend(pasted[id(base)], base, job.hole) if blend == "poisson" else pasted[id(base)]
    return done


def _in_input(job: Job, generated: np.ndarray) -> np.ndarray:
    """The generated crop in the input's pixels ([H, W, 3] uint8; what lies under the hole is the completion)."""
    g = np.asarray(generated)
    if g.ndim == 4:
        g = g[0]
    x0, y0, x1, y1 = job.box
    face = job.face.copy()
    face[y0:y1, x0:x1] = cv2.resize(to_uint8(g), (x1 - x0, y1 - y0), interpolation=cv2.INTER_CUBIC)
    if job.to_face is None:
        return face
    face = np.where(job.face_hole[..., None], face, job.face)
    h, w = job.hole.shape
    return cv2.warpAffine(face, cv2.invertAffineTransform(job.to_face), (w, h), flags=cv2.INTER_CUBIC,
                          borderMode=cv2.BORDER_REPLICATE)


# ---- pasting into a face larger than the crop ----
# The generated 128x128 crop, upscaled into a large face, lacks the photo's finest detail (its grain), and the
# mask's edge, sharp at the photo's resolution, cuts a coarse completion off a fine photo. Both are mended
# in the photo's pixels: noise that tops the completion's fine residual up to the photo's, and a seam that
# fades the completion in from the known pixels over about two crop pixels.

def magnification(job: Job) -> float:
    """Input pixels per crop pixel along a side (the geometric mean of both axes): how much the paste upscales."""
    x0, y0, x1, y1 = job.box
    scale = np.sqrt((x1 - x0) * (y1 - y0)) / job.filled.shape[-1]
    if job.to_face is not None:
        scale /= np.sqrt(abs(np.linalg.det(job.to_face[:, :2])))
    return float(scale)


def _around(region: np.ndarray, margin: int) -> tuple[slice, slice]:
    """Rows and columns of ``region``'s bounding box grown by ``margin`` pixels, within the image."""
    x, y, w, h = cv2.boundingRect(region.astype(np.uint8))
    rows, cols = region.shape
    return slice(max(0, y - margin), min(rows, y + h + margin)), slice(max(0, x - margin), min(cols, x + w + margin))


def _disk(radius: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))


def grain_level(image: np.ndarray, where: np.ndarray) -> np.ndarray:
    """Per channel, the noise level of ``image`` ([h, w, C] or [h, w]) over ``where`` ([h, w] bool): the robust
    standard deviation (1.4826 x the median absolute deviation) of what a Gaussian blur of GRAIN_SIGMA takes
    out. Robust, so that the edges of brows, eyes and hair in the measured pixels count as little as possible."""
    x = image.astype(np.float32)
    residual = x - cv2.GaussianBlur(x, (0, 0), GRAIN_SIGMA)
    r = residual[where].reshape(int(where.sum()), -1)
    return np.float32(1.4826) * np.median(np.abs(r - np.median(r, axis=0)), axis=0)


def _with_grain(job: Job, completion: np.ndarray) -> np.ndarray:
    """The completion with grain added in the hole, so its fine residual matches the photo's known face pixels
    around the hole (per channel, in a ring about three crop pixels wide). The grain is the counter-based
    noise of (seed, GRAIN_OFFSET + sample), one field for the three channels (a photo's grain is mostly
    brightness: JPEG keeps colour at half resolution), each channel scaled to what it lacks."""
    ring_width = max(4, round(3 * magnification(job)))
    rows, cols = _around(job.hole, ring_width + 4 * round(GRAIN_SIGMA))
    hole = job.hole[rows, cols] & job.inside[rows, cols]
    ring = cv2.dilate(hole.astype(np.uint8), _disk(ring_width)).astype(bool) & ~job.hole[rows, cols]
    ring &= job.inside[rows, cols]
    # the completion's own level away from the seam, where the blur sees only completed pixels
    inner = cv2.erode(hole.astype(np.uint8), _disk(3 * round(GRAIN_SIGMA))).astype(bool)
    if ring.sum() < 64 or inner.sum() < 64:
        return completion
    photo = grain_level(job.image[rows, cols], ring)
    own = grain_level(completion[rows, cols], inner)
    lacking = np.sqrt(np.maximum(photo**2 - own**2, 0))  # independent noises add in variance
    z = noise((1, 1, *hole.shape), job.seed, GRAIN_OFFSET + job.sample)[0, 0]
    grain = z[..., None] * (lacking / max(float(grain_level(z, hole)[0]), 1e-6))
    out = completion.copy()
    window = out[rows, cols]
    window[hole] = np.clip(np.round(window[hole] + grain[hole]), 0, 255).astype(np.uint8)
    return out


def _feathered(job: Job, completion: np.ndarray, base: np.ndarray) -> np.ndarray:
    """The completion faded in from the hole's edge over about two crop pixels: at depth d into the hole, a
    smoothstep of d / width between the nearest known pixel of ``base`` (never a masked one: what the mask
    hides must not come back) and the completion. Outside the hole nothing changes."""
    width = max(2.0, 2 * magnification(job))
    rows, cols = _around(job.hole, int(np.ceil(width)) + 1)
    hole = job.hole[rows, cols]
    known = np.argwhere(~hole)  # in raster order, which is the order of DIST_LABEL_PIXEL's labels
    if len(known) == 0:
        return completion
    depth, nearest = cv2.distanceTransformWithLabels(hole.astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_5,
                                                     labelType=cv2.DIST_LABEL_PIXEL)
    ys, xs = known[nearest - 1].transpose(2, 0, 1)
    edge = base[rows, cols][ys, xs].astype(np.float32)
    t = np.clip(depth / width, 0, 1)[..., None]
    alpha = t * t * (3 - 2 * t)
    out = completion.copy()
    window = out[rows, cols]
    mixed = np.round(alpha * window.astype(np.float32) + (1 - alpha) * edge).astype(np.uint8)
    window[hole] = mixed[hole]
    return out


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
    """Telea's inpainting of ``region`` ([H, W] bool) of an [H, W, 3] uint8 image, from every pixel around it;
    on a scaled-down copy past INPAINT_MAX_PIXELS."""
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
        "postprocess": ("output resized back onto the box (INTER_CUBIC) and pasted under the mask only; where "
                        f"that upscales by more than {UPSCALED}x, grain matched to the photo's is added in the hole "
                        "and the seam feathered inside it; masked pixels off the box inpainted (Telea); then, by "
                        "default, the hole Poisson-blended into the original (OpenCV seamlessClone, NORMAL_CLONE) "
                        "(facecomp.contract.finish)"),
        "facecomp_version": __version__,
    }
