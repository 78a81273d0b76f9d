"""The Ray Train side: one TorchTrainer per stage, checkpoints and restarts by Ray Train itself.

A run lives at ``STORAGE/NAME``; its checkpoints are ``STORAGE/NAME/step_NNNNNNN/`` (see
facecomp.cluster.checkpoints). Running the same NAME again continues it from its newest
checkpoint (Ray Train restores a run of the same storage and name). When the stage ends, its
generator is copied to ``STORAGE/NAME/generator.safetensors`` and ``STORAGE/NAME/result.json`` says
the stage finished (facecomp.weights.run_folder: the next stage's ``--init`` refuses a run without it).

SIGTERM/SIGUSR1 to the driver stop the stage: every worker checkpoints at the same step and returns
(facecomp.cluster.stop), and the result says it did not finish; the same command continues it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from facecomp import config as config_mod
from facecomp.config import Config
from facecomp.train.checkpoint import RunState
from facecomp.train.guard import read_diverged
from facecomp.train.stages import check_stage
from facecomp.weights import RunFolder

from .deepspeed_models import load_ds_json
from .stop import clear_stop, stop_on_signal
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
    state: RunState
    finished: bool = True  # False: stopped by a signal, with a checkpoint to continue from
    stopped_by: str = ""  # the signal's name


def train_stage(cfg: Config, stage: int, launch: LaunchConfig, init: str | Path | None = None,
                init_unfinished: bool = False, from_scratch: bool = False) -> StageResult:
    """Train ``stage`` into ``STORAGE/NAME``, continuing that run from its newest checkpoint if it has one.

    ``init`` (a run, checkpoint or weights) must be a finished run unless ``init_unfinished``; stage 2
    and 3 need it unless ``from_scratch`` or the run is being continued.
    """
    check_stage(stage)
    load_ds_json(cfg.cluster.deepspeed)  # a wrong name fails here, not in every worker
    if launch.num_workers < 1:
        raise ValueError(f"--num-workers must be >= 1, got {launch.num_workers}")
    storage = Path(launch.storage).resolve()  # Ray Train needs an absolute path (or a URI)
    name = launch.name or f"stage{stage}"
    run_dir = storage / name
    run = RunFolder(run_dir)
    if init is not None:
        RunFolder(init).check_finished(init_unfinished)
        init = str((RunFolder(init).latest() if Path(init).is_dir() else Path(init)).resolve())
    elif stage > 1 and not from_scratch and not run.complete():
        raise ValueError(f"stage {stage} starts from the previous stage: pass --init RUN (or --from-scratch to "
                         "train it from random weights)")
    run.begin(config_mod.to_toml(cfg))  # no result.json, nor a diverged session's marker: this one may go on
    clear_stop(run_dir)  # a marker of a stopped session: this one must not stop at once
    import ray

    with stop_on_signal(run_dir) as (stop, install):
        if not ray.is_initialized():
            ray.init(address=launch.address, log_to_driver=True)
        install()  # ray.init makes SIGTERM exit the driver: ours again
        result = _fit(cfg, stage, launch, storage, name, run_dir, init)
    if result.error is not None:
        raise result.error
    diverged = read_diverged(run_dir)
    if diverged is not None:
        raise diverged
    if result.checkpoint is None:
        raise RuntimeError(f"stage {stage} finished without a checkpoint in {run_dir}")
    final = Path(result.checkpoint.path)
    state = RunState.read(final)
    total = cfg.train.stage_steps[stage - 1]
    if state.step < total:
        log.info("stage %d stopped by %s at step %d/%d", stage, stop.name or "request", state.step, total)
        return StageResult(run_dir=run_dir, checkpoint=final, state=state, finished=False, stopped_by=stop.name)
    clear_stop(run_dir)  # a signal after the last step: the stage finished all the same
    run.finish({"finished": True, "stage": stage, "steps": state.step, "images": state.images,
                "seconds": state.seconds, "world_size": state.world_size, "restarts": state.restarts,
                "checkpoint": final.name, "chosen": None}, RunFolder.weights_file(final, "generator"))
    return StageResult(run_dir=run_dir, checkpoint=final, state=state)


def _fit(cfg: Config, stage: int, launch: LaunchConfig, storage: Path, name: str, run_dir: Path, init: str | None):
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    use_gpu = launch.gpus_per_worker > 0
    resources = {"CPU": cfg.cluster.cpus_per_worker, **({"GPU": launch.gpus_per_worker} if use_gpu else {})}
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"config": config_mod.to_dict(cfg), "stage": stage, "init": init,
                           "run_dir": str(run_dir)},
        # chosen once from the device: NCCL between GPUs, gloo between CPU processes
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=launch.num_workers, use_gpu=use_gpu, resources_per_worker=resources),
        run_config=RunConfig(
            name=name, storage_path=str(storage),
            failure_config=FailureConfig(max_failures=cfg.cluster.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.cluster.keep_checkpoints or None)),
    )
    return trainer.fit()
