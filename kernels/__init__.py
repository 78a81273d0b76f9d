"""Noise fill and composite around the generator (importable as ``facecomp.kernels``).

    fill(x, m, seed, offset=0, mask_channel=False, impl="auto")  -> the generator's input
    composite(x, g, m, impl="auto")                             -> m * g + (1 - m) * x

x, g: [N, 3, H, W]; m: [N, 1, H, W] with 1 = missing (broadcast over channels); fp32, bf16 or fp16;
NCHW-contiguous, channels_last or any other strides; the output takes x's memory format. A mask of
another float dtype is rounded to x's dtype first, by both implementations (``reference.mask_as``).

``impl``: "ref" is the pure-PyTorch reference (kernels/reference.py), "native" the fused C++/CUDA
op (kernels/csrc, built on first use; raises if the build fails), "auto" the native op, or the
reference with one warning if it cannot be built. Both give the same noise for the same
(seed, offset), bit for bit.
"""

from __future__ import annotations

import functools
import logging
import warnings

import torch

from . import reference

IMPLS = ("auto", "ref", "native")
DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)  # float64: for gradcheck
log = logging.getLogger(__name__)


@functools.cache
def _native_ops():
    """The registered custom ops, after building the extension (raises if it cannot be built)."""
    from . import build, ops

    build.load()
    return ops


@functools.cache
def native_available() -> bool:
    try:
        _native_ops()
        return True
    except Exception as e:  # a failed compile raises many kinds of errors; all mean "no native op"
        warnings.warn(f"facecomp.kernels: native build failed, using the PyTorch reference ({e})", stacklevel=3)
        return False


# Under torch.compile the choice is made once, at trace time (building the extension is not graph code).
@torch.compiler.assume_constant_result
def _use_native(impl: str) -> bool:
    if impl not in IMPLS:
        raise ValueError(f"unknown impl '{impl}' (valid: {', '.join(IMPLS)})")
    if impl == "ref":
        return False
    if impl == "native":
        _native_ops()
        return True
    return native_available()


def _check(x: torch.Tensor, m: torch.Tensor, op: str, g: torch.Tensor | None = None) -> None:
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"{op}: x must be [N,3,H,W], got {list(x.shape)}")
    if m.shape != (x.shape[0], 1, *x.shape[2:]):
        raise ValueError(f"{op}: m must be [N,1,H,W] = {[x.shape[0], 1, *x.shape[2:]]}, got {list(m.shape)}")
    if x.dtype not in DTYPES:
        raise ValueError(f"{op}: x has dtype {x.dtype}; supported: float32, bfloat16, float16, float64")
    if not m.is_floating_point():
        raise ValueError(f"{op}: m must be a float tensor, got {m.dtype}")
    if m.device != x.device:
        raise ValueError(f"{op}: m is on {m.device} but x is on {x.device}")
    if g is not None:
        if g.shape != x.shape:
            raise ValueError(f"{op}: g must have x's shape {list(x.shape)}, got {list(g.shape)}")
        if g.device != x.device:
            raise ValueError(f"{op}: g is on {g.device} but x is on {x.device}")
        if g.dtype != x.dtype:
            raise ValueError(f"{op}: g has dtype {g.dtype} but x has {x.dtype}")


def fill(x: torch.Tensor, m: torch.Tensor, seed: int, offset: int | torch.Tensor = 0, mask_channel: bool = False,
         impl: str = "auto") -> torch.Tensor:
    """The generator's input: the hole filled with noise in [-1, 1) keyed by (seed, offset), known
    pixels unchanged, the mask appended as a 4th channel if ``mask_channel``. [N, 3 or 4, H, W]

    ``offset`` may be a 0-dim int64 tensor on x's device (the step counter of a compiled step or a CUDA
    graph): then the keys are derived on the device and the reference arithmetic draws the noise, which
    torch.compile fuses into one kernel; the fused op takes its keys as host integers. Same bits either way.
    """
    _check(x, m, "fill")
    if torch.is_tensor(offset) or not _use_native(impl):
        return reference.fill(x, m, seed, offset, mask_channel)
    k0, k1 = reference.keys(seed, offset)
    return torch.ops.facecomp.fill(x, reference.mask_as(m, x), k0, k1, mask_channel)  # registered by _use_native


def composite(x: torch.Tensor, g: torch.Tensor, m: torch.Tensor, impl: str = "auto") -> torch.Tensor:
    """m * g + (1 - m) * x: generated pixels in the hole, the original elsewhere. [N, 3, H, W]"""
    _check(x, m, "composite", g)
    if not _use_native(impl):
        return reference.composite(x, g, m)
    return torch.ops.facecomp.composite(x, g, reference.mask_as(m, x))
