"""One resolver and one loader for weights of any kind; one identity for a weights file."""

import dataclasses

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


def _tiny_generator(smoke_cfg, seed):
    torch.manual_seed(seed)
    return models.Generator(smoke_cfg.generator)


def _tuned(base_model, kept):
    """A copy of ``base_model`` with every floating-point tensor moved except those under ``kept``."""
    import copy

    tuned = copy.deepcopy(base_model)
    with torch.no_grad():
        for key, t in tuned.state_dict().items():
            if t.is_floating_point() and not key.startswith(kept):
                t.add_(0.01 * torch.randn_like(t) + 0.01)
    return tuned


def test_a_file_borrows_what_it_shares_with_its_base_and_loads_whole(tmp_path, smoke_cfg):
    """A generator with its bottleneck frozen stores only what changed; it loads to the same tensors
    (and the same identity) as a self-contained copy, from its base beside it."""
    base_model = _tiny_generator(smoke_cfg, 0)
    base = tmp_path / "paper.safetensors"
    weights.save_module(base, base_model, "generator", {"config": {}})
    tuned = _tuned(base_model, ("fc_in.", "fc_out."))
    whole, small = tmp_path / "whole.safetensors", tmp_path / "tuned.safetensors"
    weights.save_module(whole, tuned, "generator", {"config": {}})
    weights.save_tensors(small, tuned.state_dict(), "generator", {"config": {}}, base=base)
    meta = weights.read_metadata(small)
    assert sorted(meta["base"]["keys"]) == ["fc_in.bias", "fc_in.weight", "fc_out.bias", "fc_out.weight"]
    assert meta["base"]["sha256"] == weights.identity(base) and meta["base"]["name"] == "paper.safetensors"
    fc_bytes = sum(t.numel() * t.element_size() for n in ("fc_in", "fc_out")
                   for t in getattr(tuned, n).state_dict().values())
    assert small.stat().st_size < whole.stat().st_size - fc_bytes * 0.99
    assert weights.identity(small) == weights.identity(whole)
    got, _ = weights.load_tensors(small, "generator")
    want, _ = weights.load_tensors(whole, "generator")
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)


def test_a_borrowing_file_without_its_base_or_with_a_changed_one_is_refused(tmp_path, smoke_cfg):
    base_model = _tiny_generator(smoke_cfg, 0)
    base = tmp_path / "paper.safetensors"
    weights.save_module(base, base_model, "generator")
    tuned = _tuned(base_model, ("fc_in.",))
    small = tmp_path / "tuned.safetensors"
    weights.save_tensors(small, tuned.state_dict(), "generator", base=base)
    alone = tmp_path / "elsewhere" / "tuned.safetensors"
    alone.parent.mkdir()
    copy_file(small, alone)
    with pytest.raises(ValueError, match="borrows 2 tensors from paper.safetensors .*neither beside it nor shipped"):
        weights.load_tensors(alone)
    other = _tuned(base_model, ())  # a different file under the base's name is not the base
    weights.save_module(alone.parent / "paper.safetensors", other, "generator")
    with pytest.raises(ValueError, match="neither beside it nor shipped"):
        weights.load_tensors(alone)
    with pytest.raises(ValueError, match="nothing to borrow"):
        weights.save_tensors(tmp_path / "x.safetensors", other.state_dict(), "generator", base=base)


def test_the_paper_generator_is_one_name_away(tmp_path, smoke_cfg, capsys):
    from facecomp.cli import main

    path = weights.resolve("paper-generator")
    assert path == weights.NAMED["paper-generator"][1] and path.is_file()
    assert weights.is_shipped_name("paper-generator") and weights.is_shipped_name("shipped")
    assert not weights.is_shipped_name(path) and not weights.is_shipped_name(None)
    assert weights.read_metadata(path)["config"]["bottleneck"] == 512
    with pytest.raises(ValueError, match="names shipped generator weights, not parsing"):
        weights.resolve("paper-generator", "parsing")
    assert main(["weights", "show", "paper-generator"]) == 0
    out = capsys.readouterr().out
    assert f"sha256    {weights.identity(path)}" in out and "verified  yes" in out


def test_weights_convert_borrows_from_a_base_by_command(tmp_path, smoke_cfg, capsys):
    from facecomp.cli import main

    base_model = _tiny_generator(smoke_cfg, 0)
    base, src = tmp_path / "base.safetensors", tmp_path / "run.safetensors"
    meta = {"config": dataclasses.asdict(smoke_cfg.generator)}
    weights.save_module(base, base_model.half(), "generator", meta)
    tuned = _tuned(base_model, ("fc_out.",)).float()  # fp32 in the run, fp16 shipped
    weights.save_module(src, tuned, "generator", meta)
    dst = tmp_path / "ship.safetensors"
    assert main(["weights", "convert", str(src), str(dst), "--dtype", "fp16", "--base", str(base)]) == 0
    assert "2 tensors borrowed from base.safetensors" in capsys.readouterr().out
    got, meta = weights.load_tensors(dst)
    assert meta["dtype"] == "float16" and torch.equal(got["fc_out.weight"], base_model.fc_out.weight.detach())
    loaded = models.load("generator", dst)
    assert torch.equal(loaded.fc_out.weight, base_model.fc_out.weight.float())


def test_a_borrowed_tensor_loads_as_the_base_bits_even_where_a_zero_changed_sign(tmp_path, smoke_cfg):
    base_model = _tiny_generator(smoke_cfg, 0)
    with torch.no_grad():
        base_model.fc_in.weight[0, :4] = -0.0
    base = tmp_path / "paper.safetensors"
    weights.save_module(base, base_model, "generator")
    tuned = _tuned(base_model, ("fc_in.",))
    with torch.no_grad():
        tuned.fc_in.weight[0, :4] = 0.0  # an average of equal values: same value, the sign lost
    small = tmp_path / "tuned.safetensors"
    weights.save_tensors(small, tuned.state_dict(), "generator", base=base)
    assert "fc_in.weight" in weights.read_metadata(small)["base"]["keys"]
    got, _ = weights.load_tensors(small)  # the checksum of the whole, as it loads, holds
    assert torch.equal(got["fc_in.weight"].view(torch.int32), base_model.fc_in.weight.detach().view(torch.int32))


def test_output_cut_short_by_a_pipe_is_not_an_error():
    """`facecomp weights show NAME | head -1`: the reader closes the pipe before the last line."""
    import subprocess
    import sys

    r = subprocess.run(["bash", "-c", f"'{sys.executable}' -m facecomp weights show paper-generator | head -1"],
                       capture_output=True, text=True, timeout=120)
    assert r.stdout.startswith("file ") and r.stderr == "", r.stderr
