"""Typed configs: one small dataclass per component, TOML presets, dotted overrides.

A preset (``configs/*.toml``) and ``key=value`` overrides are merged onto the defaults below.
Unknown keys are errors that name the key, so a typo never silently trains the wrong model.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

PRESET_DIR = Path(__file__).parent / "configs"


@dataclass(kw_only=True)
class GeneratorConfig:
    """The paper's generator: VGG-19 conv1_1..pool3, two convs + pool, FC bottleneck, mirrored decoder."""

    NORMS: ClassVar[tuple[str, ...]] = ("batch", "none")  # facecomp.models.layers.conv_stack
    CONTEXTS: ClassVar[tuple[str, ...]] = ("none", "dilated")  # facecomp.models.generator.CONTEXT_BLOCKS

    image_size: int = 128  # the paper trains and tests at 128x128
    width: float = 1.0  # multiplier on VGG-19 channel widths (64, 128, 256, 512)
    bottleneck: int = 512  # size of the fully connected code between encoder and decoder
    mask_channel: bool = False  # append the mask as a 4th input channel (the paper feeds 3)
    norm: str = "batch"  # "batch" | "none"
    # Beyond the paper: the paper's decoder sees the visible face only through the bottleneck code, so
    # the hole gets an average face. `skips` encoder levels (deepest first, at most 4) also reach the
    # decoder through 1x1 projections that start at zero: a generator trained without them is exactly
    # the starting point. `context` adds GLCIC's dilated convolutions on the deepest skip, so a large
    # hole sees the whole face at 16x16 without passing through the code.
    skips: int = 0
    context: str = "none"  # "none" | "dilated" (needs skips >= 1)
    # Each skip also brings the encoder features of the mirrored position (left-right flipped), through
    # its own zero-started projection: aligned faces are near-symmetric, so where one eye or half is
    # hidden the visible one reaches the hole's position directly. Needs skips >= 1.
    mirror_skips: bool = False

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """Own fields only; the mask size against image_size is checked where both meet (validate)."""
        if self.image_size % 16 or self.image_size < 32:
            raise ValueError(f"generator.image_size must be a multiple of 16 and >= 32, got {self.image_size}")
        if self.width <= 0:
            raise ValueError(f"generator.width must be positive, got {self.width}")
        _choice("generator.norm", self.norm, self.NORMS)
        _choice("generator.context", self.context, self.CONTEXTS)
        if not 0 <= self.skips <= 4:
            raise ValueError(f"generator.skips counts encoder levels, 0..4; got {self.skips}")
        if self.context != "none" and self.skips < 1:
            raise ValueError("generator.context works on the deepest skip: it needs generator.skips >= 1")
        if self.mirror_skips and self.skips < 1:
            raise ValueError("generator.mirror_skips mirrors the skips: it needs generator.skips >= 1")


LOCAL_VIEWS = ("box", "square")


@dataclass(kw_only=True)
class DiscriminatorConfig:
    """DCGAN-like discriminators (the paper's [19]): local on the hole, global on the whole image."""

    width: float = 1.0  # multiplier on DCGAN widths (64, 128, 256, 512)
    local_size: int = 64  # the local D's input side, in pixels
    # What the local D sees of each hole, resampled to local_size: "box", the hole's bounding box (the
    # paper's; a small or flat hole is magnified and stretched), or "square", a square window around the
    # box of side at least local_size, inside the image (only ever shrunk, never stretched: parts seen at
    # the scale and shape they have, whatever the hole).
    local_view: str = "box"

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        if self.width <= 0:
            raise ValueError(f"discriminator.width must be positive, got {self.width}")
        _choice("discriminator.local_view", self.local_view, LOCAL_VIEWS)


@dataclass(kw_only=True)
class ParsingConfig:
    """The frozen 11-label face-parsing network used by Lp in stage 3."""

    width: float = 0.5
    num_classes: int = 11
    weights: str = ""  # safetensors file; "" = the weights shipped in the package

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        if self.width <= 0:
            raise ValueError(f"parsing.width must be positive, got {self.width}")


