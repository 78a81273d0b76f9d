"""The engine contract: facecomp.contract reproduces Completer around any runtime, the ONNX file and the
artifact record state it, and the documented ONNX Runtime client (docs/export.md) runs as written."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from facecomp import contract, kernels, layout, masks, weights
from facecomp.complete import Completer
from facecomp.export import ArtifactMeta
from facecomp.export.metadata import sha256_file
from facecomp.images import read_rgb, to_tensor
from facecomp.kernels import reference

REPO = Path(__file__).resolve().parent.parent
# uint8 grey levels. An fp32 ONNX generator differs from eager by < 1e-4 on the [-1, 1] scale
# (test_export.py), which can move a value across a rounding boundary: at most one level.
MAX_LEVELS = 1


@pytest.mark.parametrize(("seed", "offset", "shape"), [
    (0, 0, (1, 3, 128, 128)), (1, 1, (1, 3, 128, 128)), (2**64 - 1, 2**64 - 1, (2, 3, 7, 5)),
    (12345678901234567, 2**40 + 3, (1, 3, 1, 1)), (2**32, 2**32, (3, 3, 17, 33)), (7, 0, (1, 3, 64, 64))])
def test_noise_is_bit_equal_to_the_kernels_reference(seed, offset, shape):
    ours = contract.noise(shape, seed, offset)
    ref = reference.noise(shape, seed, offset).numpy()
    assert ours.dtype == np.float32 and ours.shape == shape
    assert np.array_equal(ours.view(np.uint32), ref.view(np.uint32))
    assert contract.keys(seed, offset) == reference.keys(seed, offset)
    assert ours.min() >= -1 and ours.max() < 1


def test_noise_refuses_out_of_range_keys():
    for seed, offset in ((-1, 0), (2**64, 0), (0, 2**64)):
        with pytest.raises(ValueError, match="must be in"):
            contract.noise((1, 3, 2, 2), seed, offset)


def test_prepare_is_bit_equal_to_the_fused_fill(face_files):
    """The engine's input from contract.prepare equals what Completer feeds its generator (kernels.fill,
    native where it builds), bit for bit, for several faces, masks, seeds and samples."""
    for i, path in enumerate(face_files[:4]):
        img = read_rgb(path)
        m = masks.occlusion(f"O{i + 1}", img.shape[1], img.shape[0])
        for seed, sample in ((0, 0), (i + 11, 1), (2**63 + i, 3)):
            job = contract.prepare(img, m, seed=seed, sample=sample)
            x0, y0, x1, y1 = job.box
            crop = cv2.resize(img[y0:y1, x0:x1], (128, 128), interpolation=cv2.INTER_AREA)
            assert np.array_equal(contract.to_unit(crop), to_tensor(crop).numpy())
            mask = torch.from_numpy(job.filled[:, 3:].copy())
            ref = kernels.fill(to_tensor(crop)[None], mask, seed=seed, offset=sample, mask_channel=True)
            assert np.array_equal(job.filled.view(np.uint32), ref.numpy().view(np.uint32))


def test_contract_refuses_what_completer_refuses():
    img = np.zeros((218, 178, 3), np.uint8)
    with pytest.raises(ValueError, match="empty"):
        contract.prepare(img, np.zeros((218, 178)))
    with pytest.raises(ValueError, match="whole image"):
        contract.prepare(img, np.ones((218, 178)))
    off_box = np.zeros((218, 178))
    off_box[:10] = 1
    with pytest.raises(ValueError, match="outside the face box"):
        contract.prepare(img, off_box)
    with pytest.raises(ValueError, match="image is 178x218"):
        contract.prepare(img, np.ones((10, 10)))
    with pytest.raises(ValueError, match=r"\[H, W, 3\] uint8"):
        contract.prepare(img.astype(np.float32), off_box)
    job = contract.prepare(img, masks.occlusion("O3", 178, 218))
    with pytest.raises(ValueError, match="blend must be one of none, poisson, got 'sharpen'"):
        contract.finish(job, np.zeros((1, 3, 128, 128), np.float32), blend="sharpen")


def test_contract_imports_only_numpy_and_opencv():
    """An engine's client needs numpy, OpenCV and of facecomp only the contract and the face layout."""
    code = ("import sys, facecomp.contract; bad = [m for m in sys.modules if m in ('torch', 'PIL') or "
            "m.startswith('facecomp.') and m not in ('facecomp.contract', 'facecomp.layout')]; "
            "print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_an_aligned_face_is_pasted_plain(face_files):
    """An aligned 178x218 face (1.25 face pixels per crop pixel: the validation protocol) keeps the plain
    INTER_CUBIC paste under the mask: no grain and no feathered seam, which only faces upscaled further get."""
    img = read_rgb(face_files[0])
    job = contract.prepare(img, masks.occlusion("O3", 178, 218), seed=1)
    assert contract.magnification(job) == 1.25 < contract.UPSCALED
    generated = contract.noise((1, 3, 128, 128), 5)
    x0, y0, x1, y1 = job.box
    back = img.copy()
    back[y0:y1, x0:x1] = cv2.resize(contract.to_uint8(generated[0]), (x1 - x0, y1 - y0), interpolation=cv2.INTER_CUBIC)
    assert np.array_equal(contract.finish(job, generated, "none"), np.where(job.hole[..., None], back, img))


def test_onnx_runtime_with_the_contract_equals_completer(onnx_artifact, face_files):
    """Same seed -> same pixels within one grey level, on real validation faces under O1-O6 and a mask
    that strays off the face box (inpainted there, as Completer does), two samples each, each blend."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_artifact / "generator.onnx"), providers=["CPUExecutionProvider"])
    completer = Completer()
    worst = dict.fromkeys(contract.BLENDS, 0)
    for i, path in enumerate(face_files[:7]):
        img = read_rgb(path)
        if i < 6:
            m = masks.occlusion(f"O{i + 1}", img.shape[1], img.shape[0])
        else:  # across the box's lower edge: part of the hole is off the box
            m = np.zeros(img.shape[:2], np.float32)
            m[180:215, 40:140] = 1
        expected = completer._complete(img, m, seed=100 + i, samples=2, blends=contract.BLENDS).by_blend
        for k in range(2):
            job = contract.prepare(img, m, seed=100 + i, sample=k)
            generated = session.run(None, {"filled": job.filled})[0]
            for blend in contract.BLENDS:
                got = contract.finish(job, generated, blend=blend)
                assert got.shape == img.shape and got.dtype == np.uint8
                hole = m > 0.5
                assert np.array_equal(got[~hole], img[~hole])
                worst[blend] = max(worst[blend], int(np.abs(got.astype(int) - expected[blend][k].astype(int)).max()))
            default = contract.finish(job, generated, contract.DEFAULT_BLEND)
            assert np.array_equal(contract.finish(job, generated), default)
    assert max(worst.values()) <= MAX_LEVELS, worst


def test_onnx_file_and_record_state_the_contract(onnx_artifact):
    import onnx

    model = onnx.load(str(onnx_artifact / "generator.onnx"))
    graph = model.graph
    for value in (graph.input[0], graph.output[0]):
        assert value.type.tensor_type.shape.dim[0].dim_param == "batch"
        assert value.doc_string
    assert not any(re.search(r"\bs\d+\b", d.dim_param) for v in graph.value_info
                   for d in v.type.tensor_type.shape.dim)
    assert "mask" in graph.input[0].doc_string and "1 = hole" in graph.input[0].doc_string
    assert model.doc_string and graph.doc_string
    props = {p.key: p.value for p in model.metadata_props}
    assert props["layout"] == "NCHW" and props["color"] == "RGB" and props["value_range"].startswith("[-1, 1]")
    assert "1 = hole" in props["mask"] and "[-1, 1)" in props["noise"] and "(seed, offset)" in props["noise"]
    assert props["crop_box"] == ",".join(map(str, layout.CROP_BOX))
    import facecomp

    assert props["facecomp_version"] == facecomp.__version__
    assert props["weights_sha256"] == weights.identity(weights.SHIPPED["generator"])
    meta = ArtifactMeta.read(onnx_artifact)
    assert meta.contract == props  # the record says the same as the file
    assert meta.files["generator.onnx"] == sha256_file(onnx_artifact / "generator.onnx")  # hashed after annotating
    assert json.loads((onnx_artifact / "facecomp-artifact.json").read_text())["contract"]["weights_sha256"] == \
        meta.weights_sha256


def readme_client() -> str:
    """The documented ONNX Runtime client: the python block under '## Engine contract' in docs/export.md
    (it lived in the README before the topic pages)."""
    text = (REPO / "docs" / "export.md").read_text()
    section = text.split("## Engine contract", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(blocks) == 1, "the Engine contract section must hold exactly one python block"
    return blocks[0]


def test_readme_client_runs_and_equals_completer(onnx_artifact, face_files, tmp_path):
    """The documented snippet, run as written (its text, in a fresh interpreter) in a folder holding the
    files it names, reproduces Completer within one grey level."""
    code = readme_client()
    assert len(code.strip().splitlines()) <= 25
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "gen-onnx").symlink_to(onnx_artifact)
    img = read_rgb(face_files[2])
    cv2.imwrite(str(tmp_path / "face.png"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    got = cv2.cvtColor(cv2.imread(str(tmp_path / "done.png")), cv2.COLOR_BGR2RGB)
    # The snippet's own mask and seed, read back from its text so the two cannot drift apart.
    ns: dict = {"image": img}
    exec(compile("\n".join(line for line in code.splitlines() if line.startswith(("mask", "seed", "import numpy"))),
                 "readme", "exec"), ns)
    expected = Completer().complete(img, ns["mask"], seed=ns["seed"])[0]
    assert np.abs(got.astype(int) - expected.astype(int)).max() <= MAX_LEVELS
    assert (got != img).any()
