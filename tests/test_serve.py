"""`facecomp serve`: real HTTP on loopback against a server the tests start, and a real browser."""

from __future__ import annotations

import base64
import io
import os
import socket
import time

import numpy as np
import pytest

from facecomp import faces, masks
from facecomp.contract import DEFAULT_BLEND
from facecomp.images import read_rgb

from .serve_support import ARTIFACTS, b64, browser_page, chromium, face, png, post, running, server, unpng  # noqa: F401 (fixtures)

pytest.importorskip("fastapi", reason="needs the 'serve' extra")
httpx = pytest.importorskip("httpx", reason="needs httpx (the 'test' extra)")



def test_health_model_and_schema(server):
    url, _ = server
    assert httpx.get(f"{url}/healthz").json()["status"] == "ok"
    model = httpx.get(f"{url}/v1/model").json()
    assert model["parameters"] > 0 and model["image_size"] == 128 and set(model["masks"]) == set(masks.OCCLUSIONS)
    schema = httpx.get(f"{url}/openapi.json").json()
    assert "/v1/complete" in schema["paths"]
    page = httpx.get(f"{url}/")
    assert page.status_code == 200 and "Complete" in page.text and "text/html" in page.headers["content-type"]


def test_preset_completion_changes_only_the_hole(server, face):
    url, _ = server
    _, img = face
    r = post(url, png(img), preset="O3")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png", r.text
    out = unpng(r.content)
    hole = masks.occlusion("O3", img.shape[1], img.shape[0]) > 0.5
    assert out.shape == img.shape and np.array_equal(out[~hole], img[~hole]) and (out[hole] != img[hole]).any()


def test_json_samples_and_both_blends(server, face):
    url, _ = server
    _, img = face
    mask = np.zeros(img.shape[:2], np.uint8)
    mask[150:170, 70:110] = 255  # the mouth
    passes = httpx.get(f"{url}/healthz").json()["generator_passes"]
    r = post(url, png(img), mask_png=png(mask), samples=2, blend="both", format="json", seed=3)
    assert r.status_code == 200, r.text
    assert httpx.get(f"{url}/healthz").json()["generator_passes"] == passes + 1  # both blends, one pass
    body = r.json()
    assert [(i["sample"], i["blend"]) for i in body["images"]] == [(0, "none"), (1, "none"), (0, "poisson"),
                                                                   (1, "poisson")]
    outs = [unpng(base64.b64decode(i["png_base64"])) for i in body["images"]]
    for out in outs:
        assert np.array_equal(out[mask == 0], img[mask == 0])
    assert not np.array_equal(outs[0], outs[1])  # different noise, different completions
    assert not np.array_equal(outs[0], outs[2])  # Poisson blending changed the plain completion
    r = post(url, png(img), mask_png=png(mask), samples=2, blend="none", format="json", seed=3)
    plain = [unpng(base64.b64decode(i["png_base64"])) for i in r.json()["images"]]
    assert all(np.array_equal(a, b) for a, b in zip(plain, outs[:2], strict=True))  # same pass, same pixels


def test_engine_server_matches_eager_server(server, face, generator_weights, tmp_path_factory):  # noqa: F811
    pytest.importorskip("onnxruntime", reason="needs the 'export' extra")
    pytest.importorskip("onnxscript", reason="needs the 'export' extra")
    from facecomp.export import BatchRange, ExportConfig, export_artifact
    from facecomp.serve.app import ServeConfig

    artifact = tmp_path_factory.mktemp("engine") / "onnx"
    export_artifact(artifact, ExportConfig(format="onnx", batch=BatchRange(1, 1, 8)), generator_weights,
                    check_batches=(2,))
    eager_url, _ = server
    img = face[1]
    with running(ServeConfig(engine=str(artifact), max_samples=4)) as (url, _):
        model = httpx.get(f"{url}/v1/model").json()
        assert model["runtime"]["engine"] == "onnx" and model["runtime"]["precision"] == "fp32"
        a = post(url, png(img), preset="O3", seed=5, samples=2, format="json")
        b = post(eager_url, png(img), preset="O3", seed=5, samples=2, format="json")
        assert a.status_code == 200 and b.status_code == 200, (a.text, b.text)
        for x, y in zip(a.json()["images"], b.json()["images"], strict=True):
            diff = np.abs(unpng(base64.b64decode(x["png_base64"])).astype(int) -
                          unpng(base64.b64decode(y["png_base64"])).astype(int))
            assert diff.max() <= 1  # uint8 rounding at most


