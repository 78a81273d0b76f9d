"""How the acceptance check (``training/acceptance.sh``) shares the cores between its two evaluations.

The check runs ``facecomp eval table`` (both models, with and without Poisson, Telea, NS; identity,
parsing and landmark metrics) and ``facecomp eval recognition``. Much of both is single-threaded (dlib,
OpenCV, SSIM), so the layout matters more than the thread count. Layouts, timed in turn (A B A B ...):

- ``halves``: the two side by side, each with half the cores (the script's layout until 2026-11-27;
  once recognition ends, the table runs on alone in one process).
- ``workers``: the table with ``--workers`` one per core and recognition beside it, each process with
  one thread (the cores are oversubscribed while recognition runs, then the table keeps them all).

Each run's ``results.json`` of both evaluations must be identical across layouts (the layout only
moves work between processes). Reported: wall seconds per run, the median per layout, and the ratio.

    python bench/acceptance_split.py --model NEW --old OLD [--limit 24] [--repeats 2] [--out bench/results/x.json]

Run it on an otherwise idle machine: it measures how the work fills the cores.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

LAYOUTS = ("halves", "workers")


def commands(layout: str, new: str, old: str, limit: int, out: Path) -> list[tuple[list[str], dict]]:
    """The two evaluations of training/acceptance.sh as (argv, extra environment), started together."""
    cores = os.cpu_count() or 1
    fc = [sys.executable, "-m", "facecomp", "eval"]
    table = [*fc, "table", "--model", f"new={new}", "--model", f"shipped={old}", "--baselines", "telea,ns",
             "--partition", "val", "--limit", str(limit), "--resolution", "input", "--blend", "poisson",
             "--metrics", "identity,parsing,landmarks", "--grid-faces", "2", "--out", str(out / "table"),
             "--no-progress"]
    recognition = [*fc, "recognition", "--model", f"new={new}", "--baselines", "noise,telea", "--partition", "val",
                   "--blend", "poisson", "--limit", str(limit), "--out", str(out / "recognition"), "--no-progress"]
    if layout == "halves":
        half = {"OMP_NUM_THREADS": str(max(1, cores // 2))}
        return [(table, half), (recognition, half)]
    one = {"OMP_NUM_THREADS": "1"}
    return [([*table, "--workers", str(cores)], one), (recognition, one)]


def run_once(layout: str, new: str, old: str, limit: int) -> tuple[float, dict]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        start = time.perf_counter()
        procs = [subprocess.Popen(argv, env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                 for argv, env in commands(layout, new, old, limit, out)]
        for p in procs:
            _, err = p.communicate()
            if p.returncode != 0:
                raise SystemExit(f"{layout}: {p.args[4]} failed:\n{err.decode()[-2000:]}")
        wall = time.perf_counter() - start
        results = {name: json.loads((out / name / "results.json").read_text()) for name in ("table", "recognition")}
    return wall, results


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="the new generator (weights or run directory)")
    p.add_argument("--old", default="shipped", help="the model it is checked against")
    p.add_argument("--limit", type=int, default=24, help="validation faces (the real check takes all 780)")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--out", help="JSON file for the raw figures")
    args = p.parse_args()
    walls: dict[str, list[float]] = {k: [] for k in LAYOUTS}
    reference = None
    for r in range(args.repeats):
        for layout in LAYOUTS:
            wall, results = run_once(layout, args.model, args.old, args.limit)
            reference = reference or results
            if results != reference:
                raise SystemExit(f"{layout}: results differ from the first run's")
            walls[layout].append(wall)
            print(f"repeat {r + 1} {layout}: {wall:.1f} s", flush=True)
    medians = {k: statistics.median(v) for k, v in walls.items()}
    ratio = medians["halves"] / medians["workers"]
    print(" ".join(f"{k} median {v:.1f} s;" for k, v in medians.items()) + f" halves/workers {ratio:.2f}x; "
          "results identical across layouts")
    if args.out:
        Path(args.out).write_text(json.dumps({
            "date": date.today().isoformat(), "machine": f"{platform.node()} {os.cpu_count()} cores",
            "limit": args.limit, "repeats": args.repeats, "wall_s": walls, "median_s": medians,
            "ratio_halves_over_workers": ratio, "results_identical": True}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
