"""Load on `facecomp serve` over loopback: latency p50/p99 and requests/s at several concurrencies,
where each request's time goes in the server (its ``Server-Timing`` header: decode, detect, align,
generator, paste, encode), memory over many requests, and the intended 503s. Bounded in requests and in time.

    .venv/bin/python bench/serve_load.py --requests 200 --concurrency 1,4,16 --out bench/results/serve_load.json
    .venv/bin/python bench/serve_load.py --variants eager:1,eager:8,aoti-bf16:8,onnx-fp32:8 ...
    .venv/bin/python bench/serve_load.py --inputs aligned,wild --photos 4 --concurrency 1,4 ...

Starts the servers itself (uvicorn in this process's threads, one model each) and sends, from a thread
pool of httpx clients, each request with the O3 preset. ``--inputs``: ``aligned``, one 178x218
CelebA-aligned face as PNG (no detector in the loop); ``wild``, unaligned ``celeba_wild`` photos as
their own JPEG files (decode, detect and align on every request), ``--photos`` per size bucket of the
longer side (~200, ~400, 600+ px) among those where dlib's HOG detector finds the face, and
``--cnn-photos`` where only its CNN fallback does (seconds a photo), cycled through; each input, bucket
and the CNN photos is its own row. The photos are read from $FACECOMP_DATA (default ../shared/data) and never
copied. The stage figures are medians over a row's completed requests of what the server measured;
the latencies are the client's. ``--variants`` compares models side by side: NAME:MAX_BATCH, NAME one
of eager, aoti-fp32, aoti-bf16, onnx-fp32 (artifacts of the same weights built first with
facecomp.export), MAX_BATCH the server's --max-batch; at each concurrency level every variant runs in
turn, so drift on a shared machine hits all alike.
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import os
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


DATA = Path(os.environ.get("FACECOMP_DATA", Path(__file__).resolve().parent.parent.parent / "shared" / "data"))
BUCKETS = ((0, 260, "~200 px"), (260, 560, "~400 px"), (560, 10**6, "600+ px"))  # longer side, as wild_photo.py


def face_png() -> bytes:
    from PIL import Image

    files = sorted((DATA / "celeba" / "img_align_celeba").glob("*.jpg"))
    img = np.asarray(Image.open(files[0]).convert("RGB")) if files else \
        np.random.default_rng(0).integers(0, 255, (218, 178, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def wild_photos(per_bucket: int, cnn_photos: int, url: str) -> dict[str, list[tuple[str, bytes]]]:
    """celeba_wild photos the server completes, by row: ``per_bucket`` per size bucket among those dlib's HOG
    detector finds a face in (most photos, tens of ms), and ``cnn_photos`` where only the CNN fallback
    does (seconds each, a row of its own so that it does not swamp the buckets' medians)."""
    import httpx

    from facecomp import faces, images

    hog_only = {up: faces.LandmarkDetector(upsample=up, cnn_fallback=False) for up in (0, 1)}
    rows: dict[str, list[tuple[str, bytes]]] = {f"wild {n} JPEG": [] for *_, n in BUCKETS}
    rows["wild, CNN fallback, JPEG"] = []
    with httpx.Client() as client:
        for f in sorted((DATA / "celeba_wild" / "img_celeba").glob("*.jpg")):
            data = f.read_bytes()
            rgb = images.decode(data)
            hog = bool(hog_only[faces.detector_for(rgb).upsample].boxes(rgb)[0])
            longer = max(rgb.shape[:2])
            row = next(f"wild {n} JPEG" for lo, hi, n in BUCKETS if lo <= longer < hi) if hog else \
                "wild, CNN fallback, JPEG"
            if len(rows[row]) < (per_bucket if hog else cnn_photos) and client.post(
                    url, files={"image": (f.name, data, "image/jpeg")}, data={"preset": "O3"},
                    timeout=120).status_code == 200:
                rows[row].append((f.name, data))
            if all(len(v) >= (cnn_photos if "CNN" in k else per_bucket) for k, v in rows.items()):
                break
    return {k: v for k, v in rows.items() if v}


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
    ap.add_argument("--inputs", default="aligned", help="aligned, wild or aligned,wild (see the module docstring)")
    ap.add_argument("--photos", type=int, default=4, help="wild photos per size bucket (HOG finds the face)")
    ap.add_argument("--cnn-photos", type=int, default=2, help="wild photos only the CNN fallback finds a face in")
    ap.add_argument("--cnn-requests", type=int, default=8, help="requests per level for those (seconds each)")
    ap.add_argument("--out")
    args = ap.parse_args()
    from facecomp.serve.timing import read_header

    tmp = tempfile.TemporaryDirectory()
    servers = {}
    for spec in args.variants.split(","):
        name, max_batch = spec.rsplit(":", 1)
        engine = build_engine(name, args.model, Path(tmp.name)) if name != "eager" else None
        cfg = ServeConfig(model=None if engine else args.model, engine=engine, max_pending=args.max_pending,
                          max_batch=int(max_batch))
        servers[spec] = start(create_app(cfg))
    inputs: dict[str, list[tuple[str, bytes, str]]] = {}
    if "aligned" in args.inputs.split(","):
        inputs["aligned 178x218 PNG"] = [("face.png", face_png(), "image/png")]
    if "wild" in args.inputs.split(","):  # chosen once, by the first server: every variant gets the same photos
        for row, photos in wild_photos(args.photos, args.cnn_photos, next(iter(servers.values()))[0]).items():
            inputs[row] = [(n, data, "image/jpeg") for n, data in photos]

    def sender(photos: list[tuple[str, bytes, str]]):
        turn, lock = itertools.cycle(photos), threading.Lock()

        def one(client: httpx.Client, url: str) -> tuple[int, float, dict[str, float] | None]:
            with lock:
                name, data, media = next(turn)
            t = time.perf_counter()
            r = client.post(url, files={"image": (name, data, media)}, data={"preset": "O3"}, timeout=120)
            dt = time.perf_counter() - t
            if r.status_code == 503:  # a well-behaved client: wait as told before its next request
                time.sleep(float(r.headers.get("retry-after", "1")))
            timing = r.headers.get("server-timing")
            return r.status_code, dt, read_header(timing) if timing else None

        return one

    senders = {name: sender(photos) for name, photos in inputs.items()}
    with httpx.Client() as warm:
        for url, _ in servers.values():
            for name, one in senders.items():
                for _ in range(1 if "CNN" in name else 3):
                    one(warm, url)
    results = {"device": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
               "date": time.strftime("%Y-%m-%d"), "max_pending": args.max_pending,
               "inputs": {name: [n for n, *_ in photos] for name, photos in inputs.items()},
               "rss_mb_start": round(rss_mb(), 1), "levels": []}
    for c in [int(x) for x in args.concurrency.split(",")]:
        for spec, (url, app) in servers.items():
            for name, one in senders.items():
                n = min(args.requests, args.cnn_requests) if "CNN" in name else args.requests
                level = {"variant": spec, "input": name, **run_level(one, url, c, n, args.time_limit)}
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
    latencies, codes, stages = [], [], []
    clients = [httpx.Client() for _ in range(c)]
    lock = threading.Lock()

    def worker(k: int) -> None:
        while time.perf_counter() < stop:
            with lock:
                if len(codes) >= requests:
                    return
                codes.append(None)
                slot = len(codes) - 1
            code, dt, timing = one(clients[k], url)
            codes[slot] = code
            if code == 200:
                latencies.append(dt)
                stages.append(timing)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(c) as pool:
        list(pool.map(worker, range(c)))
    wall = time.perf_counter() - t0
    for cl in clients:
        cl.close()
    done = [x for x in codes if x is not None]
    lat = sorted(latencies)
    server = {k: round(statistics.median(t[k] for t in stages), 1) for k in stages[0]} if stages else None
    return {"concurrency": c, "requests": len(done), "ok": done.count(200), "busy_503": done.count(503),
            "other_errors": len([x for x in done if x not in (200, 503)]),
            "p50_ms": round(1000 * statistics.median(lat), 1) if lat else None,
            "p99_ms": round(1000 * lat[min(len(lat) - 1, int(0.99 * len(lat)))], 1) if lat else None,
            "ok_per_s": round(done.count(200) / wall, 2), "server_ms_p50": server, "rss_mb": round(rss_mb(), 1)}


if __name__ == "__main__":
    main()