@pytest.mark.parametrize("fields,status,words", [
    ({}, 422, "either a mask image or a preset"),
    ({"preset": "O9"}, 422, "preset must be one of"),
    ({"preset": "O3", "samples": 99}, 422, "samples must be in 1..4"),
    ({"preset": "O3", "samples": 2}, 422, "format=json"),
    ({"preset": "O3", "blend": "sharpen"}, 422, "blend must be"),
    ({"preset": "O3", "seed": "abc"}, 422, "seed"),
])
def test_bad_fields(server, face, fields, status, words):
    url, _ = server
    r = post(url, png(face[1]), **fields)
    assert r.status_code == status and words in r.json()["error"], r.text


def test_bad_images(server, face):
    url, _ = server
    img = face[1]
    cases = [
        (post(url, b"this is text, not a picture", preset="O3"), 415, "not an image"),
        (post(url, png(img)[:300], preset="O3"), 400, "corrupt or truncated"),
        (post(url, b"", preset="O3"), 400, "empty upload"),
        (post(url, png(np.zeros((2100, 2100, 3), np.uint8)), preset="O3"), 413, "pixel limit"),
        (post(url, os.urandom(3 * 1024 * 1024), preset="O3"), 413, "byte limit"),
        (post(url, png(img), mask_png=png(np.full((10, 10), 255, np.uint8))), 422, "but the image is"),
        (post(url, png(img), mask_png=png(np.zeros(img.shape[:2], np.uint8))), 422, "mask is empty"),
        (post(url, None, preset="O3"), 422, "image"),
    ]
    for r, status, words in cases:
        assert r.status_code == status and words in r.json()["error"], (status, r.status_code, r.text)
    assert httpx.get(f"{url}/healthz").status_code == 200  # still serving


@pytest.mark.skipif(not faces.available(), reason="needs the 'faces' extra")
def test_unaligned_photo_and_no_face(server, celeba):
    url, _ = server
    wild = sorted((celeba.parent / "celeba_wild" / "img_celeba").glob("*.jpg"))[:1]
    if not wild:
        pytest.skip("no wild photos")
    photo = read_rgb(wild[0])
    r = post(url, png(photo), preset="O6", format="json")
    assert r.status_code == 200 and r.json()["faces"] >= 1, r.text
    from facecomp.serve.timing import read_header

    timing = read_header(r.headers["server-timing"])
    assert timing["detect"] > 0 and timing["align"] > 0 and timing["paste"] > 0, timing
    r = post(url, png(np.full((300, 400, 3), 200, np.uint8)), preset="O3")
    assert r.status_code == 422 and "no face found" in r.json()["error"]


def test_busy_server_says_503_with_retry_after(server, face):
    url, app = server
    runner = app.state.runner
    taken = 0
    while runner._admit.acquire(blocking=False):  # fill every admission slot, as a burst would
        taken += 1
    try:
        r = post(url, png(face[1]), preset="O4")
        assert r.status_code == 503 and r.headers["retry-after"] == "1" and "busy" in r.json()["error"]
    finally:
        for _ in range(taken):
            runner._admit.release()
    assert post(url, png(face[1]), preset="O4").status_code == 200


@pytest.mark.skipif(chromium() is None, reason="needs Debian's chromium (scripts/test.sh installs it)")
def test_browser_brush_and_complete(server, face):
    url, _ = server
    path, img = face
    h, w = img.shape[:2]
    with browser_page(1200, 900) as page:
        page.goto(url)
        page.set_input_files("#file", str(path))
        page.wait_for_function("document.getElementById('status').textContent.includes('brush over')")
        box = page.locator("#maskView").bounding_box()
        sx, sy = box["width"] / w, box["height"] / h
        y = 112  # the eyes of an aligned CelebA face
        page.mouse.move(box["x"] + 60 * sx, box["y"] + y * sy)
        page.mouse.down()
        for x in range(60, 121, 10):
            page.mouse.move(box["x"] + x * sx, box["y"] + y * sy)
        page.mouse.up()
        page.click("#complete")
        page.wait_for_selector("figure[data-blend='none'] img", timeout=120_000)
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "serve_page.png"), full_page=True)
        src = page.locator("figure[data-blend='none'] img").first.get_attribute("src")
    out = unpng(base64.b64decode(src.split(",", 1)[1]))
    changed = (out != img).any(2)
    ys, xs = np.nonzero(changed)
    assert changed.sum() > 200, "the brushed region was not completed"
    radius = 28 / 2 / min(sx, sy) + 2  # brush of 28 screen px
    assert ys.min() >= y - radius and ys.max() <= y + radius
    assert xs.min() >= 60 - radius and xs.max() <= 120 + radius


