"""`facecomp demo`: complete a public-domain portrait under O1-O6, with no data and no training."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from facecomp.contract import BLENDS, DEFAULT_BLEND


def add_parser(sub) -> None:
    p = sub.add_parser("demo", help="complete scikit-image's public-domain astronaut portrait under O1-O6",
                       description="Finds the face in scikit-image's 'astronaut' (Eileen Collins, NASA, public "
                       "domain), completes it under each of the paper's masks O1-O6 with the shipped model, and "
                       "writes DIR/demo.png: one row per mask, original | masked | completed. Needs the 'faces' "
                       "extra for face detection.")
    p.add_argument("-o", "--out-dir", default="facecomp-demo", help="folder for demo.png (default ./facecomp-demo)")
    p.add_argument("--model", help="generator weights (default: the shipped model)")
    p.add_argument("--blend", choices=BLENDS, default=DEFAULT_BLEND)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run)


def portrait() -> np.ndarray:
    from skimage import data

    return np.ascontiguousarray(data.astronaut())  # [512, 512, 3] uint8


def run(args: argparse.Namespace) -> int:
    from facecomp import masks
    from facecomp.complete import Completer
    from facecomp.images import write_png

    photo = portrait()
    completer = Completer(args.model)
    rows = []
    for name in masks.OCCLUSIONS:
        done = completer._complete(photo, name, seed=args.seed, blends=(args.blend,), align=True)
        x0, y0, x1, y1 = done.boxes[0]
        pad = (x1 - x0) // 8
        x0, y0 = max(0, x0 - pad), max(0, y0 - pad)
        x1, y1 = min(photo.shape[1], x1 + pad), min(photo.shape[0], y1 + pad)
        masked = np.where(done.mask[..., None], 255, photo).astype(np.uint8)
        rows.append(np.concatenate([v[y0:y1, x0:x1] for v in (photo, masked, done.images[0])], axis=1))
        print(f"{name} ({masks.OCCLUSION_NAMES[name]}): completed {int(done.mask.sum())} pixels")
    height = min(r.shape[0] for r in rows)
    width = min(r.shape[1] for r in rows)
    out = Path(args.out_dir) / "demo.png"
    write_png(out, np.concatenate([r[:height, :width] for r in rows], axis=0))
    print(f"wrote {out} (rows O1-O6; columns original | masked | completed)")
    return 0
