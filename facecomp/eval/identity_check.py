"""`facecomp eval identity`: how well the identity embedding of :mod:`facecomp.identity_embedding` (dlib's
128-D ResNet) tells this dataset's people apart, on unoccluded faces. The embedding model lives there, not
here, so training validation can use it without importing evaluation."""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from facecomp.data.celeba import CelebAIndex
from facecomp.identity_embedding import SAME_PERSON_THRESHOLD, IdentityEmbedder


@dataclass
class IdentityCheck:
    """Same-identity vs other-identity embedding distances and nearest-neighbour top-1."""
    faces: int
    identities: int
    same_mean: float
    other_mean: float
    top1: float
    same_below_threshold: float  # share of same-identity pairs under 0.6
    other_above_threshold: float

    def markdown(self) -> str:
        return (f"{self.faces} faces of {self.identities} identities: mean distance same identity "
                f"{self.same_mean:.3f}, other identities {self.other_mean:.3f}; nearest-neighbour top-1 "
                f"{self.top1:.3f}; same-identity pairs under {SAME_PERSON_THRESHOLD}: {self.same_below_threshold:.3f}, "
                f"other-identity pairs over it: {self.other_above_threshold:.3f}")


def identity_check(embedder: IdentityEmbedder, files: list[Path], identities: list[int]) -> IdentityCheck:
    from facecomp.images import read_rgb

    emb = np.stack([embedder.embed(read_rgb(f)) for f in files])
    ids = np.asarray(identities)
    d = np.linalg.norm(emb[:, None] - emb[None], axis=2)
    same = ids[:, None] == ids[None]
    off = ~np.eye(len(ids), dtype=bool)
    d_nn = np.where(off, d, math.inf)
    top1 = float((ids[d_nn.argmin(1)] == ids).mean())
    return IdentityCheck(len(files), len(set(identities)), float(d[same & off].mean()), float(d[~same].mean()), top1,
                         float((d[same & off] < SAME_PERSON_THRESHOLD).mean()),
                         float((d[~same] >= SAME_PERSON_THRESHOLD).mean()))


def sample_identities(index: CelebAIndex, partition: str, identities: int, per_identity: int
                      ) -> tuple[list[Path], list[int]]:
    """The faces of the first ``identities`` identities (by id) of a partition, the first ``per_identity``
    faces of each: (files, their identities). Raises ValueError with fewer than two identities."""
    by_id: dict[int, list[Path]] = defaultdict(list)
    for f in index.files(partition):
        i = index.identity(f)
        if i is not None:
            by_id[i].append(f)
    chosen = [(f, i) for i in sorted(by_id)[:identities] for f in by_id[i][:per_identity]]
    if len({i for _, i in chosen}) < 2:
        raise ValueError(f"{index.root}: fewer than two identities in the {partition} partition")
    return [f for f, _ in chosen], [i for _, i in chosen]


def write(check: IdentityCheck, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "identity.json").write_text(json.dumps(asdict(check), indent=2))
