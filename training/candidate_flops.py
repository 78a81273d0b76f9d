"""Steps that give a candidate config the same training FLOPs as PAPER_STEPS steps of the paper's
stage 3 (training/candidates.sh): both counted by torch.utils.flop_counter on one real step.

    python training/candidate_flops.py --paper-steps 300 generator.skips=4   -> 296
"""

from __future__ import annotations

import argparse

import torch
from torch.utils.flop_counter import FlopCounterMode

from facecomp.config import load_config
from facecomp.train.loop import build_models, build_optimizers, build_updaters
from facecomp.train.step import train_step


def step_flops(overrides: list[str], batch: int = 2) -> float:
    """FLOPs per image of one stage-3 step of the cpu preset with ``overrides`` (both Ds updated).

    Without R1: the flop counter cannot follow its double backward, and it costs every candidate the
    same (the discriminators do not change)."""
    cfg = load_config("cpu", ["adversarial.warmup_steps=1", "runtime.amp=none", "adversarial.d_skip_below=0",
                              *overrides, "adversarial.r1=0"])
    models = build_models(cfg, 3, torch.device("cpu"))
    updaters = build_updaters(models, build_optimizers(models, cfg), cfg)
    size, hole = cfg.generator.image_size, cfg.mask.size
    mask = torch.zeros(batch, 1, size, size)
    mask[:, :, :hole, :hole] = 1
    data = {"image": torch.rand(batch, 3, size, size) * 2 - 1, "mask": mask}
    with FlopCounterMode(display=False) as counter:
        train_step(models, updaters, data, cfg, 3, 0)
    return counter.get_total_flops() / batch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--paper-steps", type=int, required=True)
    p.add_argument("overrides", nargs="*")
    a = p.parse_args()
    print(round(a.paper_steps * step_flops([]) / step_flops(a.overrides)))


if __name__ == "__main__":
    main()
