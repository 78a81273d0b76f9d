"""The demo figure of `facecomp demo`: a public-domain portrait completed under O1-O6, with no data and no
training: scikit-image's 'astronaut' (Eileen Collins, NASA, public domain), its face found, aligned,
completed and pasted back under each of the paper's masks."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from facecomp import masks
from facecomp.contract import DEFAULT_BLEND


def portrait() -> np.ndarray:
    from skimage import data

    return np.ascontiguousarray(data.astronaut())  # [512, 512, 3] uint8


@dataclass
class DemoFigure:
    grid: np.ndarray  # [H, W, 3] uint8: one row per mask, original | masked | completed, around the face
    completed: dict[str, int]  # mask name -> pixels completed


def figure(model: str | Path | None = None, blend: str = DEFAULT_BLEND, seed: int = 0) -> DemoFigure:
    """The portrait completed under each of O1-O6 by ``model`` (default: the shipped one); each row is
    cropped to the face box with an eighth of its width as margin."""
    from facecomp.complete import Completer

    photo = portrait()
    completer = Completer(model)
    rows, completed = [], {}
    for name in masks.OCCLUSIONS:
        done = completer._complete(photo, name, seed=seed, blends=(blend,), align=True)
        x0, y0, x1, y1 = done.boxes[0]
        pad = (x1 - x0) // 8
        x0, y0 = max(0, x0 - pad), max(0, y0 - pad)
        x1, y1 = min(photo.shape[1], x1 + pad), min(photo.shape[0], y1 + pad)
        masked = np.where(done.mask[..., None], 255, photo).astype(np.uint8)
        rows.append(np.concatenate([v[y0:y1, x0:x1] for v in (photo, masked, done.images[0])], axis=1))
        completed[name] = int(done.mask.sum())
    height = min(r.shape[0] for r in rows)
    width = min(r.shape[1] for r in rows)
    return DemoFigure(np.concatenate([r[:height, :width] for r in rows], axis=0), completed)
