"""Noise fill and composite around the generator (importable as ``facecomp.kernels``).

``impl`` picks the implementation; today the reference is the only one.
"""

from __future__ import annotations

import torch

from . import reference

IMPLS = ("auto", "ref")


def _check(impl: str) -> None:
    if impl not in IMPLS:
        raise ValueError(f"unknown impl '{impl}' (valid: {', '.join(IMPLS)})")


def fill(x: torch.Tensor, m: torch.Tensor, seed: int, offset: int = 0, mask_channel: bool = False,
         impl: str = "auto") -> torch.Tensor:
    """The generator's input: the hole filled with noise in [-1, 1], known pixels unchanged,
    the mask appended as a channel if ``mask_channel``. x: [N,3,H,W]; m: [N,1,H,W]."""
    _check(impl)
    return reference.fill(x, m, seed, offset, mask_channel)


def composite(x: torch.Tensor, g: torch.Tensor, m: torch.Tensor, impl: str = "auto") -> torch.Tensor:
    """m * g + (1 - m) * x: generated pixels in the hole, the original elsewhere."""
    _check(impl)
    return reference.composite(x, g, m)
