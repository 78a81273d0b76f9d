"""The loop driver every loop runs (facecomp.train.driver): the step count, empty batches, checkpoints,
one state.json schema, and checkpoints written before that schema still resuming."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from facecomp import config as config_mod
from facecomp.train import checkpoint as ck
from facecomp.train.checkpoint import RunState
from facecomp.train.driver import Hooks, drive, resume_state
from facecomp.train.loop import build_models, build_optimizers, train
from facecomp.weights import RunFolder, load_tensors, save_tensors, write_json


class _Recorder(Hooks):
    def __init__(self):
        self.stepped, self.saved, self.after = [], [], []

    def step(self, batch, step):
        self.stepped.append(step)
        return {"loss": 1.0}

    def after_step(self, state, batch, result, at_checkpoint):
        self.after.append((state.step, result is not None, at_checkpoint))

    def save(self, state):
        self.saved.append(state.step)


def _batches(empty_at=()):
    i = 0
    while True:
        yield ({"image": None, "skipped": 2} if i in empty_at else {"image": torch.zeros(2, 3, 4, 4), "skipped": 0})
        i += 1


def test_an_empty_batch_passes_its_step_without_an_update():
    state, hooks = RunState(stage=1), _Recorder()
    assert drive(state, _batches(empty_at={1}), hooks, total=4, ckpt_every=2)
    assert hooks.stepped == [0, 2, 3]  # step 1 had no readable image: no update, the count goes on
    assert state.step == 4 and state.images == 3 * 2 and state.skipped == 2
    assert hooks.after == [(1, True, False), (2, False, True), (3, True, False), (4, True, True)]
    assert hooks.saved == [2, 4]


def test_a_stopped_session_leaves_one_checkpoint_at_the_step_reached():
    state, hooks = RunState(stage=1, step=3), _Recorder()
    assert not drive(state, _batches(), hooks, total=10, ckpt_every=4, until=6, saved=3)
    assert hooks.saved == [4, 6] and state.step == 6
    stopped, hooks = RunState(stage=1, step=4), _Recorder()
    assert not drive(stopped, _batches(), hooks, total=10, ckpt_every=4, stop=lambda: True, saved=4)
    assert hooks.saved == [] and hooks.stepped == []  # resumed and stopped at once: its checkpoint is there
    fresh, hooks = RunState(stage=1), _Recorder()
    assert not drive(fresh, _batches(), hooks, total=10, ckpt_every=4, stop=lambda: True)
    assert hooks.saved == [0]  # even at step 0: a requeued job resumes from it


def test_world_size_counts_every_rank_s_images():
    state = RunState(stage=1, world_size=3)
    drive(state, _batches(), _Recorder(), total=2, ckpt_every=10)
    assert state.images == 2 * 2 * 3


def test_optimizers_are_named_like_the_modules(smoke_cfg):
    models = build_models(smoke_cfg, 1, torch.device("cpu"))
    opts = build_optimizers(models, smoke_cfg)
    assert list(opts) == ["generator", "d_local", "d_global"]
    assert opts["generator"].param_groups[0]["lr"] == smoke_cfg.optim.lr_g
    assert opts["d_local"].param_groups[0]["betas"] == (smoke_cfg.optim.beta1, smoke_cfg.optim.beta2)


def test_state_json_reads_every_schema(tmp_path):
    state = RunState(stage=2, step=7, images=28, restarts=[3], validation=[{"step": 6}], config={"a": 1})
    assert RunState.from_json(json.loads(json.dumps(state.to_json()))) == state
    assert state.to_json()["format"] == ck.STATE_FORMAT
    plain_v1 = {"stage": 1, "step": 2750, "skipped": 0, "images": 88000, "seconds": 8585.0, "wall_seconds": 9242.6,
                "config": {}, "validation": [{"step": 2500}], "best": {"step": 2500, "variant": "raw", "score": 17.6}}
    s = RunState.from_json(plain_v1)
    assert (s.stage, s.step, s.images, s.best["step"], s.world_size, s.restarts) == (1, 2750, 88000, 2500, 1, [])
    cluster_v1 = {"format": "facecomp-cluster/1", "stage": 3, "step": 4, "images": 32, "seconds": 1.0,
                  "world_size": 2, "deepspeed": "zero1_fp32", "restarts": [2], "config": {}}
    s = RunState.from_json(cluster_v1)
    assert (s.stage, s.world_size, s.deepspeed, s.restarts) == (3, 2, "zero1_fp32", [2])
    parsing_v1 = {"step": 4, "images": 16, "seconds": 1.0, "scheduler": {"last_epoch": 4}, "config": {}}
    s = RunState.from_json(parsing_v1)
    assert s.stage is None and s.scheduler == {"last_epoch": 4}
    with pytest.raises(ValueError, match="facecomp-state/9"):
        RunState.from_json({"format": "facecomp-state/9", "stage": 1})
    (tmp_path / "state.json").write_text(json.dumps(parsing_v1))
    with pytest.raises(ValueError, match="holds a parsing- or identity-network run; cannot resume it as stage 1"):
        resume_state(tmp_path, 1)
    assert resume_state(tmp_path, None).restarts == [4]


# --- a checkpoint of the layout before the loop driver still resumes ----------------------------------

def _synthetic_celeba(root: Path, train: int = 12, val: int = 2) -> Path:
    """Noise images in the CelebA layout: resuming is about the files of a run, not about faces."""
    (root / "img_align_celeba").mkdir(parents=True)
    rng = np.random.default_rng(0)
    lines = []
    for i in range(train + val):
        name = f"{i:06d}.jpg"
        Image.fromarray(rng.integers(0, 256, (218, 178, 3), dtype=np.uint8)).save(root / "img_align_celeba" / name)
        lines.append(f"{name} {0 if i < train else 1}\n")
    (root / "list_eval_partition.txt").write_text("".join(lines))
    return root


def _to_legacy(ckpt: Path) -> None:
    """Rewrite a checkpoint folder as the plain loop wrote it before this layout: the generator's
    optimizer in optim_g.safetensors (kind 'optim_g'), and state.json without a format or the keys added since."""
    tensors, meta = load_tensors(ckpt / "optim_generator.safetensors", "optim_generator")
    save_tensors(ckpt / "optim_g.safetensors", tensors, "optim_g", {"param_groups": meta["param_groups"]})
    (ckpt / "optim_generator.safetensors").unlink()
    state = json.loads((ckpt / "state.json").read_text())
    legacy = {k: state[k] for k in ("stage", "step", "skipped", "images", "seconds", "wall_seconds", "config",
                                    "validation", "best")}
    (ckpt / "state.json").write_text(json.dumps(legacy, indent=2))


def test_a_checkpoint_of_the_earlier_layout_resumes_as_the_new_one(tmp_path):
    """A run stopped at step 2, its checkpoint rewritten in the earlier layout, resumes through the CLI
    (as `facecomp train --resume` would continue a run in flight) to the very weights, optimizer and EMA
    state, counters and validation history that the same run resumed from the new layout reaches. A
    legacy record with an unbeatable score stays the best, so its checkpoint survives pruning."""
    data = _synthetic_celeba(tmp_path / "celeba")
    cfg = config_mod.load_config("smoke", [f'data.roots=["{data}"]', "train.stage_steps=[6, 4, 4]",
                                           "train.ckpt_every=2", "train.keep_checkpoints=1", "train.ema=0.9",
                                           "optim.lr_decay=cosine", "validation.faces=2", "validation.batch_size=2",
                                           "data.limit=12", "train.log_every=1000", "train.image_every=1000"])
    new = tmp_path / "new"
    assert not train(cfg, 1, data, new, progress=False, stop_at=2).finished
    ckpt = RunFolder(new).latest()
    state = json.loads((ckpt / "state.json").read_text())
    # a validation record the run will never beat: the best checkpoint, protected from pruning
    state["validation"][0]["raw"]["hole_psnr"] = 99.0
    state["best"] = {"step": 2, "variant": "raw", "score": 99.0}
    (ckpt / "state.json").write_text(json.dumps(state))
    write_json(new / "validation.json", state["validation"])
    legacy = tmp_path / "legacy"
    shutil.copytree(new, legacy)
    _to_legacy(RunFolder(legacy).latest())
    assert (RunFolder(legacy).latest() / "optim_g.safetensors").is_file()

    train(cfg, 1, data, new, resume=True, progress=False)
    r = subprocess.run([sys.executable, "-m", "facecomp", "train", "--stage", "1", "--run-dir", str(legacy),
                        "--resume", "--no-progress"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    for run in (new, legacy):
        assert RunFolder(run).steps() == {2, 6}  # keep 1, plus the best
    a, b = RunState.read(RunFolder(new).latest()), RunState.read(RunFolder(legacy).latest())
    assert (b.step, b.images, b.restarts, b.best) == (6, 6 * cfg.train.batch_size, [2], a.best)
    for name in ("generator", "generator_ema", "d_local", "optim_generator", "optim_d_local"):
        x = load_file(RunFolder(new).latest() / f"{name}.safetensors")
        y = load_file(RunFolder(legacy).latest() / f"{name}.safetensors")
        assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x), f"{name} differs"
    assert b.best["step"] == 2 and [r["step"] for r in b.validation] == [2, 4, 6]
    assert b.validation == a.validation
    assert json.loads((legacy / "result.json").read_text())["chosen"]["step"] == 2


def test_log_line_shows_the_rate_since_the_last_line_beside_the_run_average(caplog):
    """A resumed run that was slow for hours (a shared machine) logs what it gets now, not its history."""
    from facecomp.train.loop import StageHooks

    cfg = config_mod.load_config("smoke")
    hooks = StageHooks(cfg, 1, models=None, updaters={}, device=torch.device("cpu"))
    hooks.metrics = {"recon": 1.0, "total": 1.0}
    state = RunState(stage=1, step=100, images=1000, seconds=1000.0)  # 1 image/s so far
    with caplog.at_level("INFO", logger="facecomp.train.loop"):
        hooks.log(state)
        state.step, state.images, state.seconds = 120, 1640, 1020.0  # then 640 images in 20 s
        hooks.log(state)
    first, second = [r.getMessage() for r in caplog.records]
    assert first.endswith("1.0 images/s (run average 1.0)")
    assert second.endswith("32.0 images/s (run average 1.6)")
