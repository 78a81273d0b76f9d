"""The loop around the one training step, once: models, optimizers, a stage's setup, the plain loop.

A stage runs :func:`~facecomp.train.driver.drive` with its own hooks: the plain stage loop here
(:func:`train`) and the cluster's per-worker loop (facecomp.cluster.worker: DeepSpeed engines, Ray Train
checkpoints) share :func:`setup_stage` and :class:`StageHooks`; the hooks take the step, log, and write
checkpoints.

A stage is its own run directory. ``init`` starts from a previous stage's run (weights only);
``resume`` continues this run from its latest checkpoint at the exact step, with the same data
order and noise, so the result equals an uninterrupted run's.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from facecomp import config as config_mod
from facecomp import runtime
from facecomp.config import Config, OptimConfig
from facecomp.data.celeba import partition_files
from facecomp.data.loaders import make_loader
from facecomp.models import Generator, build_discriminators
from facecomp.models.layers import fold_batchnorm
from facecomp.train import checkpoint as ck
from facecomp.train import validation as val
from facecomp.train.checkpoint import RunState
from facecomp.train.driver import Hooks, drive, resume_state
from facecomp.train.ema import EMA, calibration_inputs
from facecomp.train.guard import Diverged, DivergenceGuard
from facecomp.train.schedule import lr_factor, set_lr
from facecomp.train.stages import STAGES, check_stage
from facecomp.train.step import (
    AMP_DTYPES,
    Metrics,
    Models,
    OptimizerUpdater,
    StepFunctions,
    StepResult,
    Updater,
    adversarial_ramp,
    read_metrics,
    train_step,
)
from facecomp.weights import RunFolder, is_shipped_name, load_module, resolve, write_json

log = logging.getLogger(__name__)

TRAINED = ("generator", "d_local", "d_global")  # what a completion stage updates, named as in checkpoints


# --- models and optimizers ------------------------------------------------------------------------

def build_models(cfg: Config, stage: int, device: torch.device) -> Models:
    """Fresh models for a stage, initialised from a generator seeded by train.seed."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.train.seed)
        gen = Generator(cfg.generator)
        d_local, d_global = build_discriminators(cfg.discriminator, cfg.generator.image_size)
    models = Models(generator=gen, d_local=d_local, d_global=d_global)
    if "parsing" in STAGES[stage] and (cfg.loss.parsing > 0 or cfg.loss.perceptual > 0):
        models.parsing = loss_network(load_frozen("parsing", cfg.parsing.weights, "stage 3"), cfg)
    if "identity" in STAGES[stage] and cfg.loss.identity > 0:
        models.identity = loss_network(load_frozen("identity", cfg.identity.weights, "loss.identity"), cfg)
    fmt = torch.channels_last if cfg.runtime.channels_last else torch.contiguous_format
    for name in ("generator", "d_local", "d_global", "parsing", "identity"):
        mod = getattr(models, name)
        if mod is not None:
            setattr(models, name, mod.to(device=device, memory_format=fmt))
    return models


def loss_network(net: nn.Module, cfg: Config) -> nn.Module:
    """A frozen network of the loss as the step runs it: BatchNorm folded into the convolutions, and the
    weights held in the autocast dtype once, so autocast does not cast them again on every call (it
    caches casts only of weights that take gradients)."""
    fold_batchnorm(net)
    return net.to(AMP_DTYPES[cfg.runtime.amp]) if cfg.runtime.amp in AMP_DTYPES else net


def load_frozen(kind: str, weights: str, needed_by: str) -> nn.Module:
    """A frozen network of the stage-3 losses (``kind``: parsing, identity): ``<kind>.weights``, or the shipped
    one; if there is none, the error says how to get it."""
    from facecomp import models

    try:
        return models.load(kind, weights or None)
    except ValueError as e:
        what = {"parsing": "face-parsing"}.get(kind, f"{kind}-network")
        raise ValueError(f"{needed_by} needs {what} weights: {e} (set {kind}.weights=PATH, or train them: "
                         f"facecomp {kind} train)") from None


