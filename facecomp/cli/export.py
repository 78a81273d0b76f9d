"""`facecomp export`: compile the generator for production inference."""

from __future__ import annotations

import argparse

from facecomp.cli.common import MODEL_HELP
from facecomp.export.formats import FORMATS
from facecomp.export.spec import PRECISIONS


def add_command(sub) -> None:
    p = sub.add_parser("export", help="compile the generator: AOTInductor, ONNX or TensorRT",
                       description="Export the generator once with torch.export and compile it to an artifact folder "
                       "that `facecomp complete --engine` and `facecomp serve --engine` run (ONNX and TensorRT "
                       "also get a Triton model repository in OUT/triton).")
    p.add_argument("--model", help=MODEL_HELP)
    p.add_argument("--format", required=True, choices=tuple(FORMATS))
    p.add_argument("--precision", default="fp32", choices=tuple(PRECISIONS),
                   help="compute precision inside the graph; inputs and outputs stay float32")
    p.add_argument("--batch", default="1:1:32", metavar="MIN:OPT:MAX",
                   help="dynamic batch range (OPT: the size TensorRT tunes for, Triton's preferred batch)")
    p.add_argument("--device", default=None, choices=("cpu", "cuda"),
                   help="where the artifact runs (default: cuda for tensorrt, else cpu)")
    p.add_argument("--no-channels-last", action="store_true", help="keep NCHW activations inside the graph")
    p.add_argument("-o", "--output", required=True, help="artifact folder to write (replaced if it is one already)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json

    from facecomp.export import BatchRange, ExportConfig, export_artifact
    from facecomp.export.spec import default_device

    cfg = ExportConfig(format=args.format, precision=args.precision, batch=BatchRange.from_text(args.batch),
                       device=args.device or default_device(args.format), channels_last=not args.no_channels_last)
    meta = export_artifact(args.output, cfg, args.model)
    worst = max(meta.parity.values(), key=lambda p: p["max_abs"])
    print(json.dumps({"artifact": args.output, "format": meta.format, "precision": meta.precision,
                      "device": meta.device, "batch": meta.batch, "files": list(meta.files),
                      "max_abs_error_vs_eager": worst["max_abs"], "psnr_db_vs_eager": round(worst["psnr_db"], 1)}))
    return 0
