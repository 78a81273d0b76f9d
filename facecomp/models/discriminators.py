"""DCGAN-style discriminators (the paper's [19]): local on the hole, global on the whole image.

Each halves the resolution with 4x4 stride-2 convs (LeakyReLU 0.2, BatchNorm after the first)
down to 4x4, then a 4x4 conv gives one logit per image.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from facecomp.config import DiscriminatorConfig
from facecomp.models.layers import scaled


class DCGANDiscriminator(nn.Module):
    def __init__(self, in_size: int, width: float):
        super().__init__()
        assert in_size >= 8 and in_size & (in_size - 1) == 0, f"input size must be a power of 2, got {in_size}"
        self.in_size = in_size
        layers: list[nn.Module] = []
        c_in, c, size = 3, 64, in_size
        while size > 4:
            c_out = scaled(min(c, 512), width)
            layers.append(nn.Conv2d(c_in, c_out, 4, stride=2, padding=1, bias=c_in == 3))
            if c_in != 3:
                layers.append(nn.BatchNorm2d(c_out))
            layers.append(nn.LeakyReLU(0.2, inplace=True))
            c_in, c, size = c_out, c * 2, size // 2
        self.features = nn.Sequential(*layers)
        self.logit = nn.Conv2d(c_in, 1, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [N, 3, s, s] -> [N] logits (real > 0)."""
        return self.judge(x)[0]

    def judge(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """[N] logits and the activations after each LeakyReLU (feature matching's, ``loss.feature_match``)."""
        s = self.in_size
        assert x.shape[1:] == (3, s, s), f"expected [N,3,{s},{s}], got {list(x.shape)}"
        acts = []
        for layer in self.features:
            x = layer(x)
            if isinstance(layer, nn.LeakyReLU):
                acts.append(x)
        return self.logit(x).flatten(), acts


def build_discriminators(cfg: DiscriminatorConfig, image_size: int) -> tuple[DCGANDiscriminator, DCGANDiscriminator]:
    """(local, global)."""
    return DCGANDiscriminator(cfg.local_size, cfg.width), DCGANDiscriminator(image_size, cfg.width)


def hole_boxes(mask: torch.Tensor) -> torch.Tensor:
    """Bounding box of each mask's hole in pixels, [N, 4] (x0, y0, x1, y1), half-open; no sync.

    A mask with no hole gets the whole image.
    """
    n, _, h, w = mask.shape
    rows = mask.amax(dim=(1, 3)) > 0.5  # [N, H]
    cols = mask.amax(dim=(1, 2)) > 0.5  # [N, W]
    ys = torch.arange(h, device=mask.device).expand(n, h)
    xs = torch.arange(w, device=mask.device).expand(n, w)
    y0 = torch.where(rows, ys, h).amin(1)
    y1 = torch.where(rows, ys, -1).amax(1) + 1
    x0 = torch.where(cols, xs, w).amin(1)
    x1 = torch.where(cols, xs, -1).amax(1) + 1
    empty = ~rows.any(1)
    y0, x0 = torch.where(empty, 0, y0), torch.where(empty, 0, x0)
    y1, x1 = torch.where(empty, h, y1), torch.where(empty, w, x1)
    return torch.stack([x0, y0, x1, y1], dim=1)


def hole_windows(mask: torch.Tensor, size: int) -> torch.Tensor:
    """A square window around each hole's bounding box, [N, 4] (x0, y0, x1, y1), half-open; no sync.

    Side: the box's longer side, at least ``size``, at most the image's shorter side; centred on the box
    and shifted to lie inside the image. Resampled to ``size``, a window is only ever shrunk and never
    stretched, so the local D sees an eye at an eye's scale and a mouth at a mouth's shape.
    """
    _, _, h, w = mask.shape
    x0, y0, x1, y1 = hole_boxes(mask).unbind(1)
    side = torch.maximum(x1 - x0, y1 - y0).clamp(min=size, max=min(h, w))
    # centre (x0 + x1) / 2, so the window's corner is (x0 + x1 - side) // 2, clamped inside the image
    wx0 = torch.minimum(((x0 + x1 - side) // 2).clamp(min=0), w - side)
    wy0 = torch.minimum(((y0 + y1 - side) // 2).clamp(min=0), h - side)
    return torch.stack([wx0, wy0, wx0 + side, wy0 + side], dim=1)


def crop_boxes(images: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """Resample each image's box ([N, 4] x0, y0, x1, y1 in pixels) to size x size (differentiable).

    With align_corners=False a box of exactly ``size`` pixels is copied without interpolation.
    """
    n, _, h, w = images.shape
    b = boxes.to(images.dtype)
    x0, y0, x1, y1 = (2 * b[:, 0] / w - 1, 2 * b[:, 1] / h - 1, 2 * b[:, 2] / w - 1, 2 * b[:, 3] / h - 1)
    theta = torch.zeros(n, 2, 3, dtype=images.dtype, device=images.device)
    theta[:, 0, 0], theta[:, 0, 2] = (x1 - x0) / 2, (x1 + x0) / 2
    theta[:, 1, 1], theta[:, 1, 2] = (y1 - y0) / 2, (y1 + y0) / 2
    grid = F.affine_grid(theta, [n, images.shape[1], size, size], align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


def crop_holes(images: torch.Tensor, mask: torch.Tensor, size: int, view: str = "box") -> torch.Tensor:
    """What the local D sees of each hole, [N, C, size, size]: ``view`` "box" resamples the hole's
    bounding box (the paper's), "square" its square window (``hole_windows``)."""
    boxes = hole_boxes(mask) if view == "box" else hole_windows(mask, size)
    return crop_boxes(images, boxes, size)