def base_lrs(optim: OptimConfig) -> dict[str, float]:
    """The learning rate of each trained module before the schedule's factor."""
    return {"generator": optim.lr_g, "d_local": optim.lr_d, "d_global": optim.lr_d}


def build_optimizers(models: Models, cfg: Config) -> dict[str, torch.optim.Optimizer]:
    """torch Adam for each trained module (optim.*), keyed by the module's name. The cluster's DeepSpeed
    engines are told the same hyper-parameters (facecomp.cluster.deepspeed_models.deepspeed_config)."""
    lrs, betas = base_lrs(cfg.optim), (cfg.optim.beta1, cfg.optim.beta2)
    optimizers = {}
    for name in TRAINED:
        params = [p for p in getattr(models, name).parameters() if p.requires_grad]  # not train.frozen
        # on a GPU, one fused kernel for the whole update instead of a dozen per tensor; it also keeps
        # the step count on the device, which the gated D update (train.step.OptimizerUpdater) needs
        fused = params[0].device.type == "cuda"
        optimizers[name] = torch.optim.Adam(params, lr=lrs[name], betas=betas, fused=fused or None)
    return optimizers


def freeze(models: Models, prefixes: list[str]) -> int:
    """Leave the parameters ``train.frozen`` names as they are: no gradient, so no optimizer updates
    them, and the EMA average (facecomp.train.ema) leaves them out, so they keep their bits there too.
    Returns how many tensors were frozen; a prefix that names nothing is an error, not a silent no-op."""
    count = 0
    for prefix in prefixes:
        module_name, _, rest = prefix.partition(".")
        params = [p for key, p in getattr(models, module_name).named_parameters()
                  if key == rest or key.startswith(rest + ".")]
        if not params:
            raise ValueError(f"train.frozen: {prefix!r} names no parameter of the {module_name}")
        for p in params:
            p.requires_grad_(False)
        count += len(params)
    return count


def build_updaters(models: Models, optimizers: dict[str, torch.optim.Optimizer], cfg: Config
                   ) -> dict[str, OptimizerUpdater]:
    """The step's updaters over plain modules: each optimizer with optim.grad_clip."""
    return {name: OptimizerUpdater(getattr(models, name), opt, cfg.optim.grad_clip) for name, opt in optimizers.items()}


def weights_meta(cfg: Config, name: str, stage: int, step: int) -> dict:
    component = {"generator": cfg.generator, "d_local": cfg.discriminator, "d_global": cfg.discriminator}[name]
    return {"config": config_mod.to_dict(component), "stage": stage, "step": step}


def init_from(models: Models, source: str | Path) -> Path:
    """Start a stage from a previous stage: a run directory (its chosen checkpoint when it finished,
    else its latest), a checkpoint (its generator, and its discriminators where it has them), or a
    bare generator weights file. A generator grown beyond the source's (``generator.skips``, ``.context``)
    takes every weight the source has; its new parts keep their zero-start init. A shipped generator's
    name (``shipped``, ``paper-generator``) names its file."""
    if is_shipped_name(source):
        source = resolve(source, "generator")
    source = Path(source)
    fresh = models.generator.fresh_keys()
    if source.is_file() and not RunFolder.is_checkpoint(source.parent):  # a bare weights file
        load_module(source, models.generator, "generator", fresh)
        return source
    ckpt, weights = RunFolder(source).chosen()
    load_module(weights, models.generator, "generator", fresh)
    for name in ("d_local", "d_global"):
        path = RunFolder.weights_file(ckpt, name)
        if path.is_file():
            load_module(path, getattr(models, name), name)
    return ckpt


# --- one setup, two wraps ---------------------------------------------------------------------------

