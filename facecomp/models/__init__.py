"""Models of the paper: generator, local/global discriminators, face-parsing network.

``load(kind, source)`` builds any of them from a weights file (whatever ``facecomp.weights.resolve``
makes of ``source``): the shapes come from the config stored in the file, so any trained width loads.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from facecomp import weights
from facecomp.config import GeneratorConfig, IdentityConfig, ParsingConfig
from facecomp.models.discriminators import (
    DCGANDiscriminator,
    build_discriminators,
    crop_holes,
    hole_boxes,
    hole_windows,
)
from facecomp.models.generator import Generator
from facecomp.models.identity import IdentityNet
from facecomp.models.parsing import ParsingNet, freeze

__all__ = ["DCGANDiscriminator", "Generator", "IdentityNet", "ParsingNet", "build_discriminators", "crop_holes",
           "freeze", "hole_boxes", "hole_windows", "load"]


def _generator(config: dict, path: Path) -> nn.Module:
    return Generator(GeneratorConfig(**config)).eval()


def _parsing(config: dict, path: Path) -> nn.Module:
    return ParsingNet(ParsingConfig(**{**config, "weights": str(path)}))


def _identity(config: dict, path: Path) -> nn.Module:
    return IdentityNet(IdentityConfig(**{**config, "weights": str(path)}))


# weights kind -> builder from the file's stored config; loaded models are for inference (eval mode;
# the parsing and identity networks frozen, as stage 3's losses need them)
BUILDERS = {"generator": _generator, "parsing": _parsing, "identity": _identity}


def load(kind: str, source: str | Path | None = None, device: str | torch.device = "cpu") -> nn.Module:
    """The ``kind`` model of the weights ``source`` names (default: the shipped ones), on ``device``."""
    if kind not in BUILDERS:
        raise ValueError(f"unknown model kind '{kind}' (valid: {', '.join(BUILDERS)})")
    path = weights.resolve(source, kind)
    meta = weights.read_metadata(path)
    if meta.get("kind") != kind or "config" not in meta:
        raise ValueError(f"{path}: not {kind} weights (kind {meta.get('kind')!r})")
    try:
        model = BUILDERS[kind](meta["config"], path)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: {kind} config in the file is not understood ({e})") from None
    weights.load_module(path, model, kind)
    model = model.to(device)
    return freeze(model) if kind in ("parsing", "identity") else model.eval()
