"""Face-parsing labels drawn from 68 landmarks, with hair from GrabCut.

Helen's labels (the paper's parsing data) are not available, so we make our own for the aligned
CelebA faces. Each class comes from the landmarks (``facecomp.faces``):

- brows: a band along the five brow points, as thick as 0.07 of the eye distance (dlib's brow
  points run along the brow's upper middle, so the band sits mostly below them);
- eyes: the six-point eye outline;
- nose: the bridge (27-30) as a narrow band and the nostril arc (31-35) closed into a polygon;
- lips: outer and inner lip contours give upper lip, lower lip and the inner mouth;
- face skin: the jaw line (0-16) closed over the forehead by a half-ellipse whose top is one
  "nose length" (brows to nose base) above the brows, the classic facial thirds;
- hair: OpenCV GrabCut with colour models seeded from the landmarks — the inner face (cheeks,
  eyes, nose, mouth) is surely not hair, a ring around the head above the chin is probably hair,
  everything else probably not. GrabCut's result is kept where it is connected to the head and
  not below the chin's level beside the neck by more than a tenth of the face; it also takes the
  forehead where bangs cover it.

Drawn in that order, later classes over earlier ones: skin, hair, nose, brows, eyes, lips, mouth.
Everything else is background (neck, ears, clothes, backdrop — as in Helen's labelling).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np

from facecomp.images import read_rgb, write_png
from facecomp.labels import LABELS

log = logging.getLogger(__name__)

LABEL_ID = {name: i for i, name in enumerate(LABELS)}
# Horizontal flip swaps image-left and image-right classes.
FLIP_PERMUTATION = np.arange(len(LABELS))
for _a, _b in (("left_brow", "right_brow"), ("left_eye", "right_eye")):
    FLIP_PERMUTATION[LABEL_ID[_a]], FLIP_PERMUTATION[LABEL_ID[_b]] = LABEL_ID[_b], LABEL_ID[_a]

# Colours for viewing label maps (RGB), one per class in LABELS order.
PALETTE = np.array([
    (0, 0, 0), (224, 172, 140), (120, 60, 20), (170, 90, 30), (0, 120, 255), (0, 200, 255),
    (255, 220, 0), (220, 30, 60), (90, 0, 40), (255, 90, 120), (60, 30, 90)], dtype=np.uint8)

LABELLER_VERSION = 1


def colorize(labels: np.ndarray) -> np.ndarray:
    """[H, W] label ids -> [H, W, 3] uint8 colours."""
    return PALETTE[np.clip(labels, 0, len(PALETTE) - 1)]


def _poly(mask: np.ndarray, pts: np.ndarray, value: int = 1) -> None:
    cv2.fillPoly(mask, [np.round(pts).astype(np.int32)], value, lineType=cv2.LINE_8)


def _band(mask: np.ndarray, pts: np.ndarray, thickness: float, value: int = 1) -> None:
    cv2.polylines(mask, [np.round(pts).astype(np.int32)], False, value, max(1, int(round(thickness))))


def _half_ellipse(left: np.ndarray, right: np.ndarray, top_y: float, n: int = 24) -> np.ndarray:
    """Points from ``right`` over the top to ``left``: the forehead arc closing the jaw line."""
    cx, cy = (left + right) / 2
    ax, ay = np.linalg.norm(right - left) / 2, max(cy - top_y, 1.0)
    tilt = np.arctan2(right[1] - left[1], right[0] - left[0])
    t = np.linspace(0, np.pi, n)
    x, y = ax * np.cos(t), -ay * np.sin(t)
    c, s = np.cos(tilt), np.sin(tilt)
    return np.stack([cx + c * x - s * y, cy + s * x + c * y], 1)


@dataclass(frozen=True)
class FaceGeometry:
    """Distances the drawing scales with, from one face's landmarks."""
    eye_distance: float
    brow_y: float
    nose_base_y: float
    chin_y: float
    face_height: float

    @classmethod
    def of(cls, p: np.ndarray) -> FaceGeometry:
        eye_distance = float(np.linalg.norm(p[42:48].mean(0) - p[36:42].mean(0)))
        brow_y = float(p[17:27, 1].mean())
        nose_base_y = float(p[33, 1])
        chin_y = float(p[8, 1])
        return cls(eye_distance, brow_y, nose_base_y, chin_y, chin_y - (brow_y - (nose_base_y - brow_y)))


