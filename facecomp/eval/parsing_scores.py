"""Scores for label maps: per-class F-score, the overall facial-component F-score, and mIoU.

"Overall" follows the Helen face-labelling papers the paper compares with ([28]; Smith et al.,
CVPR 2013): the facial components — brows, eyes, nose, lips and inner mouth — merged into one
class, scored as a single F-measure. Skin, hair and background are reported per class only.
"""

from __future__ import annotations

import numpy as np

from facecomp.labels import LABELS

COMPONENTS = tuple(range(2, 10))  # left/right brow, left/right eye, nose, upper lip, inner mouth, lower lip


def confusion(pred: np.ndarray, target: np.ndarray, num_classes: int = len(LABELS),
              where: np.ndarray | None = None) -> np.ndarray:
    """[K, K] counts, rows = target class, columns = predicted class (optionally only ``where``)."""
    pred, target = np.asarray(pred).ravel(), np.asarray(target).ravel()
    if where is not None:
        keep = np.asarray(where).ravel().astype(bool)
        pred, target = pred[keep], target[keep]
    return np.bincount(target.astype(np.int64) * num_classes + pred, minlength=num_classes**2).reshape(
        num_classes, num_classes)


def _f(tp: float, fp: float, fn: float) -> float:
    return float(2 * tp / (2 * tp + fp + fn)) if tp + fp + fn > 0 else float("nan")


def f_scores(conf: np.ndarray) -> dict[str, float]:
    """Per-class F-score by name, plus ``overall`` (components merged) and ``mean_components``."""
    tp = np.diag(conf).astype(np.float64)
    fp = conf.sum(0) - tp
    fn = conf.sum(1) - tp
    out = {name: _f(tp[k], fp[k], fn[k]) for k, name in enumerate(LABELS[: len(tp)])}
    comp = list(COMPONENTS)
    inside = conf[np.ix_(comp, comp)].sum()  # component predicted as any component counts as a hit
    out["overall"] = _f(inside, conf[:, comp].sum() - inside, conf[comp, :].sum() - inside)
    out["mean_components"] = float(np.nanmean([out[LABELS[k]] for k in comp]))
    return out


def mean_iou(conf: np.ndarray) -> float:
    """Mean IoU over the classes present in target or prediction."""
    tp = np.diag(conf).astype(np.float64)
    union = conf.sum(0) + conf.sum(1) - tp
    present = union > 0
    return float((tp[present] / union[present]).mean()) if present.any() else float("nan")
