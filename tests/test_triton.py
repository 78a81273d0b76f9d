"""The exported Triton repository: configs against Triton's schema, and a real ``tritonserver`` that loads
it and completes faces sent over HTTP, compared with Completer.

The server is the one nvidia-pytriton's wheel bundles (Triton 2.51, CPU, Python backend only), installed
in its own environment by ``scripts/triton_env.sh`` (``.venv/triton``; numpy<2, see there). The test
skips with the reason when that environment or the HTTP client is absent.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from facecomp import contract, masks
from facecomp.complete import Completer
from facecomp.export import ArtifactMeta, triton
from facecomp.images import read_rgb

REPO = Path(__file__).resolve().parent.parent
TRITON_ENV = Path(os.environ.get("FACECOMP_TRITON_ENV", REPO / ".venv" / "triton"))
STAND_IN = Path(__file__).resolve().parent / "triton_onnx_generator.py"
MAX_LEVELS = 1  # fp32 ONNX vs eager can flip one rounding (tests/test_contract.py)


def test_complete_model_config_against_triton_schema(onnx_artifact):
    repo = onnx_artifact / "triton"
    config = triton.read_config((repo / triton.COMPLETE_NAME / "config.pbtxt").read_text())
    assert config.backend == "python" and config.max_batch_size == 0
    assert [(i.name, list(i.dims), i.optional) for i in config.input] == \
        [("IMAGE", [-1, -1, 3], False), ("MASK", [-1, -1], False), ("SEED", [1], True), ("BLEND", [1], True)]
    assert [(o.name, list(o.dims)) for o in config.output] == [("COMPLETED", [-1, -1, 3])]
    assert config.instance_group[0].kind == 2  # KIND_CPU: the artifact's device
    params = {k: v.string_value for k, v in config.parameters.items()}
    generator = triton.read_config((repo / triton.MODEL_NAME / "config.pbtxt").read_text())
    assert params["generator_model"] == generator.name
    assert params["generator_input"] == generator.input[0].name
    assert params["generator_output"] == generator.output[0].name
    assert params["facecomp_weights_sha256"] == ArtifactMeta.read(onnx_artifact).weights_sha256
    assert (repo / triton.COMPLETE_NAME / "1" / "model.py").read_text() == triton.COMPLETE_SOURCE.read_text()


def test_instance_kind_follows_the_export_device(onnx_artifact):
    meta = ArtifactMeta.read(onnx_artifact)
    signature = triton.onnx_signature(onnx_artifact / "generator.onnx")
    meta.device = "cuda"
    for text in (triton.config_text(signature, "onnxruntime_onnx", meta), triton.complete_config_text(signature, meta)):
        assert triton.read_config(text).instance_group[0].kind == 1  # KIND_GPU
    fixed = triton.Signature(tuple(triton.Tensor(t.name, t.dtype, t.dims, 4) for t in signature.inputs),
                             tuple(triton.Tensor(t.name, t.dtype, t.dims, 4) for t in signature.outputs))
    params = triton.read_config(triton.complete_config_text(fixed, meta)).parameters
    assert params["generator_fixed_batch"].string_value == "4"  # a --batch N generator gets N samples


def _server_dist() -> Path:
    """pytriton's bundled tritonserver folder inside the server environment, or a skip saying why."""
    found = sorted(TRITON_ENV.glob("lib/python3.*/site-packages/pytriton/tritonserver"))
    if not found:
        pytest.skip(f"no Triton server environment at {TRITON_ENV}: run scripts/triton_env.sh "
                    "(or set FACECOMP_TRITON_ENV)")
    return found[0]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def triton_server(onnx_artifact, tmp_path_factory):
    """tritonserver on the exported repository (generator stand-in: see tests/triton_onnx_generator.py),
    HTTP on a free loopback port; yields the client."""
    http = pytest.importorskip("tritonclient.http", reason="the HTTP client needs the 'triton' extra")
    dist = _server_dist()
    tmp = tmp_path_factory.mktemp("tritonserver")
    repo = tmp / "repo"
    shutil.copytree(onnx_artifact / "triton", repo)
    generator = repo / triton.MODEL_NAME
    (generator / "1" / "model.py").write_text(STAND_IN.read_text())
    config = (generator / "config.pbtxt").read_text()
    (generator / "config.pbtxt").write_text(config.replace('platform: "onnxruntime_onnx"', 'backend: "python"'))

    # As pytriton does: the backends folder with the stub built for the environment's Python version.
    version = next(TRITON_ENV.glob("lib/python3.*")).name.removeprefix("python")
    backends = tmp / "backends"
    shutil.copytree(dist / "backends", backends)
    shutil.copy(dist / "python_backend_stubs" / version / "triton_python_backend_stub", backends / "python")
    libs = dist.parent.parent / "nvidia_pytriton.libs"
    port = _free_port()
    env = {**os.environ, "PATH": f"{TRITON_ENV / 'bin'}{os.pathsep}{os.environ['PATH']}",
           "LD_LIBRARY_PATH": f"{libs}{os.pathsep}{os.environ.get('LD_LIBRARY_PATH', '')}", "PYTHONPATH": str(REPO)}
    log = open(tmp / "server.log", "w")  # noqa: SIM115 (closed below, after the server)
    server = subprocess.Popen([str(dist / "bin" / "tritonserver"), "--model-repository", str(repo),
                               "--backend-directory", str(backends), "--http-port", str(port),
                               "--http-address", "127.0.0.1", "--allow-grpc", "false", "--allow-metrics", "false",
                               "--exit-timeout-secs", "5"], env=env, stdout=log, stderr=subprocess.STDOUT)
    client = http.InferenceServerClient(f"127.0.0.1:{port}")
    try:
        deadline = time.monotonic() + 120
        while True:
            if server.poll() is not None:
                pytest.fail(f"tritonserver exited {server.returncode}:\n{(tmp / 'server.log').read_text()[-3000:]}")
            try:
                if client.is_server_ready():
                    break
            except Exception:  # not listening yet
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"tritonserver not ready in 120 s:\n{(tmp / 'server.log').read_text()[-3000:]}")
            time.sleep(0.5)
        yield client
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()