@dataclass(kw_only=True)
class IdentityConfig:
    """The frozen identity network of the stage-3 identity loss (``loss.identity``; facecomp.models.identity),
    trained by ``facecomp identity train`` on the training identities: never dlib's, which is the evaluator."""

    input_size: int = 64  # the 128-px crop is area-downsampled to this
    width: float = 1.0
    embed_dim: int = 128
    weights: str = ""  # safetensors file; "" = the weights shipped in the package

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        if self.width <= 0 or self.embed_dim < 1:
            raise ValueError(f"identity.width must be positive and identity.embed_dim >= 1, got {self}")
        if self.input_size < 16 or self.input_size % 16:
            raise ValueError(f"identity.input_size must be a multiple of 16 (four stride-2 levels), "
                             f"got {self.input_size}")


DATA_ENV = "FACECOMP_DATA"  # the folder holding the datasets: celeba/, celeba_extra/, celeba_wild/
DATA_HOME = "../shared/data"  # its default, beside the repository


def data_home(default: str | Path = DATA_HOME) -> Path:
    """The folder holding the datasets (``celeba/``, ``celeba_extra/``, ``celeba_wild/``): ``$FACECOMP_DATA``,
    else ``default``. The one default every command, test, benchmark and script starts from."""
    return Path(os.environ.get(DATA_ENV) or default)


def default_data_root(dataset: str = "celeba") -> str:
    """A dataset folder under :func:`data_home` (CelebA's layout): the default of ``data.roots`` and ``--data``."""
    return str(data_home() / dataset)


@dataclass(kw_only=True)
class DataConfig:
    """CelebA folders, the 128x128 face box and the augmentation ranges."""

    PARTITIONS: ClassVar[tuple[str, ...]] = ("train", "val", "test")  # facecomp.data.celeba.PARTITIONS
    LOADERS: ClassVar[tuple[str, ...]] = ("torch", "dali")  # facecomp.data.loaders.make_loader

    # One or more CelebA folders; a run reads the same partition of each (e.g. celeba/ + celeba_extra/).
    roots: list[str] = field(default_factory=lambda: [default_data_root()])
    partition: str = "train"  # train | val | test
    limit: int = 0  # use only the first N images of the partition, over all roots in order (0 = all)
    flip: float = 0.5  # probability of a horizontal flip
    shift: float = 0.05  # max shift, as a fraction of the crop size
    rotate: float = 15.0  # max rotation in degrees (the paper: +/- 15)
    scale_min: float = 0.9
    scale_max: float = 1.1
    workers: int = 0  # DataLoader worker processes (torch) or decode threads (dali; 0 = one per core)
    loader: str = "torch"  # "torch" (the reference DataLoader) | "dali" (NVIDIA DALI; facecomp[dali])

    # `data.root` is the one-folder spelling of earlier runs; their state.json files still load.
    @property
    def root(self) -> str:
        return self.roots[0]

    @root.setter
    def root(self, value: str) -> None:
        self.roots = [value]

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        if not self.roots:
            raise ValueError("data.roots needs at least one CelebA folder")
        _choice("data.partition", self.partition, self.PARTITIONS)
        _choice("data.loader", self.loader, self.LOADERS)


