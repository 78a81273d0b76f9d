"""The measured steps of bench/device_check.py, in order. Each takes the Context and returns its figures
(``status`` "fail" where a stated check did not hold), or raises ``Context.Skip`` with the reason.

Tolerances, stated once:
- GPU vs CPU in fp32 (TF32 off on both): the generator output within 1e-4 max abs on the [-1, 1]
  scale (float reassociation in cuDNN's conv algorithms, nothing else); each loss of one train_step
  within rel 1e-4; after the step, each weight within 2*lr + 1e-6 of the CPU's (Adam's first update is
  about lr * sign(gradient), so a gradient that is ~0 may take the other sign on the other device).
- DeepSpeed vs the plain loop: rel 1e-5 on every loss of every step for the fp32 ZeRO-1 engine
  (tests/test_cluster.py's reason: the same torch Adam on the same gradients). The bf16 engine against
  a plain loop holding the same bf16 weights: rel 1e-2 on the first step's losses (the G losses follow
  one D update, which the engine makes on fp32 master weights and the plain loop on bf16 ones);
  later steps are reported, not gated.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from facecomp.config import load_config

REPO = Path(__file__).resolve().parent.parent


class Skip(Exception):
    """The step cannot run here; the message says why."""


@dataclass
class Context:
    device: torch.device
    quick: bool
    out: Path
    faces: list[Path]
    deadline: float  # time.monotonic() by which the whole run should be done
    peak_tflops: dict[str, float] = field(default_factory=dict)
    copy_gbps: float | None = None
    records: dict[str, dict] = field(default_factory=dict)  # the finished steps' records, by name
    Skip = Skip

    @classmethod
    def create(cls, device: str, quick: bool, out: Path, faces: list[Path], budget_s: float) -> Context:
        if device == "cuda" and not torch.cuda.is_available():
            raise SystemExit("device_check: --device cuda, but torch sees no CUDA GPU (use --device cpu)")
        return cls(torch.device(device), quick, out, faces, time.monotonic() + budget_s)

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def describe(self) -> dict:
        if self.cuda:
            p = torch.cuda.get_device_properties(0)
            return {"type": "cuda", "name": p.name, "sms": p.multi_processor_count,
                    "memory_gib": round(p.total_memory / 2**30, 1)}
        return {"type": "cpu", "name": f"CPU ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"}

    def median_s(self, fn, repeats: int, warmup: int = 2, inner: int = 1) -> float:
        """Median seconds per call of ``fn``; each timed repeat runs it ``inner`` times back to back
        and synchronizes once, so a short GPU kernel is timed by its throughput, not by launch and
        synchronization latency."""
        for _ in range(warmup):
            fn()
        self.sync()
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            for _ in range(inner):
                fn()
            self.sync()
            times.append((time.perf_counter() - t) / inner)
        return statistics.median(times)

    def batch(self, cfg, n: int, device: torch.device | None = None) -> tuple[dict, str]:
        """A training batch of real faces (synthetic noise images only where none are at hand)."""
        device = device or self.device
        if self.faces:
            from facecomp.data.pipeline import build_loader

            cfg.data.workers = 0
            files = (self.faces * (n // len(self.faces) + 1))[:max(n, 2)]
            b = next(iter(build_loader(files, cfg.generator.image_size, cfg.data, cfg.mask, n, seed=0)))
            source = "real faces"
        else:
            s = cfg.generator.image_size
            g = torch.Generator().manual_seed(0)
            b = {"image": torch.rand(n, 3, s, s, generator=g) * 2 - 1, "mask": torch.zeros(n, 1, s, s)}
            b["mask"][:, :, s // 4: 3 * s // 4, s // 4: 3 * s // 4] = 1
            source = "synthetic (no faces found: run --prepare)"
        return {"image": b["image"].to(device), "mask": b["mask"].to(device)}, source


# --- 1. environment --------------------------------------------------------------------------------

def _command(args: list[str]) -> str | None:
    if shutil.which(args[0]) is None:
        return None
    r = subprocess.run(args, capture_output=True, text=True, timeout=30)
    return (r.stdout.strip() or r.stderr.strip()).splitlines()[-1] if r.returncode == 0 else None


def matmul_tflops(ctx: Context, dtype: torch.dtype, n: int) -> float:
    a = torch.randn(n, n, dtype=dtype, device=ctx.device)
    b = torch.randn(n, n, dtype=dtype, device=ctx.device)
    return 2 * n**3 / ctx.median_s(lambda: a @ b, repeats=10 if ctx.cuda else 3) / 1e12


def copy_bandwidth_gbps(ctx: Context, mib: int) -> float:
    src = torch.rand(mib * 2**18, device=ctx.device)  # fp32: 4 bytes an element
    dst = torch.empty_like(src)
    t = ctx.median_s(lambda: dst.copy_(src), repeats=10 if ctx.cuda else 3)
    return 2 * src.numel() * 4 / t / 1e9  # read + write


def environment(ctx: Context) -> dict:
    info = {"torch": torch.__version__, "torch_cuda": torch.version.cuda, "python": sys.version.split()[0],
            "nvcc": _command(["nvcc", "--version"]),
            "driver": _command(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]),
            **ctx.describe()}
    n = 8192 if ctx.cuda else (512 if ctx.quick else 2048)
    ctx.peak_tflops = {"bf16": matmul_tflops(ctx, torch.bfloat16, n), "fp32": matmul_tflops(ctx, torch.float32, n)}
    ctx.copy_gbps = copy_bandwidth_gbps(ctx, 2048 if ctx.cuda else (64 if ctx.quick else 512))
    return {**info, "matmul_n": n, "peak_tflops_measured": ctx.peak_tflops, "copy_gbps_measured": ctx.copy_gbps}


# --- 2. the fused kernels --------------------------------------------------------------------------

PYTEST_FROM_SOURCE = ("import sys; sys.path.insert(0, 'bench'); import source_tree; source_tree.install(); "
                      "import pytest; sys.exit(pytest.main(sys.argv[1:]))")


def kernels(ctx: Context) -> dict:
    from facecomp import kernels as k
    from facecomp.kernels import build

    t = time.perf_counter()
    mod = build.load()
    res = {"build_s": round(time.perf_counter() - t, 1), "with_cuda": bool(mod.with_cuda)}
    r = subprocess.run([sys.executable, "-c", PYTEST_FROM_SOURCE, "-q", "-p", "no:cacheprovider", "-m", "cuda",
                        "tests/test_kernels.py"], cwd=REPO, capture_output=True, text=True,
                       timeout=max(30, min(240, ctx.left())))
    tail = r.stdout.strip().splitlines()[-1] if r.stdout.strip() else r.stderr[-500:]
    counts = {k_: int(v) for v, k_ in re.findall(r"(\d+) (passed|failed|skipped|error)", tail)}
    res["cuda_tests"] = {"returncode": r.returncode, "summary": tail, **counts}

    # On the GPU a batch of 1024 (200 MB of fp32 image): 256 took ~0.2 ms, close to the Python dispatch
    # time of one call, which would then be measured instead of the memory traffic.
    n = 1024 if ctx.cuda else (4 if ctx.quick else 32)
    x = torch.rand(n, 3, 128, 128, device=ctx.device) * 2 - 1
    g = torch.rand_like(x) * 2 - 1
    m = torch.zeros(n, 1, 128, 128, device=ctx.device)
    m[:, :, 32:96, 32:96] = 1
    plane = n * 128 * 128 * 4
    gen = torch.Generator(device=ctx.device).manual_seed(0)

    def eager_fill():  # what the code did before the kernels: materialised noise, one op a term
        z = torch.rand(x.shape, generator=gen, device=ctx.device) * 2 - 1
        return torch.cat([m * z + (1 - m) * x, m], dim=1)

    # bytes the fused op must move at least: fill reads x, m and writes 3 + 1 planes; composite reads x, g, m
    # and writes 3
    cases = {"fill": (eager_fill, lambda: k.fill(x, m, seed=1, mask_channel=True, impl="native"), 8 * plane),
             "composite": (lambda: m * g + (1 - m) * x, lambda: k.composite(x, g, m, impl="native"), 10 * plane)}
    repeats, inner = (20, 10) if ctx.cuda else (3, 1)
    for name, (eager, fused, nbytes) in cases.items():
        te, tf = ctx.median_s(eager, repeats, inner=inner), ctx.median_s(fused, repeats, inner=inner)
        gbps = nbytes / tf / 1e9
        res[name] = {"batch": n, "calls_per_timing": inner, "eager_ms": te * 1e3, "fused_ms": tf * 1e3,
                     "speedup": te / tf,
                     "fused_gbps": gbps, "pct_of_copy_bandwidth": 100 * gbps / ctx.copy_gbps if ctx.copy_gbps else None}
    failed = r.returncode not in (0, 5) or (ctx.cuda and not res["with_cuda"])  # 5: no tests ran (no GPU)
    return {"status": "fail" if failed else "ok", **res}


# --- 3. GPU vs CPU in fp32 -------------------------------------------------------------------------

def _models(cfg, device: torch.device, seed: int = 0, dtype: torch.dtype | None = None):
    """Stage-3 models (G, both Ds, a random frozen parsing net) seeded the same on every device, with
    plain Adam updaters; ``dtype`` casts G and the Ds (weights and buffers), as a bf16 engine holds them."""
    from facecomp.models import ParsingNet, freeze
    from facecomp.train.loop import build_models, build_optimizers, build_updaters, loss_network

    torch.manual_seed(seed)
    models = build_models(cfg, 3, torch.device("cpu"))
    torch.manual_seed(seed + 1)
    models.parsing = loss_network(freeze(ParsingNet(cfg.parsing)), cfg)  # as the trainer runs it
    for name in ("generator", "d_local", "d_global", "parsing"):
        mod = getattr(models, name).to(device)
        if dtype is not None and name != "parsing":
            mod = mod.to(dtype)
        if cfg.runtime.channels_last:
            mod = mod.to(memory_format=torch.channels_last)
        setattr(models, name, mod)
    return models, build_updaters(models, build_optimizers(models, cfg), cfg)


@contextlib.contextmanager
def exact_fp32():
    """fp32 that two runs can compare to 1e-5: TF32 off (cuDNN convolutions use it by default, rounding
    their inputs to 10 mantissa bits) and cuDNN's deterministic algorithms (no atomics in the weight
    gradients). No effect on a CPU."""
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
             torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        yield
    finally:
        (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
         torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark) = saved


def gpu_vs_cpu(ctx: Context) -> dict:
    with exact_fp32():
        return _gpu_vs_cpu(ctx)


def _gpu_vs_cpu(ctx: Context) -> dict:
    from facecomp.train.step import train_step

    preset = "smoke" if ctx.quick else "cpu"
    cfg = load_config(preset, ["runtime.amp=none"])
    cfg.adversarial.d_skip_below = 0.0  # both Ds step: the whole step is compared
    cpu_batch, source = ctx.batch(cfg, 2 if ctx.quick else 8, torch.device("cpu"))
    dev_batch = {k: v.to(ctx.device) for k, v in cpu_batch.items()}
    ref, ref_up = _models(cfg, torch.device("cpu"))
    dut, dut_up = _models(cfg, ctx.device)
    from facecomp import kernels as k

    with torch.no_grad():
        x_in = k.fill(cpu_batch["image"], cpu_batch["mask"], seed=3, mask_channel=cfg.generator.mask_channel)
        ref.generator.eval(), dut.generator.eval()
        fwd = (dut.generator(x_in.to(ctx.device)).cpu() - ref.generator(x_in)).abs().max().item()
        ref.generator.train(), dut.generator.train()
    a = train_step(ref, ref_up, cpu_batch, cfg, 3, 0).metrics
    b = train_step(dut, dut_up, dev_batch, cfg, 3, 0).metrics
    keys = [key for key in ("d_adv_local", "d_adv_global", "recon", "adv_local", "adv_global", "parsing", "total")
            if key in a]
    rel = {key: abs(b[key] - a[key]) / max(abs(a[key]), 1e-12) for key in keys}
    weight = max((p.detach().cpu() - q.detach()).abs().max().item()
                 for p, q in zip(dut.generator.parameters(), ref.generator.parameters(), strict=True))
    ok = fwd < 1e-4 and max(rel.values()) < 1e-4 and weight <= 2 * cfg.optim.lr_g + 1e-6
    return {"status": "ok" if ok else "fail", "preset": preset,
            "reference": "cpu", "same_device": not ctx.cuda, "batch_source": source,
            "forward_max_abs": fwd, "loss_rel_diff": rel, "generator_weight_max_abs_after_step": weight,
            "tolerance": {"forward_max_abs": 1e-4, "loss_rel": 1e-4, "weight_max_abs": 2 * cfg.optim.lr_g + 1e-6}}


# --- 4. training throughput -------------------------------------------------------------------------

def _stage_rates(ctx: Context, cfg, models, updaters, batch, repeats: int, flops: dict) -> dict:
    from facecomp.train.step import train_step

    rows = {}
    n = batch["image"].shape[0]
    for stage in (1, 2, 3):
        if stage not in flops:
            if ctx.cuda:
                train_step(models, updaters, batch, cfg, stage, 0)  # a first step outside the counter
            with FlopCounterMode(display=False) as counter:
                train_step(models, updaters, batch, cfg, stage, 0)
            flops[stage] = counter.get_total_flops()
        sec = ctx.median_s(lambda s=stage: train_step(models, updaters, batch, cfg, s, 1), repeats,
                           warmup=2 if ctx.cuda else 0)  # CPU: the counted step was its warm-up
        tflops = flops[stage] / sec / 1e12
        rows[f"stage{stage}"] = {"batch": n, "step_ms": sec * 1e3, "images_per_s": n / sec,
                                 "tflop_per_step": flops[stage] / 1e12, "tflops": tflops,
                                 "mfu_pct_of_measured_bf16_peak": 100 * tflops / ctx.peak_tflops["bf16"]
                                 if ctx.peak_tflops.get("bf16") else None}
    return rows


COMPILE_S = 100  # torch.compile of one preset's four modules and its 3 x 22 steps, estimated for an H100
RESERVE_S = 150  # what the export and DeepSpeed steps need after the throughput step


def throughput(ctx: Context) -> dict:
    res = {"amp": "bf16", "channels_last": True}
    presets = ["smoke"] if ctx.quick else ["paper", "cpu"]  # paper first: its stage-3 MFU is the target
    for preset in presets:
        cfg = load_config(preset, ["runtime.amp=bf16", "runtime.channels_last=true"])
        cfg.adversarial.d_skip_below = 0.0  # every D steps: the full step's cost
        n = 2 if ctx.quick else cfg.train.batch_size
        batch, source = ctx.batch(cfg, n)
        models, updaters = _models(cfg, ctx.device)
        flops: dict = {}
        row = {"batch_source": source, "eager": _stage_rates(ctx, cfg, models, updaters, batch,
                                                             20 if ctx.cuda else 1, flops)}
        # compile costs a minute or more a preset on a GPU: only when it and the later steps (export,
        # DeepSpeed: RESERVE_S) still fit the budget
        need = COMPILE_S + RESERVE_S
        if ctx.quick:
            row["compile"] = {"status": "skipped", "reason": "--quick (compiling takes minutes on a CPU)"}
        elif ctx.left() < need:
            row["compile"] = {"status": "skipped", "reason": f"budget: {ctx.left():.0f} s left, {need} s needed"}
        else:
            torch._dynamo.config.cache_size_limit = 64  # frozen() flips requires_grad: a few graphs per module
            t = time.perf_counter()
            for name in ("generator", "d_local", "d_global", "parsing"):
                getattr(models, name).compile()
            row["compile"] = _stage_rates(ctx, cfg, models, updaters, batch, 20, flops)
            row["compile"]["compile_and_measure_s"] = time.perf_counter() - t
        res[preset] = row
    return res


# --- 4a. the stage-3 MFU table: eager, compiled, compiled + CUDA graphs -----------------------------

MFU_COMPILE_S = {"default": 150, "reduce-overhead": 180}  # first batch of a mode (its graphs); later batches: half


def _sync_count(fn) -> int | None:
    """Host syncs one call of ``fn`` makes: CUDA's sync debug mode warns at each synchronizing call."""
    if not torch.cuda.is_available():
        return None
    import warnings

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchronizing" in str(w.message) for w in seen)


