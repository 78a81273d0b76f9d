"""The identity network and the stage-3 identity loss (facecomp.models.identity, facecomp.train.identity)."""

from __future__ import annotations

import math
import shutil

import pytest
import torch

from facecomp import config as config_mod
from facecomp.config import IdentityConfig, apply_overrides
from facecomp.data.identities import IdentityFaces, as_input, batches
from facecomp.models import IdentityNet, load
from facecomp.models.identity import identity_distance
from facecomp.weights import save_module


@pytest.fixture()
def net():
    torch.manual_seed(0)
    return IdentityNet(IdentityConfig(width=0.25, embed_dim=16)).eval()


def test_embeddings_are_unit_length_at_any_input_size(net):
    x = torch.rand(3, 3, 128, 128) * 2 - 1
    e = net(x)
    assert e.shape == (3, 16)
    torch.testing.assert_close(e.norm(dim=1), torch.ones(3))
    # the 128-px crop is area-downsampled to 64 px first: the same as giving the network that 64-px face
    torch.testing.assert_close(net(torch.nn.functional.avg_pool2d(x, 2)), e)


def test_identity_distance_is_zero_on_the_original_and_grads_reach_the_completion_only(net):
    torch.manual_seed(1)
    original = torch.rand(2, 3, 128, 128) * 2 - 1
    assert identity_distance(net, original, original).item() == pytest.approx(0.0, abs=1e-6)
    original.requires_grad_(True)
    completed = (torch.rand(2, 3, 128, 128) * 2 - 1).requires_grad_(True)
    d = identity_distance(net, completed, original)
    assert 0 < d.item() <= 2
    d.backward()
    assert completed.grad is not None and completed.grad.abs().sum() > 0
    assert original.grad is None  # the original's embedding is the target


def test_weights_round_trip_and_load_frozen(tmp_path, net):
    path = tmp_path / "identity.safetensors"
    save_module(path, net, "identity", {"config": config_mod.to_dict(net.cfg)})
    loaded = load("identity", path)
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    x = torch.rand(2, 3, 128, 128) * 2 - 1
    torch.testing.assert_close(loaded(x), net(x))
    with pytest.raises(ValueError, match="not parsing weights"):
        load("parsing", path)


def test_batches_resume_where_they_stopped():
    faces = IdentityFaces(torch.randint(0, 256, (40, 3, 64, 64), dtype=torch.uint8),
                          torch.arange(40) % 5, list(range(5)))
    fresh = batches(faces, 8, seed=3)
    seen = [next(fresh) for _ in range(7)]  # past an epoch (5 batches of 8)
    resumed = next(batches(faces, 8, seed=3, start_step=6))
    torch.testing.assert_close(resumed["image"], seen[6]["image"])
    assert torch.equal(resumed["labels"], seen[6]["labels"])
    assert not torch.equal(seen[0]["labels"], seen[5]["labels"])  # a new epoch, a new order
    assert seen[0]["image"].shape == (8, 3, 64, 64) and seen[0]["image"].abs().max() <= 1
    assert not torch.equal(seen[0]["image"], as_input(faces.images[:8]))  # augmented


def _tiny_celeba(celeba, dst, people: int = 6, per_person: int = 8):
    """A CelebA folder of the first people of celeba/'s train partition, half their faces as validation."""
    from facecomp.data.celeba import CelebAIndex

    index = CelebAIndex.open(celeba)
    by_person: dict[int, list] = {}
    for f in index.files("train"):
        by_person.setdefault(index.identity(f), []).append(f)
    chosen = [fs[:per_person] for _, fs in sorted(by_person.items())[:people]]
    (dst / "img_align_celeba").mkdir(parents=True)
    ids, parts = [], []
    for fs in chosen:
        for k, f in enumerate(fs):
            shutil.copy(f, dst / "img_align_celeba" / f.name)
            ids.append(f"{f.name} {index.identity(f)}")
            parts.append(f"{f.name} {0 if k < per_person // 2 else 1}")
    (dst / "identity_CelebA.txt").write_text("\n".join(ids) + "\n")
    (dst / "list_eval_partition.txt").write_text("\n".join(parts) + "\n")
    return dst


