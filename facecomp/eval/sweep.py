"""The paper's Fig. 9: SSIM / PSNR against the size of a square mask (16..80, step 8).

Each face gets, for each size, one square at a position drawn uniformly inside the face region of
the 128x128 crop (``FACE_REGION``, seeded by (seed, face index, size)); every method sees the same
squares. At the input resolution the square is mapped through the crop box like O1-O6.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from tqdm import tqdm

from facecomp import masks, metrics
from facecomp.eval.methods import Method
from facecomp.eval.table import load

FACE_REGION = (16, 24, 112, 128)  # (x0, y0, x1, y1) in crop pixels: brows to chin, cheek to cheek


def square_at(size: int, width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    """A size x size (crop pixels) square uniformly inside FACE_REGION, drawn at width x height. [H, W]"""
    x0, y0, x1, y1 = FACE_REGION
    x = int(rng.integers(x0, x1 - size + 1))
    y = int(rng.integers(y0, y1 - size + 1))
    return masks.crop_box(width, height, x, y, x + size, y + size)


def run(methods: dict[str, Method], files: list[Path], resolution: str = "input", seed: int = 0,
        sizes: tuple[int, ...] = masks.SWEEP_SIZES, progress: bool = True) -> dict:
    values = {k: {s: {m: [] for m in methods} for s in sizes} for k in ("ssim", "psnr")}
    for i, path in enumerate(tqdm(files, desc="sweep", disable=not progress, unit="face")):
        image = load(path, resolution)
        h, w = image.shape[:2]
        for size in sizes:
            mask = square_at(size, w, h, np.random.default_rng([seed, i, size]))
            for name, method in methods.items():
                done = method(image, mask)
                values["ssim"][size][name].append(metrics.ssim(done, image))
                values["psnr"][size][name].append(metrics.psnr(done, image))
    return {"faces": len(files), "resolution": resolution, "sizes": list(sizes), "methods": list(methods),
            "summary": {k: {str(s): {m: metrics.summary(v) for m, v in per.items()} for s, per in by.items()}
                        for k, by in values.items()}}


def write(result: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    (out / "sweep.json").write_text(json.dumps(result, indent=2))
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, label in zip(axes, ("ssim", "psnr"), ("SSIM", "PSNR (dB)"), strict=True):
        for method in result["methods"]:
            ys = [result["summary"][key][str(s)][method]["mean"] for s in result["sizes"]]
            ax.plot(result["sizes"], ys, marker="o", label=method)
        ax.set_xlabel("square mask size (pixels of the 128x128 crop)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle(f"Mask-size sweep, {result['faces']} faces ({result['resolution']} resolution)")
    fig.tight_layout()
    fig.savefig(out / "sweep.png", dpi=100)
    plt.close(fig)
    lines = ["| size | " + " | ".join(f"{m} SSIM | {m} PSNR" for m in result["methods"]) + " |",
             "|---|" + "---|---|" * len(result["methods"])]
    for s in result["sizes"]:
        cells = []
        for m in result["methods"]:
            cells += [f"{result['summary']['ssim'][str(s)][m]['mean']:.3f}",
                      f"{result['summary']['psnr'][str(s)][m]['mean']:.2f}"]
        lines.append(f"| {s} | " + " | ".join(cells) + " |")
    (out / "sweep.md").write_text("\n".join(lines) + "\n")
