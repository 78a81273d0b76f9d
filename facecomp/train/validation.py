"""Validation during training: a fixed set of faces, O1-O6 filled, hole PSNR and SSIM per mask (and,
with ``validation.identity``, identity distance: dlib's embedding of each completion against its original's).

The set is the first ``validation.faces`` faces of a validation partition, cropped to the model's
input exactly as inference crops them (no augmentation), with the hole noise keyed by a fixed seed:
two validations of the same weights give the same numbers, so curves compare weights, not luck.
Scores are computed on the 128x128 crop in uint8, as ``facecomp eval table --resolution crop`` does.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from facecomp import kernels, masks, metrics
from facecomp.config import Config
from facecomp.data.celeba import CelebAIndex
from facecomp.images import to_tensor, to_uint8
from facecomp.layout import load_face
from facecomp.train.step import generator_input


@dataclass
class IdentityReference:
    """The originals' identity, computed once: each face's 5-point alignment (found on the original and
    reused for its completions, as facecomp eval does) and its embedding."""

    embedder: object  # facecomp.identity_embedding.IdentityEmbedder
    alignments: list
    embeddings: np.ndarray  # [N, 128]

    @classmethod
    def of(cls, originals: np.ndarray) -> IdentityReference:
        from facecomp.identity_embedding import IdentityEmbedder

        embedder = IdentityEmbedder()
        alignments = [embedder.alignment(o) for o in originals]
        embeddings = np.stack([embedder.embed(o, a) for o, a in zip(originals, alignments, strict=True)])
        return cls(embedder, alignments, embeddings)

    def distance(self, i: int, completed: np.ndarray) -> float:
        return float(np.linalg.norm(self.embedder.embed(completed, self.alignments[i]) - self.embeddings[i]))


@dataclass
class ValidationSet:
    faces: torch.Tensor  # [N, 3, S, S] in [-1, 1]
    originals: np.ndarray  # [N, S, S, 3] uint8
    masks: dict[str, np.ndarray]  # name -> [S, S] float32, 1 = missing
    identity: IdentityReference | None = None  # with validation.identity


def load_validation_set(cfg: Config) -> ValidationSet | None:
    """The fixed faces of ``cfg.validation``; None when validation is off."""
    v = cfg.validation
    if v.faces <= 0:
        return None
    root = v.root or cfg.data.roots[0]
    files = CelebAIndex.open(root).files(v.partition, v.faces)
    size = cfg.generator.image_size
    originals = np.stack([load_face(Path(f), size) for f in files])
    faces = torch.stack([to_tensor(o) for o in originals])
    return ValidationSet(faces=faces, originals=originals, masks={name: masks.occlusion(name, size, size)
                                                                   for name in v.masks},
                         identity=IdentityReference.of(originals) if v.identity else None)


@torch.no_grad()
def score(generator: nn.Module, vset: ValidationSet, cfg: Config, device: torch.device) -> dict[str, float]:
    """``hole_psnr/O1`` .. ``ssim/O6`` .. ``sharpness/O6`` and their means over the masks, ``hole_psnr``,
    ``ssim`` and ``sharpness`` (the hole's gradient magnitude over the original's: PSNR and SSIM reward a
    blurred fill, this does not); with an identity reference also ``identity/O1`` .. and ``identity``
    (mean embedding distance, lower is better)."""
    was_training = generator.training
    generator.eval()
    v, out = cfg.validation, {}
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.runtime.amp)
    try:
        for name, mask in vset.masks.items():
            psnrs, ssims, sharp, dists = [], [], [], []
            for i in range(0, len(vset.faces), v.batch_size):
                x = vset.faces[i:i + v.batch_size].to(device)
                m = torch.from_numpy(mask)[None, None].expand(len(x), 1, *mask.shape).to(device)
                x_in = generator_input(cfg, x, m, seed=v.seed, offset=i)
                with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                    g = generator(x_in)
                y = kernels.composite(x, g.to(x.dtype), m, impl=cfg.runtime.kernels)
                for j, (completed, original) in enumerate(zip(map(to_uint8, y), vset.originals[i:i + v.batch_size],
                                                               strict=True)):
                    psnrs.append(metrics.psnr_hole(original, completed, mask))
                    ssims.append(metrics.ssim(original, completed))
                    sharp.append(metrics.sharpness(completed, original, mask))
                    if vset.identity is not None:
                        dists.append(vset.identity.distance(i + j, completed))
            out[f"hole_psnr/{name}"] = float(np.mean(np.minimum(psnrs, 100.0)))  # identical holes: cap, not inf
            out[f"ssim/{name}"] = float(np.mean(ssims))
            out[f"sharpness/{name}"] = float(np.nanmean(sharp))
            if dists:
                out[f"identity/{name}"] = float(np.mean(dists))
    finally:
        generator.train(was_training)
    names = list(vset.masks)
    out["hole_psnr"] = float(np.mean([out[f"hole_psnr/{n}"] for n in names]))
    out["ssim"] = float(np.mean([out[f"ssim/{n}"] for n in names]))
    out["sharpness"] = float(np.mean([out[f"sharpness/{n}"] for n in names]))
    if vset.identity is not None:
        out["identity"] = float(np.mean([out[f"identity/{n}"] for n in names]))
    return out


LOWER_IS_BETTER = frozenset({"identity"})


def selection_score(record: dict, variant: str, select: str) -> float:
    """The number a checkpoint is chosen by (higher is better); ``last`` ranks by step, a distance by its
    negative."""
    if select == "last":
        return float(record["step"])
    value = float(record[variant][select])
    return -value if select in LOWER_IS_BETTER else value


def choose(history: list[dict], select: str, select_after: int, candidates: set[int] | None = None,
           min_sharpness: float = 0.0) -> dict | None:
    """The best (step, variant) of a validation history: ``{"step", "variant", "score"}``.

    history entries are ``{"step": s, "raw": {...scores}, "ema": {...scores}?}``; only steps in
    ``candidates`` (those with a checkpoint on disk) and >= ``select_after`` compete, and with
    ``min_sharpness`` > 0 only weights whose mean sharpness reaches it (a record without one does not):
    the best PSNR is otherwise often the blurriest checkpoint. Ties go to the earlier step and to the raw
    weights, so the rule is deterministic.
    """
    best = None
    for rec in history:
        if rec["step"] < select_after or (candidates is not None and rec["step"] not in candidates):
            continue
        for variant in ("raw", "ema"):
            if variant not in rec or rec[variant].get("sharpness", 0.0) < min_sharpness:
                continue
            s = selection_score(rec, variant, select)
            if best is None or s > best["score"]:
                best = {"step": rec["step"], "variant": variant, "score": s}
    return best