@dataclass(kw_only=True)
class ValidationConfig:
    """Scoring a fixed set of validation faces during training, to choose checkpoints from curves.

    Each checkpoint (and every ``every`` steps, if set) fills O1-O6 on the first ``faces`` faces of the
    validation partition and logs hole PSNR and SSIM of the raw generator and of its EMA. The stage's
    result is the checkpoint and variant with the best ``select`` score among steps >= ``select_after``.
    """

    # facecomp.train.validation.choose; "identity" is the one where lower is better
    SELECT: ClassVar[tuple[str, ...]] = ("hole_psnr", "ssim", "identity", "last")

    faces: int = 64  # 0 = no validation
    root: str = ""  # CelebA folder of the validation faces; "" = the first of data.roots
    partition: str = "val"
    masks: list[str] = field(default_factory=lambda: ["O1", "O2", "O3", "O4", "O5", "O6"])
    every: int = 0  # extra validation steps between checkpoints (0 = at checkpoints only)
    batch_size: int = 64
    seed: int = 1234  # noise of the holes, fixed so every validation sees the same input
    select: str = "hole_psnr"  # "hole_psnr" | "ssim" | "identity" (means over the masks) | "last"
    select_after: int = 0  # checkpoints before this step are not candidates (e.g. the adversarial warm-up)
    # weights whose mean sharpness (hole gradients over the original's) is below this are not candidates
    min_sharpness: float = 0.0
    # Also score identity distance: dlib's 128-D embedding of each completed face against its original's
    # (facecomp.identity_embedding; needs the 'faces' extra). Pixels and structure can improve while the completed
    # halves drift away from the person, which recognition of the completed faces notices and SSIM does not.
    identity: bool = False

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        _choice("validation.select", self.select, self.SELECT)
        _choice("validation.partition", self.partition, DataConfig.PARTITIONS)
        if self.faces < 0 or self.every < 0 or self.batch_size < 1:
            raise ValueError(f"validation: faces >= 0, every >= 0, batch_size >= 1; got {self}")
        if self.select == "identity" and not self.identity:
            raise ValueError("validation.select=identity needs validation.identity=true")


@dataclass(kw_only=True)
class MaskConfig:
    """Training masks: a square of fixed size at a uniform random position (the paper: 64x64); ``parts``:
    half of them such squares, half boxes over the face parts occluders cover (``masks.square_or_part``)."""

    kind: str = "square"  # see facecomp.masks.TRAIN_MASKS
    size: int = 64

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        if self.size < 1:
            raise ValueError(f"mask.size must be >= 1, got {self.size}")


@dataclass(kw_only=True)
class LossConfig:
    """Weights of L = Lr + l1*La1 + l2*La2 + l3*Lp; a stage switches terms on, a weight of 0 off.

    Scales follow the Caffe layers the paper used: Lr is EuclideanLoss (sum of squares / 2 per
    image), La is the per-image binary cross-entropy, Lp is the per-pixel softmax loss summed over
    the image. Only with these scales do the paper's 300/300/0.005 balance the terms.
    """

    recon: float = 1.0
    adv_local: float = 300.0
    adv_global: float = 300.0
    parsing: float = 0.005
    recon_known: float = 0.1  # weight of Lr on known pixels (the hole's weight is 1)
    # Beyond the paper (stage 3, where the frozen parsing network is loaded): LaMa's lesson that a
    # segmentation network's features make the better perceptual loss: L1 between the parsing network's
    # encoder features of the completed and the original face, summed over levels, per image.
    perceptual: float = 0.0
    # pix2pixHD's feature matching: L1 between each discriminator's features of the real and the
    # completed face, summed over its layers; for every D the stage has on.
    feature_match: float = 0.0
    # Beyond the paper (stage 3): 1 - cosine between the identity network's embeddings of the completed and
    # the original face, averaged over the batch: the person kept, not an average face's eye or mouth
    # (facecomp.models.identity; its weights from `facecomp identity train`, [identity]).
    identity: float = 0.0

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        for name in ("recon", "adv_local", "adv_global", "parsing", "recon_known", "perceptual", "feature_match",
                     "identity"):
            if getattr(self, name) < 0:
                raise ValueError(f"loss.{name} is a weight, >= 0; got {getattr(self, name)}")


@dataclass(kw_only=True)
class AdversarialConfig:
    """How the discriminators are kept from overpowering the generator early (the paper, after [19])."""

    warmup_steps: int = 1000  # adversarial weights ramp linearly from 0 over these G steps
    real_label: float = 0.9  # one-sided label smoothing for real samples
    d_skip_below: float = 0.2  # skip a D update while its loss is already below this
    r1: float = 0.0  # R1 penalty weight gamma (Mescheder et al. 2018): gamma/2 * E|grad_x D(x_real)|^2; 0 = off

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        if self.r1 < 0:
            raise ValueError(f"adversarial.r1 must be >= 0, got {self.r1}")


