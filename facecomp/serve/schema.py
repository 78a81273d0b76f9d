"""The HTTP API's request and answer models: what ``/openapi.json`` documents and what both request bodies
(multipart form, JSON with base64 images) are validated against.

The fixed choices are enums built from the components' own registries (``contract.BLENDS``,
``wild.ALIGNS``, ``masks.OCCLUSIONS``, ``images.OUTPUT_FORMATS``), so the schema cannot drift from
what the library accepts.
"""

from __future__ import annotations

import base64
import binascii
from enum import Enum

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic.json_schema import models_json_schema

from facecomp import images, masks, wild
from facecomp.contract import BLENDS, DEFAULT_BLEND, MAX_SEED


def _choices(name: str, values, doc: str) -> type[Enum]:
    choices = Enum(name, [(v, v) for v in values], type=str)
    choices.__doc__ = doc
    return choices


Blend = _choices("Blend", (*BLENDS, "both"), "How the generated pixels are pasted: none (hard), poisson "
                 "(seamless cloning, the paper's M5) or both (two images from one generator pass).")
ImageBlend = _choices("ImageBlend", BLENDS, "The blend one returned image was pasted with.")
Align = _choices("Align", wild.ALIGNS, "auto: a 178x218 CelebA-aligned face goes straight to the model, any other "
                 "photo is searched for faces and each is aligned; none: the whole image is taken as the face.")
Preset = _choices("Preset", masks.OCCLUSIONS, "A region of every face instead of a mask image: "
                  + "; ".join(f"{k} {masks.OCCLUSION_NAMES[k]}" for k in masks.OCCLUSIONS) + ".")
Format = _choices("Format", (*images.OUTPUT_FORMATS, "json"), "The answer: one image (png, jpg or webp; jpeg is "
                  "accepted for jpg) or json, every sample and blend as base64 PNGs with the counts.")


class Options(BaseModel):
    """The fields both request bodies share. Unknown fields are ignored (an IOPaint client's extras)."""

    model_config = ConfigDict(extra="ignore")

    preset: Preset | None = Field(None, description="instead of a mask image (case-insensitive)")
    seed: int = Field(0, ge=0, lt=MAX_SEED, description="the fill noise's key: same seed, same pixels")
    samples: int = Field(1, ge=1, description="completions from different noise, at most the server's "
                         "limits.max_samples (GET /v1/model); more than one needs format=json")
    blend: Blend = Field(Blend(DEFAULT_BLEND), description="both needs format=json")
    align: Align = Align("auto")
    format: Format = Format("png")

    @field_validator("preset", mode="before")
    @classmethod
    def _preset(cls, v):
        if isinstance(v, str):
            return v.strip().upper() or None  # an empty form field is no preset
        return v

    @field_validator("format", mode="before")
    @classmethod
    def _format(cls, v):
        return "jpg" if isinstance(v, str) and v.lower() == "jpeg" else v.lower() if isinstance(v, str) else v


class _Files(BaseModel):
    image: bytes = Field(description="the photo (PNG, JPEG, WebP, ...)")
    mask: bytes | None = Field(None, description="white = missing; the photo's size; or give a preset")


class _Base64(BaseModel):
    image: str = Field(description="the photo, base64 (or a data: URL)")
    mask: str | None = Field(None, description="white = missing, base64 (or a data: URL); or give a preset")


# The images first, then the options (pydantic orders fields from the last base to the first).
class CompleteForm(Options, _Files):
    """``multipart/form-data``: the photo and the mask as files, the options as fields."""


class CompleteJSON(Options, _Base64):
    """``application/json``: the photo and the mask as base64 strings, bare or as data URLs
    (``data:image/png;base64,...``): the body IOPaint's ``/api/v1/inpaint`` takes."""


class CompletedImage(BaseModel):
    sample: int = Field(description="which of the samples (0-based)")
    blend: ImageBlend
    png_base64: str = Field(description="the completed photo, PNG, base64")


class CompleteResult(BaseModel):
    """The ``format=json`` answer."""

    faces: int = Field(description="faces found (1 for an aligned face)")
    inpainted: int = Field(description="masked pixels on no face's box, filled by OpenCV inpainting, not the model")
    seconds: float = Field(description="the request's time in the server")
    images: list[CompletedImage] = Field(description="sample by sample, blend by blend")


class ErrorBody(BaseModel):
    """Every refusal and failure: 4xx for the request's fault, 5xx for the server's."""

    error: str = Field(description="one line naming the problem")


