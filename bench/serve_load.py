"""Load on `facecomp serve` over loopback: latency p50/p99 and requests/s at several concurrencies,
memory over many requests, and the intended 503s. Bounded in requests and in time.

    .venv/bin/python bench/serve_load.py --requests 200 --concurrency 1,4,16 --out bench/results/serve_load.json

Starts the server itself (uvicorn in this process's thread, one model), sends an aligned 178x218
face with the O3 preset (the aligned path: no detector in the loop) from a thread pool of httpx
clients, and reads the server process's resident memory before and after.
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import socket
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def face_png() -> bytes:
    from PIL import Image

    data = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "celeba" / "img_align_celeba"
    files = sorted(data.glob("*.jpg"))
    img = np.asarray(Image.open(files[0]).convert("RGB")) if files else \
        np.random.default_rng(0).integers(0, 255, (218, 178, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def main() -> None:
    import httpx
    import uvicorn

    from facecomp.serve.app import ServeConfig, create_app

    ap = argparse.ArgumentParser()
    ap.add_argument("--model", help="generator weights (default: shipped)")
    ap.add_argument("--requests", type=int, default=200, help="requests sent per concurrency level (503s count)")
    ap.add_argument("--concurrency", default="1,4,16")
    ap.add_argument("--max-pending", type=int, default=8)
    ap.add_argument("--time-limit", type=float, default=300, help="seconds per level at most")
    ap.add_argument("--out")
    args = ap.parse_args()

    app = create_app(ServeConfig(model=args.model, max_pending=args.max_pending))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=srv.run, daemon=True).start()
    while not srv.started:
        time.sleep(0.05)
    url = f"http://127.0.0.1:{port}/v1/complete"
    body = face_png()

    def one(client: httpx.Client) -> tuple[int, float]:
        t = time.perf_counter()
        r = client.post(url, files={"image": ("f.png", body, "image/png")}, data={"preset": "O3"}, timeout=120)
        if r.status_code == 503:  # a well-behaved client: wait as told before its next request
            time.sleep(float(r.headers.get("retry-after", "1")))
        return r.status_code, time.perf_counter() - t

    with httpx.Client() as warm:
        for _ in range(3):
            one(warm)
    results = {"device": platform.processor() or platform.machine(), "date": time.strftime("%Y-%m-%d"),
               "max_pending": args.max_pending, "rss_mb_start": round(rss_mb(), 1), "levels": []}
    for c in [int(x) for x in args.concurrency.split(",")]:
        stop = time.perf_counter() + args.time_limit
        latencies, codes = [], []
        clients = [httpx.Client() for _ in range(c)]

        def worker(k: int, clients=clients, stop=stop, latencies=latencies, codes=codes) -> None:
            while time.perf_counter() < stop:
                with lock:
                    if len(codes) >= args.requests:
                        return
                    codes.append(None)
                    slot = len(codes) - 1
                code, dt = one(clients[k])
                codes[slot] = code
                if code == 200:
                    latencies.append(dt)

        lock = threading.Lock()
        t0 = time.perf_counter()
        with ThreadPoolExecutor(c) as pool:
            list(pool.map(worker, range(c)))
        wall = time.perf_counter() - t0
        for cl in clients:
            cl.close()
        done = [x for x in codes if x is not None]
        lat = sorted(latencies)
        level = {"concurrency": c, "requests": len(done), "ok": done.count(200), "busy_503": done.count(503),
                 "other_errors": len([x for x in done if x not in (200, 503)]),
                 "p50_ms": round(1000 * statistics.median(lat), 1) if lat else None,
                 "p99_ms": round(1000 * lat[min(len(lat) - 1, int(0.99 * len(lat)))], 1) if lat else None,
                 "ok_per_s": round(done.count(200) / wall, 2), "rss_mb": round(rss_mb(), 1)}
        results["levels"].append(level)
        print(json.dumps(level))
    results["rss_mb_end"] = round(rss_mb(), 1)
    srv.should_exit = True
    print(json.dumps(results, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
