"""``facecomp export``: weights in, a checked artifact folder out.

    OUT/facecomp-artifact.json   what it is and what made it (metadata.py)
    OUT/generator.pt2 | generator.onnx | generator.trt.ep + generator.plan
    OUT/triton/facecomp_generator/...   (onnx, tensorrt) a Triton model repository: the generator
    OUT/triton/facecomp_complete/...    and a Python backend model completing faces around it

The engine contract (facecomp.contract.describe, the weights' identity) goes into the record and,
for ONNX, into the file itself (metadata_props, doc strings, the batch dimension named ``batch``).

The folder is assembled beside OUT and renamed into place once the artifact has loaded and
matched the eager model, so OUT is never left half-written.
"""

from __future__ import annotations

import logging
import math
import shutil
import tempfile
from pathlib import Path

import torch

from facecomp import config as config_mod
from facecomp import contract as contract_mod
from facecomp import models
from facecomp import weights as weights_mod
from facecomp.export import triton
from facecomp.export.engine import Engine
from facecomp.export.formats import FORMATS
from facecomp.export.metadata import ArtifactMeta, TensorSpec, sha256_file
from facecomp.export.program import INPUT_NAME, OUTPUT_NAME, example_input, export_program, input_shape
from facecomp.export.spec import ExportConfig

log = logging.getLogger(__name__)


def parity(reference: torch.Tensor, candidate: torch.Tensor) -> dict[str, float]:
    """Max abs error and PSNR (dB) of the difference, both on the [-1, 1] output scale (peak-to-peak 2)."""
    diff = (candidate.float().cpu() - reference.float().cpu())
    mse = float(diff.pow(2).mean())
    return {"max_abs": float(diff.abs().max()), "psnr_db": math.inf if mse == 0 else 10 * math.log10(4.0 / mse)}


def engine_contract(channels: int, size: int, cfg: ExportConfig, weights: Path) -> dict[str, str]:
    """What a runtime must feed the artifact and do with its output (facecomp.contract), and what made it."""
    return {**contract_mod.describe(channels, size), "precision": cfg.precision,
            "weights_name": weights.name, "weights_sha256": weights_mod.identity(weights)}


def export_artifact(out: str | Path, cfg: ExportConfig, weights: str | Path | None = None,
                    check_batches: tuple[int, ...] | None = None) -> ArtifactMeta:
    fmt = FORMATS[cfg.format]
    fmt.check_available(cfg)
    weights = weights_mod.resolve(weights)
    generator = models.load("generator", weights, cfg.device).float()
    program = export_program(generator, cfg)

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; the artifact is an ordinary folder
    try:
        files = fmt.build(program, cfg, staging)
        c, s, _ = input_shape(generator)
        contract = engine_contract(c, s, cfg, weights)
        fmt.annotate(staging, contract)
        meta = ArtifactMeta(
            format=cfg.format, precision=cfg.precision, device=cfg.device,
            batch={"min": cfg.batch.min, "opt": cfg.batch.opt, "max": cfg.batch.max},
            input=TensorSpec(INPUT_NAME, [c, s, s]), output=TensorSpec(OUTPUT_NAME, [3, s, s]),
            generator_config=config_mod.to_dict(generator.cfg), weights_sha256=weights_mod.identity(weights),
            weights_name=weights.name, files={f: sha256_file(staging / f) for f in files}, versions=fmt.versions(),
            contract=contract)
        meta.write(staging)

        # Check before publishing: the artifact loads and matches eager at its batch bounds.
        engine = Engine(staging)
        batches = check_batches or tuple(sorted({cfg.batch.min, cfg.batch.opt, cfg.batch.max}))
        torch.manual_seed(0)
        for n in batches:
            x = example_input(generator, n, cfg.device)
            with torch.no_grad():
                p = parity(generator(x), engine(x))
            log.info("batch %d: max abs error %.2e, PSNR of the difference %.1f dB", n, p["max_abs"], p["psnr_db"])
            meta.parity[str(n)] = p
        meta.write(staging)

        if fmt.triton_platform:
            model_file = staging / (fmt.plan if cfg.format == "tensorrt" else fmt.file)
            signature = triton.onnx_signature(model_file) if cfg.format == "onnx" else triton.plan_signature(model_file)
            triton.write_repository(staging / "triton", model_file, signature, fmt.triton_platform, meta)
            triton.write_complete_model(staging / "triton", signature, meta)

        if out.exists():
            if not (out / "facecomp-artifact.json").is_file():
                raise ValueError(f"{out} exists and is not a facecomp artifact; not overwriting it")
            shutil.rmtree(out)
        staging.rename(out)
        return meta
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
