"""`facecomp eval table | sweep | diversity`: evaluate completion models like the paper."""

from __future__ import annotations

import argparse
from pathlib import Path

from facecomp.cli import common
from facecomp.contract import BLENDS
from facecomp.data.celeba import PARTITIONS


def _common(p: argparse.ArgumentParser, baselines: bool = True) -> None:
    p.add_argument("--model", action="append", default=[], metavar="[NAME=]WEIGHTS",
                   help="generator weights or run directory; repeat for several (default: the shipped model)")
    if baselines:
        p.add_argument("--baselines", default="noise,telea,ns", help="comma-separated: noise, telea, ns ('' = none)")
    common.add_data_folder(p)
    p.add_argument("--partition", default="val", choices=tuple(PARTITIONS))
    p.add_argument("--limit", type=int, default=0, help="first N faces of the partition (0 = all)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--no-progress", action="store_true")


def add_parser(sub) -> None:
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
                        description="Gallery: each identity's first face; probes: its other faces under each "
                        "mask, completed by each method; ranked by dlib 128-D embedding distance. Needs the "
                        "'faces' extra and identity labels (identity_CelebA.txt).")
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


def _methods(args: argparse.Namespace, blend: str = "none") -> dict:
    from facecomp.eval import methods

    chosen: dict[str, methods.Method] = {}
    for name in [b.strip() for b in getattr(args, "baselines", "").split(",") if b.strip()]:
        chosen[name] = methods.baseline(name)
    for spec in args.model or [None]:
        name, path = methods.model_name(spec) if spec else ("shipped", None)
        if path is not None and path != "shipped" and not Path(path).exists():
            raise ValueError(f"--model {path}: no such file or directory")
        chosen[name] = methods.model(path, "none")
        if blend == "poisson":
            chosen[f"{name}+poisson"] = methods.model(path, "poisson")
    return chosen


def _face_metrics(spec: str, parsing_weights: str | None) -> tuple:
    """identity, parsing (or 'auto': each one whose weights are installed; the rest named on stderr)."""
    import sys

    from facecomp import faces
    from facecomp.eval import table
    from facecomp.runtime import MissingExtra
    from facecomp.weights import SHIPPED

    names = [s.strip() for s in spec.split(",") if s.strip()]
    auto = names == ["auto"]
    if auto:
        names = ["identity", "parsing", "landmarks"]
    chosen = []
    for name in names:
        if name == "landmarks":
            if auto and not faces.available():
                print(f"facecomp: note: left out: {MissingExtra('faces', 'the landmark error')}", file=sys.stderr)
                continue
            from facecomp.eval.landmarks import FaceFound, LandmarkError, LandmarkModel

            model = LandmarkModel()
            chosen += [LandmarkError(model), FaceFound(model)]
            continue
        if name == "identity":
            if auto and not faces.available():
                print(f"facecomp: note: left out: {MissingExtra('faces', 'the identity distance')}", file=sys.stderr)
                continue
            chosen.append(table.IdentityDistance())
        elif name == "parsing":
            if auto and not parsing_weights and not SHIPPED["parsing"].is_file():
                print("facecomp: note: no parsing agreement: no shipped parsing weights", file=sys.stderr)
                continue
            chosen.append(table.ParsingAgreement(parsing_weights))
        elif name != "none":
            raise ValueError(f"unknown metric '{name}' (valid: identity, parsing, landmarks, auto, none)")
    return tuple(chosen)


def _files(args: argparse.Namespace) -> list[Path]:
    from facecomp.data.celeba import CelebAIndex

    return CelebAIndex.open(args.data).files(args.partition, args.limit)


def _table_parts(model: list[str], baselines: str, blend: str, metrics: str, parsing_weights: str | None) -> tuple:
    """The table's methods and per-face metrics; module-level so that --workers processes can build their own."""
    spec = argparse.Namespace(model=model, baselines=baselines)
    return _methods(spec, blend), _face_metrics(metrics, parsing_weights)