def _launches(ctx: Context, fn) -> dict:
    """Kernel and graph launches of one call of ``fn``, from torch.profiler's runtime events."""
    from torch.profiler import ProfilerActivity, profile

    if not ctx.cuda:
        return {"kernel_launches": None, "graph_launches": None}
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        fn()
        ctx.sync()
    events = prof.key_averages()
    count = lambda names: int(sum(e.count for e in events if e.key in names))  # noqa: E731
    return {"kernel_launches": count({"cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernelEx"}),
            "graph_launches": count({"cudaGraphLaunch"})}


def train_mfu(ctx: Context) -> dict:
    """Stage 3 of the ``paper`` preset as it trains (bf16, channels_last, the sync-free step with its
    device-side D-skip gate): MFU eager, with each step piece compiled whole (``runtime.compile=default``)
    and compiled with CUDA graphs (``reduce-overhead``), at batch 64/128/256, most valuable first while
    the budget lasts; per step the kernel and graph launches and the host syncs (CUDA's sync debug mode).
    MFU = counted FLOPs of the eager step / step time / this GPU's measured bf16 matmul peak."""
    from facecomp.train.step import StepFunctions, train_step

    preset = "smoke" if ctx.quick else "paper"
    cfg = load_config(preset, ["runtime.amp=bf16", "runtime.channels_last=true"])
    if ctx.cuda:
        torch.backends.cudnn.benchmark = cfg.runtime.cudnn_benchmark
    batches = (2,) if ctx.quick else (64, 128, 256)
    # eager at every batch first, then graphs (the likely winner) at the smallest and largest batch,
    # then plain compile; the CPU in CI runs eager only (compiling there takes minutes; tests cover it)
    plan = [("none", n) for n in batches]
    if not ctx.quick:
        plan += [("reduce-overhead", 64), ("reduce-overhead", 256), ("default", 64), ("reduce-overhead", 128),
                 ("default", 256)]
    res: dict = {"preset": preset, "stage": 3, "amp": "bf16", "channels_last": True,
                 "d_skip_below": cfg.adversarial.d_skip_below, "rows": [], "skipped": []}
    flops: dict[int, float] = {}
    compiled_modes: set[str] = set()
    for mode, n in plan:
        need = 0 if mode == "none" else MFU_COMPILE_S[mode] // (2 if mode in compiled_modes else 1)
        if ctx.left() < need + RESERVE_S and not ctx.quick:
            res["skipped"].append({"mode": mode, "batch": n, "reason": f"budget: {ctx.left():.0f} s left"})
            continue
        t0 = time.perf_counter()
        models, updaters = _models(cfg, ctx.device)
        batch, res["batch_source"] = ctx.batch(cfg, n)
        fns = StepFunctions(mode, cfg.adversarial.r1 > 0)
        counter = iter(range(10**6))
        step = lambda: train_step(models, updaters, batch, cfg, 3, next(counter), fns=fns)  # noqa: E731
        if n not in flops:
            step()  # outside the counter: Adam's state, cuDNN's algorithm search
            with FlopCounterMode(display=False) as fc:
                train_step(models, updaters, batch, cfg, 3, 0)
            flops[n] = fc.get_total_flops()
        for _ in range(3 if mode != "none" else 1 if ctx.cuda else 0):  # compile, record graphs
            step()
        sec = ctx.median_s(step, 10 if ctx.cuda else 1, warmup=1 if ctx.cuda else 0)
        compiled_modes.add(mode)
        tflops = flops[n] / sec / 1e12
        res["rows"].append({"mode": mode, "batch": n, "step_ms": sec * 1e3, "images_per_s": n / sec,
                            "tflops": tflops, "mfu_pct_of_measured_bf16_peak":
                            100 * tflops / ctx.peak_tflops["bf16"] if ctx.peak_tflops.get("bf16") else None,
                            **_launches(ctx, step), "host_syncs_per_step": _sync_count(step),
                            "seconds_incl_compile": round(time.perf_counter() - t0, 1)})
        del models, updaters, fns
        if ctx.cuda:
            torch.cuda.empty_cache()
    best = max(res["rows"], key=lambda r: r["mfu_pct_of_measured_bf16_peak"] or 0, default=None)
    res["best"] = best and {k: best[k] for k in ("mode", "batch", "mfu_pct_of_measured_bf16_peak")}
    return res


