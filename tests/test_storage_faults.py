"""What long runs meet on real file systems: a disk that fills during a checkpoint, a damaged newest
checkpoint on --resume, training images that vanish or turn to garbage mid-epoch, and keep-k pruning
after a stretch of non-finite checkpoints."""

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from facecomp.config import DataConfig, MaskConfig, load_config
from facecomp.data.celeba import CelebAIndex, partition_files
from facecomp.data.pipeline import EpochBatchSampler, FaceDataset, collate
from facecomp.layout import Augment
from facecomp.train import checkpoint as ck
from facecomp.train import loop
from facecomp.weights import RunFolder, load_tensors, save_tensors
from facecomp.weights.run_folder import EXIT_DISK_FULL


def _cfg(cfg, celeba, steps: int):
    cfg.data.root = str(celeba)
    cfg.train.stage_steps = [steps, steps, steps]
    cfg.train.ckpt_every = 2
    cfg.validation.faces = 0
    return cfg


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "facecomp", *map(str, args)], capture_output=True, text=True)


def _facecomp_lines(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if ln.startswith("facecomp:")]


# --- a full disk during a checkpoint ----------------------------------------------------------------

def _mount(args: list[str]) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(["mount", *args], capture_output=True, text=True)
    except FileNotFoundError:
        return subprocess.CompletedProcess(args, 1, "", "no mount command")


