"""Hypothesis strategies for odd but possible inputs, shared by the fuzz tests (tests/test_fuzz_*.py).

Budgets: the ``ci`` profile (default) is seeded (``derandomize``), keeps no example database and runs
``examples(n)`` examples per test; ``FACECOMP_FUZZ_SCALE=10`` (or any factor) runs more, e.g. locally
before a release. Image content comes from a numpy generator seeded by one drawn integer, so a failing
example is small to shrink and print.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass

import numpy as np
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from PIL import Image

settings.register_profile("ci", derandomize=True, database=None, deadline=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                                 HealthCheck.function_scoped_fixture])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
SCALE = float(os.environ.get("FACECOMP_FUZZ_SCALE", "1"))


def examples(n: int) -> int:
    return max(1, round(n * SCALE))


MODES = ("RGB", "L", "LA", "P", "RGBA", "CMYK", "I;16", "1")
FORMATS = {  # the formats Pillow writes each mode in
    "RGB": ("PNG", "JPEG", "WEBP", "GIF", "TIFF", "BMP"),
    "L": ("PNG", "JPEG", "WEBP", "GIF", "TIFF", "BMP"),
    "LA": ("PNG", "TIFF", "WEBP"),
    "P": ("PNG", "GIF", "TIFF", "BMP"),
    "RGBA": ("PNG", "TIFF", "WEBP"),
    "CMYK": ("JPEG", "TIFF"),
    "I;16": ("PNG", "TIFF"),
    "1": ("PNG", "TIFF", "BMP", "GIF"),
}
EXIF_FORMATS = ("JPEG", "PNG", "WEBP", "TIFF")
ANIMATED_FORMATS = ("GIF", "PNG", "TIFF", "WEBP")
ALIGNED = (178, 218)

# (width, height): around the detectors' 40 px minimum, small photos, the aligned layout, slivers, large
small_sizes = st.one_of(
    st.tuples(st.integers(1, 48), st.integers(1, 48)),
    st.tuples(st.integers(49, 140), st.integers(49, 140)),
    st.just(ALIGNED),
    st.tuples(st.integers(1, 3), st.integers(100, 1500)),
    st.tuples(st.integers(100, 1500), st.integers(1, 3)),
)
sizes = st.one_of(small_sizes, st.tuples(st.integers(400, 1200), st.integers(400, 1200)))


def pixels(w: int, h: int, seed: int, content: str) -> np.ndarray:
    """[h, w, 3] uint8: noise, a smooth gradient (compresses, so large files stay small) or one colour."""
    rng = np.random.default_rng(seed)
    if content == "noise":
        return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    if content == "flat":
        return np.broadcast_to(rng.integers(0, 256, 3, dtype=np.uint8), (h, w, 3)).copy()
    yy, xx = np.mgrid[0:h, 0:w]
    a = rng.uniform(0.2, 2.0, 3)
    return ((np.sin(xx[..., None] * a / max(w, 1) * 6 + yy[..., None] * a[::-1] / max(h, 1) * 6) + 1) * 127.5
            ).astype(np.uint8)


def to_mode(rgb: np.ndarray, mode: str) -> Image.Image:
    img = Image.fromarray(rgb)
    if mode == "I;16":
        return Image.fromarray(rgb[..., 0].astype(np.uint16) * 257)
    return img.convert(mode)


def encode(img: Image.Image, fmt: str, orientation: int = 1, frames: int = 1) -> bytes:
    buf = io.BytesIO()
    kw: dict = {}
    if orientation != 1:
        exif = Image.Exif()
        exif[0x0112] = orientation
        kw["exif"] = exif.tobytes()
    if frames > 1:
        kw.update(save_all=True, append_images=[img.transpose(Image.Transpose.ROTATE_180)] * (frames - 1))
    if fmt == "WEBP":
        kw["lossless"] = True
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


@dataclass
class Photo:
    data: bytes
    what: str  # how it was made, for the failure report
    valid: bool  # made as a good image (it may still be refused: too small, too large, no face)

    def __repr__(self) -> str:  # the bytes would make Hypothesis's report hundreds of kB
        return f"Photo(<{len(self.data)} bytes>, {self.what!r}, valid={self.valid})"

    def _repr_pretty_(self, p, cycle) -> None:  # what Hypothesis's printer calls (it ignores __repr__ of dataclasses)
        p.text(repr(self))


@st.composite
def photo_files(draw, size_strategy=sizes, damage: str = "maybe") -> Photo:
    """Image file bytes: every mode and format, EXIF rotations, several frames; or broken ones.
    ``damage``: "maybe", "never" or "always" (truncated, flipped bytes, a lying header, random, empty)."""
    w, h = draw(size_strategy)
    mode = draw(st.sampled_from(MODES))
    fmt = draw(st.sampled_from(FORMATS[mode]))
    content = draw(st.sampled_from(("noise", "smooth", "flat")) if w * h <= 200_000 else st.sampled_from(
        ("smooth", "flat")))
    orientation = draw(st.sampled_from((1, 1, 3, 6, 8))) if fmt in EXIF_FORMATS else 1
    frames = draw(st.sampled_from((1, 1, 2))) if fmt in ANIMATED_FORMATS else 1
    if fmt == "WEBP" and max(w, h) > 16383 or fmt == "GIF" and mode == "CMYK":
        fmt = "PNG"
    data = encode(to_mode(pixels(w, h, draw(st.integers(0, 2**16)), content), mode), fmt, orientation, frames)
    what = f"{w}x{h} {mode} {fmt} orientation={orientation} frames={frames} {content}"
    broken = ("truncate", "flip", "lie", "random", "empty")
    damage = {"never": "none", "always": draw(st.sampled_from(broken))}.get(damage) or draw(
        st.sampled_from(("none",) * 6 + broken))
    if damage == "none":
        return Photo(data, what, True)
    if damage == "truncate":
        return Photo(data[:draw(st.integers(0, max(0, len(data) - 1)))], f"{what} truncated", False)
    if damage == "flip":
        b = bytearray(data)
        for _ in range(draw(st.integers(1, 8))):
            i = draw(st.integers(0, len(b) - 1))
            b[i] ^= draw(st.integers(1, 255))
        return Photo(bytes(b), f"{what} with flipped bytes", False)
    if damage == "lie":  # another format's signature in front of this one's body
        magic = draw(st.sampled_from((b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff\xe0", b"GIF89a", b"RIFF\0\0\0\0WEBP",
                                      b"BM", b"II*\0", b"%PDF-1.4\n")))
        return Photo(magic + data[len(magic):], f"{what} behind a {magic[:4]!r} header", False)
    if damage == "random":
        return Photo(np.random.default_rng(len(data)).bytes(draw(st.integers(1, 4096))), "random bytes", False)
    return Photo(b"", "empty file", False)


def bomb(limit: int) -> bytes:
    """A PNG just past ``limit`` pixels that is a few kB on disk."""
    side = int(limit**0.5) + 2
    return encode(Image.new("1", (side, side)), "PNG")


@st.composite
def mask_arrays(draw, w: int, h: int, centred: bool = False) -> np.ndarray:
    """[h, w] float32 in [0, 1] (1 = missing): empty, full, one pixel, a box (possibly off the face box or
    partly off the image), strokes, soft values. ``centred``: boxes start in the middle of the image (where
    the face is) rather than anywhere, so most masks are ones the model completes."""
    kind = draw(st.sampled_from(("box", "box", "strokes", "empty", "full", "pixel", "soft", "offbox")))
    m = np.zeros((h, w), np.float32)
    if kind == "full":
        m[:] = 1
    elif kind == "pixel":
        m[draw(st.integers(0, h - 1)), draw(st.integers(0, w - 1))] = 1
    elif kind in ("box", "soft"):
        x0, y0 = (draw(st.integers(w // 4, w // 2)), draw(st.integers(h // 4, h // 2))) if centred else \
            (draw(st.integers(-w // 2, w - 1)), draw(st.integers(-h // 2, h - 1)))
        x1, y1 = x0 + draw(st.integers(1, w)), y0 + draw(st.integers(1, h))
        m[max(y0, 0):max(y1, 0), max(x0, 0):max(x1, 0)] = draw(st.sampled_from((1.0, 0.3, 0.5, 0.51, 0.9)))
    elif kind == "strokes":
        import cv2

        rng = np.random.default_rng(draw(st.integers(0, 2**16)))
        pts = rng.integers(-max(w, h) // 4, [w + w // 4, h + h // 4], size=(draw(st.integers(2, 6)), 2))
        cv2.polylines(m, [pts.astype(np.int32)], False, 1.0, draw(st.integers(1, max(1, min(w, h) // 4))))
    elif kind == "offbox" and (w, h) == ALIGNED:  # a stroke below the chin: partly past the face box
        y = draw(st.integers(190, 210))
        m[y:y + draw(st.integers(1, 15)), draw(st.integers(0, 100)):draw(st.integers(101, 178))] = 1
    elif kind == "offbox":
        m[:, : max(1, w // 5)] = 1
    return m


def mask_file(m: np.ndarray, mode: str) -> bytes:
    """A mask array as a PNG in ``mode`` (white = missing; soft values stay grey)."""
    grey = Image.fromarray((np.clip(m, 0, 1) * 255).round().astype(np.uint8))
    if mode == "I;16":
        return encode(Image.fromarray(np.asarray(grey).astype(np.uint16) * 257), "PNG")
    return encode(grey.convert(mode), "PNG" if mode != "CMYK" else "TIFF")


MASK_MODES = ("L", "1", "RGB", "RGBA", "LA", "P", "I;16", "CMYK")
seeds = st.one_of(st.integers(0, 5), st.sampled_from((2**32 - 1, 2**32, 2**63, 2**64 - 1)),
                  st.sampled_from((-1, 2**64, -(2**70), 2**80)))
