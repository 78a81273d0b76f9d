"""The CPU training step of this tree against an earlier commit's, side by side in one run.

Each side runs in its own child process from its own source tree (the earlier commit checked out as
a git worktree), in turn, A B A B ...: each child builds the preset's models for the stage as its own
training loop does (its own parsing-network preparation, its own optimizers and step), takes two warm-up
steps and times ``--steps`` steps of ``train_step`` on one in-memory batch of real faces. The D-skip
threshold is the preset's, as in training. Reported: each side's median step time over the repeats and
the median of the per-pair ratios old / new (above 1: this tree is faster).

    python bench/step_before_after.py --old 678e3f1 [--preset cpu] [--stage 3] [--repeats 5] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# top-level folders installed as facecomp.* (pyproject's package-dir); linked into an old tree's facecomp/
MAPPED = {"kernels": "kernels", "export": "export", "cluster": "cluster"}

CHILD = r"""
import json, sys, time, statistics, torch
from facecomp.config import load_config, default_data_root
from facecomp.data.celeba import CelebAIndex
from facecomp.data.pipeline import build_loader
from facecomp.train.loop import build_models, build_optimizers, build_updaters
from facecomp.train import step as step_mod
preset, stage, steps, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
torch.set_num_threads(threads)
cfg = load_config(preset)
files = CelebAIndex.open(default_data_root()).files("train", limit=cfg.train.batch_size)
batch = next(iter(build_loader(files, cfg.generator.image_size, cfg.data, cfg.mask, cfg.train.batch_size,
                               cfg.train.seed)))
torch.manual_seed(0)
models = build_models(cfg, stage, torch.device("cpu"))
updaters = build_updaters(models, build_optimizers(models, cfg), cfg)
read = getattr(step_mod, "read_metrics", lambda m: m)  # the sync-free step reads its metrics per log line
times = []
for s in range(steps + 2):
    t = time.perf_counter()
    res = step_mod.train_step(models, updaters, batch, cfg, stage, s)
    read(res.metrics)
    if s >= 2:
        times.append(time.perf_counter() - t)
print(json.dumps({"median_s": statistics.median(times), "module": step_mod.__file__}))
"""


def old_tree(rev: str) -> Path:
    """A worktree of ``rev`` whose facecomp/ imports like an installed one (mapped folders linked in)."""
    path = Path(tempfile.gettempdir()) / f"facecomp-{rev}"
    if not (path / "facecomp").is_dir():
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "--force", str(path), rev],
                       check=True, capture_output=True)
    for name, src in MAPPED.items():
        link = path / "facecomp" / name
        if not link.exists() and (path / src).is_dir():
            link.symlink_to(path / src)
    return path


def run_child(tree: Path, a: argparse.Namespace) -> dict:
    from facecomp.config import DATA_ENV, data_home

    env = {**os.environ, "PYTHONPATH": str(tree), DATA_ENV: str(data_home().resolve())}
    r = subprocess.run([sys.executable, "-c", CHILD, a.preset, str(a.stage), str(a.steps), str(a.threads)],
                       capture_output=True, text=True, env=env, cwd=tree)
    if r.returncode != 0:
        raise SystemExit(f"child in {tree} failed:\n{r.stderr[-3000:]}")
    out = json.loads(r.stdout.strip().splitlines()[-1])
    if not out["module"].startswith(str(tree)):
        raise SystemExit(f"child in {tree} imported {out['module']}: not that tree's step")
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--old", required=True, help="the earlier commit")
    p.add_argument("--preset", default="cpu")
    p.add_argument("--stage", type=int, default=3)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--out", type=Path)
    a = p.parse_args()
    trees = {"old": old_tree(a.old), "new": ROOT}
    seen: dict[str, list[float]] = {"old": [], "new": []}
    for i in range(a.repeats):
        for side, tree in trees.items():
            seen[side].append(run_child(tree, a)["median_s"])
        print(f"repeat {i + 1}: old {seen['old'][-1]:.3f} s  new {seen['new'][-1]:.3f} s", flush=True)
    ratios = [o / n for o, n in zip(seen["old"], seen["new"], strict=True)]
    result = {"old": a.old, "preset": a.preset, "stage": a.stage, "batch_steps": a.steps, "threads": a.threads,
              "old_median_step_s": statistics.median(seen["old"]), "new_median_step_s": statistics.median(seen["new"]),
              "ratio_old_over_new_median": statistics.median(ratios), "ratios": ratios, "old_s": seen["old"],
              "new_s": seen["new"]}
    print(json.dumps(result, indent=2))
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
