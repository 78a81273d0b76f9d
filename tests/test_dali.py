"""The DALI pipeline (CPU operators here; the GPU test needs a lent GPU): batch contract, agreement
with the reference pipeline, sharding, resume, unreadable files, and a real `facecomp train --loader dali`."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from scipy import stats

from facecomp import masks
from facecomp.config import load_config
from facecomp.data.celeba import CelebAIndex
from facecomp.layout import Augment, crop_matrix, load_face

HAVE_DALI = importlib.util.find_spec("nvidia.dali") is not None
requires_dali = pytest.mark.skipif(not HAVE_DALI, reason="NVIDIA DALI not installed: pip install 'facecomp[dali]'")
pytestmark = pytest.mark.dali

NO_AUG = ["data.flip=0", "data.shift=0", "data.rotate=0", "data.scale_min=1.0", "data.scale_max=1.0"]
BOX_CENTRE = np.array([89.0, 121.0, 1.0])  # centre of layout.CROP_BOX in the 178x218 face: lands on (64, 64)


def loader(files, overrides=(), **kw):
    from facecomp.data.dali import build_dali_loader

    cfg = load_config("smoke", ["data.workers=2", *overrides])
    return build_dali_loader(cfg, files, **kw)


def similarity(m: np.ndarray, size: int = 128) -> tuple[bool, float, float, float, float]:
    """(flip, angle in degrees, scale, shift x, shift y as fractions of the crop) of an OpenCV crop matrix."""
    a = m[:, :2] / (size / 160)  # remove the crop box's own scale
    det = np.linalg.det(a)
    sign = np.sign(det)
    angle = np.degrees(np.arctan2(a[1, 0] * sign, a[0, 0] * sign))
    tx, ty = (m @ BOX_CENTRE - size / 2) / size
    return bool(det < 0), float(angle), float(np.sqrt(abs(det))), float(tx), float(ty)


@pytest.fixture(scope="module")
def val64(celeba) -> list[Path]:
    return CelebAIndex.open(celeba).files("val", limit=64)


@requires_dali
def test_batch_contract_and_the_crop(val64):
    """Without augmentation the DALI crop is the reference crop (to one grey level: rounding)."""
    it = iter(loader(val64, NO_AUG))
    batch = next(it)
    x, m, idx = batch["image"], batch["mask"], batch["index"]
    assert x.shape == (4, 3, 128, 128) and x.dtype == torch.float32 and x.device.type == "cpu"
    assert m.shape == (4, 1, 128, 128) and m.dtype == torch.float32
    assert idx.shape == (4,) and idx.dtype == torch.int64 and batch["skipped"] == 0
    assert -1 <= x.min() < 0 < x.max() <= 1
    assert set(m.unique().tolist()) == {0.0, 1.0} and (m.sum(dim=(1, 2, 3)) == 64 * 64).all()
    for k in range(4):
        ref = load_face(val64[int(idx[k])], 128).astype(np.float32)
        got = (x[k].permute(1, 2, 0).numpy() + 1) * 127.5
        assert np.abs(got - ref).max() <= 1.01


@requires_dali
def test_augmented_image_is_warped_by_its_matrix(val64):
    """The matrix output is the one the warp applied: OpenCV's warpAffine with it (the reference's
    call, borders reflected) reproduces the DALI image to rounding."""
    batch = next(iter(loader(val64, with_matrix=True)))
    for k in range(4):
        src = cv2.cvtColor(cv2.imread(str(val64[int(batch["index"][k])])), cv2.COLOR_BGR2RGB)
        mat = batch["matrix"][k].numpy().astype(np.float64)
        ref = cv2.warpAffine(src, mat, (128, 128), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
        got = (batch["image"][k].permute(1, 2, 0).numpy() + 1) * 127.5
        assert np.abs(got - ref).max() <= 1.01  # equal on this CPU; one grey level allowed for rounding


@requires_dali
def test_statistics_agree_with_the_reference_pipeline(val64):
    """Over 3,072 samples: flip rate, rotation, scale and shift from the applied matrices, and the
    square's position from the mask outputs, against the reference's own draws (two-sample tests at
    p > 0.001, and each range reached and never exceeded)."""
    ld = loader(val64, ["train.batch_size=64"], with_matrix=True)
    it = iter(ld)
    params, corners = [], []
    for _ in range(48):
        b = next(it)
        params += [similarity(m.astype(np.float64)) for m in b["matrix"].numpy()]
        ys = b["mask"][:, 0].amax(dim=2).argmax(dim=1)  # first masked row
        xs = b["mask"][:, 0].amax(dim=1).argmax(dim=1)  # first masked column
        corners += list(zip(ys.tolist(), xs.tolist(), strict=True))
    n = len(params)
    rng = np.random.default_rng(0)
    aug = Augment(0.5, 0.05, 15.0, 0.9, 1.1)
    ref = [similarity(crop_matrix(178, 218, 128, aug, np.random.default_rng([1, 0, i]))) for i in range(n)]
    ref_corners = [np.argwhere(masks.train_mask("square", 64, 128, rng))[0] for _ in range(n)]

    got, want = np.array(params), np.array(ref)
    assert stats.binomtest(int(got[:, 0].sum()), n, 0.5).pvalue > 1e-3
    for col, lo, hi in ((1, -15, 15), (2, 0.9, 1.1), (3, -0.05, 0.05), (4, -0.05, 0.05)):
        assert lo - 1e-4 <= got[:, col].min() and got[:, col].max() <= hi + 1e-4
        assert got[:, col].min() < lo + 0.02 * (hi - lo) and got[:, col].max() > hi - 0.02 * (hi - lo)
        assert stats.ks_2samp(got[:, col], want[:, col]).pvalue > 1e-3, col
    corners, ref_corners = np.array(corners), np.array(ref_corners)
    for axis in range(2):  # 65 positions, 0..64 inclusive
        hist = np.bincount(corners[:, axis], minlength=65)
        assert len(hist) == 65 and hist.min() > 0
        assert stats.chisquare(hist).pvalue > 1e-3
        table = np.stack([hist, np.bincount(ref_corners[:, axis], minlength=65)])
        assert stats.chi2_contingency(table).pvalue > 1e-3


@requires_dali
def test_square_corner_is_uniform_over_every_position_ends_included():
    """81,920 draws per axis of the graph's own corner op (65 positions, 0..64): every position within
    5 sigma of n/65. A continuous uniform rounded to INT32 gives the two end positions half as many
    (~630 against ~1,260, 18 sigma off), which the 3,072-sample test above is too coarse to see."""
    from nvidia.dali import pipeline_def

    from facecomp.data.dali import _corner

    @pipeline_def(batch_size=1024, num_threads=1, device_id=None, seed=11)
    def corners():
        return _corner(128, 64)

    pipe = corners()
    pipe.build()
    draws = np.concatenate([np.asarray(pipe.run()[0].as_array()) for _ in range(40)]).reshape(-1)
    assert draws.dtype == np.int32 and draws.min() == 0 and draws.max() == 64
    hist = np.bincount(draws, minlength=65)
    expected = draws.size / 65
    sigma = np.sqrt(expected * (1 - 1 / 65))
    assert np.abs(hist - expected).max() < 5 * sigma, (hist[:2], hist[-2:], expected)


def test_dali_threads_default_to_this_ranks_share_of_the_cores(monkeypatch):
    from facecomp.runtime import cores_per_local_rank

    assert cores_per_local_rank({}, cores=16) == 16
    assert cores_per_local_rank({"LOCAL_WORLD_SIZE": "8"}, cores=16) == 2  # torchrun, Ray Train, DeepSpeed
    assert cores_per_local_rank({"LOCAL_WORLD_SIZE": "32"}, cores=16) == 1
    assert cores_per_local_rank({"SLURM_NTASKS_PER_NODE": "4"}, cores=16) == 4
    assert cores_per_local_rank({"SLURM_TASKS_PER_NODE": "8(x2)"}, cores=64) == 8
    assert cores_per_local_rank({"SLURM_TASKS_PER_NODE": "4(x2)", "SLURM_CPUS_PER_TASK": "3"}, cores=64) == 3
    # Ray on Slurm: the raylet's task had the whole node; the 8 training ranks share it
    assert cores_per_local_rank({"LOCAL_WORLD_SIZE": "8", "SLURM_NTASKS_PER_NODE": "1",
                                 "SLURM_CPUS_PER_TASK": "64"}, cores=64) == 8
    assert cores_per_local_rank({"LOCAL_WORLD_SIZE": "junk"}, cores=4) == 4


@requires_dali
def test_dali_spec_threads_use_the_local_share(monkeypatch):
    """data.workers=0 on a 16-core node with 8 local ranks: 2 DALI threads each, not 16."""
    from facecomp.data.dali import dali_spec

    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(16)))
    monkeypatch.setattr("os.cpu_count", lambda: 16)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    for name in ("SLURM_NTASKS_PER_NODE", "SLURM_TASKS_PER_NODE", "SLURM_CPUS_PER_TASK"):
        monkeypatch.delenv(name, raising=False)
    assert dali_spec(load_config("smoke", ["data.workers=0"])).threads == 2
    assert dali_spec(load_config("smoke", ["data.workers=3"])).threads == 3  # an explicit count wins


@requires_dali
@pytest.mark.parametrize("n", [48, 50])
def test_shards_cover_the_partition_once_per_epoch(celeba, n):
    """3 ranks, batch 4: each epoch the ranks read disjoint samples; with 48 files (shards of 16)
    exactly the whole partition, with 50 all but the 2 left out to make the shards equal."""
    files = CelebAIndex.open(celeba).files("val", limit=n)
    iters = [loader(files, rank=r, world_size=3) for r in range(3)]
    assert {ld.steps_per_epoch for ld in iters} == {4}
    streams = [iter(ld) for ld in iters]
    orders = []
    for _ in range(2):
        seen = [i for s in streams for _ in range(4) for i in next(s)["index"].tolist()]
        assert len(seen) == len(set(seen)) == 48
        assert set(seen) == set(range(48))  # n=50: the last two names are the ones left out
        orders.append(seen)
    assert orders[0] != orders[1]  # a fresh permutation each epoch


@requires_dali
@pytest.mark.parametrize("taken", [5, 8])  # mid-epoch, and right at the end of one
def test_resume_mid_epoch_gives_the_same_next_batches(val64, taken):
    files = val64[:32]  # 8 batches an epoch: the 6 compared below cross into the next epoch
    first = loader(files)
    it = iter(first)
    for _ in range(taken):
        next(it)
    state = first.state()
    assert isinstance(state, str) and json.loads(json.dumps({"s": state}))["s"] == state  # plain text
    expected = [next(it) for _ in range(6)]
    resumed = iter(loader(files, start_step=taken, state=state))
    for want in expected:
        got = next(resumed)
        assert torch.equal(got["index"], want["index"])
        assert torch.equal(got["image"], want["image"]) and torch.equal(got["mask"], want["mask"])


@requires_dali
def test_truncated_files_are_left_out_not_fatal(val64, tmp_path):
    from facecomp.data.dali import jpeg_intact, png_intact

    files = [Path(shutil.copy(p, tmp_path / p.name)) for p in val64[:8]]
    data = files[3].read_bytes()
    files[3].write_bytes(data[: len(data) // 2])  # a real face cut in half, as an interrupted copy leaves it
    for k, name in ((4, "whole.png"), (5, "cut.png")):  # PNGs (DALI decodes them too): one whole, one cut
        assert cv2.imwrite(str(tmp_path / name), cv2.imread(str(val64[k])))
        files.append(tmp_path / name)
    files[-1].write_bytes(files[-1].read_bytes()[:5000])
    assert not jpeg_intact(files[3]) and not png_intact(files[-1]) and png_intact(files[-2])
    assert all(jpeg_intact(p) for p in files[:8] if p != files[3])
    with pytest.raises(ValueError, match="truncated"):  # the reference pipeline refuses it too
        load_face(files[3], 128)

    ld = loader(files)
    assert ld.steps_per_epoch == 2  # 8 readable faces, batch 4
    it = iter(ld)
    batches = [next(it) for _ in range(6)]  # three epochs
    assert [b["skipped"] for b in batches] == [2, 0, 2, 0, 2, 0]  # counted once an epoch, as the reference does
    seen = {i for b in batches for i in b["index"].tolist()}
    assert seen == set(range(10)) - {3, 9}


@requires_dali
def test_dali_decoder_alone_stops_on_a_truncated_jpeg(val64, tmp_path):
    """Why files are checked before the pipeline: DALI's decoder fails the whole pipeline on one."""
    from nvidia.dali import fn, pipeline_def, types

    bad = tmp_path / "cut.jpg"
    bad.write_bytes(val64[0].read_bytes()[:4000])

    @pipeline_def(batch_size=1, num_threads=1, device_id=None)
    def pipe():
        jpegs, _ = fn.readers.file(files=[str(bad)])
        return fn.decoders.image(jpegs, device="cpu", output_type=types.RGB)

    p = pipe()
    p.build()
    with pytest.raises(RuntimeError, match="(?i)premature end|decode"):
        p.run()


