"""Completion methods under evaluation: the classic baselines and trained generators.

Each method is a callable ``(image [H,W,3] uint8, mask [H,W] float) -> [H,W,3] uint8`` that keeps
every pixel outside the mask. Baselines: noise fill (the generator's own input, the paper's
"noise" probe of Fig. 11), OpenCV Telea and OpenCV Navier-Stokes inpainting.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import cv2
import numpy as np

from facecomp.kernels import reference
from facecomp.weights import RunFolder, is_shipped_name

Method = Callable[[np.ndarray, np.ndarray], np.ndarray]
INPAINT_RADIUS = 5  # pixels of context OpenCV's inpainting looks at around each missing pixel


def noise_fill(image: np.ndarray, mask: np.ndarray, seed: int = 0) -> np.ndarray:
    h, w = mask.shape
    z = reference.noise((1, 3, h, w), seed, 0)[0].permute(1, 2, 0).numpy()  # [-1, 1)
    noise = ((z + 1) * 127.5).round().clip(0, 255).astype(np.uint8)
    return np.where(mask[..., None] > 0.5, noise, image)


def _opencv(flag: int) -> Method:
    def inpaint(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
        out = cv2.inpaint(image, (mask > 0.5).astype(np.uint8) * 255, INPAINT_RADIUS, flag)
        return np.where(mask[..., None] > 0.5, out, image)

    return inpaint


BASELINES: dict[str, Method] = {
    "noise": noise_fill,
    "telea": _opencv(cv2.INPAINT_TELEA),
    "ns": _opencv(cv2.INPAINT_NS),
}


def baseline(name: str) -> Method:
    if name not in BASELINES:
        raise ValueError(f"unknown baseline '{name}' (valid: {', '.join(BASELINES)})")
    return BASELINES[name]


def model_name(spec: str) -> tuple[str, str]:
    """'NAME=PATH' or 'PATH' -> (name, path); a bare run's generator.safetensors is named after its folder."""
    if "=" in spec:
        name, path = spec.split("=", 1)
        return name, path
    if is_shipped_name(spec):  # a shipped generator's name names it
        return spec, spec
    p = Path(spec)
    published = p == RunFolder(p.parent).published()
    return (p.parent.name if published else p.stem if p.is_file() else p.name), spec


def model(path: str | None, blend: str = "none", seed: int = 0) -> Method:
    from facecomp.complete import Completer

    completer = Completer(path)

    def complete(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
        return completer.complete(image, mask, seed=seed, blend=blend)[0]

    return complete


def select(models: Sequence[str], baselines: Sequence[str] = (), blend: str = "none") -> dict[str, Method]:
    """The methods an evaluation compares, by name: ``baselines`` (names of BASELINES) first, then each of
    ``models`` ('[NAME=]PATH'; none: the shipped model), and with ``blend="poisson"`` each model again
    Poisson-blended as 'NAME+poisson'. Raises ValueError on an unknown baseline or a missing model path."""
    chosen: dict[str, Method] = {name: baseline(name) for name in baselines}
    for spec in models or [None]:
        name, path = model_name(spec) if spec else ("shipped", None)
        if path is not None and not is_shipped_name(path) and not Path(path).exists():
            raise ValueError(f"--model {path}: no such file or directory")
        chosen[name] = model(path, "none")
        if blend == "poisson":
            chosen[f"{name}+poisson"] = model(path, "poisson")
    return chosen
