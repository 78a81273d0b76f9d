"""The app factory uvicorn imports in each worker process (settings from FACECOMP_SERVE)."""

from __future__ import annotations

import ast
import os

from facecomp.serve.app import ServeConfig, create_app


def app():
    settings = ast.literal_eval(os.environ.get("FACECOMP_SERVE", "{}"))
    return create_app(ServeConfig(**settings))
