"""Generator inference: eager vs torch.compile vs AOTInductor vs ONNX Runtime, on this machine.

One run, side by side: every method is built first (artifacts through ``facecomp.export``, the
same code as ``facecomp export``), then timed in interleaved rounds so drift on a shared machine
hits all alike. Reported per method: median latency at batch 1 (ms) and throughput at batch 32
(images/s), each the median over rounds of per-round medians. The model is the shipped
generator (width 0.5, mask channel). Parity with eager fp32 is measured on the same inputs.

    python bench/export_latency.py [--rounds 5] [--repeats 10] [--out bench/results/export_<date>.json]

On a CUDA machine (``--device cuda``): eager fp32 vs AOTInductor fp16/bf16 (and Torch-TensorRT fp16
when it is installed).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from datetime import date
from pathlib import Path

import torch

from facecomp import models
from facecomp.export import BatchRange, ExportConfig, export_artifact, load_engine, parity
from facecomp.export.formats import FORMATS, AotiFormat
from facecomp.export.program import ExportableGenerator, example_input
from facecomp.runtime import tune_allocator


def median_time(fn, x, repeats: int, sync) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn(x)
        sync()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def build_methods(device: str, workdir: Path, include: set[str]) -> dict:
    gen = models.load("generator", None, device).float()
    methods = {}

    def eager(dtype, channels_last):
        m = ExportableGenerator(gen, dtype, channels_last).to(device)
        return torch.no_grad()(m)

    def compiled(dtype):
        import torch._inductor.config as inductor_config

        inductor_config.freezing = True  # the same folding the AOTInductor package gets
        m = ExportableGenerator(gen, dtype, True).to(device)
        return torch.no_grad()(torch.compile(m, dynamic=False))

    methods["eager fp32"] = eager(torch.float32, False)
    if "eager-variants" in include:
        methods["eager fp32 channels_last"] = eager(torch.float32, True)
        methods["eager bf16 channels_last"] = eager(torch.bfloat16, True)
    if "compile" in include:
        methods["torch.compile fp32"] = compiled(torch.float32)
        methods["torch.compile bf16"] = compiled(torch.bfloat16)

    def artifact(name: str, fmt: str, precision: str, **kw):
        out = workdir / name.replace(" ", "_").replace("(", "").replace(")", "")
        t = time.perf_counter()
        export_artifact(out, ExportConfig(format=fmt, precision=precision, device=device,
                                          batch=BatchRange(1, 1, 32), **kw), check_batches=(2,))
        print(f"built {name} in {time.perf_counter() - t:.0f} s")
        methods[name] = load_engine(out)

    artifact("aoti fp32", "aoti", "fp32")
    artifact("aoti bf16", "aoti", "bf16")
    if "aoti-variants" in include and device == "cpu":
        # What freezing and channels_last buy (the defaults of facecomp export), measured here.
        saved = AotiFormat.INDUCTOR_CONFIGS
        AotiFormat.INDUCTOR_CONFIGS = {}
        try:
            artifact("aoti bf16 (no freezing)", "aoti", "bf16")
        finally:
            AotiFormat.INDUCTOR_CONFIGS = saved
        artifact("aoti bf16 (NCHW)", "aoti", "bf16", channels_last=False)
    if device == "cuda":
        artifact("aoti fp16", "aoti", "fp16")
        try:
            FORMATS["tensorrt"].check_available(ExportConfig(format="tensorrt", device="cuda"))
            artifact("tensorrt fp16", "tensorrt", "fp16")
        except Exception as e:  # noqa: BLE001  (absence of TensorRT is reported, not fatal)
            print(f"tensorrt: not measured ({e})")
    else:
        try:
            FORMATS["onnx"].check_available(ExportConfig(format="onnx"))
            artifact("onnxruntime fp32", "onnx", "fp32")
            artifact("onnxruntime fp16", "onnx", "fp16")
        except Exception as e:  # noqa: BLE001
            print(f"onnx: not measured ({e})")
    return gen, methods


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=10, help="timed calls per method per round (batch 1)")
    ap.add_argument("--include", default="eager-variants,compile,aoti-variants")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    tune_allocator()
    device = args.device
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        gen, methods = build_methods(device, Path(tmp), set(args.include.split(",")))
        torch.manual_seed(0)
        inputs = {1: example_input(gen, 1, device), 32: example_input(gen, 32, device)}
        with torch.no_grad():
            ref = {n: gen(x) for n, x in inputs.items()}
        results = {name: {"b1_ms": [], "b32_img_s": []} for name in methods}
        err = {}
        for name, fn in methods.items():  # warm-up (compiles torch.compile graphs) and parity
            for x in inputs.values():
                for _ in range(2):
                    fn(x)
            sync()
            err[name] = parity(ref[32], fn(inputs[32]))
        for r in range(args.rounds):
            for name, fn in methods.items():
                results[name]["b1_ms"].append(1e3 * median_time(fn, inputs[1], args.repeats, sync))
                results[name]["b32_img_s"].append(32 / median_time(fn, inputs[32], max(2, args.repeats // 4), sync))
            print(f"round {r + 1}/{args.rounds} done")
    base = statistics.median(results["eager fp32"]["b1_ms"])
    rows = []
    print(f"\n{'method':26s} {'batch 1 ms':>10s} {'x eager':>8s} {'batch 32 img/s':>15s} {'max abs err':>12s} "
          f"{'PSNR diff':>9s}")
    for name, res in results.items():
        b1, b32 = statistics.median(res["b1_ms"]), statistics.median(res["b32_img_s"])
        row = {"method": name, "batch1_ms": b1, "speedup_vs_eager_fp32": base / b1, "batch32_images_per_s": b32,
               "batch1_ms_rounds": res["b1_ms"], "batch32_rounds": res["b32_img_s"],
               "max_abs_err": err[name]["max_abs"], "psnr_diff_db": err[name]["psnr_db"]}
        rows.append(row)
        print(f"{name:26s} {b1:10.2f} {base / b1:8.2f} {b32:15.1f} {row['max_abs_err']:12.2e} "
              f"{min(row['psnr_diff_db'], 999):9.1f}")
    out = Path(args.out or f"bench/results/export_{device}_{date.today()}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"date": str(date.today()), "device": device, "torch": torch.__version__,
                               "cpu": platform.processor() or platform.machine(),
                               "threads": torch.get_num_threads(), "rounds": args.rounds, "repeats": args.repeats,
                               # 1-minute load average before and after: other work on the machine shows here
                               "loadavg_start": load_start[0], "loadavg_end": os.getloadavg()[0],
                               "rows": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
