"""Face detection and 68-point landmarks with dlib, offline.

The weights ship inside the ``face-recognition-models`` PyPI package (installed by the ``faces``
extra together with ``dlib-bin``, dlib's prebuilt wheels). That package's ``__init__`` imports
``pkg_resources``, which new setuptools no longer has, so its ``models/`` folder is located with
``importlib.util.find_spec`` without importing it.

Licence note: dlib's 68-point predictor was trained on the iBUG 300-W data, whose terms exclude
commercial use; anything derived from these landmarks (our parsing labels, the parsing network)
inherits that restriction.

Landmark numbering (iBUG 68, as seen in the image): jaw 0-16 (image left to right), brows 17-21
(image left) and 22-26 (image right), nose bridge 27-30, nostrils 31-35, eyes 36-41 (image left)
and 42-47 (image right), outer lips 48-59, inner lips 60-67.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import pickle
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from facecomp.runtime import MissingExtra, require

MODELS_PACKAGE = "face_recognition_models"
# dlib's detectors look for faces of about 80 px and search at twice the photo's size at most (upsample 1),
# so no face under about 40 px is found. A photo whose short side is under that is refused up front: on
# such photos dlib's CNN does not merely find nothing, it fails (1x1: "Filter windows must be small enough
# to fit into the padded image"; 300x2: an out-of-range offset).
MIN_PHOTO_SIDE = 40
# The CNN fallback costs about 4 us per searched pixel on 2 CPU cores (4 s for 1000x1000, 16 s for
# 2000x2000 — measured on a blank photo, where HOG finds nothing and the CNN always runs). Its search
# image is scaled down to this many pixels, so a large photo without a face HOG can see costs seconds, not
# minutes; a face must then be about 8% of the photo's side for the CNN to find it (HOG, at full size, still
# finds smaller ones). The landmarks are fitted on the full-size photo either way.
CNN_MAX_PIXELS = 1_000_000
WHAT = "face detection and landmarks (dlib)"


class NoFaceFound(ValueError):
    """A photo to be aligned holds no face the detectors find (or is too small to hold one). Its message says
    what to do instead: give an aligned face crop, or take the whole image as the face (``align=False``)."""


def model_dir() -> Path:
    """The ``models/`` folder of face-recognition-models, found without importing the package."""
    spec = importlib.util.find_spec(MODELS_PACKAGE)
    if spec is None or spec.origin is None:
        raise MissingExtra("faces", WHAT, MODELS_PACKAGE)
    folder = Path(spec.origin).parent / "models"
    if not folder.is_dir():
        raise MissingExtra("faces", WHAT, f"{folder} of {MODELS_PACKAGE}")
    return folder


def import_dlib():
    return require("dlib", "faces", WHAT)


def available() -> bool:
    try:
        import_dlib()
        model_dir()
    except MissingExtra:
        return False
    return True


@dataclass(frozen=True)
class Landmarks:
    points: np.ndarray  # [68, 2] float32, (x, y) in image pixels
    box: tuple[int, int, int, int]  # detector box (left, top, right, bottom)
    detector: str  # "hog" | "cnn"


def plausible(points: np.ndarray, width: int, height: int) -> bool:
    """Reject fits a parsing label could not be drawn from: points far outside the image, or
    features in the wrong order (eyes above nose above mouth, left eye left of right eye)."""
    margin = 0.25 * max(width, height)
    if (points < -margin).any() or (points[:, 0] > width + margin).any() or (points[:, 1] > height + margin).any():
        return False
    left_eye, right_eye = points[36:42].mean(0), points[42:48].mean(0)
    nose_tip, mouth = points[30], points[48:68].mean(0)
    return bool(left_eye[0] < right_eye[0] and max(left_eye[1], right_eye[1]) < nose_tip[1] < mouth[1])


@functools.cache
def _cnn_model():
    return import_dlib().cnn_face_detection_model_v1(str(model_dir() / "mmod_human_face_detector.dat"))


def cnn_search(rgb: np.ndarray, upsample: int) -> list[tuple[int, int, int, int]]:
    """dlib's CNN (MMOD) face boxes as (left, top, right, bottom), in this process."""
    return [(d.rect.left(), d.rect.top(), d.rect.right(), d.rect.bottom()) for d in _cnn_model()(rgb, upsample)]


