"""The paper's Tables 1-3: SSIM, PSNR (whole image and inside the hole) for O1-O6, one column per method.

Masks are drawn at the input's own resolution (178x218 aligned faces, ``resolution="input"``) or on
the 128x128 face crop (``resolution="crop"``); metrics are computed at that resolution.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
from tqdm import tqdm

from facecomp import images, masks, metrics
from facecomp.eval.methods import Method
from facecomp.layout import load_face

METRICS = {"ssim": "SSIM", "psnr": "PSNR (dB)", "psnr_hole": "PSNR inside the hole (dB)",
           "sharpness": "Sharpness inside the hole: Sobel gradient of the completion / of the original (1 is best; "
                        "blur < 1, noise > 1)"}


class FaceMetric(Protocol):
    """A metric that needs per-face work (a network run on the original) before scoring completions."""
    key: str
    title: str

    def begin(self, original: np.ndarray) -> None: ...

    def __call__(self, original: np.ndarray, completed: np.ndarray, mask: np.ndarray) -> float: ...


class IdentityDistance:
    """Distance between dlib embeddings of the completed and the original face (lower is better)."""
    key, title = "identity", "Identity distance, dlib 128-D embedding (lower is better)"

    def __init__(self):
        from facecomp.identity_embedding import IdentityEmbedder

        self.embedder = IdentityEmbedder()

    def begin(self, original: np.ndarray) -> None:
        self.alignment = self.embedder.alignment(original)
        self.reference = self.embedder.embed(original, self.alignment)

    def __call__(self, original: np.ndarray, completed: np.ndarray, mask: np.ndarray) -> float:
        return float(np.linalg.norm(self.embedder.embed(completed, self.alignment) - self.reference))


class ParsingAgreement:
    """mIoU between the parsing of the completed and of the original face, inside the hole."""
    key, title = "parsing_miou", "Parsing agreement inside the hole, mIoU"

    def __init__(self, weights: str | Path | None = None):
        from facecomp.parsing import Parser

        self.parser = Parser(weights)

    def begin(self, original: np.ndarray) -> None:
        self.reference = self.parser.labels(original)

    def __call__(self, original: np.ndarray, completed: np.ndarray, mask: np.ndarray) -> float:
        from facecomp.eval.parsing_scores import confusion, mean_iou

        return mean_iou(confusion(self.parser.labels(completed), self.reference, where=mask > 0.5))
RESOLUTIONS = ("input", "crop")


@dataclass
class TableResult:
    methods: list[str]
    masks: list[str]
    resolution: str
    faces: int
    values: dict = field(default_factory=dict)  # metric -> mask -> method -> list of values
    titles: dict = field(default_factory=lambda: dict(METRICS))

    def summaries(self) -> dict:
        return {k: {o: {m: metrics.summary(v) for m, v in per.items()} for o, per in by_mask.items()}
                for k, by_mask in self.values.items()}


def load(path: Path, resolution: str) -> np.ndarray:
    if resolution == "crop":
        return load_face(path, 128)
    return images.read_rgb(path)


def run(methods: dict[str, Method], files: list[Path], mask_names: list[str], resolution: str = "input",
        grid_faces: int = 2, out: Path | None = None, progress: bool = True,
        face_metrics: tuple[FaceMetric, ...] = ()) -> TableResult:
    res, grid_rows = score(methods, files, mask_names, resolution, grid_faces, progress, face_metrics)
    if out is not None:
        write(res, out, grid_rows)
    return res


def score(methods: dict[str, Method], files: list[Path], mask_names: list[str], resolution: str = "input",
          grid_faces: int = 2, progress: bool = True,
          face_metrics: tuple[FaceMetric, ...] = ()) -> tuple[TableResult, list[np.ndarray]]:
    """Every method on every face and mask: the table's values and the first ``grid_faces`` grid rows."""
    if resolution not in RESOLUTIONS:
        raise ValueError(f"unknown resolution '{resolution}' (valid: {', '.join(RESOLUTIONS)})")
    res = TableResult(list(methods), list(mask_names), resolution, len(files))
    res.titles.update({fm.key: fm.title for fm in face_metrics})
    res.values = {k: {o: {m: [] for m in methods} for o in mask_names} for k in res.titles}
    grid_rows = []
    for i, path in enumerate(tqdm(files, desc=f"eval ({resolution})", disable=not progress, unit="face")):
        image = load(path, resolution)
        h, w = image.shape[:2]
        for fm in face_metrics:
            fm.begin(image)
        for name in mask_names:
            mask = masks.occlusion(name, w, h)
            row = [image, np.where(mask[..., None] > 0.5, 255, image).astype(np.uint8)]
            for method_name, method in methods.items():
                done = method(image, mask)
                res.values["ssim"][name][method_name].append(metrics.ssim(done, image))
                res.values["psnr"][name][method_name].append(metrics.psnr(done, image))
                res.values["psnr_hole"][name][method_name].append(metrics.psnr_hole(done, image, mask))
                res.values["sharpness"][name][method_name].append(metrics.sharpness(done, image, mask))
                for fm in face_metrics:
                    res.values[fm.key][name][method_name].append(fm(image, done, mask))
                row.append(done)
            if i < grid_faces:
                grid_rows.append(np.concatenate(row, axis=1))
    return res, grid_rows


