"""Image metrics from scikit-image, and a mean with its 95% interval.

SSIM and PSNR are scikit-image's (``structural_similarity``, ``peak_signal_noise_ratio``) on uint8
RGB images (data range 255). PSNR inside the hole uses scikit-image's ``mean_squared_error`` on the
hole's pixels only. The sharpness ratio (``sharpness``) uses scikit-image's Sobel filter. Identical
images have infinite PSNR; summaries report how many such values
they left out rather than averaging an infinity.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats
from skimage.color import rgb2gray
from skimage.filters import sobel
from skimage.metrics import mean_squared_error, peak_signal_noise_ratio, structural_similarity


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """[H, W, 3] uint8 pair -> SSIM over the whole image (7x7 windows, per channel, averaged)."""
    return float(structural_similarity(a, b, channel_axis=2, data_range=255))


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB over the whole image (inf for identical images)."""
    if np.array_equal(a, b):
        return math.inf
    return float(peak_signal_noise_ratio(a, b, data_range=255))


def psnr_hole(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    """PSNR in dB over the pixels where mask > 0.5 only."""
    hole = mask > 0.5
    if not hole.any():
        raise ValueError("psnr_hole: the mask is empty")
    mse = mean_squared_error(a[hole].astype(np.float64), b[hole].astype(np.float64))
    return math.inf if mse == 0 else float(10 * np.log10(255.0**2 / mse))


def sharpness(completed: np.ndarray, original: np.ndarray, mask: np.ndarray) -> float:
    """Mean Sobel gradient magnitude (grey) inside the hole of ``completed`` over that of ``original``.

    SSIM and PSNR reward blur; this does not: a smeared fill scores far below 1, noise far above, a fill
    with the original's texture near 1. NaN when the original is flat inside the hole.
    """
    hole = mask > 0.5
    if not hole.any():
        raise ValueError("sharpness: the mask is empty")
    done, ref = (float(sobel(rgb2gray(img))[hole].mean()) for img in (completed, original))
    return done / ref if ref > 0 else math.nan


def summary(values: list[float]) -> dict[str, float]:
    """Mean and the half-width of its 95% t-interval, over the finite values."""
    v = np.asarray(values, dtype=np.float64)
    finite = v[np.isfinite(v)]
    n = len(finite)
    mean = float(finite.mean()) if n else math.nan
    half = float(stats.t.ppf(0.975, n - 1) * finite.std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan
    return {"mean": mean, "ci95": half, "n": n, "non_finite": int(len(v) - n)}