class Wrap(Protocol):
    """How a stage's models are trained (torchtitan's ``parallelize_fn``): the plain loop's torch optimizers
    (:class:`TorchOptimizers`) or the cluster's DeepSpeed engines (facecomp.cluster.worker). Everything
    around it, :func:`setup_stage`, is the same for both."""

    def updaters(self) -> dict[str, Updater]:
        """The step's updaters, keyed like :data:`TRAINED`."""

    def models(self, parsing: nn.Module | None, identity: nn.Module | None = None) -> Models:
        """The modules the step runs, with the frozen networks of the losses."""

    def restore(self, ckpt: Path) -> None:
        """Weights and optimizer state from a checkpoint of this run."""

    def loader_position(self, ckpt: Path, state: RunState, rank: int, world: int) -> str | None:
        """This rank's input position saved in ``ckpt`` (a DALI reader's), if any."""


class TorchOptimizers:
    """One process: a torch Adam per trained module (optim.*, optim.grad_clip) over the plain modules."""

    def __init__(self, models: Models, cfg: Config, device: torch.device | None = None):
        self._models = models
        self.optimizers = build_optimizers(models, cfg)
        self._updaters = build_updaters(models, self.optimizers, cfg)

    def updaters(self) -> dict[str, OptimizerUpdater]:
        return self._updaters

    def models(self, parsing: nn.Module | None, identity: nn.Module | None = None) -> Models:
        return self._models

    def restore(self, ckpt: Path) -> None:
        for name in TRAINED:
            load_module(RunFolder.weights_file(ckpt, name), getattr(self._models, name), name)
        ck.load_optimizers(ckpt, self.optimizers)

    def loader_position(self, ckpt: Path, state: RunState, rank: int, world: int) -> str | None:
        return state.loader_state


@dataclass
class StageSetup:
    """A stage's run, built: what the loop's hooks and :func:`drive` take."""

    models: Models  # the modules the step runs (through the wrap)
    wrapped: Wrap
    state: RunState
    files: list[Path]  # the training images of this run (all ranks')
    loader: Any  # this rank's batches, from ``state.step`` on
    writer: Any  # TensorBoard's SummaryWriter on rank 0, else None
    resumed: bool


def setup_stage(cfg: Config, stage: int, run_dir: str | Path, device: torch.device,
                wrap: Callable[[Models, Config, torch.device], Wrap], *, roots: list[str],
                ckpt: Path | None = None, init: str | Path | None = None, rank: int = 0, world: int = 1
                ) -> StageSetup:
    """The run of ``stage`` on this rank, built once for the plain loop and the cluster alike: fresh models,
    started from ``init`` (weights only, before the wrap, so every rank starts from rank 0's) or continued
    from ``ckpt``, this run's own checkpoint (after the wrap, which holds the optimizer state); the state;
    this rank's data from the step reached; TensorBoard on rank 0."""
    models = build_models(cfg, stage, device)
    for name in TRAINED:
        getattr(models, name).train()
    if ckpt is None and init is not None:
        source = init_from(models, init)
        if rank == 0:
            log.info("stage %d initialised from %s", stage, source)
    if cfg.train.frozen and freeze(models, cfg.train.frozen) and rank == 0:
        log.info("stage %d leaves %s as they start (train.frozen)", stage, ", ".join(cfg.train.frozen))
    wrapped = wrap(models, cfg, device)
    state, position = RunState(stage=stage), None
    if ckpt is not None:
        state = resume_state(ckpt, stage)
        wrapped.restore(ckpt)
        position = wrapped.loader_position(ckpt, state, rank, world)
        if rank == 0:
            log.info("resumed stage %d at step %d from %s", stage, state.step, ckpt)
    state = dataclasses.replace(state, world_size=world, config=config_mod.to_dict(cfg))
    files = partition_files(roots, cfg.data.partition, cfg.data.limit)
    loader = make_loader(cfg, files, start_step=state.step, rank=rank, world_size=world, device=device,
                         loader_state=position)
    writer = None
    if rank == 0:
        from torch.utils.tensorboard import SummaryWriter

        # purge_step: events logged past the checkpoint a restart resumes from are dropped (step N's
        # scalars were written before checkpoint N, so they stay)
        writer = SummaryWriter(str(RunFolder(run_dir).tb), purge_step=state.step + 1 if ckpt is not None else None)
    return StageSetup(models=wrapped.models(models.parsing, models.identity), wrapped=wrapped, state=state, files=files,
                      loader=loader, writer=writer, resumed=ckpt is not None)


