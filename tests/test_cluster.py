"""Cluster training for real: Ray Train with 2 CPU workers (gloo), DeepSpeed engines, real faces.

Each `facecomp cluster train` here starts its own local Ray instance (~10-20 s on 2 cores) and
DeepSpeed's CPU accelerator loads its shm op (compiled once, ~70 s, then cached under
~/.cache/torch_extensions). Slurm and `ray job submit` are in test_cluster_launchers.py.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from facecomp.config import load_config
from facecomp.models import Generator
from facecomp.train import checkpoint as ck
from facecomp.weights import RunFolder, load_module, load_tensors

HAVE_RAY = importlib.util.find_spec("ray") is not None and importlib.util.find_spec("ray.train") is not None
HAVE_DS = importlib.util.find_spec("deepspeed") is not None
pytestmark = [
    pytest.mark.ray, pytest.mark.deepspeed,
    pytest.mark.skipif(not HAVE_RAY, reason="Ray Train not installed (pip install 'facecomp[cluster]')"),
    pytest.mark.skipif(not HAVE_DS, reason="DeepSpeed not installed (pip install 'facecomp[cluster]')"),
]

# The controller polls workers every 2 s by default, so a restart may resume from a checkpoint older
# than the last one reported; polling faster makes "resumed from the last checkpoint" a fair assertion.
ENV = {**os.environ, "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2", "DS_ACCELERATOR": "cpu", "RAY_DEDUP_LOGS": "0"}


def _cluster(*args, timeout=420):
    cmd = [sys.executable, "-m", "facecomp", "cluster", "train", "--num-workers", "2", *map(str, args)]
    r = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=timeout)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-5000:]
    return r


def _state(run: Path) -> dict:
    return json.loads((RunFolder(run).latest() / "state.json").read_text())


@pytest.fixture(scope="module")
def stage_runs(celeba, parsing_weights, tmp_path_factory):
    """Stages 1 -> 2 -> 3, each a 2-worker run; stage 2 on ZeRO-2, stage 3 on ZeRO-0. Their logs by stage."""
    storage = tmp_path_factory.mktemp("cluster")
    common = ("--config", "smoke", "--data", celeba, "--storage", storage)
    logs = {1: _cluster(*common, "--stage", 1)}
    logs[2] = _cluster(*common, "--stage", 2, "--init", storage / "stage1", "cluster.deepspeed=zero2_fp32")
    logs[3] = _cluster(*common, "--stage", 3, "--init", storage / "stage2", "cluster.deepspeed=zero0_fp32",
                       f"parsing.weights={parsing_weights}")
    return storage, {k: r.stdout + r.stderr for k, r in logs.items()}


def test_three_stages_two_workers(stage_runs):
    storage, logs = stage_runs
    cfg = load_config("smoke")
    for stage in (1, 2, 3):
        run = storage / f"stage{stage}"
        state = _state(run)
        assert state["stage"] == stage and state["step"] == 4 and state["world_size"] == 2
        assert state["images"] == 4 * 2 * cfg.train.batch_size  # 4 steps x 2 ranks x micro-batch
        assert state["restarts"] == []
        # the files the rest of facecomp reads: safetensors that load into a fresh generator
        load_module(run / "generator.safetensors", Generator(cfg.generator), "generator")
        assert (run / "config.toml").is_file()
        assert {p.name for p in (run / "step_0000004").glob("ds_*")} == {"ds_generator", "ds_d_local", "ds_d_global"}
    assert _state(storage / "stage2")["deepspeed"] == "zero2_fp32"
    assert _state(storage / "stage3")["deepspeed"] == "zero0_fp32"
    # stage N+1 started from stage N's newest checkpoint (its safetensors, through facecomp's init_from)
    assert f"stage 2 initialised from {storage / 'stage1' / 'step_0000004'}" in logs[2]
    assert f"stage 3 initialised from {storage / 'stage2' / 'step_0000004'}" in logs[3]
    # and the generator moved on from there
    g1 = load_tensors(storage / "stage1" / "generator.safetensors", "generator")[0]
    g2 = load_tensors(storage / "stage2" / "generator.safetensors", "generator")[0]
    assert not torch.equal(g1["fc_in.weight"], g2["fc_in.weight"])


def test_rerun_continues_from_newest_checkpoint(stage_runs, celeba):
    """Running the same run again (more steps) resumes it: DeepSpeed state, data position, step."""
    stage_runs, _ = stage_runs
    r = _cluster("--config", "smoke", "--data", celeba, "--storage", stage_runs, "--stage", 1,
                 "train.stage_steps=[6, 4, 4]")
    state = _state(stage_runs / "stage1")
    assert state["step"] == 6 and state["restarts"] == [4]
    assert "resumed stage 1 at step 4" in r.stdout + r.stderr
    # Ray Train kept the newest cluster.keep_checkpoints (2) checkpoints
    assert sorted(p.name for p in (stage_runs / "stage1").glob("step_*")) == ["step_0000004", "step_0000006"]


@pytest.mark.dali
@pytest.mark.skipif(importlib.util.find_spec("nvidia.dali") is None, reason="needs the 'dali' extra")
def test_dali_loader_position_survives_a_rerun(celeba, tmp_path):
    """Each rank saves its DALI reader position in the checkpoint and picks it up on resume (without it
    the loader warns and restarts the epoch order)."""
    common = ("--config", "smoke", "--data", celeba, "--storage", tmp_path, "--stage", 1, "data.loader=dali",
              "train.ckpt_every=2")
    _cluster(*common, "train.stage_steps=[2, 4, 4]")
    saved = sorted(p.name for p in (tmp_path / "stage1" / "step_0000002").glob("loader_rank*.txt"))
    assert saved == ["loader_rank0000.txt", "loader_rank0001.txt"]
    r = _cluster(*common, "train.stage_steps=[4, 4, 4]")
    log = r.stdout + r.stderr
    assert "resumed stage 1 at step 2" in log and _state(tmp_path / "stage1")["step"] == 4
    assert "no DALI reader state" not in log, log[-2000:]


def _registered_step(snapshot: Path) -> int:
    """The newest checkpoint Ray Train's controller has registered (its own snapshot file)."""
    try:
        latest = json.loads(snapshot.read_text()).get("latest_checkpoint_result")
    except (OSError, json.JSONDecodeError):
        return 0
    return int(latest["checkpoint_dir_name"].split("_")[1]) if latest else 0


