"""Where a request's time goes: one clock per request, moved from stage to stage by the serving path itself
and sent back as the ``Server-Timing`` header (the web's standard for it; browsers' developer tools show it).

A switch costs one ``perf_counter`` call, so every request is timed and there is no separate benchmark
path. Time runs into the current stage until the next switch, so the stages add up to the request's time
in its worker thread (``total``):

- ``decode``: the uploaded image (and mask) to pixels
- ``detect``: dlib's face detection and 68 landmarks (unaligned photos only)
- ``align``: from there to the generator: fitting and warping each face into the model's layout, the
  crop, the noise fill
- ``generator``: the generator call, including any wait for a pass shared with other requests (batching)
- ``paste``: from the generator to the end of the completion: composite, warp back, paste, Poisson
  blending, inpainting; with several faces in a photo, the next face's warp in as well
- ``encode``: the answer's image(s) to PNG/JPEG/WebP (and base64)
"""

from __future__ import annotations

import time

import numpy as np

STAGES = ("decode", "detect", "align", "generator", "paste", "encode")


class StageClock:
    def __init__(self):
        self.ms = dict.fromkeys(STAGES, 0.0)
        self._stage: str | None = None
        self._since = self._start = time.perf_counter()

    def to(self, stage: str | None) -> None:
        """Close the running stage and start ``stage`` (None: stop the clock)."""
        now = time.perf_counter()
        if self._stage is not None:
            self.ms[self._stage] += 1000 * (now - self._since)
        self._stage, self._since = stage, now

    @property
    def total_ms(self) -> float:
        return sum(self.ms.values())

    def header(self) -> str:
        """``decode;dur=1.2, detect;dur=0.0, ..., total;dur=54.3`` (milliseconds)."""
        return ", ".join(f"{k};dur={v:.1f}" for k, v in (*self.ms.items(), ("total", self.total_ms)))


def read_header(value: str) -> dict[str, float]:
    """A ``Server-Timing`` header back to {stage: milliseconds} (what bench/serve_load.py reads)."""
    out = {}
    for part in value.split(","):
        name, _, params = part.strip().partition(";")
        for p in params.split(";"):
            key, _, v = p.strip().partition("=")
            if key == "dur":
                out[name] = float(v)
    return out


class TimedGenerator:
    """Stands in for the generator (same ``cfg``, same call) and moves the clock around each pass."""

    def __init__(self, generator, clock: StageClock):
        self.generator, self.clock, self.cfg = generator, clock, generator.cfg

    def __call__(self, x):
        self.clock.to("generator")
        try:
            return self.generator(x)
        finally:
            self.clock.to("paste")


class TimedDetector:
    """Stands in for ``faces.LandmarkDetector``: the process's shared detector for the photo's size, timed."""

    def __init__(self, clock: StageClock):
        self.clock = clock

    def all(self, rgb: np.ndarray):
        from facecomp import faces

        self.clock.to("detect")  # the first photo of a size class also pays for building the detector (once)
        try:
            return faces.detector_for(rgb).all(rgb)
        finally:
            self.clock.to("align")
