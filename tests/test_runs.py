"""Runs as clusters run them: stop on a signal with a checkpoint, refuse to clobber a run, chain stages
only from finished ones, refuse a silent config change on resume."""

import json
import signal
import subprocess
import sys
import time

import pytest

from facecomp.train import checkpoint as ck
from facecomp.train.preempt import EXIT_STOPPED, StopRequest
from facecomp.weights import RunFolder


def _cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "facecomp", *map(str, args)], capture_output=True, text=True, **kw)


def _train(celeba, run, *extra):
    return _cli("train", "--config", "smoke", "--stage", 1, "--data", celeba, "--run-dir", run, "--no-progress",
                *extra)


def test_a_signal_checkpoints_and_the_run_resumes_with_nothing_redone(celeba, tmp_path):
    """SIGUSR1 mid-stage: exit EXIT_STOPPED with a checkpoint at the step reached; the same command line
    with --resume (what a requeued batch script runs) finishes the stage with the uninterrupted run's
    step and image counts. (That a resumed run equals an uninterrupted one bit for bit is
    test_train_recipe's stop_at test.)"""
    run, steps = tmp_path / "run", ("train.stage_steps=[30, 4, 4]", "train.ckpt_every=1000")
    proc = subprocess.Popen([sys.executable, "-m", "facecomp", "train", "--config", "smoke", "--stage", "1",
                             "--data", str(celeba), "--run-dir", str(run), "--no-progress", *steps],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not list(run.glob("tb/events.*")):  # the loop is about to start
        assert time.time() < deadline and proc.poll() is None, proc.communicate()
        time.sleep(0.1)
    time.sleep(1.0)
    proc.send_signal(signal.SIGUSR1)
    out, err = proc.communicate(timeout=120)
    if proc.returncode == 0:
        pytest.skip("the run finished before the signal arrived (a machine too fast for 30 smoke steps)")
    assert proc.returncode == EXIT_STOPPED, err
    assert "stopped by SIGUSR1" in out and "--resume" in out and "Traceback" not in err
    stopped_at = ck.read_state(RunFolder(run).latest())["step"]
    assert stopped_at < 30 and not (run / "result.json").exists()
    r = _train(celeba, run, "--resume", *steps)
    assert r.returncode == 0, r.stderr
    state = ck.read_state(RunFolder(run).latest())
    assert state["step"] == 30 and state["images"] == 30 * 4  # a redone step would count its images twice
    assert json.loads((run / "result.json").read_text())["finished"]


@pytest.mark.parametrize("signum", [signal.SIGUSR1, signal.SIGTERM])
def test_stop_request_catches_the_signals_and_restores_handlers(signum):
    before = signal.getsignal(signum)
    with StopRequest().installed() as stop:
        assert not stop
        signal.raise_signal(signum)
        assert stop and stop.name == signal.Signals(signum).name
    assert signal.getsignal(signum) == before


def test_an_existing_run_is_refused_without_resume_or_overwrite(celeba, tmp_path):
    run = tmp_path / "r"
    assert _train(celeba, run).returncode == 0
    r = _train(celeba, run)
    assert r.returncode == 2 and "already holds a run" in r.stderr and "--overwrite" in r.stderr
    r = _train(celeba, run, "--overwrite")
    assert r.returncode == 0, r.stderr
    assert len(list((run / "tb").glob("events.*"))) == 1  # the old event file went with the old run


def test_resume_refuses_a_changed_config_unless_allowed(celeba, tmp_path):
    run = tmp_path / "r"
    assert _train(celeba, run, "train.stage_steps=[2, 2, 2]").returncode == 0
    r = _train(celeba, run, "--resume", "train.stage_steps=[2, 2, 2]", "optim.lr_g=0.1")
    assert r.returncode == 2 and "optim.lr_g: 0.0002 -> 0.1" in r.stderr
    r = _train(celeba, run, "--resume", "train.stage_steps=[2, 2, 2]", "runtime.threads=1")
    assert r.returncode == 0, r.stderr  # speed, not weights: free to change
    r = _train(celeba, run, "--resume", "train.stage_steps=[4, 4, 4]", "--allow-config-change")
    assert r.returncode == 0, r.stderr
    assert ck.read_state(RunFolder(run).latest())["step"] == 4


def test_stages_chain_only_from_finished_runs(celeba, tmp_path):
    s1 = tmp_path / "s1"
    r = _cli("train", "--config", "smoke", "--stage", 2, "--data", celeba, "--run-dir", tmp_path / "x")
    assert r.returncode == 2 and "pass --init" in r.stderr and "--from-scratch" in r.stderr
    assert _train(celeba, s1, "train.stage_steps=[2, 2, 2]").returncode == 0
    (s1 / "result.json").rename(s1 / "result.json.bak")  # as if stage 1 were still running
    stage2 = ("train", "--config", "smoke", "--stage", 2, "--data", celeba, "--run-dir", tmp_path / "s2",
              "--init", s1, "--no-progress")
    r = _cli(*stage2)
    assert r.returncode == 2 and "has not finished" in r.stderr
    assert _cli(*stage2, "--init-unfinished").returncode == 0
    (s1 / "result.json.bak").rename(s1 / "result.json")
    r = _cli(*stage2, "--overwrite")
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "s2" / "result.json").read_text())["finished"]


def test_a_stage_starts_from_a_shipped_generator_by_its_name_on_the_command_line(celeba, tmp_path):
    """`facecomp train --init paper-generator` (docs/training.md): the name resolves to the shipped file;
    the CLI once refused it as 'no such run directory' before the loop could."""
    r = _cli("train", "--config", "cpu", "--stage", 3, "--data", celeba, "--run-dir", tmp_path / "s3",
             "--init", "paper-generator", "--no-progress", "generator.skips=4", "train.stage_steps=[1, 1, 1]",
             "train.batch_size=2", "validation.faces=0", "runtime.threads=1", "runtime.amp=none")
    assert r.returncode == 0, r.stderr
    assert "initialised from" in r.stderr and "paper_generator.safetensors" in r.stderr, r.stderr
    assert RunFolder(tmp_path / "s3").latest() is not None
