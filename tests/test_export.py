"""Exported artifacts of the shipped (trained) generator: parity with eager, records that refuse a
mismatch, the Triton config against the artifact's real signature, and the paths that need a GPU."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from facecomp import models, weights
from facecomp.complete import Completer
from facecomp.export import (
    ArtifactMeta,
    ArtifactMismatch,
    BatchRange,
    ExportConfig,
    ExportUnavailable,
    export_artifact,
    load_engine,
    open_generator,
    parity,
    triton,
)
from facecomp.export.program import example_input, export_program

BATCHES = (1, 3, 8)
# Stated tolerances (output scale [-1, 1]). fp32 artifacts differ from eager by float reassociation
# only; bf16 keeps 8 mantissa bits, so its error is bounded by PSNR of the difference instead.
FP32_MAX_ABS = 1e-4
BF16_MIN_PSNR_DB = 45.0
BF16_MAX_ABS = 0.1


@pytest.fixture(scope="module")
def eager():
    return models.load("generator").float()


@pytest.fixture(scope="module")
def other_weights(tmp_path_factory):
    """Generator weights that are not the shipped ones: a randomly initialised smoke-preset generator."""
    from facecomp import config as config_mod
    from facecomp.models import Generator
    from facecomp.weights import save_module

    torch.manual_seed(1)
    cfg = config_mod.load_config("smoke").generator
    path = tmp_path_factory.mktemp("other") / "other_generator.safetensors"
    save_module(path, Generator(cfg), "generator", {"config": config_mod.to_dict(cfg)})
    return str(path)


def _build(tmp_path_factory, fmt: str, precision: str, batch: str = "1:2:8"):
    out = tmp_path_factory.mktemp(f"{fmt}_{precision}") / "artifact"
    cfg = ExportConfig(format=fmt, precision=precision, batch=BatchRange.from_text(batch))
    export_artifact(out, cfg, check_batches=(2,))
    return out


@pytest.fixture(scope="module")
def aoti_fp32(tmp_path_factory):
    return _build(tmp_path_factory, "aoti", "fp32")


@pytest.fixture(scope="module")
def aoti_bf16(tmp_path_factory):
    return _build(tmp_path_factory, "aoti", "bf16")


@pytest.fixture(scope="module")
def onnx_fp32(tmp_path_factory):
    pytest.importorskip("onnxruntime", reason="ONNX needs the 'export' extra")
    pytest.importorskip("onnxscript", reason="ONNX needs the 'export' extra")
    return _build(tmp_path_factory, "onnx", "fp32")


def _parity_over_batches(engine, eager, batches=BATCHES):
    torch.manual_seed(0)
    out = {}
    for n in batches:
        x = example_input(eager, n)
        with torch.no_grad():
            out[n] = parity(eager(x), engine(x))
    return out


@pytest.mark.parametrize("artifact", ["aoti_fp32", "onnx_fp32"])
def test_fp32_artifacts_match_eager_over_batch_sizes(artifact, eager, request):
    engine = load_engine(request.getfixturevalue(artifact))
    for n, p in _parity_over_batches(engine, eager).items():
        assert p["max_abs"] < FP32_MAX_ABS, (n, p)
        assert p["psnr_db"] > 100, (n, p)


def test_bf16_aoti_matches_eager_within_stated_tolerance(aoti_bf16, eager):
    engine = load_engine(aoti_bf16, precision="bf16")
    for n, p in _parity_over_batches(engine, eager).items():
        assert p["psnr_db"] > BF16_MIN_PSNR_DB and p["max_abs"] < BF16_MAX_ABS, (n, p)
        assert p["max_abs"] > 0  # it really ran in bf16: an exact match would mean an fp32 graph


def test_batches_beyond_the_artifact_range_run_in_chunks(aoti_fp32, eager):
    engine = load_engine(aoti_fp32)
    assert engine.meta.batch == {"min": 1, "opt": 2, "max": 8}
    p = _parity_over_batches(engine, eager, batches=(11,))[11]
    assert p["max_abs"] < FP32_MAX_ABS


def test_record_carries_what_made_the_artifact(aoti_fp32):
    meta = ArtifactMeta.read(aoti_fp32)

    assert meta.weights_sha256 == weights.identity(weights.SHIPPED["generator"])  # the one identity of weights
    assert meta.precision == "fp32" and meta.device == "cpu" and meta.format == "aoti"
    assert meta.versions["torch"] == torch.__version__.split("+")[0] or meta.versions["torch"] == torch.__version__
    assert meta.generator_config["image_size"] == 128
    assert meta.parity["2"]["max_abs"] < FP32_MAX_ABS  # measured at export time
    # The engine contract, in the record of a format whose file cannot carry it (the ONNX file does too).
    assert meta.contract["layout"] == "NCHW" and meta.contract["crop_box"] == "9,41,169,201"
    assert "1 = hole" in meta.contract["mask"] and "(seed, offset)" in meta.contract["noise"]
    assert meta.contract["weights_sha256"] == meta.weights_sha256 and meta.contract["precision"] == "fp32"


def test_other_weights_other_precision_and_changed_files_are_refused(aoti_fp32, other_weights, tmp_path):
    with pytest.raises(ArtifactMismatch, match="built from other weights"):
        load_engine(aoti_fp32, weights=other_weights)
    with pytest.raises(ArtifactMismatch, match="built for fp32, not bf16"):
        load_engine(aoti_fp32, precision="bf16")
    with pytest.raises(ArtifactMismatch, match="cannot run on cuda"):
        load_engine(aoti_fp32, device="cuda")
    load_engine(aoti_fp32, weights=weights.SHIPPED["generator"], precision="fp32", device="cpu")  # right ones pass

    changed = tmp_path / "changed"
    shutil.copytree(aoti_fp32, changed)
    with open(changed / "generator.pt2", "ab") as f:
        f.write(b"\0")
    with pytest.raises(ArtifactMismatch, match="does not match its record"):
        load_engine(changed)
    with pytest.raises(ArtifactMismatch, match="not a facecomp artifact"):
        load_engine(tmp_path)


def test_export_never_overwrites_a_folder_that_is_not_an_artifact(tmp_path):
    keep = tmp_path / "mine"
    keep.mkdir()
    (keep / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="not a facecomp artifact"):
        export_artifact(keep, ExportConfig(format="onnx" if _has_onnx() else "aoti", batch=BatchRange(1, 1, 2)))
    assert (keep / "notes.txt").read_text() == "keep me"
    assert [p.name for p in tmp_path.iterdir()] == ["mine"]  # no staging folder left behind


def _has_onnx() -> bool:
    try:
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError:
        return False
    return True


def test_onnx_is_valid_and_triton_config_matches_its_real_signature(onnx_fp32):
    import onnx
    import onnxruntime as ort

    model = onnx_fp32 / "generator.onnx"
    onnx.checker.check_model(str(model), full_check=True)
    meta = ArtifactMeta.read(onnx_fp32)
    folder = onnx_fp32 / "triton" / triton.MODEL_NAME
    config = triton.read_config((folder / "config.pbtxt").read_text())  # Triton's own schema
    assert config.platform == "onnxruntime_onnx" and config.max_batch_size == meta.batch["max"]
    assert (folder / "1" / "model.onnx").read_bytes() == model.read_bytes()

    # What ONNX Runtime sees when it loads the file, independently of our signature reader.
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    types = {"tensor(float)": 1, "tensor(float16)": 10}
    for declared, real in ((config.input, session.get_inputs()), (config.output, session.get_outputs())):
        assert [d.name for d in declared] == [r.name for r in real]
        for d, r in zip(declared, real, strict=True):
            assert isinstance(r.shape[0], str), "batch dimension must be dynamic for Triton's batching"
            assert list(d.dims) == r.shape[1:]
            assert d.data_type == {1: 11, 10: 10}[types[r.type]]  # Triton's TYPE_FP32 = 11, TYPE_FP16 = 10
    assert [i.name for i in config.input] == [meta.input.name]
    assert list(config.input[0].dims) == meta.input.shape and list(config.output[0].dims) == meta.output.shape
    assert list(config.dynamic_batching.preferred_batch_size) == [2, 8]


def test_fixed_batch_onnx_gets_a_fixed_batch_triton_config(tmp_path):
    pytest.importorskip("onnxruntime", reason="ONNX needs the 'export' extra")
    pytest.importorskip("onnxscript", reason="ONNX needs the 'export' extra")
    from facecomp import config as config_mod
    from facecomp.models import Generator
    from facecomp.weights import save_module

    torch.manual_seed(0)
    cfg = config_mod.load_config("smoke").generator
    weights = tmp_path / "g.safetensors"
    gen = Generator(cfg)
    save_module(weights, gen, "generator", {"config": config_mod.to_dict(cfg)})
    c = gen.in_channels
    out = tmp_path / "fixed"
    export_artifact(out, ExportConfig(format="onnx", batch=BatchRange.from_text("4")), weights)
    config = triton.read_config((out / "triton" / triton.MODEL_NAME / "config.pbtxt").read_text())
    assert config.max_batch_size == 0 and not config.HasField("dynamic_batching")
    assert list(config.input[0].dims) == [4, c, 128, 128]
    engine = load_engine(out)
    assert engine(torch.rand(6, c, 128, 128)).shape == (6, 3, 128, 128)  # padded and chunked to the fixed 4


def test_onnx_cuda_artifact_refuses_a_session_that_fell_back_to_the_cpu(onnx_fp32):
    """ONNX Runtime drops a CUDA provider it cannot start and runs on the CPU with only a warning; a cuda
    artifact must refuse instead. Here (a CPU-only onnxruntime) that is exactly what a real session does."""
    import onnxruntime as ort

    from facecomp.export.formats import OnnxFormat

    if "CUDAExecutionProvider" in ort.get_available_providers() and torch.cuda.is_available():
        pytest.skip("this onnxruntime has a working CUDA provider; nothing falls back here")
    with pytest.raises(ExportUnavailable, match="active providers: CPUExecutionProvider"):
        OnnxFormat.open_session(onnx_fp32 / "generator.onnx", "cuda")
    assert OnnxFormat.open_session(onnx_fp32 / "generator.onnx", "cpu").get_providers()[0] == "CPUExecutionProvider"


def test_tensorrt_inputs_span_the_batch_range():
    """Compile, the saved program and the plan all get these ranges (a single example tensor would fix the batch)."""
    from facecomp.export.formats import TensorRTFormat

    (r,) = TensorRTFormat.input_ranges(BatchRange(1, 8, 32), (4, 128, 128))
    assert (r.min, r.opt, r.max) == ((1, 4, 128, 128), (8, 4, 128, 128), (32, 4, 128, 128))


def test_tensorrt_config_names_the_engine_tensors_not_the_graph_nodes(eager):
    """TensorRT names a plan's outputs itself (output0, ...): the config must carry the engine's names,
    dims and types as the engine reports them, whatever the exported graph called its nodes."""
    cfg = ExportConfig(format="aoti", precision="fp16", batch=BatchRange(1, 4, 16))
    graph_outputs = [s.arg.name for s in export_program(eager, cfg).graph_signature.output_specs]
    reported = [triton.EngineTensor("filled", True, (-1, 4, 128, 128), "FLOAT"),
                triton.EngineTensor("output0", False, (-1, 3, 128, 128), "FLOAT")]
    meta = ArtifactMeta(format="tensorrt", precision="fp16", device="cuda", batch={"min": 1, "opt": 4, "max": 16},
                        input=None, output=None, generator_config={}, weights_sha256="0" * 64,
                        weights_name="generator.safetensors", files={})
    config = triton.read_config(triton.config_text(triton.engine_signature(reported), "tensorrt_plan", meta))
    assert config.platform == "tensorrt_plan" and config.max_batch_size == 16
    assert config.instance_group[0].kind == 1  # KIND_GPU
    assert [i.name for i in config.input] == ["filled"] and [o.name for o in config.output] == ["output0"]
    assert "output0" not in graph_outputs  # the graph's own name would be refused by Triton
    assert list(config.input[0].dims) == [4, 128, 128] and config.input[0].data_type == 11
    assert list(config.output[0].dims) == [3, 128, 128] and config.output[0].data_type == 11
    fixed = triton.engine_signature([triton.EngineTensor("filled", True, (4, 4, 128, 128), "HALF")])
    assert fixed.inputs[0].batch == 4 and fixed.inputs[0].dtype == "float16"
    with pytest.raises(ValueError, match="INT8"):
        triton.engine_signature([triton.EngineTensor("q", True, (-1, 4), "INT8")])


def test_tensorrt_without_cuda_is_one_line(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA; the TensorRT build itself is tested below")
    with pytest.raises(ExportUnavailable, match="needs a CUDA GPU"):
        export_artifact(tmp_path / "a", ExportConfig(format="tensorrt", device="cuda"))
    r = subprocess.run([sys.executable, "-m", "facecomp", "export", "--format", "tensorrt", "-o", str(tmp_path / "b")],
                       capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "TensorRT needs a CUDA GPU" in r.stderr, r.stderr
    assert not (tmp_path / "b").exists()


def test_complete_with_engine_matches_eager(aoti_fp32, face_files, other_weights):
    from facecomp import masks
    from facecomp.images import read_rgb

    img = read_rgb(face_files[0])
    m = masks.occlusion("O3", img.shape[1], img.shape[0])
    a = Completer().complete(img, m, seed=3, samples=2)
    b = Completer(open_generator(None, aoti_fp32)).complete(img, m, seed=3, samples=2)
    for x, y in zip(a, b, strict=True):
        assert np.abs(x.astype(int) - y.astype(int)).max() <= 1  # uint8 rounding at most
        assert (x != img).any()
    with pytest.raises(ArtifactMismatch):
        open_generator(other_weights, aoti_fp32)


def test_cli_export_and_complete_engine(onnx_fp32, face_files, other_weights, tmp_path):
    out = tmp_path / "c.png"
    r = subprocess.run([sys.executable, "-m", "facecomp", "complete", str(face_files[1]), "--mask", "O2",
                        "--engine", str(onnx_fp32), "-o", str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert out.is_file()
    r = subprocess.run([sys.executable, "-m", "facecomp", "complete", str(face_files[1]), "--mask", "O2",
                        "--engine", str(onnx_fp32), "--model", other_weights, "-o", str(out)],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "built from other weights" in r.stderr


@pytest.mark.slow
def test_cli_export_prints_parity(tmp_path):
    r = subprocess.run([sys.executable, "-m", "facecomp", "export", "--format", "onnx", "--precision", "fp16",
                        "--batch", "1:1:4", "-o", str(tmp_path / "a")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout.strip().splitlines()[-1])
    assert report["precision"] == "fp16" and report["psnr_db_vs_eager"] > 45
    assert math.isfinite(report["max_abs_error_vs_eager"])


@pytest.mark.cuda
def test_aoti_cuda_matches_eager(tmp_path):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    out = tmp_path / "cuda"
    export_artifact(out, ExportConfig(format="aoti", precision="fp16", device="cuda", batch=BatchRange(1, 8, 32)))
    eager = models.load("generator", None, "cuda").float()
    engine = load_engine(out, device="cuda")
    x = example_input(eager, 8, "cuda")
    with torch.no_grad():
        assert parity(eager(x), engine(x))["psnr_db"] > 45


@pytest.mark.cuda
def test_tensorrt_fp16_matches_eager(tmp_path):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    pytest.importorskip("torch_tensorrt", reason="needs the 'tensorrt' extra (TensorRT libraries)")
    out = tmp_path / "trt"
    export_artifact(out, ExportConfig(format="tensorrt", precision="fp16", device="cuda", batch=BatchRange(1, 8, 32)))
    import tensorrt as trt

    plan = (out / "generator.plan").read_bytes()
    engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(plan)
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    is_in = {n: engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
    config = triton.read_config((out / "triton" / triton.MODEL_NAME / "config.pbtxt").read_text())
    assert config.platform == "tensorrt_plan"
    # The names Triton will look up are the plan's own (read here with TensorRT, not our reader).
    assert [i.name for i in config.input] == [n for n in names if is_in[n]]
    assert [o.name for o in config.output] == [n for n in names if not is_in[n]]
    eager = models.load("generator", None, "cuda").float()
    engine = load_engine(out, device="cuda", precision="fp16")
    for n in (1, 8, 32):  # batch 1 reaches the saved program as is: a static-batch retrace would refuse it
        x = example_input(eager, n, "cuda")
        with torch.no_grad():
            assert parity(eager(x), engine(x))["psnr_db"] > 45


def test_exported_program_has_no_0dim_buffers(eager):
    """BatchNorm's num_batches_tracked (0-dim int64, unused in eval) must not reach the compiled program:
    as 0-dim constants they crashed the loading of the first AOTInductor CUDA package (device check,
    2026-11-27). The eager generator still has them; the exported one holds only real tensors."""
    assert any(v.dim() == 0 for v in eager.state_dict().values())  # what the export has to drop
    for precision in ("fp32", "bf16"):
        program = export_program(eager, ExportConfig(format="aoti", precision=precision, batch=BatchRange(1, 2, 4)))
        assert [k for k, v in program.state_dict.items() if v.dim() == 0] == []
        assert not any("num_batches_tracked" in k for k in program.state_dict)
        assert program.constants == {}


def test_a_cuda_aoti_package_is_load_tested_in_a_child_first(aoti_fp32, tmp_path):
    """AotiFormat.check_loads (run after every CUDA build) loads the package in another process: a package
    that loads passes; one whose loading fails is refused with one line naming the known problem, where
    the exporting process itself would have died (the CUDA loader segfaulted on the first GPU)."""
    from facecomp.export.formats import AotiFormat

    AotiFormat.check_loads(aoti_fp32 / "generator.pt2")  # a real package (CPU here): no error
    broken = tmp_path / "generator.pt2"
    broken.write_bytes((aoti_fp32 / "generator.pt2").read_bytes()[:4096])  # a truncated archive
    with pytest.raises(ExportUnavailable, match=r"loading it failed \(1\).*Known problem: AOTInductor on CUDA"):
        AotiFormat.check_loads(broken)