def test_training_learns_the_people_and_resumes(tmp_path, celeba, smoke_cfg, capsys):
    """Six people, four faces each to learn from: the loss falls, the weights publish, and a run stopped at
    its checkpoint and resumed ends where an uninterrupted one does."""
    from facecomp.train.identity import train_identity

    root = _tiny_celeba(celeba, tmp_path / "celeba")
    cfg = apply_overrides(smoke_cfg, ["identity.width=0.25", "identity.embed_dim=16", "identity_train.steps=30",
                                      "identity_train.batch_size=12", "identity_train.ckpt_every=15",
                                      "identity_train.log_every=5", "identity_train.margin=0.1"])
    whole = train_identity(cfg, [root], tmp_path / "whole", val_root=root, progress=False)
    assert whole.steps == 30 and whole.images == 360 and (tmp_path / "whole" / "identity.safetensors").exists()
    chance = math.log(6) + 30 * 0.1  # CosFace's loss where every cosine is 0: log(classes) + s * m, here 4.8
    assert whole.loss < chance - 1.5 and whole.score is not None and whole.score.faces == 24 and whole.score.people == 6

    # a run stopped after its step-15 checkpoint: its last checkpoint gone, it resumes from step 15
    train_identity(cfg, [root], tmp_path / "split", val_root=None, progress=False)
    shutil.rmtree(tmp_path / "split" / "checkpoints" / "step_0000030")
    resumed = train_identity(cfg, [root], tmp_path / "split", val_root=None, resume=True, progress=False)
    assert resumed.steps == 30 and resumed.images == 360
    from facecomp.train.checkpoint import RunState
    from facecomp.weights import RunFolder

    assert RunState.read(RunFolder(tmp_path / "split").latest()).restarts == [15]
    a, b = load("identity", tmp_path / "whole"), load("identity", tmp_path / "split")
    for (k, p), q in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        torch.testing.assert_close(q, p, msg=k)

    from facecomp.cli import main  # the command a user scores a network with

    assert main(["identity", "eval", "--weights", str(tmp_path / "whole"), "--data", str(root)]) == 0
    assert f"24 faces of 6 people: nearest-face top-1 {whole.score.top1:.3f}" in capsys.readouterr().out


def test_stage3_identity_loss_loads_its_network_frozen_and_moves_the_generator_only(tmp_path, smoke_cfg, net):
    from facecomp.train.loop import build_models, build_optimizers, build_updaters
    from facecomp.train.step import train_step

    path = tmp_path / "identity.safetensors"
    save_module(path, net, "identity", {"config": config_mod.to_dict(net.cfg)})
    cfg = apply_overrides(smoke_cfg, ["loss.identity=5", "loss.parsing=0", "loss.recon=0",
                                      f"identity.weights={config_mod.json.dumps(str(path))}",
                                      "adversarial.d_skip_below=1e9"])
    assert build_models(cfg, 2, torch.device("cpu")).identity is None  # a stage-3 term
    models = build_models(cfg, 3, torch.device("cpu"))
    assert models.identity is not None and not models.identity.training
    assert not any(p.requires_grad for p in models.identity.parameters())
    updaters = build_updaters(models, build_optimizers(models, cfg), cfg)
    torch.manual_seed(0)
    x = torch.rand(2, 3, 128, 128) * 2 - 1
    m = torch.zeros(2, 1, 128, 128)
    m[:, :, 32:96, 32:96] = 1
    before = {n: [p.detach().clone() for p in getattr(models, n).parameters()] for n in ("generator", "identity")}
    res = train_step(models, updaters, {"image": x, "mask": m}, cfg, 3, step=0)
    assert res.metrics["identity"] > 0
    moved = {n: any(not torch.equal(a, b) for a, b in zip(before[n], getattr(models, n).parameters(), strict=True))
             for n in before}
    assert moved == {"generator": True, "identity": False}


def test_identity_loss_without_weights_says_how_to_get_them(tmp_path, smoke_cfg, monkeypatch):
    from facecomp import weights
    from facecomp.train.loop import build_models

    monkeypatch.setitem(weights.SHIPPED, "identity", tmp_path / "absent.safetensors")
    cfg = apply_overrides(smoke_cfg, ["loss.identity=1"])
    with pytest.raises(ValueError, match="facecomp identity train"):
        build_models(cfg, 3, torch.device("cpu"))
