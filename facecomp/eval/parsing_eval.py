"""Scoring a face-parsing network (``facecomp parsing eval``): F-scores and mIoU against the landmark
labels of a partition, beside the trivial per-pixel prior (each pixel's most frequent training label)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from facecomp.data.celeba import CelebAIndex
from facecomp.data.parsing import eval_loader, labelled_pairs
from facecomp.eval.parsing_scores import confusion, f_scores, mean_iou
from facecomp.labels import LABELS
from facecomp.layout import Augment

SIZE = 128


@torch.no_grad()
def predict_crops(net: torch.nn.Module, loader, device: torch.device) -> tuple[np.ndarray, int]:
    """Confusion matrix of the network's arg-max against the labels over a loader's crops."""
    k = len(LABELS)
    conf = np.zeros((k, k), np.int64)
    n = 0
    for batch in loader:
        if batch["image"] is None:
            continue
        pred = net(batch["image"].to(device)).argmax(1).cpu().numpy()
        conf += confusion(pred, batch["labels"].numpy(), k)
        n += len(pred)
    return conf, n


def prior_map(pairs: list[tuple[Path, Path]], limit: int = 1000) -> np.ndarray:
    """The trivial baseline: each pixel's most frequent training label (in the 128x128 crop)."""
    from facecomp.data.parsing import ParsingDataset

    k = len(LABELS)
    counts = np.zeros((k, SIZE, SIZE), np.int64)
    data = ParsingDataset(pairs[:: max(1, len(pairs) // limit)], SIZE, Augment(), 0)
    rows = np.arange(SIZE)[:, None]
    cols = np.arange(SIZE)[None, :]
    for i in range(len(data)):
        item = data[i]
        if item is not None:
            np.add.at(counts, (item["labels"].numpy(), rows, cols), 1)
    return counts.argmax(0).astype(np.uint8)


def evaluate_parsing(weights: str | Path | None, data_root: str | Path, labels: str | Path, partition: str = "val",
                     limit: int = 0, train_partition: str = "train", device: str = "cpu") -> dict:
    """F-scores of a parsing network and of the per-pixel prior baseline on a partition's labels."""
    from facecomp import models

    index = CelebAIndex.open(data_root)
    pairs = labelled_pairs(index.files(partition, limit), labels)
    net = models.load("parsing", weights, device)
    dev = torch.device(device)
    conf, n = predict_crops(net, eval_loader(pairs, SIZE, 32), dev)
    prior = prior_map(labelled_pairs(index.files(train_partition), labels))
    prior_conf = np.zeros_like(conf)
    for batch in eval_loader(pairs, SIZE, 64):
        if batch["labels"] is not None:
            lbl = batch["labels"].numpy()
            prior_conf += confusion(np.broadcast_to(prior, lbl.shape), lbl)
    return {"partition": partition, "faces": n,
            "network": {**f_scores(conf), "mIoU": mean_iou(conf)},
            "prior_baseline": {**f_scores(prior_conf), "mIoU": mean_iou(prior_conf)},
            "confusion": conf.tolist()}


def scores_markdown(scores: dict) -> str:
    """The per-class F-scores of ``evaluate_parsing`` beside the prior's, as a markdown table."""
    rows = ["| class | network F | per-pixel prior F |", "|---|---|---|"]
    for name in [*LABELS, "overall", "mean_components", "mIoU"]:
        rows.append(f"| {name} | {scores['network'][name]:.3f} | {scores['prior_baseline'][name]:.3f} |")
    return "\n".join(rows) + f"\n\n{scores['faces']} faces of the {scores['partition']} partition; " \
        "'overall' = brows, eyes, nose, lips and inner mouth merged into one class (Helen convention).\n"


def write_scores(scores: dict, out: str | Path) -> str:
    """scores.json and scores.md (the markdown table); returns the table."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "scores.json").write_text(json.dumps(scores, indent=1))
    table = scores_markdown(scores)
    (out / "scores.md").write_text(table)
    return table
