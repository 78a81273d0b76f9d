"""The paper's Fig. 10: K completions of one masked face from different noise.

Reports, per face, the mean absolute difference between every pair of completions inside the hole
(0..255 scale; 0 would mean the noise is ignored) and the largest difference outside it (must be 0).
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np

from facecomp import images, masks


def run(completer, files: list[Path], mask_name: str, samples: int, seed: int = 0, out: Path | None = None) -> dict:
    rows, per_face = [], []
    for path in files:
        image = images.read_rgb(path)
        h, w = image.shape[:2]
        mask = masks.occlusion(mask_name, w, h)
        outs = completer.complete(image, mask, seed=seed, samples=samples)
        hole = mask > 0.5
        inside = [float(np.abs(a[hole].astype(int) - b[hole]).mean()) for a, b in itertools.combinations(outs, 2)]
        outside = max(int(np.abs(o[~hole].astype(int) - image[~hole]).max()) for o in outs)
        per_face.append({"file": path.name, "pairwise_hole_mad": float(np.mean(inside)), "max_outside_diff": outside})
        rows.append(np.concatenate([image, np.where(hole[..., None], 255, image).astype(np.uint8), *outs], axis=1))
    result = {"mask": mask_name, "samples": samples, "faces": per_face,
              "mean_pairwise_hole_mad": float(np.mean([f["pairwise_hole_mad"] for f in per_face])),
              "max_outside_diff": max(f["max_outside_diff"] for f in per_face)}
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "diversity.json").write_text(json.dumps(result, indent=2))
        images.write_png(out / "diversity.png", np.concatenate(rows, axis=0))
    return result
