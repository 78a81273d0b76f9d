"""What the serve tests share: a real uvicorn server of an app, the module's eager server, a face, and
Debian's headless Chromium."""

from __future__ import annotations

import base64
import contextlib
import io
import os
import shutil
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from facecomp.images import read_rgb

pytest.importorskip("fastapi", reason="needs the 'serve' extra")
httpx = pytest.importorskip("httpx", reason="needs httpx (the 'test' extra)")


ARTIFACTS = Path(os.environ.get("FACECOMP_TEST_ARTIFACTS", Path(__file__).resolve().parent.parent / "runs" /
                                "test-artifacts"))


def png(image: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def unpng(data: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


@contextlib.contextmanager
def running(cfg):
    """A real uvicorn server for ``cfg`` on a free loopback port: yields (base url, app)."""
    import uvicorn

    from facecomp.serve.app import create_app

    app = create_app(cfg)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not srv.started:
        assert time.time() < deadline, "server did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}", app
    finally:
        srv.should_exit = True
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def server(generator_weights):  # noqa: F811
    from facecomp.serve.app import ServeConfig

    cfg = ServeConfig(model=str(generator_weights), max_upload_bytes=2 * 1024 * 1024, max_pixels=4_000_000,
                      max_samples=4, max_pending=2)
    with running(cfg) as (url, app):
        yield url, app


@pytest.fixture(scope="module")
def face(face_files):
    return face_files[0], read_rgb(face_files[0])


def post(url: str, image: bytes | None, **fields) -> httpx.Response:
    files = {}
    if image is not None:
        files["image"] = ("face.png", image, "image/png")
    if "mask_png" in fields:
        files["mask"] = ("mask.png", fields.pop("mask_png"), "image/png")
    return httpx.post(f"{url}/v1/complete", files=files, data={k: str(v) for k, v in fields.items()}, timeout=120)


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@contextlib.contextmanager
def browser_page(width: int, height: int):
    """A page of Debian's headless Chromium (through playwright), closed afterwards."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="needs playwright (the 'test' extra)")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium(), args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"])
        try:
            yield browser.new_page(viewport={"width": width, "height": height})
        finally:
            browser.close()


def b64(data: bytes, data_url: str | None = None) -> str:
    text = base64.b64encode(data).decode()
    return f"data:{data_url};base64,{text}" if data_url else text
