"""``Completer.complete`` takes what users have (arrays, PIL images, paths), finds and aligns the
faces of unaligned photos as ``facecomp complete`` does, refuses a photo with no face in one named error,
and gives back what it was given."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from skimage import data as skdata

import facecomp
from facecomp import faces, masks
from facecomp.images import write_png

needs_faces = pytest.mark.skipif(not faces.available(), reason="needs the 'faces' extra (dlib-bin, "
                                 "face-recognition-models)")


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return skdata.astronaut()  # 512x512, public domain, one face: unaligned


def test_pil_and_paths_in_equal_the_array_path(completer, aligned_face, tmp_path):
    """An aligned 178x218 face: PIL in -> PIL out, paths in -> PIL out, the pixels of the array path."""
    m = masks.occlusion("O3", 178, 218)
    (expected,) = completer.complete(aligned_face, m, seed=2)
    assert isinstance(expected, np.ndarray)
    face_file, mask_file = tmp_path / "face.png", tmp_path / "mask.png"
    write_png(face_file, aligned_face)
    write_png(mask_file, (m * 255).astype(np.uint8))
    pil = Image.fromarray(aligned_face)
    for image, mask in [(pil, m), (pil, Image.fromarray((m * 255).astype(np.uint8))), (pil, "O3"),
                        (str(face_file), m), (face_file, mask_file), (str(face_file), str(mask_file))]:
        (out,) = completer.complete(image, mask, seed=2)
        assert isinstance(out, Image.Image) and out.mode == "RGB" and out.size == (178, 218)
        assert np.array_equal(np.asarray(out), expected), (type(image).__name__, type(mask).__name__)
    # an array with a named mask: the same as the mask drawn by hand
    assert np.array_equal(completer.complete(aligned_face, "O3", seed=2)[0], expected)
    outs = {b: completer.complete(pil, m, seed=2, samples=2, blend=b) for b in ("none", "poisson")}
    assert all(isinstance(o, Image.Image) for v in outs.values() for o in v) and len(outs["poisson"]) == 2


def test_odd_inputs_are_one_line(completer):
    with pytest.raises(ValueError, match="image must be .*a PIL image or a path, got list"):
        completer.complete([[1, 2, 3]], np.ones((1, 1)))
    with pytest.raises(ValueError, match="no such file"):
        completer.complete("no/such/face.jpg", "O3")
    with pytest.raises(ValueError, match="unknown align 'yes'"):
        completer.complete(np.zeros((218, 178, 3), np.uint8), "O3", align="yes")


@needs_faces
@pytest.mark.parametrize("kind", ["array", "pil", "path"])
def test_a_photo_without_a_face_is_refused_by_name(completer, kind, tmp_path):
    # a coffee cup at half size (300x200): where HOG finds nothing, dlib's CNN searches the whole photo
    # (~4 us a pixel on 2 cores), and this keeps it about a second
    cup = np.ascontiguousarray(skdata.coffee()[::2, ::2])
    image = {"array": cup, "pil": Image.fromarray(cup), "path": tmp_path / "cup.png"}[kind]
    write_png(tmp_path / "cup.png", cup)
    with pytest.raises(facecomp.NoFaceFound, match=r"no face found in this 300x200 photo.*align=False") as e:
        completer.complete(image, "O3", align="auto")
    assert isinstance(e.value, ValueError) and "\n" not in str(e.value)
    with pytest.raises(facecomp.NoFaceFound, match="too small to find a face in"):
        completer.complete(Image.new("RGB", (30, 30)), "O3")
    # align=False: the whole image is the face, as asked (nothing is looked for)
    (out,) = completer.complete(Image.fromarray(cup), masks.occlusion("O3", 300, 200), align=False)
    assert out.size == (300, 200)


@needs_faces
def test_an_unaligned_photo_is_aligned_completed_and_pasted_back(completer, astronaut):
    """The astronaut as a PIL image: its face is found and aligned, the eyes completed, the rest untouched;
    the same pixels as the CLI's path (Completer._complete, align auto) and as the array with align='auto'."""
    (out,) = completer.complete(Image.fromarray(astronaut), "O3", seed=1)
    assert isinstance(out, Image.Image) and out.size == (512, 512)
    out = np.asarray(out)
    cli = completer._complete(astronaut, "O3", seed=1, align="auto")
    assert cli.faces == 1 and np.array_equal(out, cli.images[0])
    assert np.array_equal(completer.complete(astronaut, "O3", seed=1, align="auto")[0], out)
    changed = (out != astronaut).any(-1)
    (matrix, found), = faces.align_faces(astronaut)
    ys, xs = np.nonzero(changed)
    eyes = found.points[36:48]
    assert changed.sum() > 500 and (xs.min(), ys.min()) >= tuple(eyes.min(0) - 40)
    assert (xs.max(), ys.max()) <= tuple(eyes.max(0) + 40)  # an eye band around the eyes, nothing else
    # align=True on an aligned crop also goes through detection: a face is found, and it completes
    full = completer._complete(astronaut[100:400, 100:350].copy(), "O6", align=True)
    assert full.faces == 1


@needs_faces
def test_the_detector_is_built_once_across_calls(completer, astronaut, tmp_path, monkeypatch):
    """dlib's three models (about half a second) load once per process, whatever the calls and inputs."""
    built = []

    class Counting(faces.LandmarkDetector):
        def __init__(self, *args, **kwargs):
            built.append(kwargs)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(faces, "LandmarkDetector", Counting)
    faces.shared_detector.cache_clear()
    try:
        write_png(tmp_path / "a.png", astronaut)
        completer.complete(Image.fromarray(astronaut), "O3")
        completer.complete(tmp_path / "a.png", "O5", samples=2)
        completer.complete(astronaut, "O6", align="auto")
        completer._complete(astronaut, "O4", align=True)
        assert len(built) == 1
    finally:
        faces.shared_detector.cache_clear()  # later tests build the real class again


@needs_faces
def test_the_readme_python_example_runs_as_written(tmp_path, monkeypatch, capsys):
    """The README's Python block, with the shipped model: the astronaut completed, the coffee cup refused."""
    from .conftest import REPO

    text = (REPO / "README.md").read_text()
    start = text.index("# Python: a PIL image")
    code = text[start:text.index("```", start)]
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {})
    out = np.asarray(Image.open(tmp_path / "astronaut_o3.png"))
    astronaut = skdata.astronaut()
    changed = (out != astronaut).any(-1)
    assert out.shape == astronaut.shape and 0 < changed.mean() < 0.05  # an eye band on one face
    assert "no face found in this 600x400 photo" in capsys.readouterr().out
