"""What Ray Train + DeepSpeed cost per step, and how 2 workers scale, against the plain loop, on CPU.

All in one run, side by side, on the same real batch (loader excluded, as in train_throughput.py):
  plain-1t    train_step with plain modules + torch Adam, 1 thread, batch B (one worker's work)
  plain-2t    the same, 2 threads, batch 2B (the whole machine doing both workers' work)
  ray-1w      Ray Train, 1 worker (1 thread), DeepSpeed engines, batch B
  ray-2w      Ray Train, 2 workers (1 thread each), DeepSpeed engines, B per worker = 2B per step, gloo all-reduce
  plain-1t-contig  plain-1t with contiguous weights, the layout DeepSpeed needs (channels_last presets)
Per-step overhead = ray-2w step / plain-1t step - 1 (each rank does plain-1t's work, plus the
collectives and DeepSpeed's bookkeeping). Scaling = ray-2w images/s over plain-1t's (2.0 is ideal)
and over plain-2t's (what the same 2 cores give without the cluster stack). Step times are medians of
the timed steps (rank 0's inside the workers), after warm-up steps, over all repeats.

    python bench/cluster_overhead.py [--preset cpu] [--stages 1,3] [--steps 6] [--warmup 2] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from datetime import date
from pathlib import Path

import torch

from facecomp import config as config_mod
from facecomp.config import default_data_root, load_config
from facecomp.runtime import tune_allocator


def _batch(cfg, data: str, n: int) -> dict:
    from facecomp.data.celeba import CelebAIndex
    from facecomp.data.pipeline import build_loader

    files = CelebAIndex.open(data).files("train", limit=256)
    b = next(iter(build_loader(files, cfg.generator.image_size, cfg.data, cfg.mask, n, seed=0)))
    return {"image": b["image"], "mask": b["mask"]}


def _models(cfg, stage: int):
    from facecomp.models import ParsingNet, freeze
    from facecomp.train.loop import build_models

    models = build_models(cfg, 1, torch.device("cpu"))
    if stage == 3:  # same shapes and cost as a trained parsing net (as train_throughput.py)
        models.parsing = freeze(ParsingNet(cfg.parsing))
        if cfg.runtime.channels_last:
            models.parsing = models.parsing.to(memory_format=torch.channels_last)
    return models


def _time_steps(step_fn, warmup: int, steps: int) -> list[float]:
    for i in range(warmup):
        step_fn(i)
    times = []
    for i in range(steps):
        t = time.perf_counter()
        step_fn(warmup + i)
        times.append(time.perf_counter() - t)
    return times


def plain(cfg, stage: int, batch: dict, threads: int, warmup: int, steps: int, contiguous: bool = False) -> list[float]:
    from facecomp.train.loop import build_optimizers, build_updaters
    from facecomp.train.step import train_step

    torch.set_num_threads(threads)
    models = _models(cfg, stage)
    if contiguous:  # the weight layout DeepSpeed engines get (cluster.deepspeed_models.wrap_models)
        for name in ("generator", "d_local", "d_global"):
            setattr(models, name, getattr(models, name).to(memory_format=torch.contiguous_format))
    updaters = build_updaters(models, build_optimizers(models, cfg), cfg)
    return _time_steps(lambda s: train_step(models, updaters, batch, cfg, stage, s), warmup, steps)


def _worker(config: dict) -> None:
    import ray.train

    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    from facecomp.cluster.deepspeed_models import make_agree, wrap_models
    from facecomp.train.step import train_step

    cfg = config_mod.from_dict(config["config"])
    stage, batch = config["stage"], config["batch"]
    torch.set_num_threads(1)
    if config["tune_malloc"]:
        tune_allocator()
    world = ray.train.get_context().get_world_size()
    models = _models(cfg, stage)
    wrapped = wrap_models(models, cfg, torch.device("cpu"))
    step_models, updaters, agree = wrapped.models(models.parsing), wrapped.updaters(), make_agree(world)
    times = _time_steps(lambda s: train_step(step_models, updaters, batch, cfg, stage, s, agree=agree),
                        config["warmup"], config["steps"])
    if ray.train.get_context().get_world_rank() == 0:  # Ray Train V2 keeps metrics only with checkpoints
        Path(config["out"]).write_text(json.dumps(times))
    ray.train.report({})


def ray_run(cfg, stage: int, batch: dict, workers: int, warmup: int, steps: int, storage: Path) -> list[float]:
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    name = f"bench_s{stage}_w{workers}_{time.time_ns()}"
    out = storage / f"{name}.json"
    storage.mkdir(parents=True, exist_ok=True)

    trainer = TorchTrainer(
        _worker, train_loop_config={"config": config_mod.to_dict(cfg), "stage": stage, "batch": batch,
                                    "warmup": warmup, "steps": steps, "out": str(out),
                                    "tune_malloc": cfg.runtime.tune_malloc},
        torch_config=TorchConfig(backend="gloo"),
        scaling_config=ScalingConfig(num_workers=workers, resources_per_worker={"CPU": 1}),
        run_config=RunConfig(name=name, storage_path=str(storage)))
    result = trainer.fit()
    if result.error is not None:
        raise result.error
    return json.loads(out.read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=default_data_root())
    ap.add_argument("--preset", default="cpu")
    ap.add_argument("--stages", default="1,3")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2, help="rounds of all variants, interleaved")
    ap.add_argument("--default-malloc", action="store_true", help="without facecomp.runtime.tune_allocator (in "
                    "the plain process and the workers alike)")
    ap.add_argument("--deepspeed", default="zero1_fp32")
    ap.add_argument("--storage", default="/tmp/facecomp-bench-cluster")
    ap.add_argument("--out", default=f"bench/results/cluster_overhead_{date.today()}.json")
    args = ap.parse_args()

    import ray

    cfg = load_config(args.preset, [f"cluster.deepspeed={args.deepspeed}", "adversarial.d_skip_below=0.0"])
    cfg.runtime.tune_malloc = not args.default_malloc
    if cfg.runtime.tune_malloc:
        tune_allocator()  # as facecomp train and the cluster workers do
    b = cfg.train.batch_size
    batch1, batch2 = _batch(cfg, args.data, b), _batch(cfg, args.data, 2 * b)
    ray.init(num_cpus=2, log_to_driver=False)
    rows = []
    for stage in [int(s) for s in args.stages.split(",")]:
        # repeats interleave the variants, so a burst of load from another process hits all of them
        t: dict[str, list[float]] = {}
        for _ in range(args.repeats):
            variants = {
                "plain-1t": (plain, (cfg, stage, batch1, 1, args.warmup, args.steps)),
                "plain-1t-contig": (plain, (cfg, stage, batch1, 1, args.warmup, args.steps, True)),
                "plain-2t": (plain, (cfg, stage, batch2, 2, args.warmup, args.steps)),
                "ray-1w": (ray_run, (cfg, stage, batch1, 1, args.warmup, args.steps, Path(args.storage))),
                "ray-2w": (ray_run, (cfg, stage, batch1, 2, args.warmup, args.steps, Path(args.storage)))}
            for key, (fn, fn_args) in variants.items():
                t.setdefault(key, []).extend(fn(*fn_args))
        med = {k: statistics.median(v) for k, v in t.items()}
        images = {"plain-1t": b, "plain-1t-contig": b, "plain-2t": 2 * b, "ray-1w": b, "ray-2w": 2 * b}
        ips = {k: images[k] / med[k] for k in med}
        row = {"stage": stage, "batch_per_worker": b, "step_s": med, "images_per_s": ips, "all_step_s": t,
               "overhead_ray_1w_vs_plain_1t": med["ray-1w"] / med["plain-1t"] - 1,
               "overhead_ray_2w_vs_plain_1t": med["ray-2w"] / med["plain-1t"] - 1,
               "cost_of_contiguous_weights": med["plain-1t-contig"] / med["plain-1t"] - 1,
               "scaling_2w_vs_plain_1t": ips["ray-2w"] / ips["plain-1t"],
               "scaling_2w_vs_plain_2t": ips["ray-2w"] / ips["plain-2t"]}
        rows.append(row)
        print(f"stage {stage}: step s " + ", ".join(f"{k} {v:.3f}" for k, v in med.items())
              + f" | overhead 1w {100 * row['overhead_ray_1w_vs_plain_1t']:+.1f}%, "
              f"2w {100 * row['overhead_ray_2w_vs_plain_1t']:+.1f}%, contiguous weights "
              f"{100 * row['cost_of_contiguous_weights']:+.1f}% | 2w images/s x{row['scaling_2w_vs_plain_1t']:.2f} "
              f"of plain-1t, x{row['scaling_2w_vs_plain_2t']:.2f} of plain-2t", flush=True)
    ray.shutdown()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    import deepspeed

    out.write_text(json.dumps({
        "date": str(date.today()), "machine": platform.processor() or platform.machine(), "cores": os.cpu_count(),
        "torch": torch.__version__, "ray": ray.__version__, "deepspeed": deepspeed.__version__,
        "preset": args.preset, "deepspeed_config": args.deepspeed, "amp": cfg.runtime.amp,
        "warmup": args.warmup, "steps": args.steps, "repeats": args.repeats,
        "tuned_malloc": cfg.runtime.tune_malloc, "stages": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
