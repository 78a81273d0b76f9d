"""`facecomp serve`: the brush page and the HTTP API."""

from __future__ import annotations

import argparse
import sys

from facecomp.cli.common import MODEL_HELP
from facecomp.runtime import require


def add_command(sub) -> None:
    p = sub.add_parser("serve", help="web page to brush a mask on your photo, and an HTTP API",
                       description="Serves a page (open a photo, brush or pick O1-O6, complete) and the API: "
                       "POST /v1/complete, GET /healthz, GET /v1/model, OpenAPI at /docs and /openapi.json. "
                       "Needs the 'serve' extra (and 'faces' for unaligned photos).")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind; one other than loopback needs an API key (or --insecure)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", help="require 'Authorization: Bearer KEY' on every /v1 route (default: "
                   "$FACECOMP_API_KEY; prefer the variable, since other users can read a command line)")
    p.add_argument("--insecure", action="store_true",
                   help="serve on a non-loopback --host without an API key: anyone who reaches the port can use it")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--model", help=MODEL_HELP)
    which.add_argument("--engine", help="an artifact folder from `facecomp export` (AOTInductor, ONNX, TensorRT)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--workers", type=int, default=1, help="server processes, each with its own model")
    p.add_argument("--max-pending", type=int, default=8, help="requests in flight per worker before 503")
    p.add_argument("--max-batch", type=int, default=8,
                   help="images per generator pass when requests arrive together (1: no batching)")
    p.add_argument("--max-upload-mb", type=float, default=10.0)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    require("uvicorn", "serve", "facecomp serve")  # the missing extra, before any other complaint
    from facecomp.serve import auth, main
    from facecomp.serve.app import ServeConfig

    if args.workers < 1 or args.max_pending < 1 or args.max_batch < 1:
        raise ValueError("--workers, --max-pending and --max-batch must be at least 1")
    api_key = auth.server_key(args.api_key, args.host, args.insecure)
    if api_key is None and not auth.is_loopback(args.host):  # open beyond this machine: --insecure said so
        print(f"facecomp: warning: serving {args.host} with no API key (--insecure)", file=sys.stderr)
    config = ServeConfig(model=args.model, engine=args.engine, device=args.device, max_pending=args.max_pending,
                         max_batch=args.max_batch, max_upload_bytes=int(args.max_upload_mb * 1024 * 1024),
                         api_key=api_key)
    key_note = "; API key required on /v1" if api_key else ""
    print(f"facecomp: serving on http://{args.host}:{args.port}/ (API docs at /docs{key_note})")
    main.run(config, args.host, args.port, args.workers)
    return 0