class Health(BaseModel):
    status: str = Field(examples=["ok"])
    served: int
    rejected_busy: int = Field(description="503s: requests that found max_pending others in flight")
    generator_passes: int
    generator_calls: int
    largest_batch_calls: int = Field(description="calls that shared the largest generator pass")


def one_line(error: ValidationError) -> str:
    """A pydantic validation error as the API's one line: the first problem, named by its field."""
    first = error.errors()[0] if error.errors() else {}
    return describe(first)


def describe(problem: dict) -> str:
    where = ".".join(str(x) for x in problem.get("loc", ())) or "request"
    if problem.get("type") == "enum":
        return f"{where} must be one of {problem['ctx']['expected']}, got {problem.get('input')!r}"
    return f"{where}: {problem.get('msg', 'invalid')}"


def unbase64(text: str, what: str) -> bytes:
    """A base64 image, bare or as a data URL (``data:image/png;base64,...``), to its bytes; line breaks allowed."""
    if text.startswith("data:"):
        head, sep, text = text.partition(",")
        if not sep or not head.endswith(";base64"):
            raise ValueError(f"{what}: a data URL must be base64 (data:<type>;base64,<data>)")
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"{what}: not valid base64") from None


def media_type(fmt: str) -> str:
    """``images.OUTPUT_FORMATS`` name -> its MIME type, as Pillow knows it (image/png, image/jpeg, image/webp)."""
    from PIL import Image

    Image.init()
    return Image.MIME[images.OUTPUT_FORMATS[fmt][0]]


def _error(description: str, example: str, **extra) -> dict:
    return {"model": ErrorBody, "description": description,
            "content": {"application/json": {"example": {"error": example}}}, **extra}


def unauthorized_response() -> dict:
    """The 401 of every /v1 route when the server has an API key."""
    return _error("no API key, or the wrong one: the server was started with --api-key ($FACECOMP_API_KEY); "
                  "send Authorization: Bearer <key>",
                  "missing or wrong API key: send the header Authorization: Bearer <key>",
                  headers={"WWW-Authenticate": {"description": "Bearer", "schema": {"type": "string"}}})


def complete_responses() -> dict:
    """``responses=`` of POST /v1/complete: the answer's image types and JSON model, each error status's body."""
    binary = {"schema": {"type": "string", "format": "binary"}}
    counts = {"X-Faces": {"description": "faces found", "schema": {"type": "integer"}},
              "X-Inpainted-Pixels": {"description": "masked pixels on no face's box, filled by OpenCV inpainting",
                                     "schema": {"type": "integer"}},
              "Server-Timing": {"description": "milliseconds per stage: decode, detect, align, generator, paste, "
                                "encode, total", "schema": {"type": "string"}}}
    return {
        200: {"model": CompleteResult, "description": "the completed photo (format png, jpg or webp), or every "
              "sample and blend (format json)", "content": {media_type(f): binary for f in images.OUTPUT_FORMATS},
              "headers": counts},
        400: _error("an upload that cannot be read: empty, corrupt or truncated, bad base64",
                    "image: not valid base64"),
        413: _error("over the byte limit (limits.max_upload_bytes) or the pixel limit (limits.max_pixels)",
                    "image is over the 10,485,760-byte limit"),
        415: _error("not an image Pillow reads, or a body that is neither multipart/form-data nor JSON",
                    "image: not an image Pillow can read"),
        422: _error("a field out of range or at odds with another, no face found, an empty mask, a mask off "
                    "every face", "blend must be one of 'none', 'poisson' or 'both', got 'sharpen'"),
        500: _error("a bug on the server's side; the server goes on serving", "internal error: RuntimeError"),
        503: _error("busy: limits.max_pending requests in flight", "busy: too many requests in flight, retry shortly",
                    headers={"Retry-After": {"description": "seconds to wait before retrying",
                                             "schema": {"type": "integer"}}}),
    }


# Both request bodies of POST /v1/complete: FastAPI documents neither itself (the route reads the body by its
# Content-Type), so the models are added to the components and referenced here.
REQUEST_BODY = {"required": True, "content": {
    "multipart/form-data": {"schema": {"$ref": "#/components/schemas/CompleteForm"}},
    "application/json": {"schema": {"$ref": "#/components/schemas/CompleteJSON"}}}}


def add_request_models(openapi: dict) -> dict:
    _, defs = models_json_schema([(CompleteForm, "validation"), (CompleteJSON, "validation")],
                                 ref_template="#/components/schemas/{model}")
    openapi.setdefault("components", {}).setdefault("schemas", {}).update(defs["$defs"])
    return openapi
