"""`facecomp eval`: evaluate completion models like the paper."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub) -> None:
    p = sub.add_parser("eval", help="evaluate models and baselines like the paper")
    esub = p.add_subparsers(dest="eval_command", required=True)
    t = esub.add_parser("table", help="SSIM / PSNR / hole PSNR on O1-O6 (the paper's Tables 1-2)",
                        description="One column per model and baseline; writes results.md, results.json and "
                        "grid.png (original, masked, each method) to --out.")
    t.add_argument("--model", action="append", default=[], metavar="[NAME=]WEIGHTS",
                   help="generator weights or run directory; repeat for several (default: the shipped model)")
    t.add_argument("--baselines", default="noise,telea,ns", help="comma-separated: noise, telea, ns ('' for none)")
    t.add_argument("--data", default="../shared/data/celeba", help="CelebA folder")
    t.add_argument("--partition", default="val", choices=("train", "val", "test"))
    t.add_argument("--limit", type=int, default=0, help="first N faces of the partition (0 = all)")
    t.add_argument("--masks", default="O1,O2,O3,O4,O5,O6")
    t.add_argument("--blend", choices=("none", "poisson"), default="none",
                   help="poisson: add a Poisson-blended column per model (the paper's M5)")
    t.add_argument("--resolution", choices=("input", "crop"), default="input",
                   help="draw masks and score at the input's 178x218 or on the 128x128 face crop")
    t.add_argument("--out", required=True, help="output folder")
    t.add_argument("--no-progress", action="store_true")
    t.set_defaults(func=run_table)


def run_table(args: argparse.Namespace) -> int:
    from facecomp import masks as masks_mod
    from facecomp.data.celeba import CelebAIndex
    from facecomp.eval import methods, table

    mask_names = [m.strip().upper() for m in args.masks.split(",") if m.strip()]
    for name in mask_names:
        if name not in masks_mod.OCCLUSIONS:
            raise ValueError(f"unknown mask '{name}' (valid: {', '.join(masks_mod.OCCLUSIONS)})")
    chosen: dict[str, methods.Method] = {}
    for name in [b.strip() for b in args.baselines.split(",") if b.strip()]:
        chosen[name] = methods.baseline(name)
    for spec in args.model or [None]:
        name, path = methods.model_name(spec) if spec else ("shipped", None)
        if path is not None and not Path(path).exists():
            raise ValueError(f"--model {path}: no such file or directory")
        chosen[name] = methods.model(path, "none")
        if args.blend == "poisson":
            chosen[f"{name}+poisson"] = methods.model(path, "poisson")
    files = CelebAIndex.open(args.data).files(args.partition, args.limit)
    res = table.run(chosen, files, mask_names, args.resolution, out=Path(args.out), progress=not args.no_progress)
    print(table.markdown(res))
    print(f"wrote {Path(args.out) / 'results.md'}, results.json, grid.png")
    return 0
