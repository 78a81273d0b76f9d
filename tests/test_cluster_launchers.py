"""The two ways users start cluster training: `ray job submit` against a running Ray head, and
`sbatch slurm/train_stageN.sh` (or `slurm/train_all.sh`) against a real (single-node) Slurm.

What this Slurm (22.05) does with a requeued job, as found here: `scontrol requeue` from the batch script
ends the job ("CANCELLED ... DUE TO JOB REQUEUE") and puts it back PENDING with Reason=BeginTime and an
EligibleTime 121 s later; `sbatch --wait` keeps waiting through the requeue (same job id) and returns
when the requeued job ends, polling at intervals that grow to tens of seconds. The tests poll
`scontrol show job` themselves and shorten the 121 s hold to 2 s (`scontrol update StartTime=now+2`).
Not to zero: the hold outlives the revoked job credential (slurmd refuses to launch a job whose new
credential carries the same second as the revocation: "Job N already killed, do not launch batch job",
slurmctld "Killing non-startable batch JobId=N: Job credential revoked", and the job ends FAILED), which
is what happened in 1 of 3 CI runs on 2026-11-26 when the hold was released at once.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
HAVE_RAY = importlib.util.find_spec("ray") is not None and importlib.util.find_spec("ray.dashboard") is not None
HAVE_DS = importlib.util.find_spec("deepspeed") is not None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop_ray(pgid: int, temp_dir: str) -> None:
    """Stop this head's Ray processes only (`ray stop` would stop every Ray on the machine): those of
    the session `ray start` ran in, and any that name its temp dir."""
    import psutil

    victims = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if os.getpgid(p.pid) == pgid or any(temp_dir in part for part in p.info["cmdline"] or []):
                victims.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied, ProcessLookupError):
            continue
    for p in victims:
        try:
            p.send_signal(signal.SIGTERM)
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(victims, timeout=10)
    for p in alive:
        p.kill()


@pytest.fixture()
def ray_head():
    """A local `ray start --head` with token auth, on free ports and its own temp dir."""
    port, dash = _free_port(), _free_port()
    temp = tempfile.mkdtemp(prefix="rfc", dir="/tmp")  # short: Ray's socket paths have a length limit
    env = {**os.environ, "RAY_AUTH_MODE": "token", "PATH": f"{BIN}:{os.environ['PATH']}"}
    # token mode needs a token (~/.ray/auth_token); a first ray.init writes one, a fresh machine has none
    subprocess.run([str(BIN / "ray"), "get-auth-token", "--generate"], capture_output=True, env=env, timeout=60,
                   check=True)
    # its own session: every daemon it leaves behind shares its process group, which teardown stops
    proc = subprocess.Popen([str(BIN / "ray"), "start", "--head", "--port", str(port), "--dashboard-port", str(dash),
                             "--dashboard-host", "127.0.0.1", "--include-dashboard", "true", "--num-cpus", "2",
                             "--ray-client-server-port", str(_free_port()),
                             "--dashboard-agent-listen-port", str(_free_port()),
                             "--temp-dir", temp, "--disable-usage-stats"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=180)
        assert proc.returncode == 0, out
        yield {"address": f"127.0.0.1:{port}", "dashboard": f"http://127.0.0.1:{dash}", "env": env}
    finally:
        _stop_ray(proc.pid, temp)
        shutil.rmtree(temp, ignore_errors=True)


@pytest.mark.ray
@pytest.mark.deepspeed
@pytest.mark.skipif(not HAVE_RAY, reason="ray[default] not installed (pip install 'facecomp[cluster]')")
@pytest.mark.skipif(not HAVE_DS, reason="DeepSpeed not installed (pip install 'facecomp[cluster]')")
def test_ray_job_submit(ray_head, celeba, tmp_path):
    """The README's command, against a local head: the job trains stage 1 on 2 workers and succeeds."""
    cmd = [str(BIN / "ray"), "job", "submit", "--address", ray_head["dashboard"], "--working-dir", ".",
           "--runtime-env", "cluster/runtime_env.yaml", "--",
           "facecomp", "cluster", "train", "--address", "auto", "--config", "smoke", "--stage", "1",
           "--data", str(celeba), "--num-workers", "2", "--storage", str(tmp_path)]
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=ray_head["env"], timeout=600)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-5000:]
    assert "succeeded" in out
    state = json.loads((tmp_path / "stage1" / "step_0000004" / "state.json").read_text())
    assert state["step"] == 4 and state["world_size"] == 2
    assert (tmp_path / "stage1" / "generator.safetensors").is_file()


