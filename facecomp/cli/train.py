"""`facecomp train`: train one stage of the curriculum."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from facecomp import config as config_mod
from facecomp.cli import common


def add_command(sub) -> None:
    p = sub.add_parser("train", help="train one stage (1: Lr, 2: +La1, 3: +La2 +Lp)",
                       description="Train one stage. Each stage starts from the previous one (--init).")
    p.add_argument("--config", help="preset (smoke, cpu, paper) or a TOML file; with --resume, the run's own")
    common.add_stage(p)
    common.add_data_roots(p)
    p.add_argument("--run-dir", required=True, help="where checkpoints, TensorBoard logs and the config go")
    common.add_init(p, "run directory, checkpoint or generator weights")
    p.add_argument("--resume", action="store_true", help="continue this run directory from its latest checkpoint")
    p.add_argument("--overwrite", action="store_true", help="start again in a --run-dir that already holds a run "
                   "(its checkpoints and logs are deleted)")
    p.add_argument("--allow-config-change", action="store_true",
                   help="with --resume: accept a config that differs from the one the run started with")
    p.add_argument("--loader", choices=config_mod.DataConfig.LOADERS,
                   help="input pipeline: the PyTorch DataLoader or NVIDIA DALI (facecomp[dali]); sets data.loader")
    p.add_argument("--stop-at", type=int, metavar="STEP", help="end this session at STEP with a checkpoint, as a "
                   "stop signal would (exit 75); continue it with --resume")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    common.add_overrides(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    overrides = list(args.overrides)
    if args.data:
        overrides.append(common.roots_override(args.data))
    if args.loader:
        overrides.append(f"data.loader={args.loader}")
    from facecomp.weights import RunFolder, is_shipped_name, resolve

    run = RunFolder(args.run_dir)
    if args.resume and args.init:
        raise ValueError("--resume continues a run; --init starts a new one: pick one")
    if args.resume and args.overwrite:
        raise ValueError("--resume continues a run; --overwrite starts it again: pick one")
    if args.resume:
        from facecomp.train.checkpoint import RunState, resume_checkpoint

        # the checkpoint train() will resume from (a damaged newest one passed over); it warns, not this peek
        started = RunState.read(resume_checkpoint(args.run_dir, warn=False)).config
        cfg = config_mod.from_dict(started)
        if args.config:  # a config named again on resume: it is the candidate, compared below
            cfg = config_mod.load_config(args.config)
        config_mod.apply_overrides(cfg, overrides)
        from facecomp.runtime import settle_amp
        from facecomp.train.config_changes import config_changes

        settle_amp(cfg.runtime, quiet=True)  # as the run itself recorded it on this machine

        changes = config_changes(config_mod.to_dict(config_mod.from_dict(started)), config_mod.to_dict(cfg))
        if changes and not args.allow_config_change:
            raise ValueError(f"{args.run_dir} was started with another config ({'; '.join(changes[:4])}"
                             f"{' ...' if len(changes) > 4 else ''}); resume without overrides, or pass "
                             "--allow-config-change")
    else:
        if not args.config:
            raise ValueError("--config is required (a preset: smoke, cpu, paper; or a TOML file)")
        cfg = config_mod.load_config(args.config, overrides)
    if args.dry_run:
        sys.stdout.write(config_mod.to_toml(cfg))
        return 0
    if is_shipped_name(args.init):  # `--init paper-generator`: the weights file that ships under that name
        args.init = str(resolve(args.init, "generator"))
    if args.init and not Path(args.init).exists():
        raise ValueError(f"--init {args.init}: no such run directory, checkpoint or weights file")
    if args.init:
        RunFolder(args.init).check_finished(args.init_unfinished)
    elif args.stage > 1 and not args.resume and not args.from_scratch:
        raise ValueError(f"stage {args.stage} starts from the previous stage: pass --init RUN_DIR "
                         "(or --from-scratch to train it from random weights)")
    if not args.resume:
        if args.overwrite:
            run.clear()
        run.refuse_started()
    if cfg.data.loader == "dali":  # fail before building models when the extra is missing (MissingExtra: one line)
        from facecomp.data import dali  # noqa: F401

    from facecomp.train.guard import EXIT_DIVERGED, Diverged
    from facecomp.train.loop import train
    from facecomp.train.preempt import EXIT_STOPPED, StopRequest
    from facecomp.weights.run_folder import EXIT_DISK_FULL, is_disk_full

    try:
        with StopRequest().installed() as stop:
            result = train(cfg, args.stage, cfg.data.roots, args.run_dir, init=args.init, resume=args.resume,
                           progress=not args.no_progress, stop_at=args.stop_at, stop=stop.__bool__)
    except Diverged as e:
        print(f"facecomp: {e} (facecomp train --stage {args.stage} --run-dir {args.run_dir} --resume; "
              "lower the learning rate with --allow-config-change optim.lr_g=...)", file=sys.stderr)
        return EXIT_DIVERGED
    except OSError as e:
        if not is_disk_full(e):
            raise
        print(f"facecomp: {disk_full_line(e, run)}; free some space, then continue with: "
              f"facecomp train --stage {args.stage} --run-dir {args.run_dir} --resume", file=sys.stderr)
        return EXIT_DISK_FULL
    rate = result.images / max(result.seconds, 1e-9)
    if not result.finished:
        why = stop.name or ("--stop-at" if args.stop_at is not None else "request")
        print(f"stage {args.stage}: stopped by {why} at step {result.steps}; checkpoint saved, "
              f"continue with: facecomp train --stage {args.stage} --run-dir {args.run_dir} --resume")
        return EXIT_STOPPED
    print(f"stage {args.stage}: {result.steps} steps, {result.images} images in this session "
          f"({rate:.1f} images/s); generator: {RunFolder(result.run_dir).published()}")
    return 0


def disk_full_line(e: OSError, run) -> str:
    """What a full disk did to the run: a checkpoint's save says so itself (DiskFull); any other write that
    hit it (TensorBoard's events, validation.json) is named, with the checkpoint the run can go on from."""
    from facecomp.weights.run_folder import DiskFull

    if isinstance(e, DiskFull):
        return str(e)
    good = run.last_good()
    return (f"the disk is full ({e}); " +
            (f"the last good checkpoint is {good}" if good else "no checkpoint of this run was written yet"))
