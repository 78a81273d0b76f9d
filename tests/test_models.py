import pytest
import torch

from facecomp.config import load_config
from facecomp.models import Generator, ParsingNet, build_discriminators, crop_holes, freeze, hole_boxes, hole_windows


@pytest.mark.parametrize("preset", ["smoke", "cpu"])
@pytest.mark.parametrize("mask_channel", [False, True])
def test_generator_shapes(preset, mask_channel):
    cfg = load_config(preset, [f"generator.mask_channel={str(mask_channel).lower()}"])
    g = Generator(cfg.generator).eval()
    x = torch.randn(2, 4 if mask_channel else 3, 128, 128)
    y = g(x)
    assert y.shape == (2, 3, 128, 128) and y.abs().max() <= 1
    assert g.code_hw == 8  # conv1..pool3 + one more pool: 128 / 16
    with pytest.raises(AssertionError):
        g(torch.randn(2, 4 if not mask_channel else 3, 128, 128))


def test_generator_follows_vgg19_widths():
    g = Generator(load_config("paper").generator)
    convs = [m.out_channels for m in g.encoder.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs == [64, 64, 128, 128, 256, 256, 256, 256, 512, 512]  # VGG-19 conv1_1..conv3_4 + 2 convs
    dec = [m.out_channels for m in g.decoder.modules() if isinstance(m, torch.nn.Conv2d)]
    assert dec == [512, 256, 256, 256, 256, 128, 128, 64, 64, 64]  # mirrored


def test_cpu_width_parameter_budget():
    g = Generator(load_config("cpu").generator)
    total = sum(p.numel() for p in g.parameters())
    fc = sum(p.numel() for m in (g.fc_in, g.fc_out) for p in m.parameters())
    assert 19e6 < total < 21e6 and 16e6 < fc < 17.5e6  # the FC bottleneck dominates


def test_discriminator_shapes():
    cfg = load_config("smoke")
    d_local, d_global = build_discriminators(cfg.discriminator, 128)
    assert d_local(torch.randn(3, 3, 64, 64)).shape == (3,)
    assert d_global(torch.randn(3, 3, 128, 128)).shape == (3,)


def test_parsing_shapes_and_freeze():
    net = freeze(ParsingNet(load_config("smoke").parsing))
    assert not net.training and not any(p.requires_grad for p in net.parameters())
    assert net(torch.randn(2, 3, 128, 128)).shape == (2, 11, 128, 128)


def test_hole_crop_is_exact_for_training_squares():
    m = torch.zeros(2, 1, 128, 128)
    m[0, :, 10:74, 20:84] = 1
    m[1, :, 64:128, 0:64] = 1
    assert hole_boxes(m).tolist() == [[20, 10, 84, 74], [0, 64, 64, 128]]
    img = torch.randn(2, 3, 128, 128)
    crops = crop_holes(img, m, 64)
    assert torch.allclose(crops[0], img[0, :, 10:74, 20:84], atol=1e-5)
    assert torch.allclose(crops[1], img[1, :, 64:128, 0:64], atol=1e-5)


def test_hole_crop_of_empty_mask_is_whole_image():
    assert hole_boxes(torch.zeros(1, 1, 32, 48)).tolist() == [[0, 0, 48, 32]]


def test_square_windows_never_stretch_a_hole():
    m = torch.zeros(4, 1, 128, 128)
    m[0, :, 40:74, 30:66] = 1  # an eye box, 36x34: a 64x64 window around it, not the box magnified
    m[1, :, 88:120, 24:104] = 1  # the lower face, 80x32: an 80x80 window, shrunk alike in x and y
    m[2, :, 0:20, 110:128] = 1  # at the corner: the window shifted inside the image
    m[3, :, 10:74, 20:84] = 1  # a training square: its own box
    boxes = hole_windows(m, 64)
    assert boxes.tolist() == [[16, 25, 80, 89], [24, 48, 104, 128], [64, 0, 128, 64], [20, 10, 84, 74]]
    assert ((boxes[:, 2] - boxes[:, 0]) == (boxes[:, 3] - boxes[:, 1])).all()
    for (x0, y0, x1, y1), win in zip(hole_boxes(m).tolist(), boxes.tolist(), strict=True):  # hole inside window
        assert win[0] <= x0 and win[1] <= y0 and x1 <= win[2] and y1 <= win[3]
    img = torch.randn(4, 3, 128, 128)
    crops = crop_holes(img, m, 64, view="square")
    assert torch.allclose(crops[0], img[0, :, 25:89, 16:80], atol=1e-5)  # copied at scale 1
    assert torch.allclose(crops[3], crop_holes(img, m, 64)[3], atol=1e-5)  # same as the paper's for squares
    tall = torch.zeros(1, 1, 128, 96)
    tall[..., 0:128, 30:60] = 1  # taller than the image is wide: the window is the widest square there is
    assert hole_windows(tall, 64).tolist() == [[0, 16, 96, 112]]


def test_grown_generator_starts_exactly_at_the_paper_generator(tmp_path):
    from facecomp import weights

    paper = Generator(load_config("smoke", ["generator.mask_channel=true"]).generator).eval()
    path = tmp_path / "g.safetensors"
    weights.save_module(path, paper, "generator")
    cfg = load_config("smoke", ["generator.mask_channel=true", "generator.skips=4", "generator.context=dilated",
                                "generator.mirror_skips=true"])
    grown = Generator(cfg.generator)
    assert grown.fresh_keys() and all(k.startswith(("skips.", "context.", "mirror.")) for k in grown.fresh_keys())
    assert sorted(grown.mirror) == sorted(grown.skips)
    with pytest.raises(ValueError, match="do not fit"):
        weights.load_module(path, grown, "generator")  # without naming the new parts, a missing key is an error
    weights.load_module(path, grown, "generator", grown.fresh_keys())
    grown.eval()
    x = torch.randn(2, 4, 128, 128)
    with torch.no_grad():
        assert torch.equal(grown(x), paper(x))
    grown.train()
    grown(x).square().mean().backward()  # the zero-started projections still get a gradient
    assert all(grown.skips[k].weight.grad.abs().sum() > 0 for k in grown.skips)
    assert all(grown.mirror[k].weight.grad.abs().sum() > 0 for k in grown.mirror)


def test_mirrored_skips_bring_the_other_side_of_the_face():
    """With only the mirrored projection open (as the identity), what the decoder gets added at column j
    is the encoder's feature at the mirrored column W-1-j."""
    cfg = load_config("smoke", ["generator.mask_channel=true", "generator.skips=1", "generator.mirror_skips=true"])
    torch.manual_seed(0)
    g = Generator(cfg.generator).eval()
    level = g.skips_at[0]
    seen = {}
    g.encoder[level].register_forward_hook(lambda m, args, out: seen.__setitem__("f", out))
    g.decoder[0].register_forward_pre_hook(lambda m, args: seen.__setitem__("x", args[0]))
    x = torch.randn(1, 4, 128, 128)
    with torch.no_grad():
        g(x)
        closed = seen["x"].clone()
        proj = g.mirror[str(level)].weight
        torch.nn.init.eye_(proj.view(proj.shape[:2]))
        g(x)
    added, f = seen["x"] - closed, seen["f"]
    scale = f.abs().max()
    assert scale > 0
    assert torch.allclose(added, torch.flip(f, dims=(3,)), atol=1e-4 * scale)  # [N, C, H, W]: the width flips
    assert (added - f).abs().max() > 0.1 * scale  # and it is not the unflipped skip


def test_generator_skip_options_are_checked():
    with pytest.raises(ValueError, match="needs generator.skips"):
        load_config("smoke", ["generator.context=dilated"])
    with pytest.raises(ValueError, match="0..4"):
        load_config("smoke", ["generator.skips=5"])
    with pytest.raises(ValueError, match="mirror_skips mirrors the skips"):
        load_config("smoke", ["generator.mirror_skips=true"])
    assert Generator(load_config("smoke", ["generator.skips=2"]).generator).skips_at == (2, 3)
