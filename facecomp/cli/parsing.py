"""`facecomp parsing`: the face-parsing network used by the stage-3 loss."""

from __future__ import annotations

import argparse

import torch

from facecomp import config as config_mod


def add_parser(sub) -> None:
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


def run_init(args: argparse.Namespace) -> int:
    from facecomp.models import ParsingNet
    from facecomp.train import checkpoint as ck

    cfg = config_mod.load_config(args.config, args.overrides)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(args.seed)
        net = ParsingNet(cfg.parsing)
    ck.save_module(args.output, net, "parsing", {"config": config_mod.to_dict(cfg.parsing), "trained": False})
    print(f"wrote untrained parsing weights to {args.output}")
    return 0