@requires_dali
def test_only_square_masks(val64):
    with pytest.raises(ValueError, match="square"):
        loader(val64, ["mask.kind=strokes"])


@requires_dali
def test_train_with_the_dali_loader_resumes_bit_for_bit(celeba, smoke_cfg, tmp_path):
    """`facecomp train --loader dali`, 4 steps then --resume to 6, equals 6 steps straight: the DALI
    reader state in the checkpoint gives the resumed run the batches the straight run saw."""
    from safetensors.torch import load_file

    from facecomp.cli import main
    from facecomp.train.loop import train
    from facecomp.weights import RunFolder

    run = tmp_path / "split"
    base = ["train", "--stage", "1", "--data", str(celeba), "--run-dir", str(run), "--no-progress"]
    assert main([*base, "--config", "smoke", "--loader", "dali"]) == 0
    state = json.loads((run / "checkpoints" / "step_0000004" / "state.json").read_text())
    assert state["config"]["data"]["loader"] == "dali" and state["loader_state"]
    assert main([*base, "--resume", "--allow-config-change", "train.stage_steps=[6,4,4]"]) == 0

    smoke_cfg.data.loader = "dali"
    smoke_cfg.train.stage_steps = [6, 4, 4]
    smoke_cfg.train.log_every, smoke_cfg.train.image_every = 1, 2  # the preset's, as the CLI run used
    train(smoke_cfg, 1, celeba, tmp_path / "straight", progress=False)
    for name in ("generator", "d_local", "optim_generator"):
        a = load_file(RunFolder(tmp_path / "straight").latest() / f"{name}.safetensors")
        b = load_file(RunFolder(run).latest() / f"{name}.safetensors")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name


