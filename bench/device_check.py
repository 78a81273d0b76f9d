"""One command that proves the GPU paths on a lent machine, and runs the same code on a CPU in CI.

    scripts/device_check.sh --prepare                 # here: copy real validation faces to device_faces/
    scripts/device_check.sh [--device cuda] [--quick] [--out DIR]

Runs from source with whatever ``python3`` holds torch (bench/source_tree.py maps the package
folders), so the torch pin in pyproject.toml never stops it. Each step is timed and may fail
without stopping the rest; the results go to ``$OUT`` (else ``runs/device_check``) as
``device_check.json`` and ``device_check.txt``. Steps: bench/device_steps.py (the training ones:
bench/device_train.py). The whole run keeps
to ``--budget-s`` (default 450 s on CUDA: the 8 minutes a lent H100 gives it, less start-up):
heavy parts that would not fit are skipped with that reason, never silently dropped.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path

import source_tree

FACES_DIR = source_tree.REPO / "device_faces"  # ignored (.gitignore): CelebA images never enter the tree
FACES_LIMIT = 8 * 1024 * 1024


def prepare(data: Path, count: int) -> dict:
    """Copy the first ``count`` validation faces of ``data`` (CelebA layout) into device_faces/."""
    from facecomp.data.celeba import CelebAIndex

    files = CelebAIndex.open(data).files("val", limit=count)
    if FACES_DIR.exists():
        shutil.rmtree(FACES_DIR)
    FACES_DIR.mkdir()
    total = 0
    for f in files:
        total += f.stat().st_size
        if total > FACES_LIMIT:
            raise ValueError(f"{count} faces exceed the 8 MiB the device call may carry; ask for fewer")
        shutil.copyfile(f, FACES_DIR / f.name)
    return {"faces": len(files), "bytes": total, "folder": str(FACES_DIR)}


def find_faces(folder: str | None) -> list[Path]:
    """Real faces: --faces, else device_faces/ (prepared), else ../shared/data's validation partition."""
    candidates = [Path(folder)] if folder else [FACES_DIR]
    for c in candidates:
        if c.is_dir():
            files = sorted(p for p in c.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
            if files:
                return files
    from facecomp.config import data_home

    shared = data_home(source_tree.REPO.parent / "shared" / "data") / "celeba"
    if not folder and (shared / "img_align_celeba").is_dir():
        from facecomp.data.celeba import CelebAIndex

        return CelebAIndex.open(shared).files("val", limit=300)
    return []


def _finite(obj) -> bool:
    if isinstance(obj, float):
        return math.isfinite(obj)
    if isinstance(obj, dict):
        return all(_finite(v) for v in obj.values())
    if isinstance(obj, list | tuple):
        return all(_finite(v) for v in obj)
    return True


def run_steps(ctx, steps, isolate=None, saved=None) -> list[dict]:
    """Each step in turn. ``isolate(name)`` returns a finished record for a step run in a child process
    (or None to run it here); ``saved(records)`` is called after every step, so a later crash keeps
    what came before."""
    records = []
    for name, fn in steps:
        started = time.perf_counter()
        record = isolate(name) if isolate else None
        if record is None:
            record = {"name": name}
            try:
                result = fn(ctx)
                record["status"] = result.pop("status", "ok")
                record["result"] = result
            except ctx.Skip as e:
                record["status"], record["reason"] = "skipped", str(e)
            except Exception as e:  # a step's failure is a result: record it and go on to the next step
                record["status"], record["error"] = "error", f"{type(e).__name__}: {e}"
                record["traceback"] = traceback.format_exc(limit=6)[-3000:]
        record["seconds"] = round(time.perf_counter() - started, 2)
        records.append(record)
        ctx.records[name] = record
        print(f"[device_check] {name}: {record['status']} in {record['seconds']} s", flush=True)
        if saved:
            saved(records)
    return records


def run_in_child(name: str, args: argparse.Namespace, out: Path, budget_s: float) -> dict:
    """Run one step in its own process: a native crash there (a segfault while loading a compiled
    artifact, say) becomes that step's record instead of ending the whole check."""
    child_out = out / f"child_{name}"
    cmd = [sys.executable, "-X", "faulthandler", str(Path(__file__).resolve()), "--child", "--only", name,
           "--device", args.device, "--out", str(child_out), "--budget-s", str(max(1.0, budget_s))]
    cmd += ["--quick"] if args.quick else []
    cmd += ["--faces", args.faces] if args.faces else []
    # the floor: a --quick run compiles its AOTInductor package on a CPU, minutes on a busy 2-core machine
    timeout = max(240.0 if args.quick else 60.0, budget_s + 120)
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        return {"name": name, "status": "timeout", "process": "child", "error": f"no result after {timeout:.0f} s",
                "stderr_tail": (e.stderr or b"")[-3000:].decode(errors="replace") if isinstance(e.stderr, bytes)
                else (e.stderr or "")[-3000:]}
    report = child_out / "device_check.json"
    if report.is_file():
        steps = json.loads(report.read_text())["steps"]
        if steps:
            return steps[0] | {"process": "child"}
    how = (f"killed by {signal.Signals(-r.returncode).name}" if r.returncode < 0
           else f"exited with status {r.returncode}")
    return {"name": name, "status": "crashed", "process": "child", "error": f"the step's process {how}",
            "stderr_tail": (r.stderr or r.stdout)[-3000:]}


def summary_text(report: dict) -> str:
    lines = [f"facecomp device check, {report['date']}, {report['device']['name']} "
             f"({'quick' if report['quick'] else 'full'}), {report['total_s']} s"]
    for r in report["steps"]:
        lines.append(f"\n## {r['name']}: {r['status']} ({r['seconds']} s)")
        for key in ("reason", "error", "process"):
            if key in r:
                lines.append(f"  {key}: {r[key]}")
        if "stderr_tail" in r:  # a crashed child: the end of what it printed (faulthandler's stack)
            lines += ["  stderr (end):", *(f"    {line}" for line in r["stderr_tail"].splitlines()[-20:])]
        for key, value in r.get("result", {}).items():
            lines.append(f"  {key}: {json.dumps(value, default=str)}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prepare", action="store_true", help="copy real validation faces into device_faces/ and exit")
    ap.add_argument("--data", default=str(source_tree.REPO.parent / "shared" / "data" / "celeba"))
    ap.add_argument("--count", type=int, default=300, help="faces to prepare")
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    ap.add_argument("--quick", action="store_true", help="small shapes and few repeats (CI: under a minute on CPU)")
    ap.add_argument("--faces", help="folder of real faces (default: device_faces/, else ../shared/data)")
    ap.add_argument("--budget-s", type=float, default=None, help="time for the whole run (default 450; quick 60)")
    ap.add_argument("--only", help="comma-separated step names to run (default: all)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)  # a step run by run_in_child
    ap.add_argument("--out", default=os.environ.get("OUT") or str(source_tree.REPO / "runs" / "device_check"))
    args = ap.parse_args(argv)
    how = source_tree.install()
    if args.prepare:
        print(json.dumps(prepare(Path(args.data), args.count)))
        return 0

    import device_context  # imports torch: after the source tree is in place
    import device_steps

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    budget = args.budget_s or (60.0 if args.quick else 450.0)
    ctx = device_context.Context.create(args.device, args.quick, out, find_faces(args.faces), budget)
    started = time.perf_counter()
    steps = device_steps.STEPS
    if args.only:
        names = [n for n, _ in steps]
        unknown = set(args.only.split(",")) - set(names)
        if unknown:
            raise SystemExit(f"device_check: unknown step(s) {sorted(unknown)} (valid: {', '.join(names)})")
        steps = [(n, f) for n, f in steps if n in args.only.split(",")]

    def report_of(records: list[dict], partial: bool) -> dict:
        report = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "quick": args.quick,
                  "facecomp_from": how, "device": ctx.describe(), "faces": len(ctx.faces), "budget_s": budget,
                  "total_s": round(time.perf_counter() - started, 1), "partial": partial, "steps": records}
        report["all_finite"] = _finite([r.get("result", {}) for r in records])
        return report

    def save(records: list[dict], partial: bool = True) -> dict:
        report = report_of(records, partial)
        (out / "device_check.json").write_text(json.dumps(report, indent=1, default=str))
        (out / "device_check.txt").write_text(summary_text(report))
        return report

    def isolate(name: str) -> dict | None:
        if args.child or name not in device_steps.ISOLATED:
            return None
        return run_in_child(name, args, out, ctx.left())

    records = run_steps(ctx, steps, isolate=isolate, saved=save)
    report = save(records, partial=False)
    print(summary_text(report))
    return 0 if all(r["status"] in ("ok", "skipped", "untestable") for r in records) else 1


if __name__ == "__main__":
    sys.exit(main())
