"""Image I/O through Pillow, with the checks a server or a training run needs.

Every failure (missing, truncated, not an image, a decompression bomb) is a ``ValueError`` with
one line that names the file, so callers can skip, count or report it.

What a photo looks like is what a viewer shows: the EXIF orientation is applied (a phone's portrait
shot stored sideways comes out upright, at the size a browser reports), only the first frame of an
animation is read, and 16-bit greyscale is scaled to 8 bits rather than clipped.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# 40 megapixels: far beyond any face photo, small enough that one decode cannot exhaust memory.
MAX_PIXELS = 40_000_000
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


class ImageTooLarge(ValueError):
    """Over the pixel limit (or a decompression bomb)."""


class NotAnImage(ValueError):
    """Data Pillow does not recognise as any image format."""


class UnsupportedPixels(ValueError):
    """A pixel format with no 8-bit RGB or grey equivalent."""


def decode(data: bytes, mode: str = "RGB", max_pixels: int = MAX_PIXELS, name: str = "image") -> np.ndarray:
    """Image file bytes -> [H, W, 3] ('RGB') or [H, W] ('L') uint8, upright per its EXIF orientation.
    Failures are one-line ``ValueError``s naming ``name``: ImageTooLarge, NotAnImage, or a plain one
    for corrupt data or a pixel format with no 8-bit RGB/grey equivalent."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            # Pillow warns about damaged metadata it skips (corrupt EXIF, a tag past the end of the file); the
            # pixels decode or fail on their own, and a CLI user should see one line, not a warning block.
            warnings.simplefilter("ignore", UserWarning)
            with Image.open(io.BytesIO(data)) as img:
                w, h = img.size
                if w * h > max_pixels:
                    raise ImageTooLarge(f"{name}: {w}x{h} is over the {max_pixels:,}-pixel limit")
                img.load()  # decode now: a truncated file fails here, not later
                return _convert(_upright(img), mode, name)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageTooLarge(f"{name}: refused, over the {max_pixels:,}-pixel limit (decompression bomb?)") from None
    except UnidentifiedImageError:
        raise NotAnImage(f"{name}: not an image Pillow can read") from None
    except (ImageTooLarge, UnsupportedPixels):
        raise
    except MemoryError:
        raise ImageTooLarge(f"{name}: not enough memory to decode it") from None
    except Exception as e:  # noqa: BLE001
        # Pillow reports truncated/corrupt data mostly as OSError, but its format plugins let other types
        # escape on hostile bytes (struct.error, IndexError, EOFError, ... seen while fuzzing): whatever the
        # type, the bytes are at fault, and the caller needs one line, not a traceback.
        raise ValueError(f"{name}: corrupt or truncated image ({type(e).__name__}: {e})".splitlines()[0]) from None


def _upright(img: Image.Image) -> Image.Image:
    """The image as viewers show it (EXIF orientation applied). A broken EXIF block is ignored, as
    viewers do: the pixels are still good."""
    try:
        return ImageOps.exif_transpose(img)
    except Exception:  # noqa: BLE001
        return img


def _convert(img: Image.Image, mode: str, name: str) -> np.ndarray:
    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N"):
        # 16-bit grey: Pillow's own conversion clips at 255 (a 16-bit photo would come out white).
        img = Image.fromarray((np.asarray(img).astype(np.uint32) >> 8).astype(np.uint8))
    try:
        return np.asarray(img.convert(mode))
    except ValueError:
        pass
    try:  # modes with no direct path to grey (LAB, La) go through RGB
        return np.asarray(img.convert("RGB").convert(mode))
    except ValueError:
        raise UnsupportedPixels(f"{name}: pixel format {img.mode} cannot be converted to {mode}") from None


def _open(path: str | Path, mode: str) -> np.ndarray:
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    return decode(path.read_bytes(), mode, name=str(path))


def read_rgb(path: str | Path) -> np.ndarray:
    """[H, W, 3] uint8."""
    return _open(path, "RGB")


def read_gray(path: str | Path) -> np.ndarray:
    """[H, W] uint8."""
    return _open(path, "L")


def write_png(path: str | Path, image: np.ndarray) -> None:
    """Write [H, W, 3] or [H, W] uint8 as PNG, creating the parent folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(image)).save(path)


# output formats: name -> (Pillow format, save options); JPEG and WebP at a quality that keeps skin
# texture, since a completion is judged by its detail
OUTPUT_FORMATS = {"png": ("PNG", {}), "jpg": ("JPEG", {"quality": 95}), "webp": ("WEBP", {"quality": 95})}
SUFFIX_FORMAT = {".png": "png", ".jpg": "jpg", ".jpeg": "jpg", ".webp": "webp"}


def write_image(path: str | Path, image: np.ndarray, fmt: str | None = None) -> None:
    """Write [H, W, 3] uint8 as ``fmt`` (png | jpg | webp; default: from the suffix, else PNG)."""
    path = Path(path)
    fmt = fmt or SUFFIX_FORMAT.get(path.suffix.lower(), "png")
    if fmt not in OUTPUT_FORMATS:
        raise ValueError(f"unknown output format '{fmt}' (valid: {', '.join(OUTPUT_FORMATS)})")
    name, options = OUTPUT_FORMATS[fmt]
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(image)).save(path, format=name, **options)


def list_images(folder: str | Path) -> list[Path]:
    return sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def to_tensor(image: np.ndarray):
    """[H, W, 3] uint8 -> [3, H, W] float32 in [-1, 1]."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(127.5).sub_(1.0)


def to_uint8(tensor) -> np.ndarray:
    """[3, H, W] in [-1, 1] -> [H, W, 3] uint8."""
    x = tensor.detach().float().clamp(-1, 1).add(1).mul(127.5).round().byte()
    return x.permute(1, 2, 0).cpu().numpy()
