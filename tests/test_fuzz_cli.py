"""Fuzzing `facecomp complete`: a completion at the input's size with every pixel outside the mask
unchanged, or a non-zero exit with one line on stderr, never a traceback. Run in-process through
``facecomp.cli.main`` (the same code as the console script, without a Python start per example), plus real
subprocess runs with the shipped model."""

from __future__ import annotations

import contextlib
import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from facecomp import faces, images, layout, masks

from .fuzz_inputs import (
    ALIGNED,
    MASK_MODES,
    bomb,
    examples,
    mask_arrays,
    mask_file,
    photo_files,
    pixels,
    seeds,
    small_sizes,
)


def run_main(args: list[str]) -> tuple[int, str, str]:
    from facecomp.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main(["complete", *(str(a) for a in args)])
        except SystemExit as e:  # argparse: a bad option
            rc = e.code if isinstance(e.code, int) else 2
    return rc, out.getvalue(), err.getvalue()


def assert_one_line_error(rc: int, stderr: str) -> str:
    assert rc != 0
    assert "Traceback" not in stderr, stderr
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("facecomp: error: "), stderr
    return lines[0]


@st.composite
def mask_specs(draw, w: int, h: int, folder: Path) -> tuple[str, np.ndarray | None]:
    """(--mask value, the hole it means in input pixels or None where it depends on faces found)."""
    kind = draw(st.sampled_from(("preset", "box", "file", "file", "badfile", "name")))
    if kind == "preset":
        name = draw(st.sampled_from(tuple(masks.OCCLUSIONS)))
        return name, None
    if kind == "box":
        a = [draw(st.integers(-20, max(w, h) + 20)) for _ in range(4)]
        spec = draw(st.sampled_from((f"box:{a[0]},{a[1]},{a[2]},{a[3]}", f"box:{a[0]},{a[1]}", "box:a,b,c,d")))
        try:
            return spec, masks.from_spec(spec, w, h) > 0.5
        except ValueError:
            return spec, None
    if kind == "name":
        return draw(st.sampled_from(("O0", "O7", "o3", "", "-", "box", "nonexistent.png"))), None
    path = folder / draw(st.sampled_from(("mask.png", "mask.jpg", "mask")))
    if kind == "badfile":
        path.write_bytes(draw(st.sampled_from((b"", b"not a mask", b"\x89PNG\r\n\x1a\n\0\0"))))
        return str(path), None
    mw, mh = (w, h) if draw(st.booleans()) else draw(small_sizes)
    m = draw(mask_arrays(mw, mh))
    path.write_bytes(mask_file(m, draw(st.sampled_from(MASK_MODES))))
    return str(path), images.read_gray(path) > 127


def check_outputs(outs: list[Path], src: bytes, hole: np.ndarray | None) -> None:
    image = images.decode(src)
    for o in outs:
        got = images.read_rgb(o)
        assert got.shape == image.shape
        if hole is not None and hole.shape == image.shape[:2]:
            assert np.array_equal(got[~hole], image[~hole])


@settings(max_examples=examples(60))
@given(photo=photo_files(small_sizes), data=st.data())
def test_cli_completes_or_says_one_line(generator_weights, tmp_path_factory, photo, data):  # noqa: F811
    folder = tmp_path_factory.mktemp("cli")
    src = folder / data.draw(st.sampled_from(("in.png", "in.jpg", "in.webp", "in.gif", "in.txt", "in")), "name")
    src.write_bytes(photo.data)
    try:
        h, w = images.decode(photo.data).shape[:2]
    except ValueError:
        w, h = 178, 218
    spec, hole = data.draw(mask_specs(w, h, folder), "mask")
    samples = data.draw(st.one_of(st.sampled_from((1, 1, 2)), st.sampled_from((-1, 0, 64, 65))), "samples")
    align = data.draw(st.sampled_from(("auto", "none")), "align")
    if hole is None and (align == "none" or (w, h) == ALIGNED) and spec.upper() in masks.OCCLUSIONS:
        with contextlib.suppress(ValueError):  # on a tiny image the box rounds to nothing: refused
            hole = masks.occlusion(spec, w, h) > 0.5
    out = folder / "out" / "o.png"
    args = [src, "--mask", spec, "--model", generator_weights, "--seed", data.draw(seeds, "seed"),
            "--samples", samples, "--align", align, "--blend", data.draw(st.sampled_from(("none", "poisson"))),
            "-o", out]
    rc, stdout, stderr = run_main(args)
    written = sorted(out.parent.glob("*.png")) if out.parent.is_dir() else []
    if rc != 0:
        assert_one_line_error(rc, stderr)
        assert not written
        return
    assert "Traceback" not in stderr
    assert len(written) == samples and stdout.split() == [str(p) for p in written]
    check_outputs(written, photo.data, hole)
    x0, y0, x1, y1 = layout.face_box(w, h)
    if hole is not None and (align == "none" or (w, h) == ALIGNED) and hole.shape == (h, w):
        off = int(hole.sum() - hole[y0:y1, x0:x1].sum())
        assert (f"{off} masked pixel(s) lie where the model cannot see" in stderr) == (off > 0), stderr


