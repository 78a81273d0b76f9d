"""`facecomp serve`: the brush page and the HTTP API (FastAPI on uvicorn).

Requests are decoded and checked in the request's own thread; the model, loaded once per worker
process (``Runner``), runs one pass at a time, and requests that arrive together share a pass
(``batching.BatchingGenerator``). The model is the eager generator or a compiled artifact from
``facecomp export`` (``engine``). Work in flight is bounded: a
request that finds ``max_pending`` others admitted gets 503 with ``Retry-After`` at once, so a burst
cannot pile up images in memory. Every bad input is a 4xx with ``{"error": "<one line>"}``.
Masked pixels the model cannot see (off every face's box) are inpainted (OpenCV Telea) and counted:
the ``X-Inpainted-Pixels`` header, and ``inpainted`` in a JSON answer.
"""

from __future__ import annotations

import base64
import io
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import numpy as np
from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from facecomp import masks

log = logging.getLogger(__name__)
STATIC = Path(__file__).resolve().parent / "static"
BLENDS = ("none", "poisson", "both")


@dataclass(frozen=True)
class ServeConfig:
    model: str | None = None  # generator weights; None = the shipped model
    engine: str | None = None  # an artifact folder from `facecomp export`, run instead of the eager model
    device: str = "cpu"
    max_batch: int = 8  # images per generator pass when requests arrive together (1 = no batching)
    max_upload_bytes: int = 10 * 1024 * 1024
    max_pixels: int = 12_000_000  # a 4000x3000 photo
    max_samples: int = 8
    max_pending: int = 8  # requests admitted at once (running + waiting for the model)
    retry_after_s: int = 1


class BadRequest(ValueError):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def decode_image(data: bytes, max_pixels: int, what: str, mode: str = "RGB") -> np.ndarray:
    """Bytes of an uploaded image -> uint8 array; the library's decode errors as 413 / 415 / 400."""
    from facecomp import images

    if not data:
        raise BadRequest(400, f"{what}: empty upload")
    try:
        return images.decode(data, mode, max_pixels, what)
    except images.ImageTooLarge as e:
        raise BadRequest(413, str(e)) from None
    except images.NotAnImage as e:
        raise BadRequest(415, str(e)) from None
    except ValueError as e:
        raise BadRequest(400, str(e)) from None