# --- 4b. where a stage-3 step's time goes ------------------------------------------------------------

def train_profile(ctx: Context) -> dict:
    """Stage 3 of the ``paper`` preset (bf16, channels_last, eager): images/s and MFU as the batch grows,
    and one step under torch.profiler: GPU busy time against the step's wall time and the ops that take
    it. A step whose GPU time is far below its wall time is bound by launches and host work (a larger
    batch or CUDA graphs help); one whose GPU time is close is bound by its kernels."""
    from torch.profiler import ProfilerActivity, profile

    from facecomp.train.step import train_step

    if not ctx.quick and ctx.left() < 90:
        raise Skip(f"budget: {ctx.left():.0f} s left, about 60 s needed")
    preset = "smoke" if ctx.quick else "paper"
    cfg = load_config(preset, ["runtime.amp=bf16", "runtime.channels_last=true"])
    cfg.adversarial.d_skip_below = 0.0
    batches = (2, 4) if ctx.quick else (64, 128, 256)
    models, updaters = _models(cfg, ctx.device)
    res: dict = {"preset": preset, "stage": 3, "by_batch": {}}
    for n in batches:
        batch, res["batch_source"] = ctx.batch(cfg, n)
        train_step(models, updaters, batch, cfg, 3, 0)
        with FlopCounterMode(display=False) as counter:
            train_step(models, updaters, batch, cfg, 3, 0)
        sec = ctx.median_s(lambda b=batch: train_step(models, updaters, b, cfg, 3, 1), 10 if ctx.cuda else 1,
                           warmup=2 if ctx.cuda else 0)
        tflops = counter.get_total_flops() / sec / 1e12
        res["by_batch"][str(n)] = {"step_ms": sec * 1e3, "images_per_s": n / sec, "tflops": tflops,
                                   "mfu_pct_of_measured_bf16_peak": 100 * tflops / ctx.peak_tflops["bf16"]
                                   if ctx.peak_tflops.get("bf16") else None}
    batch, _ = ctx.batch(cfg, batches[0])
    res["adam_at_first_batch"] = _adam_variants(ctx, cfg, models, batch)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if ctx.cuda else [])
    ctx.sync()
    t = time.perf_counter()
    with profile(activities=activities) as prof:
        for _ in range(3):
            train_step(models, updaters, batch, cfg, 3, 1)
        ctx.sync()
    wall = (time.perf_counter() - t) / 3
    events = prof.key_averages()
    if ctx.cuda:  # the GPU's own events (kernels, copies): their self time is when the GPU was busy
        work = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA]
        busy = [e.self_device_time_total for e in work]
    else:  # no device: the CPU ops' own time stands in
        work = list(events)
        busy = [e.self_cpu_time_total for e in work]
    busy_us = sum(busy) / 3
    top = sorted(zip(busy, work, strict=True), key=lambda t: t[0], reverse=True)[:15]
    host = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:8]
    res["profile"] = {
        "batch": batches[0], "wall_ms_per_step_profiled": wall * 1e3, "device_busy_ms_per_step": busy_us / 1e3,
        "busy_pct_of_wall": 100 * busy_us / 1e6 / wall,
        "kernel_launches_per_step": sum(e.count for e in events if e.key.startswith("cudaLaunchKernel")) / 3
        if ctx.cuda else None,
        "top_device_work": [{"name": e.key[:90], "ms_per_step": us / 1e3 / 3, "calls_per_step": e.count / 3}
                            for us, e in top],
        "top_host_ops": [{"name": e.key[:90], "self_cpu_ms_per_step": e.self_cpu_time_total / 1e3 / 3,
                          "calls_per_step": e.count / 3} for e in host]}
    return res


