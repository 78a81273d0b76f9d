"""The compiled formats. Each one builds files from the exported program and runs them again.

A format plugs in by name (``FORMATS``): ``build`` writes its files into the artifact folder and
returns their names, ``load`` returns a callable float32 [N, C, S, S] -> float32 [N, 3, S, S] on
the artifact's device. Nothing outside this module knows which runtime is behind an artifact.
"""

from __future__ import annotations

import logging
import re
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from facecomp.export.metadata import ArtifactMeta, package_versions
from facecomp.export.program import OUTPUT_NAME
from facecomp.export.spec import FORMAT_NAMES, BatchRange, ExportConfig
from facecomp.runtime import MissingCapability, MissingExtra

ArtifactFn = Callable[[torch.Tensor], torch.Tensor]  # what load returns: float32 [N, C, S, S] -> [N, 3, S, S]
# ONNX Runtime providers per artifact device, the wanted one first. CUDA keeps the CPU provider after
# it: ONNX Runtime places the few ops CUDA lacks (shape arithmetic) there, as its docs recommend.
ONNX_PROVIDERS = {"cpu": ("CPUExecutionProvider",), "cuda": ("CUDAExecutionProvider", "CPUExecutionProvider")}


class ExportUnavailable(MissingCapability):
    """This machine cannot build or run the format (missing package or GPU); the message says which."""


@dataclass(frozen=True)
class ShapeRange:
    """One input's shapes for TensorRT: the smallest and largest it accepts and the one it tunes for."""

    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]


class AotiFormat:
    """AOTInductor: the program compiled ahead of time to a shared library in a .pt2 package (CPU or CUDA)."""

    name = "aoti"
    file = "generator.pt2"
    triton_platform = None  # Triton serves these through its PyTorch backend's own packaging, not a plain file

    # Freezing folds the weights into the graph as constants so Inductor can pre-pack them for oneDNN
    # (CPU). On the 2-core build machine it made no measurable difference for bf16 at batch 1
    # (bench/RESULTS.md, "no freezing" row); it is kept because it never cost time there.
    INDUCTOR_CONFIGS = {"freezing": True, "cpp.weight_prepack": True}

    def annotate(self, folder: Path, contract: dict[str, str]) -> None:
        """The compiled file has nowhere to carry the contract: facecomp-artifact.json does."""

    def check_available(self, cfg: ExportConfig) -> None:
        if cfg.device == "cuda" and not torch.cuda.is_available():
            raise ExportUnavailable("--device cuda needs a CUDA GPU and a CUDA build of torch; this machine lacks one")

    def versions(self) -> dict[str, str]:
        return package_versions("torch")

    def build(self, program: torch.export.ExportedProgram, cfg: ExportConfig, folder: Path) -> list[str]:
        with torch.no_grad():
            torch._inductor.aoti_compile_and_package(program, package_path=str(folder / self.file),
                                                     inductor_configs=self.INDUCTOR_CONFIGS)
        if cfg.device == "cuda":
            self.check_loads(folder / self.file)
        return [self.file]

    @staticmethod
    def check_loads(package: Path, timeout_s: float = 300.0) -> None:
        """Load ``package`` in a child process first; ExportUnavailable if that process fails or dies.

        On the first GPU it ran on (H200, torch 2.11 + CUDA 13), loading a freshly built CUDA package
        killed the process with SIGSEGV inside ``aoti_load_package`` (bench/RESULTS.md, "Device check on
        a GPU"): in the exporting process that is a bare "Segmentation fault" and no artifact. Probing
        in a child turns it into one line that says what happened and what to use instead.
        """
        code = "import sys, torch; torch._inductor.aoti_load_package(sys.argv[1])"
        r = subprocess.run([sys.executable, "-c", code, str(package)], capture_output=True, text=True,
                           timeout=timeout_s)
        if r.returncode == 0:
            return
        how = f"died of {signal.Signals(-r.returncode).name}" if r.returncode < 0 else f"failed ({r.returncode})"
        last = (r.stderr.strip().splitlines() or [""])[-1][:300]
        raise ExportUnavailable(
            f"the AOTInductor package was built, but loading it {how} in a test process"
            + (f": {last}" if last else "") + f" (torch {torch.__version__}). This is a known problem of "
            "AOTInductor on CUDA (docs/export.md, 'Known problem: AOTInductor on CUDA'); use --format onnx, or serve "
            "the eager model")

    def load(self, folder: Path, meta: ArtifactMeta) -> ArtifactFn:
        self.check_available(ExportConfig(format=self.name, device=meta.device))
        model = torch._inductor.aoti_load_package(str(folder / self.file))
        device = torch.device(meta.device)

        def run(x: torch.Tensor) -> torch.Tensor:
            return model(x.to(device, torch.float32).contiguous())

        return run


