"""The face-parsing network (the paper's Sec. 3.3 / [28]): an encoder-decoder with 11 classes.

Labels: 0 background, 1 face skin, 2/3 left/right brow, 4/5 left/right eye, 6 nose, 7 upper lip,
8 inner mouth, 9 lower lip, 10 hair (left/right as seen in the image). Three levels of two 3x3
convs with pooling, a bottleneck, and a decoder that upsamples and adds the encoder features of the
same scale (skip connections keep the thin parts: brows, lips). Adding rather than concatenating,
and nearest rather than bilinear upsampling, keeps the decoder's full-resolution levels cheap: on a
CPU the concatenations and bilinear passes cost a fifth of the stage-3 step.

In completion training it is frozen: eval mode, no gradients into it, never in an optimizer.
"""

from __future__ import annotations

import torch
from torch import nn

from facecomp.config import ParsingConfig
from facecomp.models.layers import Upsample2x, conv_stack, scaled

LEVELS = [64, 128, 256]


class ParsingNet(nn.Module):
    def __init__(self, cfg: ParsingConfig):
        super().__init__()
        self.cfg = cfg
        widths = [scaled(c, cfg.width) for c in LEVELS]
        enc, c = [], 3
        for cw in widths:
            stack, c = conv_stack(c, [cw, cw], "batch")
            enc.append(stack)
        self.encoder = nn.ModuleList(enc)
        self.pool = nn.MaxPool2d(2)
        self.middle, c = conv_stack(c, [scaled(512, cfg.width)] * 2, "batch")
        dec = []
        for cw in reversed(widths):
            stack, c = conv_stack(c, [cw, cw], "batch")
            dec.append(stack)
        self.decoder = nn.ModuleList(dec)
        self.up = Upsample2x()
        self.classify = nn.Conv2d(c, cfg.num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [N, 3, S, S] in [-1, 1] -> logits [N, classes, S, S]."""
        return self.parse(x)[0]

    def parse(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Logits and the encoder's features (each level before its pool, then the middle): the
        features are the perceptual loss's (``loss.perceptual``)."""
        assert x.ndim == 4 and x.shape[1] == 3 and x.shape[2] % 8 == 0 and x.shape[3] % 8 == 0, \
            f"expected [N,3,H,W] with H, W multiples of 8, got {list(x.shape)}"
        skips = []
        for stack in self.encoder:
            x = stack(x)
            skips.append(x)
            x = self.pool(x)
        x = self.middle(x)
        features = [*skips, x]
        for stack, skip in zip(self.decoder, reversed(skips), strict=True):
            x = stack(self.up(x)) + skip
        return self.classify(x), features


def freeze(net: nn.Module) -> nn.Module:
    """Eval mode, no gradients: a fixed loss network."""
    return net.eval().requires_grad_(False)