def test_loader_dali_without_dali_says_how_in_one_line(celeba, tmp_path):
    """With DALI unimportable (its module entry set to None: how Python marks a failed import)."""
    code = ("import sys; sys.modules['nvidia.dali'] = None; from facecomp.cli import main; "
            f"sys.exit(main(['train', '--config', 'smoke', '--stage', '1', '--data', {str(celeba)!r}, "
            f"'--run-dir', {str(tmp_path / 'run')!r}, '--loader', 'dali']))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "pip install 'facecomp[dali]'" in lines[0], out.stderr
    assert not (tmp_path / "run").exists()


@requires_dali
@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_pipeline_matches_the_cpu_one(val64):
    """Mixed (nvJPEG) decode and GPU warp: the same crop as the CPU pipeline, to nvJPEG's rounding."""
    gpu = loader(val64, NO_AUG, device=torch.device("cuda", 0))
    cpu = loader(val64, NO_AUG)
    g, c = next(iter(gpu)), next(iter(cpu))
    assert g["image"].device.type == "cuda" and g["mask"].device.type == "cuda"
    assert torch.equal(g["index"].cpu(), c["index"])
    assert (g["image"].cpu() - c["image"]).abs().mean() < 2 / 127.5
    assert (g["mask"].sum(dim=(1, 2, 3)) == 64 * 64).all()
