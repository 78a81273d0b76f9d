"""G, D_local and D_global wrapped by DeepSpeed: one DeepSpeed engine each, built from a JSON config.

The JSON files in ``configs/`` say how DeepSpeed runs (ZeRO stage, precision, gradient accumulation,
clipping); the facecomp config says what is trained (batch, learning rates, betas), so there is one
place for each. An engine offers ``backward(loss)`` and ``step()``: it is an ``Updater`` of
:func:`facecomp.train.step.train_step` as it is.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from facecomp.config import Config
from facecomp.train.loop import TRAINED, base_lrs
from facecomp.train.step import Models

CONFIG_DIR = Path(__file__).parent / "configs"


def config_names() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.json"))


def load_ds_json(name: str) -> dict[str, Any]:
    """A config of cluster/configs/ by name (``zero1_fp32``), or a JSON file by path."""
    path = Path(name)
    if path.suffix != ".json":
        path = CONFIG_DIR / f"{name}.json"
    if not path.is_file():
        raise ValueError(f"cluster.deepspeed '{name}': no such DeepSpeed config "
                         f"(valid names: {', '.join(config_names())}; or a path to a .json file)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"cluster.deepspeed '{name}': not valid JSON ({e})") from None


def deepspeed_config(cfg: Config, lr: float, device: torch.device) -> dict[str, Any]:
    """The full DeepSpeed config of one engine: the JSON file plus what the facecomp config decides."""
    ds = copy.deepcopy(load_ds_json(cfg.cluster.deepspeed))
    for key in ("train_batch_size", "train_micro_batch_size_per_gpu", "optimizer"):
        if key in ds:
            raise ValueError(f"cluster.deepspeed '{cfg.cluster.deepspeed}' sets '{key}': the facecomp config "
                             "owns it (train.batch_size, optim.*)")
    if ds.get("fp16", {}).get("enabled") and device.type != "cuda":
        raise ValueError(f"cluster.deepspeed '{cfg.cluster.deepspeed}' is fp16, which needs CUDA workers; "
                         "use an fp32 or bf16 config on CPU")
    for prec in ("bf16", "fp16"):
        if ds.get(prec, {}).get("enabled") and cfg.runtime.amp != prec:
            # the engine holds the weights in that precision; autocast feeds them the fp32 batch
            raise ValueError(f"cluster.deepspeed '{cfg.cluster.deepspeed}' trains in {prec}: "
                             f"set runtime.amp={prec}")
    # One facecomp step = one micro-batch of train.batch_size per worker; DeepSpeed derives the global
    # batch (micro x accumulation x world size) itself.
    ds["train_micro_batch_size_per_gpu"] = cfg.train.batch_size
    # DeepSpeed's "Adam" is AdamW with weight decay 0.01 unless told otherwise, and its fused kernel
    # needs a build: ask for torch's own Adam with the plain loop's exact hyper-parameters.
    ds["optimizer"] = {"type": "Adam", "params": {
        "lr": lr, "betas": [cfg.optim.beta1, cfg.optim.beta2], "eps": 1e-8, "weight_decay": 0.0,
        "adam_w_mode": False, "torch_adam": True}}
    # DeepSpeed clips at norm 1.0 unless told; the plain loop clips at optim.grad_clip (0 = never).
    # A JSON config that sets its own clipping keeps it.
    ds.setdefault("gradient_clipping", cfg.optim.grad_clip)
    ds.setdefault("steps_per_print", 10**9)  # facecomp logs its own metrics
    return ds


class InPrecision:
    """A DeepSpeed engine called with its floating-point inputs cast to the engine's precision.

    A bf16/fp16 engine holds its weights in that precision and, on CUDA, runs its forward with
    torch.autocast switched off (DeepSpeed's ``autocast_if_enabled``, unless the JSON has a
    ``torch_autocast`` section): the step's float32 batch then meets bf16 conv weights and the
    forward fails ("Input type (torch.cuda.FloatTensor) and weight type (CUDABFloat16Type)", the
    first GPU device check, 2026-11-27). DeepSpeed's own examples cast the batch to the engine's
    dtype; this does that. Everything else (``module``, ``backward``, ``step``) is the engine's.
    """

    def __init__(self, engine: Any, dtype: torch.dtype):
        self.engine, self.dtype = engine, dtype

    def __call__(self, *args: Any) -> Any:
        return self.engine(*(a.to(self.dtype) if torch.is_tensor(a) and a.is_floating_point() else a for a in args))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.engine, name)


class EngineUpdater:
    """A DeepSpeed engine as the step's ``Updater``: ``backward`` and ``step`` are the engine's.

    ``step_if`` reads the gate on the host: an engine's update is a sequence of collectives (gradient
    all-reduce, ZeRO's partition exchange) and a micro-step counter, which every rank must enter or skip
    together, and DeepSpeed's step reads device values itself (overflow and norm checks). The gate is
    already the same on every rank (train_step agrees it), so all ranks skip or step together.
    """

    def __init__(self, engine: Any):
        self.engine = engine

    def backward(self, loss: torch.Tensor) -> None:
        self.engine.backward(loss)

    def step(self) -> None:
        self.engine.step()

    def step_if(self, loss: torch.Tensor, gate: torch.Tensor) -> None:
        if bool(gate):
            self.engine.backward(loss)
            self.engine.step()

    def __getattr__(self, name: str) -> Any:  # optimizer, module, train(), ... are the engine's
        return getattr(self.engine, name)


@dataclass
class DeepSpeedModels:
    """The three DeepSpeed engines, and the step's view of the models: D through ``engine.module``.

    The G step runs the discriminators with their parameters frozen (facecomp.train.step.frozen);
    called through its engine, a ZeRO-0 D refuses that backward, so the step sees the bare module.
    """

    generator: Any
    d_local: Any
    d_global: Any
    dtype: torch.dtype | None = None  # the engines' precision (bf16/fp16 JSON), None for fp32

    def updaters(self) -> dict[str, Any]:
        """The step's updaters, keyed like the modules (facecomp.train.loop.TRAINED)."""
        return {name: EngineUpdater(getattr(self, name)) for name in TRAINED}

    def models(self, parsing: torch.nn.Module | None, identity: torch.nn.Module | None = None) -> Models:
        generator = self.generator if self.dtype is None else InPrecision(self.generator, self.dtype)
        return Models(generator=generator, d_local=self.d_local.module, d_global=self.d_global.module,
                      parsing=parsing, identity=identity)

    def modules(self) -> dict[str, torch.nn.Module]:
        """Checkpoint names (generator, d_local, d_global) -> the trained modules."""
        return {name: getattr(self, name).module for name in TRAINED}


