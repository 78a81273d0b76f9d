"""A whole completion of an unaligned photo, stage by stage: decode, detect (dlib HOG/CNN + 68
landmarks), align + paste (OpenCV warps, fill/composite, the warp back), generator, encode (PNG).

Photos come from ``celeba_wild`` (unaligned CelebA originals), bucketed by their longer side. Each
photo is completed under O3 once to warm up, then ``--repeats`` times; reported per bucket: the
median over photos of each stage's median. Side by side in the same run: the detector built once per
process (``faces.shared_detector``, today) and built anew for every photo (before: what every file of
a folder run and every serve request paid). The generator is the shipped eager model, or an artifact
of ``facecomp export`` with ``--engine`` (e.g. AOTInductor bf16).

    python bench/wild_photo.py [--engine ARTIFACT] [--photos 8] [--repeats 5] [--out bench/results/x.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from datetime import date
from pathlib import Path

from facecomp import faces, images
from facecomp.complete import Completer
from facecomp.runtime import tune_allocator
from facecomp.wild import complete_photo

BUCKETS = ((0, 260, "~200 px"), (260, 560, "~400 px"), (560, 10**6, "600+ px"))


class Timed:
    """Wraps a callable, summing the seconds spent in it (the generator; the detector's search)."""

    def __init__(self, fn, name: str):
        self.fn, self.name, self.seconds = fn, name, 0.0
        self.cfg = getattr(fn, "cfg", None)

    def __call__(self, *args, **kwargs):
        t = time.perf_counter()
        try:
            return self.fn(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - t


class TimedDetector:
    def __init__(self, detector):
        self.detector, self.seconds = detector, 0.0

    def all(self, rgb):
        t = time.perf_counter()
        try:
            return self.detector.all(rgb)
        finally:
            self.seconds += time.perf_counter() - t


def one(completer: Completer, data: bytes, shared: bool) -> dict[str, float]:
    gen = completer.generator
    t0 = time.perf_counter()
    photo = images.decode(data)
    t1 = time.perf_counter()
    upsample = 1 if max(photo.shape[:2]) < 500 else 0
    built = time.perf_counter()
    detector = TimedDetector(faces.shared_detector(upsample) if shared else faces.LandmarkDetector(upsample))
    built = time.perf_counter() - built
    timed = completer.generator = Timed(gen, "generator")
    try:
        t2 = time.perf_counter()
        result = complete_photo(completer, photo, "O3", seed=0, detector=detector)
        t3 = time.perf_counter()
    finally:
        completer.generator = gen
    png = images.encode_png(result.images[0]) if hasattr(images, "encode_png") else None
    if png is None:
        import cv2

        ok, png = cv2.imencode(".png", result.images[0][..., ::-1])
    t4 = time.perf_counter()
    paste = (t3 - t2) - detector.seconds - timed.seconds
    return {"decode": t1 - t0, "detector_build": built, "detect": detector.seconds, "generator": timed.seconds,
            "align_paste": paste, "encode": t4 - t3, "total": (t1 - t0) + built + (t3 - t2) + (t4 - t3)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=os.environ.get("FACECOMP_DATA", "../shared/data") + "/celeba_wild")
    ap.add_argument("--engine", help="artifact of facecomp export to run the generator")
    ap.add_argument("--photos", type=int, default=8, help="photos per size bucket")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out")
    args = ap.parse_args()
    tune_allocator()
    if args.engine:
        from facecomp.export import open_generator

        completer = Completer(open_generator(None, args.engine, "cpu"))
    else:
        completer = Completer()
    files = sorted((Path(args.data) / "img_celeba").glob("*.jpg"))
    by_bucket: dict[str, list[tuple[Path, bytes]]] = {name: [] for *_, name in BUCKETS}
    for f in files:
        data = f.read_bytes()
        h, w = images.decode(data).shape[:2]
        for lo, hi, name in BUCKETS:
            if lo <= max(h, w) < hi and len(by_bucket[name]) < args.photos:
                try:  # photos where dlib finds a face only
                    complete_photo(completer, images.decode(data), "O3", detector=faces.shared_detector(
                        1 if max(h, w) < 500 else 0))
                except ValueError:
                    break
                by_bucket[name].append((f, data))
    report: dict = {"date": date.today().isoformat(), "machine": platform.processor() or platform.machine(),
                    "cpus": os.cpu_count(), "generator": args.engine or "eager fp32 (shipped)",
                    "repeats": args.repeats, "buckets": {}}
    for name, photos in by_bucket.items():
        row = {}
        for mode, shared in (("shared detector", True), ("detector per photo", False)):
            per_photo = []
            for _, data in photos:
                one(completer, data, shared)  # warm-up
                runs = [one(completer, data, shared) for _ in range(args.repeats)]
                per_photo.append({k: statistics.median(r[k] for r in runs) for k in runs[0]})
            row[mode] = ({k: 1000 * statistics.median(p[k] for p in per_photo) for k in per_photo[0]}
                         if per_photo else {})
        report["buckets"][name] = {"photos": len(photos), "ms": row}
        print(name, len(photos), "photos")
        for mode, ms in row.items():
            print(f"  {mode:20s} " + "  ".join(f"{k} {v:.1f}" for k, v in ms.items()))
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