class StageHooks(Hooks):
    """A completion stage around :func:`~facecomp.train.step.train_step`: the learning-rate schedule,
    the step, scalars and log lines every ``train.log_every`` steps, image grids every ``image_every``.
    The plain loop adds the EMA, validation and its checkpoints; the cluster loop its checkpoints."""

    def __init__(self, cfg: Config, stage: int, models: Models, updaters: dict[str, Updater],
                 device: torch.device, *, writer=None, bar=None, log_lines: bool = True,
                 agree: Callable[[torch.Tensor], torch.Tensor] | None = None):
        self.cfg, self.stage, self.models, self.updaters, self.device = cfg, stage, models, updaters, device
        self.writer, self.bar, self.log_lines, self.agree = writer, bar, log_lines, agree
        self.total = cfg.train.stage_steps[stage - 1]
        self.base_lr = base_lrs(cfg.optim)
        self.factor = 1.0  # the schedule's factor at this step
        self.lr_scale = 1.0  # a rollback's lowering (RunState.lr_scale), set by the loop
        self.fns = StepFunctions.of(cfg)
        self.guard = DivergenceGuard(stage, agree)
        self._checked: int | None = None  # the step the guard last passed
        self.latest: Metrics = {}  # the last step's metrics, still on the device
        self.metrics: dict[str, float] = {}  # read from ``latest`` at each log line (read_now)
        self._logged: tuple[int, float] | None = None  # (images, seconds) of the state at the last log line

    def step(self, batch: dict, step: int) -> StepResult:
        # pinned by the loader on CUDA: the copies queue behind the running step instead of waiting for it
        batch = {**batch, "image": batch["image"].to(self.device, non_blocking=True),
                 "mask": batch["mask"].to(self.device, non_blocking=True)}
        self.factor = lr_factor(self.cfg.optim, step, self.total)
        for name, updater in self.updaters.items():
            set_lr(updater.optimizer, self.base_lr[name] * self.factor * self.lr_scale)
        return train_step(self.models, self.updaters, batch, self.cfg, self.stage, step, agree=self.agree,
                          fns=self.fns)

    def watched(self) -> list[nn.Module]:
        """The modules whose weights the divergence guard checks (what a checkpoint saves)."""
        return [self.models.generator, self.models.d_local, self.models.d_global]

    def ensure_finite(self, state: RunState) -> None:
        """Raise :class:`~facecomp.train.guard.Diverged` if a loss since the last check or a weight now
        is not finite: at every log line, and before every checkpoint, so none holds NaN weights."""
        if self._checked == state.step:  # a checkpoint at a log line's step: checked once
            return
        self.guard.check(state.step, self.watched())
        self._checked = state.step

    def read_now(self) -> dict[str, float]:
        """The last step's metrics as floats: the one host sync, made per log line and checkpoint."""
        if self.latest:  # before any step (a resumed run's first line) the last figures stand
            self.metrics = read_metrics(self.latest)
        return self.metrics

    def after_step(self, state: RunState, batch: dict, result: StepResult | None, at_checkpoint: bool) -> None:
        if self.bar is not None:
            self.bar.update(1)
        if result is None:
            return
        step, t = state.step, self.cfg.train
        self.latest = result.metrics
        self.guard.observe(step, result.metrics)
        if step % t.log_every == 0 or step == self.total:
            self.ensure_finite(state)
            self.log(state)
        if self.writer is not None and (step % t.image_every == 0 or step == self.total):
            grid = _grid(batch["image"], batch["mask"], result.completed)
            self.writer.add_image(f"stage{self.stage}/original_masked_completed", grid, step)

    def log(self, state: RunState) -> None:
        # The run's average hides what the machine gives now (a run shared with other work for hours
        # reads slow long after it has the machine to itself), so the line shows the rate since the
        # last line beside it.
        m, s, rate = self.read_now(), self.stage, state.images / max(state.seconds, 1e-9)
        images0, seconds0 = self._logged or (state.images, state.seconds)
        recent = (state.images - images0) / max(state.seconds - seconds0, 1e-9) if self._logged else rate
        self._logged = (state.images, state.seconds)
        if self.writer is not None:
            for k, v in m.items():
                self.writer.add_scalar(f"stage{s}/{k}", v, state.step)
            self.writer.add_scalar(f"stage{s}/images_per_s", recent, state.step)
            self.writer.add_scalar(f"stage{s}/lr_factor", self.factor * self.lr_scale, state.step)
            self.writer.add_scalar(f"stage{s}/lr_scale", self.lr_scale, state.step)
            self.writer.add_scalar(f"stage{s}/adv_ramp", adversarial_ramp(self.cfg, state.step - 1), state.step)
        if self.bar is not None:
            self.bar.set_postfix(recon=f"{m['recon']:.1f}", total=f"{m['total']:.1f}")
        if self.log_lines:  # a run in the background (nohup, a batch job, a cluster worker): a line in its log
            log.info("stage %d step %d/%d recon %.2f total %.2f lr x%.3f %.1f images/s (run average %.1f)",
                     s, state.step, self.total, m["recon"], m["total"], self.factor * self.lr_scale, recent, rate)


