"""Fused fill / composite vs the eager PyTorch reference, and GB/s against the machine's copy bandwidth.

All in one run: the copy bandwidth of a 512 MB fp32 `copy_` (read + write), then for each shape
the median time of eager PyTorch (noise materialized with torch.rand, one op per term: what the
code did before the kernels), of the hash reference (kernels/reference.py, the ground truth) and
of the native op ("fused"), interleaved. Bytes
counted for the fused op are what it must move at least: fill reads x and m and writes 3 (+1)
planes; composite reads x, g, m and writes 3 planes. Last, the end-to-end effect on a cpu-preset
training step (stage 1), kernels=ref vs kernels=native, interleaved.

    python bench/kernels_throughput.py [--repeats 30] [--out bench/results/kernels_<date>.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from datetime import date
from pathlib import Path

import torch

from facecomp import kernels
from facecomp.kernels import reference
from facecomp.runtime import tune_allocator


def median_time(fn, repeats: int) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def copy_bandwidth(repeats: int) -> float:
    src = torch.rand(128 * 1024 * 1024)  # 512 MB
    dst = torch.empty_like(src)
    t = median_time(lambda: dst.copy_(src), max(5, repeats // 3))
    return 2 * src.numel() * 4 / t / 1e9


def bench_ops(n: int, repeats: int, dtype=torch.float32) -> list[dict]:
    x = torch.rand(n, 3, 128, 128, dtype=dtype) * 2 - 1
    g = torch.rand(n, 3, 128, 128, dtype=dtype) * 2 - 1
    m = torch.zeros(n, 1, 128, 128, dtype=dtype)
    m[:, :, 32:96, 32:96] = 1
    plane = n * 128 * 128 * x.element_size()
    gen = torch.Generator().manual_seed(0)

    def eager_fill():  # what eager PyTorch does: materialize the noise, then 4 passes and a cat
        z = torch.rand(x.shape, generator=gen, dtype=dtype) * 2 - 1
        return torch.cat([m * z + (1 - m) * x, m], dim=1)

    cases = {
        "fill+mask": (eager_fill, lambda: reference.fill(x, m, 1, 2, True),
                      lambda: kernels.fill(x, m, 1, 2, mask_channel=True, impl="native"), (3 + 1 + 4) * plane),
        "composite": (lambda: m * g + (1 - m) * x, lambda: reference.composite(x, g, m),
                      lambda: kernels.composite(x, g, m, impl="native"), (3 + 3 + 1 + 3) * plane),
    }
    rows = []
    for name, (eager, ref, fused, nbytes) in cases.items():
        te, tr, tf = [], [], []
        for _ in range(3):  # interleave so drift on a shared machine hits all alike
            te.append(median_time(eager, repeats // 3 + 1))
            tr.append(median_time(ref, repeats // 3 + 1))
            tf.append(median_time(fused, repeats // 3 + 1))
        te_, tr_, tf_ = statistics.median(te), statistics.median(tr), statistics.median(tf)
        rows.append({"op": name, "batch": n, "dtype": str(dtype).removeprefix("torch."), "eager_ms": te_ * 1e3,
                     "reference_ms": tr_ * 1e3, "fused_ms": tf_ * 1e3, "speedup": te_ / tf_,
                     "fused_gbps": nbytes / tf_ / 1e9})
    return rows


def bench_train_step(repeats: int) -> dict:
    from facecomp.config import load_config
    from facecomp.train.loop import build_models, build_optimizers, build_updaters
    from facecomp.train.step import train_step

    cfg = load_config("cpu")
    models = build_models(cfg, 1, torch.device("cpu"))
    upd = build_updaters(models, build_optimizers(models, cfg), cfg)
    x = torch.rand(cfg.train.batch_size, 3, 128, 128) * 2 - 1
    m = torch.zeros(cfg.train.batch_size, 1, 128, 128)
    m[:, :, 32:96, 32:96] = 1
    batch = {"image": x, "mask": m}
    out = {}
    times = {"ref": [], "native": []}
    for impl in ("ref", "native"):
        cfg.runtime.kernels = impl
        train_step(models, upd, batch, cfg, 1, 0)
    for i in range(repeats):
        for impl in ("ref", "native"):
            cfg.runtime.kernels = impl
            t = time.perf_counter()
            train_step(models, upd, batch, cfg, 1, i)
            times[impl].append(time.perf_counter() - t)
    for impl, ts in times.items():
        out[f"{impl}_step_s"] = statistics.median(ts)
    out["gain_pct"] = 100 * (out["ref_step_s"] / out["native_step_s"] - 1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--step-repeats", type=int, default=5)
    ap.add_argument("--out", default=f"bench/results/kernels_{date.today()}.json")
    args = ap.parse_args()
    tune_allocator()
    kernels.fill(torch.zeros(1, 3, 2, 2), torch.zeros(1, 1, 2, 2), 0, impl="native")  # build/load first
    bw = copy_bandwidth(args.repeats)
    print(f"copy bandwidth (512 MB fp32 copy_, read+write): {bw:.1f} GB/s, {torch.get_num_threads()} threads")
    rows = []
    for n in (1, 8, 16, 32, 64):
        for r in bench_ops(n, args.repeats):
            r["pct_copy_bw"] = 100 * r["fused_gbps"] / bw
            rows.append(r)
            print(f"{r['op']:10s} N={n:3d}: eager {r['eager_ms']:8.3f} ms  reference {r['reference_ms']:8.3f} ms  "
                  f"fused {r['fused_ms']:8.3f} ms  "
                  f"x{r['speedup']:5.1f}  {r['fused_gbps']:5.1f} GB/s = {r['pct_copy_bw']:5.1f}% of copy")
    step = bench_train_step(args.step_repeats)
    print(f"cpu-preset stage-1 train step: ref {step['ref_step_s']:.3f} s, native {step['native_step_s']:.3f} s "
          f"({step['gain_pct']:+.1f}%)")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"date": str(date.today()), "torch": torch.__version__,
                               "threads": torch.get_num_threads(), "copy_gbps": bw, "ops": rows,
                               "train_step": step}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
