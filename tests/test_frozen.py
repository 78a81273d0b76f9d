"""train.frozen: parameters a stage leaves exactly as they start (in the raw weights, the EMA average
and across a resume), so a fine-tuned generator can borrow them from the file it started from."""

import pytest
import torch

from facecomp import config as config_mod
from facecomp.train import loop
from facecomp.weights import RunFolder, load_tensors

FROZEN = ["generator.fc_in", "generator.fc_out"]


def _cfg(smoke_cfg, celeba, frozen):
    smoke_cfg.data.root = str(celeba)
    smoke_cfg.train.stage_steps = [4, 4, 4]
    smoke_cfg.train.ckpt_every = 2
    smoke_cfg.train.ema = 0.5
    smoke_cfg.train.frozen = frozen
    smoke_cfg.validation.faces = 0
    return smoke_cfg


def _start(cfg):
    return {k: v.clone() for k, v in loop.build_models(cfg, 1, torch.device("cpu")).generator.state_dict().items()}


@pytest.mark.parametrize("frozen", [FROZEN, []], ids=["frozen", "free"])
def test_frozen_parameters_stay_bit_for_bit_and_the_rest_trains(celeba, smoke_cfg, tmp_path, frozen):
    cfg = _cfg(smoke_cfg, celeba, frozen)
    start = _start(cfg)
    run = tmp_path / "run"
    assert not loop.train(cfg, 1, celeba, run, progress=False, stop_at=2).finished
    assert loop.train(cfg, 1, celeba, run, progress=False, resume=True).finished  # across a resume
    ckpt = RunFolder(run).latest()
    for name in ("generator", "generator_ema"):
        tensors, _ = load_tensors(ckpt / f"{name}.safetensors")
        for key in ("fc_in.weight", "fc_in.bias", "fc_out.weight", "fc_out.bias"):
            # the control run (nothing frozen) proves four steps do move these
            assert torch.equal(tensors[key], start[key]) == bool(frozen), (name, key)
        assert not torch.equal(tensors["encoder.0.0.0.weight"], start["encoder.0.0.0.weight"]), name


def test_a_frozen_prefix_that_names_nothing_is_an_error(celeba, smoke_cfg, tmp_path):
    cfg = _cfg(smoke_cfg, celeba, ["generator.fc_middle"])
    with pytest.raises(ValueError, match="names no parameter of the generator"):
        loop.train(cfg, 1, celeba, tmp_path / "run", progress=False)


def test_frozen_is_named_module_first():
    with pytest.raises(ValueError, match="train.frozen names parameters"):
        config_mod.apply_overrides(config_mod.load_config(), ['train.frozen=["fc_in"]'])
    cfg = config_mod.apply_overrides(config_mod.load_config(), ['train.frozen=["generator.fc_in"]'])
    assert cfg.train.frozen == ["generator.fc_in"]


def test_a_stage_starts_from_a_shipped_generator_by_name():
    """`--init paper-generator`: the grown generator takes every weight of the shipped paper generator."""
    from facecomp.weights import NAMED, load_tensors

    cfg = config_mod.load_config("cpu", ["generator.skips=4"])
    models = loop.build_models(cfg, 1, torch.device("cpu"))
    assert loop.init_from(models, "paper-generator") == NAMED["paper-generator"][1]
    shipped, _ = load_tensors(NAMED["paper-generator"][1])
    assert torch.equal(models.generator.fc_in.weight, shipped["fc_in.weight"].float())
    assert not models.generator.skips["3"].weight.any()  # the new parts start at zero


def test_the_average_leaves_frozen_parameters_bit_for_bit():
    """A lerp towards an equal value keeps the value but not a zero's sign; frozen tensors are left out."""
    from facecomp.train.ema import EMA

    net = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Linear(3, 3))
    with torch.no_grad():
        net[0].weight.fill_(-0.0)
        net[1].weight.fill_(-0.0)
    net[0].requires_grad_(False)
    ema = EMA(net, 0.9)
    ema.update(net, step=100)
    bits = ema.module[0].weight.view(torch.int32)
    assert torch.equal(bits, torch.full_like(bits, torch.tensor(-0.0).view(torch.int32).item()))
    # the averaged one turned -0.0 into +0.0: what the frozen tensor would have become
    assert torch.equal(ema.module[1].weight.view(torch.int32), torch.zeros(3, 3, dtype=torch.int32))
