"""A Triton Inference Server model repository for an exported artifact.

The generator's config is written from the signature read back from the artifact itself (the ONNX
graph's inputs and outputs, or the TensorRT engine's own I/O tensors), never from what we meant to
export or the graph the artifact was compiled from. Beside it, a Python backend model completes
faces end to end (triton_model.py: the contract's pre- and post-processing around a BLS call):

    REPO/facecomp_generator/config.pbtxt
    REPO/facecomp_generator/1/model.onnx | model.plan
    REPO/facecomp_complete/config.pbtxt
    REPO/facecomp_complete/1/model.py
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from facecomp.contract import DEFAULT_BLEND
from facecomp.export.metadata import ArtifactMeta

MODEL_NAME = "facecomp_generator"
COMPLETE_NAME = "facecomp_complete"
COMPLETE_SOURCE = Path(__file__).resolve().parent / "triton_model.py"
MODEL_FILES = {"onnxruntime_onnx": "model.onnx", "tensorrt_plan": "model.plan"}
TRITON_TYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "bfloat16": "TYPE_BF16"}
ONNX_TYPES = {1: "float32", 10: "float16", 16: "bfloat16"}  # onnx.TensorProto element types


@dataclass(frozen=True)
class Tensor:
    name: str
    dtype: str  # float32 | float16 | bfloat16
    dims: tuple[int, ...]  # without the batch dimension
    batch: int | None  # None: dynamic; else the fixed batch size the graph was exported with


@dataclass(frozen=True)
class Signature:
    inputs: tuple[Tensor, ...]
    outputs: tuple[Tensor, ...]


def onnx_signature(path: str | Path) -> Signature:
    """Inputs and outputs of an ONNX file, as its graph declares them."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    initializers = {t.name for t in graph.initializer}

    def tensors(values) -> tuple[Tensor, ...]:
        out = []
        for v in values:
            if v.name in initializers:
                continue
            t = v.type.tensor_type
            dims = t.shape.dim
            batch = None if dims[0].dim_param or dims[0].dim_value == 0 else dims[0].dim_value
            out.append(Tensor(v.name, ONNX_TYPES[t.elem_type], tuple(d.dim_value for d in dims[1:]), batch))
        return tuple(out)

    return Signature(tensors(graph.input), tensors(graph.output))


@dataclass(frozen=True)
class EngineTensor:
    """One I/O tensor as a TensorRT engine reports it (``ICudaEngine.get_tensor_*``)."""

    name: str
    is_input: bool
    shape: tuple[int, ...]  # -1 where the dimension is dynamic
    dtype: str  # tensorrt.DataType name: FLOAT | HALF | BF16


TRT_TYPES = {"FLOAT": "float32", "HALF": "float16", "BF16": "bfloat16"}


def engine_tensors(engine) -> list[EngineTensor]:
    """The I/O tensors of a deserialized ``tensorrt.ICudaEngine``, in the engine's order."""
    import tensorrt as trt

    out = []
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        out.append(EngineTensor(name, engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT,
                                tuple(int(d) for d in engine.get_tensor_shape(name)),
                                engine.get_tensor_dtype(name).name))
    return out


def engine_signature(tensors: list[EngineTensor]) -> Signature:
    """The Triton signature of an engine's I/O: TensorRT names its own tensors (outputs ``output0``, ...),
    which need not be the exported graph's names, and Triton refuses a plan whose config names others."""

    def tensor(t: EngineTensor) -> Tensor:
        if t.dtype not in TRT_TYPES:
            raise ValueError(f"TensorRT tensor '{t.name}' has type {t.dtype}; Triton config supports "
                             f"{', '.join(TRT_TYPES)}")
        return Tensor(t.name, TRT_TYPES[t.dtype], t.shape[1:], None if t.shape[0] == -1 else t.shape[0])

    return Signature(tuple(tensor(t) for t in tensors if t.is_input),
                     tuple(tensor(t) for t in tensors if not t.is_input))


def plan_signature(path: str | Path) -> Signature:
    """Inputs and outputs of a TensorRT plan, read back from the engine itself (needs TensorRT and a GPU)."""
    import tensorrt as trt

    engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(Path(path).read_bytes())
    if engine is None:
        raise ValueError(f"{path}: TensorRT could not deserialize the plan")
    return engine_signature(engine_tensors(engine))


