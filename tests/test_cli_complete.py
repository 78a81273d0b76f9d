"""`facecomp complete` as a user runs it, including every kind of bad input."""

import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from facecomp import images, masks


def _run(*args):
    return subprocess.run([sys.executable, "-m", "facecomp", "complete", *map(str, args)],
                          capture_output=True, text=True)


def _one_line_error(r, needle):
    assert r.returncode != 0
    assert "Traceback" not in r.stderr, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("facecomp: error:")]
    assert len(lines) == 1 and needle in lines[0], r.stderr


@pytest.fixture(scope="module")
def faces(celeba, tmp_path_factory):
    from facecomp.data.celeba import CelebAIndex

    folder = tmp_path_factory.mktemp("faces")
    for f in CelebAIndex.open(celeba).files("val", limit=3):
        shutil.copy(f, folder / f.name)
    return folder


def test_complete_files_samples_and_mask_image(faces, generator_weights, tmp_path):  # noqa: F811
    face = sorted(faces.iterdir())[0]
    r = _run(face, "--mask", "O3", "--model", generator_weights, "--samples", 2, "--blend", "poisson",
             "-o", tmp_path / "out.png")
    assert r.returncode == 0, r.stderr
    original = images.read_rgb(face)
    m = masks.occlusion("O3", 178, 218) > 0.5
    for k in range(2):
        out = images.read_rgb(tmp_path / f"out_s{k}.png")
        assert np.array_equal(out[~m], original[~m])
    user = np.zeros((218, 178), np.uint8)
    user[120:140, 60:120] = 255
    Image.fromarray(user).save(tmp_path / "mask.png")
    r = _run(face, "--mask", tmp_path / "mask.png", "--model", generator_weights, "-o", tmp_path / "u.png")
    assert r.returncode == 0, r.stderr
    out = images.read_rgb(tmp_path / "u.png")
    assert np.array_equal(out[user == 0], original[user == 0]) and not np.array_equal(out, original)


def test_directory_run_completes_good_files_and_lists_bad(faces, generator_weights, tmp_path):  # noqa: F811
    folder = tmp_path / "in"
    shutil.copytree(faces, folder)
    good = sorted(folder.iterdir())
    data = good[0].read_bytes()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 3])
    (folder / "text.png").write_text("hello")
    r = _run(folder, "--mask", "O6", "--model", generator_weights, "--out-dir", tmp_path / "out")
    assert r.returncode == 1
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(f"{p.stem}.png" for p in good)
    assert "2 of 5 input(s) failed" in r.stderr and "truncated.jpg" in r.stderr and "text.png" in r.stderr
    assert "Traceback" not in r.stderr


def test_bad_inputs_one_line_each(faces, generator_weights, tmp_path):  # noqa: F811
    face = sorted(faces.iterdir())[0]
    out = tmp_path / "o.png"
    _one_line_error(_run(tmp_path / "missing.jpg", "--mask", "O1", "--model", generator_weights, "-o", out),
                    "no such file")
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(face.read_bytes()[:2000])
    _one_line_error(_run(cut, "--mask", "O1", "--model", generator_weights, "-o", out), "truncated")
    text = tmp_path / "notes.jpg"
    text.write_text("not a jpeg")
    _one_line_error(_run(text, "--mask", "O1", "--model", generator_weights, "-o", out), "not an image")
    bomb = tmp_path / "bomb.png"
    Image.new("1", (12000, 12000)).save(bomb)  # 144 megapixels in a few kB
    assert bomb.stat().st_size < 100_000
    _one_line_error(_run(bomb, "--mask", "O1", "--model", generator_weights, "-o", out), "pixel")
    _one_line_error(_run(face, "--mask", "O9", "--model", generator_weights, "-o", out), "unknown mask 'O9'")
    empty = tmp_path / "empty.png"
    Image.fromarray(np.zeros((218, 178), np.uint8)).save(empty)
    _one_line_error(_run(face, "--mask", empty, "--model", generator_weights, "-o", out), "mask is empty")
    full = tmp_path / "full.png"
    Image.fromarray(np.full((218, 178), 255, np.uint8)).save(full)
    _one_line_error(_run(face, "--mask", full, "--model", generator_weights, "-o", out), "covers the whole image")
    small = tmp_path / "small.png"
    Image.fromarray(np.full((64, 64), 255, np.uint8)).save(small)
    _one_line_error(_run(face, "--mask", small, "--model", generator_weights, "-o", out),
                    "64x64 but the image is 178x218")
    assert not out.exists()


