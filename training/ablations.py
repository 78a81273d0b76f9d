"""The table of the recipe ablations (`training/ablations.sh`): one row per variant and weights.

For each run folder OUT/VARIANT it reads the eval table of its last checkpoint (raw and EMA weights,
`table/results.json`) and the run's own validation at that step (`validation.json`), and prints the
means over the masks as a markdown table, best of each column in bold. Lower is better for landmark
error and identity distance, higher for the rest.

Usage: python training/ablations.py OUT
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

# (results.json key, column title, higher is better)
COLUMNS = [("ssim", "SSIM", True), ("psnr_hole", "hole PSNR", True), ("parsing_miou", "parsing mIoU", True),
           ("landmark_error", "landmark error", False), ("face_found", "face found", True),
           ("identity", "identity dist.", False)]
VARIANTS = ("base", "adv_quarter", "adv_half", "adv_double", "r1", "no_decay")  # table order


def rows(out: Path) -> list[dict]:
    found = []
    names = [v for v in VARIANTS if (out / v).is_dir()]
    names += sorted(p.name for p in out.iterdir() if p.is_dir() and p.name not in VARIANTS)
    for name in names:
        table_file = out / name / "table" / "results.json"
        if not table_file.is_file():
            continue
        table = json.loads(table_file.read_text())
        validation_file = out / name / "validation.json"
        last = json.loads(validation_file.read_text())[-1] if validation_file.is_file() else {}
        for weights in ("raw", "ema"):
            if weights not in table["methods"]:
                continue
            row = {"variant": name, "weights": weights, "faces": table["faces"], "step": last.get("step")}
            for key, _, _ in COLUMNS:
                cells = [table["summary"].get(key, {}).get(m, {}).get(weights) for m in table["masks"]]
                row[key] = None if any(c is None for c in cells) else sum(c["mean"] for c in cells) / len(cells)
            row["val_hole_psnr"] = last.get(weights, {}).get("hole_psnr")
            found.append(row)
    return found


def markdown(found: list[dict]) -> str:
    best = {}
    for key, _, higher in COLUMNS:
        values = [r[key] for r in found if r[key] is not None]
        best[key] = (max if higher else min)(values) if values else None
    faces = found[0]["faces"] if found else 0
    lines = [f"Means over O1-O6 on the first {faces} validation faces (178x218), last checkpoint of each run; "
             "'val' = the run's own validation (64 faces, 128 crop).", "",
             "| variant | weights | step | " + " | ".join(t for _, t, _ in COLUMNS) + " | val hole PSNR |",
             "|---|---|---|" + "---|" * (len(COLUMNS) + 1)]
    for r in found:
        cells = []
        for key, _, _ in COLUMNS:
            v = r[key]
            text = "—" if v is None else f"{v:.3f}" if key != "psnr_hole" else f"{v:.2f}"
            cells.append(f"**{text}**" if v is not None and v == best[key] else text)
        val = "—" if r["val_hole_psnr"] is None else f"{r['val_hole_psnr']:.2f}"
        lines.append(f"| {r['variant']} | {r['weights']} | {r['step']} | " + " | ".join(cells) + f" | {val} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    args = ap.parse_args(argv)
    found = rows(args.out)
    if not found:
        print(f"{args.out}: no scored ablation runs yet", file=sys.stderr)
        return 1
    print(markdown(found))
    return 0


if __name__ == "__main__":
    sys.exit(main())
