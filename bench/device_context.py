"""What every device-check step gets: the Context (device, budget, real faces, the measured peaks) and
the models of a stage-3 step as the trainer builds them. Steps: bench/device_steps.py, bench/device_train.py."""

from __future__ import annotations

import contextlib
import os
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

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