@dataclass(kw_only=True)
class OptimConfig:
    LR_DECAYS: ClassVar[tuple[str, ...]] = ("none", "linear", "cosine")  # facecomp.train.schedule.lr_factor
    lr_g: float = 2e-4
    lr_d: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999
    grad_clip: float = 0.0  # 0 = no clipping
    # Learning-rate schedule over the stage, a pure function of the step (so --resume needs no state):
    # constant until decay_start (a fraction of the stage), then down to lr * lr_final at its end.
    lr_decay: str = "none"  # "none" | "linear" | "cosine"
    decay_start: float = 0.0
    lr_final: float = 0.1

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        _choice("optim.lr_decay", self.lr_decay, self.LR_DECAYS)
        if not (0.0 <= self.decay_start < 1.0 and 0.0 <= self.lr_final <= 1.0):
            raise ValueError(f"optim.decay_start in [0, 1) and optim.lr_final in [0, 1]; "
                             f"got {self.decay_start}, {self.lr_final}")


@dataclass(kw_only=True)
class TrainConfig:
    batch_size: int = 64
    stage_steps: list[int] = field(default_factory=lambda: [20000, 10000, 10000])
    log_every: int = 50
    image_every: int = 500
    ckpt_every: int = 1000
    keep_checkpoints: int = 3  # older checkpoints of a run are deleted (0 = keep all); the best is kept too
    seed: int = 0
    ema: float = 0.0  # decay of an exponential moving average of G's weights (e.g. 0.999); 0 = none
    # training faces the average's BatchNorm statistics are re-estimated on before it is scored or saved
    # (facecomp.train.ema); 0 = copy the raw weights' statistics (worse: ~1 dB hole PSNR at 28k faces)
    ema_bn_images: int = 512
    # A diverged run (facecomp.train.guard) goes back to its last finite checkpoint and on with the
    # learning rates times rollback_lr, at most this many times a stage; 0 = stop (exit 3) instead.
    rollbacks: int = 0
    rollback_lr: float = 0.5
    # Parameters the stage leaves as they start, by name prefix within a trained module
    # ("generator.fc_in" holds fc_in's weight and bias; facecomp.train.loop.freeze). A generator
    # fine-tuned with the paper generator's bottleneck frozen can publish only what it changed and
    # borrow the rest from the file it started from (facecomp.weights, a file's base).
    frozen: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        if self.batch_size < 1:
            raise ValueError("train.batch_size must be >= 1")
        if len(self.stage_steps) != 3:
            raise ValueError(f"train.stage_steps needs 3 entries (one per stage), got {self.stage_steps}")
        if not 0.0 <= self.ema < 1.0:
            raise ValueError(f"train.ema is a decay in [0, 1), got {self.ema}")
        if self.ema_bn_images < 0:
            raise ValueError(f"train.ema_bn_images must be >= 0, got {self.ema_bn_images}")
        if self.rollbacks < 0:
            raise ValueError(f"train.rollbacks must be >= 0, got {self.rollbacks}")
        if not 0.0 < self.rollback_lr < 1.0:
            raise ValueError(f"train.rollback_lr lowers the rates: it must be in (0, 1), got {self.rollback_lr}")
        for prefix in self.frozen:
            module, _, rest = prefix.partition(".")
            if module not in ("generator", "d_local", "d_global") or not rest:
                raise ValueError(f"train.frozen names parameters as <generator|d_local|d_global>.<name prefix>, "
                                 f"got {prefix!r}")


@dataclass(kw_only=True)
class ParsingTrainConfig:
    """Training the face-parsing network itself (``facecomp parsing train``); its shapes are [parsing]."""

    labels: str = "~/.cache/facecomp/parsing-labels/celeba"  # from `facecomp parsing label`
    steps: int = 2000
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-4
    class_balance: float = 0.5  # class weights = (median frequency / frequency) ** this; 0 = unweighted
    log_every: int = 50
    ckpt_every: int = 500

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or self.ckpt_every < 1 or self.log_every < 1:
            raise ValueError(f"parsing_train: steps, batch_size, ckpt_every, log_every >= 1; got {self}")


