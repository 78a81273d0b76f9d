"""Recognition of completed faces (the paper's Fig. 11): top-1/3/5 of occluded, then completed, probes.

Gallery: the first face of every identity, unoccluded. Probes: that identity's other faces with a
mask Ox, completed by each method (the "noise" baseline is the occluded probe itself, as the paper's
lower bound). Each probe's embedding is ranked against the gallery by dlib's 128-D embedding
distance (``facecomp.eval.identity``); a hit at rank k counts for top-k. The probe is aligned with
landmarks of its unoccluded original, so detection failures on occluded faces do not enter.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np
from tqdm import tqdm

from facecomp import masks
from facecomp.eval.identity import IdentityEmbedder
from facecomp.eval.methods import Method
from facecomp.images import read_rgb

TOP_K = (1, 3, 5)


def split_gallery(files: list[Path], identity_of) -> tuple[list[Path], list[int], list[Path], list[int]]:
    """First face of each identity to the gallery, the rest are probes."""
    by_id: dict[int, list[Path]] = defaultdict(list)
    for f in files:
        i = identity_of(f)
        if i is not None:
            by_id[i].append(f)
    ids = sorted(k for k, v in by_id.items() if len(v) >= 2)
    if len(ids) < 2:
        raise ValueError("recognition needs at least two identities with two or more faces each")
    gallery = [by_id[i][0] for i in ids]
    probes = [(f, i) for i in ids for f in by_id[i][1:]]
    return gallery, ids, [p for p, _ in probes], [i for _, i in probes]


def run(methods: dict[str, Method], files: list[Path], identity_of, mask_names: list[str],
        probes_per_identity: int = 0, progress: bool = True) -> dict:
    embedder = IdentityEmbedder()
    gallery, gallery_ids, probes, probe_ids = split_gallery(files, identity_of)
    if probes_per_identity > 0:
        kept, seen = [], defaultdict(int)
        for p, i in zip(probes, probe_ids, strict=True):
            if seen[i] < probes_per_identity:
                kept.append((p, i))
                seen[i] += 1
        probes, probe_ids = [p for p, _ in kept], [i for _, i in kept]
    g = np.stack([embedder.embed(read_rgb(f)) for f in gallery])
    gids = np.asarray(gallery_ids)
    ranks: dict[str, dict[str, list[int]]] = {o: {m: [] for m in ["original", *methods]} for o in mask_names}
    for path, true_id in tqdm(list(zip(probes, probe_ids, strict=True)), desc="recognition", unit="probe",
                              disable=not progress):
        image = read_rgb(path)
        h, w = image.shape[:2]
        align = embedder.alignment(image)
        original_rank = _rank(embedder.embed(image, align), g, gids, true_id)
        for o in mask_names:
            mask = masks.occlusion(o, w, h)
            ranks[o]["original"].append(original_rank)
            for name, method in methods.items():
                ranks[o][name].append(_rank(embedder.embed(method(image, mask), align), g, gids, true_id))
    summary = {o: {m: {f"top{k}": float(np.mean(np.asarray(r) < k)) for k in TOP_K} for m, r in per.items()}
               for o, per in ranks.items()}
    return {"gallery": len(gallery), "probes": len(probes), "masks": mask_names,
            "methods": ["original", *methods], "summary": summary}


def _rank(e: np.ndarray, gallery: np.ndarray, gallery_ids: np.ndarray, true_id: int) -> int:
    """0-based rank of the true identity among gallery entries sorted by distance."""
    d = np.linalg.norm(gallery - e, axis=1)
    order = gallery_ids[np.argsort(d, kind="stable")]
    return int(np.nonzero(order == true_id)[0][0])


def markdown(result: dict) -> str:
    lines = [f"# Recognition of completed probes: {result['probes']} probes against a gallery of "
             f"{result['gallery']} identities", "",
             "Top-k accuracy (dlib 128-D embedding, nearest gallery face). 'original' = unoccluded probe, "
             "'noise' = the occluded probe (noise in the hole).", ""]
    for k in TOP_K:
        lines += [f"## Top-{k}", "", "| mask | " + " | ".join(result["methods"]) + " |",
                  "|---|" + "---|" * len(result["methods"])]
        for o in result["masks"]:
            cells = [f"{result['summary'][o][m][f'top{k}']:.3f}" for m in result["methods"]]
            lines.append(f"| {o} ({masks.OCCLUSION_NAMES[o]}) | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def write(result: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "recognition.json").write_text(json.dumps(result, indent=2))
    (out / "recognition.md").write_text(markdown(result))