def _adam_variants(ctx: Context, cfg, models, batch) -> dict:
    """The step with torch's default Adam (foreach on CUDA) and with its fused kernel, timed alternately
    (median of the per-round times): Adam's step was the second-largest GPU item of the first profile."""
    from facecomp.train.loop import build_optimizers, build_updaters
    from facecomp.train.step import train_step

    default = build_optimizers(models, cfg)  # the trainer's own Adams; the fused ones differ in that flag only
    fused = {n: type(o)(o.param_groups[0]["params"], **{**o.defaults, "foreach": None, "fused": True})
             for n, o in default.items()}
    updaters = {"default": build_updaters(models, default, cfg), "fused": build_updaters(models, fused, cfg)}
    for up in updaters.values():
        train_step(models, up, batch, cfg, 3, 1)  # Adam's state is made on its first step
    times: dict[str, list[float]] = {k: [] for k in updaters}
    for _ in range(5 if ctx.cuda else 1):
        for kind, up in updaters.items():
            times[kind].append(ctx.median_s(lambda u=up: train_step(models, u, batch, cfg, 3, 1), 3, warmup=1))
    ms = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    return {"step_ms": ms, "fused_speedup": ms["default"] / ms["fused"]}


# --- 5. export and complete --engine -----------------------------------------------------------------