@dataclass(kw_only=True)
class IdentityTrainConfig:
    """Training the identity network (``facecomp identity train``): CosFace (Wang et al. 2018) over the
    training identities, AdamW under a one-cycle schedule; its shapes are [identity]."""

    steps: int = 3000
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 5e-4
    margin: float = 0.35  # CosFace's additive cosine margin m
    scale: float = 30.0  # and its scale s
    log_every: int = 50
    ckpt_every: int = 500

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        if self.steps < 1 or self.batch_size < 2 or self.ckpt_every < 1 or self.log_every < 1:
            raise ValueError(f"identity_train: steps, ckpt_every, log_every >= 1, batch_size >= 2; got {self}")
        if not (0.0 <= self.margin < 1.0 and self.scale > 0):
            raise ValueError(f"identity_train.margin in [0, 1) and scale > 0; got {self.margin}, {self.scale}")


@dataclass(kw_only=True)
class RuntimeConfig:
    AMP: ClassVar[tuple[str, ...]] = ("none", "bf16", "fp16")
    KERNELS: ClassVar[tuple[str, ...]] = ("auto", "native", "ref")  # facecomp.kernels.IMPLS
    COMPILES: ClassVar[tuple[str, ...]] = ("none", "default", "reduce-overhead", "max-autotune")
    device: str = "cpu"  # "cpu" | "cuda" | "cuda:N"; the one device decision, passed down
    amp: str = "none"  # "none" | "bf16" | "fp16" (fp16 only on CUDA)
    channels_last: bool = False
    threads: int = 0  # torch intra-op threads (0 = torch's default)
    tune_malloc: bool = True  # keep freed activations in the heap (see facecomp.runtime)
    kernels: str = "auto"  # fill/composite implementation: "auto" | "native" | "ref" (facecomp.kernels)
    # torch.compile of the training step's pieces (facecomp.train.step.StepFunctions), each one whole graph:
    # "none" (eager) | "default" | "reduce-overhead" (adds CUDA graphs) | "max-autotune"
    compile: str = "none"
    cudnn_benchmark: bool = True  # on CUDA: let cuDNN time its conv algorithms once per shape (fixed shapes here)

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        _choice("runtime.amp", self.amp, self.AMP)
        _choice("runtime.kernels", self.kernels, self.KERNELS)
        _choice("runtime.compile", self.compile, self.COMPILES)


@dataclass(kw_only=True)
class ClusterConfig:
    """`facecomp cluster train`: Ray Train launches the workers, DeepSpeed steps G and the Ds (facecomp.cluster)."""

    deepspeed: str = "zero1_fp32"  # a config of cluster/configs/ (zero0|1|2 x fp32|bf16|fp16, ...) or a JSON path
    cpus_per_worker: int = 1  # Ray's CPU reservation per worker, and its torch threads
    max_failures: int = 3  # worker failures Ray Train restarts from the last checkpoint (-1 = no limit)
    keep_checkpoints: int = 2  # newest checkpoints kept in the run's storage (0 = all)

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        if not self.deepspeed:
            raise ValueError("cluster.deepspeed must name a DeepSpeed config (see cluster/configs/)")
        if self.cpus_per_worker < 1 or self.max_failures < -1 or self.keep_checkpoints < 0:
            raise ValueError("cluster: cpus_per_worker >= 1, max_failures >= -1, keep_checkpoints >= 0; "
                             f"got {self}")


