"""`facecomp serve`: the brush page and the HTTP API (FastAPI on uvicorn).

Requests are decoded and checked in the request's own thread; the model, loaded once per worker
process (``Runner``), runs one pass at a time, and requests that arrive together share a pass
(``batching.BatchingGenerator``). The model is the eager generator or a compiled artifact from
``facecomp export`` (``engine``). Work in flight is bounded: a
request that finds ``max_pending`` others admitted gets 503 with ``Retry-After`` at once, so a burst
cannot pile up images in memory. Every bad input is a 4xx with ``{"error": "<one line>"}``.
Masked pixels the model cannot see (off every face's box) are inpainted (OpenCV Telea) and counted:
the ``X-Inpainted-Pixels`` header, and ``inpainted`` in a JSON answer.

``POST /v1/complete`` takes a multipart form (files) or a JSON body with base64 images (IOPaint's shape),
read by its Content-Type and validated against one set of models (``schema``); it answers with the image
(PNG, JPEG or WebP) or a JSON document, and says where the time went in ``Server-Timing`` (``timing``).
``/docs`` and ``/redoc`` load Swagger UI and ReDoc from the app itself (the fastapi-offline package's
copies), so they work with no network. With ``api_key`` set, every ``/v1`` route wants it as a bearer token
(``auth``).
"""

from __future__ import annotations

import base64
import copy
import io
import json
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from facecomp import masks

log = logging.getLogger(__name__)
STATIC = Path(__file__).resolve().parent / "static"


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
    # Bearer token every /v1 route wants (None: no key, for loopback); kept out of repr so logs never show it.
    api_key: str | None = field(default=None, repr=False)


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


def encode_image(image: np.ndarray, fmt: str) -> bytes:
    """[H, W, 3] uint8 -> file bytes as ``fmt`` (a name of images.OUTPUT_FORMATS, with its save options).

    PNG at zlib level 1, not Pillow's default 6: on a 1024x576 photo here 56 ms instead of 181 ms for a
    file 23% larger (bench/RESULTS.md), where level 6 cost more than the generator's pass."""
    from PIL import Image

    from facecomp import images

    name, options = images.OUTPUT_FORMATS[fmt]
    if name == "PNG":
        options = {**options, "compress_level": 1}
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format=name, **options)
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
    from fastapi_offline import FastAPIOffline

    from facecomp.serve import auth, schema

    # The key is checked before the model loads: a bad key fails at once, not after seconds of loading.
    keyed = {"dependencies": [Depends(auth.require_key(cfg.api_key))],
             "responses": {401: schema.unauthorized_response()}} if cfg.api_key is not None else {}
    runner = runner or Runner(cfg)
    facts = model_facts(runner)  # fixed for the worker's life; hashing the weights once, not per request
    # FastAPI's own /docs and /redoc fetch Swagger UI and ReDoc from a CDN; these serve the package's copies.
    app = FastAPIOffline(title="facecomp", version="1", static_url="/docs-assets",
                         description="Generative face completion (Li et al., CVPR 2017): complete the masked "
                         "region of a face photo.")
    app.state.runner = runner
    default_openapi = app.openapi
    app.openapi = lambda: app.openapi_schema or schema.add_request_models(default_openapi())

    def error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        return error(422, schema.describe({**first, "loc": first.get("loc", ())[1:]}))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        return error(exc.status_code, str(exc.detail), headers=exc.headers)  # 401's WWW-Authenticate

    @app.exception_handler(ClientDisconnect)
    async def _gone(request: Request, exc: ClientDisconnect):
        # The client hung up before its body was complete (a dropped upload): no bug, and no one to answer, so
        # one line of log instead of _crash's traceback and a 500. 499 is nginx's "client closed request".
        log.info("client went away before its request body was complete: %s %s", request.method, request.url.path)
        return Response(status_code=499)

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception):  # a bug must not take the server down
        log.exception("unexpected error")
        return error(500, f"internal error: {type(exc).__name__}")

    @app.middleware("http")
    async def _limit_size(request: Request, call_next):
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > body_limit(cfg, request):
            return error(413, f"upload of {int(length):,} bytes is over the {cfg.max_upload_bytes:,}-byte limit")
        return await call_next(request)

    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/healthz", response_model=schema.Health)
    async def healthz():
        b = runner.batcher.stats
        return {"status": "ok", "served": runner.served, "rejected_busy": runner.rejected,
                "generator_passes": b.passes, "generator_calls": b.calls, "largest_batch_calls": b.largest}

    # Everything under /v1 is the API proper: the key, when set, guards the whole router, so a route added here
    # later is guarded too. Open routes (the page, /healthz, the docs) are registered on the app itself.
    api = APIRouter(prefix="/v1", **keyed)

    @api.get("/model")
    async def model():
        return facts

    @api.post("/complete", summary="Complete the masked region of a face photo",
              description="Send the photo and a mask (white = missing) or a preset, as a multipart form or as "
              "JSON with base64 images. Answers with the completed photo (format png, jpg, webp) or, with "
              "format=json, every sample and blend as base64 PNGs. Unaligned photos are searched for faces and "
              "each face is aligned first (align=auto).",
              openapi_extra={"requestBody": schema.REQUEST_BODY}, responses=schema.complete_responses())
    async def complete(request: Request):
        try:
            req, photo_bytes, mask_bytes = await read_request(request, cfg)
        except BadRequest as e:
            return error(e.status, str(e))
        if not runner.try_admit():
            return error(503, "busy: too many requests in flight, retry shortly",
                         headers={"Retry-After": str(cfg.retry_after_s)})
        try:
            content, media, headers = await run_in_threadpool(_complete_sync, runner, cfg, req, photo_bytes,
                                                              mask_bytes)
            runner.served += 1
        except BadRequest as e:
            return error(e.status, str(e))
        except ValueError as e:  # the library's one-line user errors (no face, empty mask, ...)
            return error(422, str(e))
        finally:
            runner.release()
        return Response(content, media_type=media, headers=headers)

    app.include_router(api)
    return app