def _weights(ctx: Context) -> Path | None:
    """The shipped generator; in --quick a small random one (the AOTInductor build of the shipped model
    takes minutes on a CPU)."""
    if not ctx.quick:
        return None
    from facecomp import config as config_mod
    from facecomp.models import Generator
    from facecomp.weights import save_module

    cfg = load_config("smoke").generator
    path = ctx.out / "work" / "smoke_generator.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    save_module(path, Generator(cfg), "generator", {"config": config_mod.to_dict(cfg)})
    return path


def export_engine(ctx: Context) -> dict:
    from facecomp import models
    from facecomp.cli import main as cli
    from facecomp.export import load_engine, parity
    from facecomp.export.program import example_input

    if not ctx.quick and ctx.left() < 60:  # --quick (CI) always runs it: that is what it is there for
        raise Skip(f"budget: {ctx.left():.0f} s left, the AOTInductor build alone takes about a minute")
    weights = _weights(ctx)
    model_args = ["--model", str(weights)] if weights else []
    art = ctx.out / "work" / "aoti"
    precision = "bf16" if ctx.cuda else "fp32"
    big = 32 if not ctx.quick else 4
    t = time.perf_counter()
    rc = cli(["export", "--format", "aoti", "--device", ctx.device.type, "--precision", precision,
              "--batch", f"1:1:{big}", "-o", str(art), *model_args])
    res = {"precision": precision, "export_rc": rc, "export_s": time.perf_counter() - t}
    if rc != 0:
        return {"status": "fail", **res}
    if ctx.faces:
        t = time.perf_counter()
        res["complete_rc"] = cli(["complete", str(ctx.faces[0]), "--mask", "O3", "--engine", str(art), "--device",
                                  ctx.device.type, "-o", str(ctx.out / "work" / "completed.png"), *model_args])
        res["complete_s"] = time.perf_counter() - t
    eager = models.load("generator", weights, ctx.device).float()
    engine = load_engine(art, device=ctx.device.type)
    repeats = 30 if ctx.cuda else 3
    with torch.no_grad():
        for n in (1, big):
            x = example_input(eager, n, ctx.device)
            te = ctx.median_s(lambda x=x: eager(x), repeats)
            ta = ctx.median_s(lambda x=x: engine(x), repeats)
            res[f"batch{n}"] = {"eager_fp32_ms": te * 1e3, "aoti_ms": ta * 1e3, "speedup": te / ta,
                                "aoti_images_per_s": n / ta, **{f"parity_{k}": v for k, v in
                                                               parity(eager(x), engine(x)).items()}}
    ok = res.get("complete_rc", 0) == 0 and res[f"batch{big}"]["parity_psnr_db"] > (45 if precision == "bf16" else 90)
    return {"status": "ok" if ok else "fail", **res}