# --- Slurm -----------------------------------------------------------------------------------

SLURM_SCRIPTS = [REPO / "slurm" / f"train_stage{n}.sh" for n in (1, 2, 3)]
SMALL = ["--nodes=1", "--gpus-per-node=0", "--cpus-per-task=2"]  # the sbatch overrides for this one CPU node


def test_slurm_scripts_pass_shellcheck():
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck not installed (apt-get install shellcheck)")
    r = subprocess.run(["shellcheck", "-x", *map(str, SLURM_SCRIPTS), str(REPO / "slurm" / "ray_stage.sh"),
                        str(REPO / "slurm" / "local.sh"), str(REPO / "slurm" / "train_all.sh")], cwd=REPO,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """A real single-node Slurm (slurmctld + slurmd + munge) started by slurm/local.sh."""
    if shutil.which("slurmctld") is None or shutil.which("sbatch") is None:
        pytest.skip("Slurm not installed (apt-get install slurm-wlm munge; scripts/test.sh does)")
    if os.geteuid() != 0:
        pytest.skip("starting slurmctld/slurmd/munged needs root")
    d = tmp_path_factory.mktemp("slurm")
    env = {**os.environ, "SLURMCTLD_PORT": str(_free_port()), "SLURMD_PORT": str(_free_port())}
    r = subprocess.run(["bash", str(REPO / "slurm" / "local.sh"), "start", str(d)], capture_output=True,
                       text=True, env=env, timeout=120)
    try:
        assert r.returncode == 0, r.stdout + r.stderr
        yield {**env, "SLURM_CONF": str(d / "slurm.conf")}
    finally:
        subprocess.run(["bash", str(REPO / "slurm" / "local.sh"), "stop", str(d)], env=env, timeout=60)


def test_slurm_headers_are_accepted(slurm):
    """sbatch reads each script's #SBATCH header (sized for a GPU cluster: this node can't run it as is)."""
    for script in SLURM_SCRIPTS:
        header = script.read_text()
        assert "#SBATCH --signal=B:USR1@" in header and "#SBATCH --requeue" in header
        r = subprocess.run(["sbatch", "--test-only", "--nodes=1", "--gpus-per-node=0", "--cpus-per-task=2",
                            str(script)], cwd=REPO, capture_output=True, text=True, env=slurm, timeout=60)
        assert r.returncode == 0 and "to start at" in r.stderr, r.stderr


def _job(job: str, env: dict) -> dict[str, str]:
    out = subprocess.run(["scontrol", "show", "job", "-o", job], capture_output=True, text=True, env=env,
                         timeout=30).stdout
    return dict(re.findall(r"(\w+)=(\S*)", out))


def _wait_job(job: str, env: dict, timeout: float) -> dict[str, str]:
    """Poll until the job ends; a requeued job held for BeginTime (121 s here) is released 2 s later.
    Returns its last record, with "HeldForBeginTime" = "yes" if it was held."""
    held = "no"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = _job(job, env)
        if info.get("JobState") in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"):
            return {**info, "HeldForBeginTime": held}
        if info.get("JobState") == "PENDING" and info.get("Reason") == "BeginTime" and info.get("Restarts") != "0":
            if held == "no":  # once: the update itself sets a new BeginTime, so Reason stays BeginTime
                subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now+2"], env=env, timeout=30,
                               check=True)
            held = "yes"
        time.sleep(0.5)
    subprocess.run(["scancel", job], env=env, timeout=30)
    raise AssertionError(f"job {job} still {_job(job, env).get('JobState')} after {timeout} s")


