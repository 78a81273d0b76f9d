"""The Ray Train side: one TorchTrainer per stage, checkpoints and restarts by Ray Train itself.

A run lives at ``STORAGE/NAME``; its checkpoints are ``STORAGE/NAME/step_NNNNNNN/`` (see
facecomp.cluster.checkpoints). Running the same NAME again continues it from its newest
checkpoint (Ray Train restores a run of the same storage and name). When the stage ends, its
generator is copied to ``STORAGE/NAME/generator.safetensors``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from facecomp import config as config_mod
from facecomp.config import Config
from facecomp.train import checkpoint as ck
from facecomp.train.stages import check_stage

from . import checkpoints
from .engines import load_ds_json
from .worker import train_loop_per_worker

log = logging.getLogger("facecomp.cluster")


@dataclass(kw_only=True)
class LaunchConfig:
    """Where and on what a stage runs (the command line's part; the model's part is the Config)."""

    num_workers: int = 2
    gpus_per_worker: float = 0  # > 0: GPU workers with NCCL; 0: CPU workers with gloo
    storage: str = "runs/cluster"  # local folder or a shared one every node mounts
    name: str = ""  # "" = stage<N>
    address: str | None = None  # None = a local Ray instance; "auto" or host:port = join that cluster


@dataclass
class StageResult:
    run_dir: Path
    checkpoint: Path
    state: dict


def train_stage(cfg: Config, stage: int, launch: LaunchConfig, init: str | Path | None = None) -> StageResult:
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    check_stage(stage)
    load_ds_json(cfg.cluster.deepspeed)  # a wrong name fails here, not in every worker
    if launch.num_workers < 1:
        raise ValueError(f"--num-workers must be >= 1, got {launch.num_workers}")
    if init is not None:
        init = ck.find_checkpoint(checkpoints.latest(init)) if Path(init).is_dir() else Path(init)
        init = str(Path(init).resolve())
    storage = Path(launch.storage).resolve()  # Ray Train needs an absolute path (or a URI)
    name = launch.name or f"stage{stage}"
    run_dir = storage / name
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.toml").write_text(config_mod.to_toml(cfg))

    if not ray.is_initialized():
        ray.init(address=launch.address, log_to_driver=True)
    use_gpu = launch.gpus_per_worker > 0
    resources = {"CPU": cfg.cluster.cpus_per_worker, **({"GPU": launch.gpus_per_worker} if use_gpu else {})}
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"config": config_mod.to_dict(cfg), "stage": stage, "init": init},
        # chosen once from the device: NCCL between GPUs, gloo between CPU processes
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=launch.num_workers, use_gpu=use_gpu, resources_per_worker=resources),
        run_config=RunConfig(
            name=name, storage_path=str(storage),
            failure_config=FailureConfig(max_failures=cfg.cluster.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.cluster.keep_checkpoints or None)),
    )
    result = trainer.fit()
    if result.error is not None:
        raise result.error
    if result.checkpoint is None:
        raise RuntimeError(f"stage {stage} finished without a checkpoint in {run_dir}")
    final = Path(result.checkpoint.path)
    ck.copy_file(final / "generator.safetensors", run_dir / "generator.safetensors")
    state = json.loads((final / "state.json").read_text())
    return StageResult(run_dir=run_dir, checkpoint=final, state=state)
