"""The acceptance check: does a new generator beat the baselines and the shipped model?

Reads what `facecomp eval table` and `facecomp eval recognition` wrote (see `training/acceptance.sh`)
and prints one line per criterion with the figures behind it, for each blend the table scored
("none" and "poisson"), so the blend that passes becomes the default by evidence. The bar is issue
32's (completions people would keep), on every one of the masks scored (O1-O6):

1. the new model's output beats OpenCV Telea and Navier-Stokes on SSIM, PSNR and hole PSNR, every mask;
2. with the same blend, it beats the shipped model on SSIM, hole PSNR, landmark error and identity
   distance, every mask (so the gain is the generator's, not the blend's);
3. its sharpness ratio inside the hole (Sobel gradient, completion / original) is at least 0.85, every
   mask: SSIM and PSNR reward blur, this does not;
4. recognition top-1 after its completion (with that blend) is above noise fill's, every mask, and the
   probe-by-probe split against noise fill is significant (McNemar p < 0.05) on at least four.

Parsing mIoU against the shipped model is printed beside them, without a verdict.

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
MIN_SHARPNESS = 0.85
SIGNIFICANT = 0.05  # McNemar's p for the probe-by-probe split against noise fill
SIGNIFICANT_MASKS = 4


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


def _significant(recognition: dict, mask: str, method: str) -> bool:
    """The method recognises significantly more probes than noise fill at ``mask`` (McNemar)."""
    c = recognition.get("vs_noise", {}).get(mask, {}).get(method)
    return c is not None and c["a_only"] > c["b_only"] and c["p"] < SIGNIFICANT


def _ceiling(recognition: dict) -> str:
    """How many masks even the unoccluded probe wins significantly against noise fill: no completion can be
    expected to do better than putting the person's own pixels back (empty for results without it)."""
    masks = recognition["masks"]
    if not all("original" in recognition.get("vs_noise", {}).get(mask, {}) for mask in masks):
        return ""
    won = [mask for mask in masks if _significant(recognition, mask, "original")]
    return f" (the unoccluded probe itself: {len(won)}, {', '.join(won) or 'none'})"


def parsing_note(table: dict, new: str, old: str) -> str:
    s = table["summary"]
    cells = [(mask, mean(s, "parsing_miou", mask, new), mean(s, "parsing_miou", mask, old)) for mask in table["masks"]]
    if any(x is None or y is None for _, x, y in cells):
        return "parsing mIoU: not scored"
    return "parsing mIoU (no verdict): " + "; ".join(f"{mask} {x:.4f} vs {y:.4f}" for mask, x, y in cells)


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
    every(f"2. {a} beats {o} on SSIM, hole PSNR, landmark error, identity distance, every mask",
          [(m, a, o) for m in ("ssim", "psnr_hole", "landmark_error", "identity")])
    sharp = [(mask, mean(s, "sharpness", mask, a)) for mask in masks]
    rows.append((f"3. {a} sharpness ratio >= {MIN_SHARPNESS} on every mask",
                 None if any(v is None for _, v in sharp) else all(v >= MIN_SHARPNESS for _, v in sharp),
                 "; ".join(f"{mask}: {'missing' if v is None else f'{v:.3f}'}" for mask, v in sharp)))
    if recognition is None:
        rows.append((f"4. {a} recognition top-1 above noise fill's, every mask; significant on >= "
                     f"{SIGNIFICANT_MASKS}", None, "no recognition results"))
        return rows
    r = recognition["summary"]
    if a not in recognition["methods"]:  # recognition run without --blend for this blend
        rows.append((f"4. {a} recognition top-1 above noise fill's, every mask", None,
                     f"{a} not in the recognition results (run eval recognition with --blend {blend})"))
        return rows
    cells = [(mask, r[mask][a]["top1"], r[mask]["noise"]["top1"]) for mask in recognition["masks"]]
    significant = [mask for mask in recognition["masks"] if _significant(recognition, mask, a)]
    ok = all(x > y for _, x, y in cells) and len(significant) >= SIGNIFICANT_MASKS
    rows.append((f"4. {a} recognition top-1 above noise fill's, every mask; significant on >= {SIGNIFICANT_MASKS}",
                 ok, "; ".join(f"{mask}: {x:.3f} vs {y:.3f}{_paired(recognition, mask, a)}" for mask, x, y in cells)
                 + f"; significant on {len(significant)}" + _ceiling(recognition)))
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
        suffix = "" if blend == "none" else f"+{blend}"
        print(f"      {parsing_note(table, args.new + suffix, args.old + suffix)}")
        if all(ok for _, ok, _ in rows):
            passing.append(blend)
    print(f"\nblends passing every criterion: {', '.join(passing)}" if passing else "\nno blend passes every criterion")
    return 0 if passing else 1


if __name__ == "__main__":
    sys.exit(main())
