import shutil

import numpy as np
import pytest
import torch

from facecomp.config import DataConfig, MaskConfig
from facecomp.data.celeba import CelebAIndex
from facecomp.data.pipeline import EpochBatchSampler, FaceDataset, build_loader
from facecomp.layout import Augment, crop_matrix, load_face


def test_celeba_index_partitions(celeba):
    idx = CelebAIndex.open(celeba)
    train, val = idx.files("train"), idx.files("val")
    assert len(train) == 4560 and len(val) == 780
    assert not {p.name for p in train} & {p.name for p in val}
    ids_train = {idx.identity(p) for p in train}
    ids_val = {idx.identity(p) for p in val}
    assert len(ids_train) == 152 and len(ids_val) == 26 and not ids_train & ids_val
    assert len(idx.files("train", limit=10)) == 10
    with pytest.raises(ValueError, match="unknown partition"):
        idx.files("dev")


def test_not_a_celeba_folder(tmp_path):
    with pytest.raises(ValueError, match="not a CelebA folder"):
        CelebAIndex.open(tmp_path)


def test_crop_is_the_face_box(face_files):
    crop = load_face(face_files[0], 128)
    assert crop.shape == (128, 128, 3) and crop.dtype == np.uint8
    # without augmentation the matrix is the documented box (9, 41)-(169, 201) scaled by 0.8
    m = crop_matrix(178, 218, 128, Augment(), None)
    assert np.allclose(m, [[0.8, 0, -7.2], [0, 0.8, -32.8]])


def test_augmentation_ranges_and_determinism():
    aug = Augment(flip=0.5, shift=0.05, rotate=15, scale_min=0.9, scale_max=1.1)
    flips, angles, scales = [], [], []
    for i in range(2000):
        m = crop_matrix(178, 218, 128, aug, np.random.default_rng([0, 0, i]))
        a = m[:, :2] / 0.8
        det = np.linalg.det(a)
        flips.append(det < 0)
        scales.append(np.sqrt(abs(det)))
        angles.append(np.degrees(np.arctan2(a[1, 0] * np.sign(det), a[0, 0] * np.sign(det))))
    assert 0.45 < np.mean(flips) < 0.55
    assert 0.9 <= min(scales) < 0.91 and 1.09 < max(scales) <= 1.1
    assert -15 <= min(angles) < -14 and 14 < max(angles) <= 15
    again = crop_matrix(178, 218, 128, aug, np.random.default_rng([0, 0, 7]))
    assert np.array_equal(again, crop_matrix(178, 218, 128, aug, np.random.default_rng([0, 0, 7])))


def test_sampler_covers_each_epoch_once_and_shards():
    n, b = 50, 4
    whole = EpochBatchSampler(n, b, seed=3)
    it = iter(whole)
    epoch0 = [i for _ in range(whole.steps_per_epoch) for (e, i) in next(it)]
    assert len(set(epoch0)) == len(epoch0) == (n // b) * b
    ranks = [EpochBatchSampler(n, b, seed=3, rank=r, world_size=2) for r in range(2)]
    seen = []
    for s in ranks:
        it = iter(s)
        seen += [i for _ in range(s.steps_per_epoch) for (_, i) in next(it)]
    assert len(seen) == len(set(seen))  # ranks never share a sample within an epoch


def test_sampler_resume_continues_the_same_sequence():
    full = iter(EpochBatchSampler(40, 4, seed=1))
    batches = [next(full) for _ in range(25)]  # crosses two epoch boundaries
    resumed = iter(EpochBatchSampler(40, 4, seed=1, start_step=13))
    assert [next(resumed) for _ in range(12)] == batches[13:]


def test_batch_contract(face_files):
    loader = build_loader(face_files, 128, DataConfig(), MaskConfig(), batch_size=4, seed=0)
    batch = next(iter(loader))
    x, m = batch["image"], batch["mask"]
    assert x.shape == (4, 3, 128, 128) and x.dtype == torch.float32
    assert -1 <= x.min() and x.max() <= 1 and x.std() > 0.1
    assert m.shape == (4, 1, 128, 128) and torch.all(m.sum(dim=(1, 2, 3)) == 64 * 64)
    assert batch["index"].shape == (4,) and batch["skipped"] == 0


def test_same_address_same_sample(face_files):
    ds = FaceDataset(face_files, 128, Augment.from_config(DataConfig()), MaskConfig(), seed=5)
    a, b = ds[(2, 3)], ds[(2, 3)]
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])
    assert not torch.equal(a["image"], ds[(3, 3)]["image"])  # next epoch, new augmentation


def test_truncated_jpeg_is_skipped_and_counted(face_files, tmp_path, caplog):
    files = []
    for i, f in enumerate(face_files[:4]):
        dst = tmp_path / f"{i}.jpg"
        shutil.copy(f, dst)
        files.append(dst)
    data = files[1].read_bytes()
    files[1].write_bytes(data[: len(data) // 2])  # a real JPEG, cut in half
    (tmp_path / "2.jpg").write_bytes(b"not an image at all")
    loader = build_loader(files, 128, DataConfig(), MaskConfig(), batch_size=4, seed=0)
    batch = next(iter(loader))
    assert batch["skipped"] == 2 and batch["image"].shape[0] == 2
    assert "truncated" in caplog.text or "corrupt" in caplog.text