def _grid(x: torch.Tensor, m: torch.Tensor, y: torch.Tensor, n: int = 8) -> torch.Tensor:
    """Rows of (original, masked, completed) as one [3, H, W] image in [0, 1]."""
    x, m, y = x[:n].float().cpu(), m[:n].float().cpu(), y[:n].float().cpu()
    masked = x * (1 - m) + m  # hole shown white
    rows = [torch.cat([a, b, c], dim=2) for a, b, c in zip(x, masked, y, strict=True)]
    return (torch.cat(rows, dim=1).clamp(-1, 1) + 1) / 2


# --- the plain loop -------------------------------------------------------------------------------

@dataclass
class RunResult:
    run_dir: Path
    steps: int
    images: int
    seconds: float
    metrics: dict[str, float]
    finished: bool = True  # False: stopped early (stop_at or a signal) with a checkpoint to resume from


class _PlainStage(StageHooks):
    """One process: torch optimizers, the EMA of G, validation and the checkpoint rule, atomic checkpoints."""

    def __init__(self, cfg: Config, stage: int, run_dir: Path, setup: StageSetup, device: torch.device, *,
                 ema: EMA | None, vset: val.ValidationSet | None, bar, log_lines: bool):
        super().__init__(cfg, stage, setup.models, setup.wrapped.updaters(), device, writer=setup.writer, bar=bar,
                         log_lines=log_lines)
        self.run, self.optimizers = RunFolder(run_dir), setup.wrapped.optimizers
        self.ema, self.vset, self.loader = ema, vset, setup.loader

    def step(self, batch: dict, step: int) -> StepResult:
        result = super().step(batch, step)
        if self.ema is not None:
            self.ema.update(self.models.generator, step)
        return result

    def after_step(self, state: RunState, batch: dict, result: StepResult | None, at_checkpoint: bool) -> None:
        super().after_step(state, batch, result, at_checkpoint)
        every = self.cfg.validation.every
        if self.vset is not None and (at_checkpoint or (every and state.step % every == 0)):
            self.validate(state)

    def best(self, state: RunState) -> dict | None:
        """The best (step, variant) among checkpoints on disk and the one being written at this step."""
        v = self.cfg.validation
        return val.choose(state.validation, v.select, v.select_after, self.run.steps() | {state.step},
                          v.min_sharpness)

    def validate(self, state: RunState) -> None:
        step, device = state.step, self.device
        record: dict = {"step": step, "raw": val.score(self.models.generator, self.vset, self.cfg, device)}
        if self.ema is not None:
            record["ema"] = val.score(self.ema.module, self.vset, self.cfg, device)
        state.validation[:] = [r for r in state.validation if r["step"] < step] + [record]
        for variant in ("raw", "ema"):
            for key, value in record.get(variant, {}).items():
                self.writer.add_scalar(f"stage{self.stage}/val_{variant}/{key}", value, step)
        write_json(self.run.validation_file, state.validation)
        raw = record["raw"]
        shown = {k: round(raw[k], 3) for k in ("hole_psnr", "ssim", "sharpness", "identity") if k in raw}
        log.info("validation at step %d: %s", step, shown)

    def watched(self) -> list[nn.Module]:
        return super().watched() + ([self.ema.module] if self.ema is not None else [])

    def save(self, state: RunState) -> None:
        self.ensure_finite(state)
        cfg, stage, step = self.cfg, self.stage, state.step
        state.best = self.best(state)
        if hasattr(self.loader, "state"):  # a loader that keeps its own position (DALI): resume it from there
            state.loader_state = self.loader.state()
        mods = {n: (getattr(self.models, n), weights_meta(cfg, n, stage, step)) for n in TRAINED}
        if self.ema is not None:
            mods[RunFolder.EMA] = (self.ema.module, {**weights_meta(cfg, "generator", stage, step),
                                                       "kind": "generator", "ema_decay": self.ema.decay})
        protect = frozenset([state.best["step"]] if state.best else [])
        ck.save_checkpoint(self.run.root, mods, self.optimizers, state, keep=cfg.train.keep_checkpoints,
                           protect=protect)