def body_limit(cfg: ServeConfig, request: Request) -> int:
    """Bytes a request body may hold: the upload limit, plus base64's third for JSON, plus room for the fields."""
    is_json = "json" in request.headers.get("content-type", "")
    return (cfg.max_upload_bytes * 4 // 3 + 4 if is_json else cfg.max_upload_bytes) + 64 * 1024


async def read_request(request: Request, cfg: ServeConfig):
    """The request, whichever body it came in: (options, photo bytes, mask bytes or None). Checks everything that
    needs no decoding, so a bad request costs nothing."""
    from pydantic import ValidationError

    from facecomp.serve import schema

    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind == "application/json" or kind.endswith("+json"):
        raw = bytearray()
        async for chunk in request.stream():  # bounded even when no Content-Length was sent
            raw += chunk
            if len(raw) > body_limit(cfg, request):
                raise BadRequest(413, f"JSON body is over the {body_limit(cfg, request):,}-byte limit")
        try:
            body = schema.CompleteJSON.model_validate_json(bytes(raw))
        except ValidationError as e:
            raise BadRequest(422, schema.one_line(e)) from None
        check_options(body, cfg, has_mask=bool(body.mask))
        try:
            photo = schema.unbase64(body.image, "image")
            mask = schema.unbase64(body.mask, "mask") if body.mask else None
        except ValueError as e:
            raise BadRequest(400, str(e)) from None
        for what, data in (("image", photo), ("mask", mask)):
            if data is not None and len(data) > cfg.max_upload_bytes:
                raise BadRequest(413, f"{what} is over the {cfg.max_upload_bytes:,}-byte limit")
        return body, photo, mask
    if kind not in ("multipart/form-data", "application/x-www-form-urlencoded"):
        raise BadRequest(415, f"send multipart/form-data or application/json, not {kind or 'a body without type'}")
    async with request.form(max_files=4, max_fields=64) as form:
        # An empty field is an absent one (as FastAPI's Form() has it): its default applies.
        fields = {k: v for k, v in form.multi_items() if isinstance(v, str) and v and k not in ("image", "mask")}
        try:
            options = schema.Options.model_validate(fields)
        except ValidationError as e:
            raise BadRequest(422, schema.one_line(e)) from None
        image, mask = form.get("image"), form.get("mask") or None
        for what, part in (("image", image), ("mask", mask)):
            if part is not None and not isinstance(part, UploadFile):
                raise BadRequest(422, f"{what}: send a file (multipart file field), not text")
        if image is None:
            raise BadRequest(422, "image: Field required")
        check_options(options, cfg, has_mask=mask is not None)
        photo = await image.read(cfg.max_upload_bytes + 1)
        if len(photo) > cfg.max_upload_bytes:
            raise BadRequest(413, f"image is over the {cfg.max_upload_bytes:,}-byte limit")
        mask_bytes = await mask.read(cfg.max_upload_bytes + 1) if mask is not None else None
        if mask_bytes is not None and len(mask_bytes) > cfg.max_upload_bytes:
            raise BadRequest(413, f"mask is over the {cfg.max_upload_bytes:,}-byte limit")
    return options, photo, mask_bytes


def check_options(req, cfg: ServeConfig, has_mask: bool) -> None:
    """What the schema cannot say: the server's own limits and fields at odds with each other."""
    if req.samples > cfg.max_samples:
        raise BadRequest(422, f"samples must be in 1..{cfg.max_samples}, got {req.samples}")
    if req.format.value != "json" and (req.samples > 1 or req.blend.value == "both"):
        raise BadRequest(422, f"format={req.format.value} returns one image: use format=json for several")
    if has_mask == (req.preset is not None):
        raise BadRequest(422, "give either a mask image or a preset (O1..O6)")


def _complete_sync(runner: Runner, cfg: ServeConfig, req, photo_bytes: bytes, mask_bytes: bytes | None):
    """Decode, complete, encode, in a worker thread: (body, media type, headers), the stages timed."""
    from facecomp.serve import schema
    from facecomp.serve.timing import StageClock, TimedDetector, TimedGenerator

    clock = StageClock()
    clock.to("decode")
    photo = decode_image(photo_bytes, cfg.max_pixels, "image")
    if mask_bytes is not None:
        m = decode_image(mask_bytes, cfg.max_pixels, "mask", mode="L")
        if m.shape != photo.shape[:2]:
            raise BadRequest(422, f"mask is {m.shape[1]}x{m.shape[0]} but the image is "
                             f"{photo.shape[1]}x{photo.shape[0]}")
        spec: str | np.ndarray = (m > 127).astype(np.float32)
    else:
        spec = req.preset.value
    blend = req.blend.value
    blends = ("none", "poisson") if blend == "both" else (blend,)  # both: one generator pass, two pastes
    completer = copy.copy(runner.completer)  # this request's view: the same model, its own clock around it
    completer.generator = TimedGenerator(runner.completer.generator, clock)
    clock.to("align")
    done = completer._complete(photo, spec, seed=req.seed, samples=req.samples, blends=blends, align=req.align.value,
                               detector=TimedDetector(clock))
    clock.to("encode")
    seconds = round(clock.total_ms / 1000, 3)
    if req.format.value == "json":
        outs = [(b, img) for b in blends for img in done.by_blend[b]]
        body = {"faces": done.faces, "inpainted": done.inpainted, "seconds": seconds,
                "images": [{"sample": k % req.samples, "blend": b,
                            "png_base64": base64.b64encode(encode_image(img, "png")).decode()}
                           for k, (b, img) in enumerate(outs)]}
        content, media = json.dumps(body).encode(), "application/json"
    else:
        content, media = encode_image(done.by_blend[blend][0], req.format.value), schema.media_type(req.format.value)
    clock.to(None)
    return content, media, {"X-Faces": str(done.faces), "X-Inpainted-Pixels": str(done.inpainted),
                            "Server-Timing": clock.header()}
