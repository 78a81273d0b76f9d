"""Input-pipeline throughput: NVIDIA DALI on CPU operators vs the PyTorch DataLoader, side by side.

Both produce the training batch contract from real CelebA faces (the train partition) with the
same augmentations (flip, shift, rotation, scale, 64x64 square) at batch 64, 128x128. Each
configuration is built fresh, warmed up for a few batches (worker start-up, DALI's buffers), then
timed over ``--batches`` batches; configurations are interleaved within each repeat so load from
other work on the machine hits them alike, and the median over repeats is reported. CPU time is
the process's and its children's (DataLoader workers), from psutil, so images per CPU-second
shows whether a speed-up came from more cores or from less work.

    python bench/dali_throughput.py [--repeats 5] [--batches 20] [--out bench/results/x.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import time
from datetime import date
from pathlib import Path

import psutil
import torch

from facecomp.config import load_config
from facecomp.data.celeba import CelebAIndex
from facecomp.data.pipeline import build_loader


def cpu_seconds() -> float:
    me = psutil.Process()
    procs = [me, *me.children(recursive=True)]
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def measure(make, batches: int, warmup: int) -> dict:
    loader = make()
    it = iter(loader)
    for _ in range(warmup):
        next(it)
    cpu0, t0 = cpu_seconds(), time.perf_counter()
    n = 0
    for _ in range(batches):
        b = next(it)
        n += b["image"].shape[0]
    wall, cpu = time.perf_counter() - t0, cpu_seconds() - cpu0
    del it, loader  # DataLoader workers and DALI threads end before the next configuration starts
    return {"images": n, "wall_s": wall, "cpu_s": cpu, "images_per_s": n / wall, "images_per_cpu_s": n / cpu}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="../shared/data/celeba")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--batches", type=int, default=40)
    ap.add_argument("--warmup", type=int, default=10, help="untimed first batches (start-up; queues drained)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--torch-workers", default="0,2,3", help="DataLoader worker processes to try")
    ap.add_argument("--dali", default="2,3,4", help="DALI threads to try; a trailing f adds the fast IDCT")
    ap.add_argument("--out", default=f"bench/results/dali_throughput_{date.today()}.json")
    args = ap.parse_args()

    from facecomp.data.dali import DaliLoader, dali_spec

    torch.set_num_threads(1)  # the main process only collates here; workers/threads do the work
    files = CelebAIndex.open(args.data).files("train")
    cfg = load_config("cpu", [f"train.batch_size={args.batch}"])
    configs = {}
    for w in (int(v) for v in args.torch_workers.split(",")):
        data = dataclasses.replace(cfg.data, workers=w)
        configs[f"torch workers={w}"] = lambda data=data: build_loader(
            files, cfg.generator.image_size, data, cfg.mask, args.batch, cfg.train.seed)
    for v in args.dali.split(","):
        spec = dataclasses.replace(dali_spec(cfg), threads=int(v.rstrip("f")), fast_idct=v.endswith("f"))
        name = f"dali cpu threads={spec.threads}" + (" fast-idct" if spec.fast_idct else "")
        configs[name] = lambda spec=spec: DaliLoader(files, spec)

    load_at_start = os.getloadavg()  # the machine may be shared: say how busy it was
    runs: dict[str, list[dict]] = {k: [] for k in configs}
    for r in range(args.repeats):
        for name, make in configs.items():
            res = measure(make, args.batches, args.warmup)
            runs[name].append(res)
            print(f"repeat {r}: {name:32s} {res['images_per_s']:7.1f} images/s  "
                  f"{res['images_per_cpu_s']:6.1f} images/cpu-s", flush=True)

    summary = {name: {"images_per_s": statistics.median(x["images_per_s"] for x in rs),
                      "images_per_cpu_s": statistics.median(x["images_per_cpu_s"] for x in rs)}
               for name, rs in runs.items()}
    best_torch = max((k for k in summary if k.startswith("torch")), key=lambda k: summary[k]["images_per_s"])
    for name, s in summary.items():
        s["vs_best_torch"] = s["images_per_s"] / summary[best_torch]["images_per_s"]
        print(f"{name:32s} median {s['images_per_s']:7.1f} images/s  {s['images_per_cpu_s']:6.1f} images/cpu-s  "
              f"{s['vs_best_torch']:.2f}x {best_torch}")
    out = {"date": str(date.today()), "machine": platform.platform(), "cpus": os.cpu_count(),
           "load_avg_at_start": load_at_start, "load_avg_at_end": os.getloadavg(), "files": len(files),
           "batch": args.batch, "image_size": cfg.generator.image_size, "batches_timed": args.batches,
           "warmup": args.warmup, "repeats": args.repeats, "best_torch": best_torch, "summary": summary, "runs": runs}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
