"""Load on `facecomp serve` over loopback: latency p50/p99 and requests/s at several concurrencies,
memory over many requests, and the intended 503s. Bounded in requests and in time.

    .venv/bin/python bench/serve_load.py --requests 200 --concurrency 1,4,16 --out bench/results/serve_load.json
    .venv/bin/python bench/serve_load.py --variants eager:1,eager:8,aoti-bf16:8,onnx-fp32:8 ...

Starts the servers itself (uvicorn in this process's threads, one model each), sends an aligned
178x218 face with the O3 preset (the aligned path: no detector in the loop) from a thread pool of
httpx clients, and reads the process's resident memory before and after. ``--variants`` compares
models side by side: NAME:MAX_BATCH, NAME one of eager, aoti-fp32, aoti-bf16, onnx-fp32 (artifacts
of the same weights built first with facecomp.export), MAX_BATCH the server's --max-batch; at each
concurrency level every variant runs in turn, so drift on a shared machine hits all alike.
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import socket
import statistics
import tempfile
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

    from facecomp.serve.app import ServeConfig, create_app

    ap = argparse.ArgumentParser()
    ap.add_argument("--model", help="generator weights (default: shipped)")
    ap.add_argument("--variants", default="eager:8", help="NAME:MAX_BATCH,... (see the module docstring)")
    ap.add_argument("--requests", type=int, default=200, help="requests sent per concurrency level (503s count)")
    ap.add_argument("--concurrency", default="1,4,16")
    ap.add_argument("--max-pending", type=int, default=8)
    ap.add_argument("--time-limit", type=float, default=300, help="seconds per level at most")
    ap.add_argument("--out")
    args = ap.parse_args()

    tmp = tempfile.TemporaryDirectory()
    servers = {}
    for spec in args.variants.split(","):
        name, max_batch = spec.rsplit(":", 1)
        engine = build_engine(name, args.model, Path(tmp.name)) if name != "eager" else None
        cfg = ServeConfig(model=None if engine else args.model, engine=engine, max_pending=args.max_pending,
                          max_batch=int(max_batch))
        servers[spec] = start(create_app(cfg))
    body = face_png()

    def one(client: httpx.Client, url: str) -> tuple[int, float]:
        t = time.perf_counter()
        r = client.post(url, files={"image": ("f.png", body, "image/png")}, data={"preset": "O3"}, timeout=120)
        if r.status_code == 503:  # a well-behaved client: wait as told before its next request
            time.sleep(float(r.headers.get("retry-after", "1")))
        return r.status_code, time.perf_counter() - t

    with httpx.Client() as warm:
        for url, _ in servers.values():
            for _ in range(3):
                one(warm, url)
    results = {"device": platform.processor() or platform.machine(), "date": time.strftime("%Y-%m-%d"),
               "max_pending": args.max_pending, "rss_mb_start": round(rss_mb(), 1), "levels": []}
    for c in [int(x) for x in args.concurrency.split(",")]:
        for spec, (url, app) in servers.items():
            level = {"variant": spec, **run_level(one, url, c, args.requests, args.time_limit)}
            stats = app.state.runner.batcher.stats
            level["generator_passes_total"], level["generator_calls_total"] = stats.passes, stats.calls
            results["levels"].append(level)
            print(json.dumps(level), flush=True)
    results["rss_mb_end"] = round(rss_mb(), 1)
    print(json.dumps(results, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))


def build_engine(name: str, model: str | None, folder: Path) -> str:
    from facecomp.export import BatchRange, ExportConfig, export_artifact

    fmt, precision = name.split("-")
    out = folder / name
    export_artifact(out, ExportConfig(format=fmt, precision=precision, batch=BatchRange(1, 1, 32)), model,
                    check_batches=(2,))
    return str(out)


def start(app) -> tuple[str, object]:
    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=srv.run, daemon=True).start()
    while not srv.started:
        time.sleep(0.05)
    return f"http://127.0.0.1:{port}/v1/complete", app


def run_level(one, url: str, c: int, requests: int, time_limit: float) -> dict:
    import httpx

    stop = time.perf_counter() + time_limit
    latencies, codes = [], []
    clients = [httpx.Client() for _ in range(c)]
    lock = threading.Lock()

    def worker(k: int) -> None:
        while time.perf_counter() < stop:
            with lock:
                if len(codes) >= requests:
                    return
                codes.append(None)
                slot = len(codes) - 1
            code, dt = one(clients[k], url)
            codes[slot] = code
            if code == 200:
                latencies.append(dt)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(c) as pool:
        list(pool.map(worker, range(c)))
    wall = time.perf_counter() - t0
    for cl in clients:
        cl.close()
    done = [x for x in codes if x is not None]
    lat = sorted(latencies)
    return {"concurrency": c, "requests": len(done), "ok": done.count(200), "busy_503": done.count(503),
            "other_errors": len([x for x in done if x not in (200, 503)]),
            "p50_ms": round(1000 * statistics.median(lat), 1) if lat else None,
            "p99_ms": round(1000 * lat[min(len(lat) - 1, int(0.99 * len(lat)))], 1) if lat else None,
            "ok_per_s": round(done.count(200) / wall, 2), "rss_mb": round(rss_mb(), 1)}


if __name__ == "__main__":
    main()