def _slurm_env(slurm, celeba, storage: Path, overrides: str) -> dict:
    return {**slurm, "FACECOMP_DATA": str(celeba.parent), "FACECOMP_CONFIG": "smoke", "FACECOMP_STORAGE": str(storage),
            "FACECOMP_VENV": str(BIN.parent), "FACECOMP_WORKERS_PER_NODE": "2",
            "FACECOMP_RAY_TMP": tempfile.mkdtemp(prefix="rfs", dir="/tmp"), "RAY_DEDUP_LOGS": "0",
            "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2", "FACECOMP_OVERRIDES": overrides}


def _assert_no_ray_left(env: dict) -> None:
    r = subprocess.run(["pgrep", "-f", env["FACECOMP_RAY_TMP"]], capture_output=True, text=True)
    assert r.stdout.strip() == "", f"Ray processes left behind: {r.stdout}"


def _steps(text: str, stage: int = 1) -> list[int]:
    return [int(n) for n in re.findall(rf"stage {stage} step (\d+)/", text)]


@pytest.mark.ray
@pytest.mark.deepspeed
@pytest.mark.skipif(not HAVE_RAY, reason="Ray not installed (pip install 'facecomp[cluster]')")
@pytest.mark.skipif(not HAVE_DS, reason="DeepSpeed not installed (pip install 'facecomp[cluster]')")
def test_signalled_job_is_requeued_and_resumes(slurm, celeba, tmp_path):
    """`sbatch slurm/train_stage1.sh` (40 steps, 2 workers), then USR1 to its batch shell mid-stage, as
    `--signal=B:USR1@LEAD` does before a time limit: the script forwards it to the driver, the workers
    checkpoint at one step, the driver exits 75, the script requeues the job, and the requeued job
    resumes there and finishes with the step and image counts of an uninterrupted run, nothing redone."""
    total = 40
    storage, log = tmp_path / "runs", tmp_path / "stage1.out"
    # no periodic checkpoint before the end: the only one to resume from is the signal's
    env = _slurm_env(slurm, celeba, storage, f"train.stage_steps=[{total},2,2] train.ckpt_every=1000 "
                     "train.log_every=1 train.image_every=10")
    r = subprocess.run(["sbatch", "--parsable", *SMALL, f"--output={log}", str(SLURM_SCRIPTS[0])], cwd=REPO,
                       capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0, r.stderr
    job = r.stdout.strip().split(";")[0]
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not any(n >= 3 for n in _steps(log.read_text() if log.exists() else "")):
        assert _job(job, env).get("JobState") in ("PENDING", "RUNNING"), log.read_text()[-5000:]
        time.sleep(0.2)
    subprocess.run(["scancel", "--signal=USR1", "--batch", job], env=env, timeout=30, check=True)
    info = _wait_job(job, env, timeout=400)
    text = log.read_text()
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", text[-5000:]
    assert info["Restarts"] == "1" and info["HeldForBeginTime"] == "yes", info

    stopped = int(re.search(r"stopped by SIGUSR1 at step (\d+) on 2 workers", text).group(1))
    assert 3 <= stopped < total
    first, sep, second = text.partition(f"requeueing job {job}")
    assert sep and "got SIGUSR1, forwarded to the driver" in first
    assert max(_steps(first)) == stopped  # the first run stopped right at its checkpoint
    assert f"resumed stage 1 at step {stopped}" in second
    assert min(_steps(second)) == stopped + 1 and max(_steps(second)) == total  # nothing redone
    state = json.loads((storage / "stage1" / f"step_{total:07d}" / "state.json").read_text())
    batch = 4  # the smoke preset's train.batch_size: per worker and step
    assert state["step"] == total and state["images"] == total * 2 * batch and state["restarts"] == [stopped]
    assert (storage / "stage1" / f"step_{stopped:07d}" / "state.json").is_file()
    result = json.loads((storage / "stage1" / "result.json").read_text())
    assert result["finished"] and result["steps"] == total and result["restarts"] == [stopped]
    assert not (storage / "stage1" / "stop_request.json").exists()

    # TensorBoard of both runs: each step's scalars once, the image grids every train.image_every
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tb = EventAccumulator(str(storage / "stage1" / "tb"))
    tb.Reload()
    assert {"stage1/recon", "stage1/total", "stage1/images_per_s", "stage1/lr_factor"} <= set(tb.Tags()["scalars"])
    assert [e.step for e in tb.Scalars("stage1/recon")] == list(range(1, total + 1))
    assert [e.step for e in tb.Images("stage1/original_masked_completed")] == list(range(10, total + 1, 10))
    _assert_no_ray_left(env)


@pytest.mark.ray
@pytest.mark.deepspeed
@pytest.mark.skipif(not HAVE_RAY, reason="Ray not installed (pip install 'facecomp[cluster]')")
@pytest.mark.skipif(not HAVE_DS, reason="DeepSpeed not installed (pip install 'facecomp[cluster]')")
def test_train_all_chains_three_stages(slurm, celeba, parsing_weights, tmp_path):
    """`slurm/train_all.sh` submits stages 1, 2, 3 with afterok: each runs (Ray up via srun, the stage on 2
    workers, Ray down) after the one before completed, and starts from it. Then stage 2 alone against a
    stage 1 that did not finish (no result.json) fails, refusing it."""
    storage = tmp_path / "runs"
    env = _slurm_env(slurm, celeba, storage, f"train.stage_steps=[2,2,2] parsing.weights={parsing_weights}")
    r = subprocess.run(["bash", str(REPO / "slurm" / "train_all.sh"), *SMALL, f"--output={tmp_path}/%j.out"],
                       cwd=REPO, capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    jobs = dict(re.findall(r"stage (\d): job (\d+)", r.stdout))
    assert sorted(jobs) == ["1", "2", "3"], r.stdout
    assert _job(jobs["2"], env)["Dependency"] == f"afterok:{jobs['1']}(unfulfilled)"
    infos = {n: _wait_job(jobs[str(n)], env, timeout=400) for n in (1, 2, 3)}
    logs = {n: (tmp_path / f"{jobs[str(n)]}.out").read_text() for n in (1, 2, 3)}
    for n in (1, 2, 3):
        assert infos[n]["JobState"] == "COMPLETED", logs[n][-5000:]
        state = json.loads((storage / f"stage{n}" / "step_0000002" / "state.json").read_text())
        assert state["stage"] == n and state["step"] == 2 and state["world_size"] == 2
        assert json.loads((storage / f"stage{n}" / "result.json").read_text())["finished"]
        if n > 1:
            assert infos[n]["StartTime"] >= infos[n - 1]["EndTime"]  # ISO times: text order is time order
            assert f"stage {n} initialised from {storage / f'stage{n - 1}' / 'step_0000002'}" in logs[n]
    _assert_no_ray_left(env)

    # stage 2 from a stage 1 that has checkpoints but did not finish: refused, nothing trained
    other = tmp_path / "other"
    shutil.copytree(storage / "stage1", other / "stage1")
    (other / "stage1" / "result.json").unlink()
    log = tmp_path / "refused.out"
    env = {**env, "FACECOMP_STORAGE": str(other)}
    r = subprocess.run(["sbatch", "--parsable", *SMALL, f"--output={log}", str(SLURM_SCRIPTS[1])], cwd=REPO,
                       capture_output=True, text=True, env=env, timeout=60)
    info = _wait_job(r.stdout.strip().split(";")[0], env, timeout=300)
    assert info["JobState"] == "FAILED", log.read_text()[-3000:]
    assert "has not finished" in log.read_text() and not any((other / "stage2").glob("step_*"))
    _assert_no_ray_left(env)
