"""Recognition of completed faces (the paper's Fig. 11): top-1/3/5 of occluded, then completed, probes.

Each identity's faces are split in halves by a seeded shuffle: the gallery half unoccluded, the
probe half masked with Ox and completed by each method (the "noise" baseline is the occluded probe
itself, the lower bound; "original" the unmasked probe, the upper bound). Identities are ranked for
a probe by their nearest gallery face in dlib's 128-D embedding (``facecomp.identity_embedding``); a hit
within the first k counts for top-k. A probe is aligned with the landmarks of its unoccluded
original, so detection failures on occluded faces do not enter.

Every method is scored on the same probes, so two methods are compared probe by probe: the probes
only one of them recognises, and the exact McNemar test on those (a binomial test of the discordant
probes), which says whether a difference in top-1 is more than the draw of probes would give.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np
from scipy import stats
from tqdm import tqdm

from facecomp import masks
from facecomp.eval.methods import Method
from facecomp.identity_embedding import IdentityEmbedder
from facecomp.images import read_rgb

TOP_K = (1, 3, 5)


def split_gallery(files: list[Path], identity_of, seed: int = 0) -> tuple[list[Path], list[int], list[Path], list[int]]:
    """Per identity (with two or more faces), a seeded shuffle: first half gallery, second half probes."""
    by_id: dict[int, list[Path]] = defaultdict(list)
    for f in files:
        i = identity_of(f)
        if i is not None:
            by_id[i].append(f)
    ids = sorted(k for k, v in by_id.items() if len(v) >= 2)
    if len(ids) < 2:
        raise ValueError("recognition needs at least two identities with two or more faces each")
    gallery, gallery_ids, probes, probe_ids = [], [], [], []
    for i in ids:
        faces = sorted(by_id[i])
        order = np.random.default_rng([seed, i]).permutation(len(faces))
        half = len(faces) // 2
        gallery += [faces[j] for j in order[:half]]
        gallery_ids += [i] * half
        probes += [faces[j] for j in order[half:]]
        probe_ids += [i] * (len(faces) - half)
    return gallery, gallery_ids, probes, probe_ids


def run(methods: dict[str, Method], files: list[Path], identity_of, mask_names: list[str],
        probes_per_identity: int = 0, progress: bool = True, seed: int = 0) -> dict:
    embedder = IdentityEmbedder()
    gallery, gallery_ids, probes, probe_ids = split_gallery(files, identity_of, seed)
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
    summary = {o: {m: {f"top{k}": float(np.mean(np.asarray(r) < k)) for k in TOP_K} | {"top1_ci": top1_ci(r)}
                   for m, r in per.items()}
               for o, per in ranks.items()}
    # "original" against noise fill is the ceiling of the probe-by-probe test: a completion that put back the
    # person's own pixels would score that split, so a mask where even it is not significant cannot be won.
    vs_noise = {o: {m: paired(r, per["noise"]) for m, r in per.items() if m != "noise"}
                for o, per in ranks.items() if "noise" in per}
    return {"gallery": len(gallery), "identities": len(set(gallery_ids)), "probes": len(probes), "seed": seed,
            "masks": mask_names, "methods": ["original", *methods], "summary": summary, "vs_noise": vs_noise,
            "ranks": ranks}  # per mask and method, each probe's 0-based rank in probe order (paired comparisons)


def top1_ci(ranks: list[int], level: float = 0.95) -> list[float]:
    """Wilson interval of top-1 accuracy over these probes."""
    hits = int(np.sum(np.asarray(ranks) == 0))
    ci = stats.binomtest(hits, len(ranks)).proportion_ci(level, method="wilson")
    return [float(ci.low), float(ci.high)]


def paired(ranks_a: list[int], ranks_b: list[int], k: int = 1) -> dict:
    """Method a against method b on the same probes at top-k: the probes only a recognises (``a_only``),
    only b (``b_only``), and the exact two-sided McNemar p-value of that split (1.0 when none differ)."""
    a, b = np.asarray(ranks_a) < k, np.asarray(ranks_b) < k
    if a.shape != b.shape:
        raise ValueError(f"paired comparison needs the same probes, got {a.size} and {b.size}")
    a_only, b_only = int(np.sum(a & ~b)), int(np.sum(~a & b))
    p = stats.binomtest(a_only, a_only + b_only).pvalue if a_only + b_only else 1.0
    return {"k": k, "a_only": a_only, "b_only": b_only, "p": float(p)}


def _rank(e: np.ndarray, gallery: np.ndarray, gallery_ids: np.ndarray, true_id: int) -> int:
    """0-based rank of the true identity among identities ordered by their nearest gallery face."""
    d = np.linalg.norm(gallery - e, axis=1)
    seen: list[int] = []
    for gid in gallery_ids[np.argsort(d, kind="stable")]:
        if gid not in seen:
            seen.append(int(gid))
    return seen.index(true_id)


def markdown(result: dict) -> str:
    lines = [f"# Recognition of completed probes: {result['probes']} probes against a gallery of "
             f"{result['gallery']} faces of {result['identities']} identities", "",
             "Top-k accuracy (dlib 128-D embedding, nearest gallery face). 'original' = unoccluded probe, "
             "'noise' = the occluded probe (noise in the hole).", ""]
    for k in TOP_K:
        lines += [f"## Top-{k}", "", "| mask | " + " | ".join(result["methods"]) + " |",
                  "|---|" + "---|" * len(result["methods"])]
        for o in result["masks"]:
            cells = [f"{result['summary'][o][m][f'top{k}']:.3f}" for m in result["methods"]]
            lines.append(f"| {o} ({masks.OCCLUSION_NAMES[o]}) | " + " | ".join(cells) + " |")
        lines.append("")
    if result.get("vs_noise"):
        others = [m for m in result["methods"] if m != "noise"]
        lines += ["## Top-1 against noise fill, probe by probe", "",
                  "Probes only the method recognises / only noise fill does, and the exact McNemar p-value "
                  "(two-sided): p well under 0.05 says the difference is more than the draw of probes. "
                  "'original' (the unoccluded probe) is the ceiling: what a completion that put the person's own "
                  "pixels back would score.", "",
                  "| mask | " + " | ".join(others) + " |", "|---|" + "---|" * len(others)]
        for o in result["masks"]:
            cells = [f"+{c['a_only']} / -{c['b_only']}, p {c['p']:.2f}"
                     for c in (result["vs_noise"][o][m] for m in others)]
            lines.append(f"| {o} ({masks.OCCLUSION_NAMES[o]}) | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def plot(result: dict, path: Path) -> None:
    """Grouped bars like the paper's Fig. 11: top-k accuracy per mask, one bar per method; top-1 bars carry
    their 95% Wilson interval, so overlapping bars read as what they are."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(TOP_K), figsize=(5 * len(TOP_K), 3.6), sharey=True)
    methods, names = result["methods"], result["masks"]
    width = 0.8 / len(methods)
    for ax, k in zip(np.atleast_1d(axes), TOP_K, strict=True):
        for j, m in enumerate(methods):
            tops = np.asarray([result["summary"][o][m][f"top{k}"] for o in names])
            err = None
            if k == 1 and all("top1_ci" in result["summary"][o][m] for o in names):
                ci = np.asarray([result["summary"][o][m]["top1_ci"] for o in names])  # [masks, 2]
                err = np.stack([tops - ci[:, 0], ci[:, 1] - tops])
            ax.bar(np.arange(len(names)) + j * width, tops, width, yerr=err, capsize=1.5, label=m)
        ax.set_xticks(np.arange(len(names)) + 0.4 - width / 2, names)
        ax.set_title(f"top-{k}")
        ax.set_ylim(0, 1)
    np.atleast_1d(axes)[0].set_ylabel("accuracy")
    np.atleast_1d(axes)[-1].legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(result: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=2))
    (out / "recognition.md").write_text(markdown(result))
    plot(result, out / "recognition.png")
