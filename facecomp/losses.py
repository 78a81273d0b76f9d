"""The paper's loss terms (its Sec. 3.4), at the scales of the Caffe layers it was trained with.

Lr  reconstruction: EuclideanLoss, 1/2 * sum of squared errors per image, averaged over the batch
La  adversarial:    binary cross-entropy of a discriminator's logits, averaged over the batch
Lp  parsing:        pixel-wise softmax cross-entropy, summed over pixels, averaged over the batch
Beyond the paper:
Lf  perceptual:     L1 between the frozen parsing network's features, mean per level, summed over levels
Lfm feature match:  L1 between a discriminator's features of real and completed faces, the same way
With these scales the paper's weights (300, 300, 0.005) put the terms within an order of magnitude
of each other; with per-pixel means they would not.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def reconstruction(output: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, known_weight: float) -> torch.Tensor:
    """Lr on the raw generator output: weight 1 in the hole, ``known_weight`` elsewhere.

    output, target: [N, 3, H, W]; mask: [N, 1, H, W] (1 = missing). Known pixels are pasted back
    after the generator, so they are weighted low: enough to keep colours continuous at the hole's
    border, not so much that the bottleneck spends its capacity copying the known face.
    """
    weight = mask + known_weight * (1 - mask)
    return 0.5 * (weight * (output.float() - target.float()).square()).sum() / output.shape[0]


def adversarial_d(real_logits: torch.Tensor, fake_logits: torch.Tensor, real_label: float) -> torch.Tensor:
    """D's side of eq. (1): real -> real_label (one-sided smoothing when < 1), fake -> 0. [N] -> []"""
    real = F.binary_cross_entropy_with_logits(real_logits.float(), torch.full_like(real_logits.float(), real_label))
    fake = F.binary_cross_entropy_with_logits(fake_logits.float(), torch.zeros_like(fake_logits.float()))
    return real + fake


def adversarial_g(fake_logits: torch.Tensor) -> torch.Tensor:
    """G's side of eq. (1), in the non-saturating form: -log D(G(z)). [N] -> []"""
    return F.binary_cross_entropy_with_logits(fake_logits.float(), torch.ones_like(fake_logits.float()))


def r1_penalty(real_logits: torch.Tensor, real_inputs: torch.Tensor) -> torch.Tensor:
    """R1 (Mescheder, Geiger, Nowozin 2018): E ||d D(x) / d x||^2 over real images. [] (differentiable)

    ``real_inputs`` must require grad and ``real_logits`` be computed from them.
    """
    (grad,) = torch.autograd.grad(real_logits.float().sum(), real_inputs, create_graph=True)
    return grad.float().square().flatten(1).sum(1).mean()


def parsing(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Lp: softmax cross-entropy of the completed face's parsing against the original's labels.

    logits: [N, K, H, W]; labels: [N, H, W] int64 (argmax of the parsing of the original face).
    """
    return F.cross_entropy(logits.float(), labels, reduction="sum") / logits.shape[0]


def feature_l1(fake: list[torch.Tensor], real: list[torch.Tensor]) -> torch.Tensor:
    """Lf / Lfm: sum over levels of the mean absolute difference of two feature lists. []

    ``real`` is a fixed target (computed without gradient); gradients flow into ``fake``.
    """
    return sum(((f.float() - r.detach().float()).abs().mean() for f, r in zip(fake, real, strict=True)),
               start=torch.zeros((), device=fake[0].device))
