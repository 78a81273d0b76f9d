"""Image I/O through Pillow, with the checks a server or a training run needs.

Every failure (missing, truncated, not an image, a decompression bomb) is a ``ValueError`` with
one line that names the file, so callers can skip, count or report it.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

# 40 megapixels: far beyond any face photo, small enough that one decode cannot exhaust memory.
MAX_PIXELS = 40_000_000
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


class ImageTooLarge(ValueError):
    """Over the pixel limit (or a decompression bomb)."""


class NotAnImage(ValueError):
    """Data Pillow does not recognise as any image format."""


def decode(data: bytes, mode: str = "RGB", max_pixels: int = MAX_PIXELS, name: str = "image") -> np.ndarray:
    """Image file bytes -> [H, W, 3] ('RGB') or [H, W] ('L') uint8. Failures are one-line
    ``ValueError``s naming ``name``: ImageTooLarge, NotAnImage, or a plain one for corrupt data."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                w, h = img.size
                if w * h > max_pixels:
                    raise ImageTooLarge(f"{name}: {w}x{h} is over the {max_pixels:,}-pixel limit")
                img.load()  # decode now: a truncated file fails here, not later
                return np.asarray(img.convert(mode))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageTooLarge(f"{name}: refused, over the {max_pixels:,}-pixel limit (decompression bomb?)") from None
    except UnidentifiedImageError:
        raise NotAnImage(f"{name}: not an image Pillow can read") from None
    except (OSError, SyntaxError) as e:  # Pillow reports truncated/corrupt data as OSError
        raise ValueError(f"{name}: corrupt or truncated image ({e})") from None


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
