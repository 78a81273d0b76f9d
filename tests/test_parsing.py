"""Face parsing: landmark labels, the label/augmentation pipeline, scores, inference, frozen use."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from facecomp import faces
from facecomp.data.parsing import ParsingDataset, labelled_pairs, warp_pair
from facecomp.data.parsing_labels import LABEL_ID, colorize, draw_labels, label_folder
from facecomp.eval.parsing_scores import confusion, f_scores, mean_iou
from facecomp.images import read_gray, read_rgb, write_png
from facecomp.labels import LABELS
from facecomp.layout import Augment


def centroid(labels: np.ndarray, name: str) -> np.ndarray:
    ys, xs = np.nonzero(labels == LABEL_ID[name])
    assert len(xs), f"no {name} pixels"
    return np.array([xs.mean(), ys.mean()])


@pytest.fixture(scope="module")
def detector():
    if not faces.available():
        pytest.skip("needs the 'faces' extra (dlib-bin, face-recognition-models)")
    return faces.LandmarkDetector()


@pytest.fixture(scope="module")
def labelled_val(face_files, detector):
    out = []
    for f in face_files[:8]:
        rgb = read_rgb(f)
        found = detector(rgb)
        assert found is not None, f"no landmarks on aligned face {f.name}"
        out.append((rgb, draw_labels(rgb, found.points)))
    return out


def test_labels_put_every_class_in_its_place(labelled_val):
    for rgb, lbl in labelled_val:
        assert lbl.shape == rgb.shape[:2] and lbl.dtype == np.uint8
        present = set(np.unique(lbl).tolist())
        must = {LABEL_ID[n] for n in LABELS if n not in ("hair", "inner_mouth")}  # closed mouths, bald heads
        assert must <= present, f"missing {[LABELS[k] for k in must - present]}"
        c = {n: centroid(lbl, n) for n in ("left_brow", "right_brow", "left_eye", "right_eye", "nose", "upper_lip",
                                           "lower_lip")}
        # as seen in the image: left is left
        assert c["left_eye"][0] < c["right_eye"][0] and c["left_brow"][0] < c["right_brow"][0]
        # top to bottom: brows, eyes, nose, upper lip, lower lip
        for upper, lower in (("left_brow", "left_eye"), ("right_brow", "right_eye"), ("left_eye", "nose"),
                             ("nose", "upper_lip"), ("upper_lip", "lower_lip")):
            assert c[upper][1] < c[lower][1], f"{upper} not above {lower}"
        # the face sits in the middle of an aligned CelebA image, skin around the nose
        h, w = lbl.shape
        assert abs(c["nose"][0] - w / 2) < 0.15 * w
        assert (lbl == LABEL_ID["skin"]).sum() > 10 * (lbl == LABEL_ID["nose"]).sum() / 3
        assert lbl[0, 0] in (LABEL_ID["background"], LABEL_ID["hair"])


def test_hair_when_found_lies_above_or_beside_the_eyes(labelled_val):
    with_hair = [lbl for _, lbl in labelled_val if (lbl == LABEL_ID["hair"]).sum() > 200]
    assert with_hair, "GrabCut found hair on none of 8 faces"
    for lbl in with_hair:
        assert centroid(lbl, "hair")[1] < centroid(lbl, "nose")[1]


def test_labelling_is_repeatable(labelled_val, detector, face_files):
    rgb, first = labelled_val[0]
    again = draw_labels(rgb, detector(rgb).points)
    np.testing.assert_array_equal(first, again)


def test_landmark_failures_are_skipped_and_counted(tmp_path, face_files):
    if not faces.available():
        pytest.skip("needs the 'faces' extra")
    blank = tmp_path / "blank.jpg"
    write_png(tmp_path / "blank.png", np.full((218, 178, 3), 128, np.uint8))
    (tmp_path / "blank.png").rename(blank)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff not really a jpeg")
    files = [face_files[0], blank, broken]
    report = label_folder(files, tmp_path / "labels", progress=False)
    assert report.labelled == 1 and report.failed == ["blank.jpg"] and report.unreadable == ["broken.jpg"]
    assert (tmp_path / "labels" / f"{face_files[0].stem}.png").exists()
    assert not (tmp_path / "labels" / "blank.png").exists()
    again = label_folder(files, tmp_path / "labels", progress=False)  # a cache: nothing redone
    assert again.cached == 1 and again.labelled == 0
    pairs = labelled_pairs(files, tmp_path / "labels")
    assert [p[0] for p in pairs] == [face_files[0]]


def test_implausible_landmarks_are_rejected():
    pts = np.zeros((68, 2), np.float32)
    pts[36:42] = (60, 100)
    pts[42:48] = (120, 100)
    pts[30] = (90, 130)
    pts[48:68] = (90, 160)
    assert faces.plausible(pts, 178, 218)
    swapped = pts.copy()
    swapped[36:42], swapped[42:48] = pts[42:48], pts[36:42]
    assert not faces.plausible(swapped, 178, 218)
    upside_down = pts.copy()
    upside_down[48:68] = (90, 50)
    assert not faces.plausible(upside_down, 178, 218)
    assert not faces.plausible(pts + 500, 178, 218)


def test_flip_keeps_left_and_right_as_seen():
    h, w = 218, 178
    image = np.zeros((h, w, 3), np.uint8)
    image[:, : w // 2] = 255  # bright image-left half
    labels = np.zeros((h, w), np.uint8)
    labels[100:110, 60:75] = LABEL_ID["left_eye"]
    labels[100:110, 105:120] = LABEL_ID["right_eye"]
    flipped_any = False
    for seed in range(8):
        face, lbl = warp_pair(image, labels, 128, Augment(flip=0.5), np.random.default_rng(seed))
        flipped = face[:, :20].mean() < face[:, -20:].mean()
        flipped_any |= flipped
        left, right = centroid(lbl, "left_eye"), centroid(lbl, "right_eye")
        assert left[0] < right[0], f"seed {seed}: left_eye not on the image left (flipped={flipped})"
    assert flipped_any


def test_scores():
    t = np.array([[0, 4, 4], [2, 6, 8]])
    assert f_scores(confusion(t, t))["overall"] == 1.0
    assert mean_iou(confusion(t, t)) == 1.0
    p = t.copy()
    p[0, 1] = 5  # an eye called the other eye: still a facial component
    s = f_scores(confusion(p, t))
    assert s["overall"] == 1.0 and s["left_eye"] == pytest.approx(2 / 3) and s["right_eye"] == 0.0
    p[1, 2] = 1  # lip called skin
    s = f_scores(confusion(p, t))
    assert s["overall"] == pytest.approx(2 * 4 / (2 * 4 + 0 + 1))  # 5 component pixels, 4 found
    assert np.isnan(s["hair"])  # absent in both: undefined, not perfect


def test_parser_labels_at_input_size(parsing_weights, face_files):
    from facecomp.parsing import Parser

    parser = Parser(parsing_weights)
    assert not any(p.requires_grad for p in parser.net.parameters()) and not parser.net.training
    for shape in ((218, 178), (300, 260)):
        img = np.random.default_rng(0).integers(0, 255, (*shape, 3), dtype=np.uint8)
        lbl = parser.labels(img)
        assert lbl.shape == shape and lbl.dtype == np.uint8 and lbl.max() < len(LABELS)
    assert colorize(lbl).shape == (*shape, 3)


def test_parsing_weights_of_another_kind_are_refused(tmp_path, smoke_cfg):
    from facecomp.models import Generator, load
    from facecomp.weights import save_module

    path = tmp_path / "g.safetensors"
    save_module(path, Generator(smoke_cfg.generator), "generator", {})
    with pytest.raises(ValueError, match="not parsing weights"):
        load("parsing", path)
    with pytest.raises(ValueError, match="do not exist"):
        load("parsing", tmp_path / "none.safetensors")


def test_parsing_training_learns_the_labels(tmp_path, face_files, smoke_cfg):
    """A few dozen steps on 16 labelled faces: the loss falls and the net beats chance on them."""
    if not faces.available():
        pytest.skip("needs the 'faces' extra")
    from facecomp.config import apply_overrides
    from facecomp.train.parsing import train_parsing

    files = face_files[:16]
    label_folder(files, tmp_path / "labels", progress=False)
    root = files[0].parent.parent
    cfg = apply_overrides(smoke_cfg, [f"parsing_train.labels={tmp_path / 'labels'}", "parsing_train.steps=40",
                                      "parsing_train.batch_size=8", "parsing_train.lr=0.01",
                                      "parsing_train.ckpt_every=20", "data.partition=val", "data.limit=16"])
    run = train_parsing(cfg, root, tmp_path / "run", progress=False)
    assert run.steps == 40 and (tmp_path / "run" / "parsing.safetensors").exists()
    from facecomp.models import load

    net = load("parsing", tmp_path / "run" / "parsing.safetensors")
    ds = ParsingDataset(labelled_pairs(files, tmp_path / "labels"), 128, Augment(), 0)
    with torch.no_grad():
        batch = [ds[i] for i in range(8)]
        pred = net(torch.stack([b["image"] for b in batch])).argmax(1).numpy()
    target = np.stack([b["labels"].numpy() for b in batch])
    assert (pred == target).mean() > 0.6  # background+skin alone are ~70%: it must have learnt the layout
    assert read_gray(tmp_path / "labels" / f"{files[0].stem}.png").shape == (218, 178)


def test_stage3_loads_the_shipped_parsing_network_frozen(smoke_cfg):
    """Stage 3 by default: the shipped parsing weights, eval mode, no gradients, in no optimizer."""
    from facecomp.train.loop import build_models
    from facecomp.weights import SHIPPED

    DEFAULT_PARSING = SHIPPED["parsing"]

    if not DEFAULT_PARSING.is_file():
        pytest.fail(f"the shipped parsing weights are missing: {DEFAULT_PARSING}")
    models = build_models(smoke_cfg, 3, torch.device("cpu"))
    net = models.parsing
    assert net is not None and not net.training and not any(p.requires_grad for p in net.parameters())
    from facecomp.weights import read_metadata

    meta = read_metadata(DEFAULT_PARSING)
    assert meta["kind"] == "parsing" and meta.get("trained") is True
    owned = {id(p) for m in (models.generator, models.d_local, models.d_global) for p in m.parameters()}
    assert not owned & {id(p) for p in net.parameters()}


def test_shipped_network_beats_the_per_pixel_prior_on_held_out_faces(celeba, detector):
    """Labels drawn on the fly: a prior from 16 train faces vs the shipped network on 8 val faces."""
    from facecomp.data.celeba import CelebAIndex
    from facecomp.models import load

    index = CelebAIndex.open(celeba)

    def crops(files):
        out = []
        for f in files:
            rgb = read_rgb(f)
            found = detector(rgb)
            if found is not None:
                out.append(warp_pair(rgb, draw_labels(rgb, found.points), 128))
        return out

    train = crops(index.files("train")[::300][:16])
    prior = np.stack([np.bincount(col, minlength=len(LABELS)) for col in
                      np.stack([lbl for _, lbl in train]).reshape(len(train), -1).T]).argmax(1).reshape(128, 128)
    val = crops(index.files("val")[::100][:8])
    net = load("parsing", "shipped")
    from facecomp.images import to_tensor

    with torch.no_grad():
        pred = net(torch.stack([to_tensor(face) for face, _ in val])).argmax(1).numpy()
    target = np.stack([lbl for _, lbl in val])
    ours = f_scores(confusion(pred, target))
    base = f_scores(confusion(np.broadcast_to(prior, target.shape), target))
    assert ours["overall"] > 0.75 and ours["overall"] > base["overall"] + 0.1, (ours["overall"], base["overall"])
    assert mean_iou(confusion(pred, target)) > mean_iou(confusion(np.broadcast_to(prior, target.shape), target))
