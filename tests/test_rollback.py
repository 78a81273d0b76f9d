"""The guard's optional rollback (train.rollbacks): a run that diverges goes back to its last finite
checkpoint with lowered learning rates, a bounded number of times, and says so in state.json, the log
and TensorBoard."""

import json

import pytest

from facecomp import losses
from facecomp.train import loop
from facecomp.train.guard import Diverged
from facecomp.train.schedule import lr_factor
from facecomp.weights import RunFolder, load_tensors


def _cfg(smoke_cfg, celeba, rollbacks):
    smoke_cfg.data.root = str(celeba)
    smoke_cfg.train.stage_steps = [8, 8, 8]
    smoke_cfg.train.ckpt_every = 2
    smoke_cfg.train.log_every = 3
    smoke_cfg.train.rollbacks = rollbacks
    smoke_cfg.train.rollback_lr = 0.25
    smoke_cfg.validation.faces = 0
    return smoke_cfg


def _poison(monkeypatch, bad_calls):
    real = losses.reconstruction
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        value = real(*args, **kwargs)
        return value * float("nan") if calls["n"] in bad_calls else value

    monkeypatch.setattr(losses, "reconstruction", poisoned)


def test_a_diverged_run_rolls_back_to_its_last_finite_checkpoint_with_a_lower_rate(
        celeba, smoke_cfg, tmp_path, monkeypatch, caplog):
    cfg = _cfg(smoke_cfg, celeba, rollbacks=1)
    run = tmp_path / "run"
    _poison(monkeypatch, {5})  # step 5's loss is NaN once (the replayed step 5 is the 7th call)
    res = loop.train(cfg, 1, celeba, run, progress=False)
    assert res.finished and res.steps == 8
    state = json.loads((RunFolder(run).latest() / "state.json").read_text())
    assert state["lr_scale"] == 0.25
    assert [(r["step"], r["to"], r["lr_scale"]) for r in state["rollbacks"]] == [(5, 4, 0.25)]
    assert "recon nan" in state["rollbacks"][0]["what"]
    # the lowered rate is the one the optimizers stepped with, not only a record
    _, meta = load_tensors(RunFolder(run).latest() / "optim_generator.safetensors")
    scheduled = cfg.optim.lr_g * lr_factor(cfg.optim, 7, 8)
    assert meta["param_groups"][0]["lr"] == pytest.approx(scheduled * 0.25)
    assert "rollback 1 of 1: back to" in caplog.text and "step_0000004" in caplog.text
    for ckpt in (run / "checkpoints").glob("step_*"):
        for f in ckpt.glob("*.safetensors"):
            tensors, _ = load_tensors(f)
            assert all(t.isfinite().all() for t in tensors.values() if t.is_floating_point()), f
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tb")).Reload()
    scales = {e.step: e.value for e in events.Scalars("stage1/lr_scale")}
    assert scales[3] == 1.0 and scales[6] == 0.25  # the diverged session's line at 6 was purged


def test_rollbacks_are_bounded(celeba, smoke_cfg, tmp_path, monkeypatch, caplog):
    cfg = _cfg(smoke_cfg, celeba, rollbacks=2)
    _poison(monkeypatch, set(range(1, 100)))  # every step: no rate heals it
    with pytest.raises(Diverged, match="diverged at step 1"):
        loop.train(cfg, 1, celeba, tmp_path / "run", progress=False)
    assert "rollback 2 of 2: back to the stage's start" in caplog.text and "rollback 3" not in caplog.text
    assert not list((tmp_path / "run" / "checkpoints").glob("step_*"))


def test_without_rollbacks_the_run_stops(celeba, smoke_cfg, tmp_path, monkeypatch):
    cfg = _cfg(smoke_cfg, celeba, rollbacks=0)
    _poison(monkeypatch, {5})
    with pytest.raises(Diverged, match="step 5"):
        loop.train(cfg, 1, celeba, tmp_path / "run", progress=False)