def run_table(args: argparse.Namespace) -> int:
    import functools
    import os

    from facecomp.eval import table

    mask_names = _masks(args.masks)
    build = functools.partial(_table_parts, args.model, args.baselines, args.blend, args.metrics, args.parsing_weights)
    if args.workers < 0:
        raise ValueError(f"--workers {args.workers}: must be 0 (one per core) or more")
    res = table.run_parallel(build, _files(args), mask_names, args.resolution, grid_faces=args.grid_faces,
                             out=Path(args.out), progress=not args.no_progress,
                             workers=args.workers or os.cpu_count() or 1)
    print(table.markdown(res))
    print(f"wrote {Path(args.out) / 'results.md'}, results.json, grid.png")
    return 0


def run_sweep(args: argparse.Namespace) -> int:
    from facecomp.eval import sweep

    result = sweep.run(_methods(args), _files(args), args.resolution, args.seed, progress=not args.no_progress)
    sweep.write(result, Path(args.out))
    print((Path(args.out) / "sweep.md").read_text())
    print(f"wrote {Path(args.out) / 'sweep.png'}, sweep.json, sweep.md")
    return 0


def run_diversity(args: argparse.Namespace) -> int:
    from facecomp import masks as masks_mod
    from facecomp.complete import Completer
    from facecomp.eval import diversity

    if args.mask.upper() not in masks_mod.OCCLUSIONS:
        raise ValueError(f"unknown mask '{args.mask}' (valid: {', '.join(masks_mod.OCCLUSIONS)})")
    if not 2 <= args.samples <= 16:
        raise ValueError(f"--samples must be in 2..16, got {args.samples}")
    if len(args.model) > 1:
        raise ValueError("diversity takes one --model")
    path = None
    if args.model:
        from facecomp.eval.methods import model_name

        path = model_name(args.model[0])[1]
    result = diversity.run(Completer(path), _files(args), args.mask.upper(), args.samples, args.seed, Path(args.out))
    print(f"{args.samples} samples under {args.mask.upper()}: mean pairwise |difference| inside the hole "
          f"{result['mean_pairwise_hole_mad']:.2f} / 255, largest difference outside {result['max_outside_diff']}")
    print(f"wrote {Path(args.out) / 'diversity.png'}, diversity.json")
    return 0


def _masks(spec: str) -> list[str]:
    from facecomp import masks as masks_mod

    names = [m.strip().upper() for m in spec.split(",") if m.strip()]
    for name in names:
        if name not in masks_mod.OCCLUSIONS:
            raise ValueError(f"unknown mask '{name}' (valid: {', '.join(masks_mod.OCCLUSIONS)})")
    return names


def run_recognition(args: argparse.Namespace) -> int:
    from facecomp.data.celeba import CelebAIndex
    from facecomp.eval import recognition

    index = CelebAIndex.open(args.data)
    if not index.identity_of:
        raise ValueError(f"{args.data}: no identity_CelebA.txt, so no identities to recognise")
    result = recognition.run(_methods(args, args.blend), _files(args), index.identity, _masks(args.masks),
                             args.probes_per_identity, progress=not args.no_progress, seed=args.seed)
    recognition.write(result, Path(args.out))
    print(recognition.markdown(result))
    print(f"wrote {Path(args.out) / 'recognition.md'}, results.json, recognition.png")
    return 0


def run_identity(args: argparse.Namespace) -> int:
    import json
    from collections import defaultdict

    from facecomp.data.celeba import CelebAIndex
    from facecomp.eval.identity_check import identity_check
    from facecomp.identity_embedding import IdentityEmbedder

    index = CelebAIndex.open(args.data)
    by_id = defaultdict(list)
    for f in index.files(args.partition):
        by_id[index.identity(f)].append(f)
    chosen = [(f, i) for i in sorted(k for k in by_id if k is not None)[: args.identities]
              for f in by_id[i][: args.per_identity]]
    if len({i for _, i in chosen}) < 2:
        raise ValueError(f"{args.data}: fewer than two identities in the {args.partition} partition")
    check = identity_check(IdentityEmbedder(), [f for f, _ in chosen], [i for _, i in chosen])
    print(check.markdown())
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "identity.json").write_text(json.dumps(check.__dict__, indent=2))
    return 0
