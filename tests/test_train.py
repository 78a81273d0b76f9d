"""Training end to end on real faces: stages 1->2->3, resume, checkpoints."""

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from facecomp.train.loop import train
from facecomp.weights import RunFolder, convert_weights, load_module, load_tensors, read_metadata, save_module


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "facecomp", *map(str, args)], capture_output=True, text=True)


def test_three_stages_on_real_faces(celeba, parsing_weights, tmp_path):
    runs = [tmp_path / f"s{i}" for i in (1, 2, 3)]
    r = _cli("train", "--config", "smoke", "--stage", 1, "--data", celeba, "--run-dir", runs[0], "--no-progress")
    assert r.returncode == 0, r.stderr
    r = _cli("train", "--config", "smoke", "--stage", 2, "--data", celeba, "--run-dir", runs[1], "--init", runs[0],
             "--no-progress")
    assert r.returncode == 0, r.stderr
    r = _cli("train", "--config", "smoke", "--stage", 3, "--data", celeba, "--run-dir", runs[2], "--init", runs[1],
             "--no-progress", f"parsing.weights={parsing_weights}")
    assert r.returncode == 0, r.stderr
    for i, run in enumerate(runs, start=1):
        state = json.loads((RunFolder(run).latest() / "state.json").read_text())
        assert state["stage"] == i and state["step"] == 4
        assert (run / "generator.safetensors").is_file() and (run / "config.toml").is_file()
        assert list((run / "tb").glob("events.*"))
    # stage 2 started from stage 1's generator: its weights moved away from them, not from scratch
    s1 = load_file(runs[0] / "generator.safetensors")
    fresh = _cli("train", "--config", "smoke", "--stage", 2, "--data", celeba, "--run-dir", tmp_path / "fresh",
                 "--no-progress", "--from-scratch", "train.stage_steps=[4, 1, 4]")
    assert fresh.returncode == 0, fresh.stderr
    s2 = load_file(runs[1] / "generator.safetensors")
    f2 = load_file(tmp_path / "fresh" / "generator.safetensors")
    key = "fc_in.weight"
    assert (s2[key] - s1[key]).abs().mean() < (f2[key] - s1[key]).abs().mean()


def test_stage3_without_parsing_weights_says_so(celeba, tmp_path):
    r = _cli("train", "--config", "smoke", "--stage", 3, "--data", celeba, "--run-dir", tmp_path / "r",
             "--from-scratch", "parsing.weights=/no/such.safetensors")
    assert r.returncode == 2 and "needs face-parsing weights" in r.stderr and "Traceback" not in r.stderr


def test_resume_equals_uninterrupted(celeba, smoke_cfg, parsing_weights, tmp_path):
    """Stage 3 (every term on, D skips possible): 6 steps straight vs 3 + resume 3, bit for bit."""
    smoke_cfg.data.root = str(celeba)
    smoke_cfg.parsing.weights = str(parsing_weights)
    smoke_cfg.train.stage_steps = [6, 6, 6]
    smoke_cfg.train.ckpt_every = 3
    train(smoke_cfg, 3, celeba, tmp_path / "straight", progress=False)

    smoke_cfg.train.stage_steps = [3, 3, 3]
    train(smoke_cfg, 3, celeba, tmp_path / "split", progress=False)
    smoke_cfg.train.stage_steps = [6, 6, 6]
    result = train(smoke_cfg, 3, celeba, tmp_path / "split", resume=True, progress=False)
    assert result.steps == 6
    for name in ("generator", "d_local", "d_global", "optim_generator", "optim_d_local"):
        a = load_file(RunFolder(tmp_path / "straight").latest() / f"{name}.safetensors")
        b = load_file(RunFolder(tmp_path / "split").latest() / f"{name}.safetensors")
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), f"{name}:{k} differs after resume"


def test_resume_refuses_other_stage(celeba, smoke_cfg, tmp_path):
    smoke_cfg.train.stage_steps = [2, 2, 2]
    train(smoke_cfg, 1, celeba, tmp_path / "r", progress=False)
    with pytest.raises(ValueError, match="stage-1 run"):
        train(smoke_cfg, 2, celeba, tmp_path / "r", resume=True, progress=False)


def test_checkpoints_are_complete_and_pruned(celeba, smoke_cfg, tmp_path):
    smoke_cfg.train.stage_steps = [8, 8, 8]
    smoke_cfg.train.ckpt_every = 1
    smoke_cfg.train.keep_checkpoints = 2
    smoke_cfg.validation.faces = 0  # no best checkpoint to keep beside the newest two
    train(smoke_cfg, 1, celeba, tmp_path / "r", progress=False)
    root = tmp_path / "r" / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step_0000007", "step_0000008"]
    assert (root / "latest").read_text().strip() == "step_0000008"
    meta = read_metadata(root / "step_0000008" / "generator.safetensors")
    assert meta["kind"] == "generator" and meta["stage"] == 1 and meta["config"]["width"] == 0.125


