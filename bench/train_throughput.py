"""Training throughput per stage, and achieved GFLOP/s against this machine's matmul peak.

Everything is measured in one run, side by side: the fp32 and bf16 matmul peaks (2048x2048,
the best a GEMM does here), then for each preset and stage the time of `train_step` on an
in-memory batch of real faces (the loader is timed separately: it runs in worker processes in
training and is not the limit). FLOPs of a step are counted by torch's FlopCounterMode (convs,
matmuls, forward + backward); achieved = FLOPs / median step time.

    python bench/train_throughput.py [--presets cpu,paper] [--repeats 5] [--out bench/results/x.json]

`--amp bf16,none` times every stage under both autocast settings in the same run: on a CPU without
native bf16 (AVX2 only) bf16 convolutions fall back to a reference GEMM, which is why `facecomp train`
trains such a run in fp32 (`facecomp.runtime.settle_amp`); this measures by how much.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from datetime import date
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from facecomp.config import default_data_root, load_config
from facecomp.data.celeba import CelebAIndex
from facecomp.data.pipeline import build_loader
from facecomp.models import ParsingNet, freeze
from facecomp.runtime import tune_allocator
from facecomp.train.loop import build_models, build_optimizers, build_updaters
from facecomp.train.step import train_step


def matmul_peak(dtype: torch.dtype, n: int = 2048, repeats: int = 10) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    for _ in range(3):
        a @ b
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t)
    return 2 * n**3 / statistics.median(times) / 1e9


def setup(cfg, stage):
    models = build_models(cfg, 1, torch.device("cpu"))
    if stage == 3:  # same shapes and cost as a trained parsing net; its values don't matter here
        models.parsing = freeze(ParsingNet(cfg.parsing))
        if cfg.runtime.channels_last:
            models.parsing = models.parsing.to(memory_format=torch.channels_last)
    return models, build_updaters(models, build_optimizers(models, cfg), cfg)


def bench_stage(cfg, stage, batch, repeats):
    cfg.adversarial.d_skip_below = 0.0  # always update D: the full step's cost
    models, updaters = setup(cfg, stage)
    for _ in range(2):  # warm-up (allocator, oneDNN primitive caches)
        train_step(models, updaters, batch, cfg, stage, 0)
    with FlopCounterMode(display=False) as counter:
        train_step(models, updaters, batch, cfg, stage, 0)
    flops = counter.get_total_flops()
    times = []
    for i in range(repeats):
        t = time.perf_counter()
        train_step(models, updaters, batch, cfg, stage, i)
        times.append(time.perf_counter() - t)
    sec = statistics.median(times)
    n = batch["image"].shape[0]
    return {"stage": stage, "batch": n, "step_s": sec, "images_per_s": n / sec, "gflop_per_step": flops / 1e9,
            "gflops": flops / sec / 1e9}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=default_data_root())
    ap.add_argument("--presets", default="cpu,paper")
    ap.add_argument("--widths", default="0.25,0.5,0.75,1.0", help="stage-3 width sweep on the cpu preset")
    ap.add_argument("--paper-batch", type=int, default=16, help="the paper preset's batch here (images/s barely"
                    " depends on it; 64 would take minutes a step on 2 cores)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--stages", default="1,2,3")
    ap.add_argument("--amp", default="", help="comma-separated runtime.amp values to time each stage under "
                    "(e.g. bf16,none); default: each preset's own")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--default-malloc", action="store_true", help="measure without facecomp.runtime.tune_allocator")
    ap.add_argument("--out", default=f"bench/results/train_throughput_{date.today()}.json")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.default_malloc:
        tune_allocator()  # as `facecomp train` does (runtime.tune_malloc)

    peaks = {"fp32": matmul_peak(torch.float32), "bf16": matmul_peak(torch.bfloat16)}
    print(f"matmul 2048^2 peak: fp32 {peaks['fp32']:.0f} GFLOP/s, bf16 {peaks['bf16']:.0f} GFLOP/s "
          f"({torch.get_num_threads()} threads)")
    files = CelebAIndex.open(args.data).files("train", limit=256)

    def real_batch(cfg, n):
        loader = build_loader(files, 128, cfg.data, cfg.mask, n, seed=0)
        return next(iter(loader))

    rows = []
    runs = [(p, a) for p in args.presets.split(",") for a in (args.amp.split(",") if args.amp else [""])]
    for preset, amp in runs:
        cfg = load_config(preset, [f"runtime.amp={amp}"] if amp else [])
        n = args.paper_batch if preset == "paper" else cfg.train.batch_size
        batch = real_batch(cfg, n)
        t = time.perf_counter()
        loader_batches = 4
        it = iter(build_loader(files, 128, cfg.data, cfg.mask, n, seed=1))
        for _ in range(loader_batches):
            next(it)
        loader_ips = loader_batches * n / (time.perf_counter() - t)
        for stage in [int(x) for x in args.stages.split(",")]:
            r = bench_stage(cfg, stage, batch, args.repeats)
            kind = "bf16" if cfg.runtime.amp == "bf16" else "fp32"
            peak = peaks[kind]
            r.update(preset=preset, width=cfg.generator.width, amp=cfg.runtime.amp,
                     channels_last=cfg.runtime.channels_last, pct_peak=100 * r["gflops"] / peak,
                     loader_images_per_s_1proc=loader_ips)
            rows.append(r)
            print(f"{preset:6s} amp={cfg.runtime.amp:4s} w={cfg.generator.width:<5} stage {stage}: "
                  f"{r['images_per_s']:6.1f} img/s, "
                  f"{r['gflops']:6.0f} GFLOP/s = {r['pct_peak']:5.1f}% of {kind} peak "
                  f"(step {r['step_s']:.2f}s, batch {n})")
    sweep = []
    for w in [float(x) for x in args.widths.split(",") if x]:
        cfg = load_config("cpu", [f"generator.width={w}", f"discriminator.width={w}"])
        batch = real_batch(cfg, cfg.train.batch_size)
        r = bench_stage(cfg, 3, batch, args.repeats)
        r.update(width=w, pct_peak=100 * r["gflops"] / peaks["bf16"])
        sweep.append(r)
        print(f"cpu width sweep w={w:<5} stage 3: {r['images_per_s']:6.1f} img/s, {r['gflops']:6.0f} GFLOP/s "
              f"= {r['pct_peak']:5.1f}% of bf16 peak")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"date": str(date.today()), "tuned_malloc": not args.default_malloc,
                               "machine": platform.processor() or platform.machine(),
                               "cpu_count": torch.get_num_threads(), "torch": torch.__version__,
                               "matmul_peak_gflops": peaks, "stages": rows, "width_sweep": sweep}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