def aoti_probe(ctx: Context) -> dict:
    """Only after export_aoti_engine failed or crashed: which AOTInductor builds load here (bench/aoti_probe.py)."""
    export = ctx.records.get("export_aoti_engine", {})
    if export.get("status") not in ("crashed", "fail", "error"):
        raise Skip(f"export_aoti_engine did not fail ({export.get('status', 'not run')}): nothing to narrow down")
    if ctx.left() < 120:
        raise Skip(f"budget: {ctx.left():.0f} s left, the probe needs about 200 s")
    variants = "tiny" if ctx.quick else "tiny,weights_pickled,weights_blob,no_freezing,fp32_no_freezing,contiguous"
    out = ctx.out / "aoti_probe"
    r = subprocess.run([sys.executable, str(REPO / "bench" / "aoti_probe.py"), "--device", ctx.device.type,
                        "--variants", variants, "--out", str(out), "--timeout-s", str(max(30.0, ctx.left() - 20))],
                       capture_output=True, text=True, timeout=max(60.0, ctx.left() + 60),
                       env={**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "bench"), str(REPO),
                                                                        os.environ.get("PYTHONPATH", "")])})
    report = out / "aoti_probe.json"
    if not report.is_file():
        return {"status": "fail", "returncode": r.returncode, "stderr_tail": r.stderr[-2000:]}
    variants_ = json.loads(report.read_text())["variants"]
    return {"status": "ok", "variants": {v["variant"]: {"compile": v["compile"]["status"],
                                                        "constant_devices": v["compile"].get("constant_devices"),
                                                        "suspect_constants": len(v["compile"].get(
                                                            "suspect_constants", [])),
                                                        "load_and_run": v.get("load_and_run", {}).get("status"),
                                                        "max_abs_vs_eager": v.get("load_and_run", {})
                                                        .get("max_abs_vs_eager")} for v in variants_},
            "report": str(report)}