def _request(client, image: np.ndarray, mask: np.ndarray, seed: int | None = None,
             blend: str | None = None) -> np.ndarray:
    import tritonclient.http as http

    inputs = [http.InferInput("IMAGE", list(image.shape), "UINT8"), http.InferInput("MASK", list(mask.shape), "UINT8")]
    inputs[0].set_data_from_numpy(image)
    inputs[1].set_data_from_numpy(mask)
    if seed is not None:
        inputs.append(http.InferInput("SEED", [1], "UINT64"))
        inputs[-1].set_data_from_numpy(np.array([seed], np.uint64))
    if blend is not None:
        inputs.append(http.InferInput("BLEND", [1], "BYTES"))
        inputs[-1].set_data_from_numpy(np.array([blend.encode()], dtype=np.object_))
    return client.infer(triton.COMPLETE_NAME, inputs).as_numpy("COMPLETED")


def test_triton_server_completes_faces_like_completer(triton_server, face_files):
    """Real validation faces under O1-O6, each with its own seed (and one without: seed 0), through a real
    Triton server over HTTP: the completed image equals Completer's within one grey level, for the
    default blend and with BLEND "none" and "poisson" asked for."""
    assert triton_server.is_model_ready(triton.COMPLETE_NAME) and triton_server.is_model_ready(triton.MODEL_NAME)
    completer = Completer()
    worst = 0
    for i, path in enumerate(face_files[:6]):
        img = read_rgb(path)
        hole = masks.occlusion(f"O{i + 1}", img.shape[1], img.shape[0]) > 0.5
        seed = None if i == 0 else 1000 + i
        expected = completer._complete(img, hole, seed=seed or 0, blends=contract.BLENDS).by_blend
        for blend in (None, *contract.BLENDS):
            got = _request(triton_server, img, hole.astype(np.uint8) * 255, seed, blend)
            assert got.shape == img.shape and got.dtype == np.uint8
            assert np.array_equal(got[~hole], img[~hole]) and (got[hole] != img[hole]).any()
            want = expected[blend or contract.DEFAULT_BLEND][0]
            worst = max(worst, int(np.abs(got.astype(int) - want.astype(int)).max()))
    assert worst <= MAX_LEVELS, worst


def test_triton_server_refuses_an_empty_mask_in_one_line(triton_server, face_files):
    from tritonclient.utils import InferenceServerException

    img = read_rgb(face_files[0])
    with pytest.raises(InferenceServerException, match="the mask is empty"):
        _request(triton_server, img, np.zeros(img.shape[:2], np.uint8))
    hole = masks.occlusion("O3", img.shape[1], img.shape[0]) > 0.5
    with pytest.raises(InferenceServerException, match="BLEND must be one of none, poisson"):
        _request(triton_server, img, hole.astype(np.uint8) * 255, blend="sharpen")
