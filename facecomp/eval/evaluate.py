"""The evaluations of `facecomp eval`, one function per subcommand: read the faces of a CelebA partition,
build what is compared and measured from names, score, write the result files, return the result.

Models are named '[NAME=]PATH' (none: the shipped model), baselines by the names of
:data:`facecomp.eval.methods.BASELINES`, masks by the paper's O1-O6. The command line only reads its
flags, calls one of these and prints what it returns.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from pathlib import Path

from facecomp import masks as masks_mod
from facecomp.eval import methods as methods_mod
from facecomp.eval.identity_check import IdentityCheck
from facecomp.eval.methods import Method
from facecomp.eval.table import FaceMetric, TableResult

BASELINES = ("noise", "telea", "ns")


def occlusions(names: Sequence[str]) -> list[str]:
    """Mask names, upper-cased ('o3' -> 'O3'); raises ValueError on one that is not O1-O6."""
    chosen = [name.upper() for name in names]
    for name in chosen:
        if name not in masks_mod.OCCLUSIONS:
            raise ValueError(f"unknown mask '{name}' (valid: {', '.join(masks_mod.OCCLUSIONS)})")
    return chosen


def partition_files(data: str | Path, partition: str = "val", limit: int = 0) -> list[Path]:
    """The first ``limit`` faces (0 = all) of a partition of the CelebA folder ``data``."""
    from facecomp.data.celeba import CelebAIndex

    return CelebAIndex.open(data).files(partition, limit)


def _table_parts(models: Sequence[str], baselines: Sequence[str], blend: str, metrics: Sequence[str],
                 parsing_weights: str | Path | None) -> tuple[dict[str, Method], tuple[FaceMetric, ...]]:
    """The table's methods and per-face metrics; module-level so that worker processes can build their own."""
    from facecomp.eval import face_metrics

    return methods_mod.select(models, baselines, blend), face_metrics.build(metrics, parsing_weights)


def table(data: str | Path, out: str | Path, *, partition: str = "val", limit: int = 0,
          models: Sequence[str] = (), baselines: Sequence[str] = BASELINES, blend: str = "none",
          masks: Sequence[str] = tuple(masks_mod.OCCLUSIONS), resolution: str = "input",
          metrics: Sequence[str] = ("auto",), parsing_weights: str | Path | None = None, grid_faces: int = 2,
          workers: int = 1, progress: bool = True) -> TableResult:
    """The paper's Tables 1-3 (:mod:`facecomp.eval.table`): SSIM, PSNR and the per-face ``metrics``
    (:mod:`facecomp.eval.face_metrics`) of every method on every face under each of ``masks``.

    ``blend="poisson"`` adds each model Poisson-blended. ``workers``: processes, each scoring a contiguous
    share of the faces (0 = one per core). Writes results.md, results.json and grid.png (``grid_faces``
    faces: original, masked, each method) to ``out``.
    """
    from facecomp.eval import face_metrics
    from facecomp.eval import table as table_mod

    mask_names = occlusions(masks)
    if workers < 0:
        raise ValueError(f"--workers {workers}: must be 0 (one per core) or more")
    metric_names = face_metrics.resolve(metrics, parsing_weights)
    build = functools.partial(_table_parts, tuple(models), tuple(baselines), blend, tuple(metric_names),
                              parsing_weights)
    return table_mod.run_parallel(build, partition_files(data, partition, limit), mask_names, resolution,
                                  grid_faces=grid_faces, out=Path(out), progress=progress,
                                  workers=workers or os.cpu_count() or 1)


def sweep(data: str | Path, out: str | Path, *, partition: str = "val", limit: int = 0,
          models: Sequence[str] = (), baselines: Sequence[str] = BASELINES, resolution: str = "input",
          seed: int = 0, progress: bool = True) -> dict:
    """The paper's Fig. 9 (:mod:`facecomp.eval.sweep`): SSIM and PSNR against square mask size. Writes
    sweep.json, sweep.md and sweep.png to ``out``."""
    from facecomp.eval import sweep as sweep_mod

    chosen = methods_mod.select(models, baselines)
    result = sweep_mod.run(chosen, partition_files(data, partition, limit), resolution, seed, progress=progress)
    sweep_mod.write(result, Path(out))
    return result


def diversity(data: str | Path, out: str | Path, *, partition: str = "val", limit: int = 0,
              model: str | None = None, mask: str = "O3", samples: int = 4, seed: int = 0) -> dict:
    """The paper's Fig. 10 (:mod:`facecomp.eval.diversity`): ``samples`` completions of each face under
    ``mask`` from different noise, by ``model`` ('[NAME=]PATH'; None: the shipped model). Writes
    diversity.json and diversity.png to ``out``."""
    from facecomp.complete import Completer
    from facecomp.eval import diversity as diversity_mod

    (mask_name,) = occlusions([mask])
    if not 2 <= samples <= 16:
        raise ValueError(f"--samples must be in 2..16, got {samples}")
    path = methods_mod.model_name(model)[1] if model else None
    return diversity_mod.run(Completer(path), partition_files(data, partition, limit), mask_name, samples, seed,
                             Path(out))


def recognition(data: str | Path, out: str | Path, *, partition: str = "val", limit: int = 0,
                models: Sequence[str] = (), baselines: Sequence[str] = BASELINES, blend: str = "none",
                masks: Sequence[str] = tuple(masks_mod.OCCLUSIONS), probes_per_identity: int = 0, seed: int = 0,
                progress: bool = True) -> dict:
    """The paper's Fig. 11 (:mod:`facecomp.eval.recognition`): top-1/3/5 recognition of completed probes
    against a gallery of each identity's unoccluded faces (``seed``: the gallery/probe split). Needs the
    folder's identity labels (identity_CelebA.txt). Writes recognition.md, results.json and
    recognition.png to ``out``."""
    from facecomp.data.celeba import CelebAIndex
    from facecomp.eval import recognition as recognition_mod

    index = CelebAIndex.open(data)
    if not index.identity_of:
        raise ValueError(f"{data}: no identity_CelebA.txt, so no identities to recognise")
    mask_names = occlusions(masks)
    result = recognition_mod.run(methods_mod.select(models, baselines, blend), index.files(partition, limit),
                                 index.identity, mask_names, probes_per_identity, progress=progress, seed=seed)
    recognition_mod.write(result, Path(out))
    return result


def identity(data: str | Path, out: str | Path | None = None, *, partition: str = "val", identities: int = 20,
             per_identity: int = 5) -> IdentityCheck:
    """A sanity check of the identity embedding (:mod:`facecomp.eval.identity_check`): mean embedding
    distance within and between identities, and nearest-neighbour top-1, on the unoccluded faces of the
    first ``identities`` identities (``per_identity`` faces each). Writes identity.json to ``out`` if given."""
    from facecomp.data.celeba import CelebAIndex
    from facecomp.eval import identity_check
    from facecomp.identity_embedding import IdentityEmbedder

    files, ids = identity_check.sample_identities(CelebAIndex.open(data), partition, identities, per_identity)
    check = identity_check.identity_check(IdentityEmbedder(), files, ids)
    if out is not None:
        identity_check.write(check, Path(out))
    return check
