"""Running an exported artifact: the callable that stands in for the generator in ``Completer``."""

from __future__ import annotations

from pathlib import Path

import torch

from facecomp.config import GeneratorConfig
from facecomp.export.formats import FORMATS
from facecomp.export.metadata import ArtifactMeta, ArtifactMismatch


class Engine:
    """A compiled generator: ``engine(filled) -> generated``, float32 [N, C, S, S] -> [N, 3, S, S].

    Batches larger than the artifact's maximum are run in chunks, smaller than its minimum padded,
    so callers (completion with K samples, the server's batches) need not know the export's range.
    """

    def __init__(self, folder: str | Path, *, weights: str | Path | None = None, precision: str | None = None,
                 device: str | None = None):
        self.folder = Path(folder)
        self.meta = ArtifactMeta.read(self.folder)
        if self.meta.format not in FORMATS:
            raise ArtifactMismatch(f"{self.folder}: unknown artifact format '{self.meta.format}'")
        self.meta.check(weights=weights, precision=precision, device=device)
        self.meta.verify_files(self.folder)
        self.cfg = GeneratorConfig(**self.meta.generator_config)
        self.in_channels = 4 if self.cfg.mask_channel else 3
        self.device = torch.device(self.meta.device)
        self._run = FORMATS[self.meta.format].load(self.folder, self.meta)

    def __repr__(self) -> str:
        m = self.meta
        return f"Engine({m.format}, {m.precision}, {m.device}, batch {m.batch['min']}..{m.batch['max']})"

    @torch.no_grad()
    def __call__(self, filled: torch.Tensor) -> torch.Tensor:
        lo, hi = self.meta.batch["min"], self.meta.batch["max"]
        outs = []
        for chunk in filled.split(hi):
            n = chunk.shape[0]
            if n < lo:  # pad with copies of the last sample, then drop their outputs
                chunk = torch.cat([chunk, chunk[-1:].expand(lo - n, -1, -1, -1)])
            outs.append(self._run(chunk)[:n].to(filled.device))
        return torch.cat(outs)


def open_generator(weights: str | Path | None = None, engine: str | Path | None = None,
                   device: str = "cpu"):
    """What runs the generator for ``complete --model/--engine`` and ``serve``: the compiled artifact
    ``engine`` (refused unless built from ``weights``, when they are named), else the eager ``weights``.
    The result goes to ``facecomp.Completer``, which never imports this package."""
    import torch

    from facecomp import models
    from facecomp import weights as weights_mod

    if engine is None:
        return models.load("generator", weights, device)
    named = weights_mod.resolve(weights) if weights is not None else None
    return load_engine(engine, weights=named, device=torch.device(device).type)


def load_engine(folder: str | Path, *, weights: str | Path | None = None, precision: str | None = None,
                device: str | None = None) -> Engine:
    return Engine(folder, weights=weights, precision=precision, device=device)
