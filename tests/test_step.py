"""Loss terms switch on per stage, gradients go where they should."""

import pytest
import torch

from facecomp.models import ParsingNet, freeze
from facecomp.train.loop import build_models, build_optimizers, build_updaters
from facecomp.train.stages import loss_weights
from facecomp.train.step import train_step


def _setup(cfg, stage, parsing=False):
    models = build_models(cfg, 1, torch.device("cpu"))
    if parsing:
        torch.manual_seed(1)
        models.parsing = freeze(ParsingNet(cfg.parsing))
    updaters = build_updaters(models, build_optimizers(models, cfg), cfg)
    torch.manual_seed(0)
    x = torch.rand(4, 3, 128, 128) * 2 - 1
    m = torch.zeros(4, 1, 128, 128)
    m[:, :, 32:96, 32:96] = 1
    return models, updaters, {"image": x, "mask": m}


def _snapshot(mod):
    return [p.detach().clone() for p in mod.parameters()]


def _changed(mod, before):
    return any(not torch.equal(a, b) for a, b in zip(before, mod.parameters(), strict=True))


def test_stage_weights_are_data(smoke_cfg):
    off = {"perceptual": 0, "feature_match": 0}  # beyond the paper: off unless loss.* sets them
    assert loss_weights(smoke_cfg.loss, 1) == {"recon": 1.0, "adv_local": 0, "adv_global": 0, "parsing": 0, **off}
    w3 = loss_weights(smoke_cfg.loss, 3)
    assert w3 == {"recon": 1.0, "adv_local": 300.0, "adv_global": 300.0, "parsing": 0.005, **off}
    smoke_cfg.loss.perceptual, smoke_cfg.loss.feature_match = 100.0, 30.0
    assert loss_weights(smoke_cfg.loss, 2)["perceptual"] == 0 and loss_weights(smoke_cfg.loss, 2)["feature_match"] == 30
    assert loss_weights(smoke_cfg.loss, 3)["perceptual"] == 100
    with pytest.raises(ValueError, match="unknown stage 4"):
        loss_weights(smoke_cfg.loss, 4)


@pytest.mark.parametrize("stage, terms, d_local_moves, d_global_moves", [
    (1, {"recon"}, False, False),
    (2, {"recon", "adv_local"}, True, False),
    (3, {"recon", "adv_local", "adv_global", "parsing"}, True, True),
])
def test_terms_per_stage(smoke_cfg, stage, terms, d_local_moves, d_global_moves):
    smoke_cfg.adversarial.d_skip_below = 0.0
    models, updaters, batch = _setup(smoke_cfg, stage, parsing=stage == 3)
    before = {n: _snapshot(getattr(models, n)) for n in ("generator", "d_local", "d_global")}
    res = train_step(models, updaters, batch, smoke_cfg, stage, step=0)
    g_terms = {k for k in res.metrics if k in ("recon", "adv_local", "adv_global", "parsing")}
    assert g_terms == terms
    assert _changed(models.generator, before["generator"])
    assert _changed(models.d_local, before["d_local"]) == d_local_moves
    assert _changed(models.d_global, before["d_global"]) == d_global_moves
    assert res.completed.shape == batch["image"].shape


def test_completed_keeps_known_pixels(smoke_cfg):
    models, updaters, batch = _setup(smoke_cfg, 1)
    y = train_step(models, updaters, batch, smoke_cfg, 1, step=0).completed
    known = batch["mask"].expand_as(y) == 0
    assert torch.equal(y[known], batch["image"][known])


def test_parsing_loss_reaches_generator_only(smoke_cfg):
    for name in ("recon", "adv_local", "adv_global"):
        setattr(smoke_cfg.loss, name, 0.0)
    models, updaters, batch = _setup(smoke_cfg, 3, parsing=True)
    parsing_before = _snapshot(models.parsing)
    gen_before = _snapshot(models.generator)
    res = train_step(models, updaters, batch, smoke_cfg, 3, step=0)
    assert res.metrics["parsing"] > 0
    assert _changed(models.generator, gen_before)  # Lp alone moved G
    assert not _changed(models.parsing, parsing_before)
    assert not models.parsing.training and all(p.grad is None for p in models.parsing.parameters())


def test_strong_discriminator_is_skipped(smoke_cfg):
    smoke_cfg.adversarial.d_skip_below = 1e9  # any loss counts as "too strong"
    models, updaters, batch = _setup(smoke_cfg, 2)
    before = _snapshot(models.d_local)
    res = train_step(models, updaters, batch, smoke_cfg, 2, step=0)
    assert res.metrics["d_adv_local_skipped"] == 1.0 and not _changed(models.d_local, before)


def test_adversarial_ramp(smoke_cfg):
    from facecomp.train.step import adversarial_ramp

    smoke_cfg.adversarial.warmup_steps = 10
    assert adversarial_ramp(smoke_cfg, 0) == pytest.approx(0.1)
    assert adversarial_ramp(smoke_cfg, 9) == 1.0 and adversarial_ramp(smoke_cfg, 100) == 1.0


@pytest.mark.parametrize("term", ["perceptual", "feature_match"])
def test_feature_losses_reach_generator_only(smoke_cfg, term):
    for name in ("recon", "parsing"):
        setattr(smoke_cfg.loss, name, 0.0)
    smoke_cfg.loss.adv_local = smoke_cfg.loss.adv_global = 1e-12  # Ds on (feature matching needs them), ~no La
    setattr(smoke_cfg.loss, term, 10.0)
    smoke_cfg.adversarial.d_skip_below = 1e9  # no D update: whatever moves them would be the G phase's fault
    models, updaters, batch = _setup(smoke_cfg, 3, parsing=True)
    before = {n: _snapshot(getattr(models, n)) for n in ("generator", "d_local", "d_global", "parsing")}
    res = train_step(models, updaters, batch, smoke_cfg, 3, step=0)
    assert res.metrics[term] > 0
    assert _changed(models.generator, before["generator"])
    assert not any(_changed(getattr(models, n), before[n]) for n in ("d_local", "d_global", "parsing"))
    assert all(p.grad is None for n in ("d_local", "d_global") for p in getattr(models, n).parameters())