@dataclass(kw_only=True)
class Config:
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    discriminator: DiscriminatorConfig = field(default_factory=DiscriminatorConfig)
    parsing: ParsingConfig = field(default_factory=ParsingConfig)
    identity: IdentityConfig = field(default_factory=IdentityConfig)
    data: DataConfig = field(default_factory=DataConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    mask: MaskConfig = field(default_factory=MaskConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    adversarial: AdversarialConfig = field(default_factory=AdversarialConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    parsing_train: ParsingTrainConfig = field(default_factory=ParsingTrainConfig)
    identity_train: IdentityTrainConfig = field(default_factory=IdentityTrainConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)


def _check_type(key: str, value: Any, hint: Any) -> Any:
    origin = typing.get_origin(hint)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if origin is list:
        (item,) = typing.get_args(hint)
        if not isinstance(value, list):
            raise ValueError(f"config key '{key}' expects a list, got {value!r}")
        return [_check_type(key, v, item) for v in value]
    if hint in (int, float, str, bool) and (type(value) is not hint):
        raise ValueError(f"config key '{key}' expects {hint.__name__}, got {value!r}")
    return value


def _merge(obj: Any, data: dict[str, Any], prefix: str = "") -> None:
    hints = typing.get_type_hints(type(obj))
    names = {f.name for f in dataclasses.fields(obj)}
    for key, value in data.items():
        path = f"{prefix}{key}"
        if key not in names and isinstance(getattr(type(obj), key, None), property):
            setattr(obj, key, value)  # a legacy spelling kept as a property (DataConfig.root)
            continue
        if key not in names:
            valid = ", ".join(sorted(names))
            raise ValueError(f"unknown config key '{path}' (valid here: {valid})")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ValueError(f"config key '{path}' is a section; set '{path}.<key>' instead")
            _merge(current, value, prefix=f"{path}.")
        elif isinstance(value, dict):
            inner = ".".join([path, *_first_path(value)])
            raise ValueError(f"unknown config key '{inner}' ('{path}' is a value, not a section)")
        else:
            setattr(obj, key, _check_type(path, value, hints[key]))


def _first_path(d: dict[str, Any]) -> list[str]:
    key, value = next(iter(d.items()))
    return [key, *_first_path(value)] if isinstance(value, dict) and value else [key]


def _read_value(text: str) -> Any:
    """TOML value syntax (numbers, booleans, lists, quoted strings); anything else is a bare string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def read_overrides(items: list[str]) -> dict[str, Any]:
    """['train.batch_size=8', ...] -> nested dict."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"override '{item}' is not of the form key=value")
        key, text = item.split("=", 1)
        node = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = _read_value(text.strip())
    return out


def resolve_preset(name: str) -> Path:
    """A path to a TOML file, or a preset name from configs/ ('cpu', 'paper', 'smoke')."""
    path = Path(name)
    if path.suffix == ".toml" and path.exists():
        return path
    preset = PRESET_DIR / f"{path.stem}.toml"
    if path.suffix in ("", ".toml") and preset.exists():
        return preset
    names = ", ".join(sorted(p.stem for p in PRESET_DIR.glob("*.toml")))
    raise ValueError(f"config '{name}' is neither a TOML file nor a preset (presets: {names})")


def load_config(name: str | None = None, overrides: list[str] | None = None) -> Config:
    cfg = Config()
    if name:
        with open(resolve_preset(name), "rb") as f:
            try:
                _merge(cfg, tomllib.load(f))
            except tomllib.TOMLDecodeError as e:
                raise ValueError(f"config '{name}' is not valid TOML: {e}") from None
    return apply_overrides(cfg, overrides or [])


def apply_overrides(cfg: Config, overrides: list[str]) -> Config:
    """Apply dotted ``key=value`` overrides to an existing config (validated)."""
    _merge(cfg, read_overrides(overrides))
    validate(cfg)
    return cfg


def from_dict(data: dict[str, Any]) -> Config:
    cfg = Config()
    _merge(cfg, data)
    validate(cfg)
    return cfg


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def to_toml(cfg: Config) -> str:
    lines: list[str] = []
    for section, values in to_dict(cfg).items():
        lines.append(f"[{section}]")
        for key, value in values.items():
            lines.append(f"{key} = {json.dumps(value)}")
        lines.append("")
    return "\n".join(lines)


def validate(cfg: Config) -> None:
    """Every component checks its own fields (their ``check``); here only what spans components."""
    for f in dataclasses.fields(cfg):
        getattr(cfg, f.name).check()
    if not 0 < cfg.mask.size < cfg.generator.image_size:
        raise ValueError(f"mask.size must be in (0, {cfg.generator.image_size}), got {cfg.mask.size}")


def _choice(key: str, value: str, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise ValueError(f"{key} must be one of {', '.join(valid)}; got '{value}'")