def test_docs_assets_are_served_by_the_app(server):
    """/docs and /redoc reference only the app's own copies of Swagger UI and ReDoc (no CDN): every
    <script src> and <link href> of each page is a path of this server and answers 200 with content."""
    import re

    url, _ = server
    for page in ("/docs", "/redoc"):
        r = httpx.get(f"{url}{page}")
        assert r.status_code == 200 and "text/html" in r.headers["content-type"]
        refs = re.findall(r'<script[^>]*\bsrc="([^"]+)"', r.text) + re.findall(r'<link[^>]*\bhref="([^"]+)"', r.text)
        assert len(refs) >= (3 if page == "/docs" else 2), refs  # the JS, (the CSS,) the icon
        for ref in refs:
            assert ref.startswith("/"), f"{page} loads {ref} from elsewhere"
            asset = httpx.get(f"{url}{ref}")
            assert asset.status_code == 200 and len(asset.content) > 1000, (ref, asset.status_code)
        assert "cdn" not in r.text.lower() and "fonts.googleapis" not in r.text


def test_openapi_enums_and_answer_models(server):
    """The fixed choices are enums taken from the components' registries; every answer has a schema."""
    from facecomp import contract, images, wild

    url, _ = server
    schema = httpx.get(f"{url}/openapi.json").json()
    parts = schema["components"]["schemas"]
    assert parts["Blend"]["enum"] == [*contract.BLENDS, "both"]
    assert parts["ImageBlend"]["enum"] == list(contract.BLENDS)
    assert parts["Align"]["enum"] == list(wild.ALIGNS)
    assert parts["Preset"]["enum"] == list(masks.OCCLUSIONS)
    assert parts["Format"]["enum"] == [*images.OUTPUT_FORMATS, "json"]
    op = schema["paths"]["/v1/complete"]["post"]
    body = op["requestBody"]["content"]
    assert body["multipart/form-data"]["schema"]["$ref"].endswith("/CompleteForm")
    assert body["application/json"]["schema"]["$ref"].endswith("/CompleteJSON")
    form, js = parts["CompleteForm"]["properties"], parts["CompleteJSON"]["properties"]
    assert form["image"]["format"] == "binary" and js["image"]["type"] == "string"
    for fields in (form, js):
        for name, enum in (("blend", "Blend"), ("align", "Align"), ("format", "Format")):
            assert fields[name]["$ref"].endswith(f"/{enum}")
        assert fields["preset"]["anyOf"][0]["$ref"].endswith("/Preset")
    ok = op["responses"]["200"]
    assert ok["content"]["application/json"]["schema"]["$ref"].endswith("/CompleteResult")
    assert {"image/png", "image/jpeg", "image/webp"} <= set(ok["content"])
    assert {"X-Faces", "X-Inpainted-Pixels", "Server-Timing"} <= set(ok["headers"])
    for status in ("400", "413", "415", "422", "500", "503"):
        assert op["responses"][status]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorBody")
    assert "Retry-After" in op["responses"]["503"]["headers"]
    assert parts["ErrorBody"]["required"] == ["error"]
    assert set(parts["CompleteResult"]["required"]) == {"faces", "inpainted", "seconds", "images"}
    health = schema["paths"]["/healthz"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert health["$ref"].endswith("/Health")


def unimage(data: bytes) -> tuple[str, np.ndarray]:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        return im.format, np.asarray(im.convert("RGB"))


@pytest.mark.parametrize("fmt,pillow,media", [("png", "PNG", "image/png"), ("jpg", "JPEG", "image/jpeg"),
                                              ("jpeg", "JPEG", "image/jpeg"), ("webp", "WEBP", "image/webp")])
def test_output_formats(server, face, fmt, pillow, media):
    """format=png|jpg (or jpeg)|webp: that encoding, its Content-Type, the same completion (lossless PNG exactly,
    JPEG/WebP at quality 95 over 30 dB PSNR from it)."""
    url, _ = server
    img = face[1]
    reference = unpng(post(url, png(img), preset="O3", seed=4).content)
    r = post(url, png(img), preset="O3", seed=4, format=fmt)
    assert r.status_code == 200 and r.headers["content-type"] == media, r.text[:200]
    kind, out = unimage(r.content)
    assert kind == pillow and out.shape == img.shape
    err = out.astype(float) - reference.astype(float)
    psnr = 10 * np.log10(255**2 / max(np.mean(err**2), 1e-12))
    assert np.abs(err).max() == 0 if fmt == "png" else psnr > 30, psnr  # 32-34 dB measured


def test_json_body_with_base64_images(server, face):
    """IOPaint's request shape: a JSON body with base64 images (bare or data URLs); its extra fields are ignored.
    The answer is the image (as IOPaint's) or, with format=json, the JSON document, pixel for pixel what the
    multipart form gets."""
    url, _ = server
    img = face[1]
    mask = np.zeros(img.shape[:2], np.uint8)
    mask[150:170, 70:110] = 255
    form = post(url, png(img), mask_png=png(mask), seed=7)
    assert form.status_code == 200
    iopaint = {"image": b64(png(img), "image/png"), "mask": b64(png(mask)), "seed": 7,
               "ldm_steps": 20, "hd_strategy": "Crop", "sd_seed": 42, "prompt": ""}  # IOPaint's own fields
    r = httpx.post(f"{url}/v1/complete", json=iopaint, timeout=120)
    assert r.status_code == 200 and r.headers["content-type"] == "image/png", r.text[:300]
    assert np.array_equal(unpng(r.content), unpng(form.content))
    # Line-wrapped base64 (what `base64` prints) and format=json
    wrapped = "\n".join(iopaint["image"][i:i + 76] for i in range(0, len(iopaint["image"]), 76))
    r = httpx.post(f"{url}/v1/complete", json={**iopaint, "image": wrapped, "format": "json", "samples": 2,
                                                "blend": "both"}, timeout=120)
    assert r.status_code == 200 and r.headers["content-type"] == "application/json", r.text[:300]
    body = r.json()
    assert [(i["sample"], i["blend"]) for i in body["images"]] == [(0, "none"), (1, "none"), (0, "poisson"),
                                                                   (1, "poisson")]
    default = next(i for i in body["images"] if i["sample"] == 0 and i["blend"] == DEFAULT_BLEND)
    assert np.array_equal(unpng(base64.b64decode(default["png_base64"])), unpng(form.content))  # form: default blend
    r = httpx.post(f"{url}/v1/complete", json={"image": b64(png(img)), "preset": "o3", "format": "webp"}, timeout=120)
    assert r.status_code == 200 and unimage(r.content)[0] == "WEBP"


@pytest.mark.parametrize("body,status,words", [
    ({"image": "not base64!", "preset": "O3"}, 400, "image: not valid base64"),
    ({"image": "data:image/png,rawbytes", "preset": "O3"}, 400, "a data URL must be base64"),
    ({"image": b64(b"plain text, not a picture"), "preset": "O3"}, 415, "not an image"),
    ({"preset": "O3"}, 422, "image: Field required"),
    ({"image": "aGVsbG8=", "preset": "O3", "blend": "sharpen"}, 422, "blend must be one of"),
    ({"image": "aGVsbG8=", "preset": "O3", "format": "gif"}, 422, "format must be one of"),
    ({"image": "aGVsbG8=", "preset": "O3", "align": "sideways"}, 422, "align must be one of"),
    ({"image": "aGVsbG8="}, 422, "either a mask image or a preset"),
    ({"image": "aGVsbG8=", "preset": "O3", "samples": 2}, 422, "format=png returns one image"),
    ({"image": "aGVsbG8=", "preset": "O3", "seed": -1}, 422, "seed: Input should be greater than or equal to 0"),
])
def test_json_body_refusals(server, body, status, words):
    url, _ = server
    r = httpx.post(f"{url}/v1/complete", json=body, timeout=60)
    assert r.status_code == status and words in r.json()["error"], r.text


def test_body_kinds_and_limits(server):
    url, _ = server
    r = httpx.post(f"{url}/v1/complete", content=b"{", headers={"content-type": "application/json"})
    assert r.status_code == 422 and "Invalid JSON" in r.json()["error"]
    r = httpx.post(f"{url}/v1/complete", content=b"hello", headers={"content-type": "text/plain"})
    assert r.status_code == 415 and "multipart/form-data or application/json" in r.json()["error"]
    big = b64(os.urandom(2 * 1024 * 1024 + 10))  # over the fixture's 2 MiB upload limit once decoded
    r = httpx.post(f"{url}/v1/complete", json={"image": big, "preset": "O3"}, timeout=60)
    assert r.status_code == 413 and "byte limit" in r.json()["error"], r.text[:200]
    r = httpx.post(f"{url}/v1/complete", json={"image": big + big[:800_000], "preset": "O3"}, timeout=60)
    assert r.status_code == 413 and "limit" in r.json()["error"], r.text[:200]  # the body itself, unread
    r = httpx.post(f"{url}/v1/complete", data={"preset": "O3", "image": "text, not a file"})
    assert r.status_code == 422 and "send a file" in r.json()["error"]


def test_server_timing_header(server, face):
    """Every completion says where its time went (Server-Timing, milliseconds): the six stages add up to total;
    an aligned face spends nothing in detection."""
    from facecomp.serve.timing import STAGES, read_header

    url, _ = server
    r = post(url, png(face[1]), preset="O3", format="json")
    timing = read_header(r.headers["server-timing"])
    assert list(timing) == [*STAGES, "total"]
    assert timing["detect"] == 0 and timing["generator"] > 0 and timing["decode"] > 0 and timing["encode"] > 0
    assert abs(sum(timing[s] for s in STAGES) - timing["total"]) < 0.5
    assert timing["total"] / 1000 == pytest.approx(r.json()["seconds"] + timing["encode"] / 1000, abs=0.01)


@pytest.mark.skipif(chromium() is None, reason="needs Debian's chromium (scripts/test.sh installs it)")
def test_browser_docs_render_offline(server):
    """/docs and /redoc render the API in a browser that may reach nothing but this server."""
    url, _ = server
    blocked = []

    def only_this_server(route):
        if route.request.url.startswith(url):
            route.continue_()
        else:
            blocked.append(route.request.url)
            route.abort()

    with browser_page(1200, 1000) as page:
        page.route("**/*", only_this_server)
        page.goto(f"{url}/docs")
        op = page.locator(".opblock-post", has_text="/v1/complete")
        op.wait_for(timeout=60_000)
        op.locator(".opblock-summary").click()
        page.locator(".opblock-post .opblock-section-request-body").wait_for(timeout=30_000)
        text = page.locator(".opblock-post").inner_text()
        assert "multipart/form-data" in text or "application/json" in text, text[:500]
        assert page.locator(".opblock-get", has_text="/healthz").count() == 1
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "serve_docs.png"), full_page=False)
        assert not blocked, f"/docs tried to reach {blocked}"
        page.goto(f"{url}/redoc")
        page.get_by_text("Complete the masked region of a face photo").first.wait_for(timeout=60_000)
        page.screenshot(path=str(ARTIFACTS / "serve_redoc.png"), full_page=False)
    # ReDoc's sidebar shows Redocly's logo from their CDN and drops the <img> when it fails to load (onError):
    # decoration, the one request an offline /redoc makes and does without.
    assert set(blocked) <= {"https://cdn.redoc.ly/redoc/logo-mini.svg"}, f"/redoc tried to reach {blocked}"


