"""The identity network of the stage-3 identity loss: a small residual face embedder, trained by us.

Why our own: the completions lose probes to noise fill in ``facecomp eval recognition`` because the eye
or mouth they invent is somebody else's, and nothing in the loss asks for the person's. A recognizer's
embedding can (the identity losses of face-inpainting work after ArcFace), but the only one that ships
inside a package here is dlib's, and dlib's is the evaluator: a loss on it would be trained against the
check. So this network learns identities from the training partitions only (4,952 people, CosFace's
margin), and the check stays dlib's.

It sees the 128-px crop the generator completes, area-downsampled to ``input_size``: an identity is in
the face's shape and its parts, not in its pores, and at 64 px the network costs a tenth of the stage-3
step. Four residual levels (stride 2 each) end in a depthwise 4x4 "global" conv (MobileFaceNet's GDC),
not an average: where on the face a feature sits is part of who it is.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from facecomp.config import IdentityConfig
from facecomp.models.layers import scaled

LEVELS = [32, 64, 128, 256]


class ResidualBlock(nn.Module):
    """conv-BN-PReLU-conv-BN plus a (strided 1x1) shortcut, then PReLU."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.PReLU(c_out),
            nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False), nn.BatchNorm2d(c_out))
        self.shortcut = (nn.Identity() if stride == 1 and c_in == c_out else
                         nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out)))
        self.act = nn.PReLU(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(x) + self.shortcut(x))


class IdentityNet(nn.Module):
    def __init__(self, cfg: IdentityConfig):
        super().__init__()
        self.cfg = cfg
        widths = [scaled(c, cfg.width) for c in LEVELS]
        self.stem = nn.Sequential(nn.Conv2d(3, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]),
                                  nn.PReLU(widths[0]))
        blocks, c = [], widths[0]
        for cw in widths:
            blocks.append(ResidualBlock(c, cw, 2))
            c = cw
        self.blocks = nn.Sequential(*blocks)
        side = cfg.input_size // 2 ** len(widths)
        self.pool = nn.Sequential(nn.Conv2d(c, c, side, groups=c, bias=False), nn.BatchNorm2d(c))  # GDC
        self.embed = nn.Linear(c, cfg.embed_dim, bias=False)
        self.out_norm = nn.BatchNorm1d(cfg.embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [N, 3, S, S] in [-1, 1] (any S; resized to input_size by area) -> [N, embed_dim], unit length."""
        assert x.ndim == 4 and x.shape[1] == 3, f"expected [N,3,H,W], got {list(x.shape)}"
        size = self.cfg.input_size
        if x.shape[-2:] != (size, size):
            x = F.interpolate(x, size=(size, size), mode="area")
        h = self.pool(self.blocks(self.stem(x))).flatten(1)
        return F.normalize(self.out_norm(self.embed(h)), dim=1)


def identity_distance(net: nn.Module, completed: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
    """Per image 1 - cos(embedding of the completed face, of the original), summed over the batch / N:
    0 where the network sees the same person. The original's embedding is the target (no gradient)."""
    with torch.no_grad():
        target = net(original)
    return (1.0 - (net(completed) * target).sum(1)).mean()