def test_killed_worker_resumes_from_last_checkpoint(celeba, tmp_path):
    total, every = 40, 5
    cmd = [sys.executable, "-m", "facecomp", "cluster", "train", "--num-workers", "2", "--config", "smoke",
           "--data", str(celeba), "--storage", str(tmp_path), "--stage", "1", "--name", "fault",
           f"train.stage_steps=[{total}, 4, 4]", f"train.ckpt_every={every}", "train.log_every=1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    snapshot = tmp_path / "fault" / "checkpoint_manager_snapshot.json"
    deadline = time.monotonic() + 300
    victim, at_kill = None, 0
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            text = "".join(lines)
            pids = re.findall(r"pid=(\d+)\) world_rank=1", text)
            at_kill = _registered_step(snapshot)
            if pids and at_kill >= every:
                victim = int(pids[0])
                os.kill(victim, signal.SIGKILL)  # the rank-1 worker process, mid-stage
                break
            time.sleep(0.05)
        assert victim is not None, "never saw a registered checkpoint and the rank-1 worker: " + "".join(lines)[-3000:]
        assert proc.wait(timeout=300) == 0, "".join(lines)[-5000:]
    finally:
        if proc.poll() is None:
            proc.kill()
    reader.join(timeout=10)
    text = "".join(lines)
    assert at_kill < total, "the run ended before the kill: nothing was tested"
    state = _state(tmp_path / "fault")
    assert state["step"] == total
    (resumed,) = state["restarts"]  # exactly one restart
    assert resumed >= at_kill, f"resumed at {resumed}, but step {at_kill} was already checkpointed"
    # work redone = steps the first attempt reached minus the step it resumed at
    before, _, _ = text.partition("resumed stage 1")
    reached = max(int(n) for n in re.findall(r"stage 1 step (\d+)/", before))
    assert reached - resumed <= every, f"reached {reached} before the kill, resumed at {resumed}"


@pytest.fixture(scope="module")
def dist_world_1():
    """A one-rank gloo process group in this process, as Ray Train sets up on a worker. One per module:
    DeepSpeed keeps the first group it sees for the life of the process."""
    import socket

    import torch.distributed as dist

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": "0", "LOCAL_RANK": "0",
           "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1", "DS_ACCELERATOR": "cpu"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    dist.init_process_group("gloo", rank=0, world_size=1)
    yield
    dist.destroy_process_group()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def _scalars(run: Path, stage: int, key: str) -> list[float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tb"))
    events.Reload()
    return [e.value for e in sorted(events.Scalars(f"stage{stage}/{key}"), key=lambda e: e.step)]


def _cluster_stage(cfg, stage: int, run: Path, restore=None) -> dict[int, Path]:
    """The cluster's own per-worker loop as one rank (the process group of dist_world_1); the folders it
    reports, by step, copied where Ray Train would merge them."""
    from facecomp import config as config_mod
    from facecomp.cluster.worker import run_stage

    reported: dict[int, Path] = {}

    def report(step, metrics, folder):
        reported[step] = shutil.copytree(folder, run / f"step_{step:07d}", dirs_exist_ok=True)

    cfg = config_mod.from_dict(config_mod.to_dict(cfg))
    run_stage(cfg, stage, run, 0, 1, torch.device("cpu"), report, restore=restore)
    return reported


@pytest.mark.parametrize("ds_name", ["zero1_fp32", "zero2_fp32"])
def test_deepspeed_losses_equal_plain_loop(celeba, parsing_weights, dist_world_1, tmp_path, ds_name):
    """Stage 3 (every term, both D updates) for 3 steps on the same real faces: the cluster's loop
    (facecomp.cluster.worker.run_stage: DeepSpeed engines) vs the plain loop (facecomp.train.loop.train:
    plain modules + torch Adam), each as it runs, read back from the TensorBoard scalars and weights
    they write. Tolerance: rtol 1e-5 on each loss. Both run torch's Adam with the same
    hyper-parameters on the same fp32 gradients; what differs is only ZeRO's flattened parameter buffer
    (Adam updates a flat view instead of per-tensor ones) and a 1-rank all-reduce, which change no
    arithmetic, so they agree to the last bit here. rtol 1e-5 rather than equality because nothing
    promises bit-identical kernels across the two paths; DeepSpeed's default gradient clipping at norm
    1.0 (switched off in deepspeed_models.deepspeed_config) already shows up as 5e-5 at step 1."""
    from facecomp.train.loop import train

    cfg = load_config("smoke", [f'data.roots=["{celeba}"]', f"parsing.weights={parsing_weights}",
                                f"cluster.deepspeed={ds_name}", "adversarial.d_skip_below=0.0",  # both Ds step
                                "train.stage_steps=[3, 3, 3]", "train.ckpt_every=3", "train.log_every=1",
                                "train.image_every=1000", "validation.faces=0"])
    plain = train(cfg, 3, cfg.data.roots, tmp_path / "plain", progress=False)
    reported = _cluster_stage(cfg, 3, tmp_path / "cluster")
    assert plain.steps == 3 and sorted(reported) == [3]
    assert ck.read_state(reported[3])["images"] == plain.images
    for key in ("d_adv_local", "d_adv_global", "recon", "adv_local", "adv_global", "parsing", "total"):
        a, b = _scalars(tmp_path / "plain", 3, key), _scalars(tmp_path / "cluster", 3, key)
        assert len(a) == len(b) == 3, key
        for step, (x, y) in enumerate(zip(a, b, strict=True)):
            assert y == pytest.approx(x, rel=1e-5), f"step {step} {key}: plain {x}, engine {y}"
    g_plain = load_tensors(RunFolder(tmp_path / "plain").latest() / "generator.safetensors", "generator")[0]
    g_cluster = load_tensors(reported[3] / "generator.safetensors", "generator")[0]
    for k in g_plain:
        torch.testing.assert_close(g_cluster[k], g_plain[k], rtol=1e-5, atol=1e-6)


def test_a_cluster_checkpoint_of_the_earlier_layout_resumes(celeba, smoke_cfg, dist_world_1, tmp_path):
    """A checkpoint written before the DeepSpeed engines were named like the modules (the generator's DeepSpeed
    folder ds_g/, state.json of format facecomp-cluster/1) restores, and the run goes on to the very
    weights of an uninterrupted one."""
    import ray.train

    smoke_cfg.data.roots = [str(celeba)]
    smoke_cfg.train.stage_steps, smoke_cfg.train.ckpt_every = [4, 4, 4], 2
    straight = _cluster_stage(smoke_cfg, 1, tmp_path / "straight")
    split = _cluster_stage(smoke_cfg, 1, tmp_path / "split")
    old = split[2]
    (old / "ds_generator").rename(old / "ds_g")
    state = ck.read_state(old)
    keys = ("stage", "step", "images", "seconds", "world_size", "deepspeed", "restarts", "config")
    legacy = {"format": "facecomp-cluster/1", **{k: state[k] for k in keys}}
    (old / "state.json").write_text(json.dumps(legacy))
    shutil.rmtree(split[4])  # as if the run had stopped at step 2
    resumed = _cluster_stage(smoke_cfg, 1, tmp_path / "split", restore=ray.train.Checkpoint.from_directory(str(old)))
    state = ck.read_state(resumed[4])
    assert (state["step"], state["restarts"], state["images"]) == (4, [2], 4 * smoke_cfg.train.batch_size)
    for name in ("generator", "d_local"):
        a = load_tensors(straight[4] / f"{name}.safetensors")[0]
        b = load_tensors(resumed[4] / f"{name}.safetensors")[0]
        assert all(torch.equal(a[k], b[k]) for k in a), f"{name} differs after resuming the earlier layout"


def test_bad_deepspeed_config_is_one_line(celeba, tmp_path):
    r = subprocess.run([sys.executable, "-m", "facecomp", "cluster", "train", "--config", "smoke", "--stage", "1",
                        "--data", str(celeba), "--storage", str(tmp_path), "cluster.deepspeed=zero9"],
                       capture_output=True, text=True, env=ENV, timeout=120)
    assert r.returncode == 2 and "zero1_fp32" in r.stderr and "Traceback" not in r.stderr


def test_deepspeed_config_takes_the_facecomp_side(smoke_cfg):
    from facecomp.cluster.deepspeed_models import config_names, deepspeed_config

    cpu = torch.device("cpu")
    assert {"zero0_fp32", "zero1_fp32", "zero2_fp32", "zero1_bf16", "zero2_bf16", "zero1_fp16"} <= set(config_names())
    smoke_cfg.optim.beta1 = 0.3
    ds = deepspeed_config(smoke_cfg, 1e-3, cpu)
    assert ds["train_micro_batch_size_per_gpu"] == smoke_cfg.train.batch_size
    assert ds["optimizer"]["params"] == {"lr": 1e-3, "betas": [0.3, 0.999], "eps": 1e-8, "weight_decay": 0.0,
                                         "adam_w_mode": False, "torch_adam": True}
    assert ds["gradient_clipping"] == 0.0  # the plain loop's optim.grad_clip, not DeepSpeed's 1.0
    smoke_cfg.cluster.deepspeed = "zero1_fp32_accum4_clip1"
    ds = deepspeed_config(smoke_cfg, 1e-3, cpu)
    assert ds["gradient_accumulation_steps"] == 4 and ds["gradient_clipping"] == 1.0  # the JSON's own
    smoke_cfg.cluster.deepspeed = "zero1_bf16"
    with pytest.raises(ValueError, match="runtime.amp=bf16"):
        deepspeed_config(smoke_cfg, 1e-3, cpu)
    smoke_cfg.cluster.deepspeed, smoke_cfg.runtime.amp = "zero1_fp16", "fp16"
    with pytest.raises(ValueError, match="needs CUDA"):
        deepspeed_config(smoke_cfg, 1e-3, cpu)


def test_deepspeed_config_may_not_own_batch_or_optimizer(smoke_cfg, tmp_path):
    from facecomp.cluster.deepspeed_models import deepspeed_config

    path = tmp_path / "mine.json"
    path.write_text(json.dumps({"zero_optimization": {"stage": 1}, "optimizer": {"type": "AdamW"}}))
    smoke_cfg.cluster.deepspeed = str(path)
    with pytest.raises(ValueError, match="owns it"):
        deepspeed_config(smoke_cfg, 1e-3, torch.device("cpu"))


def test_bf16_engine_takes_the_float32_batch_without_autocast(smoke_cfg, dist_world_1):
    """On CUDA a bf16 engine runs its forward with autocast off, so the step's float32 batch must be cast
    to bf16 before it meets the weights (it was not: the first GPU device check failed there). The CPU
    shows the same failure when no autocast is active at all, which is what this calls."""
    from facecomp.cluster.deepspeed_models import wrap_models
    from facecomp.train.loop import build_models

    cfg = smoke_cfg
    cfg.cluster.deepspeed, cfg.runtime.amp = "zero1_bf16", "bf16"
    wrapped = wrap_models(build_models(cfg, 1, torch.device("cpu")), cfg, torch.device("cpu"))
    g = wrapped.models(None).generator
    s = cfg.generator.image_size
    x = torch.rand(2, wrapped.generator.module.in_channels, s, s) * 2 - 1  # float32, as train_step makes it
    with torch.no_grad():
        out = g(x)
    assert out.dtype == torch.bfloat16 and out.shape == (2, 3, s, s)
    assert g.module is wrapped.generator.module  # the rest is the engine's own


@pytest.mark.parametrize("ds_name", ["zero1_bf16", "zero2_bf16"])
def test_bf16_deepspeed_models_train(smoke_cfg, face_files, dist_world_1, ds_name):
    """bf16 DeepSpeed engines (weights in bf16, fp32 master copy in ZeRO) with channels_last activations, as the cpu
    preset trains, run stage 2 and move the models that stage trains."""
    from facecomp.cluster.deepspeed_models import make_agree, wrap_models
    from facecomp.data.pipeline import build_loader
    from facecomp.train.loop import build_models
    from facecomp.train.step import train_step

    cfg = smoke_cfg
    cfg.cluster.deepspeed, cfg.runtime.amp = ds_name, "bf16"
    cfg.runtime.channels_last = True  # as the cpu preset: DeepSpeed needs contiguous weights, get them
    cfg.adversarial.d_skip_below = 0.0
    b = next(iter(build_loader(face_files, cfg.generator.image_size, cfg.data, cfg.mask, 4, 0)))
    batch = {"image": b["image"], "mask": b["mask"]}
    wrapped = wrap_models(build_models(cfg, 1, torch.device("cpu")), cfg, torch.device("cpu"))
    assert next(wrapped.generator.module.parameters()).dtype == torch.bfloat16
    before = {n: [p.detach().float().clone() for p in m.parameters()] for n, m in wrapped.modules().items()}
    for step in range(2):
        metrics = train_step(wrapped.models(None), wrapped.updaters(), batch, cfg, 2, step, agree=make_agree(1)).metrics
        assert all(torch.isfinite(torch.tensor(v)) for v in metrics.values())
    for name in ("generator", "d_local"):
        after = [p.detach().float() for p in wrapped.modules()[name].parameters()]
        assert any(not torch.equal(a, b) for a, b in zip(before[name], after, strict=True)), f"{name} did not move"


def test_diverging_run_stops_every_worker_before_a_checkpoint(celeba, tmp_path):
    """Two gloo workers whose losses overflow at once (Lr x 1e38): the guard agrees over the ranks, both
    stop at the same check without reporting a checkpoint, Ray Train does not restart them into the same
    divergence, and the driver exits 3 with one line naming the step."""
    cmd = [sys.executable, "-m", "facecomp", "cluster", "train", "--num-workers", "2", "--config", "smoke",
           "--stage", "1", "--data", str(celeba), "--storage", str(tmp_path), "loss.recon=1e38"]
    r = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=420)
    assert r.returncode == 3, r.stdout[-3000:] + r.stderr[-3000:]
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("facecomp:")]
    assert len(lines) == 1 and "stage 1 diverged at step 1: non-finite loss" in lines[0], r.stderr[-3000:]
    assert not list((tmp_path / "stage1").glob("step_*")) and not (tmp_path / "stage1" / "result.json").exists()


