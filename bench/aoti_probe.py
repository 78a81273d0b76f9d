"""Which AOTInductor builds of the generator load and run, each built and loaded in its own process.

The first GPU device checks (2026-11-27, H200, torch 2.11 + CUDA 13) saw ``facecomp export --format
aoti --device cuda`` die with a segfault inside ``aoti_load_package`` (AOTIModelPackageLoader's
constructor), before and after BatchNorm's 0-dim counters left the program; the same code loads and
runs on the CPU. This probe narrows it down on the next lent GPU: each variant is compiled in one child
process and loaded and run in a second, fresh one, so a crash names the variant and the phase and ends
nothing else. Variants (``--variants``, comma-separated):

    tiny             conv + BatchNorm + ReLU, fp32, no freezing: does an AOTInductor package load here at all?
    shipped          the generator as facecomp exports it: bf16, channels_last, freezing + weight prepack
    no_freezing      the same without Inductor's freezing (weights stay graph inputs held by the package)
    fp32             fp32 instead of bf16, freezing on
    fp32_no_freezing fp32, no freezing
    contiguous       bf16, NCHW inside the graph instead of channels_last, freezing on
    weights_pickled  as shipped, but the constants outside the .so, pickled beside it in the package
                     (aot_inductor.package_constants_in_so=False, on-disk format pickle_weights)
    weights_blob     the same with the constants in one binary blob (on-disk format binary_blob)
    caching_alloc    as shipped, the weights in PyTorch's CUDA caching allocator (weight_use_caching_allocator)

Every compile also dumps the constants the exported program hands AOTInductor (name, device, dtype, shape,
strides, contiguity: a CPU constant in a CUDA program, a 0-dim one, a non-contiguous one are the usual
suspects of a loader crash) and the package's files with their sizes, so a crash that no variant avoids
still leaves what was in the package that crashed.

    python bench/aoti_probe.py --device cuda [--variants tiny,shipped,...] [--out DIR] [--jobs 2]

Writes ``aoti_probe.json`` to ``--out`` (default $OUT, else runs/aoti_probe): per variant and phase the
exit status (a signal by name), seconds, the end of stderr (faulthandler's stack), and for a run that
loads, the parity with eager. It runs from source like the device check (bench/source_tree.py).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import source_tree

# name -> (model, precision, channels_last, inductor configs)
FREEZING = {"freezing": True, "cpp.weight_prepack": True}
VARIANTS = {
    "tiny": ("tiny", "fp32", False, {}),
    "shipped": ("generator", "bf16", True, FREEZING),
    "no_freezing": ("generator", "bf16", True, {}),
    "fp32": ("generator", "fp32", True, FREEZING),
    "fp32_no_freezing": ("generator", "fp32", True, {}),
    "contiguous": ("generator", "bf16", False, FREEZING),
    "weights_pickled": ("generator", "bf16", True, {**FREEZING, "aot_inductor.package_constants_in_so": False,
                                                    "aot_inductor.package_constants_on_disk_format": "pickle_weights"}),
    "weights_blob": ("generator", "bf16", True, {**FREEZING, "aot_inductor.package_constants_in_so": False,
                                                 "aot_inductor.package_constants_on_disk_format": "binary_blob"}),
    "caching_alloc": ("generator", "bf16", True, {**FREEZING, "aot_inductor.weight_use_caching_allocator": True}),
}


def constants_of(program) -> list[dict]:
    """Every tensor the exported program carries into the package (parameters, buffers, constants)."""
    import torch

    tensors = {**program.state_dict, **program.constants}
    return [{"name": k, "device": str(t.device), "dtype": str(t.dtype).removeprefix("torch."),
             "shape": list(t.shape), "stride": list(t.stride()), "contiguous": t.is_contiguous(),
             "suspect": (t.dim() == 0) or not t.is_contiguous()}
            for k, t in tensors.items() if isinstance(t, torch.Tensor)]


def package_files(package: Path) -> list[dict]:
    """The .pt2 archive's members and their sizes (a zip file)."""
    import zipfile

    with zipfile.ZipFile(package) as z:
        return [{"name": i.filename, "bytes": i.file_size} for i in z.infolist()]


def _module(kind: str, device: str, precision: str, channels_last: bool, weights: str | None):
    import torch
    from torch import nn

    from facecomp.export.program import ExportableGenerator

    if kind == "tiny":
        torch.manual_seed(0)
        net = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 3, 1))
        net.cfg = type("Cfg", (), {"image_size": 32})()  # what example_input reads
        net.in_channels = 4
        base = net
    else:
        from facecomp import models

        base = models.load("generator", weights, "cpu").float()
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[precision]
    return base, ExportableGenerator(base, dtype, channels_last).to(device)