class OnnxFormat:
    """ONNX from the dynamo exporter, checked by onnx's checker, run by ONNX Runtime."""

    name = "onnx"
    file = "generator.onnx"
    triton_platform = "onnxruntime_onnx"

    def check_available(self, cfg: ExportConfig) -> None:
        try:
            import onnx  # noqa: F401
            import onnxruntime  # noqa: F401
            import onnxscript  # noqa: F401
        except ImportError as e:
            raise MissingExtra("export", "ONNX export", e.name) from None
        if cfg.precision == "bf16":
            # ONNX Runtime's CPU provider has no bfloat16 convolution kernels: the model would not load.
            raise ExportUnavailable("ONNX Runtime cannot run bf16 convolutions; use --precision fp32 or fp16")
        if cfg.device == "cuda":
            import onnxruntime

            if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
                raise ExportUnavailable("--device cuda needs onnxruntime-gpu (CUDAExecutionProvider is missing)")

    def versions(self) -> dict[str, str]:
        return package_versions("torch", "onnx", "onnxscript", "onnxruntime", "onnxruntime-gpu")

    @staticmethod
    def open_session(path: Path, device: str):
        """An ONNX Runtime session whose first (active) provider is ``device``'s, or ExportUnavailable.

        ONNX Runtime treats the provider list as a wish: a CUDA provider it cannot start (a CPU-only
        build, missing CUDA libraries) is dropped with a warning and the session runs on the CPU. A
        ``cuda`` artifact must not quietly run there, so the session's own provider list decides.
        """
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = torch.get_num_threads()
        wanted = ONNX_PROVIDERS[device]
        session = ort.InferenceSession(str(path), options, providers=list(wanted))
        active = session.get_providers()
        if not active or active[0] != wanted[0]:
            raise ExportUnavailable(f"ONNX Runtime could not start {wanted[0]} for this {device} artifact "
                                    f"(active providers: {', '.join(active) or 'none'}); "
                                    "install onnxruntime-gpu with its CUDA libraries")
        return session

    def build(self, program: torch.export.ExportedProgram, cfg: ExportConfig, folder: Path) -> list[str]:
        import onnx

        path = folder / self.file
        for noisy in ("onnxscript", "onnx_ir"):  # their INFO lines list every rewrite; keep ours readable
            logging.getLogger(noisy).setLevel(logging.WARNING)
        onnx_program = torch.onnx.export(program, dynamo=True, output_names=[OUTPUT_NAME], optimize=True,
                                         external_data=False, verbose=False)
        onnx_program.save(str(path))
        onnx.checker.check_model(str(path), full_check=True)
        return [self.file]

    def annotate(self, folder: Path, contract: dict[str, str]) -> None:
        """Write the engine contract into the file: the batch dimension named ``batch`` (the exporter calls
        it after its symbol, e.g. ``s85``), doc strings on the model, graph, input and output, and the
        contract's entries as metadata_props (what ``InferenceSession.get_modelmeta()`` returns)."""
        import onnx

        path = folder / self.file
        model = onnx.load(str(path))
        graph = model.graph
        rename_batch_dim(graph, BATCH_DIM)
        model.doc_string = ("facecomp generator (Generative Face Completion, CVPR 2017). Pre- and post-processing: "
                            "facecomp.contract (prepare, finish); the contract is in metadata_props.")
        graph.doc_string = f"{contract['input']} -> {contract['output']}"
        for value, key in ((graph.input[0], "input"), (graph.output[0], "output")):
            value.doc_string = contract[key] + ("; " + contract["mask"] if key == "input" else "")
        del model.metadata_props[:]
        onnx.helper.set_model_props(model, contract)
        onnx.save(model, str(path))
        onnx.checker.check_model(str(path), full_check=True)

    def load(self, folder: Path, meta: ArtifactMeta) -> ArtifactFn:
        self.check_available(ExportConfig(format=self.name, precision=meta.precision, device=meta.device))
        session = self.open_session(folder / self.file, meta.device)
        in_name = session.get_inputs()[0].name

        def run(x: torch.Tensor) -> torch.Tensor:
            out = session.run(None, {in_name: x.detach().to("cpu", torch.float32).contiguous().numpy()})[0]
            return torch.from_numpy(out).to(x.device)

        return run


