"""Pure-PyTorch noise fill and composite: the ground truth for the fused kernels.

fill:       x_in = m * z + (1 - m) * x  (+ m as a 4th channel), z uniform in [-1, 1)
composite:  y = m * g + (1 - m) * x     (known pixels put back)

The noise is counter-based: element i of the logical NCHW order of x (i = ((n*3 + c)*H + h)*W + w)
gets ``z = 2 * (hash(i) >> 8) / 2**24 - 1`` with

    hash(i) = lowbias32(lowbias32(i ^ k0) + k1)     (all arithmetic mod 2**32)

where lowbias32 is Chris Wellons' 32-bit integer hash (two xor-shift-multiply rounds, full
avalanche) and (k0, k1) are derived from (seed, offset) by :func:`keys`. No noise tensor exists in
the fused kernels: each element's noise is a pure function of (seed, offset, i), so every thread
count, memory layout and device gives the same noise bit for bit, and fp32 holds it exactly
(24-bit mantissa). Here it is computed in int64 with 16-bit partial products so nothing overflows.
"""

from __future__ import annotations

import torch

# The 32-bit keys of (seed, offset) are plain integer arithmetic, shared with the numpy client of
# exported generators (facecomp.contract), which must draw the very same noise.
from facecomp.contract import C1, C2, MASK32, keys  # noqa: F401  (keys: re-exported to kernels)


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """(x * c) mod 2**32 for int64 tensors holding uint32 values, without int64 overflow."""
    lo = x * (c & 0xFFFF)
    hi = ((x * (c >> 16)) & 0xFFFF) << 16
    return (lo + hi) & MASK32


def lowbias32(x: torch.Tensor) -> torch.Tensor:
    x = x ^ (x >> 16)
    x = _mul32(x, C1)
    x = x ^ (x >> 15)
    x = _mul32(x, C2)
    return x ^ (x >> 16)


def device_keys(seed: int, offset: torch.Tensor) -> tuple[int, torch.Tensor]:
    """:func:`keys` with the offset a 0-dim int64 tensor (a step counter on the device): k1 is computed
    there, by the same arithmetic, so neither a host read nor a new graph per step is needed (a compiled
    step and CUDA graphs key their noise this way). k0 depends on the seed alone, a constant of the run."""
    k0, _ = keys(seed, 0)
    off = offset.to(torch.int64)
    k1 = lowbias32((off & MASK32) ^ lowbias32(((off >> 32) ^ k0 ^ 0x85EBCA6B) & MASK32))
    return k0, k1


def noise(shape: tuple[int, ...], seed: int, offset: int | torch.Tensor,
          device: torch.device | str = "cpu") -> torch.Tensor:
    """The fill noise for a tensor of ``shape`` (logical NCHW order), float32 in [-1, 1). ``offset``: an
    int, or a 0-dim int64 tensor on ``device`` (:func:`device_keys`)."""
    numel = 1
    for s in shape:
        numel *= s
    if numel >= 2**32:
        raise ValueError(f"tensor of {numel} elements is over the 2**32 the noise counter covers")
    k0, k1 = device_keys(seed, offset) if torch.is_tensor(offset) else keys(seed, offset)
    i = torch.arange(numel, dtype=torch.int64, device=device)
    h = lowbias32((lowbias32(i ^ k0) + k1) & MASK32)
    u = (h >> 8).to(torch.float32) * (1.0 / 2**24)
    return (2 * u - 1).view(shape)


def fill(x: torch.Tensor, m: torch.Tensor, seed: int, offset: int | torch.Tensor = 0,
         mask_channel: bool = False) -> torch.Tensor:
    """x: [N, 3, H, W] in [-1, 1]; m: [N, 1, H, W] -> [N, 3 (+1), H, W] in x's dtype.

    The mask is first rounded to x's dtype (:func:`mask_as`), then everything is computed in fp32
    (fp64 for fp64 inputs) and rounded once to x's dtype, as the fused kernels do.
    """
    acc = _acc(x.dtype)
    z = noise(tuple(x.shape), seed, offset, x.device).to(acc)
    m = mask_as(m, x)
    mf = m.to(acc)
    out = (mf * z + (1 - mf) * x.to(acc)).to(x.dtype)
    return torch.cat([out, m], dim=1) if mask_channel else out


def composite(x: torch.Tensor, g: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """x, g: [N, 3, H, W]; m: [N, 1, H, W] (rounded to x's dtype first) -> m * g + (1 - m) * x, in fp32
    then rounded to x's dtype."""
    acc = _acc(x.dtype)
    mf = mask_as(m, x).to(acc)
    return (mf * g.to(acc) + (1 - mf) * x.to(acc)).to(x.dtype)


def mask_as(m: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The one dtype rule for masks: a mask is stored in x's dtype before any arithmetic, in the
    reference and in the fused kernels alike (they read m and x through one element type). A
    binary mask is exact in every dtype; a soft fp32 mask with a bf16 image is rounded to bf16 first.
    """
    return m.to(x.dtype)


def _acc(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32
