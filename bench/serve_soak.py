"""Soak of a real `facecomp serve` on loopback: two worker processes, the API key on, minutes of mixed
traffic, bounded in time and in requests. What a server exposed for days meets, compressed: aligned faces
and unaligned photos, bad inputs (not an image, an empty body, an empty file, a huge dimension, a header
claiming a huge one, a mask of the wrong size), requests with no key or the wrong one, a client that sends
its body slowly, and clients that hang up mid-body or before the answer.

    .venv/bin/python bench/serve_soak.py --seconds 240 --out bench/results/serve_soak_2026-12-06.json

Reports requests served, answers by status (and any the case did not expect), p50/p99 latency of the
completions, the resident memory (VmRSS from /proc/<pid>/status) of the worker processes summed, at start
(workers loaded, no request yet), after a warm-up that sends every kind of request, and at the end; whether a
worker was replaced (uvicorn restarts a worker that dies or stops answering its health check, which would
hide both a crash and a leak) and tracebacks in the server's log. Memory growth is judged from the warm-up
on: the first requests build what a worker keeps for its life (dlib's detectors, allocator pools).
The photos are read from facecomp.config.data_home() (celeba/img_align_celeba, celeba_wild/img_celeba),
never copied.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import random
import secrets
import signal
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np

REPO = Path(__file__).resolve().parent.parent
DROPPED = "dropped"  # the client hung up on purpose: no status to expect
SLOW_ON_PURPOSE = ("slow_body",)  # cases whose latency is the client's own pace, not the server's
PRESETS = ("O1", "O2", "O3", "O4", "O5", "O6")


# ---------------------------------------------------------------- the server and its memory

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_kib(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:  # the process is gone
        return None
    return None


def children(pid: int) -> list[int]:
    """Processes whose parent is ``pid`` (read from /proc/*/stat: the parent follows the name in parentheses)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return sorted(found)


def worker_pids(supervisor: int) -> list[int]:
    """uvicorn's worker processes: the supervisor's children started by multiprocessing's spawn (not its
    resource tracker)."""
    workers = []
    for pid in children(supervisor):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"spawn_main" in cmdline:
            workers.append(pid)
    return workers


def descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        kids = children(todo.pop())
        found += kids
        todo += kids
    return found


def memory(supervisor: int) -> dict:
    """RSS in MiB: each worker, the workers summed, and every process of the server summed (the supervisor, its
    resource tracker, and the CNN face detector's process a worker starts when HOG finds no face)."""
    workers = worker_pids(supervisor)
    per_worker = {pid: rss_kib(pid) for pid in workers}
    everything = [rss_kib(p) for p in [supervisor, *descendants(supervisor)]]
    return {"t": round(time.time(), 1), "workers": workers,
            "worker_rss_mib": {str(p): round(k / 1024, 1) for p, k in per_worker.items() if k is not None},
            "workers_rss_mib": round(sum(k for k in per_worker.values() if k) / 1024, 1),
            "all_processes_rss_mib": round(sum(k for k in everything if k) / 1024, 1)}


@dataclass
class Server:
    proc: subprocess.Popen
    url: str
    port: int
    log: Path


def start_server(workers: int, key: str, model: str | None, torch_threads: int, log: Path) -> Server:
    """`python -m facecomp serve --workers N` with the key in $FACECOMP_API_KEY (off the command line); returns
    once every worker has finished starting."""
    port = free_port()
    env = {**os.environ, "FACECOMP_API_KEY": key}
    if torch_threads:  # N workers on a few cores: each worker's own OpenMP team would fight the others
        env["OMP_NUM_THREADS"] = str(torch_threads)
    cmd = [sys.executable, "-m", "facecomp", "serve", "--workers", str(workers), "--port", str(port)]
    if model:
        cmd += ["--model", model]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=REPO, env=env)
    server = Server(proc, f"http://127.0.0.1:{port}", port, log)
    deadline = time.time() + 300
    while log.read_text(errors="replace").count("Application startup complete") < workers:
        if proc.poll() is not None or time.time() > deadline:
            stop_server(server)
            raise SystemExit(f"the server did not start:\n{log.read_text(errors='replace')[-3000:]}")
        time.sleep(0.5)
    return server


def stop_server(server: Server) -> None:
    if server.proc.poll() is None:
        server.proc.send_signal(signal.SIGINT)
        try:
            server.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.proc.kill()
            server.proc.wait()


# ---------------------------------------------------------------- inputs

def png(image) -> bytes:
    """A numpy array or a PIL image as PNG bytes."""
    from PIL import Image

    buf = io.BytesIO()
    (image if isinstance(image, Image.Image) else Image.fromarray(image)).save(buf, format="PNG")
    return buf.getvalue()


def claimed_size_png(width: int, height: int) -> bytes:
    """A few bytes of PNG whose header claims ``width`` x ``height``: refused from the header, never decoded."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + \
        chunk(b"IEND", b"")


def aligned_faces(data: Path, count: int) -> list[bytes]:
    """CelebA-aligned faces as their own JPEG files, spread over the folder."""
    files = sorted((data / "celeba" / "img_align_celeba").glob("*.jpg"))
    if not files:
        raise SystemExit(f"no aligned faces under {data / 'celeba' / 'img_align_celeba'} (set FACECOMP_DATA)")
    step = max(1, len(files) // count)
    return [f.read_bytes() for f in files[::step][:count]]


def wild_photos(data: Path, count: int) -> list[bytes]:
    """Unaligned celeba_wild photos as their own JPEG files, those dlib's HOG detector finds a face in (the CNN
    fallback the server would try on the others costs seconds a photo on this CPU and would drown the mix)."""
    from facecomp import faces, images

    if not faces.available():
        print("note: no 'faces' extra here: the mix has no unaligned photos", file=sys.stderr)
        return []
    hog_only = {up: faces.LandmarkDetector(upsample=up, cnn_fallback=False) for up in (0, 1)}
    found = []
    for f in sorted((data / "celeba_wild" / "img_celeba").glob("*.jpg")):
        raw = f.read_bytes()
        rgb = images.decode(raw)
        if max(rgb.shape[:2]) <= 1200 and hog_only[faces.detector_for(rgb).upsample].boxes(rgb)[0]:
            found.append(raw)
        if len(found) >= count:
            break
    return found


def brushed_mask(jpeg: bytes, rng: random.Random) -> bytes:
    """A white box (what a brush leaves) on black, the photo's size, somewhere on the face."""
    from facecomp import images

    h, w = images.decode(jpeg).shape[:2]
    m = np.zeros((h, w), np.uint8)
    x, y = rng.randrange(w // 4, w // 2), rng.randrange(h // 3, h // 2)
    m[y:y + rng.randrange(10, h // 3), x:x + rng.randrange(10, w // 3)] = 255
    return png(m)


# ---------------------------------------------------------------- requests

@dataclass
class Outcome:
    case: str
    status: int | str  # an HTTP status, DROPPED, or the client's exception's name
    seconds: float
    expected: bool


class Mix:
    """The request cases, each a function of (client, rng) -> status, with the statuses it may get and its
    weight in the mix."""

    def __init__(self, server: Server, key: str, aligned: list[bytes], wild: list[bytes]):
        self.server, self.key, self.aligned, self.wild = server, key, aligned, wild
        self.complete_url = f"{server.url}/v1/complete"
        self.auth = {"Authorization": f"Bearer {key}"}
        from PIL import Image

        huge = png(Image.new("1", (4000, 4000)))  # 16 MP, a few kB
        self.bad_bodies = {"huge_dimension": huge, "claimed_dimension": claimed_size_png(100_000, 100_000)}
        ok, refused, gone = {200}, {401}, {DROPPED}
        self.cases: dict[str, tuple[object, set, int]] = {
            "aligned": (self.aligned_preset, ok, 6),
            "aligned_mask": (self.aligned_mask, ok, 3),
            "aligned_json": (self.aligned_json, ok, 2),
            "not_an_image": (self.not_an_image, {415}, 1),
            "empty_body": (self.empty_body, {415}, 1),
            "empty_file": (self.empty_file, {400}, 1),
            "huge_dimension": (self.huge_dimension, {413}, 1),
            "claimed_dimension": (self.claimed_dimension, {413}, 1),
            "wrong_mask": (self.wrong_mask, {422}, 1),
            "no_key": (self.no_key, refused, 1),
            "wrong_key": (self.wrong_key, refused, 1),
            "slow_body": (self.slow_body, ok, 1),
            "drop_mid_body": (self.drop_mid_body, gone, 1),
            "drop_before_answer": (self.drop_before_answer, gone, 1),
        }
        if wild:
            self.cases["wild"] = (self.wild_preset, ok, 4)

    def keep(self, names: list[str]) -> None:
        unknown = set(names) - set(self.cases)
        if unknown:
            raise SystemExit(f"unknown cases {sorted(unknown)}; the cases are {sorted(self.cases)}")
        self.cases = {n: c for n, c in self.cases.items() if n in names}

    def pick(self, rng: random.Random) -> str:
        names = list(self.cases)
        return rng.choices(names, weights=[self.cases[n][2] for n in names])[0]

    def run(self, name: str, client: httpx.Client, rng: random.Random) -> Outcome:
        send, expected, _ = self.cases[name]
        t = time.perf_counter()
        try:
            status = send(client, rng)
        except (httpx.HTTPError, OSError) as e:  # a refused or reset connection, a timeout: the server's fault here
            status = type(e).__name__
        return Outcome(name, status, time.perf_counter() - t, status in expected)

    def form(self, client, photo: bytes, name: str = "photo.jpg", headers: dict | None = None, **fields) -> int:
        files = {"image": (name, photo, "image/jpeg")}
        if "mask" in fields:
            files["mask"] = ("mask.png", fields.pop("mask"), "image/png")
        r = client.post(self.complete_url, files=files, data={k: str(v) for k, v in fields.items()},
                        headers=self.auth if headers is None else headers, timeout=120)
        r.read()
        return r.status_code

    def aligned_preset(self, client, rng):
        return self.form(client, rng.choice(self.aligned), preset=rng.choice(PRESETS), seed=rng.randrange(1000))

    def aligned_mask(self, client, rng):
        face = rng.choice(self.aligned)
        return self.form(client, face, mask=brushed_mask(face, rng), format="jpg")

    def aligned_json(self, client, rng):
        body = {"image": "data:image/jpeg;base64," + base64.b64encode(rng.choice(self.aligned)).decode(),
                "preset": rng.choice(PRESETS), "samples": 2, "blend": "both", "format": "json"}
        return client.post(self.complete_url, json=body, headers=self.auth, timeout=120).status_code

    def wild_preset(self, client, rng):
        return self.form(client, rng.choice(self.wild), preset="O3")

    def not_an_image(self, client, rng):
        return self.form(client, b"this is text, not a picture " * 20, name="notes.txt", preset="O3")

    def empty_body(self, client, rng):
        return client.post(self.complete_url, headers=self.auth, timeout=60).status_code

    def empty_file(self, client, rng):
        return self.form(client, b"", preset="O3")

    def huge_dimension(self, client, rng):
        return self.form(client, self.bad_bodies["huge_dimension"], name="huge.png", preset="O3")

    def claimed_dimension(self, client, rng):
        return self.form(client, self.bad_bodies["claimed_dimension"], name="claims.png", preset="O3")

    def wrong_mask(self, client, rng):
        return self.form(client, rng.choice(self.aligned), mask=png(np.full((10, 10), 255, np.uint8)))

    def no_key(self, client, rng):
        return self.form(client, rng.choice(self.aligned), headers={}, preset="O3")

    def wrong_key(self, client, rng):
        wrong = {"Authorization": f"Bearer {secrets.token_urlsafe(32)}"}
        return self.form(client, rng.choice(self.aligned), headers=wrong, preset="O3")

    def raw_request(self, rng) -> tuple[bytes, bytes]:
        """A multipart completion request's head and body, as the wire carries them."""
        req = httpx.Request("POST", self.complete_url, headers={**self.auth, "Connection": "close"},
                            files={"image": ("face.jpg", rng.choice(self.aligned), "image/jpeg")},
                            data={"preset": rng.choice(PRESETS)})
        body = req.read()
        head = "POST /v1/complete HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in req.headers.multi_items())
        return (head + "\r\n").encode("latin-1"), body

    def slow_body(self, client, rng):
        """The body in 16 pieces over about 3 s, as a client on a slow link sends it."""
        head, body = self.raw_request(rng)
        with socket.create_connection(("127.0.0.1", self.server.port), timeout=120) as s:
            s.sendall(head)
            step = -(-len(body) // 16)
            for i in range(0, len(body), step):
                s.sendall(body[i:i + step])
                time.sleep(0.2)
            return read_status(s)

    def drop_mid_body(self, client, rng):
        head, body = self.raw_request(rng)
        with socket.create_connection(("127.0.0.1", self.server.port), timeout=30) as s:
            s.sendall(head + body[:len(body) // 2])
            time.sleep(0.3)
        return DROPPED

    def drop_before_answer(self, client, rng):
        head, body = self.raw_request(rng)
        with socket.create_connection(("127.0.0.1", self.server.port), timeout=30) as s:
            s.sendall(head + body)
            time.sleep(0.01)  # the server has it all and is working on it
        return DROPPED


def read_status(s: socket.socket) -> int:
    """The status code of an HTTP/1.1 answer on ``s`` (the request said Connection: close), its body read."""
    data = b""
    while chunk := s.recv(65536):
        data += chunk
    if not data.startswith(b"HTTP/1.1 "):
        raise ConnectionError(f"not an HTTP answer: {data[:40]!r}")
    return int(data.split(b" ", 2)[1])


# ---------------------------------------------------------------- the soak

def drive(mix: Mix, clients: int, seconds: float, max_requests: int, seed: int, only: list[str] | None = None
          ) -> list[Outcome]:
    """``clients`` threads, each with its own keep-alive connection and seeded choices, until ``seconds`` pass or
    ``max_requests`` are sent; ``only``: cycle through those cases instead of drawing from the mix."""
    outcomes: list[Outcome] = []
    lock = threading.Lock()
    stop = time.perf_counter() + seconds

    def client_loop(k: int) -> None:
        rng = random.Random(seed * 1000 + k)
        with httpx.Client() as client:
            while time.perf_counter() < stop:
                with lock:
                    if len(outcomes) >= max_requests:
                        return
                    n = len(outcomes)
                name = only[(n + k) % len(only)] if only else mix.pick(rng)
                outcome = mix.run(name, client, rng)
                with lock:
                    outcomes.append(outcome)

    threads = [threading.Thread(target=client_loop, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return outcomes


def sample_memory(supervisor: int, every: float, until: threading.Event, into: list[dict]) -> None:
    while not until.wait(every):
        into.append(memory(supervisor))


def percentile(sorted_values: list[float], q: float) -> float | None:
    if not sorted_values:
        return None
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def summarize(outcomes: list[Outcome], wall: float) -> dict:
    statuses = Counter(str(o.status) for o in outcomes)
    ok = sorted(o.seconds for o in outcomes if o.status == 200)
    unexpected = Counter(f"{o.case}: {o.status}" for o in outcomes if not o.expected)
    by_case = {}
    for name in sorted({o.case for o in outcomes}):
        mine = [o for o in outcomes if o.case == name]
        times = sorted(o.seconds for o in mine)
        by_case[name] = {"sent": len(mine), "statuses": dict(Counter(str(o.status) for o in mine)),
                         "p50_ms": round(1000 * statistics.median(times), 1),
                         "p99_ms": round(1000 * percentile(times, 0.99), 1)}
    brisk = sorted(o.seconds for o in outcomes if o.status == 200 and o.case not in SLOW_ON_PURPOSE)
    return {"requests_sent": len(outcomes), "served_200": statuses.get("200", 0),
            "requests_per_s": round(len(outcomes) / wall, 2), "wall_s": round(wall, 1),
            "by_status": dict(sorted(statuses.items())),
            "errors_by_status": {k: v for k, v in sorted(statuses.items()) if k != "200"},
            "server_errors_5xx": sum(v for k, v in statuses.items() if k.isdigit() and int(k) >= 500),
            "unexpected": dict(unexpected),
            "p50_ms": round(1000 * statistics.median(ok), 1) if ok else None,
            "p99_ms": round(1000 * percentile(ok, 0.99), 1) if ok else None,
            # the same without the slow-body client, whose seconds are its own pauses
            "p50_ms_brisk_clients": round(1000 * statistics.median(brisk), 1) if brisk else None,
            "p99_ms_brisk_clients": round(1000 * percentile(brisk, 0.99), 1) if brisk else None,
            "by_case": by_case}


def growth_pct(before: float, after: float) -> float:
    return round(100 * (after - before) / before, 2) if before else float("nan")


def main() -> None:
    from facecomp.config import data_home

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=240, help="length of the soak (after the warm-up)")
    ap.add_argument("--max-requests", type=int, default=20_000, help="stop earlier after this many requests")
    ap.add_argument("--clients", type=int, default=4, help="concurrent clients (each worker admits 8 at once)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--warmup", type=float, default=60,
                    help="seconds of the mix (after two requests of every case) before the baseline memory is taken")
    ap.add_argument("--model", help="generator weights (default: the shipped model)")
    ap.add_argument("--torch-threads", type=int, default=1, help="OMP_NUM_THREADS of the server (0: torch's default)")
    ap.add_argument("--aligned", type=int, default=32, help="aligned faces in the mix")
    ap.add_argument("--wild", type=int, default=12, help="unaligned photos in the mix")
    ap.add_argument("--memory-every", type=float, default=10, help="seconds between memory samples")
    ap.add_argument("--cases", help="comma-separated: only these request cases (default: the whole mix)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--log", type=Path, help="the server's log (default: a temporary file)")
    ap.add_argument("--out", type=Path, help="the report, JSON")
    args = ap.parse_args()

    data = data_home(REPO.parent / "shared" / "data")
    aligned, wild = aligned_faces(data, args.aligned), wild_photos(data, args.wild)
    key = secrets.token_urlsafe(32)
    log = args.log or Path(f"/tmp/serve_soak_{os.getpid()}.log")
    server = start_server(args.workers, key, args.model, args.torch_threads, log)
    try:
        mix = Mix(server, key, aligned, wild)
        if args.cases:
            mix.keep(args.cases.split(","))
        at_start = memory(server.proc.pid)
        # Every case twice, then the mix: the baseline is taken once the workers have met all of it (a rare
        # concurrence of large requests still raises the heaps' high-water mark later; that counts as growth).
        t0 = time.perf_counter()
        warm = drive(mix, args.clients, 600, 2 * len(mix.cases), args.seed + 1, only=list(mix.cases))
        warm += drive(mix, args.clients, args.warmup, args.max_requests, args.seed + 2)
        warm_wall = time.perf_counter() - t0
        after_warmup = memory(server.proc.pid)
        samples: list[dict] = []
        done = threading.Event()
        sampler = threading.Thread(target=sample_memory, args=(server.proc.pid, args.memory_every, done, samples))
        sampler.start()
        t0 = time.perf_counter()
        outcomes = drive(mix, args.clients, args.seconds, args.max_requests, args.seed)
        wall = time.perf_counter() - t0
        done.set()
        sampler.join()
        time.sleep(1)  # connections the drop cases left are closed by now
        at_end = memory(server.proc.pid)
        health = httpx.get(f"{server.url}/healthz", timeout=10).json()
    finally:
        stop_server(server)
    text = log.read_text(errors="replace")
    report = {
        "date": time.strftime("%Y-%m-%d"), "cpus": os.cpu_count(), "load_avg_at_end": os.getloadavg(),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "workers": args.workers, "clients": args.clients, "torch_threads": args.torch_threads,
        "inputs": {"aligned_faces": len(aligned), "wild_photos": len(wild)},
        "cases": {n: {"expects": sorted(map(str, c[1])), "weight": c[2]} for n, c in mix.cases.items()},
        "warmup": summarize(warm, warm_wall),
        **summarize(outcomes, wall),
        "memory": {"at_start": at_start, "after_warmup": after_warmup, "at_end": at_end, "samples": samples,
                   "workers_rss_mib_start": at_start["workers_rss_mib"],
                   "workers_rss_mib_after_warmup": after_warmup["workers_rss_mib"],
                   "workers_rss_mib_end": at_end["workers_rss_mib"],
                   "workers_rss_mib_max_after_warmup": max(x["workers_rss_mib"] for x in [after_warmup, *samples,
                                                                                           at_end]),
                   "growth_pct_from_start": growth_pct(at_start["workers_rss_mib"], at_end["workers_rss_mib"]),
                   "growth_pct_from_warmup": growth_pct(after_warmup["workers_rss_mib"], at_end["workers_rss_mib"])},
        "workers_replaced": sorted(set(at_start["workers"]) ^ set(at_end["workers"])),
        "server_tracebacks": text.count("Traceback"), "server_log": str(log), "healthz_at_end": health,
    }
    print(json.dumps({k: v for k, v in report.items() if k not in ("memory", "by_case", "cases", "warmup")},
                     indent=1))
    print(json.dumps({"by_case": report["by_case"]}, indent=1))
    m = report["memory"]
    print(f"served {report['served_200']} of {report['requests_sent']} in {report['wall_s']} s; "
          f"errors {report['errors_by_status']}; 5xx {report['server_errors_5xx']}; unexpected "
          f"{report['unexpected'] or 'none'}; p50 {report['p50_ms']} ms, p99 {report['p99_ms']} ms "
          f"({report['p50_ms_brisk_clients']} / {report['p99_ms_brisk_clients']} without the slow client); "
          f"workers' RSS "
          f"{m['workers_rss_mib_start']} MiB at start, {m['workers_rss_mib_after_warmup']} after warm-up, "
          f"{m['workers_rss_mib_end']} at the end ({m['growth_pct_from_warmup']:+}% from warm-up); "
          f"workers replaced {report['workers_replaced'] or 'none'}; tracebacks {report['server_tracebacks']}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