class _PlainSession:
    """One go of the plain loop over a stage, from ``ckpt`` (or the stage's start): the one setup with torch
    optimizers, the EMA, validation, the progress bar. A rollback starts a new one from the last finite
    checkpoint, with ``rollbacks`` (this session's, not yet in any checkpoint) and their lowered rates."""

    def __init__(self, cfg: Config, stage: int, run: RunFolder, roots: list[str], device: torch.device,
                 ckpt: Path | None, init: str | Path | None, progress: bool, rollbacks: list[dict]):
        from tqdm import tqdm

        setup = setup_stage(cfg, stage, run.root, device, TorchOptimizers, roots=roots, ckpt=ckpt, init=init)
        self.state, self.ckpt = setup.state, ckpt
        if rollbacks:
            self.state.rollbacks, self.state.lr_scale = rollbacks, rollbacks[-1]["lr_scale"]
            setup.writer.add_text(f"stage{stage}/rollback", json.dumps(rollbacks[-1]), self.state.step)
        # the average's BatchNorm statistics are re-estimated on these whenever it is scored or saved
        ema = (EMA(setup.models.generator, cfg.train.ema, calibration=calibration_inputs(cfg, setup.files, device))
               if cfg.train.ema > 0 else None)
        if ema is not None and ckpt is not None:
            if RunFolder.variant_file(ckpt, "ema").is_file():
                load_module(RunFolder.variant_file(ckpt, "ema"), ema.module, "generator")
            else:  # a checkpoint from before train.ema was set: the average starts here
                log.warning("%s has no generator_ema.safetensors; the EMA starts from the current weights", ckpt)
        run.begin(config_mod.to_toml(cfg), {"stage": stage, "config": config_mod.to_dict(cfg)})
        self.total = cfg.train.stage_steps[stage - 1]
        self.ckpt_every = cfg.train.ckpt_every
        self.bar = tqdm(total=self.total, initial=self.state.step, desc=f"stage {stage}", disable=not progress,
                        unit="step")
        self.hooks = _PlainStage(cfg, stage, run.root, setup, device, ema=ema, vset=val.load_validation_set(cfg),
                                 bar=self.bar, log_lines=not progress)
        self.hooks.lr_scale = self.state.lr_scale
        self.setup = setup

    def drive(self, stop_at: int | None, stop: Callable[[], bool] | None) -> bool:
        return drive(self.state, iter(self.setup.loader), self.hooks, total=self.total, ckpt_every=self.ckpt_every,
                     until=stop_at, stop=stop, saved=self.state.step if self.ckpt is not None else None)

    def close(self) -> None:
        self.bar.close()
        self.setup.writer.close()