def test_client_gone_mid_upload_is_no_error(server, face, caplog):
    """A client that hangs up halfway through its body is logged in one line, not as a crash (a traceback and a
    500), and the server goes on serving."""
    import logging

    url, _ = server
    caplog.set_level(logging.INFO, logger="facecomp.serve.app")
    req = httpx.Request("POST", f"{url}/v1/complete", files={"image": ("face.png", png(face[1]), "image/png")},
                        data={"preset": "O3"})
    body = req.read()
    head = "POST /v1/complete HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in req.headers.multi_items())
    port = int(url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(head.encode("latin-1") + b"\r\n" + body[:len(body) // 2])
        time.sleep(0.2)
    deadline = time.time() + 20
    while not any("went away" in r.getMessage() for r in caplog.records):
        assert time.time() < deadline, [r.getMessage() for r in caplog.records]
        time.sleep(0.1)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], [r.getMessage() for r in caplog.records]
    assert post(url, png(face[1]), preset="O3").status_code == 200


def test_worker_caps_malloc_arenas(monkeypatch):
    """Each worker caps glibc's malloc arenas before it builds the app (its request threads would otherwise keep
    an arena each at its high-water mark), unless MALLOC_ARENA_MAX already says how many."""
    import platform
    import subprocess
    import sys

    from facecomp.serve import main as worker

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("mallopt's arena cap is glibc's")
    calls = []
    monkeypatch.setattr(worker, "cap_malloc_arenas", lambda: calls.append("cap"))
    monkeypatch.setattr(worker, "create_app", lambda cfg: calls.append("app"))
    monkeypatch.setenv("FACECOMP_SERVE", "{}")
    worker.app()
    assert calls == ["cap", "app"]
    code = "from facecomp.serve.main import cap_malloc_arenas; print(cap_malloc_arenas())"
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    for extra, capped in (({}, "True"), ({"MALLOC_ARENA_MAX": "4"}, "False")):
        out = subprocess.run([sys.executable, "-c", code], env={**env, **extra}, capture_output=True, text=True,
                             check=True).stdout.strip()
        assert out == capped, (extra, out)
