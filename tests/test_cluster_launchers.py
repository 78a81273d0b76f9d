"""The two ways users start cluster training: `ray job submit` against a running Ray head, and
`sbatch slurm/train_stageN.sh` against a real (single-node) Slurm."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
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


def test_slurm_scripts_pass_shellcheck():
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck not installed (apt-get install shellcheck)")
    r = subprocess.run(["shellcheck", "-x", *map(str, SLURM_SCRIPTS), str(REPO / "slurm" / "ray_stage.sh"),
                        str(REPO / "slurm" / "local.sh")], cwd=REPO, capture_output=True, text=True)
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
    """sbatch parses each script's #SBATCH header (sized for a GPU cluster: this node can't run it as is)."""
    for script in SLURM_SCRIPTS:
        r = subprocess.run(["sbatch", "--test-only", "--nodes=1", "--gpus-per-node=0", "--cpus-per-task=2",
                            str(script)], cwd=REPO, capture_output=True, text=True, env=slurm, timeout=60)
        assert r.returncode == 0 and "to start at" in r.stderr, r.stderr


@pytest.mark.ray
@pytest.mark.deepspeed
@pytest.mark.skipif(not HAVE_RAY, reason="Ray not installed (pip install 'facecomp[cluster]')")
@pytest.mark.skipif(not HAVE_DS, reason="DeepSpeed not installed (pip install 'facecomp[cluster]')")
def test_sbatch_three_stages(slurm, celeba, parsing_weights, tmp_path):
    """`sbatch --wait slurm/train_stageN.sh` for N = 1, 2, 3 on one CPU node with 2 workers: Ray up via
    srun, the stage, Ray down; stage 2 starts from stage 1's run and stage 3 from stage 2's."""
    storage = tmp_path / "runs"
    env = {**slurm, "FACECOMP_DATA": str(celeba), "FACECOMP_CONFIG": "smoke", "FACECOMP_STORAGE": str(storage),
           "FACECOMP_VENV": str(BIN.parent), "FACECOMP_WORKERS_PER_NODE": "2", "RAY_PORT": str(_free_port()),
           "FACECOMP_RAY_TMP": tempfile.mkdtemp(prefix="rfs", dir="/tmp"), "RAY_DEDUP_LOGS": "0",
           "FACECOMP_OVERRIDES": f"train.stage_steps=[2,2,2] parsing.weights={parsing_weights}"}
    for n, script in enumerate(SLURM_SCRIPTS, start=1):
        log = tmp_path / f"stage{n}.out"
        r = subprocess.run(["sbatch", "--wait", "--nodes=1", "--gpus-per-node=0", "--cpus-per-task=2",
                            f"--output={log}", str(script)], cwd=REPO, capture_output=True, text=True, env=env,
                           timeout=400)
        text = log.read_text() if log.exists() else ""
        assert r.returncode == 0, r.stderr + text[-5000:]
        state = json.loads((storage / f"stage{n}" / "step_0000002" / "state.json").read_text())
        assert state["stage"] == n and state["step"] == 2 and state["world_size"] == 2
        if n > 1:
            assert f"stage {n} initialised from {storage / f'stage{n - 1}' / 'step_0000002'}" in text
    # Ray was torn down with each job: no process of it is left
    r = subprocess.run(["pgrep", "-f", env["FACECOMP_RAY_TMP"]], capture_output=True, text=True)
    assert r.stdout.strip() == "", f"Ray processes left behind: {r.stdout}"