def png_bytes(image: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


class Runner:
    """The model, loaded once, behind a bounded admission gate; concurrent requests share generator passes."""

    def __init__(self, cfg: ServeConfig):
        from facecomp.complete import Completer
        from facecomp.serve.batching import BatchingGenerator

        self.cfg = cfg
        generator = cfg.model
        if cfg.engine:
            from facecomp.export import open_generator

            generator = open_generator(cfg.model, cfg.engine, cfg.device)
        self.completer = Completer(generator, device=cfg.device)
        self.model = self.completer.generator  # eager module or compiled Engine
        # Every generator call of the completer (aligned faces, each face of a photo) goes through the batcher.
        self.batcher = self.completer.generator = BatchingGenerator(self.model, cfg.max_batch)
        self._admit = threading.BoundedSemaphore(cfg.max_pending)
        self.served = 0
        self.rejected = 0

    def try_admit(self) -> bool:
        ok = self._admit.acquire(blocking=False)
        if not ok:
            self.rejected += 1
        return ok

    def release(self) -> None:
        self._admit.release()


def model_facts(runner: Runner) -> dict:
    from facecomp import weights

    model = runner.model
    engine = getattr(model, "meta", None)  # a compiled artifact carries its own record
    limits = {"max_upload_bytes": runner.cfg.max_upload_bytes, "max_pixels": runner.cfg.max_pixels,
              "max_samples": runner.cfg.max_samples, "max_pending": runner.cfg.max_pending,
              "max_batch": runner.cfg.max_batch}
    common = {"image_size": model.cfg.image_size, "masks": {k: masks.OCCLUSION_NAMES[k] for k in masks.OCCLUSIONS},
              "card": "facecomp/weights/MODEL_CARD.md in the package (trained on CelebA: non-commercial research "
                      "use only; WEIGHTS_LICENSE.md)", "limits": limits}
    if engine is not None:
        shipped_file = weights.SHIPPED["generator"]
        shipped = shipped_file.is_file() and weights.identity(shipped_file) == engine.weights_sha256
        return {"weights": engine.weights_name, "shipped": shipped, "sha256": engine.weights_sha256,
                "config": engine.generator_config, "parameters": None,
                "runtime": {"engine": engine.format, "precision": engine.precision, "device": engine.device,
                            "batch": engine.batch, "parity_vs_eager": engine.parity}, **common}
    path = weights.resolve(runner.cfg.model)
    meta = weights.read_metadata(path)
    return {"weights": path.name, "shipped": path == weights.SHIPPED["generator"], "sha256": meta.get("sha256"),
            "stage": meta.get("stage"), "step": meta.get("step"), "config": meta.get("config"),
            "parameters": sum(p.numel() for p in model.parameters()), "runtime": {"engine": None}, **common}


def create_app(cfg: ServeConfig, runner: Runner | None = None):
    from facecomp.complete import MAX_SEED
    from facecomp.wild import complete_any

    runner = runner or Runner(cfg)
    facts = model_facts(runner)  # fixed for the worker's life; hashing the weights once, not per request
    app = FastAPI(title="facecomp", version="1", description="Generative face completion (Li et al., CVPR 2017): "
                  "complete the masked region of a face photo.")
    app.state.runner = runner

    def error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(x) for x in first.get("loc", ())[1:]) or "request"
        return error(422, f"{where}: {first.get('msg', 'invalid request')}")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        return error(exc.status_code, str(exc.detail))

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception):  # a bug must not take the server down
        log.exception("unexpected error")
        return error(500, f"internal error: {type(exc).__name__}")

    @app.middleware("http")
    async def _limit_size(request: Request, call_next):
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > cfg.max_upload_bytes + 64 * 1024:
            return error(413, f"upload of {int(length):,} bytes is over the {cfg.max_upload_bytes:,}-byte limit")
        return await call_next(request)

    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/healthz")
    async def healthz():
        b = runner.batcher.stats
        return {"status": "ok", "served": runner.served, "rejected_busy": runner.rejected,
                "generator_passes": b.passes, "generator_calls": b.calls, "largest_batch_calls": b.largest}

    @app.get("/v1/model")
    async def model():
        return facts

    @app.post("/v1/complete", responses={200: {"content": {"image/png": {}, "application/json": {}}},
                                         400: {}, 413: {}, 415: {}, 422: {}, 503: {}})
    async def complete(
        image: Annotated[UploadFile, File(description="the photo (PNG, JPEG, WebP, ...)")],
        mask: Annotated[UploadFile | None, File(description="mask of the photo's size, white = missing")] = None,
        preset: Annotated[str | None, Form(description="O1..O6 instead of a mask image")] = None,
        seed: Annotated[int, Form()] = 0,
        samples: Annotated[int, Form(description="completions from different noise")] = 1,
        blend: Annotated[str, Form(description="none, poisson or both")] = "none",
        align: Annotated[str, Form(description="auto (detect + align unaligned photos) or none")] = "auto",
        format: Annotated[str, Form(description="png (one image) or json (base64 PNGs)")] = "png",
    ):
        try:
            if not 1 <= samples <= cfg.max_samples:
                raise BadRequest(422, f"samples must be in 1..{cfg.max_samples}, got {samples}")
            if not 0 <= seed < MAX_SEED:
                raise BadRequest(422, f"seed must be in 0..2**64-1, got {seed}")
            if blend not in BLENDS:
                raise BadRequest(422, f"blend must be one of {', '.join(BLENDS)}, got '{blend}'")
            if format not in ("png", "json"):
                raise BadRequest(422, f"format must be png or json, got '{format}'")
            if format == "png" and (samples > 1 or blend == "both"):
                raise BadRequest(422, "format=png returns one image: use format=json for several")
            if align not in ("auto", "none"):
                raise BadRequest(422, f"align must be auto or none, got '{align}'")
            if (mask is None) == (not preset):
                raise BadRequest(422, "give either a mask image or a preset (O1..O6)")
            if preset and preset.upper() not in masks.OCCLUSIONS:
                raise BadRequest(422, f"unknown preset '{preset}' (valid: {', '.join(masks.OCCLUSIONS)})")
            photo_bytes = await image.read(cfg.max_upload_bytes + 1)
            if len(photo_bytes) > cfg.max_upload_bytes:
                raise BadRequest(413, f"image is over the {cfg.max_upload_bytes:,}-byte limit")
            mask_bytes = await mask.read(cfg.max_upload_bytes + 1) if mask is not None else None
            if mask_bytes is not None and len(mask_bytes) > cfg.max_upload_bytes:
                raise BadRequest(413, f"mask is over the {cfg.max_upload_bytes:,}-byte limit")
        except BadRequest as e:
            return error(e.status, str(e))
        if not runner.try_admit():
            return error(503, "busy: too many requests in flight, retry shortly",
                         headers={"Retry-After": str(cfg.retry_after_s)})
        try:
            started = time.perf_counter()
            outs, done = await run_in_threadpool(_complete_sync, runner, cfg, photo_bytes, mask_bytes, preset,
                                                 seed, samples, blend, align, complete_any)
            runner.served += 1
        except BadRequest as e:
            return error(e.status, str(e))
        except ValueError as e:  # the library's one-line user errors (no face, empty mask, ...)
            return error(422, str(e))
        finally:
            runner.release()
        if format == "png":
            return Response(png_bytes(outs[0][1]), media_type="image/png",
                            headers={"X-Faces": str(done.faces), "X-Inpainted-Pixels": str(done.inpainted)})
        return {"faces": done.faces, "inpainted": done.inpainted, "seconds": round(time.perf_counter() - started, 3),
                "images": [{"sample": k % samples, "blend": b, "png_base64": base64.b64encode(png_bytes(img)).decode()}
                           for k, (b, img) in enumerate(outs)]}

    return app


def _complete_sync(runner: Runner, cfg: ServeConfig, photo_bytes: bytes, mask_bytes: bytes | None,
                   preset: str | None, seed: int, samples: int, blend: str, align: str, complete_any):
    photo = decode_image(photo_bytes, cfg.max_pixels, "image")
    if mask_bytes is not None:
        m = decode_image(mask_bytes, cfg.max_pixels, "mask", mode="L")
        if m.shape != photo.shape[:2]:
            raise BadRequest(422, f"mask is {m.shape[1]}x{m.shape[0]} but the image is "
                             f"{photo.shape[1]}x{photo.shape[0]}")
        spec: str | np.ndarray = (m > 127).astype(np.float32)
    else:
        spec = preset.upper()
    blends = ("none", "poisson") if blend == "both" else (blend,)  # both: one generator pass, two pastes
    done = complete_any(runner.completer, photo, spec, align, seed=seed, samples=samples, blends=blends)
    return [(b, img) for b in blends for img in done.by_blend[b]], done
