"""The training recipe around the paper's loss: several data roots, validation during training, the
checkpoint rule, an EMA of G, the learning-rate schedule and R1."""

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from torch import nn

from facecomp import config as config_mod
from facecomp import losses
from facecomp.data.celeba import partition_files
from facecomp.train import checkpoint as ck
from facecomp.train import validation as val
from facecomp.train.ema import EMA
from facecomp.train.loop import build_models, build_optimizers, build_updaters, train
from facecomp.train.schedule import lr_factor
from facecomp.train.step import train_step
from facecomp.weights import RunFolder, read_metadata


def _celeba_folder(root, names, partition):
    (root / "img_align_celeba").mkdir(parents=True)
    for n in names:
        Image.new("RGB", (178, 218), (120, 80, 60)).save(root / "img_align_celeba" / n)
    (root / "list_eval_partition.txt").write_text("".join(f"{n} {partition[n]}\n" for n in names))
    return root


def test_partition_files_reads_every_root_in_order(tmp_path):
    a = _celeba_folder(tmp_path / "a", ["1.jpg", "2.jpg", "3.jpg"], {"1.jpg": 0, "2.jpg": 1, "3.jpg": 0})
    b = _celeba_folder(tmp_path / "b", ["9.jpg", "8.jpg"], {"9.jpg": 0, "8.jpg": 0})
    files = partition_files([a, b], "train")
    assert [f.parent.parent.name + "/" + f.name for f in files] == ["a/1.jpg", "a/3.jpg", "b/8.jpg", "b/9.jpg"]
    assert len(partition_files([a, b], "train", limit=3)) == 3
    with pytest.raises(ValueError, match="partition 'val' is empty"):
        partition_files([a, b], "val")  # b has no validation faces: a typo'd root must not pass silently