class CNNProcess:
    """dlib's CNN face detector in a child process (``python -m facecomp.faces``), started on first use.

    dlib's CNN holds the GIL for its whole search: a 500x500 photo took 20 s on the loaded 2 cores with
    the main thread given no turn, which in-process stalls every thread of a serve worker for seconds.
    A plain child over pipes, not multiprocessing: its spawn start re-runs the user's script in the
    child, which fails in any script without an ``if __name__ == "__main__"`` guard. One search at a
    time; a child that dies is replaced on the next search, and ends when this process closes its pipe.
    """

    def __init__(self):
        self._proc: subprocess.Popen | None = None
        self._lock = threading.Lock()

    def search(self, rgb: np.ndarray, upsample: int) -> list[tuple[int, int, int, int]]:
        with self._lock:
            if self._proc is None or self._proc.poll() is not None:
                self._proc = subprocess.Popen([sys.executable, "-m", "facecomp.faces"], stdin=subprocess.PIPE,
                                              stdout=subprocess.PIPE)
            try:
                pickle.dump((np.ascontiguousarray(rgb), upsample), self._proc.stdin)
                self._proc.stdin.flush()
                ok, value = pickle.load(self._proc.stdout)
            except (EOFError, OSError, pickle.UnpicklingError) as e:
                self._proc.kill()
                self._proc = None
                raise RuntimeError(f"the CNN face detector's process ended ({type(e).__name__})") from None
        if not ok:
            raise RuntimeError(value)
        return value


def _serve_cnn_searches() -> None:
    """The child's loop: (photo, upsample) in on stdin, (ok, boxes or error text) out, until stdin closes."""
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # anything printed goes to stderr, not into the answers
    while True:
        try:
            rgb, upsample = pickle.load(sys.stdin.buffer)
        except EOFError:
            return
        try:
            answer = (True, cnn_search(rgb, upsample))
        except Exception as e:  # dlib's own checks: raised again in the parent
            answer = (False, str(e).strip() or type(e).__name__)
        pickle.dump(answer, out)
        out.flush()


class LandmarkDetector:
    """Largest face's 68 landmarks. dlib's HOG detector first (about 10 ms on an aligned CelebA
    face); where it finds nothing, dlib's CNN (MMOD) detector, slower but better on turned and
    occluded faces. Returns None when neither finds a face or the fit is implausible."""

    def __init__(self, upsample: int = 0, cnn_fallback: bool = True):
        dlib = import_dlib()
        folder = model_dir()
        self._dlib = dlib
        self.upsample = upsample
        self.hog = dlib.get_frontal_face_detector()
        self.cnn = CNNProcess() if cnn_fallback else None
        self.predictor = dlib.shape_predictor(str(folder / "shape_predictor_68_face_landmarks.dat"))
        # One detector serves every thread of a process (serve's workers): dlib does not promise that
        # its models are safe to run concurrently, and a HOG search or a landmark fit is tens of ms. The
        # CNN (seconds) has its own lock and process, so it holds up no other photo's HOG search.
        self._lock = threading.Lock()

    def boxes(self, rgb: np.ndarray) -> tuple[list, str]:
        with self._lock:
            found = list(self.hog(rgb, self.upsample))
        if found or self.cnn is None:
            return found, "hog"
        import cv2

        up = max(self.upsample, 1)
        h, w = rgb.shape[:2]
        scale = min(1.0, (CNN_MAX_PIXELS / (w * h * 4**up)) ** 0.5)
        sw, sh = round(w * scale), round(h * scale)
        if min(sw, sh) < MIN_PHOTO_SIDE:  # a sliver of a panorama: at this scale there is no face to find
            return [], "cnn"
        small = rgb if scale == 1.0 else cv2.resize(rgb, (sw, sh), interpolation=cv2.INTER_AREA)
        rect = self._dlib.rectangle
        return [rect(round(x0 / scale), round(y0 / scale), round(x1 / scale), round(y1 / scale))
                for x0, y0, x1, y1 in self.cnn.search(small, up)], "cnn"

    def all(self, rgb: np.ndarray) -> list[Landmarks]:
        """Every face with a plausible fit, largest first. Raises ``ValueError`` for a photo too small to search
        (:func:`check_searchable`)."""
        rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
        h, w = rgb.shape[:2]
        check_searchable(w, h)
        try:
            found, kind = self.boxes(rgb)
        except RuntimeError as e:  # dlib's own checks; the size guard above avoids the ones we know of
            reason = str(e).strip().splitlines()[-1]
            raise ValueError(f"face detection failed on this {w}x{h} photo: {reason}") from None
        out = []
        for rect in sorted(found, key=lambda r: -r.width() * r.height()):
            with self._lock:
                shape = self.predictor(rgb, rect)
            pts = np.array([[shape.part(i).x, shape.part(i).y] for i in range(68)], dtype=np.float32)
            if plausible(pts, w, h):
                out.append(Landmarks(pts, (rect.left(), rect.top(), rect.right(), rect.bottom()), kind))
        return out

    def __call__(self, rgb: np.ndarray) -> Landmarks | None:
        """The largest face, or None."""
        found = self.all(rgb)
        return found[0] if found else None


