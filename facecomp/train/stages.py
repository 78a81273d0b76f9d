"""The three-stage curriculum (the paper's Sec. 3.5), as data.

Stage 1 learns blurry contents from Lr; stage 2 sharpens the hole with the local D; stage 3 adds
the global D and the parsing loss. Each stage starts from the previous stage's weights.
"""

from __future__ import annotations

from facecomp.config import LossConfig

TERMS = ("recon", "adv_local", "adv_global", "parsing", "perceptual", "feature_match", "identity")
# perceptual and identity need frozen networks (the parsing and the identity network; stage 3), feature
# matching a discriminator (stages 2, 3); all three weigh 0 unless loss.* sets them (they are beyond the paper)
STAGES: dict[int, frozenset[str]] = {
    1: frozenset({"recon"}),
    2: frozenset({"recon", "adv_local", "feature_match"}),
    3: frozenset({"recon", "adv_local", "adv_global", "parsing", "perceptual", "feature_match", "identity"}),
}


def check_stage(stage: int) -> int:
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage} (valid: {', '.join(map(str, STAGES))})")
    return stage


def loss_weights(loss: LossConfig, stage: int) -> dict[str, float]:
    """The weight of every term in a stage; terms the stage does not use weigh 0."""
    on = STAGES[check_stage(stage)]
    return {term: (getattr(loss, term) if term in on else 0.0) for term in TERMS}
