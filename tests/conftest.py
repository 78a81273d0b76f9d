"""Shared fixtures. Real faces come from ../shared/data through the one `celeba` fixture."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from facecomp.config import data_home, load_config

REPO = Path(__file__).resolve().parent.parent
DATA = data_home(REPO.parent / "shared" / "data")  # $FACECOMP_DATA: the folder holding celeba/


@pytest.fixture(scope="session")
def celeba() -> Path:
    """The CelebA folder of ../shared/data (or $FACECOMP_DATA/celeba); skips when absent."""
    root = DATA / "celeba"
    if not (root / "img_align_celeba").is_dir():
        pytest.skip(f"real faces not found at {root} (set FACECOMP_DATA to the folder holding celeba/)")
    return root


@pytest.fixture(scope="session")
def face_files(celeba) -> list[Path]:
    from facecomp.data.celeba import CelebAIndex

    return CelebAIndex.open(celeba).files("val", limit=16)


@pytest.fixture()
def smoke_cfg():
    return load_config("smoke", ["train.log_every=1000", "train.image_every=1000"])


@pytest.fixture(scope="session")
def parsing_weights(tmp_path_factory) -> Path:
    """A parsing network of the smoke shapes (untrained: the tests check plumbing, not parsing quality)."""
    from facecomp import config as config_mod
    from facecomp.models import ParsingNet
    from facecomp.weights import save_module

    cfg = load_config("smoke")
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("parsing") / "parsing.safetensors"
    save_module(path, ParsingNet(cfg.parsing), "parsing", {"config": config_mod.to_dict(cfg.parsing)})
    return path


@pytest.fixture(autouse=True)
def _few_threads():
    torch.set_num_threads(2)


@pytest.fixture(scope="session")
def generator_weights(tmp_path_factory) -> Path:
    """An untrained smoke generator whose BatchNorm statistics were measured on random inputs,
    so its output depends on its input as a trained model's does (fresh BN stats would squash it)."""
    from facecomp import config as config_mod
    from facecomp.models import Generator
    from facecomp.weights import save_module

    cfg = load_config("smoke")
    torch.manual_seed(0)
    g = Generator(cfg.generator)
    for bn in g.modules():
        if isinstance(bn, torch.nn.BatchNorm2d):
            bn.momentum = None  # cumulative average
    with torch.no_grad():
        for _ in range(4):
            g(torch.rand(8, 4, 128, 128) * 2 - 1)
    path = tmp_path_factory.mktemp("gen") / "generator.safetensors"
    save_module(path, g, "generator", {"config": config_mod.to_dict(cfg.generator), "stage": 1})
    return path


@pytest.fixture(scope="module")
def completer(generator_weights):
    """A Completer of ``generator_weights`` (one per test module)."""
    from facecomp.complete import Completer

    return Completer(generator_weights)


@pytest.fixture(scope="session")
def aligned_face(celeba):
    """One CelebA-aligned validation face, [218, 178, 3] uint8."""
    from facecomp import images
    from facecomp.data.celeba import CelebAIndex

    return images.read_rgb(CelebAIndex.open(celeba).files("val", limit=1)[0])


@pytest.fixture(scope="session")
def onnx_artifact(tmp_path_factory) -> Path:
    """The shipped generator exported to ONNX (batch 1..4); skips without the 'export' extra."""
    pytest.importorskip("onnxruntime", reason="ONNX needs the 'export' extra")
    pytest.importorskip("onnxscript", reason="ONNX needs the 'export' extra")
    from facecomp.export import BatchRange, ExportConfig, export_artifact

    out = tmp_path_factory.mktemp("onnx") / "gen-onnx"
    export_artifact(out, ExportConfig(format="onnx", batch=BatchRange(1, 1, 4)), check_batches=(1,))
    return out
