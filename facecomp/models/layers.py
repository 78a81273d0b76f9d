"""Building blocks shared by the generator, discriminators and parsing network."""

from __future__ import annotations

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
