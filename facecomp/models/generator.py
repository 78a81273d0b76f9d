"""The paper's generator (its Sec. 3.1): an encoder-decoder over the noise-filled face.

Encoder: VGG-19 conv1_1..pool3 (2x64, pool, 2x128, pool, 4x256, pool), two more 3x3 convs (512)
and a pool, then a fully connected bottleneck. Decoder: the mirror image, with nearest-neighbour
upsampling in place of the encoder's pools, ending in a 3-channel tanh image.

At 128x128 the encoder ends at 8x8; the two fully connected layers (8*8*512*w <-> bottleneck)
hold most of the parameters (16.8M of 20M at width 0.5).

Beyond the paper (``generator.skips``, ``generator.context``): the encoder's features of the deepest
levels also reach the decoder at their own scale, added after the upsampling through 1x1 projections
that start at zero, so the visible eye and skin reach the hole without passing through the code; a
paper generator's weights are exactly the starting point (``fresh_keys``). The context block (GLCIC's
dilated convolutions) lets the deepest skip see the whole face before it is projected. Mirrored skips
(``generator.mirror_skips``) add each skip's features flipped left-right, through projections of their
own that also start at zero: on an aligned face the visible eye then reaches the hidden one's position.
"""

from __future__ import annotations

import torch
from torch import nn

from facecomp.config import GeneratorConfig
from facecomp.models.layers import Upsample2x, conv_stack, scaled

# (VGG widths per level, pool after); the last level is the paper's "two more convs + pool".
ENCODER_LEVELS = [[64, 64], [128, 128], [256, 256, 256, 256], [512, 512]]
DILATIONS = (2, 4, 8)  # at 16x16 (128 px input) rate 8 spans the whole map


def dilated_context(c: int) -> nn.Sequential:
    """GLCIC's mid-level dilated convolutions (3x3, rates 2/4/8, BatchNorm, ReLU), width-preserving."""
    layers: list[nn.Module] = []
    for d in DILATIONS:
        layers += [nn.Conv2d(c, c, 3, padding=d, dilation=d, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


CONTEXT_BLOCKS = {"dilated": dilated_context}  # generator.context -> builder; "none" builds nothing


def zero_projection(c: int) -> nn.Conv2d:
    """A 1x1 convolution that starts at zero: the skip adds nothing until training finds it useful."""
    proj = nn.Conv2d(c, c, 1)
    nn.init.zeros_(proj.weight)
    nn.init.zeros_(proj.bias)
    return proj


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
        self.up = Upsample2x()
        self.to_rgb = nn.Conv2d(c, 3, 3, padding=1)

        # level index -> projection of that encoder level's (pre-pool) features into the decoder
        self.skips_at = tuple(range(len(levels) - cfg.skips, len(levels)))
        self.skips = nn.ModuleDict({str(i): zero_projection(levels[i][-1]) for i in self.skips_at})
        mirrored = self.skips_at if cfg.mirror_skips else ()
        self.mirror = nn.ModuleDict({str(i): zero_projection(levels[i][-1]) for i in mirrored})
        deepest = levels[-1][-1]
        self.context = CONTEXT_BLOCKS[cfg.context](deepest) if cfg.context != "none" else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [N, 3 or 4, S, S] noise-filled face (+ mask) -> [N, 3, S, S] in [-1, 1]."""
        n, c, h, w = x.shape
        s = self.cfg.image_size
        assert (c, h, w) == (self.in_channels, s, s), f"expected [N,{self.in_channels},{s},{s}], got {list(x.shape)}"
        features = {}
        for i, stack in enumerate(self.encoder):
            x = stack(x)  # [N, C_l, S/2^l, S/2^l]
            if i in self.skips_at:
                features[i] = x
            x = self.pool(x)
        code = self.act(self.fc_in(x.flatten(1)))  # [N, bottleneck]
        x = self.act(self.fc_out(code)).view(n, self.code_c, self.code_hw, self.code_hw)
        deepest = len(self.encoder) - 1
        for i, stack in zip(reversed(range(len(self.encoder))), self.decoder, strict=True):
            x = self.up(x)
            if i in self.skips_at:
                f = features[i]
                if i == deepest and self.context is not None:
                    f = self.context(f)
                x = x + self.skips[str(i)](f)
                if str(i) in self.mirror:
                    x = x + self.mirror[str(i)](torch.flip(f, dims=(3,)))
            x = stack(x)
        return torch.tanh(self.to_rgb(x))

    def fresh_keys(self) -> frozenset[str]:
        """State-dict keys of the parts beyond the paper's generator: absent from a paper generator's
        weights, which load into this one as its exact starting point (these keep their init)."""
        own = self.state_dict()
        return frozenset(k for k in own if k.startswith(("skips.", "context.", "mirror.")))

