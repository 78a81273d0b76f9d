"""`facecomp train`: train one stage of the curriculum."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from facecomp import config as config_mod


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="train one stage (1: Lr, 2: +La1, 3: +La2 +Lp)",
                       description="Train one stage. Each stage starts from the previous one (--init).")
    p.add_argument("--config", help="preset (smoke, cpu, paper) or a TOML file; with --resume, the run's own")
    p.add_argument("--stage", type=int, required=True, choices=(1, 2, 3))
    p.add_argument("--data", action="append", metavar="DIR",
                   help="CelebA folder (img_align_celeba/, list_eval_partition.txt); repeat it to train on several "
                        "(their train partitions together); sets data.roots")
    p.add_argument("--run-dir", required=True, help="where checkpoints, TensorBoard logs and the config go")
    p.add_argument("--init", help="previous stage's run directory, checkpoint or generator weights to start from")
    p.add_argument("--resume", action="store_true", help="continue this run directory from its latest checkpoint")
    p.add_argument("--loader", choices=("torch", "dali"),
                   help="input pipeline: the PyTorch DataLoader or NVIDIA DALI (facecomp[dali]); sets data.loader")
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. train.batch_size=16")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    overrides = list(args.overrides)
    if args.data:
        overrides.append(f"data.roots=[{', '.join(_quote(d) for d in args.data)}]")
    if args.loader:
        overrides.append(f"data.loader={args.loader}")
    if args.resume and args.init:
        raise ValueError("--resume continues a run; --init starts a new one: pick one")
    if args.resume:
        from facecomp.train.checkpoint import find_checkpoint, read_state

        state = read_state(find_checkpoint(args.run_dir))
        cfg = config_mod.from_dict(state["config"])
        config_mod.apply_overrides(cfg, overrides)
    else:
        if not args.config:
            raise ValueError("--config is required (a preset: smoke, cpu, paper; or a TOML file)")
        cfg = config_mod.load_config(args.config, overrides)
    if args.dry_run:
        sys.stdout.write(config_mod.to_toml(cfg))
        return 0
    if args.init and not Path(args.init).exists():
        raise ValueError(f"--init {args.init}: no such run directory, checkpoint or weights file")
    if cfg.data.loader == "dali":  # fail before building models when the extra is missing (one-line ValueError)
        from facecomp.data import dali  # noqa: F401

    from facecomp.train.loop import train

    result = train(cfg, args.stage, cfg.data.roots, args.run_dir, init=args.init, resume=args.resume,
                   progress=not args.no_progress)
    rate = result.images / max(result.seconds, 1e-9)
    print(f"stage {args.stage}: {result.steps} steps, {result.images} images in this session "
          f"({rate:.1f} images/s); generator: {result.run_dir / 'generator.safetensors'}")
    return 0


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