# --- 6. DeepSpeed -----------------------------------------------------------------------------------

def deepspeed_engines(ctx: Context) -> dict:
    import socket

    if not ctx.quick and ctx.left() < 20:
        raise Skip(f"budget: {ctx.left():.0f} s left")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # DS_ACCELERATOR before the import: DeepSpeed picks its accelerator once, when first imported
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": "0", "LOCAL_RANK": "0",
                       "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1", "DS_ACCELERATOR": ctx.device.type})
    try:
        import deepspeed  # noqa: F401
    except ImportError:
        raise Skip("deepspeed is not importable here: carry its wheel (README, 'Device check')") from None
    import torch.distributed as dist

    from facecomp.cluster.deepspeed_models import make_agree, wrap_models
    from facecomp.train.step import train_step

    backend = "nccl" if ctx.cuda else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend, rank=0, world_size=1)
    res = {"backend": backend, "world_size": 1}
    ok = True
    steps = 1 if ctx.quick else 3
    configs = (("zero1_fp32", "none", 1e-5), ("zero1_bf16", "bf16", 1e-2))
    for ds_name, amp, rtol in configs[1:] if ctx.quick else configs:  # quick: the bf16 engine the GPU runs
        cfg = load_config("smoke" if ctx.quick else "cpu", [f"runtime.amp={amp}", f"cluster.deepspeed={ds_name}"])
        cfg.adversarial.d_skip_below = 0.0
        batch, _ = ctx.batch(cfg, 4 if ctx.quick else 16)
        plain, updaters = _models(cfg, ctx.device, dtype=torch.bfloat16 if amp == "bf16" else None)
        ds_base, _ = _models(cfg, ctx.device)
        parsing = copy.deepcopy(ds_base.parsing)
        wrapped = wrap_models(ds_base, cfg, ctx.device)
        ds_models, agree = wrapped.models(parsing), make_agree(1)
        per_step, first = [], {}
        # fp32 is compared exactly (the first GPU check, with cuDNN's TF32 on, differed by 3.4e-4 on the first
        # step); bf16 runs as it trains
        with exact_fp32() if amp == "none" else contextlib.nullcontext():
            for step in range(steps):
                a = train_step(plain, updaters, batch, cfg, 3, step).metrics
                b = train_step(ds_models, wrapped.updaters(), batch, cfg, 3, step, agree=agree).metrics
                rel = {k_: abs(b[k_] - a[k_]) / max(abs(a[k_]), 1e-12)
                       for k_ in ("d_adv_local", "d_adv_global", "recon", "adv_local", "adv_global", "parsing",
                                  "total") if k_ in a}
                first = first or rel
                per_step.append(max(v for k_, v in rel.items() if not k_.startswith("d_")))
        # fp32: every step is gated. bf16: the first step only, from the same bf16 weights; after it the
        # engine's fp32 master weights and the plain loop's bf16 ones round Adam's update differently,
        # so later steps drift by design (reported, not gated).
        gated = per_step if amp == "none" else per_step[:1]
        res[ds_name] = {"steps": steps, "loss_rel_diff_per_step": per_step, "rtol": rtol,
                        "gated_steps": len(gated), "first_step_rel_diff_by_loss": first}
        ok = ok and max(gated) <= rtol
    return {"status": "ok" if ok else "fail", **res}


# --- 7. what cannot be tested on the lent machine ----------------------------------------------------

def untestable(ctx: Context) -> dict:
    return {"status": "untestable",
            "ray_train_gpu": "Ray's wheels are too big to carry (64 MiB per call) and the machine has no registry",
            "dali_gpu": "DALI's CUDA wheel is too big to carry; its GPU pipeline test (tests/test_dali.py) stays unrun",
            "tensorrt": "TensorRT / Torch-TensorRT are not installed there and too big to carry"}


# Steps that run in a child process (bench/device_check.py, run_in_child): loading a compiled
# AOTInductor package on CUDA ended the whole first GPU check with a segfault (2026-11-27).
ISOLATED = frozenset({"export_aoti_engine"})

STEPS = [("environment", environment), ("kernels", kernels), ("gpu_vs_cpu_fp32", gpu_vs_cpu),
         ("train_mfu", train_mfu), ("train_throughput", throughput), ("train_profile", train_profile),
         ("export_aoti_engine", export_engine),
         ("aoti_probe", aoti_probe), ("deepspeed_zero1", deepspeed_engines), ("not_testable_there", untestable)]
