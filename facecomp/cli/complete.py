"""`facecomp complete`: complete faces under a mask."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from facecomp import images, masks
from facecomp.cli import common
from facecomp.contract import BLENDS, DEFAULT_BLEND


def add_command(sub) -> None:
    p = sub.add_parser("complete", help="complete faces under a mask",
                       description="Complete the masked region of faces. Pixels outside the mask are kept.")
    p.add_argument("inputs", nargs="+", help="image files or folders")
    p.add_argument("--mask", required=True,
                   help="O1..O6, box:x0,y0,x1,y1 (input pixels), a mask image (white = missing), or a folder of "
                   "mask images paired with the inputs by file name (face.jpg <- MASKS/face.png, any image suffix)")
    p.add_argument("--model", help=common.MODEL_HELP)
    p.add_argument("--engine", help="an artifact folder from `facecomp export` (AOTInductor, ONNX or TensorRT) to run "
                   "instead of the eager model; with --model, it must have been built from those weights")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--samples", type=int, default=1, help="K completions from different noise")
    p.add_argument("--blend", choices=BLENDS, default=DEFAULT_BLEND,
                   help=f"poisson: the paper's M5 (default {DEFAULT_BLEND}: the one that wins on validation)")
    p.add_argument("--align", choices=("auto", "none"), default="auto",
                   help="auto: a 178x218 CelebA-aligned face goes straight in; any other photo has its faces "
                   "detected, aligned, completed and pasted back (needs the 'faces' extra). none: the whole "
                   "image is taken as the face")
    p.add_argument("--device", default="cpu")
    out = p.add_mutually_exclusive_group(required=True)
    out.add_argument("-o", "--output", help="output PNG (one input)")
    out.add_argument("--out-dir", help="output folder: <name>.png, or <name>_s<k>.png with --samples")
    p.add_argument("--output-format", choices=tuple(images.OUTPUT_FORMATS),
                   help="png | jpg | webp (default: from -o's suffix, else png)")
    p.set_defaults(func=run)


def _inputs(items: list[str]) -> list[Path]:
    paths: list[Path] = []
    for item in items:
        p = Path(item)
        paths.extend(images.list_images(p) if p.is_dir() else [p])
    if not paths:
        raise ValueError("no input images found")
    return paths


def _output_format(args: argparse.Namespace) -> str:
    named = images.SUFFIX_FORMAT.get(Path(args.output).suffix.lower()) if args.output else None
    if args.output_format and named and named != args.output_format:
        raise ValueError(f"-o {args.output} names a {named} file but --output-format is {args.output_format}")
    return args.output_format or named or "png"


def _outputs(path: Path, args: argparse.Namespace) -> list[Path]:
    ext = "." + _output_format(args)
    if args.output:
        out = Path(args.output)
        if args.samples == 1:
            return [out]
        return [out.with_name(f"{out.stem}_s{k}{out.suffix or ext}") for k in range(args.samples)]
    folder = Path(args.out_dir)
    if args.samples == 1:
        return [folder / f"{path.stem}{ext}"]
    return [folder / f"{path.stem}_s{k}{ext}" for k in range(args.samples)]


def run(args: argparse.Namespace) -> int:
    from facecomp.complete import Completer
    from facecomp.contract import MAX_SEED

    paths = _inputs(args.inputs)
    if args.output and len(paths) > 1:
        raise ValueError(f"-o takes one input, got {len(paths)}: use --out-dir")
    if args.samples < 1 or args.samples > 64:
        raise ValueError(f"--samples must be in 1..64, got {args.samples}")
    if not 0 <= args.seed < MAX_SEED:
        raise ValueError(f"--seed must be in 0..2**64-1, got {args.seed}")
    masks.check_spec(args.mask)
    generator = args.model
    if args.engine:  # the compiled artifact runs the generator; Completer does the rest
        from facecomp.export import open_generator

        generator = open_generator(args.model, args.engine, args.device)
    completer = Completer(generator, device=args.device)
    bad: list[str] = []
    for path in paths:
        try:
            image = images.read_rgb(path)
            done = completer._complete(image, masks.spec_for_image(path, args.mask), seed=args.seed,
                                       samples=args.samples, blends=(args.blend,), align=args.align)
            results = done.images
            if done.faces > 1:
                print(f"{path}: {done.faces} faces found", file=sys.stderr)
            if done.inpainted:
                print(f"{path}: {done.inpainted} masked pixel(s) lie where the model cannot see (off the face box): "
                      "filled by inpainting (OpenCV Telea)", file=sys.stderr)
        except ValueError as e:
            if len(paths) == 1:
                raise
            bad.append(str(e))
            continue
        for out, result in zip(_outputs(path, args), results, strict=True):
            images.write_image(out, result, _output_format(args))
            print(out)
    if bad:
        print(f"facecomp: {len(bad)} of {len(paths)} input(s) failed:", file=sys.stderr)
        for line in bad:
            print(f"  {line}", file=sys.stderr)
        return 1
    return 0