def face_outline(p: np.ndarray, g: FaceGeometry) -> np.ndarray:
    forehead_top = g.brow_y - (g.nose_base_y - g.brow_y)
    return np.concatenate([p[0:17], _half_ellipse(p[0], p[16], forehead_top)[1:-1]])


def _gmm_loglik(samples: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray | None:
    """Log-likelihood of ``queries`` under a k-component diagonal Gaussian mixture fitted to
    ``samples`` by k-means (OpenCV 5's headless wheel has no ``cv2.ml``; k-means clusters with
    their own means, variances and weights are all this seed needs)."""
    if len(samples) < 8 * k:
        return None
    criteria = (cv2.TERM_CRITERIA_COUNT + cv2.TERM_CRITERIA_EPS, 20, 0.5)
    _, assign, _ = cv2.kmeans(samples.astype(np.float32), k, None, criteria, 2, cv2.KMEANS_PP_CENTERS)
    assign = assign.ravel()
    per_component = []
    for j in range(k):
        part = samples[assign == j]
        if len(part) < 2:
            continue
        mu, var = part.mean(0), part.var(0) + 4.0  # floor: a flat patch must not give zero variance
        ll = -0.5 * (((queries - mu) ** 2) / var + np.log(2 * np.pi * var)).sum(1)
        per_component.append(ll + np.log(len(part) / len(samples)))
    return np.logaddexp.reduce(np.stack(per_component), axis=0)


def _hair_likelier(bgr: np.ndarray, hair: np.ndarray, not_hair: np.ndarray, where: np.ndarray) -> np.ndarray | None:
    """Per pixel of ``where``: is a hair colour model (GMM in Lab) likelier than a not-hair one?"""
    lab = cv2.cvtColor(bgr, cv2.COLOR_BGR2LAB).reshape(-1, 3).astype(np.float32)
    q = lab[where.ravel()]
    ll_hair = _gmm_loglik(lab[hair.ravel()], q, 2)
    ll_not = _gmm_loglik(lab[not_hair.ravel()], q, 4)
    if ll_hair is None or ll_not is None:
        return None
    return ll_hair > ll_not


def hair_mask(rgb: np.ndarray, p: np.ndarray, g: FaceGeometry, face: np.ndarray, iterations: int = 4,
              seed: int = 0, scale: float = 0.5) -> np.ndarray:
    """Boolean [H, W] hair mask by GrabCut seeded from the landmarks (see module docstring).

    Seeds: the inner face (cheeks, eyes, nose, mouth) is surely not hair; the crown above the
    forehead line and the temples just outside the face outline are probably hair; the rest is
    probably not. GrabCut runs at half resolution (4x faster, hair boundaries are soft anyway).
    """
    cv2.setRNGSeed(seed)  # k-means and GrabCut's GMM initialisation use OpenCV's RNG: fixed, labels repeat
    h, w = rgb.shape[:2]
    sw, sh = max(8, int(round(w * scale))), max(8, int(round(h * scale)))
    q, fq = p * scale, face * scale
    gq = FaceGeometry(*(v * scale for v in asdict(g).values()))
    small = cv2.resize(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), (sw, sh), interpolation=cv2.INTER_AREA)
    half_w = np.linalg.norm(q[16] - q[0]) / 2
    cx = float(q[27, 0])
    forehead_top = gq.brow_y - (gq.nose_base_y - gq.brow_y)

    face_mask = np.zeros((sh, sw), np.uint8)
    _poly(face_mask, fq)
    head = np.zeros((sh, sw), np.uint8)  # where hair may be: an ellipse around the face, above the chin
    cv2.ellipse(head, (int(cx), int(forehead_top + 0.35 * gq.face_height)),
                (int(1.5 * half_w), int(0.9 * gq.face_height)), 0, 0, 360, 1, -1)
    head[int(gq.chin_y + 0.1 * gq.face_height):] = 0

    gc = np.full((sh, sw), cv2.GC_PR_BGD, np.uint8)
    gc[(head == 1) & (face_mask == 0)] = cv2.GC_PR_FGD
    above_brows = np.zeros((sh, sw), bool)
    above_brows[: int(gq.brow_y)] = True
    far = np.ones((sh, sw), np.uint8)  # backdrop: well clear of any head of hair, above the brows
    cv2.ellipse(far, (int(cx), int(forehead_top + 0.35 * gq.face_height)),
                (int(2.1 * half_w), int(1.15 * gq.face_height)), 0, 0, 360, 0, -1)
    gc[(far == 1) & above_brows] = cv2.GC_BGD
    inner = np.zeros((sh, sw), np.uint8)
    _poly(inner, cv2.convexHull(np.concatenate([q[2:15], q[36:48]]).astype(np.float32)).reshape(-1, 2))
    gc[inner == 1] = cv2.GC_BGD
    crown = np.zeros((sh, sw), np.uint8)  # just above the forehead line: hair on most heads
    cv2.ellipse(crown, (int(cx), int(forehead_top)), (int(0.6 * half_w), int(0.12 * gq.face_height)),
                0, 180, 360, 1, -1)
    gc[(crown == 1) & (face_mask == 0)] = cv2.GC_FGD
    # GrabCut learns its first colour models from the seeds above, and the "probably not hair"
    # region holds long hair hanging beside the cheeks. Give it a better start: colour models of
    # the surely-hair crown and the surely-not backdrop/skin decide which unsure pixels start as
    # probable hair; GrabCut then re-learns both models and smooths the boundary.
    below = np.zeros((sh, sw), bool)
    below[int(gq.chin_y + 0.15 * gq.face_height):] = True
    unsure = (gc == cv2.GC_PR_BGD) | (gc == cv2.GC_PR_FGD)
    prior = _hair_likelier(small, gc == cv2.GC_FGD, gc == cv2.GC_BGD, unsure & ~below)
    if prior is not None:
        gc[unsure & ~below] = np.where(prior, cv2.GC_PR_FGD, cv2.GC_PR_BGD)
    if not (gc == cv2.GC_PR_FGD).any():
        return np.zeros((h, w), bool)
    bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    cv2.grabCut(small, gc, None, bgd, fgd, iterations, cv2.GC_INIT_WITH_MASK)
    hair = ((gc == cv2.GC_FGD) | (gc == cv2.GC_PR_FGD)).astype(np.uint8)
    hair[int(gq.chin_y + 0.15 * gq.face_height):] = 0
    hair = cv2.morphologyEx(hair, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
    # Keep the pieces touching the head (a ring just outside the face outline); drop backdrop blobs.
    n, comp = cv2.connectedComponents(hair)
    near = cv2.dilate(face_mask, np.ones((5, 5), np.uint8)) == 1
    keep = np.unique(comp[near & (hair == 1)])
    hair = np.isin(comp, keep[keep > 0]).astype(np.uint8)
    return cv2.resize(hair, (w, h), interpolation=cv2.INTER_NEAREST) == 1


def draw_labels(rgb: np.ndarray, points: np.ndarray, hair: bool = True) -> np.ndarray:
    """[H, W] uint8 label ids (LABELS order) for a face with 68 landmarks ``points`` [68, 2]."""
    h, w = rgb.shape[:2]
    p = points.astype(np.float64)
    g = FaceGeometry.of(p)
    labels = np.zeros((h, w), np.uint8)
    face = face_outline(p, g)
    _poly(labels, face, LABEL_ID["skin"])
    if hair:
        labels[hair_mask(rgb, p, g, face)] = LABEL_ID["hair"]

    nose = np.zeros((h, w), np.uint8)
    _band(nose, p[27:31], 0.16 * g.eye_distance)
    _poly(nose, np.concatenate([p[30:31], p[31:36]]))
    _poly(nose, cv2.convexHull(np.concatenate([p[29:31], p[31:36]]).astype(np.float32)).reshape(-1, 2))
    labels[nose == 1] = LABEL_ID["nose"]

    for name, idx in (("left_brow", slice(17, 22)), ("right_brow", slice(22, 27))):
        brow = np.zeros((h, w), np.uint8)
        thick = 0.07 * g.eye_distance
        _band(brow, p[idx] + np.array([0, 0.45 * thick]), 1.6 * thick)
        labels[brow == 1] = LABEL_ID[name]
    for name, idx in (("left_eye", slice(36, 42)), ("right_eye", slice(42, 48))):
        eye = np.zeros((h, w), np.uint8)
        _poly(eye, p[idx])
        labels[eye == 1] = LABEL_ID[name]

    upper = np.concatenate([p[48:55], p[64:59:-1]])
    lower = np.concatenate([p[54:60], p[48:49], p[60:61], p[67:63:-1]])
    for name, poly in (("upper_lip", upper), ("lower_lip", lower), ("inner_mouth", p[60:68])):
        part = np.zeros((h, w), np.uint8)
        _poly(part, poly)
        labels[part == 1] = LABEL_ID[name]
    return labels


@dataclass
class LabelReport:
    """What ``label_folder`` did; written beside the labels as ``labels.json``."""
    labelled: int = 0
    cached: int = 0
    failed: list[str] = field(default_factory=list)  # no face / implausible landmarks
    unreadable: list[str] = field(default_factory=list)
    cnn_fallback: int = 0
    version: int = LABELLER_VERSION

    def merge(self, other: LabelReport) -> None:
        self.labelled += other.labelled
        self.cached += other.cached
        self.failed += other.failed
        self.unreadable += other.unreadable
        self.cnn_fallback += other.cnn_fallback


def label_path(out: Path, image: Path) -> Path:
    return out / f"{image.stem}.png"


def _label_chunk(args: tuple[list[Path], Path, bool]) -> LabelReport:
    from facecomp.faces import LandmarkDetector

    files, out, overwrite = args
    detector = LandmarkDetector()
    report = LabelReport()
    for f in files:
        target = label_path(out, f)
        if target.exists() and not overwrite:
            report.cached += 1
            continue
        try:
            rgb = read_rgb(f)
        except ValueError as e:
            log.warning("skipping %s", e)
            report.unreadable.append(f.name)
            continue
        found = detector(rgb)
        if found is None:
            report.failed.append(f.name)
            continue
        report.cnn_fallback += found.detector == "cnn"
        write_png(target, draw_labels(rgb, found.points))
        report.labelled += 1
    return report


def label_folder(files: list[Path], out: Path, workers: int = 1, overwrite: bool = False,
                 progress: bool = True) -> LabelReport:
    """Label every face in ``files`` into ``out/<stem>.png``; existing labels are kept (a cache)
    unless ``overwrite``. Faces whose landmarks fail are skipped and listed in the report."""
    from tqdm import tqdm

    out.mkdir(parents=True, exist_ok=True)
    chunks = [files[i:i + 64] for i in range(0, len(files), 64)]
    report = LabelReport()
    bar = tqdm(total=len(files), unit="face", disable=not progress)
    if workers > 1:
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(workers) as pool:
            for part in pool.imap(_label_chunk, [(c, out, overwrite) for c in chunks]):
                report.merge(part)
                bar.update(part.labelled + part.cached + len(part.failed) + len(part.unreadable))
    else:
        for c in chunks:
            part = _label_chunk((c, out, overwrite))
            report.merge(part)
            bar.update(len(c))
    bar.close()
    previous = out / "labels.json"
    summary = asdict(report)
    if previous.exists() and not overwrite:  # keep failures recorded by earlier runs over other files
        old = json.loads(previous.read_text())
        summary["failed"] = sorted(set(old.get("failed", [])) | set(report.failed))
    (out / "labels.json").write_text(json.dumps(summary, indent=1))
    return report


def label_celeba(data: str | Path, partitions: Sequence[str], out: str | Path, limit: int = 0, workers: int = 1,
                 overwrite: bool = False, progress: bool = True) -> tuple[int, LabelReport]:
    """``label_folder`` over the first ``limit`` faces (0 = all) of each of ``partitions`` of the CelebA folder
    ``data``: (faces, report). dlib and its weights are loaded first, so a missing 'faces' extra fails with
    its install hint before any face is read."""
    from facecomp.data.celeba import CelebAIndex
    from facecomp.faces import LandmarkDetector

    LandmarkDetector(cnn_fallback=False)
    index = CelebAIndex.open(data)
    files = [f for part in partitions for f in index.files(part, limit)]
    return len(files), label_folder(files, Path(out), workers=workers, overwrite=overwrite, progress=progress)
