"""The app factory uvicorn imports in each worker process (settings from FACECOMP_SERVE)."""

from __future__ import annotations

import ast
import ctypes
import os

from facecomp.serve.app import ServeConfig, create_app

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
    settings = ast.literal_eval(os.environ.get("FACECOMP_SERVE", "{}"))
    return create_app(ServeConfig(**settings))
