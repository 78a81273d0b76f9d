"""`facecomp identity`: the identity network of the stage-3 identity loss (``loss.identity``)."""

from __future__ import annotations

import argparse

from facecomp.cli import common
from facecomp.config import default_data_root


def add_command(sub) -> None:
    p = sub.add_parser("identity", help="identity-network tools (the stage-3 identity loss)")
    isub = p.add_subparsers(dest="identity_command", required=True)

    train = isub.add_parser("train", help="train the identity network on the training identities",
                            description="Trains the face embedder of the identity loss ([identity] shapes, "
                            "[identity_train] schedule) with CosFace on the train partitions' identities "
                            "(identity_CelebA.txt) of every --data folder, and scores it at each checkpoint on "
                            "--val-data's validation partition (nearest other face: same person?). Writes "
                            "checkpoints, TensorBoard logs and RUN_DIR/identity.safetensors; give that to stage 3 "
                            "as identity.weights=PATH.")
    train.add_argument("--config", default="cpu", help="preset or TOML file")
    common.add_data_roots(train)
    train.add_argument("--val-data", default=default_data_root(), metavar="DIR",
                       help="CelebA folder whose validation partition scores the network (default: %(default)s)")
    common.add_network_run(train)
    train.set_defaults(func=run_train)

    ev = isub.add_parser("eval", help="nearest-face top-1 of an identity network on a validation partition",
                         description="Embeds every face of the partition and counts the faces whose most similar "
                         "other face (cosine) is the same person, as `facecomp eval recognition` does with dlib.")
    ev.add_argument("--weights", required=True, help="identity safetensors, run folder or checkpoint")
    common.add_data_folder(ev)
    ev.add_argument("--partition", default="val")
    ev.set_defaults(func=run_eval)


def run_train(args: argparse.Namespace) -> int:
    from facecomp.train.identity import identity_run_config, train_identity
    from facecomp.weights import RunFolder

    overrides = list(args.overrides)
    if args.data:
        overrides.append(common.roots_override(args.data))
    cfg = identity_run_config(args.config, overrides, args.run_dir, args.resume)
    run = train_identity(cfg, cfg.data.roots, args.run_dir, args.val_data, resume=args.resume,
                         progress=not args.no_progress)
    score = "" if run.score is None else (f"; validation nearest-face top-1 {run.score.top1:.3f} "
                                          f"({run.score.faces} faces of {run.score.people} people)")
    print(f"trained {run.steps} steps ({run.images} images, {run.images / max(run.seconds, 1e-9):.1f} images/s); "
          f"final loss {run.loss:.3f}{score}; weights in {RunFolder(run.run_dir).published('identity')}")
    return 0


def run_eval(args: argparse.Namespace) -> int:
    from facecomp import models
    from facecomp.data.identities import labelled_files, load_faces
    from facecomp.train.identity import score_identity

    net = models.load("identity", args.weights)
    faces = load_faces(labelled_files([args.data], args.partition), net.cfg.input_size)
    s = score_identity(net, faces)
    print(f"{s.faces} faces of {s.people} people: nearest-face top-1 {s.top1:.3f}; "
          f"mean cosine same person {s.same:.3f}, different people {s.different:.3f}")
    return 0
