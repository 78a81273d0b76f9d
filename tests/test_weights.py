"""One resolver and one loader for weights of any kind; one identity for a weights file."""

import pytest
import torch

from facecomp import models, weights
from facecomp.config import load_config
from facecomp.train.loop import train
from facecomp.weights import copy_file


def test_shipped_by_name_or_by_default():
    for kind in ("generator", "parsing"):
        assert weights.resolve(None, kind) == weights.resolve("shipped", kind) == weights.SHIPPED[kind]
    assert isinstance(models.load("generator", "shipped"), models.Generator)
    with pytest.raises(ValueError, match="unknown weights kind 'vae'"):
        weights.resolve(None, "vae")


def test_every_path_a_user_gives_leads_to_one_file(celeba, tmp_path):
    cfg = load_config("smoke", ["train.stage_steps=[4, 4, 4]", "train.keep_checkpoints=0", "validation.faces=0"])
    cfg.data.root = str(celeba)
    run = tmp_path / "run"
    train(cfg, 1, celeba, run, progress=False)
    ckpt = run / "checkpoints" / "step_0000002"
    assert weights.resolve(run) == run / "generator.safetensors"  # a finished run: its chosen weights
    assert weights.resolve(ckpt) == ckpt / "generator.safetensors"
    assert weights.resolve(ckpt / "generator.safetensors") == ckpt / "generator.safetensors"
    (run / "generator.safetensors").unlink()  # an unfinished run: its newest checkpoint
    assert weights.resolve(run) == run / "checkpoints" / "step_0000004" / "generator.safetensors"
    cluster_run = tmp_path / "cluster"  # Ray Train's layout: step_* directly under the run
    for step in ("step_0000002", "step_0000004"):
        (cluster_run / step).mkdir(parents=True)
        copy_file(ckpt / "generator.safetensors", cluster_run / step / "generator.safetensors")
        (cluster_run / step / "state.json").write_text("{}")
    assert weights.resolve(cluster_run) == cluster_run / "step_0000004" / "generator.safetensors"
    with pytest.raises(ValueError, match="do not exist"):
        weights.resolve(tmp_path / "nowhere")


def test_identity_is_the_tensors_not_the_file(tmp_path, smoke_cfg):
    g = models.Generator(smoke_cfg.generator)
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    weights.save_module(a, g, "generator", {"config": {"note": 1}})
    weights.save_module(b, g, "generator", {"config": {"note": 2}})  # other metadata, other bytes
    assert a.read_bytes() != b.read_bytes() and weights.identity(a) == weights.identity(b)
    with torch.no_grad():
        next(g.parameters()).add_(1)
    weights.save_module(b, g, "generator", {})
    assert weights.identity(a) != weights.identity(b)


def test_the_weights_leaf_imports_no_other_facecomp_module():
    import ast
    from pathlib import Path

    tree = ast.parse(Path(weights.__file__).read_text())
    names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    names += [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module]
    assert not [n for n in names if n.startswith("facecomp")]


def test_the_shipped_model_has_a_name_everywhere(tmp_path):
    import subprocess
    import sys

    import numpy as np

    import facecomp
    from facecomp import Completer

    assert Completer("shipped").generator.cfg == Completer().generator.cfg
    module = models.load("generator")
    completer = Completer(module)  # a generator already built (an eager module or a compiled engine)
    assert completer.generator is module
    with pytest.raises(TypeError, match="generator"):
        Completer(42)
    img = np.full((128, 128, 3), 120, np.uint8)
    mask = np.zeros((128, 128), np.float32)
    mask[40:80, 40:80] = 1
    assert completer.complete(img, mask)[0].shape == img.shape
    r = subprocess.run([sys.executable, "-m", "facecomp", "--version"], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == f"facecomp {facecomp.__version__}"
