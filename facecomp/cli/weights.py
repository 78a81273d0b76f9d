"""`facecomp weights`: what a weights file holds, and converting one to ship (a dtype, a base to borrow from)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

DTYPES = ("fp16", "bf16", "fp32")


def add_command(sub) -> None:
    p = sub.add_parser("weights", help="show or convert a weights file",
                       description="Weights files are safetensors with their kind, config and the SHA-256 of "
                       "their tensors. A file may borrow tensors from a base file (a generator fine-tuned with "
                       "part of it frozen stores only what it changed); loading finds the base beside it or "
                       "among the shipped weights.")
    commands = p.add_subparsers(dest="weights_command", required=True)
    show = commands.add_parser("show", help="kind, identity, stage and step, config, base, size")
    show.add_argument("source", help="a weights file, checkpoint or run folder, 'shipped' or a shipped name "
                      "(paper-generator)")
    show.add_argument("--kind", default="generator", choices=("generator", "parsing", "identity"))
    show.set_defaults(func=run_show)
    convert = commands.add_parser("convert", help="re-save a weights file in another dtype and/or borrowing "
                                  "from a base",
                                  description="Re-save SRC as DST: floating-point tensors in --dtype, and with "
                                  "--base every tensor equal to the base's left out and borrowed (name the base "
                                  "by file or shipped name). DST loads to the same tensors as SRC converted.")
    convert.add_argument("src", help="a weights file, or a run folder or checkpoint (its chosen or newest generator)")
    convert.add_argument("dst")
    convert.add_argument("--dtype", choices=DTYPES, help="floating-point type to store (default: as SRC)")
    convert.add_argument("--base", help="a weights file or shipped name (paper-generator) to borrow equal "
                         "tensors from")
    convert.set_defaults(func=run_convert)


def run_show(args: argparse.Namespace) -> int:
    from facecomp import weights

    path = weights.resolve(args.source, args.kind)
    meta = weights.read_metadata(path)
    base = meta.pop("base", None)
    print(f"file      {path} ({path.stat().st_size / 1e6:.1f} MB)")
    print(f"kind      {meta.pop('kind')}")
    print(f"sha256    {meta.pop('sha256')}")
    for key in ("stage", "step", "dtype"):
        if key in meta:
            print(f"{key:<9} {meta.pop(key)}")
    if base is not None:
        print(f"base      {base['name']} (sha256 {base['sha256'][:12]}), {len(base['keys'])} tensors borrowed")
    if "config" in meta:
        print(f"config    {json.dumps(meta.pop('config'), sort_keys=True)}")
    weights.load_tensors(path, meta.get("kind"))  # verified: base found, checksum of the whole
    print("verified  yes")
    return 0


def run_convert(args: argparse.Namespace) -> int:
    import torch

    from facecomp import weights

    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}.get(args.dtype)
    src = weights.resolve(args.src)
    base = weights.resolve(args.base, weights.read_metadata(src)["kind"]) if args.base else None
    weights.convert_weights(src, args.dst, dtype, base=base)
    meta = weights.read_metadata(args.dst)
    borrowed = f", {len(meta['base']['keys'])} tensors borrowed from {meta['base']['name']}" if "base" in meta else ""
    print(f"{src} -> {args.dst} ({Path(args.dst).stat().st_size / 1e6:.1f} MB{borrowed}); sha256 {meta['sha256']}")
    return 0
