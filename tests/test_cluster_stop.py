"""Stopping a cluster run on a signal, without Ray: the ranks' agreement on the stop step (two real gloo
processes), the driver's signal handler and marker, and the refusals `facecomp cluster train` makes
before it starts Ray. The whole path through Ray and Slurm is test_cluster_launchers.py's requeue test."""

from __future__ import annotations

import datetime
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch.distributed as dist
import torch.multiprocessing as mp

from facecomp.cluster.stop import STOP_FILE, StopAgreement, clear_stop, max_reduce, stop_on_signal


def test_agreement_alone_follows_the_marker(tmp_path):
    marker = tmp_path / STOP_FILE
    now = [0.0]
    stop = StopAgreement(marker, check_seconds=1.0, clock=lambda: now[0])
    assert not stop()
    marker.write_text("{}")
    assert not stop(), "looked at the file again within check_seconds"
    now[0] = 1.0
    assert stop() and stop()  # and stays stopped
    clear_stop(tmp_path)
    assert not marker.exists()


def _rank(rank: int, port: int, dirs: list[str], see_at: list[int | None], out: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2,
                            timeout=datetime.timedelta(seconds=60))
    marker = Path(dirs[rank]) / STOP_FILE
    stop = StopAgreement(marker, max_reduce(), check_seconds=0.0)
    calls = 0
    for step in range(50):
        if see_at[rank] is not None and step == see_at[rank]:
            marker.write_text("{}")  # this rank's own folder: the other rank never sees it
        calls += 1
        if stop():
            break
    Path(out, f"rank{rank}.json").write_text(json.dumps({"calls": calls, "seen": stop.seen}))
    dist.destroy_process_group()


@pytest.mark.parametrize("see_at", [[None, 7], [3, 5]], ids=["one-rank-sees", "both-see-apart"])
def test_ranks_stop_at_the_same_step(tmp_path, see_at):
    """Two gloo ranks; the marker appears where only rank 1 looks (or at different steps on each): both
    stop at the same call, the first step any rank saw it, and neither waits in a collective (a 60 s
    process-group timeout turns a hang into a failure)."""
    dirs = [tmp_path / "r0", tmp_path / "r1"]
    for d in dirs:
        d.mkdir()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.spawn(_rank, args=(port, [str(d) for d in dirs], see_at, str(tmp_path)), nprocs=2, join=False)
    for p in ctx.processes:
        p.join(120)
    assert all(p.exitcode == 0 for p in ctx.processes), [p.exitcode for p in ctx.processes]
    got = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    first = min(s for s in see_at if s is not None)
    assert [g["calls"] for g in got] == [first + 1, first + 1]
    assert [g["seen"] for g in got] == [s is not None and s <= first for s in see_at]


def test_signal_writes_the_marker_and_handlers_come_back(tmp_path):
    before = signal.getsignal(signal.SIGUSR1)
    with stop_on_signal(tmp_path) as (request, install):
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # as ray.init replaces the SIGTERM handler
        install()
        os.kill(os.getpid(), signal.SIGTERM)
        assert request and request.name == "SIGTERM"
        assert json.loads((tmp_path / STOP_FILE).read_text())["signal"] == "SIGTERM"
        os.kill(os.getpid(), signal.SIGUSR1)
        assert request.name == "SIGUSR1"
    assert signal.getsignal(signal.SIGUSR1) is before


def _cli(*args, timeout=120):
    env = {**os.environ, "DS_ACCELERATOR": "cpu"}
    return subprocess.run([sys.executable, "-m", "facecomp", "cluster", "train", "--config", "smoke", *map(str, args)],
                          capture_output=True, text=True, env=env, timeout=timeout)


def test_stage_2_needs_a_finished_stage_1(celeba, tmp_path):
    """Refused before Ray starts: stage 2 without --init, and --init from a run with no result.json."""
    r = _cli("--stage", 2, "--data", celeba, "--storage", tmp_path)
    assert r.returncode == 2 and "--init" in r.stderr and "--from-scratch" in r.stderr, r.stderr
    unfinished = tmp_path / "stage1"
    (unfinished / "step_0000002").mkdir(parents=True)
    (unfinished / "step_0000002" / "state.json").write_text(json.dumps({"stage": 1, "step": 2}))
    r = _cli("--stage", 2, "--data", celeba, "--storage", tmp_path, "--init", unfinished)
    assert r.returncode == 2 and "has not finished" in r.stderr and "--init-unfinished" in r.stderr, r.stderr
    assert not (tmp_path / "stage2").exists()

