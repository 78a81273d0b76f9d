import subprocess
import sys

import pytest

from facecomp.config import load_config, read_overrides


@pytest.mark.parametrize("preset", ["paper", "cpu", "smoke"])
def test_presets_load(preset):
    cfg = load_config(preset)
    assert cfg.generator.image_size == 128
    assert cfg.mask.size == 64


def test_paper_preset_is_the_paper():
    cfg = load_config("paper")
    assert cfg.generator.width == 1.0 and cfg.discriminator.width == 1.0
    assert (cfg.loss.adv_local, cfg.loss.adv_global, cfg.loss.parsing) == (300.0, 300.0, 0.005)


def test_overrides_are_typed_and_nested():
    cfg = load_config("smoke", ["train.batch_size=7", "loss.parsing=1", "runtime.amp=bf16",
                                "train.stage_steps=[1, 2, 3]", "data.root=/some/where"])
    assert cfg.train.batch_size == 7
    assert cfg.loss.parsing == 1.0 and isinstance(cfg.loss.parsing, float)
    assert cfg.runtime.amp == "bf16"
    assert cfg.train.stage_steps == [1, 2, 3]
    assert cfg.data.root == "/some/where"


@pytest.mark.parametrize("override, needle", [
    ("train.batchsize=3", "train.batchsize"),
    ("nosuch.key=1", "nosuch"),
    ("generator.width.x=1", "generator.width.x"),
])
def test_unknown_keys_name_the_key(override, needle):
    with pytest.raises(ValueError, match=needle.replace(".", r"\.")):
        load_config("smoke", [override])


def test_wrong_type_is_an_error():
    with pytest.raises(ValueError, match="train.batch_size"):
        load_config("smoke", ["train.batch_size=big"])
    with pytest.raises(ValueError, match="key=value"):
        read_overrides(["justakey"])


def test_unknown_preset():
    with pytest.raises(ValueError, match="presets: cpu, paper, smoke"):
        load_config("nonesuch")


def test_dry_run_prints_resolved_config(tmp_path):
    out = subprocess.run([sys.executable, "-m", "facecomp", "train", "--config", "smoke", "--stage", "1",
                          "--run-dir", str(tmp_path / "r"), "--dry-run", "train.batch_size=5"],
                         capture_output=True, text=True, check=True)
    assert "batch_size = 5" in out.stdout
    assert not (tmp_path / "r").exists()


def test_each_component_checks_its_own_fields_when_built():
    from facecomp.config import (
        DataConfig,
        DiscriminatorConfig,
        GeneratorConfig,
        OptimConfig,
        RuntimeConfig,
        ValidationConfig,
    )

    with pytest.raises(ValueError, match="generator.norm must be one of batch, none; got 'group'"):
        GeneratorConfig(norm="group")
    with pytest.raises(ValueError, match="data.loader"):
        DataConfig(loader="tf")
    with pytest.raises(ValueError, match="runtime.amp"):
        RuntimeConfig(amp="fp8")
    with pytest.raises(ValueError, match="optim.lr_decay"):
        OptimConfig(lr_decay="step")
    with pytest.raises(ValueError, match="validation.select"):
        ValidationConfig(select="fid")
    with pytest.raises(ValueError, match="discriminator.local_view must be one of box, square; got 'crop'"):
        DiscriminatorConfig(local_view="crop")
    with pytest.raises(ValueError, match="mask.size must be in"):  # spans two components: checked on the whole
        load_config("smoke", ["mask.size=200"])


def test_config_choices_are_the_components_registries():
    from facecomp import kernels
    from facecomp.config import DataConfig, OptimConfig, RuntimeConfig, ValidationConfig
    from facecomp.data import celeba
    from facecomp.models import layers
    from facecomp.train import validation
    from facecomp.train.schedule import lr_factor

    assert set(RuntimeConfig.KERNELS) == set(kernels.IMPLS)
    assert DataConfig.PARTITIONS == tuple(celeba.PARTITIONS)
    assert set(load_config("smoke").generator.NORMS) == set(layers.NORMS)
    for decay in OptimConfig.LR_DECAYS:
        assert 0 < lr_factor(OptimConfig(lr_decay=decay, lr_final=0.5), 9, 10) <= 1
    hist = [{"step": 1, "raw": {"hole_psnr": 1.0, "ssim": 0.5, "identity": 0.4}}]
    for rule in ValidationConfig.SELECT:
        assert validation.choose(hist, rule, 0)["step"] == 1
    # the CLI offers exactly those choices
    from facecomp.cli import build_command_line

    with pytest.raises(SystemExit):
        build_command_line().parse_args(["train", "--stage", "1", "--run-dir", "x", "--loader", "tf"])


def _choices(command_line, *path: str) -> dict:
    """{flag: choices} of a subcommand (``facecomp export`` -> path ("export",))."""
    import argparse

    for name in path:
        sub = next(a for a in command_line._actions if isinstance(a, argparse._SubParsersAction))
        command_line = sub.choices[name]
    return {a.option_strings[0]: tuple(a.choices) for a in command_line._actions if a.choices and a.option_strings}


def test_cli_choices_come_from_the_components():
    from facecomp.cli import build_command_line
    from facecomp.contract import BLENDS
    from facecomp.data.celeba import PARTITIONS
    from facecomp.export.formats import FORMATS
    from facecomp.export.spec import PRECISIONS
    from facecomp.train.stages import STAGES

    command_line = build_command_line()
    for path in (("train",), ("cluster", "train")):
        assert _choices(command_line, *path)["--stage"] == tuple(STAGES)
    assert _choices(command_line, "export")["--format"] == tuple(FORMATS)
    assert _choices(command_line, "export")["--precision"] == tuple(PRECISIONS)
    for path in (("complete",), ("demo",), ("eval", "table")):
        assert _choices(command_line, *path)["--blend"] == BLENDS
    assert _choices(command_line, "eval", "table")["--partition"] == tuple(PARTITIONS)


def test_one_default_data_folder(monkeypatch, tmp_path):
    """$FACECOMP_DATA is the folder holding celeba/ (celeba_extra/, celeba_wild/) for every default."""
    from facecomp.cli import build_command_line
    from facecomp.config import DataConfig, data_home, default_data_root

    monkeypatch.setenv("FACECOMP_DATA", str(tmp_path))
    assert data_home() == tmp_path and default_data_root("celeba_wild") == str(tmp_path / "celeba_wild")
    assert DataConfig().roots == [str(tmp_path / "celeba")]
    assert build_command_line().parse_args(["eval", "identity"]).data == str(tmp_path / "celeba")
    monkeypatch.delenv("FACECOMP_DATA")
    assert data_home() == data_home("../shared/data") and data_home("/x") == type(tmp_path)("/x")


def test_a_missing_extra_is_one_error_naming_it():
    from facecomp.runtime import MissingExtra, require

    with pytest.raises(MissingExtra, match=r"ONNX export needs the 'export' extra \(no_such_module_x is not "
                                           r"installed\): pip install 'facecomp\[export\]'") as e:
        require("no_such_module_x", "export", "ONNX export")
    assert isinstance(e.value, ImportError) and e.value.extra == "export"
