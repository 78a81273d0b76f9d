"""Pure-PyTorch noise fill and composite: the ground truth for any fused implementation.

fill:       x_in = m * z + (1 - m) * x, z ~ U[-1, 1] drawn from a generator keyed by (seed, offset)
composite:  y = m * g + (1 - m) * x (known pixels put back)
"""

from __future__ import annotations

import torch


def noise_generator(seed: int, offset: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A generator whose stream depends only on (seed, offset)."""
    g = torch.Generator(device=device)
    # Mix the pair into one 63-bit seed (splitmix-style constants) so nearby pairs don't collide.
    key = (seed * 0x9E3779B97F4A7C15 + offset * 0xBF58476D1CE4E5B9 + 0x94D049BB133111EB) % (2**63 - 1)
    g.manual_seed(key)
    return g


def fill(x: torch.Tensor, m: torch.Tensor, seed: int, offset: int = 0, mask_channel: bool = False) -> torch.Tensor:
    """x: [N, 3, H, W] in [-1, 1]; m: [N, 1, H, W] -> [N, 3 (+1), H, W]."""
    assert x.ndim == 4 and x.shape[1] == 3, f"x must be [N,3,H,W], got {list(x.shape)}"
    assert m.shape == (x.shape[0], 1, *x.shape[2:]), f"m must be [N,1,H,W] matching x, got {list(m.shape)}"
    z = torch.rand(x.shape, generator=noise_generator(seed, offset, x.device), device=x.device, dtype=torch.float32)
    z = z.to(x.dtype).mul_(2).sub_(1)
    out = m * z + (1 - m) * x
    return torch.cat([out, m.to(x.dtype)], dim=1) if mask_channel else out


def composite(x: torch.Tensor, g: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """x, g: [N, 3, H, W]; m: [N, 1, H, W] -> m * g + (1 - m) * x."""
    assert x.shape == g.shape and m.shape == (x.shape[0], 1, *x.shape[2:]), \
        f"shapes x {list(x.shape)}, g {list(g.shape)}, m {list(m.shape)} do not fit"
    return m * g + (1 - m) * x
