"""Evaluation: metrics on constructed images, baselines keep known pixels, the table command's files."""

import json
import math
import subprocess
import sys

import numpy as np
import pytest

from facecomp import masks, metrics
from facecomp.eval.methods import BASELINES, model_name


def test_metrics_on_constructed_images():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (64, 48, 3), dtype=np.uint8)
    assert metrics.ssim(a, a) == pytest.approx(1.0)
    assert metrics.psnr(a, a) == math.inf
    b = a.astype(np.int16)
    b[::2] += 10  # half the pixels off by exactly 10: MSE = 50
    b = np.clip(b, 0, 255).astype(np.uint8)
    exact = a.astype(np.float64) - b
    mse = np.mean(exact**2)
    assert metrics.psnr(a, b) == pytest.approx(10 * np.log10(255**2 / mse))
    m = np.zeros((64, 48), np.float32)
    m[::2] = 1  # the hole is exactly the changed rows
    hole_mse = np.mean(exact[::2] ** 2)
    assert metrics.psnr_hole(a, b, m) == pytest.approx(10 * np.log10(255**2 / hole_mse))
    assert metrics.ssim(a, b) < 1


def test_sharpness_ratio_tells_blur_from_noise(aligned_face):
    import cv2

    face = aligned_face
    m = masks.occlusion("O6", face.shape[1], face.shape[0])
    hole = m[..., None] > 0.5
    assert metrics.sharpness(face, face, m) == pytest.approx(1.0)
    blurred = np.where(hole, cv2.GaussianBlur(face, (0, 0), 3), face).astype(np.uint8)
    noise = np.random.default_rng(0).integers(0, 256, face.shape, dtype=np.uint8)
    noisy = np.where(hole, noise, face).astype(np.uint8)
    assert metrics.sharpness(blurred, face, m) < 0.5 < 2 < metrics.sharpness(noisy, face, m)
    flat = np.full_like(face, 128)
    assert math.isnan(metrics.sharpness(face, flat, m))


def test_summary_interval_and_infinities():
    s = metrics.summary([1.0, 2.0, 3.0, math.inf])
    assert s["mean"] == 2.0 and s["n"] == 3 and s["non_finite"] == 1
    assert s["ci95"] == pytest.approx(4.302652729911275 * 1.0 / math.sqrt(3))  # t(0.975, 2) * sd / sqrt(n)


@pytest.mark.parametrize("name", list(BASELINES))
def test_baselines_keep_known_pixels(name):
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (218, 178, 3), dtype=np.uint8)
    m = masks.occlusion("O3", 178, 218)
    out = BASELINES[name](img, m)
    assert np.array_equal(out[m < 0.5], img[m < 0.5]) and not np.array_equal(out, img)


def test_model_names():
    assert model_name("a=runs/x") == ("a", "runs/x")
    assert model_name("runs/s1") == ("s1", "runs/s1")


