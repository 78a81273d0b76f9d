"""A whole completion of an unaligned photo, stage by stage: decode, detect, align, generator, paste, encode.

The stages are those of ``facecomp serve``'s ``Server-Timing`` header (``facecomp.serve.timing``, whose
clock this uses, so the two benchmarks measure the same thing): decode = the file's bytes to pixels;
detect = dlib's face search and 68 landmarks; align = from there to the generator (the 5-point fit, the
warp into the 178x218 layout, the 128x128 crop, the noise fill); generator = the generator call; paste =
from there to the completion (composite, warp back, paste under the mask); encode = PNG.

Photos come from ``celeba_wild`` (unaligned CelebA originals, never committed), bucketed by their longer
side; only photos where dlib finds a face are kept. Each is completed under O3 through
``Completer._complete`` (what ``Completer.complete(photo)``, ``facecomp complete`` and serve run),
once to warm up, then ``--repeats`` times; reported per bucket: the median over photos of each stage's
median, in ms. The detector is the process's shared one (``faces.shared_detector``);
``--detector-per-photo`` adds the row of a detector built for every photo (what every photo paid before it
was shared: the build lands in ``detect``). The generator is the shipped eager model, or an artifact of
``facecomp export`` with ``--engine`` (e.g. AOTInductor bf16).

    python bench/wild_photo.py [--engine ARTIFACT] [--photos 6] [--repeats 5] [--out bench/results/x.json]
"""

from __future__ import annotations

import argparse
import copy
import io
import json
import os
import platform
import statistics
from datetime import date
from pathlib import Path

import torch
from PIL import Image

from facecomp import faces, images
from facecomp.complete import Completer
from facecomp.config import default_data_root
from facecomp.runtime import tune_allocator
from facecomp.serve.timing import STAGES, StageClock, TimedDetector, TimedGenerator

BUCKETS = ((0, 260, "~200 px"), (260, 560, "~400 px"), (560, 10**6, "600+ px"))


class DetectorPerPhoto(TimedDetector):
    """A detector built anew for the photo, the build timed as detection."""

    def all(self, rgb):
        self.clock.to("detect")
        try:
            upsample = 1 if max(rgb.shape[:2]) < 500 else 0  # faces.detector_for's rule
            return faces.LandmarkDetector(upsample=upsample).all(rgb)
        finally:
            self.clock.to("align")


def one(completer: Completer, data: bytes, per_photo: bool) -> dict[str, float]:
    """One photo's completion under O3: {stage: ms, 'total': ms}."""
    clock = StageClock()
    clock.to("decode")
    photo = images.decode(data)
    timed = copy.copy(completer)  # this call's view of the completer (as serve's): the same model, timed
    timed.generator = TimedGenerator(completer.generator, clock)
    clock.to("align")
    detector = (DetectorPerPhoto if per_photo else TimedDetector)(clock)
    done = timed._complete(photo, "O3", seed=0, align="auto", detector=detector)
    clock.to("encode")
    name, options = images.OUTPUT_FORMATS["png"]
    Image.fromarray(done.images[0]).save(io.BytesIO(), format=name, **options)
    clock.to(None)
    return {**clock.ms, "total": clock.total_ms}


def pick_photos(folder: Path, per_bucket: int) -> dict[str, list[bytes]]:
    """Up to ``per_bucket`` photos of each size bucket in which dlib finds a face."""
    picked: dict[str, list[bytes]] = {name: [] for *_, name in BUCKETS}
    for f in sorted(folder.glob("*.jpg")):
        data = f.read_bytes()
        photo = images.decode(data)
        side = max(photo.shape[:2])
        name = next(name for lo, hi, name in BUCKETS if lo <= side < hi)
        if len(picked[name]) < per_bucket and faces.align_faces(photo):
            picked[name].append(data)
        if all(len(v) >= per_bucket for v in picked.values()):
            break
    return picked


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=default_data_root("celeba_wild"))
    ap.add_argument("--engine", help="artifact of facecomp export to run the generator")
    ap.add_argument("--photos", type=int, default=6, help="photos per size bucket")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--detector-per-photo", action="store_true", help="also time a detector built for every photo")
    ap.add_argument("--threads", type=int, help="torch's intra-op threads (default: torch's own); 1 keeps the "
                    "generator steady on a machine busy with other work, where 2 OpenMP threads wait on each other")
    ap.add_argument("--out")
    args = ap.parse_args()
    tune_allocator()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.engine:
        from facecomp.export import open_generator

        completer = Completer(open_generator(None, args.engine, "cpu"))
    else:
        completer = Completer()
    by_bucket = pick_photos(Path(args.data) / "img_celeba", args.photos)
    modes = {"shared detector": False} | ({"detector per photo": True} if args.detector_per_photo else {})
    report: dict = {"date": date.today().isoformat(), "machine": platform.processor() or platform.machine(),
                    "cpus": os.cpu_count(), "generator": args.engine or "eager fp32 (shipped)",
                    "threads": torch.get_num_threads(), "repeats": args.repeats, "stages": list(STAGES), "buckets": {}}
    for name, photos in by_bucket.items():
        row = {}
        for mode, per_photo in modes.items():
            medians = []
            for data in photos:
                one(completer, data, per_photo)  # warm-up
                runs = [one(completer, data, per_photo) for _ in range(args.repeats)]
                medians.append({k: statistics.median(r[k] for r in runs) for k in runs[0]})
            row[mode] = {k: statistics.median(m[k] for m in medians) for k in medians[0]} if medians else {}
        report["buckets"][name] = {"photos": len(photos), "ms": row}
        print(name, len(photos), "photos")
        for mode, ms in row.items():
            print(f"  {mode:20s} " + "  ".join(f"{k} {v:.1f}" for k, v in ms.items()))
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
