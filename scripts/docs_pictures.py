"""Remake the docs' two pictures with the shipped model (or --model): run it after new weights ship.

    .venv/bin/python scripts/docs_pictures.py [--model WEIGHTS] [--out docs]

- ``demo.png``: ``facecomp demo``'s grid, the public-domain astronaut under O1-O6 (what
  ``bash scripts/main.sh`` writes).
- ``serve.png``: the web page of ``facecomp serve`` in Debian's headless Chromium (through playwright,
  the 'test' extra), with a stroke brushed across the astronaut's eyes and two samples completed,
  plain and Poisson-blended. Only public-domain pictures: never point it at CelebA.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
FACECOMP = Path(sys.executable).parent / "facecomp"
EYES_Y, EYES_X0, EYES_X1 = 112, 160, 250  # the astronaut's eyes, in its 512x512 pixels
VIEWPORT = (1250, 1080)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def demo_picture(out: Path, model: str | None) -> None:
    subprocess.run([str(FACECOMP), "demo", "-o", str(out), *(["--model", model] if model else [])], check=True)


def wait_healthy(url: str, server: subprocess.Popen, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"facecomp serve exited with {server.returncode}")
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url}/healthz did not answer within {seconds:.0f} s")


def serve_picture(out: Path, model: str | None) -> None:
    from PIL import Image
    from playwright.sync_api import sync_playwright
    from skimage import data

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("needs Debian's chromium (scripts/test.sh installs it)")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([str(FACECOMP), "serve", "--host", "127.0.0.1", "--port", str(port),
                               *(["--model", model] if model else [])])
    try:
        wait_healthy(url, server)
        with tempfile.TemporaryDirectory() as tmp, sync_playwright() as p:
            photo = Path(tmp) / "astronaut.png"
            Image.fromarray(data.astronaut()).save(photo)
            browser = p.chromium.launch(executable_path=chromium, args=[
                "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"])
            try:
                page = browser.new_page(viewport={"width": VIEWPORT[0], "height": VIEWPORT[1]})
                page.goto(url)
                page.set_input_files("#file", str(photo))
                page.wait_for_function("document.getElementById('status').textContent.includes('brush over')")
                box = page.locator("#maskView").bounding_box()
                scale = box["width"] / 512
                page.mouse.move(box["x"] + EYES_X0 * scale, box["y"] + EYES_Y * scale)
                page.mouse.down()
                for x in range(EYES_X0, EYES_X1 + 1, 10):
                    page.mouse.move(box["x"] + x * scale, box["y"] + EYES_Y * scale)
                page.mouse.up()
                page.click("#complete")
                page.wait_for_selector("figure[data-blend='poisson'] img", timeout=300_000)
                page.screenshot(path=str(out / "serve.png"), full_page=True)
            finally:
                browser.close()
    finally:
        server.terminate()
        server.wait(timeout=30)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="generator weights (default: the shipped model)")
    ap.add_argument("--out", type=Path, default=REPO / "docs")
    ap.add_argument("--only", choices=["demo", "serve"], help="remake one picture")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.only in (None, "demo"):
        demo_picture(args.out, args.model)
        print(f"wrote {args.out / 'demo.png'}")
    if args.only in (None, "serve"):
        serve_picture(args.out, args.model)
        print(f"wrote {args.out / 'serve.png'}")


if __name__ == "__main__":
    main()