def test_table_command_writes_its_files(celeba, generator_weights, tmp_path):  # noqa: F811
    out = tmp_path / "eval"
    r = subprocess.run([sys.executable, "-m", "facecomp", "eval", "table", "--model", f"smoke={generator_weights}",
                        "--data", str(celeba), "--limit", "3", "--blend", "poisson", "--out", str(out),
                        "--no-progress"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    res = json.loads((out / "results.json").read_text())
    assert res["methods"] == ["noise", "telea", "ns", "smoke", "smoke+poisson"]
    assert res["masks"] == ["O1", "O2", "O3", "O4", "O5", "O6"] and res["faces"] == 3
    for key in ("ssim", "psnr", "psnr_hole", "sharpness"):
        for o in res["masks"]:
            for method in res["methods"]:
                assert res["summary"][key][o][method]["n"] == 3
    md = (out / "results.md").read_text()
    assert "| O3 (both eyes) |" in md and "PSNR inside the hole" in md and "Sharpness inside the hole" in md
    sharp = res["summary"]["sharpness"]["O6"]
    assert sharp["telea"]["mean"] < 0.8 < 1.5 < sharp["noise"]["mean"]  # Telea smears, noise fill is noise
    from facecomp.images import read_rgb

    grid = read_rgb(out / "grid.png")
    assert grid.shape == (2 * 6 * 218, 7 * 178, 3)  # 2 faces x 6 masks; original, masked, 5 methods
    crop = subprocess.run([sys.executable, "-m", "facecomp", "eval", "table", "--model", str(generator_weights),
                           "--baselines", "telea", "--data", str(celeba), "--limit", "2", "--resolution", "crop",
                           "--masks", "O4", "--out", str(tmp_path / "crop"), "--no-progress"],
                          capture_output=True, text=True)
    assert crop.returncode == 0, crop.stderr
    assert read_rgb(tmp_path / "crop" / "grid.png").shape == (2 * 128, 4 * 128, 3)


def test_table_workers_give_the_same_table(celeba, generator_weights, tmp_path):  # noqa: F811
    # Shards are scored in separate processes and joined in face order: every summary, the face
    # count and the grid (its first 3 faces span both shards of 5 faces) equal the one-process run's.
    runs = {}
    for workers in (1, 2):
        out = tmp_path / f"w{workers}"
        r = subprocess.run([sys.executable, "-m", "facecomp", "eval", "table", "--model", f"smoke={generator_weights}",
                            "--baselines", "noise,telea", "--data", str(celeba), "--limit", "5", "--masks", "O2,O4",
                            "--blend", "poisson", "--grid-faces", "3", "--metrics", "none", "--workers", str(workers),
                            "--out", str(out), "--no-progress"], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        runs[workers] = json.loads((out / "results.json").read_text())
    assert runs[2] == runs[1] and runs[2]["faces"] == 5
    from facecomp.images import read_rgb

    one, two = read_rgb(tmp_path / "w1" / "grid.png"), read_rgb(tmp_path / "w2" / "grid.png")
    assert one.shape == (3 * 2 * 218, 6 * 178, 3) and np.array_equal(one, two)


def test_table_bad_names(celeba, tmp_path):
    r = subprocess.run([sys.executable, "-m", "facecomp", "eval", "table", "--baselines", "magic", "--model", "x",
                        "--data", str(celeba), "--out", str(tmp_path)], capture_output=True, text=True)
    assert r.returncode == 2 and "unknown baseline 'magic'" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run([sys.executable, "-m", "facecomp", "eval", "table", "--masks", "O9",
                        "--data", str(celeba), "--out", str(tmp_path)], capture_output=True, text=True)
    assert r.returncode == 2 and "unknown mask 'O9'" in r.stderr


def test_sweep_command(celeba, generator_weights, tmp_path):  # noqa: F811
    out = tmp_path / "sweep"
    r = subprocess.run([sys.executable, "-m", "facecomp", "eval", "sweep", "--model", f"smoke={generator_weights}",
                        "--baselines", "telea", "--data", str(celeba), "--limit", "2", "--out", str(out),
                        "--no-progress"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    res = json.loads((out / "sweep.json").read_text())
    assert res["sizes"] == list(masks.SWEEP_SIZES) and res["methods"] == ["telea", "smoke"]
    assert res["summary"]["ssim"]["80"]["telea"]["n"] == 2
    from facecomp.images import read_rgb

    assert read_rgb(out / "sweep.png").shape[2] == 3
    # bigger holes are harder for inpainting: SSIM at 16 above SSIM at 80
    assert res["summary"]["ssim"]["16"]["telea"]["mean"] > res["summary"]["ssim"]["80"]["telea"]["mean"]


def test_sweep_squares_stay_in_the_face_region():
    from facecomp.eval.sweep import FACE_REGION, square_at

    rng = np.random.default_rng(0)
    for size in masks.SWEEP_SIZES:
        m = square_at(size, 128, 128, rng)
        ys, xs = np.nonzero(m)
        assert m.sum() == size * size
        assert xs.min() >= FACE_REGION[0] and xs.max() < FACE_REGION[2]
        assert ys.min() >= FACE_REGION[1] and ys.max() < FACE_REGION[3]


def test_diversity_command(celeba, generator_weights, tmp_path):  # noqa: F811
    out = tmp_path / "div"
    r = subprocess.run([sys.executable, "-m", "facecomp", "eval", "diversity", "--model", str(generator_weights),
                        "--data", str(celeba), "--limit", "2", "--samples", "3", "--out", str(out)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    res = json.loads((out / "diversity.json").read_text())
    assert res["max_outside_diff"] == 0 and res["mean_pairwise_hole_mad"] > 0 and len(res["faces"]) == 2


needs_faces = pytest.mark.skipif(not __import__("facecomp.faces").faces.available(),
                                 reason="needs the 'faces' extra (dlib-bin, face-recognition-models)")


@needs_faces
def test_identity_distance_tells_people_apart(celeba):
    from collections import defaultdict

    from facecomp.data.celeba import CelebAIndex
    from facecomp.eval.identity_check import identity_check
    from facecomp.identity_embedding import IdentityEmbedder
    from facecomp.images import read_rgb

    index = CelebAIndex.open(celeba)
    by_id = defaultdict(list)
    for f in index.files("val"):
        by_id[index.identity(f)].append(f)
    chosen = [(f, i) for i in sorted(by_id)[:4] for f in by_id[i][:3]]
    embedder = IdentityEmbedder()
    check = identity_check(embedder, [f for f, _ in chosen], [i for _, i in chosen])
    assert check.same_mean < check.other_mean - 0.2 and check.top1 >= 0.75
    img = read_rgb(chosen[0][0])
    assert embedder.distance(img, img) < 1e-6
    h, w = img.shape[:2]
    assert embedder.distance(img, BASELINES["noise"](img, masks.occlusion("O6", w, h))) > 0.05


@needs_faces
def test_table_identity_and_parsing_columns(celeba, generator_weights, parsing_weights, tmp_path):  # noqa: F811
    out = tmp_path / "eval"
    r = subprocess.run([sys.executable, "-m", "facecomp", "eval", "table", "--model", str(generator_weights),
                        "--baselines", "telea", "--data", str(celeba), "--limit", "2", "--masks", "O3,O6",
                        "--metrics", "identity,parsing", "--parsing-weights", str(parsing_weights),
                        "--out", str(out), "--no-progress"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    res = json.loads((out / "results.json").read_text())
    for key in ("identity", "parsing_miou"):
        for o in ("O3", "O6"):
            for m in res["methods"]:
                s = res["summary"][key][o][m]
                assert s["n"] == 2 and 0 <= s["mean"] <= 1.5
    assert "Identity distance" in (out / "results.md").read_text()


@needs_faces
def test_recognition_command(celeba, generator_weights, tmp_path):  # noqa: F811
    out = tmp_path / "rec"
    r = subprocess.run([sys.executable, "-m", "facecomp", "eval", "recognition", "--baselines", "noise,telea",
                        "--model", f"smoke={generator_weights}",
                        "--data", str(celeba), "--limit", "120", "--masks", "O4", "--probes-per-identity", "1",
                        "--blend", "poisson", "--out", str(out), "--no-progress"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    res = json.loads((out / "results.json").read_text())
    assert res["methods"] == ["original", "noise", "telea", "smoke", "smoke+poisson"] and res["identities"] >= 2
    assert (out / "recognition.png").stat().st_size > 1000
    s = res["summary"]["O4"]
    assert s["original"]["top5"] >= 0.8 and all(0 <= s[m]["top1"] <= s[m]["top5"] <= 1 for m in res["methods"])
    assert all(s[m]["top1_ci"][0] <= s[m]["top1"] <= s[m]["top1_ci"][1] for m in res["methods"])
    # the paired split agrees with the per-probe ranks it was computed from
    ranks, vs = res["ranks"]["O4"], res["vs_noise"]["O4"]
    assert set(vs) == {"original", "telea", "smoke", "smoke+poisson"}  # original: the ceiling of the split
    hits = {m: [r == 0 for r in ranks[m]] for m in ranks}
    top1 = {m: sum(h) / len(h) for m, h in hits.items()}
    assert top1["smoke"] == s["smoke"]["top1"]
    assert vs["smoke"]["a_only"] - vs["smoke"]["b_only"] == round((top1["smoke"] - top1["noise"]) * len(ranks["noise"]))
    assert "against noise fill, probe by probe" in (out / "recognition.md").read_text()


def test_recognition_paired_test():
    from facecomp.eval.recognition import paired, top1_ci

    # 10 probes: a alone recognises 6, b alone 0 -> McNemar's exact p = 2 * 0.5**6
    a, b = [0] * 8 + [3, 3], [0, 0] + [1] * 6 + [3, 3]
    c = paired(a, b)
    assert (c["a_only"], c["b_only"]) == (6, 0) and abs(c["p"] - 2 * 0.5 ** 6) < 1e-12
    assert paired(b, a)["b_only"] == 6 and paired(a, a) == {"k": 1, "a_only": 0, "b_only": 0, "p": 1.0}
    assert paired(a, b, k=2)["a_only"] == 0  # within top-2, b's rank-1 probes count too
    # a balanced split of discordant probes is no evidence either way
    assert paired([0, 1] * 20, [1, 0] * 20)["p"] == 1.0
    with pytest.raises(ValueError, match="same probes"):
        paired([0, 1], [0])
    lo, hi = top1_ci([0] * 362 + [1] * 28)  # O5's 362 of 390
    assert lo < 362 / 390 < hi and 0.89 < lo and hi < 0.96


def test_recognition_split_is_disjoint_and_seeded(celeba):
    from facecomp.data.celeba import CelebAIndex
    from facecomp.eval.recognition import split_gallery

    index = CelebAIndex.open(celeba)
    files = index.files("val")
    g, gi, p, pi = split_gallery(files, index.identity, seed=0)
    assert not set(g) & set(p) and len(g) + len(p) == len(files)
    assert set(gi) == set(pi) and all(index.identity(f) == i for f, i in zip(g + p, gi + pi, strict=True))
    assert split_gallery(files, index.identity, seed=0) == (g, gi, p, pi)
    assert split_gallery(files, index.identity, seed=1)[0] != g
