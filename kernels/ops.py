"""torch.library registration of the fused kernels: custom ops with fake (meta) kernels and a fused
autograd formula, so they run under autograd, torch.compile(fullgraph=True) and torch.export.

    facecomp::fill(x, m, k0, k1, mask_channel) -> x_in
    facecomp::composite(x, g, m) -> y
    facecomp::blend_backward(gy, m, both) -> [(1-m)*gy] or [(1-m)*gy, m*gy]

Masks are inputs, not parameters: no gradient flows to them.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch._prims_common import suggest_memory_format

from . import build


def check_operands(op: str, x: Tensor, m: Tensor, g: Tensor | None = None) -> None:
    """The C++ preconditions (fused.cpp, check_pair), stated again for the fake kernels: torch.compile,
    torch.export and meta tensors run these instead of the C++ op, and must refuse what it refuses."""
    if x.dim() != 4 or x.shape[1] != 3:
        raise RuntimeError(f"{op}: x must be [N,3,H,W], got {list(x.shape)}")
    if m.shape != (x.shape[0], 1, *x.shape[2:]):
        raise RuntimeError(f"{op}: m must be [N,1,H,W] = {[x.shape[0], 1, *x.shape[2:]]}, got {list(m.shape)}")
    if m.device != x.device:
        raise RuntimeError(f"{op}: m is on {m.device} but x is on {x.device}")
    if m.dtype != x.dtype:
        raise RuntimeError(f"{op}: m is {m.dtype} but x is {x.dtype}")
    if g is not None and (g.shape != x.shape or g.device != x.device or g.dtype != x.dtype):
        raise RuntimeError(f"{op}: g is {g.dtype} {list(g.shape)} on {g.device}, "
                           f"x is {x.dtype} {list(x.shape)} on {x.device}")


def _empty_like_format(x: Tensor, channels: int) -> Tensor:
    return torch.empty((x.shape[0], channels, x.shape[2], x.shape[3]), dtype=x.dtype, device=x.device,
                       memory_format=suggest_memory_format(x))


@torch.library.custom_op("facecomp::fill", mutates_args=())
def fill(x: Tensor, m: Tensor, k0: int, k1: int, mask_channel: bool) -> Tensor:
    return build.load().fill(x, m, k0, k1, mask_channel)


@fill.register_fake
def _(x: Tensor, m: Tensor, k0: int, k1: int, mask_channel: bool) -> Tensor:
    check_operands("fill", x, m)
    return _empty_like_format(x, 4 if mask_channel else 3)


@torch.library.custom_op("facecomp::composite", mutates_args=())
def composite(x: Tensor, g: Tensor, m: Tensor) -> Tensor:
    return build.load().composite(x, g, m)


@composite.register_fake
def _(x: Tensor, g: Tensor, m: Tensor) -> Tensor:
    check_operands("composite", x, m, g)
    return _empty_like_format(x, 3)


@torch.library.custom_op("facecomp::blend_backward", mutates_args=())
def blend_backward(gy: Tensor, m: Tensor, both: bool) -> list[Tensor]:
    return build.load().blend_backward(gy, m, both)


@blend_backward.register_fake
def _(gy: Tensor, m: Tensor, both: bool) -> list[Tensor]:
    check_operands("blend_backward", gy, m)
    return [_empty_like_format(gy, 3) for _ in range(2 if both else 1)]


def _fill_setup(ctx, inputs, output) -> None:
    _, m, _, _, _ = inputs
    ctx.save_for_backward(m)


def _fill_backward(ctx, grad: Tensor):
    (m,) = ctx.saved_tensors
    (gx,) = blend_backward(grad[:, :3], m, False)  # noise and the mask channel carry no gradient to x
    return gx, None, None, None, None


def _composite_setup(ctx, inputs, output) -> None:
    _, _, m = inputs
    ctx.save_for_backward(m)


def _composite_backward(ctx, grad: Tensor):
    (m,) = ctx.saved_tensors
    gx, gg = blend_backward(grad, m, True)  # x outside the hole, g inside it
    return gx, gg, None


fill.register_autograd(_fill_backward, setup_context=_fill_setup)
composite.register_autograd(_composite_backward, setup_context=_composite_setup)
