"""`facecomp cluster train`: one stage on a Ray cluster (local by default), DeepSpeed engines on every worker."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from facecomp import config as config_mod
from facecomp.cli import common
from facecomp.runtime import MissingExtra


def add_command(sub) -> None:
    p = sub.add_parser("cluster", help="train on a Ray cluster with DeepSpeed (needs the 'cluster' extra)",
                       description="Ray Train launches the workers, DeepSpeed steps the generator and the "
                       "discriminators. Needs the 'cluster' extra.")
    csub = p.add_subparsers(dest="cluster_command", required=True)
    t = csub.add_parser("train", help="train one stage with W workers",
                        description="Train one stage. A run is STORAGE/NAME; running the same name again "
                        "continues it from its newest checkpoint. Stage N+1 starts from stage N with --init. "
                        "SIGTERM/SIGUSR1 make every worker checkpoint at the same step; the command then exits "
                        "75 (run it again to continue).")
    t.add_argument("--config", required=True, help="preset (smoke, cpu, paper) or a TOML file")
    common.add_stage(t)
    common.add_data_roots(t, required=True)
    t.add_argument("--num-workers", type=int, default=2)
    t.add_argument("--gpus-per-worker", type=float, default=0, help="0 = CPU workers (gloo); > 0 = GPU (NCCL)")
    t.add_argument("--storage", default="runs/cluster", help="where runs live (a folder every node sees)")
    t.add_argument("--name", default="", help="run name (default stage<N>)")
    t.add_argument("--address", help="join this Ray cluster ('auto' = the one this node belongs to); "
                   "default: start a local Ray instance")
    common.add_init(t, "run (its newest checkpoint; the run must have finished), a checkpoint folder or "
                    "generator weights")
    common.add_overrides(t, "cluster.deepspeed=zero2_fp32")
    t.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # absolute: every worker reads them, from wherever Ray starts it
    overrides = [*args.overrides, common.roots_override([str(Path(d).resolve()) for d in args.data])]
    cfg = config_mod.load_config(args.config, overrides)
    if args.dry_run:
        sys.stdout.write(config_mod.to_toml(cfg))
        return 0
    if args.init and not Path(args.init).exists():
        raise ValueError(f"--init {args.init}: no such run, checkpoint or weights file")
    try:
        from facecomp.cluster.launch import LaunchConfig, train_stage
    except ImportError as e:
        raise MissingExtra("cluster", "facecomp cluster", e.name or str(e)) from None

    launch = LaunchConfig(num_workers=args.num_workers, gpus_per_worker=args.gpus_per_worker, storage=args.storage,
                          name=args.name, address=args.address)
    from facecomp.train.guard import EXIT_DIVERGED, Diverged
    from facecomp.weights import RunFolder

    try:
        result = train_stage(cfg, args.stage, launch, init=args.init, init_unfinished=args.init_unfinished,
                             from_scratch=args.from_scratch)
    except Diverged as e:
        print(f"facecomp: {e} (run the same command again to continue; lower the learning rate with "
              "optim.lr_g=...)", file=sys.stderr)
        return EXIT_DIVERGED
    s = result.state
    if not result.finished:
        from facecomp.train.preempt import EXIT_STOPPED

        print(f"stage {args.stage}: stopped by {result.stopped_by or 'request'} at step {s.step} on "
              f"{s.world_size} workers; checkpoint: {result.checkpoint}; run the same command again to continue")
        return EXIT_STOPPED
    print(f"stage {args.stage}: {s.step} steps on {s.world_size} workers ({cfg.cluster.deepspeed}), "
          f"{s.images} images, restarts from steps {s.restarts}; checkpoint: {result.checkpoint}; "
          f"generator: {RunFolder(result.run_dir).published()}")
    return 0

