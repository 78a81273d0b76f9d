"""Is the completed content a face? dlib's 68 landmarks on the completion against the original's.

SSIM and PSNR reward a smooth guess; a face recogniser's landmark model does not: it looks for an
eye corner, a nostril, a lip line. Two numbers per completed face:

* ``landmark_error``: the 68-point shape predictor is run on the original and on the completion
  inside the *same* face rectangle (found once, on the original, as the identity metric does), and
  the points of the original that lie inside the hole are compared, mean distance in units of the
  inter-ocular distance (between the two eyes' centres, points 36-41 and 42-47). A hole with no
  landmark in it scores nothing (left out of the mean and counted).
* ``face_found``: whether dlib's HOG detector, run on the completion on its own, still finds a face
  overlapping the original's (IoU >= 0.5); its mean over faces is the share.

Weights: ``shape_predictor_68_face_landmarks.dat`` of ``face-recognition-models`` (the ``faces``
extra), loaded offline; the same landmarks label the parsing data (facecomp.faces).
"""

from __future__ import annotations

import math

import numpy as np

from facecomp.faces import import_dlib, model_dir

LEFT_EYE, RIGHT_EYE = slice(36, 42), slice(42, 48)


class LandmarkModel:
    """dlib's HOG detector + 68-point predictor, built once and shared by both metrics."""

    def __init__(self, upsample: int = 1):
        dlib = import_dlib()
        self._dlib = dlib
        self.upsample = upsample
        self.detector = dlib.get_frontal_face_detector()
        self.predictor = dlib.shape_predictor(str(model_dir() / "shape_predictor_68_face_landmarks.dat"))

    def detect(self, rgb: np.ndarray):
        """The largest face rectangle dlib finds, or None."""
        found = list(self.detector(np.ascontiguousarray(rgb, dtype=np.uint8), self.upsample))
        return max(found, key=lambda r: r.width() * r.height()) if found else None

    def rect_or_frame(self, rgb: np.ndarray):
        """The detected face, or (for an aligned crop the detector misses) the central 80% of the frame."""
        rect = self.detect(rgb)
        if rect is None:
            h, w = rgb.shape[:2]
            rect = self._dlib.rectangle(int(0.1 * w), int(0.1 * h), int(0.9 * w), int(0.9 * h))
        return rect

    def points(self, rgb: np.ndarray, rect) -> np.ndarray:
        """[68, 2] float (x, y) landmarks inside ``rect``."""
        shape = self.predictor(np.ascontiguousarray(rgb, dtype=np.uint8), rect)
        return np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float64)


def inter_ocular(points: np.ndarray) -> float:
    return float(np.linalg.norm(points[LEFT_EYE].mean(0) - points[RIGHT_EYE].mean(0)))


def hole_landmark_error(ref: np.ndarray, got: np.ndarray, mask: np.ndarray) -> float:
    """Mean distance / inter-ocular distance over the reference points inside the hole (nan if none)."""
    h, w = mask.shape
    xy = np.clip(np.round(ref).astype(int), 0, [w - 1, h - 1])
    inside = mask[xy[:, 1], xy[:, 0]] > 0.5
    if not inside.any():
        return math.nan
    return float(np.linalg.norm(got[inside] - ref[inside], axis=1).mean() / max(inter_ocular(ref), 1e-6))


def iou(a, b) -> float:
    x0, y0 = max(a.left(), b.left()), max(a.top(), b.top())
    x1, y1 = min(a.right(), b.right()), min(a.bottom(), b.bottom())
    inter = max(0, x1 - x0) * max(0, y1 - y0)
    union = a.width() * a.height() + b.width() * b.height() - inter
    return inter / union if union > 0 else 0.0


class LandmarkError:
    """FaceMetric: landmark error inside the hole, inter-ocular units (lower is better)."""
    key = "landmark_error"
    title = "Landmark error inside the hole, dlib 68 points / inter-ocular distance (lower is better)"

    def __init__(self, model: LandmarkModel):
        self.model = model

    def begin(self, original: np.ndarray) -> None:
        self.rect = self.model.rect_or_frame(original)
        self.reference = self.model.points(original, self.rect)

    def __call__(self, original: np.ndarray, completed: np.ndarray, mask: np.ndarray) -> float:
        return hole_landmark_error(self.reference, self.model.points(completed, self.rect), mask)


class FaceFound:
    """FaceMetric: 1 if dlib still detects the face in the completion, else 0 (the mean is the share)."""
    key, title = "face_found", "Share of completed faces dlib still detects"

    def __init__(self, model: LandmarkModel):
        self.model = model

    def begin(self, original: np.ndarray) -> None:
        self.rect = self.model.rect_or_frame(original)

    def __call__(self, original: np.ndarray, completed: np.ndarray, mask: np.ndarray) -> float:
        found = self.model.detect(completed)
        return float(found is not None and iou(found, self.rect) >= 0.5)
