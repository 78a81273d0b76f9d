"""The acceptance check: does a new generator beat the baselines and the shipped model?

Reads what `facecomp eval table` and `facecomp eval recognition` wrote (see `training/acceptance.sh`)
and prints one line per criterion with the figures behind it, for each blend the table scored
("none" and "poisson"), so the blend that passes becomes the default by evidence:

1. the new model's output beats OpenCV Telea and Navier-Stokes on SSIM, PSNR and hole PSNR, every mask;
2. with the same blend, it beats the shipped model on SSIM, hole PSNR, parsing mIoU and landmark error,
   every mask (so the gain is the generator's, not the blend's);
3. its identity distance is below Telea's on at least four masks;
4. recognition top-1 after its completion (with that blend) is above noise fill's, every mask.

Usage: python training/acceptance.py TABLE_DIR RECOGNITION_DIR [--new new] [--old shipped]
Exit status 0 when some blend passes every criterion, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HIGHER_BETTER = {"ssim": True, "psnr": True, "psnr_hole": True, "parsing_miou": True, "landmark_error": False,
                 "identity": False, "face_found": True}


def mean(summary: dict, metric: str, mask: str, method: str) -> float | None:
    cell = summary.get(metric, {}).get(mask, {}).get(method)
    return None if cell is None else float(cell["mean"])


def beats(summary: dict, metric: str, mask: str, a: str, b: str) -> tuple[bool | None, str]:
    """Whether method ``a`` is better than ``b`` on ``metric`` at ``mask``, and the figures as text."""
    va, vb = mean(summary, metric, mask, a), mean(summary, metric, mask, b)
    if va is None or vb is None:
        return None, f"{metric} {mask}: missing ({a}: {va}, {b}: {vb})"
    better = va > vb if HIGHER_BETTER[metric] else va < vb
    return better, f"{metric} {mask}: {va:.4f} vs {vb:.4f}"


def _paired(recognition: dict, mask: str, method: str) -> str:
    """' (+a/-b probes, p P)': the probes only the method / only noise fill recognises, McNemar's p."""
    c = recognition.get("vs_noise", {}).get(mask, {}).get(method)
    return "" if c is None else f" (+{c['a_only']}/-{c['b_only']} probes, p {c['p']:.2f})"


def check(table: dict, recognition: dict | None, new: str, old: str, blend: str) -> list[tuple[str, bool | None, str]]:
    suffix = "" if blend == "none" else f"+{blend}"
    a, o, s, masks = new + suffix, old + suffix, table["summary"], table["masks"]
    rows: list[tuple[str, bool | None, str]] = []

    def every(name: str, pairs: list[tuple[str, str, str]]) -> None:
        results = [beats(s, metric, mask, x, y) for metric, x, y in pairs for mask in masks]
        known = [r for r, _ in results if r is not None]
        ok = None if len(known) < len(results) else all(known)
        misses = [text for r, text in results if r is False or r is None]
        rows.append((name, ok, "; ".join(misses) if misses else f"all {len(results)} comparisons"))

    every(f"1. {a} beats telea and ns on SSIM, PSNR, hole PSNR, every mask",
          [(m, a, base) for base in ("telea", "ns") for m in ("ssim", "psnr", "psnr_hole")])
    every(f"2. {a} beats {o} on SSIM, hole PSNR, parsing mIoU, landmark error, every mask",
          [(m, a, o) for m in ("ssim", "psnr_hole", "parsing_miou", "landmark_error")])
    wins = [beats(s, "identity", mask, a, "telea") for mask in masks]
    n = sum(1 for r, _ in wins if r)
    rows.append((f"3. {a} identity distance below telea's on >= 4 masks", n >= 4,
                 f"{n} of {len(masks)}: " + "; ".join(t for _, t in wins)))
    if recognition is None:
        rows.append(("4. recognition top-1 above noise fill's, every mask", None, "no recognition results"))
    else:
        r = recognition["summary"]
        if a not in recognition["methods"]:  # recognition run without --blend for this blend
            rows.append((f"4. {a} recognition top-1 above noise fill's, every mask", None,
                         f"{a} not in the recognition results (run eval recognition with --blend {blend})"))
            return rows
        cells = [(mask, r[mask][a]["top1"], r[mask]["noise"]["top1"]) for mask in recognition["masks"]]
        ok = all(x > y for _, x, y in cells)
        rows.append((f"4. {a} recognition top-1 above noise fill's, every mask", ok,
                     "; ".join(f"{mask}: {x:.3f} vs {y:.3f}{_paired(recognition, mask, a)}" for mask, x, y in cells)))
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("table", type=Path)
    ap.add_argument("recognition", type=Path, nargs="?")
    ap.add_argument("--new", default="new")
    ap.add_argument("--old", default="shipped")
    args = ap.parse_args(argv)
    table = json.loads((args.table / "results.json").read_text())
    recognition = json.loads((args.recognition / "results.json").read_text()) if args.recognition else None
    print(f"{table['faces']} faces, resolution {table['resolution']}, methods {', '.join(table['methods'])}")
    passing = []
    for blend in ("none", "poisson"):
        if (args.new if blend == "none" else f"{args.new}+{blend}") not in table["methods"]:
            continue
        rows = check(table, recognition, args.new, args.old, blend)
        print(f"\n## blend {blend}")
        for name, ok, detail in rows:
            print(f"{'PASS' if ok else 'MISS' if ok is False else 'N/A '}  {name}\n      {detail}")
        if all(ok for _, ok, _ in rows):
            passing.append(blend)
    print(f"\nblends passing every criterion: {', '.join(passing)}" if passing else "\nno blend passes every criterion")
    return 0 if passing else 1


if __name__ == "__main__":
    sys.exit(main())