def test_cli_pixel_limit_and_folder_of_odd_files(generator_weights, tmp_path):  # noqa: F811
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "bomb.png").write_bytes(bomb(40_000_000))
    (folder / "one.png").write_bytes(mask_file(np.ones((1, 1)), "RGB"))
    (folder / "face.png").write_bytes(mask_file(pixels(*ALIGNED, 0, "smooth")[..., 0] / 255, "RGB"))
    rc, stdout, stderr = run_main([folder, "--mask", "O3", "--model", generator_weights, "--out-dir", tmp_path / "o"])
    assert rc == 1 and "2 of 3 input(s) failed" in stderr and "Traceback" not in stderr
    assert "pixel limit" in stderr and "the photo is 1x1: too small to find a face in" in stderr
    assert [p.name for p in (tmp_path / "o").iterdir()] == ["face.png"]


def _subprocess(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "facecomp", "complete", *map(str, args)], capture_output=True,
                          text=True, timeout=300)


def test_shipped_model_one_pixel_png_and_a_stroke_off_the_face_box(tmp_path):
    """The two inputs users reported, through the real console command and the shipped model: the 1x1 PNG (once
    a dlib traceback) is one line; a stroke past the face box (refused whole before) is completed, and the
    part the model cannot see is inpainted and counted."""
    one = tmp_path / "one_pixel.png"
    one.write_bytes(mask_file(np.ones((1, 1)), "RGB"))
    r = _subprocess(one, "--mask", "O3", "-o", tmp_path / "a.png")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    if faces.available():
        assert r.stderr.strip().splitlines() == [
            "facecomp: error: the photo is 1x1: too small to find a face in (the face detector needs at least 40 px "
            "on each side); to complete the whole image as one face, use align none (--align none)"]
    face = tmp_path / "face.png"
    image = pixels(*ALIGNED, 3, "smooth")
    images.write_png(face, image)
    m = np.zeros((218, 178), np.float32)
    m[190:210, 60:120] = 1
    images.write_png(tmp_path / "stroke.png", (m * 255).astype(np.uint8))
    r = _subprocess(face, "--mask", tmp_path / "stroke.png", "-o", tmp_path / "b.png")
    assert r.returncode == 0, r.stderr
    assert "540 masked pixel(s) lie where the model cannot see (off the face box)" in r.stderr
    out = images.read_rgb(tmp_path / "b.png")
    assert np.array_equal(out[m == 0], image[m == 0]) and (out[m > 0] != image[m > 0]).any(axis=-1).mean() > 0.9


@pytest.mark.parametrize("w, h", [(40, 30)])
def test_small_photo_with_align_none_is_completed(generator_weights, tmp_path, w, h):  # noqa: F811
    photo = tmp_path / "small.png"
    images.write_png(photo, pixels(w, h, 0, "noise"))
    rc, _, stderr = run_main([photo, "--mask", "box:5,5,20,20", "--model", generator_weights, "-o", tmp_path / "a.png"])
    line = assert_one_line_error(rc, stderr)
    assert "40x30: too small to find a face in" in line or not faces.available()
    rc, stdout, stderr = run_main([photo, "--mask", "box:5,5,20,20", "--model", generator_weights, "--align", "none",
                                   "-o", tmp_path / "b.png"])
    assert rc == 0, stderr
    check_outputs([tmp_path / "b.png"], photo.read_bytes(), masks.box(w, h, 5, 5, 20, 20) > 0.5)
