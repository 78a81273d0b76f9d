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
    from facecomp.train import checkpoint as ck

    cfg = load_config("smoke")
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("parsing") / "parsing.safetensors"
    ck.save_module(path, ParsingNet(cfg.parsing), "parsing", {"config": config_mod.to_dict(cfg.parsing)})
    return path


@pytest.fixture(autouse=True)
def _few_threads():
    torch.set_num_threads(2)