@pytest.fixture()
def small_disk(tmp_path):
    """A real tmpfs (resizable with ``mount -o remount,size=``); skips where mounting is not permitted."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    r = _mount(["-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mnt)])
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs to fill up (needs root or CAP_SYS_ADMIN): {r.stderr.strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def _resize(mnt: Path, size: int) -> None:
    r = _mount(["-o", f"remount,size={size}", str(mnt)])
    assert r.returncode == 0, r.stderr


def _used(mnt: Path) -> int:
    st = os.statvfs(mnt)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


def _size(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def test_full_disk_during_a_checkpoint_keeps_the_last_good_one_and_stops_with_one_line(
        celeba, smoke_cfg, small_disk):
    cfg = _cfg(smoke_cfg, celeba, 6)
    run = small_disk / "run"
    loop.train(cfg, 1, celeba, run, progress=False, stop_at=2)  # the checkpoint of step 2: it fits
    first = run / "checkpoints" / "step_0000002"
    # room for half a checkpoint more: the one of step 4 (as large as step 2's, plus D's Adam state) cannot fit
    _resize(small_disk, _used(small_disk) + _size(first) // 2)
    r = _cli("train", "--stage", 1, "--run-dir", run, "--resume", "--no-progress")
    lines = _facecomp_lines(r.stderr)
    assert r.returncode == EXIT_DISK_FULL, r.stderr[-3000:]
    assert "Traceback" not in r.stderr and len(lines) == 1, r.stderr[-3000:]
    assert "disk is full" in lines[0] and "step 4" in lines[0] and str(first) in lines[0]
    assert f"--run-dir {run} --resume" in lines[0]
    # nothing half-written stays, `latest` still names the good one, and it loads with its checksums
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["latest", "step_0000002"]
    assert (run / "checkpoints" / "latest").read_text().strip() == "step_0000002"
    assert ck.resume_checkpoint(run) == first
    # with room again, the command the line gives finishes the stage
    _resize(small_disk, 64 << 20)
    result = loop.train(cfg, 1, celeba, run, resume=True, progress=False)
    assert result.finished and result.steps == 6
    assert ck.read_state(RunFolder(run).latest())["restarts"] == [2]


# --- a damaged newest checkpoint on --resume ---------------------------------------------------------

@pytest.fixture(scope="module")
def three_checkpoints(celeba, tmp_path_factory) -> Path:
    """A stage-1 run stopped at step 6 of 8, with its checkpoints of steps 2, 4 and 6 (copy before damaging)."""
    cfg = _cfg(load_config("smoke", ["train.log_every=1000", "train.image_every=1000"]), celeba, 8)
    run = tmp_path_factory.mktemp("ckpts") / "run"
    loop.train(cfg, 1, celeba, run, progress=False, stop_at=6)
    assert RunFolder(run).steps() == {2, 4, 6}
    return run


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF  # inside the last tensor: the file still reads as safetensors, its checksum does not match
    path.write_bytes(bytes(data))


def _nan_weights(path: Path) -> None:
    """Non-finite weights in a well-formed file with a valid checksum (a checkpoint not marked either way)."""
    tensors, meta = load_tensors(path)
    kind = meta.pop("kind")
    for key in ("format", "sha256"):
        meta.pop(key)
    tensors["fc_in.weight"][0, 0] = float("nan")
    save_tensors(path, tensors, kind, meta)
    state = json.loads((path.parent / "state.json").read_text())
    state.pop("finite")  # as a checkpoint from before finiteness was recorded
    (path.parent / "state.json").write_text(json.dumps(state))


DAMAGE = {
    "truncated weights": (lambda c: _truncate(c / "generator.safetensors"),
                          "generator.safetensors: not a readable safetensors file"),
    "flipped byte": (lambda c: _flip_a_byte(c / "optim_generator.safetensors"), "checksum mismatch"),
    "no state.json": (lambda c: (c / "state.json").unlink(), "unreadable state.json"),
    "garbled state.json": (lambda c: (c / "state.json").write_bytes(b'{"stage": 1, "st\xff\x00'),
                           "unreadable state.json"),
    "state.json not an object": (lambda c: (c / "state.json").write_text("[]"), "not an object"),
    "missing weights file": (lambda c: (c / "d_local.safetensors").unlink(), "d_local.safetensors is missing"),
    "non-finite weights": (lambda c: _nan_weights(c / "generator.safetensors"), "non-finite weights"),
}
NEEDS = [*loop.TRAINED, *(f"optim_{name}" for name in loop.TRAINED)]


@pytest.mark.parametrize("kind", DAMAGE)
def test_resume_passes_over_a_damaged_newest_checkpoint(three_checkpoints, tmp_path, caplog, kind):
    run = shutil.copytree(three_checkpoints, tmp_path / "run")
    damage, reason = DAMAGE[kind]
    damage(run / "checkpoints" / "step_0000006")
    with caplog.at_level(logging.WARNING, logger="facecomp.train.checkpoint"):
        assert ck.resume_checkpoint(run, NEEDS) == run / "checkpoints" / "step_0000004"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "step_0000006" in warnings[0] and reason in warnings[0], warnings
    assert warnings[0].endswith(str(run / "checkpoints" / "step_0000004"))


def test_resume_with_no_checkpoint_that_verifies_is_one_error(three_checkpoints, tmp_path):
    run = shutil.copytree(three_checkpoints, tmp_path / "run")
    for step in (2, 4, 6):
        _truncate(run / "checkpoints" / f"step_{step:07d}" / "d_global.safetensors")
    with pytest.raises(ValueError, match="no checkpoint to resume from verifies: .*step_0000006 .*step_0000002"):
        ck.resume_checkpoint(run)


def test_train_resume_goes_on_from_the_previous_complete_checkpoint(three_checkpoints, smoke_cfg, celeba, tmp_path,
                                                                    caplog):
    run = shutil.copytree(three_checkpoints, tmp_path / "run")
    _truncate(run / "checkpoints" / "step_0000006" / "generator.safetensors")
    with caplog.at_level(logging.WARNING):
        result = loop.train(_cfg(smoke_cfg, celeba, 8), 1, celeba, run, resume=True, progress=False)
    assert result.finished and result.steps == 8
    state = ck.read_state(RunFolder(run).latest())
    assert state["restarts"] == [4] and state["finite"] is True
    passed = [r.getMessage() for r in caplog.records if "passing over" in r.getMessage()]
    assert len(passed) == 1 and "step_0000006" in passed[0] and passed[0].endswith("step_0000004")
    # the damaged step 6 was written again by the resumed run, whole
    assert ck.verify_checkpoint(run / "checkpoints" / "step_0000006", NEEDS) is None


def test_cli_resume_reads_its_config_from_the_checkpoint_it_resumes(three_checkpoints, tmp_path):
    run = shutil.copytree(three_checkpoints, tmp_path / "run")
    (run / "checkpoints" / "step_0000006" / "state.json").write_text('{"stage": 1, "step": 6, "conf')
    r = _cli("train", "--stage", 1, "--run-dir", run, "--resume", "--no-progress")
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr[-3000:]
    passed = [ln for ln in r.stderr.splitlines() if "passing over" in ln]
    assert len(passed) == 1 and "step_0000006" in passed[0] and "resuming from" in passed[0], r.stderr[-3000:]
    assert ck.read_state(RunFolder(run).latest())["restarts"] == [4]


# --- training images deleted or garbled mid-epoch ----------------------------------------------------

def test_images_deleted_or_garbled_mid_epoch_are_skipped_counted_and_warned(celeba, smoke_cfg, tmp_path,
                                                                           monkeypatch, caplog):
    faces = tmp_path / "faces"
    (faces / "img_align_celeba").mkdir(parents=True)
    for f in CelebAIndex.open(celeba).files("train", limit=24):
        shutil.copy(f, faces / "img_align_celeba" / f.name)  # no partition file: all 24 are training faces
    cfg = _cfg(smoke_cfg, faces, 12)  # 6 steps an epoch: two epochs
    cfg.data.workers, cfg.train.ckpt_every = 0, 12  # workers=0: a batch is read when its step asks for it
    files = partition_files([faces], "train", cfg.data.limit)  # the loop's list: the sampler's indices
    order = EpochBatchSampler(len(files), cfg.train.batch_size, cfg.train.seed).epoch_order(0)
    # read in epoch 0 after the damage (batches 2 and 3), and again in epoch 1: two skips each
    deleted, garbled = files[order[9]], files[order[14]]
    real_step = loop.train_step

    def step_then_damage(models, updaters, batch, cfg_, stage, step, **kw):
        if step == 1:  # the loader was built and is mid-epoch
            deleted.unlink()
            garbled.write_bytes(b"\x00garbage" * 200)
        return real_step(models, updaters, batch, cfg_, stage, step, **kw)

    monkeypatch.setattr(loop, "train_step", step_then_damage)
    with caplog.at_level(logging.WARNING):
        result = loop.train(cfg, 1, faces, tmp_path / "run", progress=False)
    assert result.finished and result.steps == 12
    state = ck.read_state(RunFolder(tmp_path / "run").latest())
    assert state["skipped"] == 4 and state["images"] == 12 * cfg.train.batch_size - 4
    text = caplog.text
    assert f"{deleted}: no such file" in text and f"{garbled}:" in text
    assert "4 unreadable image(s) skipped so far" in text


def test_an_image_that_vanishes_between_check_and_read_is_skipped(face_files, tmp_path, monkeypatch, caplog):
    files = [Path(shutil.copy(f, tmp_path / f"{i}.jpg")) for i, f in enumerate(face_files[:4])]
    ds = FaceDataset(files, 128, Augment.from_config(DataConfig()), MaskConfig(), seed=0)
    real_read = Path.read_bytes

    def vanishing(self):  # another process deletes the file after it was seen to exist
        if self == files[2]:
            self.unlink()
        return real_read(self)

    monkeypatch.setattr(Path, "read_bytes", vanishing)
    batch = collate([ds[(0, i)] for i in range(4)])
    assert batch["skipped"] == 1 and batch["index"].tolist() == [0, 1, 3]
    assert f"skipping {files[2]}: unreadable" in caplog.text


# --- keep-k after non-finite checkpoints -------------------------------------------------------------

def _net(value: float) -> nn.Module:
    net = nn.Linear(4, 4)
    with torch.no_grad():
        net.weight.fill_(value)
    return net


def test_pruning_keeps_the_newest_finite_and_the_protected_checkpoint(tmp_path):
    def save(step: int, value: float, keep: int) -> None:
        ck.save_checkpoint(tmp_path, {"generator": (_net(value), {})}, {}, ck.RunState(stage=1, step=step),
                           keep=keep, protect=frozenset({1}))

    save(1, 1.0, keep=0)  # the validation-best
    save(2, 2.0, keep=0)  # the last good one
    for step in (3, 4):
        save(step, float("nan"), keep=0)  # the run went non-finite (a loop without the divergence guard)
    save(5, float("inf"), keep=1)
    assert RunFolder(tmp_path).steps() == {1, 2, 5}
    finite = {s: ck.read_state(tmp_path / "checkpoints" / f"step_{s:07d}")["finite"] for s in (1, 2, 5)}
    assert finite == {1: True, 2: True, 5: False}
    # and a resume goes on from the last good one, not from the newest
    assert ck.resume_checkpoint(tmp_path) == tmp_path / "checkpoints" / "step_0000002"
