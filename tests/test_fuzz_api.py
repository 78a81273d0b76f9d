"""Fuzzing the Python API: ``images.decode``, ``Completer`` and ``facecomp.wild`` either complete
(the input's size, every pixel outside the mask unchanged) or raise one ``ValueError`` of one line."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from facecomp import faces, images, layout, masks

from .fuzz_inputs import ALIGNED, Photo, bomb, examples, mask_arrays, photo_files, pixels, seeds, small_sizes

ORIENTED = (5, 6, 7, 8)  # EXIF orientations that swap width and height


def one_line(e: BaseException) -> str:
    text = str(e)
    assert text and "\n" not in text and "Traceback" not in text, repr(text)
    return text


@pytest.fixture(scope="module")
def detector():
    if not faces.available():
        return None
    return faces.LandmarkDetector(upsample=1)


@settings(max_examples=examples(120))
@given(photo=photo_files())
@example(photo=Photo(bomb(1_000_000), "past the pixel limit", False))
@example(photo=Photo(b"\x89PNG\r\n\x1a\n" + b"\0" * 40, "a PNG signature and nothing else", False))
def test_decode_gives_an_image_or_one_line(photo):
    try:
        rgb = images.decode(photo.data, "RGB", max_pixels=1_000_000, name="upload")
        grey = images.decode(photo.data, "L", max_pixels=1_000_000, name="upload")
    except ValueError as e:
        assert one_line(e).startswith("upload: "), (photo.what, str(e))
        assert not photo.valid or "pixel limit" in str(e), (photo.what, str(e))
        return
    assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3 and grey.shape == rgb.shape[:2]
    if photo.valid:
        w, h = (int(v) for v in photo.what.split()[0].split("x"))
        turned = any(f"orientation={o}" in photo.what for o in ORIENTED)
        assert rgb.shape[:2] == ((w, h) if turned else (h, w)), photo.what


def test_decode_names_the_file_when_pillow_raises_its_own_value_error():
    """Found by the decode fuzz: a BMP body behind a GIF signature makes Pillow's GIF plugin raise a bare
    ``ValueError('tile cannot extend outside image')``, which reached the user without the file's name (in a
    folder run, a line that does not say which file failed)."""
    from PIL import Image

    from .fuzz_inputs import encode

    data = encode(Image.fromarray(pixels(982, 982, 0, "flat")), "BMP")
    with pytest.raises(ValueError, match=r"^x\.gif: corrupt or truncated image \(ValueError: tile cannot extend"):
        images.decode(b"GIF89a" + data[6:], name="x.gif")


def test_decode_applies_exif_orientation_and_scales_16_bit():
    from PIL import Image

    from .fuzz_inputs import encode

    img = Image.fromarray(pixels(30, 20, 0, "noise"))
    turned = images.decode(encode(img, "PNG", orientation=6))
    assert turned.shape == (30, 20, 3) and np.array_equal(turned, np.asarray(img.transpose(Image.Transpose.ROTATE_270)))
    deep = np.array([[0, 1000, 40000, 65535]], np.uint16)
    assert images.decode(encode(Image.fromarray(deep), "PNG"), "L").tolist() == [[0, 3, 156, 255]]


def check_completion(done, image: np.ndarray, hole: np.ndarray | None) -> None:
    for outs in done.by_blend.values():
        for out in outs:
            assert out.shape == image.shape and out.dtype == np.uint8
            if hole is not None:
                assert np.array_equal(out[~hole], image[~hole])


@settings(max_examples=examples(80))
@given(data=st.data())
def test_completer_completes_or_refuses(completer, data):
    w, h = data.draw(small_sizes, "size")
    image = pixels(w, h, data.draw(st.integers(0, 99), "content"), "noise")
    mask = data.draw(mask_arrays(w, h), "mask")
    form = data.draw(st.sampled_from(("float32", "bool", "uint8", "float64", "nan")), "mask form")
    if form == "nan":
        mask = np.where(mask > 0, mask, np.nan)
    elif form != "float32":
        mask = (mask > 0.5).astype(form)
    seed = data.draw(seeds, "seed")
    samples = data.draw(st.sampled_from((0, 1, 2, 3)), "samples")
    blends = data.draw(st.sampled_from((("none",), ("poisson",), ("none", "poisson"))), "blends")
    _complete_and_check(completer, image, mask, seed, samples, blends)


def _complete_and_check(completer, image, mask, seed, samples, blends):
    h, w = image.shape[:2]
    try:
        done = completer._complete(image, mask, seed=seed, samples=samples, blends=blends)
    except ValueError as e:
        one_line(e)
        return
    hole = np.nan_to_num(mask.astype(np.float32)) > 0.5
    check_completion(done, image, hole)
    assert len(done.images) == samples
    x0, y0, x1, y1 = layout.face_box(w, h)
    inside = np.zeros_like(hole)
    inside[y0:y1, x0:x1] = True
    assert done.inpainted == int((hole & ~inside).sum())
    if done.inpainted:  # the fallback really filled those pixels
        assert any((out[hole & ~inside] != image[hole & ~inside]).any() for out in done.images)


def test_stroke_partly_off_the_face_box_is_completed_and_counted(completer):
    """A brush stroke that strays past the face box onto the neck is completed, not refused whole as it once was."""
    image = pixels(*ALIGNED, 1, "smooth")
    m = np.zeros((218, 178), np.float32)
    m[190:210, 60:120] = 1  # rows 190-200 inside the box (y1 = 201), the rest below it
    done = completer._complete(image, m, seed=0, samples=2, blends=("none", "poisson"))
    hole = m > 0.5
    check_completion(done, image, hole)
    assert done.inpainted == 9 * 60  # rows 201..209
    below = hole.copy()
    below[:201] = False
    assert all((out[below] != image[below]).any(axis=-1).mean() > 0.9 for out in done.images)
    with pytest.raises(ValueError, match="wholly outside the face box"):
        completer._complete(image, masks.box(178, 218, 0, 205, 178, 218))


@pytest.mark.parametrize("mask, words", [
    (np.ones((3,), np.float32), "mask is 3 but the image is 178x218"),
    (np.ones((218, 178, 1), np.float32), "but the image is 178x218"),
])
def test_odd_mask_shapes_are_one_line(completer, mask, words):
    with pytest.raises(ValueError, match=words):
        completer.complete(pixels(*ALIGNED, 0, "flat"), mask)


@pytest.mark.parametrize("image", [np.zeros((10, 10), np.uint8), np.zeros((10, 10, 4), np.uint8),
                                   np.zeros((10, 10, 3), np.float32), [[1, 2, 3]]])
def test_odd_images_are_one_line(completer, image):
    with pytest.raises(ValueError, match="image must be"):
        completer.complete(image, np.ones((10, 10), np.float32))


@pytest.mark.skipif(not faces.available(), reason="needs the 'faces' extra")
@settings(max_examples=examples(40))
@given(data=st.data())
def test_wild_entry_completes_or_refuses(completer, detector, data):
    """``Completer._complete`` with align auto and none, on photos with no face (noise), tiny ones,
    slivers and aligned faces."""
    w, h = data.draw(small_sizes, "size")
    image = pixels(w, h, data.draw(st.integers(0, 99), "content"), data.draw(st.sampled_from(("noise", "smooth"))))
    align = data.draw(st.sampled_from(("auto", "none")), "align")
    spec = data.draw(st.one_of(st.sampled_from(tuple(masks.OCCLUSIONS)), mask_arrays(w, h),
                               st.builds(lambda a, b, c, d: f"box:{a},{b},{c},{d}", *[st.integers(-50, 300)] * 4)),
                     "mask")
    try:
        done = completer._complete(image, spec, seed=data.draw(seeds, "seed"),
                                   samples=data.draw(st.sampled_from((0, 1, 2)), "samples"), align=align,
                                   detector=detector)
    except ValueError as e:
        one_line(e)
        return
    if isinstance(spec, np.ndarray):
        hole = spec > 0.5
    elif align == "none" or (w, h) == ALIGNED:
        hole = masks.from_spec(spec, w, h) > 0.5
    else:
        hole = None  # O1..O6 drawn per face found
    check_completion(done, image, hole)


# (2, 300), (1, 200): slivers on which dlib's CNN corrupted the heap and aborted the process (the fuzz test of
# the live server found it: the server died)
@pytest.mark.parametrize("size", [(1, 1), (40, 30), (39, 500), (2, 300), (1, 200), (300, 2)])
def test_tiny_photos_are_refused_with_the_reason_or_done_with_align_none(completer, size):
    """A 1x1 PNG once crashed dlib's CNN ("Filter windows must be small enough..."); a 40x30 photo is
    below what the detectors can search."""
    w, h = size
    image = pixels(w, h, 0, "noise")
    m = np.zeros((h, w), np.float32)
    m[0, 0] = 1
    if faces.available():
        with pytest.raises(ValueError, match=f"the photo is {w}x{h}: too small to find a face in.*--align none"):
            completer._complete(image, m, align="auto")
    if w * h == 1:
        with pytest.raises(ValueError, match="covers the whole image"):
            completer._complete(image, m, align="none")
        return
    done = completer._complete(image, m, samples=2, align="none")
    check_completion(done, image, m > 0.5)


@settings(max_examples=examples(12))
@given(data=st.data())
def test_shipped_model_completes_or_refuses(shipped, data):
    """The shipped generator (the default model) under the same property, on aligned faces and other sizes."""
    w, h = data.draw(st.sampled_from((ALIGNED, (128, 128), (64, 90), (3, 700))), "size")
    image = pixels(w, h, data.draw(st.integers(0, 9), "content"), "smooth")
    mask = data.draw(mask_arrays(w, h), "mask")
    _complete_and_check(shipped, image, mask, data.draw(seeds, "seed"), data.draw(st.sampled_from((1, 2))),
                        data.draw(st.sampled_from((("none",), ("none", "poisson"))), "blends"))


@pytest.fixture(scope="module")
def shipped():
    from facecomp.complete import Completer

    return Completer()


@pytest.mark.skipif(not faces.available(), reason="needs the 'faces' extra")
def test_wild_photo_mask_partly_off_the_face_is_inpainted(completer, detector, celeba):
    """A mask in photo pixels that covers a face's eyes and runs off its completion box: the face part is
    completed by the model, the rest inpainted and counted; nothing outside the mask changes."""
    folder = celeba.parent / "celeba_wild" / "img_celeba"
    photos = images.list_images(folder)[:6] if folder.is_dir() else []
    for path in photos:
        photo = images.read_rgb(path)
        found = faces.align_faces(photo, detector)
        if not found:
            continue
        pts = found[0][1].points
        h, w = photo.shape[:2]
        y = int(pts[36:48, 1].mean())
        m = np.zeros((h, w), np.float32)
        m[max(0, y - 6):y + 6, :] = 1  # a band across the eyes, from edge to edge of the photo
        res = completer._complete(photo, m, samples=2, align=True, detector=detector)
        hole = m > 0.5
        assert res.inpainted > 0 and res.mask.sum() == hole.sum()
        for out in res.images:
            assert np.array_equal(out[~hole], photo[~hole]) and (out[hole] != photo[hole]).any(axis=-1).mean() > 0.8
        return
    pytest.skip("no wild photo with a face found")


@pytest.fixture(scope="module")
def wild_faces(celeba, detector):
    """(photo, its faces' landmarks) for the first wild photos with a face found."""
    if detector is None:
        pytest.skip("needs the 'faces' extra")
    folder = celeba.parent / "celeba_wild" / "img_celeba"
    if not folder.is_dir():
        pytest.skip(f"no wild photos at {folder}")
    found = []
    for path in images.list_images(folder)[:6]:
        photo = images.read_rgb(path)
        fits = detector.all(photo)
        if fits:
            found.append((photo, fits))
    return found


@settings(max_examples=examples(10))
@given(data=st.data())
def test_wild_photos_under_random_masks(completer, detector, wild_faces, data):
    """Real photos, masks in photo pixels anywhere: on the face, across it and off it, off the image, strokes."""
    photo, fits = data.draw(st.sampled_from(wild_faces), "photo")
    h, w = photo.shape[:2]
    cx, cy = (int(v) for v in fits[0].points[27:36].mean(0))
    kind = data.draw(st.sampled_from(("around", "band", "corner", "random")), "kind")
    if kind == "around":  # a box centred on the nose, up to twice the face's size: partly off the face box
        r = data.draw(st.integers(3, max(4, w // 3)), "radius")
        m = masks.box(w, h, cx - r, cy - r, cx + r, cy + r)
    elif kind == "band":
        m = masks.box(w, h, -10, cy - 5, w + 10, cy + 5)
    elif kind == "corner":  # off every face: refused
        m = masks.box(w, h, 0, 0, 4, 4)
    else:
        m = data.draw(mask_arrays(w, h), "mask")
    try:
        done = completer._complete(photo, m, seed=data.draw(st.integers(0, 3)), align="auto", detector=detector,
                                   blends=data.draw(st.sampled_from((("none",), ("poisson", "none")))))
    except ValueError as e:
        one_line(e)
        return
    hole = m > 0.5
    check_completion(done, photo, hole)
    if done.inpainted:
        assert all((out[hole] != photo[hole]).any() for out in done.images)


def test_large_inpainted_regions_are_filled_at_a_reduced_scale():
    """A photo masked almost whole around its one face: Telea at full size would take ~5 s per sample and blend
    for 2000x2000 (15 s at 12 MP); filled at a reduced scale it is well under that, and only the region changes."""
    import time

    from facecomp.contract import inpaint

    img = pixels(2000, 1500, 0, "smooth")
    region = np.ones((1500, 2000), bool)
    region[600:900, 800:1100] = False
    started = time.perf_counter()
    out = inpaint(img, region)
    assert time.perf_counter() - started < 3.0
    assert np.array_equal(out[~region], img[~region]) and out.shape == img.shape
