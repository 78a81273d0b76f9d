"""`facecomp demo`: complete a public-domain portrait under O1-O6, with no data and no training."""

from __future__ import annotations

import argparse
from pathlib import Path

from facecomp.cli.common import MODEL_HELP
from facecomp.contract import BLENDS, DEFAULT_BLEND


def add_command(sub) -> None:
    p = sub.add_parser("demo", help="complete scikit-image's public-domain astronaut portrait under O1-O6",
                       description="Finds the face in scikit-image's 'astronaut' (Eileen Collins, NASA, public "
                       "domain), completes it under each of the paper's masks O1-O6 with the shipped model, and "
                       "writes DIR/demo.png: one row per mask, original | masked | completed. Needs the 'faces' "
                       "extra for face detection.")
    p.add_argument("-o", "--out-dir", default="facecomp-demo", help="folder for demo.png (default ./facecomp-demo)")
    p.add_argument("--model", help=MODEL_HELP)
    p.add_argument("--blend", choices=BLENDS, default=DEFAULT_BLEND)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from facecomp import demo
    from facecomp.images import write_png
    from facecomp.masks import OCCLUSION_NAMES

    result = demo.figure(args.model, args.blend, args.seed)
    for name, pixels in result.completed.items():
        print(f"{name} ({OCCLUSION_NAMES[name]}): completed {pixels} pixels")
    out = Path(args.out_dir) / "demo.png"
    write_png(out, result.grid)
    print(f"wrote {out} (rows O1-O6; columns original | masked | completed)")
    return 0
