"""Building blocks shared by the generator, discriminators and parsing network."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def scaled(channels: int, width: float) -> int:
    """Channel count under a width multiplier (at least 8, so tiny smoke models still work)."""
    return max(8, int(round(channels * width)))


# generator.norm -> the normalisation after each conv (None: none, and the conv keeps its bias)
NORMS: dict[str, type[nn.Module] | None] = {"batch": nn.BatchNorm2d, "none": None}


def conv_block(c_in: int, c_out: int, norm: str = "batch") -> nn.Sequential:
    """3x3 conv (same padding) -> optional normalisation -> ReLU."""
    if norm not in NORMS:
        raise ValueError(f"unknown norm '{norm}' (valid: {', '.join(NORMS)})")
    layer = NORMS[norm]
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, 3, padding=1, bias=layer is None)]
    if layer is not None:
        layers.append(layer(c_out))
    layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def conv_stack(c_in: int, widths: list[int], norm: str) -> tuple[nn.Sequential, int]:
    blocks = []
    for c_out in widths:
        blocks.append(conv_block(c_in, c_out, norm))
        c_in = c_out
    return nn.Sequential(*blocks), c_in


class Upsample2x(nn.Module):
    """Nearest-neighbour 2x upsampling in the input's own dtype.

    CUDA's autocast runs upsample_nearest2d in fp32, so a bf16 decoder would cast up before every
    upsampling and back down after it (the first GPU profile's elementwise copies). Upsampling only
    repeats values: bf16 in, bf16 out loses nothing. Autocast is switched off around it only where it
    is on, so a trace without autocast (export) sees a plain interpolate.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_autocast_enabled(x.device.type):
            with torch.autocast(x.device.type, enabled=False):
                return F.interpolate(x, scale_factor=2, mode="nearest")
        return F.interpolate(x, scale_factor=2, mode="nearest")


def fold_batchnorm(module: nn.Module) -> nn.Module:
    """Each convolution followed by a BatchNorm in a Sequential, folded into one convolution (eval
    statistics), the BatchNorm replaced by Identity. For frozen networks: the loss's parsing net runs
    one kernel where it ran two, and its weights stay what they are. In place; returns ``module``."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    for seq in [m for m in module.modules() if isinstance(m, nn.Sequential)]:
        for i in range(len(seq) - 1):
            conv, bn = seq[i], seq[i + 1]
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                seq[i] = fuse_conv_bn_eval(conv.eval(), bn.eval())
                seq[i + 1] = nn.Identity()
    return module
