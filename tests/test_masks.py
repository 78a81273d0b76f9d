import numpy as np
import pytest
from PIL import Image

from facecomp import layout, masks


def test_square_is_seeded_sized_and_uniform():
    a = masks.square(64, 128, np.random.default_rng(1))
    b = masks.square(64, 128, np.random.default_rng(1))
    assert np.array_equal(a, b) and a.dtype == np.float32
    assert a.sum() == 64 * 64 and set(np.unique(a)) == {0.0, 1.0}
    rng = np.random.default_rng(0)
    tops = [np.argwhere(masks.square(64, 128, rng))[0] for _ in range(4000)]
    ys, xs = np.array(tops).T
    assert ys.min() == 0 and ys.max() == 64 and xs.min() == 0 and xs.max() == 64
    # uniform over 65 positions: each quarter of the range holds about a quarter of the draws
    hist = np.histogram(xs, bins=4, range=(0, 65))[0] / len(xs)
    assert np.all(np.abs(hist - 0.25) < 0.04), hist


def test_occlusions_cover_what_they_say():
    m = {k: masks.occlusion(k) for k in masks.OCCLUSIONS}
    for k, v in m.items():
        assert v.shape == (128, 128) and 0 < v.sum() <= 64 * 64 * 1.01, k
    cx = lambda a: np.argwhere(a)[:, 1].mean()  # noqa: E731
    cy = lambda a: np.argwhere(a)[:, 0].mean()  # noqa: E731
    assert cx(m["O1"]) < 64 < cx(m["O2"])  # left half / right half as seen
    assert np.array_equal(m["O1"][:, ::-1], m["O2"])  # mirror images
    assert np.array_equal(np.maximum(m["O4"], m["O5"]), m["O3"])  # both eyes = left + right
    assert cx(m["O4"]) < cx(m["O5"])
    assert cy(m["O3"]) < 64 < cy(m["O6"])  # eyes in the upper half, lower half below
    # the eyes of the layout (near y=55) are inside O3, the mouth (y=89) inside O6
    assert m["O3"][55, 48] == 1 and m["O3"][57, 79] == 1 and m["O6"][89, 64] == 1


def test_occlusion_at_aligned_resolution_maps_through_the_crop_box():
    m = masks.occlusion("O3", *layout.ALIGNED_SIZE)
    assert m.shape == (218, 178)
    ys, xs = np.nonzero(m)
    x0, y0, x1, y1 = masks.OCCLUSIONS["O3"]
    bx0, by0, bx1, by1 = layout.CROP_BOX
    s = (bx1 - bx0) / 128
    assert (xs.min(), ys.min()) == (round(bx0 + x0 * s), round(by0 + y0 * s))
    assert (xs.max() + 1, ys.max() + 1) == (round(bx0 + x1 * s), round(by0 + y1 * s))


def test_sweep_sizes_are_the_papers():
    assert masks.SWEEP_SIZES == (16, 24, 32, 40, 48, 56, 64, 72, 80)


def test_strokes_are_seeded_and_nonempty():
    a = masks.strokes(128, np.random.default_rng(3))
    assert np.array_equal(a, masks.strokes(128, np.random.default_rng(3)))
    assert 0 < a.mean() < 0.6 and set(np.unique(a)) <= {0.0, 1.0}


def test_face_parts_are_jittered_occlusion_boxes_half_the_time():
    rng = np.random.default_rng(0)
    draws = [masks.train_mask("parts", 64, 128, rng) for _ in range(3000)]
    assert np.array_equal(masks.train_mask("parts", 64, 128, np.random.default_rng(5)),
                          masks.train_mask("parts", 64, 128, np.random.default_rng(5)))
    is_square = [m.sum() == 64 * 64 and np.ptp(np.nonzero(m)[0]) == 63 for m in draws]
    assert abs(np.mean(is_square) - 0.5) < 0.03
    boxes = {k: masks.occlusion(k) for k in masks.OCCLUSIONS}
    nearest = []
    for m in (d for d, sq in zip(draws, is_square, strict=True) if not sq):
        ys, xs = np.nonzero(m)
        assert m.sum() == (np.ptp(ys) + 1) * (np.ptp(xs) + 1)  # one filled box
        iou = {k: (m * b).sum() / np.maximum(m, b).sum() for k, b in boxes.items()}
        k = max(iou, key=iou.get)
        assert iou[k] > 0.55, iou  # each edge within an eighth of its side of O1-O6's
        nearest.append(k)
    counts = np.array([nearest.count(k) for k in boxes]) / len(nearest)
    assert np.all(np.abs(counts - 1 / 6) < 0.04), counts  # every part, uniformly
    # shapes no 64x64 square makes: wider than 64 (the lower half) and taller (a half face)
    assert max(np.ptp(np.nonzero(m)[1]) for m in draws) >= 80 and max(np.ptp(np.nonzero(m)[0]) for m in draws) >= 92
    half = masks.face_part(64, np.random.default_rng(1))  # scaled with the crop
    assert half.shape == (64, 64) and 0 < half.sum() < 64 * 64 / 2


def test_user_mask_from_image_of_any_size(tmp_path):
    img = np.zeros((300, 200), np.uint8)
    img[100:200, 50:150] = 255  # white = missing
    Image.fromarray(img).save(tmp_path / "m.png")
    m = masks.from_image(tmp_path / "m.png")
    assert m.shape == (300, 200) and m.sum() == 100 * 100
    small = masks.from_image(tmp_path / "m.png", size=(100, 150))
    assert small.shape == (150, 100) and small[75, 50] == 1 and small[10, 10] == 0


def test_spec_parsing(tmp_path):
    assert masks.from_spec("o3", 128, 128).sum() == masks.occlusion("O3").sum()
    b = masks.from_spec("box:10,20,30,60", 100, 80)
    assert b.sum() == 20 * 40 and b[20, 10] == 1 and b[19, 10] == 0
    with pytest.raises(ValueError, match="unknown mask 'O7'"):
        masks.from_spec("O7", 128, 128)
    with pytest.raises(ValueError, match="bad box"):
        masks.from_spec("box:1,2,3", 128, 128)
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(tmp_path / "m.png")
    with pytest.raises(ValueError, match="10x10 but the image is 128x128"):
        masks.from_spec(str(tmp_path / "m.png"), 128, 128)


def test_no_global_rng_is_touched():
    state = np.random.get_state()[1].copy()
    masks.square(64, 128, np.random.default_rng(0))
    masks.strokes(128, np.random.default_rng(0))
    masks.train_mask("parts", 64, 128, np.random.default_rng(0))
    assert np.array_equal(state, np.random.get_state()[1])