class TensorRTFormat:
    """Torch-TensorRT (dynamo frontend): a TensorRT program for PyTorch and the raw engine plan for Triton.

    Needs CUDA and the ``tensorrt`` extra (torch-tensorrt 2.13.0, which matches torch 2.13.0). The
    precision is the program's own (TensorRT's strongly typed mode): an fp16 export is an fp16 graph,
    so no calibration or precision flags are involved.
    """

    name = "tensorrt"
    file = "generator.trt.ep"
    plan = "generator.plan"
    triton_platform = "tensorrt_plan"

    def annotate(self, folder: Path, contract: dict[str, str]) -> None:
        """A plan carries no free-form metadata: facecomp-artifact.json and the Triton config do."""

    def check_available(self, cfg: ExportConfig) -> None:
        if cfg.device != "cuda" or not torch.cuda.is_available():
            raise ExportUnavailable("TensorRT needs a CUDA GPU; this machine has none (use --format aoti or onnx)")
        try:
            import torch_tensorrt  # noqa: F401
        except ImportError as e:
            raise MissingExtra("tensorrt", "TensorRT export", e.name) from None

    def versions(self) -> dict[str, str]:
        return package_versions("torch", "torch-tensorrt", "tensorrt", "tensorrt-cu13")

    @staticmethod
    def input_ranges(batch: BatchRange, shape: tuple[int, ...]) -> list[ShapeRange]:
        """The program's one input over the artifact's batch range: [N, C, S, S] with N in min..opt..max."""
        return [ShapeRange(min=(batch.min, *shape), opt=(batch.opt, *shape), max=(batch.max, *shape))]

    @staticmethod
    def trt_inputs(ranges: list[ShapeRange]) -> list:
        import torch_tensorrt

        return [torch_tensorrt.Input(min_shape=r.min, opt_shape=r.opt, max_shape=r.max, dtype=torch.float32)
                for r in ranges]

    def build(self, program: torch.export.ExportedProgram, cfg: ExportConfig, folder: Path) -> list[str]:
        import torch_tensorrt

        inputs = self.trt_inputs(self.input_ranges(cfg.batch, input_shape_of(program)))
        device = torch.device("cuda", torch.cuda.current_device())
        trt_module = torch_tensorrt.dynamo.compile(program, arg_inputs=inputs, device=device,
                                                   require_full_compilation=True)
        # The same Input objects, not an example tensor: save retraces the module, and a tensor would
        # fix its batch to that tensor's size (a batch-8 program refusing batch 1 when loaded).
        torch_tensorrt.save(trt_module, str(folder / self.file), output_format="exported_program",
                            arg_inputs=inputs, retrace=True)
        engine = torch_tensorrt.dynamo.convert_exported_program_to_serialized_trt_engine(
            program, arg_inputs=inputs, device=device, require_full_compilation=True)
        (folder / self.plan).write_bytes(bytes(engine))
        return [self.file, self.plan]

    def load(self, folder: Path, meta: ArtifactMeta) -> ArtifactFn:
        self.check_available(ExportConfig(format=self.name, precision=meta.precision, device=meta.device))
        import torch_tensorrt

        module = torch_tensorrt.load(str(folder / self.file)).module()

        def run(x: torch.Tensor) -> torch.Tensor:
            return module(x.to("cuda", torch.float32).contiguous())

        return run


BATCH_DIM = "batch"


def rename_batch_dim(graph, name: str) -> None:
    """Rename the symbol of the graph input's first dimension to ``name`` wherever a shape uses it
    (inputs, outputs and intermediate value_info, also inside expressions such as ``2*s85``)."""
    dims = graph.input[0].type.tensor_type.shape.dim
    symbol = dims[0].dim_param if dims else ""
    if not symbol:  # a fixed batch (--batch N) has no symbol to rename
        return
    pattern = re.compile(rf"\b{re.escape(symbol)}\b")
    for value in (*graph.input, *graph.output, *graph.value_info):
        for d in value.type.tensor_type.shape.dim:
            if d.dim_param:
                d.dim_param = pattern.sub(name, d.dim_param)


def input_shape_of(program: torch.export.ExportedProgram) -> tuple[int, ...]:
    """[C, S, S] of the program's one user input (its batch dimension is dynamic)."""
    user = torch.export.graph_signature.InputKind.USER_INPUT
    spec = next(s for s in program.graph_signature.input_specs if s.kind == user)
    node = next(n for n in program.graph.nodes if n.op == "placeholder" and n.name == spec.arg.name)
    return tuple(int(d) for d in node.meta["val"].shape[1:])


FORMATS = {f.name: f for f in (AotiFormat(), OnnxFormat(), TensorRTFormat())}
assert tuple(FORMATS) == FORMAT_NAMES, "export.spec.FORMAT_NAMES names the formats of this registry"
