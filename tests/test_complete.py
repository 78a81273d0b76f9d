"""Completion: known pixels are kept, masks are honoured at the input's resolution, samples differ."""

import numpy as np
import pytest

from facecomp import layout, masks
from facecomp.contract import poisson_blend


@pytest.mark.parametrize("name", list(masks.OCCLUSIONS))
@pytest.mark.parametrize("blend", ["none", "poisson"])
def test_aligned_face_keeps_known_pixels(completer, aligned_face, name, blend):
    m = masks.occlusion(name, 178, 218)
    (out,) = completer.complete(aligned_face, m, seed=1, blend=blend)
    assert out.shape == aligned_face.shape and out.dtype == np.uint8
    known = m < 0.5
    assert np.array_equal(out[known], aligned_face[known])
    assert not np.array_equal(out[~known], aligned_face[~known])  # the hole was filled


def test_any_size_and_mask_at_input_resolution(completer):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (301, 257, 3), dtype=np.uint8)
    m = np.zeros((301, 257), np.float32)
    m[100:103, 50:200] = 1  # a 3-pixel-thin line: finer than one crop pixel (257 -> 128)
    (out,) = completer.complete(image, m)
    assert out.shape == image.shape
    assert np.array_equal(out[m < 0.5], image[m < 0.5])
    assert np.any(out[m > 0.5] != image[m > 0.5])


def test_samples_differ_and_seed_repeats(completer, aligned_face):
    m = masks.occlusion("O3", 178, 218)
    a = completer.complete(aligned_face, m, seed=3, samples=3)
    b = completer.complete(aligned_face, m, seed=3, samples=3)
    for x, y in zip(a, b, strict=True):
        assert np.array_equal(x, y)
    assert not np.array_equal(a[0], a[1]) and not np.array_equal(a[1], a[2])


@pytest.mark.parametrize("mask, message", [
    (np.zeros((218, 178), np.float32), "empty"),
    (np.ones((218, 178), np.float32), "whole image"),
    (np.zeros((100, 100), np.float32), "but the image is 178x218"),
])
def test_bad_masks(completer, aligned_face, mask, message):
    with pytest.raises(ValueError, match=message):
        completer.complete(aligned_face, mask)


def test_mask_outside_the_face_box_is_refused(completer, aligned_face):
    m = masks.box(178, 218, 0, 0, 5, 5)  # top-left corner: outside CROP_BOX
    with pytest.raises(ValueError, match="outside the face box"):
        completer.complete(aligned_face, m)


def test_poisson_blend_only_touches_the_hole(aligned_face):
    m = masks.occlusion("O4", 178, 218)
    fake = np.full_like(aligned_face, 128)
    pasted = np.where(m[..., None] > 0.5, fake, aligned_face)
    out = poisson_blend(pasted, aligned_face, m)
    assert np.array_equal(out[m < 0.5], aligned_face[m < 0.5])
    # blending pulls the flat grey towards the surrounding skin at the border of the hole
    ys, xs = np.nonzero(m)
    edge = out[ys.min(), xs.min() + 5].astype(int)
    assert np.abs(edge - 128).sum() > 0


def test_face_box_layout():
    assert layout.face_box(178, 218) == layout.CROP_BOX
    assert layout.face_box(300, 200) == (0, 0, 300, 200)


def test_every_front_door_defaults_to_the_validated_blend(completer, aligned_face):
    """facecomp complete, demo, Completer.complete and serve all default to contract.DEFAULT_BLEND (the
    blend that wins on validation is the default everywhere, the other one flag away)."""
    import inspect

    from facecomp.cli import build_command_line
    from facecomp.complete import Completer
    from facecomp.contract import DEFAULT_BLEND
    from facecomp.serve.schema import CompleteForm, CompleteJSON

    command_line = build_command_line()
    sub = next(a for a in command_line._actions if a.__class__.__name__ == "_SubParsersAction")
    for command in ("complete", "demo"):
        assert sub.choices[command].get_default("blend") == DEFAULT_BLEND, command
    assert inspect.signature(Completer.complete).parameters["blend"].default == DEFAULT_BLEND
    for body in (CompleteForm, CompleteJSON):  # multipart and JSON requests
        assert body.model_fields["blend"].default.value == DEFAULT_BLEND
    # and the default is what a call without blend gets
    m = masks.occlusion("O3", 178, 218)
    (plain,) = completer.complete(aligned_face, m, seed=2)
    (chosen,) = completer.complete(aligned_face, m, seed=2, blend=DEFAULT_BLEND)
    assert np.array_equal(plain, chosen)
