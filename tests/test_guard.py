"""The divergence guard on real runs: a NaN in a loss or a weight never reaches a checkpoint, the run
stops naming the step, and --resume continues from the last finite checkpoint."""

import json
import math
import subprocess
import sys

import pytest
import torch

from facecomp import losses
from facecomp.train import loop
from facecomp.train.guard import Diverged, DivergenceGuard
from facecomp.weights import RunFolder, load_tensors


def _cfg(smoke_cfg, celeba):
    smoke_cfg.data.root = str(celeba)
    smoke_cfg.train.stage_steps = [8, 8, 8]
    smoke_cfg.train.ckpt_every = 2
    smoke_cfg.train.log_every = 3  # detection must come at a log line or a checkpoint, not per step
    smoke_cfg.validation.faces = 0
    return smoke_cfg


def _saved_steps(run):
    return sorted(int(p.name.removeprefix("step_")) for p in (run / "checkpoints").glob("step_*"))


def _all_finite(run):
    for ckpt in (run / "checkpoints").glob("step_*"):
        for f in ckpt.glob("*.safetensors"):
            tensors, _ = load_tensors(f)
            assert all(torch.isfinite(t).all() for t in tensors.values() if t.is_floating_point()), f


def test_nan_loss_stops_the_run_before_a_checkpoint_and_resume_goes_on(celeba, smoke_cfg, tmp_path, monkeypatch):
    cfg = _cfg(smoke_cfg, celeba)
    run = tmp_path / "run"
    real = losses.reconstruction
    calls = {"n": 0}

    def poisoned(*args, **kwargs):  # the 5th step's reconstruction loss is NaN
        calls["n"] += 1
        value = real(*args, **kwargs)
        return value * float("nan") if calls["n"] == 5 else value

    monkeypatch.setattr(losses, "reconstruction", poisoned)
    with pytest.raises(Diverged) as e:
        loop.train(cfg, 1, celeba, run, progress=False)
    assert e.value.step == 5 and "recon nan" in str(e.value)
    assert _saved_steps(run) == [2, 4]  # step 6's checkpoint never written: the log line at 6 stopped it
    _all_finite(run)
    monkeypatch.setattr(losses, "reconstruction", real)
    res = loop.train(cfg, 1, celeba, run, resume=True, progress=False)
    assert res.finished and res.steps == 8
    assert json.loads((RunFolder(run).latest() / "state.json").read_text())["restarts"] == [4]
    _all_finite(run)


def test_nan_weight_is_caught_before_the_checkpoint_it_would_spoil(celeba, smoke_cfg, tmp_path, monkeypatch):
    cfg = _cfg(smoke_cfg, celeba)
    run = tmp_path / "run"
    real_step = loop.train_step

    def step_then_poison(models, updaters, batch, cfg_, stage, step, **kw):
        res = real_step(models, updaters, batch, cfg_, stage, step, **kw)
        if step == 3:  # after the 4th update, just before checkpoint 4: this step's losses were finite
            with torch.no_grad():
                models.generator.to_rgb.weight[0, 0, 0, 0] = float("nan")
        return res

    monkeypatch.setattr(loop, "train_step", step_then_poison)
    with pytest.raises(Diverged, match="step 4: non-finite weights"):
        loop.train(cfg, 1, celeba, run, progress=False)
    assert _saved_steps(run) == [2]
    _all_finite(run)


def test_guard_records_on_the_device_and_reads_once(smoke_cfg):
    guard = DivergenceGuard(stage=1)
    lin = torch.nn.Linear(2, 2)
    guard.observe(1, {"recon": torch.tensor(1.0)})
    guard.check(1, [lin])  # all finite: no error
    guard.observe(2, {"recon": torch.tensor(math.inf)})
    guard.observe(3, {"recon": torch.tensor(math.nan)})
    with pytest.raises(Diverged, match="step 2: non-finite loss \\(recon inf\\)"):
        guard.check(3, [lin])


def test_diverging_cli_run_exits_3_with_one_line_and_no_checkpoint(celeba, tmp_path):
    run = tmp_path / "run"
    r = subprocess.run([sys.executable, "-m", "facecomp", "train", "--config", "smoke", "--stage", "1",
                        "--data", str(celeba), "--run-dir", str(run), "--no-progress", "loss.recon=1e38",
                        "validation.faces=0"], capture_output=True, text=True)
    assert r.returncode == 3, r.stderr[-2000:]
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("facecomp:")]
    assert len(lines) == 1 and "diverged at step 1" in lines[0] and "Traceback" not in r.stderr
    assert not list((run / "checkpoints").glob("step_*"))