def check_searchable(width: int, height: int) -> None:
    """A one-line ``NoFaceFound`` (a ValueError) for a photo too small to hold a face the detectors can find."""
    if min(width, height) < MIN_PHOTO_SIDE:
        raise NoFaceFound(f"the photo is {width}x{height}: too small to find a face in (the face detector needs "
                          f"at least {MIN_PHOTO_SIDE} px on each side); to complete the whole image as one face, "
                          "use align none (--align none)")


# --- alignment to the training layout (photos in the wild) -------------------------------------

# Five points — eye centres (image left, right), nose tip, mouth corners (left, right) — where they sit
# in a 178x218 CelebA-aligned face: the mean of dlib's 68-point fits on 496 train-partition faces
# (every 9th; standard deviations 1.2-1.5 px for the eyes, which CelebA aligns on, 3-7 px for the rest).
TEMPLATE_5 = np.array([[69.4, 112.7], [107.7, 112.8], [87.9, 135.0], [71.1, 152.8], [106.0, 152.8]], np.float64)


def five_points(points68: np.ndarray) -> np.ndarray:
    p = np.asarray(points68, np.float64)
    return np.stack([p[36:42].mean(0), p[42:48].mean(0), p[30], p[48], p[54]])


def alignment_matrix(points68: np.ndarray) -> np.ndarray:
    """2x3 similarity (rotation, uniform scale, shift) taking photo pixels to the 178x218 aligned
    layout, fitted by least squares from the five points to TEMPLATE_5."""
    import cv2

    m, _ = cv2.estimateAffinePartial2D(five_points(points68), TEMPLATE_5, method=cv2.LMEDS)
    if m is None:
        raise ValueError("could not fit an alignment to the face's landmarks")
    return m


@functools.cache
def shared_detector(upsample: int = 0) -> LandmarkDetector:
    """This process's detector for ``upsample``, built on first use: loading dlib's three models costs
    about half a second, which every photo of a folder run and every serve request paid before."""
    return LandmarkDetector(upsample=upsample)


def detector_for(photo: np.ndarray) -> LandmarkDetector:
    """The shared detector for ``photo``'s size: small photos are searched at twice their size (HOG finds
    faces from about 80 px across)."""
    return shared_detector(upsample=1 if max(photo.shape[:2]) < 500 else 0)


def align_faces(photo: np.ndarray, detector: LandmarkDetector | None = None) -> list[tuple[np.ndarray, Landmarks]]:
    """(photo -> aligned matrix, landmarks) for every face found, largest first, by ``detector`` (default:
    ``detector_for(photo)``)."""
    check_searchable(photo.shape[1], photo.shape[0])  # before building a detector: a refusal costs nothing
    if detector is None:
        detector = detector_for(photo)
    return [(alignment_matrix(f.points), f) for f in detector.all(photo)]


if __name__ == "__main__":  # the CNN process of CNNProcess
    _serve_cnn_searches()
