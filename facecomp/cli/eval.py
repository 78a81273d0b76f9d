"""`facecomp eval table | sweep | diversity`: evaluate completion models like the paper."""

from __future__ import annotations

import argparse
from pathlib import Path

from facecomp.cli import common
from facecomp.contract import BLENDS
from facecomp.data.celeba import PARTITIONS


def _common(p: argparse.ArgumentParser, baselines: bool = True) -> None:
    p.add_argument("--model", action="append", default=[], metavar="[NAME=]WEIGHTS",
                   help="generator weights, run directory or a shipped name (shipped, paper-generator); repeat for "
                   "several (default: the shipped model)")
    if baselines:
        p.add_argument("--baselines", default="noise,telea,ns", help="comma-separated: noise, telea, ns ('' = none)")
    common.add_data_folder(p)
    p.add_argument("--partition", default="val", choices=tuple(PARTITIONS))
    p.add_argument("--limit", type=int, default=0, help="first N faces of the partition (0 = all)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--no-progress", action="store_true")


def add_command(sub) -> None:
    p = sub.add_parser("eval", help="evaluate models and baselines like the paper")
    esub = p.add_subparsers(dest="eval_command", required=True)
    t = esub.add_parser("table", help="SSIM / PSNR / identity distance on O1-O6 (the paper's Tables 1-3)",
                        description="One column per model and baseline; writes results.md, results.json and "
                        "grid.png (original, masked, each method) to --out.")
    _common(t)
    t.add_argument("--masks", default="O1,O2,O3,O4,O5,O6")
    t.add_argument("--blend", choices=BLENDS, default="none",
                   help="poisson: add a Poisson-blended column per model (the paper's M5)")
    t.add_argument("--resolution", choices=("input", "crop"), default="input",
                   help="draw masks and score at the input's 178x218 or on the 128x128 face crop")
    t.add_argument("--metrics", default="auto",
                   help="besides SSIM/PSNR: identity (dlib embedding distance, 'faces' extra), parsing (parsing "
                   "mIoU inside the hole), landmarks (dlib 68-point error inside the hole / inter-ocular distance, "
                   "and the share of completions dlib still detects); 'auto' = those installed, 'none' = none")
    t.add_argument("--parsing-weights", help="parsing network for --metrics parsing (default: shipped)")
    t.add_argument("--grid-faces", type=int, default=2,
                   help="faces in grid.png: one row per face and mask (16 to judge a model by eye)")
    t.add_argument("--workers", type=int, default=1,
                   help="worker processes, each scoring a contiguous share of the faces (0 = one per core); "
                   "much of the work is single-threaded (dlib, OpenCV), so one process leaves cores idle")
    t.set_defaults(func=run_table)
    s = esub.add_parser("sweep", help="SSIM / PSNR against square mask size 16..80 (the paper's Fig. 9)")
    _common(s)
    s.add_argument("--resolution", choices=("input", "crop"), default="input")
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=run_sweep)
    d = esub.add_parser("diversity", help="K completions from different noise (the paper's Fig. 10)")
    _common(d, baselines=False)
    d.add_argument("--mask", default="O3")
    d.add_argument("--samples", type=int, default=4)
    d.add_argument("--seed", type=int, default=0)
    d.set_defaults(func=run_diversity)
    r = esub.add_parser("recognition", help="top-1/3/5 recognition of completed probes (the paper's Fig. 11)",
                        description="Each identity's faces split in two by a seeded shuffle (--seed): one half the "
                        "gallery, unoccluded; the other the probes, under each mask, completed by each method "
                        "and ranked by dlib 128-D embedding distance to the nearest gallery face. Each method "
                        "is compared with noise fill probe by probe (exact McNemar). Needs the 'faces' extra "
                        "and identity labels (identity_CelebA.txt).")
    _common(r)
    r.add_argument("--masks", default="O1,O2,O3,O4,O5,O6")
    r.add_argument("--blend", choices=BLENDS, default="none",
                   help="poisson: add a Poisson-blended method per model, as in eval table")
    r.add_argument("--probes-per-identity", type=int, default=0, help="at most N probes per identity (0 = all)")
    r.add_argument("--seed", type=int, default=0, help="seed of the gallery/probe split")
    r.set_defaults(func=run_recognition)
    i = esub.add_parser("identity", help="sanity check of the identity embedding: same vs other identity",
                        description="Mean embedding distance between faces of the same identity and of different "
                        "identities, and nearest-neighbour top-1, on unoccluded faces.")
    common.add_data_folder(i)
    i.add_argument("--partition", default="val", choices=tuple(PARTITIONS))
    i.add_argument("--identities", type=int, default=20)
    i.add_argument("--per-identity", type=int, default=5)
    i.add_argument("--out", help="folder for identity.json")
    i.set_defaults(func=run_identity)


def _names(spec: str) -> list[str]:
    """A comma-separated flag's items ('' = none)."""
    return [s.strip() for s in spec.split(",") if s.strip()]


def run_table(args: argparse.Namespace) -> int:
    from facecomp.eval import evaluate, table

    result = evaluate.table(args.data, args.out, partition=args.partition, limit=args.limit, models=args.model,
                            baselines=_names(args.baselines), blend=args.blend, masks=_names(args.masks),
                            resolution=args.resolution, metrics=_names(args.metrics),
                            parsing_weights=args.parsing_weights, grid_faces=args.grid_faces, workers=args.workers,
                            progress=not args.no_progress)
    print(table.markdown(result))
    print(f"wrote {Path(args.out) / 'results.md'}, results.json, grid.png")
    return 0


def run_sweep(args: argparse.Namespace) -> int:
    from facecomp.eval import evaluate

    evaluate.sweep(args.data, args.out, partition=args.partition, limit=args.limit, models=args.model,
                   baselines=_names(args.baselines), resolution=args.resolution, seed=args.seed,
                   progress=not args.no_progress)
    print((Path(args.out) / "sweep.md").read_text())
    print(f"wrote {Path(args.out) / 'sweep.png'}, sweep.json, sweep.md")
    return 0


def run_diversity(args: argparse.Namespace) -> int:
    from facecomp.eval import evaluate

    if len(args.model) > 1:
        raise ValueError("diversity takes one --model")
    result = evaluate.diversity(args.data, args.out, partition=args.partition, limit=args.limit,
                                model=args.model[0] if args.model else None, mask=args.mask, samples=args.samples,
                                seed=args.seed)
    print(f"{args.samples} samples under {result['mask']}: mean pairwise |difference| inside the hole "
          f"{result['mean_pairwise_hole_mad']:.2f} / 255, largest difference outside {result['max_outside_diff']}")
    print(f"wrote {Path(args.out) / 'diversity.png'}, diversity.json")
    return 0


def run_recognition(args: argparse.Namespace) -> int:
    from facecomp.eval import evaluate, recognition

    result = evaluate.recognition(args.data, args.out, partition=args.partition, limit=args.limit,
                                  models=args.model, baselines=_names(args.baselines), blend=args.blend,
                                  masks=_names(args.masks), probes_per_identity=args.probes_per_identity,
                                  seed=args.seed, progress=not args.no_progress)
    print(recognition.markdown(result))
    print(f"wrote {Path(args.out) / 'recognition.md'}, results.json, recognition.png")
    return 0


def run_identity(args: argparse.Namespace) -> int:
    from facecomp.eval import evaluate

    check = evaluate.identity(args.data, args.out, partition=args.partition, identities=args.identities,
                              per_identity=args.per_identity)
    print(check.markdown())
    return 0