@pytest.mark.slow
def test_diverging_run_on_two_workers_resumes_from_its_last_finite_checkpoint(celeba, tmp_path):
    """Every promise of the guard on two gloo workers: a run with a finite checkpoint at step 2 is
    continued with its losses poisoned (Lr x 1e38) and stops at step 3 with exit 3, having reported no
    checkpoint after step 2; the same command without the poison continues from step 2 and finishes."""
    common = [sys.executable, "-m", "facecomp", "cluster", "train", "--num-workers", "2", "--config", "smoke",
              "--stage", "1", "--data", str(celeba), "--storage", str(tmp_path), "train.ckpt_every=2"]
    run = lambda *extra: subprocess.run([*common, *extra], capture_output=True, text=True, env=ENV,  # noqa: E731
                                        timeout=600)
    first = run("train.stage_steps=[2, 4, 4]")
    assert first.returncode == 0, first.stderr[-3000:]
    poisoned = run("train.stage_steps=[6, 4, 4]", "loss.recon=1e38")
    assert poisoned.returncode == 3, poisoned.stderr[-3000:]
    assert "stage 1 diverged at step 3: non-finite loss" in poisoned.stderr
    steps = sorted(int(p.name.removeprefix("step_")) for p in (tmp_path / "stage1").glob("step_*"))
    assert steps == [2]
    tensors, _ = load_tensors(tmp_path / "stage1" / "step_0000002" / "generator.safetensors")
    assert all(torch.isfinite(t).all() for t in tensors.values() if t.is_floating_point())
    healed = run("train.stage_steps=[6, 4, 4]")
    assert healed.returncode == 0, healed.stderr[-3000:]
    assert _state(tmp_path / "stage1")["step"] == 6 and _state(tmp_path / "stage1")["restarts"] == [2]
