"""The paper's generator (its Sec. 3.1): an encoder-decoder over the noise-filled face.

Encoder: VGG-19 conv1_1..pool3 (2x64, pool, 2x128, pool, 4x256, pool), two more 3x3 convs (512)
and a pool, then a fully connected bottleneck. Decoder: the mirror image, with nearest-neighbour
upsampling in place of the encoder's pools, ending in a 3-channel tanh image.

At 128x128 the encoder ends at 8x8; the two fully connected layers (8*8*512*w <-> bottleneck)
hold most of the parameters (16.8M of 20M at width 0.5).
"""

from __future__ import annotations

import torch
from torch import nn

from facecomp.config import GeneratorConfig
from facecomp.models.layers import conv_stack, scaled

# (VGG widths per level, pool after); the last level is the paper's "two more convs + pool".
ENCODER_LEVELS = [[64, 64], [128, 128], [256, 256, 256, 256], [512, 512]]


class Generator(nn.Module):
    def __init__(self, cfg: GeneratorConfig):
        super().__init__()
        self.cfg = cfg
        w, norm = cfg.width, cfg.norm
        self.in_channels = 4 if cfg.mask_channel else 3
        levels = [[scaled(c, w) for c in level] for level in ENCODER_LEVELS]

        enc, c = [], self.in_channels
        for level in levels:
            stack, c = conv_stack(c, level, norm)
            enc.append(stack)
        self.encoder = nn.ModuleList(enc)
        self.pool = nn.MaxPool2d(2)

        self.code_hw = cfg.image_size // 2 ** len(levels)
        self.code_c = c
        flat = c * self.code_hw**2
        self.fc_in = nn.Linear(flat, cfg.bottleneck)
        self.fc_out = nn.Linear(cfg.bottleneck, flat)
        self.act = nn.ReLU(inplace=True)

        # Mirror: each level reverses its widths and ends at the width of the level below it.
        dec = []
        below = [levels[0][0]] + [level[-1] for level in levels[:-1]]
        for i in reversed(range(len(levels))):
            widths = list(reversed(levels[i]))[1:] + [below[i]]
            stack, c = conv_stack(c, widths, norm)
            dec.append(stack)
        self.decoder = nn.ModuleList(dec)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.to_rgb = nn.Conv2d(c, 3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [N, 3 or 4, S, S] noise-filled face (+ mask) -> [N, 3, S, S] in [-1, 1]."""
        n, c, h, w = x.shape
        s = self.cfg.image_size
        assert (c, h, w) == (self.in_channels, s, s), f"expected [N,{self.in_channels},{s},{s}], got {list(x.shape)}"
        for stack in self.encoder:
            x = self.pool(stack(x))  # [N, C_l, S/2^l, S/2^l]
        code = self.act(self.fc_in(x.flatten(1)))  # [N, bottleneck]
        x = self.act(self.fc_out(code)).view(n, self.code_c, self.code_hw, self.code_hw)
        for stack in self.decoder:
            x = stack(self.up(x))
        return torch.tanh(self.to_rgb(x))

