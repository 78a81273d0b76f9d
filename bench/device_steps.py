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
import subprocess
import sys
import time
from pathlib import Path

import torch
from device_context import REPO, Context, Skip, _models, exact_fp32
from device_train import throughput, train_mfu, train_profile

from facecomp.config import load_config

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
        raise Skip("deepspeed is not importable here: carry its wheel (docs/device-check.md)") from None
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
