"""The face-recognition model: a face's identity as dlib's 128-D ResNet embedding, what identity distance,
recognition and the training validation's identity score are measured with (the paper used OpenFace's, not to be had).

Weights: ``dlib_face_recognition_resnet_model_v1.dat`` and the 5-point landmark model from the
``face-recognition-models`` package (the ``faces`` extra), loaded offline. dlib documents a
distance of 0.6 as its same-person threshold (99.38% on LFW).

A completed face and its original share their geometry pixel for pixel, so the face is found and
aligned once, on the original, and both are embedded with that alignment: the distance measures
what the completion put in the hole, not whether a detector copes with a half-filled face.
"""

from __future__ import annotations

import numpy as np

from facecomp.faces import import_dlib, model_dir

SAME_PERSON_THRESHOLD = 0.6


class IdentityEmbedder:
    def __init__(self, upsample: int = 1):
        dlib = import_dlib()
        folder = model_dir()
        self.upsample = upsample
        self.detector = dlib.get_frontal_face_detector()
        self.shape5 = dlib.shape_predictor(str(folder / "shape_predictor_5_face_landmarks.dat"))
        self.net = dlib.face_recognition_model_v1(str(folder / "dlib_face_recognition_resnet_model_v1.dat"))
        self._dlib = dlib

    def alignment(self, rgb: np.ndarray):
        """5-point landmarks of the largest face (a dlib full_object_detection), or None."""
        rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
        found = list(self.detector(rgb, self.upsample))
        if not found:
            h, w = rgb.shape[:2]  # an aligned crop the detector misses: the face fills the frame
            found = [self._dlib.rectangle(int(0.1 * w), int(0.1 * h), int(0.9 * w), int(0.9 * h))]
        rect = max(found, key=lambda r: r.width() * r.height())
        return self.shape5(rgb, rect)

    def embed(self, rgb: np.ndarray, alignment=None) -> np.ndarray:
        """[128] float64 embedding of the face in ``rgb`` (aligned by ``alignment`` if given)."""
        rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
        shape = alignment if alignment is not None else self.alignment(rgb)
        return np.asarray(self.net.compute_face_descriptor(rgb, shape, 0), dtype=np.float64)

    def distance(self, original: np.ndarray, completed: np.ndarray) -> float:
        shape = self.alignment(original)
        return float(np.linalg.norm(self.embed(original, shape) - self.embed(completed, shape)))