def wrap_models(models: Models, cfg: Config, device: torch.device) -> DeepSpeedModels:
    """Wrap the plain modules of ``models`` (already on ``device``) in DeepSpeed engines."""
    import deepspeed  # after DS_ACCELERATOR is set (facecomp.cluster.worker)

    ds_json = load_ds_json(cfg.cluster.deepspeed)
    dtype = next((t for key, t in (("bf16", torch.bfloat16), ("fp16", torch.float16))
                  if ds_json.get(key, {}).get("enabled")), None)
    lrs = base_lrs(cfg.optim)
    wrapped = {}
    for name in TRAINED:
        # DeepSpeed broadcasts and flattens parameters as contiguous byte views, which channels_last
        # weights are not. The step still feeds channels_last activations (runtime.channels_last), and
        # a conv with one channels_last operand runs channels_last.
        mod = getattr(models, name).to(memory_format=torch.contiguous_format)
        if dtype is not None:
            # DeepSpeed casts only the parameters; BatchNorm then meets bf16 weights and fp32 running
            # statistics, which CPU batch_norm refuses. Cast the buffers with them.
            mod = mod.to(dtype)
        engine, *_ = deepspeed.initialize(model=mod, model_parameters=[p for p in mod.parameters() if p.requires_grad],
                                          config=deepspeed_config(cfg, lrs[name], device))
        wrapped[name] = engine
    return DeepSpeedModels(**wrapped, dtype=dtype)


def make_agree(world_size: int):
    """The mean of a scalar over all ranks (the D-skip decision of train_step)."""
    import torch.distributed as dist

    def agree(t: torch.Tensor) -> torch.Tensor:
        t = t.float().clone()
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t / world_size

    return agree