def _last_finite(run_dir: str | Path, needs: list[str]) -> Path | None:
    """The checkpoint a rollback goes back to (the guard saves none after a divergence: the newest that
    verifies), or None: none yet, the stage starts again."""
    try:
        return ck.resume_checkpoint(run_dir, needs, warn=False)
    except ValueError:
        return None


def train(cfg: Config, stage: int, data_root: str | Path | list[str], run_dir: str | Path,
          init: str | Path | None = None, resume: bool = False, progress: bool = True,
          stop_at: int | None = None, stop: Callable[[], bool] | None = None) -> RunResult:
    """Train ``stage`` into ``run_dir``.

    ``stop_at`` (a step) or ``stop`` (checked between steps; e.g. a :class:`~facecomp.train.preempt.
    StopRequest`) end this session early with a checkpoint at the step reached: an interrupted run,
    continued with ``resume``, and ``RunResult.finished`` is False. A run the divergence guard stops
    raises :class:`~facecomp.train.guard.Diverged`, unless ``train.rollbacks`` allows it to go back to its
    last finite checkpoint with lowered learning rates (``RunState.rollbacks`` says each time).
    """
    check_stage(stage)
    run = RunFolder(run_dir)
    device = runtime.start(cfg.runtime)

    # the newest checkpoint that verifies: a damaged newest one is passed over for the one before, said in a line
    needs = [*TRAINED, *(RunFolder.optimizer_stem(name) for name in TRAINED)]
    ckpt = ck.resume_checkpoint(run_dir, needs) if resume else None
    roots = list(data_root) if isinstance(data_root, list | tuple) else [data_root]
    rollbacks: list[dict] = []  # made in this session, carried into the state of the checkpoint gone back to
    while True:
        session = _PlainSession(cfg, stage, run, roots, device, ckpt, init, progress, rollbacks)
        try:
            finished = session.drive(stop_at, stop)
            break
        except Diverged as e:
            if len(session.state.rollbacks) >= cfg.train.rollbacks:
                raise
            ckpt = _last_finite(run_dir, needs)
            rollbacks = [*session.state.rollbacks, {
                "step": e.step, "to": RunFolder.step_of(ckpt) if ckpt is not None else 0, "what": e.what,
                "lr_scale": session.state.lr_scale * cfg.train.rollback_lr}]
            log.warning("%s; rollback %d of %d: back to %s with the learning rates x%g", e, len(rollbacks),
                        cfg.train.rollbacks, ckpt or "the stage's start", rollbacks[-1]["lr_scale"])
        finally:
            session.close()
    hooks, state = session.hooks, session.state
    if not finished:  # stopped early: a checkpoint to resume from, and no result
        return RunResult(run.root, state.step, state.images, state.seconds, hooks.read_now(), finished=False)
    _write_result(run, state, hooks.best(state) if hooks.vset is not None else None, cfg)
    return RunResult(run.root, state.step, state.images, state.seconds, hooks.read_now())


def _write_result(run: RunFolder, state: RunState, chosen: dict | None, cfg: Config) -> None:
    """The finished stage: its chosen generator published in the run folder, and result.json."""
    weights = (RunFolder.variant_file(run.checkpoint(chosen["step"]), chosen["variant"]) if chosen is not None
               else RunFolder.weights_file(run.latest(), "generator"))
    scores = next((r[chosen["variant"]] for r in state.validation if chosen and r["step"] == chosen["step"]), None)
    v = cfg.validation
    run.finish({"finished": True, "stage": state.stage, "steps": state.step, "images": state.images,
                "seconds": state.seconds, "wall_seconds": state.wall_seconds, "chosen": chosen, "scores": scores,
                "rule": f"max {v.select} over O1-O6 (raw or EMA) among checkpoints at step >= {v.select_after}"
                + (f" with mean sharpness >= {v.min_sharpness}" if v.min_sharpness > 0 else "")
                if chosen else "latest checkpoint (no validation)" if not v.faces
                else "latest checkpoint (no checkpoint passed the rule)"}, weights)
