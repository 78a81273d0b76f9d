"""The training steps of bench/device_check.py: throughput per stage and preset, the stage-3 MFU table
(eager, compiled, CUDA graphs) and where a stage-3 step's time goes."""

from __future__ import annotations

import statistics
import time

import torch
from device_context import Context, Skip, _models
from torch.utils.flop_counter import FlopCounterMode

from facecomp.config import load_config

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
        def step(m=models, u=updaters, b=batch, c=counter, f=fns):
            return train_step(m, u, b, cfg, 3, next(c), fns=f)

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
