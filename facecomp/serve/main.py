"""Starting the server: uvicorn's worker processes, and the app factory each of them imports (settings from
FACECOMP_SERVE)."""

from __future__ import annotations

import ast
import ctypes
import dataclasses
import os

from facecomp.runtime import require
from facecomp.serve.app import ServeConfig, create_app

SETTINGS_ENV = "FACECOMP_SERVE"

_M_ARENA_MAX = -8  # glibc's mallopt parameter (malloc.h)
MALLOC_ARENAS = 2


def cap_malloc_arenas(arenas: int = MALLOC_ARENAS) -> bool:
    """Let this process's threads share ``arenas`` malloc heaps instead of glibc's default of 8 per core.

    Requests run on a pool of up to 40 threads; with an arena each, every arena keeps the high-water mark of
    the requests that ran on it (glibc seldom gives a heap's middle back), so a worker's memory crept up with
    each rare concurrence of large requests. bench/RESULTS.md compares the soak (bench/serve_soak.py) with and
    without the cap. A MALLOC_ARENA_MAX in the environment is the operator's choice and wins. No-op (False)
    where libc is not glibc."""
    if os.environ.get("MALLOC_ARENA_MAX"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_ARENA_MAX, arenas))


def app():
    cap_malloc_arenas()  # before the request threads exist: arenas are bound to threads as they first allocate
    settings = ast.literal_eval(os.environ.get(SETTINGS_ENV, "{}"))
    return create_app(ServeConfig(**settings))


def run(config: ServeConfig, host: str = "127.0.0.1", port: int = 8000, workers: int = 1) -> None:
    """Serve ``config`` on ``host:port`` with ``workers`` processes, each with its own model (blocks)."""
    uvicorn = require("uvicorn", "serve", "facecomp serve")
    # uvicorn's workers import the app by name; the settings travel in the environment.
    os.environ[SETTINGS_ENV] = repr(dataclasses.asdict(config))
    uvicorn.run("facecomp.serve.main:app", host=host, port=port, workers=workers, factory=True, log_level="info")