# What a worker process builds for itself: the methods (generators loaded) and the per-face metrics
# (dlib, the parsing network). Called in the worker, so it must be picklable: a module-level function
# or a functools.partial of one.
Build = Callable[[], tuple[dict[str, Method], tuple[FaceMetric, ...]]]


def _score_shard(build: Build, files: list[Path], mask_names: list[str], resolution: str, grid_faces: int,
                 progress: bool, threads: int) -> tuple[TableResult, list[np.ndarray]]:
    import torch

    torch.set_num_threads(threads)
    methods, face_metrics = build()
    return score(methods, files, mask_names, resolution, grid_faces, progress, face_metrics)


def run_parallel(build: Build, files: list[Path], mask_names: list[str], resolution: str = "input",
                 grid_faces: int = 2, out: Path | None = None, progress: bool = True, workers: int = 2,
                 threads: int | None = None) -> TableResult:
    """``run`` with the faces split into ``workers`` contiguous shards, one worker process each (one:
    in this process).

    Much of a face's work is single-threaded (dlib's landmarks and embedding, OpenCV's inpainting and
    Poisson blend, SSIM), so one process leaves the other cores idle whatever its thread count. Each
    worker builds its own methods and metrics; the shards' values are joined in face order, so the
    table equals ``run``'s. Workers start by spawn (a fresh interpreter, no forked thread pools): call
    this under ``if __name__ == "__main__":``. ``threads``: torch threads per worker (default: this
    process's share).
    """
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    import torch

    workers = max(1, min(workers, len(files)))
    if workers == 1:  # no process to start: score here, with this process's threads
        methods, face_metrics = build()
        return run(methods, files, mask_names, resolution, grid_faces, out, progress, face_metrics)
    threads = threads or max(1, torch.get_num_threads() // workers)
    bounds = np.linspace(0, len(files), workers + 1).round().astype(int)
    shards = [files[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(_score_shard, build, shard, mask_names, resolution, max(0, grid_faces - int(a)),
                               progress and k == 0, threads)
                   for k, (shard, a) in enumerate(zip(shards, bounds[:-1], strict=True))]
        parts = [f.result() for f in futures]
    res, grid_rows = parts[0]
    res.faces = len(files)
    for part, rows in parts[1:]:
        for key, by_mask in part.values.items():
            for o, per in by_mask.items():
                for m, values in per.items():
                    res.values[key][o][m].extend(values)
        grid_rows.extend(rows)
    if out is not None:
        write(res, out, grid_rows)
    return res


def _cell(s: dict) -> str:
    if math.isnan(s["mean"]):
        return "n/a"
    return f"{s['mean']:.3f} ± {s['ci95']:.3f}" if abs(s["mean"]) < 2 else f"{s['mean']:.2f} ± {s['ci95']:.2f}"


def markdown(res: TableResult) -> str:
    summ = res.summaries()
    lines = [f"# O1-O6 evaluation: {res.faces} faces, masks at the {res.resolution} resolution",
             "", "Mean ± half-width of the 95% t-interval over faces. Higher is better unless the title says "
             "otherwise.", ""]
    for key, title in res.titles.items():
        lines += [f"## {title}", "", "| mask | " + " | ".join(res.methods) + " |",
                  "|---|" + "---|" * len(res.methods)]
        for o in res.masks:
            cells = [_cell(summ[key][o][m]) for m in res.methods]
            lines.append(f"| {o} ({masks.OCCLUSION_NAMES[o]}) | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def write(res: TableResult, out: Path, grid_rows: list[np.ndarray]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.md").write_text(markdown(res))
    payload = {"faces": res.faces, "resolution": res.resolution, "methods": res.methods, "masks": res.masks,
               "summary": res.summaries()}
    (out / "results.json").write_text(json.dumps(payload, indent=2))
    if grid_rows:
        images.write_png(out / "grid.png", np.concatenate(grid_rows, axis=0))