def test_weights_files_refuse_tampering_and_other_shapes(tmp_path, smoke_cfg):
    from facecomp.models import Generator

    g = Generator(smoke_cfg.generator)
    path = tmp_path / "g.safetensors"
    save_module(path, g, "generator", {"config": {"width": 0.125}})
    load_module(path, Generator(smoke_cfg.generator), "generator")  # round trip works
    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF  # flip bits inside a tensor
    (tmp_path / "bad.safetensors").write_bytes(bytes(data))
    with pytest.raises(ValueError, match="checksum mismatch"):
        load_module(tmp_path / "bad.safetensors", g, "generator")
    (tmp_path / "cut.safetensors").write_bytes(bytes(data[: len(data) // 2]))
    with pytest.raises(ValueError, match="safetensors|corrupt"):
        load_module(tmp_path / "cut.safetensors", g, "generator")
    smoke_cfg.generator.bottleneck = 32
    with pytest.raises(ValueError, match="has shape"):
        load_module(path, Generator(smoke_cfg.generator), "generator")
    with pytest.raises(ValueError, match="holds 'generator' weights, expected 'parsing'"):
        load_tensors(path, "parsing")


def test_fp16_weights_round_trip_and_init_from_bare_file(celeba, smoke_cfg, tmp_path):
    smoke_cfg.train.stage_steps = [2, 2, 2]
    train(smoke_cfg, 1, celeba, tmp_path / "s1", progress=False)
    convert_weights(tmp_path / "s1" / "generator.safetensors", tmp_path / "g16.safetensors", torch.float16)
    meta = read_metadata(tmp_path / "g16.safetensors")
    assert meta["dtype"] == "float16" and meta["kind"] == "generator" and meta["stage"] == 1
    t16 = load_file(tmp_path / "g16.safetensors")
    assert t16["fc_in.weight"].dtype == torch.float16
    assert t16["encoder.0.0.1.num_batches_tracked"].dtype == torch.int64
    size32 = (tmp_path / "s1" / "generator.safetensors").stat().st_size
    assert (tmp_path / "g16.safetensors").stat().st_size < 0.6 * size32
    # a stage can start from the bare fp16 file
    from facecomp.train.loop import build_models, init_from

    models = build_models(smoke_cfg, 2, torch.device("cpu"))
    init_from(models, tmp_path / "g16.safetensors")
    w = models.generator.state_dict()["fc_in.weight"]
    assert w.dtype == torch.float32 and torch.equal(w, t16["fc_in.weight"].float())


def test_allocator_tuning_applies_on_glibc():
    import platform

    from facecomp.runtime import tune_allocator

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("mallopt tuning is glibc-only")
    assert tune_allocator() is True


@pytest.mark.parametrize("native", [True, False])
def test_bf16_on_a_cpu_without_native_bf16_trains_in_fp32_and_says_so(monkeypatch, caplog, native):
    """bf16 autocast on an AVX2-only CPU runs PyTorch's reference GEMM (the cpu preset's stage 3 ran under 20
    steps in 17 minutes on such an EPYC): the run is switched to fp32, in the config it records, with a warning."""
    from facecomp import runtime
    from facecomp.config import load_config

    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: native)
    cfg = load_config("cpu")
    assert cfg.runtime.amp == "bf16"
    with caplog.at_level("WARNING", logger="facecomp.runtime"):
        assert runtime.start(cfg.runtime).type == "cpu"
    assert cfg.runtime.amp == ("bf16" if native else "none")
    assert ("no native bf16" in caplog.text) is not native


def test_resume_naming_the_bf16_preset_again_is_not_a_config_change_where_bf16_became_fp32(
        celeba, tmp_path, monkeypatch):
    """A run that asked for bf16 on such a CPU recorded fp32; `--resume --config <the same preset>` names bf16
    again, and is settled the same way before the configs are compared, so it resumes instead of being refused."""
    from facecomp import runtime
    from facecomp.cli import main

    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: False)
    args = ["train", "--config", "smoke", "--stage", "1", "--data", str(celeba), "--run-dir", str(tmp_path / "r"),
            "--no-progress", "runtime.amp=bf16", "train.log_every=1000"]
    assert main([*args, "--stop-at", "2"]) == 75
    assert 'amp = "none"' in (tmp_path / "r" / "config.toml").read_text()
    assert main([*args, "--resume"]) == 0
