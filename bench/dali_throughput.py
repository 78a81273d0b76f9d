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

import numpy as np
import psutil
import torch

from facecomp.config import default_data_root, load_config
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


def stage_costs(files: list[Path], cfg, batches: int = 40) -> dict[str, float]:
    """CPU ms per image of the DALI graph cut after each stage (one thread), and of the reference's
    parts, so a throughput gap can be traced to an operator. Differences between rows are a stage's cost."""
    import cv2
    from nvidia.dali import fn, pipeline_def, types

    from facecomp.data import dali as D
    from facecomp.data.pipeline import FaceDataset
    from facecomp.images import read_rgb
    from facecomp.layout import Augment

    spec = dataclasses.replace(D.dali_spec(cfg), threads=1, prefetch=1)
    names = [str(f) for f in files]
    s = spec.image_size

    def cut(k: int):
        jpegs, index = fn.readers.file(files=names, shuffle_after_epoch=True, name=D.READER)
        if k == 0:
            return index
        m = D._warp_matrix(jpegs, spec)
        if k == 1:
            return m
        img = fn.decoders.image(jpegs, device="cpu", output_type=types.RGB)
        if k == 2:
            return m, img
        if k == 3:
            return D._warp(img, m, s)
        return fn.warp_affine(img, matrix=m, size=[s, s], inverse_map=False, dtype=types.FLOAT)

    def per_image(run, n: int) -> float:
        for _ in range(3):
            run()
        t = time.process_time()
        for _ in range(n):
            run()
        return (time.process_time() - t) / (n * spec.batch_size) * 1e3

    out = {}
    def graph_cut(k: int):
        pipe = pipeline_def(lambda: cut(k))(batch_size=spec.batch_size, num_threads=1, device_id=None, seed=1,
                                            prefetch_queue_depth=1)
        pipe.build()
        return pipe

    for k, name in enumerate(("dali: reader", "dali: + warp matrix", "dali: + decode", "dali: + warp")):
        out[name] = per_image(graph_cut(k).run, batches)
    pipe = D.build_pipeline(names, list(range(len(names))), spec)
    pipe.build()
    out["dali: + normalize, mask (whole graph)"] = per_image(pipe.run, batches)
    it = iter(D.DaliLoader(files, spec))
    out["dali: + iterator to torch (whole loader)"] = per_image(lambda: next(it), batches)
    # fn.warp_affine (float output) in place of the graph's warp, as the pipeline first had it
    out["dali: decode + fn.warp_affine instead (not used)"] = per_image(graph_cut(4).run, batches)

    cv2.setNumThreads(1)  # one core's cost, like a DataLoader worker without spare cores
    n = batches * spec.batch_size // 4
    imgs = [read_rgb(f) for f in files[:n]]
    t = time.process_time()
    for f in files[:n]:
        read_rgb(f)
    out["reference: PIL decode"] = (time.process_time() - t) / n * 1e3
    mat = np.array([[0.8, 0.1, -7.0], [-0.1, 0.8, -30.0]])
    t = time.process_time()
    for im in imgs:
        cv2.warpAffine(im, mat, (s, s), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
    out["reference: cv2 warp"] = (time.process_time() - t) / n * 1e3
    ds = FaceDataset(files, s, Augment.from_config(cfg.data), cfg.mask, cfg.train.seed)
    t = time.process_time()
    for i in range(n):
        ds[(0, i)]
    out["reference: whole sample (decode, warp, mask, to tensor)"] = (time.process_time() - t) / n * 1e3
    cv2.setNumThreads(-1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=default_data_root())
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
    costs = stage_costs(files, cfg)
    for name, ms in costs.items():
        print(f"{name:58s} {ms:6.3f} CPU ms/image")
    out = {"date": str(date.today()), "machine": platform.platform(), "cpus": os.cpu_count(),
           "load_avg_at_start": load_at_start, "load_avg_at_end": os.getloadavg(), "files": len(files),
           "batch": args.batch, "image_size": cfg.generator.image_size, "batches_timed": args.batches,
           "warmup": args.warmup, "repeats": args.repeats, "best_torch": best_torch, "summary": summary, "runs": runs,
           "cpu_ms_per_image": costs}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