def test_bad_weights_one_line_each(faces, generator_weights, tmp_path):  # noqa: F811
    face = sorted(faces.iterdir())[0]
    out = tmp_path / "o.png"
    data = bytearray(generator_weights.read_bytes())
    data[-64] ^= 0x55
    tampered = tmp_path / "tampered.safetensors"
    tampered.write_bytes(bytes(data))
    _one_line_error(_run(face, "--mask", "O1", "--model", tampered, "-o", out), "checksum mismatch")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 100)
    _one_line_error(_run(face, "--mask", "O1", "--model", junk, "-o", out), "not a readable safetensors")
    # a generator file whose config says one shape and whose tensors have another
    from facecomp.config import load_config, to_dict
    from facecomp.models import Generator
    from facecomp.weights import save_tensors

    cfg = load_config("smoke")
    other = tmp_path / "other.safetensors"
    tensors = Generator(load_config("smoke", ["generator.bottleneck=32"]).generator).state_dict()
    save_tensors(other, tensors, "generator", {"config": to_dict(cfg.generator)})
    _one_line_error(_run(face, "--mask", "O1", "--model", other, "-o", out), "has shape")
    _one_line_error(_run(face, "--mask", "O1", "--model", tmp_path / "none.safetensors", "-o", out),
                    "no such weights file")


def test_output_formats(face_files, generator_weights, tmp_path):  # noqa: F811
    from facecomp.cli import main

    src = str(face_files[0])
    assert main(["complete", src, "--mask", "O3", "--model", str(generator_weights), "--out-dir",
                 str(tmp_path / "w"), "--output-format", "webp", "--samples", "2"]) == 0
    outs = sorted((tmp_path / "w").iterdir())
    assert [p.suffix for p in outs] == [".webp", ".webp"]
    assert all(Image.open(p).format == "WEBP" and Image.open(p).size == (178, 218) for p in outs)
    assert main(["complete", src, "--mask", "O3", "--model", str(generator_weights), "-o",
                 str(tmp_path / "x.jpg")]) == 0
    assert Image.open(tmp_path / "x.jpg").format == "JPEG"  # the format follows -o's suffix
    assert main(["complete", src, "--mask", "O3", "--model", str(generator_weights), "-o", str(tmp_path / "y.png"),
                 "--output-format", "jpg"]) == 2  # a PNG name with JPEG bytes: refused in one line


def test_mask_folder_pairs_masks_with_inputs_by_name(face_files, generator_weights, tmp_path, capsys):  # noqa: F811
    from facecomp.cli import main

    inputs, mask_dir = tmp_path / "in", tmp_path / "masks"
    inputs.mkdir()
    mask_dir.mkdir()
    for i, f in enumerate(face_files[:3]):
        shutil.copy(f, inputs / f"face{i}.jpg")
    boxes = {"face0": masks.occlusion("O3", 178, 218), "face1": masks.occlusion("O6", 178, 218)}
    for name, m in boxes.items():
        images.write_png(mask_dir / f"{name}.png", (m * 255).astype(np.uint8))
    code = main(["complete", str(inputs), "--mask", str(mask_dir), "--model", str(generator_weights),
                 "--out-dir", str(tmp_path / "out")])
    assert code != 0 and "face2.jpg: no mask named face2.* in" in capsys.readouterr().err  # the unpaired one
    for name, m in boxes.items():  # each paired input changed exactly under its own mask
        src = images.read_rgb(inputs / f"{name}.jpg")
        out = images.read_rgb(tmp_path / "out" / f"{name}.png")
        changed = (out != src).any(axis=2)
        assert changed.any() and not changed[m < 0.5].any()