def test_repeated_data_flag_sets_roots_and_old_configs_still_load(tmp_path):
    r = subprocess.run([sys.executable, "-m", "facecomp", "train", "--config", "smoke", "--stage", "1",
                        "--run-dir", str(tmp_path / "r"), "--data", "/a b/celeba", "--data", "/x/celeba_extra",
                        "--dry-run"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert 'roots = ["/a b/celeba", "/x/celeba_extra"]' in r.stdout
    # state.json of runs from before data.roots spelled it data.root
    cfg = config_mod.from_dict({"data": {"root": "/old/celeba", "limit": 5}})
    assert cfg.data.roots == ["/old/celeba"] and cfg.data.root == "/old/celeba" and cfg.data.limit == 5
    assert "root" not in config_mod.to_dict(cfg)["data"]


def test_lr_factor_is_a_function_of_the_step():
    cfg = config_mod.OptimConfig(lr_decay="linear", decay_start=0.5, lr_final=0.1)
    assert [lr_factor(cfg, s, 11) for s in (0, 5)] == [1.0, 1.0]
    assert lr_factor(cfg, 10, 11) == pytest.approx(0.1)
    assert lr_factor(cfg, 7, 11) == pytest.approx(1 - 0.9 * 2 / 5)
    cos = config_mod.OptimConfig(lr_decay="cosine", lr_final=0.0)
    assert lr_factor(cos, 0, 101) == 1.0 and lr_factor(cos, 50, 101) == pytest.approx(0.5)
    assert lr_factor(cos, 100, 101) == pytest.approx(0.0, abs=1e-12)
    assert lr_factor(config_mod.OptimConfig(), 99, 100) == 1.0
    with pytest.raises(ValueError, match="lr_decay"):
        config_mod.load_config("smoke", ["optim.lr_decay=step"])


def test_ema_averages_weights_and_recalibrates_batchnorm():
    torch.manual_seed(0)
    batches = [torch.randn(5, 2) * 3 + 1, torch.randn(7, 2)]
    mod = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    ema, copying = EMA(mod, decay=0.5, calibration=batches), EMA(mod, decay=0.5)
    start = [p.detach().clone() for p in ema.module.parameters()]
    with torch.no_grad():
        for p in mod.parameters():
            p.add_(1.0)
        mod[1].running_mean.fill_(3.0)
    ema.update(mod, step=100)  # past the ramp: decay 0.5
    copying.update(mod, step=100)
    for p_avg, p0, p in zip(ema.module.parameters(), start, mod.parameters(), strict=True):
        assert torch.allclose(p_avg, 0.5 * p0 + 0.5 * p)
    assert ema.decay_at(0) == pytest.approx(0.1) and ema.decay_at(10**6) == 0.5
    assert not any(p.requires_grad for p in ema.module.parameters())

    # read after an update: statistics re-estimated on the calibration inputs, the plain mean and
    # variance of the average's own pre-BN activations (not the raw module's running_mean of 3)
    with torch.no_grad():
        acts = [ema.module[0](b) for b in batches]
    want_mean = torch.stack([a.mean(0) for a in acts]).mean(0)
    want_var = torch.stack([a.var(0, unbiased=True) for a in acts]).mean(0)
    assert torch.allclose(ema.module[1].running_mean, want_mean, atol=1e-6)
    assert torch.allclose(ema.module[1].running_var, want_var, atol=1e-6)
    assert ema.module[1].momentum == 0.1 and not ema.module.training  # put back
    # without calibration inputs the raw module's statistics are copied (train.ema_bn_images = 0)
    assert torch.equal(copying.module[1].running_mean, mod[1].running_mean)
    assert ema.recalibrate([]) == 0


def test_r1_penalty_is_the_squared_input_gradient():
    w = torch.tensor([[1.0, -2.0, 3.0]])
    x = torch.randn(4, 3, requires_grad=True)
    logits = (x * w).sum(1)  # dD/dx = w for every sample
    assert losses.r1_penalty(logits, x).item() == pytest.approx(14.0)


def test_r1_changes_the_discriminator_update(smoke_cfg):
    def d_after(r1):
        cfg = config_mod.load_config("smoke", [f"adversarial.r1={r1}", "adversarial.d_skip_below=0.0"])
        models = build_models(cfg, 2, torch.device("cpu"))
        ups = build_updaters(models, build_optimizers(models, cfg), cfg)
        torch.manual_seed(0)
        x = torch.rand(4, 3, 128, 128) * 2 - 1
        m = torch.zeros(4, 1, 128, 128)
        m[:, :, 32:96, 32:96] = 1
        metrics = train_step(models, ups, {"image": x, "mask": m}, cfg, 2, 0).metrics
        return [p.detach().clone() for p in models.d_local.parameters()], metrics

    plain, m0 = d_after(0.0)
    with_r1, m1 = d_after(10.0)
    assert "r1_adv_local" in m1 and m1["r1_adv_local"] > 0 and "r1_adv_local" not in m0
    assert any(not torch.equal(a, b) for a, b in zip(plain, with_r1, strict=True))


def test_choose_follows_the_stated_rule():
    hist = [{"step": 2, "raw": {"hole_psnr": 15.0, "ssim": 0.8}, "ema": {"hole_psnr": 15.5, "ssim": 0.7}},
            {"step": 4, "raw": {"hole_psnr": 16.0, "ssim": 0.6}},
            {"step": 6, "raw": {"hole_psnr": 16.0, "ssim": 0.9}, "ema": {"hole_psnr": 14.0, "ssim": 0.9}}]
    assert val.choose(hist, "hole_psnr", 0) == {"step": 4, "variant": "raw", "score": 16.0}  # tie: earlier
    assert val.choose(hist, "ssim", 0) == {"step": 6, "variant": "raw", "score": 0.9}  # tie: raw
    assert val.choose(hist, "hole_psnr", 0, candidates={2, 6})["step"] == 6
    assert val.choose(hist, "hole_psnr", 5) == {"step": 6, "variant": "raw", "score": 16.0}
    assert val.choose(hist[:1], "hole_psnr", 0)["variant"] == "ema"
    assert val.choose(hist, "last", 0)["step"] == 6
    assert val.choose(hist, "hole_psnr", 7) is None


def test_choose_by_identity_takes_the_smallest_distance():
    hist = [{"step": 2, "raw": {"identity": 0.40}, "ema": {"identity": 0.35}},
            {"step": 4, "raw": {"identity": 0.33}, "ema": {"identity": 0.33}},
            {"step": 6, "raw": {"identity": 0.38}}]
    assert val.choose(hist, "identity", 0) == {"step": 4, "variant": "raw", "score": -0.33}  # tie: raw
    assert val.choose(hist, "identity", 5)["step"] == 6


def test_select_identity_needs_identity_scored():
    from facecomp.config import ValidationConfig

    with pytest.raises(ValueError, match="validation.identity=true"):
        ValidationConfig(select="identity")
    assert ValidationConfig(select="identity", identity=True).identity


def test_best_checkpoint_survives_pruning(tmp_path):
    mod = nn.Linear(2, 2)
    for step in (1, 2, 3, 4):
        ck.save_checkpoint(tmp_path, {"generator": (mod, {})}, {}, ck.RunState(stage=1, step=step), keep=2,
                           protect=frozenset({2}))
    assert RunFolder(tmp_path).steps() == {2, 3, 4}


def test_validation_scores_are_reproducible(celeba, smoke_cfg):
    smoke_cfg.data.root = str(celeba)
    vset = val.load_validation_set(smoke_cfg)
    assert vset.faces.shape == (4, 3, 128, 128) and set(vset.masks) == {f"O{i}" for i in range(1, 7)}
    gen = build_models(smoke_cfg, 1, torch.device("cpu")).generator
    a = val.score(gen, vset, smoke_cfg, torch.device("cpu"))
    b = val.score(gen, vset, smoke_cfg, torch.device("cpu"))
    assert a == b and gen.training  # scoring leaves the module in training mode
    assert all(math.isfinite(v) for v in a.values()) and 0 < a["ssim"] < 1
    assert a["hole_psnr"] == pytest.approx(np.mean([a[f"hole_psnr/O{i}"] for i in range(1, 7)]))


def test_validation_scores_sharpness_the_measure_blur_cannot_pass(celeba, smoke_cfg):
    """Each mask's sharpness (hole gradients over the original's): 1 for a generator that puts the original
    back, far below 1 for one that fills the hole with a flat grey, whatever their PSNR."""
    smoke_cfg.data.root = str(celeba)
    smoke_cfg.validation.batch_size = 64  # one batch: the oracle below
    vset = val.load_validation_set(smoke_cfg)

    class Oracle(nn.Module):
        def forward(self, x_in):
            return vset.faces[: len(x_in)].to(x_in.dtype)

    class Flat(nn.Module):
        def forward(self, x_in):
            return torch.zeros_like(vset.faces[: len(x_in)]).to(x_in.dtype)

    perfect = val.score(Oracle(), vset, smoke_cfg, torch.device("cpu"))
    flat = val.score(Flat(), vset, smoke_cfg, torch.device("cpu"))
    assert perfect["sharpness"] == pytest.approx(1.0) and flat["sharpness"] < 0.3
    assert flat["sharpness"] == pytest.approx(np.mean([flat[f"sharpness/O{i}"] for i in range(1, 7)]))


def test_choose_leaves_out_weights_below_the_sharpness_floor():
    hist = [{"step": 2, "raw": {"hole_psnr": 18.0, "sharpness": 0.6}, "ema": {"hole_psnr": 17.5, "sharpness": 0.9}},
            {"step": 4, "raw": {"hole_psnr": 17.0, "sharpness": 0.95}},
            {"step": 6, "raw": {"hole_psnr": 19.0}}]  # scored before sharpness was: not known to pass
    assert val.choose(hist, "hole_psnr", 0)["step"] == 6
    assert val.choose(hist, "hole_psnr", 0, min_sharpness=0.85) == {"step": 2, "variant": "ema", "score": 17.5}
    assert val.choose(hist, "hole_psnr", 0, min_sharpness=0.99) is None


@pytest.mark.skipif(not __import__("facecomp.faces").faces.available(),
                    reason="needs the 'faces' extra (dlib-bin, face-recognition-models)")
def test_validation_scores_identity_distance(celeba, smoke_cfg):
    """With validation.identity each mask gets the mean embedding distance of the completions to their
    originals: zero for a generator that returns the original face, larger for one that does not."""
    smoke_cfg.data.root = str(celeba)
    smoke_cfg.validation.identity, smoke_cfg.validation.batch_size = True, 64  # one batch: the oracle below
    vset = val.load_validation_set(smoke_cfg)
    assert vset.identity is not None and vset.identity.embeddings.shape == (4, 128)

    class Oracle(nn.Module):  # puts each original face back: a perfect completion
        def forward(self, x_in):
            return vset.faces[: len(x_in)].to(x_in.dtype)

    perfect = val.score(Oracle(), vset, smoke_cfg, torch.device("cpu"))
    random_g = val.score(build_models(smoke_cfg, 1, torch.device("cpu")).generator, vset, smoke_cfg,
                         torch.device("cpu"))
    assert perfect["identity"] < 1e-6 and random_g["identity"] > 0.05
    assert random_g["identity"] == pytest.approx(np.mean([random_g[f"identity/O{i}"] for i in range(1, 7)]))


def test_a_run_validates_chooses_and_records_its_result(celeba, smoke_cfg, tmp_path):
    smoke_cfg.data.root = str(celeba)
    smoke_cfg.train.ema = 0.9
    smoke_cfg.train.stage_steps = [6, 6, 6]
    smoke_cfg.train.keep_checkpoints = 1
    run = tmp_path / "r"
    train(smoke_cfg, 1, celeba, run, progress=False)
    history = json.loads((run / "validation.json").read_text())
    assert [r["step"] for r in history] == [2, 4, 6]
    assert all(set(r) == {"step", "raw", "ema"} and "hole_psnr/O6" in r["ema"] for r in history)
    result = json.loads((run / "result.json").read_text())
    chosen = val.choose(history, "hole_psnr", 0)
    assert result["finished"] and result["steps"] == 6 and result["chosen"] == chosen
    assert RunFolder(run).steps() == {chosen["step"], 6}  # newest one + the best
    state = ck.read_state(RunFolder(run).latest())
    assert state["validation"] == history and state["best"] == chosen
    name = "generator_ema" if chosen["variant"] == "ema" else "generator"
    picked = load_file(run / "checkpoints" / f"step_{chosen['step']:07d}" / f"{name}.safetensors")
    shipped = load_file(run / "generator.safetensors")
    assert all(torch.equal(picked[k], shipped[k]) for k in picked)
    assert read_metadata(run / "checkpoints" / "step_0000006" / "generator_ema.safetensors")["kind"] == "generator"


def test_resume_with_ema_and_decay_equals_uninterrupted(celeba, smoke_cfg, tmp_path):
    smoke_cfg.data.root = str(celeba)
    smoke_cfg.train.ema = 0.9
    smoke_cfg.optim.lr_decay = "cosine"
    smoke_cfg.train.stage_steps = [4, 4, 4]
    smoke_cfg.train.ckpt_every = 3  # the interruption at step 1 is not at a checkpoint step
    train(smoke_cfg, 1, celeba, tmp_path / "straight", progress=False)
    stopped = train(smoke_cfg, 1, celeba, tmp_path / "split", progress=False, stop_at=1)
    assert stopped.steps == 1 and not (tmp_path / "split" / "result.json").exists()
    train(smoke_cfg, 1, celeba, tmp_path / "split", resume=True, progress=False)
    for name in ("generator", "generator_ema", "optim_generator"):
        a = load_file(RunFolder(tmp_path / "straight").latest() / f"{name}.safetensors")
        b = load_file(RunFolder(tmp_path / "split").latest() / f"{name}.safetensors")
        assert all(torch.equal(a[k], b[k]) for k in a), f"{name} differs after resume"
    assert (json.loads((tmp_path / "straight" / "validation.json").read_text())
            == json.loads((tmp_path / "split" / "validation.json").read_text()))


def test_init_takes_the_chosen_weights_of_a_finished_run(celeba, smoke_cfg, tmp_path):
    from facecomp.train.loop import init_from

    smoke_cfg.data.root = str(celeba)
    smoke_cfg.train.ema = 0.5
    smoke_cfg.train.stage_steps = [4, 4, 4]
    train(smoke_cfg, 1, celeba, tmp_path / "s1", progress=False)
    models = build_models(smoke_cfg, 2, torch.device("cpu"))
    ckpt = init_from(models, tmp_path / "s1")
    chosen = json.loads((tmp_path / "s1" / "result.json").read_text())["chosen"]
    assert ckpt.name == f"step_{chosen['step']:07d}"
    want = load_file(tmp_path / "s1" / "generator.safetensors")
    got = models.generator.state_dict()
    assert all(torch.equal(want[k], got[k]) for k in want)
