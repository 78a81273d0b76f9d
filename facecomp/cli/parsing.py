"""`facecomp parsing`: the face-parsing network used by the stage-3 loss."""

from __future__ import annotations

import argparse

import torch

from facecomp import config as config_mod
from facecomp.cli import common
from facecomp.config import ParsingTrainConfig


def add_command(sub) -> None:
    p = sub.add_parser("parsing", help="face-parsing network tools")
    psub = p.add_subparsers(dest="parsing_command", required=True)
    init = psub.add_parser("init", help="write an UNTRAINED parsing network (for testing the stage-3 plumbing only)",
                           description="Writes a randomly initialised parsing network of the config's shapes. "
                           "It lets stage 3 run end to end before a trained parsing network exists; its "
                           "parsing loss carries no knowledge of faces.")
    init.add_argument("--config", default="smoke", help="preset or TOML file whose [parsing] section sets the shapes")
    init.add_argument("--seed", type=int, default=0)
    init.add_argument("-o", "--output", required=True, help="safetensors file to write")
    init.add_argument("overrides", nargs="*", metavar="key=value")
    init.set_defaults(func=run_init)

    label = psub.add_parser("label", help="derive parsing labels for CelebA faces from dlib's 68 landmarks",
                            description="Draws 11-class label maps (PNG, label ids 0..10) from dlib's 68-point "
                            "landmarks, with hair from GrabCut; faces without landmarks are skipped and counted. "
                            "Existing labels in --out are kept (it is a cache) unless --overwrite. "
                            "Needs the 'faces' extra.")
    common.add_data_folder(label)
    label.add_argument("--out", required=True, help="folder for <image>.png labels (keep it outside the repository)")
    label.add_argument("--partition", default="train,val", help="comma-separated partitions (default train,val)")
    label.add_argument("--limit", type=int, default=0, help="first N faces of each partition (0 = all)")
    label.add_argument("--workers", type=int, default=1, help="processes")
    label.add_argument("--overwrite", action="store_true")
    label.add_argument("--no-progress", action="store_true")
    label.set_defaults(func=run_label)

    train = psub.add_parser("train", help="train the parsing network on the labels of `parsing label`",
                            description="Trains the 11-class parsing network ([parsing] shapes, [parsing_train] "
                            "schedule, [data] augmentation) on the train partition's labels. Writes checkpoints, "
                            "TensorBoard logs and RUN_DIR/parsing.safetensors.")
    train.add_argument("--config", default="cpu", help="preset or TOML file")
    train.add_argument("--data", help="CelebA folder (sets data.root)")
    train.add_argument("--labels", help="labels folder (sets parsing_train.labels)")
    common.add_network_run(train)
    train.set_defaults(func=run_train)

    ev = psub.add_parser("eval", help="per-class F-scores on the validation labels, beside a trivial baseline",
                         description="Scores a parsing network (default: the shipped one) against the labels of a "
                         "partition: per-class F-score, the overall facial-component F-score (brows, eyes, nose, "
                         "lips, mouth merged, as Helen papers report it) and mIoU, beside the per-pixel prior "
                         "(each pixel's most frequent training label).")
    ev.add_argument("--weights", help="parsing safetensors (default: shipped)")
    common.add_data_folder(ev)
    ev.add_argument("--labels", default=ParsingTrainConfig().labels)
    ev.add_argument("--partition", default="val")
    ev.add_argument("--limit", type=int, default=0)
    ev.add_argument("--out", help="folder for scores.json and scores.md")
    ev.set_defaults(func=run_eval)

    pr = psub.add_parser("predict", help="label map of a face photo",
                         description="Writes the label map at the input's size as a single-channel PNG of label "
                         "ids 0..10 (0 background, 1 skin, 2/3 left/right brow, 4/5 left/right eye, 6 nose, "
                         "7 upper lip, 8 inner mouth, 9 lower lip, 10 hair; left/right as seen in the image).")
    pr.add_argument("image")
    pr.add_argument("-o", "--output", required=True, help="PNG of label ids")
    pr.add_argument("--color", action="store_true", help="also write OUTPUT stem + '_color.png': photo | colours")
    pr.add_argument("--weights", help="parsing safetensors (default: shipped)")
    pr.set_defaults(func=run_predict)


def run_init(args: argparse.Namespace) -> int:
    from facecomp.models import ParsingNet
    from facecomp.weights import save_module

    cfg = config_mod.load_config(args.config, args.overrides)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(args.seed)
        net = ParsingNet(cfg.parsing)
    save_module(args.output, net, "parsing", {"config": config_mod.to_dict(cfg.parsing), "trained": False})
    print(f"wrote untrained parsing weights to {args.output}")
    return 0


def run_label(args: argparse.Namespace) -> int:
    from facecomp.data.parsing_labels import label_celeba

    faces, report = label_celeba(args.data, [p.strip() for p in args.partition.split(",")], args.out, args.limit,
                                 workers=args.workers, overwrite=args.overwrite, progress=not args.no_progress)
    print(f"{faces} faces: {report.labelled} labelled, {report.cached} already labelled, "
          f"{len(report.failed)} without landmarks (skipped), {len(report.unreadable)} unreadable; "
          f"{report.cnn_fallback} found by the CNN detector after HOG missed; labels in {args.out}")
    return 0


def run_train(args: argparse.Namespace) -> int:
    from facecomp.train.parsing import parsing_run_config, train_parsing
    from facecomp.weights import RunFolder

    overrides = list(args.overrides)
    if args.data:
        overrides.append(f"data.root={args.data}")
    if args.labels:
        overrides.append(f"parsing_train.labels={args.labels}")
    cfg = parsing_run_config(args.config, overrides, args.run_dir, args.resume)
    run = train_parsing(cfg, cfg.data.root, args.run_dir, resume=args.resume, progress=not args.no_progress)
    print(f"trained {run.steps} steps ({run.images} images, {run.images / max(run.seconds, 1e-9):.1f} images/s); "
          f"final loss {run.loss:.3f}; weights in {RunFolder(run.run_dir).published('parsing')}")
    return 0


def run_eval(args: argparse.Namespace) -> int:
    from facecomp.eval.parsing_eval import evaluate_parsing, scores_markdown, write_scores

    scores = evaluate_parsing(args.weights, args.data, args.labels, args.partition, args.limit)
    if args.out:
        write_scores(scores, args.out)
    print(scores_markdown(scores))
    return 0


def run_predict(args: argparse.Namespace) -> int:
    from pathlib import Path

    import numpy as np

    from facecomp.data.parsing_labels import colorize
    from facecomp.images import read_rgb, write_png
    from facecomp.parsing import Parser

    image = read_rgb(args.image)
    labels = Parser(args.weights).labels(image)
    out = Path(args.output)
    write_png(out, labels)
    print(f"wrote {out} ({labels.shape[1]}x{labels.shape[0]}, label ids 0..10)")
    if args.color:
        view = out.with_name(out.stem + "_color.png")
        write_png(view, np.concatenate([image, colorize(labels)], axis=1))
        print(f"wrote {view}")
    return 0
