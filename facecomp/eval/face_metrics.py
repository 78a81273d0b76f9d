"""The per-face metrics of `facecomp eval table`, by name, beside SSIM and PSNR (which every table has).

- ``identity``: dlib embedding distance to the original (:class:`facecomp.eval.table.IdentityDistance`,
  the 'faces' extra);
- ``parsing``: parsing mIoU inside the hole (:class:`facecomp.eval.table.ParsingAgreement`, a parsing
  network's weights);
- ``landmarks``: dlib's 68-point error inside the hole and whether dlib still detects the face
  (:mod:`facecomp.eval.landmarks`, the 'faces' extra).

``auto`` stands for each of them whose models are installed here; ``none`` for none. Names are resolved
once, in the process that starts an evaluation, so its worker processes build the same metrics and the
ones left out are reported once.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from facecomp.eval.table import FaceMetric

log = logging.getLogger(__name__)
NAMES = ("identity", "parsing", "landmarks")


def resolve(names: Sequence[str], parsing_weights: str | Path | None = None) -> list[str]:
    """The metric names to build: ``["auto"]`` -> those of NAMES whose models are installed (each left out
    logged with what it needs), ``none`` dropped. Raises ValueError on an unknown name."""
    from facecomp import faces
    from facecomp.runtime import MissingExtra
    from facecomp.weights import SHIPPED

    for name in names:
        if name not in (*NAMES, "auto", "none"):
            raise ValueError(f"unknown metric '{name}' (valid: {', '.join(NAMES)}, auto, none)")
    if list(names) != ["auto"]:
        return [name for name in names if name in NAMES]
    chosen = []
    for name in NAMES:
        if name in ("identity", "landmarks") and not faces.available():
            what = "the identity distance" if name == "identity" else "the landmark error"
            log.warning("left out: %s", MissingExtra("faces", what))
        elif name == "parsing" and not parsing_weights and not SHIPPED["parsing"].is_file():
            log.warning("no parsing agreement: no shipped parsing weights")
        else:
            chosen.append(name)
    return chosen


def build(names: Sequence[str], parsing_weights: str | Path | None = None) -> tuple[FaceMetric, ...]:
    """The metrics of resolved ``names`` (see :func:`resolve`), their models loaded; ``parsing_weights``:
    the parsing network of ``parsing`` (default: the shipped one)."""
    from facecomp.eval import table

    chosen: list[FaceMetric] = []
    for name in names:
        if name == "identity":
            chosen.append(table.IdentityDistance())
        elif name == "parsing":
            chosen.append(table.ParsingAgreement(parsing_weights))
        elif name == "landmarks":
            from facecomp.eval.landmarks import FaceFound, LandmarkError, LandmarkModel

            model = LandmarkModel()  # one detector and predictor shared by both metrics
            chosen += [LandmarkError(model), FaceFound(model)]
        else:
            raise ValueError(f"unknown metric '{name}' (valid: {', '.join(NAMES)})")
    return tuple(chosen)