def config_text(signature: Signature, platform: str, meta: ArtifactMeta, name: str = MODEL_NAME,
                max_queue_delay_us: int = 2000) -> str:
    """config.pbtxt. A dynamic batch dimension becomes Triton's own batching (max_batch_size = the artifact's
    max, dynamic_batching); a fixed one (``--batch N``) is stated in the dims with max_batch_size 0."""
    tensors = signature.inputs + signature.outputs
    dynamic = all(t.batch is None for t in tensors)
    if not dynamic and any(t.batch is None for t in tensors):
        raise ValueError("the artifact mixes fixed and dynamic batch dimensions; Triton cannot describe it")
    kind = instance_kind(meta)

    def block(group: tuple[Tensor, ...]) -> str:
        items = []
        for t in group:
            dims = ", ".join(str(d) for d in (t.dims if dynamic else (t.batch, *t.dims)))
            fields = f'    name: "{t.name}"\n    data_type: {TRITON_TYPES[t.dtype]}\n    dims: [ {dims} ]'
            items.append(f"  {{\n{fields}\n  }}")
        return ",\n".join(items)

    batching = ""
    if dynamic:
        preferred = sorted({meta.batch["opt"], meta.batch["max"]})
        batching = ("dynamic_batching {\n"
                    f"  preferred_batch_size: [ {', '.join(str(b) for b in preferred)} ]\n"
                    f"  max_queue_delay_microseconds: {max_queue_delay_us}\n"
                    "}\n")
    return (
        f'name: "{name}"\n'
        f'platform: "{platform}"\n'
        f"max_batch_size: {meta.batch['max'] if dynamic else 0}\n"
        f"input [\n{block(signature.inputs)}\n]\n"
        f"output [\n{block(signature.outputs)}\n]\n"
        f"{batching}"
        f"instance_group [\n  {{\n    count: 1\n    kind: {kind}\n  }}\n]\n"
        f'parameters {{\n  key: "facecomp_weights_sha256"\n  value: {{ string_value: "{meta.weights_sha256}" }}\n}}\n'
    )


def instance_kind(meta: ArtifactMeta) -> str:
    """Where Triton places the model's instances: the device the artifact was exported for."""
    return "KIND_GPU" if meta.device == "cuda" else "KIND_CPU"


def _parameters(params: dict[str, str]) -> str:
    return "".join(f'parameters {{\n  key: "{k}"\n  value: {{ string_value: "{v}" }}\n}}\n'
                   for k, v in params.items())


def complete_config_text(signature: Signature, meta: ArtifactMeta, name: str = COMPLETE_NAME,
                         generator: str = MODEL_NAME) -> str:
    """config.pbtxt of the Python backend model: uint8 face + uint8 mask (+ uint64 seed, + blend) -> uint8 face.

    Images of any size come in one at a time (max_batch_size 0; Triton cannot batch ragged images); the
    generator model behind it keeps its own dynamic batching."""
    (gin,), (gout,) = signature.inputs, signature.outputs
    contract = meta.contract
    params = {"generator_model": generator, "generator_input": gin.name, "generator_output": gout.name,
              "generator_fixed_batch": str(gin.batch or 0), "mask_channel": str(gin.dims[0] == 4).lower(),
              "image_size": str(gin.dims[-1]), "default_seed": "0", "default_blend": DEFAULT_BLEND,
              "facecomp_weights_sha256": meta.weights_sha256,
              "facecomp_version": contract.get("facecomp_version", ""), "crop_box": contract.get("crop_box", "")}
    return (
        f'name: "{name}"\n'
        'backend: "python"\n'
        "max_batch_size: 0\n"
        "input [\n"
        '  {\n    name: "IMAGE"\n    data_type: TYPE_UINT8\n    dims: [ -1, -1, 3 ]\n  },\n'
        '  {\n    name: "MASK"\n    data_type: TYPE_UINT8\n    dims: [ -1, -1 ]\n  },\n'
        '  {\n    name: "SEED"\n    data_type: TYPE_UINT64\n    dims: [ 1 ]\n    optional: true\n  },\n'
        '  {\n    name: "BLEND"\n    data_type: TYPE_STRING\n    dims: [ 1 ]\n    optional: true\n  }\n'
        "]\n"
        "output [\n"
        '  {\n    name: "COMPLETED"\n    data_type: TYPE_UINT8\n    dims: [ -1, -1, 3 ]\n  }\n'
        "]\n"
        f"instance_group [\n  {{\n    count: 1\n    kind: {instance_kind(meta)}\n  }}\n]\n"
        f"{_parameters(params)}"
    )


def write_complete_model(repo: str | Path, signature: Signature, meta: ArtifactMeta, name: str = COMPLETE_NAME,
                         version: int = 1) -> Path:
    """Write REPO/NAME/config.pbtxt and REPO/NAME/VERSION/model.py (triton_model.py); returns the model folder."""
    folder = Path(repo) / name
    (folder / str(version)).mkdir(parents=True, exist_ok=True)
    shutil.copyfile(COMPLETE_SOURCE, folder / str(version) / "model.py")
    (folder / "config.pbtxt").write_text(complete_config_text(signature, meta, name))
    return folder


def write_repository(repo: str | Path, model_file: Path, signature: Signature, platform: str,
                     meta: ArtifactMeta, name: str = MODEL_NAME, version: int = 1) -> Path:
    """Write REPO/NAME/config.pbtxt and REPO/NAME/VERSION/model.*; returns the model folder."""
    folder = Path(repo) / name
    (folder / str(version)).mkdir(parents=True, exist_ok=True)
    target = folder / str(version) / MODEL_FILES[platform]
    target.unlink(missing_ok=True)
    try:  # a hard link costs no space; a copy where links cannot cross file systems
        os.link(model_file, target)
    except OSError:
        shutil.copyfile(model_file, target)
    (folder / "config.pbtxt").write_text(config_text(signature, platform, meta, name))
    return folder


def read_config(text: str):
    """Read config.pbtxt with Triton's own ModelConfig schema (tritonclient); raises on any unknown field."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    return text_format.Parse(text, model_config_pb2.ModelConfig())
