"""The structure measure of `facecomp eval table`: dlib landmarks inside the hole, and face detection."""

import json
import math
import subprocess
import sys

import numpy as np
import pytest

from facecomp import masks
from facecomp.eval.landmarks import hole_landmark_error, inter_ocular
from facecomp.eval.methods import BASELINES

needs_faces = pytest.mark.skipif(not __import__("facecomp.faces").faces.available(),
                                 reason="needs the 'faces' extra (dlib-bin, face-recognition-models)")


def test_hole_error_counts_only_points_in_the_hole_in_inter_ocular_units():
    ref = np.full((68, 2), 110.0)  # jaw, brows, nose: far from both holes below
    ref[36:42] = (20.0, 50.0)  # left eye centre
    ref[42:48] = (60.0, 50.0)  # right eye centre: inter-ocular 40
    ref[48:68] = (40.0, 90.0)  # mouth
    assert inter_ocular(ref) == 40.0
    got = ref.copy()
    got[48:68] += (0.0, 8.0)  # the mouth moved 8 px = 0.2 inter-ocular
    got[36:42] += (100.0, 0.0)  # the eye moved a lot, but it is not in the hole
    hole = np.zeros((128, 128), np.float32)
    hole[80:100, 30:50] = 1  # around the mouth only
    assert hole_landmark_error(ref, got, hole) == pytest.approx(0.2)
    hole[:] = 0
    hole[0:5, 0:5] = 1
    assert math.isnan(hole_landmark_error(ref, got, hole))  # no landmark in the hole: no score


@needs_faces
def test_landmarks_see_a_missing_mouth(celeba):
    from facecomp.data.celeba import CelebAIndex
    from facecomp.eval.landmarks import FaceFound, LandmarkError, LandmarkModel
    from facecomp.images import read_rgb

    model = LandmarkModel()
    err, found = LandmarkError(model), FaceFound(model)
    errors, grey_errors = [], []
    for f in CelebAIndex.open(celeba).files("val", limit=6):
        img = read_rgb(f)
        h, w = img.shape[:2]
        mask = masks.occlusion("O6", w, h)
        err.begin(img)
        found.begin(img)
        assert err(img, img, mask) == 0.0 and found(img, img, mask) == 1.0
        grey = np.where(mask[..., None] > 0.5, 128, img).astype(np.uint8)
        errors.append(err(img, BASELINES["telea"](img, mask), mask))
        grey_errors.append(err(img, grey, mask))
    assert np.mean(grey_errors) > 0.05  # a grey lower half moves the mouth and chin points
    assert all(math.isfinite(e) for e in errors + grey_errors)


@needs_faces
def test_table_landmark_columns(celeba, generator_weights, tmp_path):  # noqa: F811
    out = tmp_path / "eval"
    r = subprocess.run([sys.executable, "-m", "facecomp", "eval", "table", "--model", str(generator_weights),
                        "--baselines", "telea", "--data", str(celeba), "--limit", "2", "--masks", "O3,O6",
                        "--metrics", "landmarks", "--out", str(out), "--no-progress"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    res = json.loads((out / "results.json").read_text())
    for o in ("O3", "O6"):
        for m in res["methods"]:
            assert res["summary"]["landmark_error"][o][m]["n"] == 2
            assert 0 <= res["summary"]["landmark_error"][o][m]["mean"] < 1
            assert res["summary"]["face_found"][o][m]["mean"] in (0.0, 0.5, 1.0)
    text = (out / "results.md").read_text()
    assert "Landmark error inside the hole" in text and "still detects" in text


def test_table_grid_has_a_row_per_face_and_mask(celeba, tmp_path):
    from PIL import Image

    from facecomp.cli import main

    out = tmp_path / "eval"
    assert main(["eval", "table", "--baselines", "telea", "--data", str(celeba), "--limit", "3", "--masks", "O3,O6",
                 "--resolution", "crop", "--metrics", "none", "--grid-faces", "3", "--out", str(out),
                 "--no-progress"]) == 0
    w, h = Image.open(out / "grid.png").size
    assert (w, h) == (128 * 4, 128 * 3 * 2)  # original | masked | telea | shipped; 3 faces x 2 masks