def compile_variant(name: str, device: str, package: Path, weights: str | None) -> dict:
    """Child phase 1: export and compile the variant to ``package``."""
    import torch

    from facecomp.export.program import example_input

    kind, precision, channels_last, configs = VARIANTS[name]
    base, module = _module(kind, device, precision, channels_last, weights)
    x = example_input(base, 2, device)
    batch = torch.export.Dim("batch", min=1, max=8)
    with torch.no_grad():
        program = torch.export.export(module, (x,), dynamic_shapes={"filled": {0: batch}})
        constants = constants_of(program)
        torch._inductor.aoti_compile_and_package(program, package_path=str(package), inductor_configs=configs)
    devices = sorted({c["device"] for c in constants})
    return {"package_bytes": package.stat().st_size, "constant_devices": devices,
            "suspect_constants": [c for c in constants if c["suspect"] or c["device"] != devices[-1]][:20],
            "constants": constants, "package_files": package_files(package)}


def load_variant(name: str, device: str, package: Path, weights: str | None) -> dict:
    """Child phase 2, in a fresh process: load the package and compare one batch with eager."""
    import torch

    from facecomp.export.program import example_input

    kind, precision, channels_last, _ = VARIANTS[name]
    base, module = _module(kind, device, precision, channels_last, weights)
    t = time.perf_counter()
    loaded = torch._inductor.aoti_load_package(str(package))
    load_s = time.perf_counter() - t
    x = example_input(base, 3, device)
    with torch.no_grad():
        diff = (loaded(x).float() - module(x).float()).abs().max().item()
    return {"load_s": load_s, "max_abs_vs_eager": diff}


def _child(phase: str, name: str, device: str, package: Path, weights: str | None, timeout: float) -> dict:
    cmd = [sys.executable, "-X", "faulthandler", str(Path(__file__).resolve()), "--phase", phase, "--variants", name,
           "--device", device, "--package", str(package)] + (["--model", weights] if weights else [])
    t = time.perf_counter()
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"status": "timeout", "seconds": round(time.perf_counter() - t, 1)}
    rec = {"seconds": round(time.perf_counter() - t, 1), "returncode": r.returncode}
    if r.returncode < 0:
        rec["status"] = f"killed by {signal.Signals(-r.returncode).name}"
    elif r.returncode:
        rec["status"] = "error"
    else:
        rec["status"] = "ok"
        lines = [ln for ln in r.stdout.splitlines() if ln.startswith("{")]
        rec.update(json.loads(lines[-1]) if lines else {})
    if r.returncode:
        rec["stderr_tail"] = r.stderr[-2500:]
    return rec


def probe(name: str, device: str, work: Path, weights: str | None, timeout: float) -> dict:
    package = work / f"{name}.pt2"
    built = _child("compile", name, device, package, weights, timeout)
    result = {"variant": name, "model": VARIANTS[name][0], "precision": VARIANTS[name][1],
              "channels_last": VARIANTS[name][2], "inductor_configs": VARIANTS[name][3], "compile": built}
    if built["status"] == "ok":
        result["load_and_run"] = _child("load", name, device, package, weights, timeout)
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    ap.add_argument("--variants", default="tiny,shipped,weights_pickled,weights_blob,no_freezing,fp32_no_freezing,"
                    "contiguous")
    ap.add_argument("--model", help="generator weights (default: the shipped ones)")
    ap.add_argument("--jobs", type=int, default=2, help="variants compiled at once")
    ap.add_argument("--timeout-s", type=float, default=300.0, help="per phase of one variant")
    ap.add_argument("--out", default=os.environ.get("OUT") or str(source_tree.REPO / "runs" / "aoti_probe"))
    ap.add_argument("--phase", choices=("compile", "load"), help=argparse.SUPPRESS)
    ap.add_argument("--package", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    source_tree.install()
    names = args.variants.split(",")
    unknown = set(names) - set(VARIANTS)
    if unknown:
        raise SystemExit(f"aoti_probe: unknown variant(s) {sorted(unknown)} (valid: {', '.join(VARIANTS)})")
    if args.phase:  # a child: one phase of one variant; its result is the last JSON line it prints
        fn = compile_variant if args.phase == "compile" else load_variant
        print(json.dumps(fn(names[0], args.device, Path(args.package), args.model)), flush=True)
        return 0

    import torch

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="aoti_probe_") as tmp:
        with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            results = list(pool.map(lambda n: probe(n, args.device, Path(tmp), args.model, args.timeout_s), names))
    report = {"device": args.device, "torch": torch.__version__, "torch_cuda": torch.version.cuda,
              "gpu": torch.cuda.get_device_name(0) if args.device == "cuda" else None,
              "total_s": round(time.perf_counter() - started, 1), "variants": results}
    (out / "aoti_probe.json").write_text(json.dumps(report, indent=1))
    for r in results:
        run = r.get("load_and_run", {})
        print(f"[aoti_probe] {r['variant']}: compile {r['compile']['status']} ({r['compile']['seconds']} s), "
              f"load+run {run.get('status', '-')} ({run.get('seconds', '-')} s)"
              + (f", max abs vs eager {run['max_abs_vs_eager']:.2e}" if "max_abs_vs_eager" in run else ""),
              flush=True)
    return 0 if all(r.get("load_and_run", {}).get("status") == "ok" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
