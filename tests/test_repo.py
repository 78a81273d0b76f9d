"""The repository itself: the tracked tree fits what the device tool carries, and bench/RESULTS.md
cites only raw files that are committed."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# The device tool sends the tracked tree plus carried files, 64 MiB in all; the tree keeps 12 MiB of
# that for carried wheels and the device check's faces.
TREE_LIMIT = 52 * 1024 * 1024


def _tracked() -> list[Path]:
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    r = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True)
    return [REPO / name for name in r.stdout.decode().split("\0") if name]


def test_tracked_tree_fits_the_device_tool():
    sizes = {p: p.stat().st_size for p in _tracked() if p.is_file()}  # a file deleted but not yet staged: gone
    total = sum(sizes.values())
    biggest = sorted(sizes, key=sizes.get, reverse=True)[:3]
    assert total < TREE_LIMIT, (f"tracked tree {total / 2**20:.1f} MiB >= 52 MiB; biggest: "
                                + ", ".join(f"{p.relative_to(REPO)} {sizes[p] / 2**20:.1f} MiB" for p in biggest))


def _expand(pattern: str) -> list[str]:
    """`a.{json,txt}` -> a.json, a.txt (the brace form RESULTS.md uses)."""
    m = re.search(r"\{([^}]*)\}", pattern)
    if not m:
        return [pattern]
    return [x for alt in m.group(1).split(",") for x in _expand(pattern[:m.start()] + alt + pattern[m.end():])]


def test_bench_results_cite_only_committed_files():
    tracked = {p.relative_to(REPO).as_posix() for p in _tracked()}
    text = (REPO / "bench" / "RESULTS.md").read_text()
    cited = re.findall(r"`(results/[^`\s]+)`", text)
    assert cited, "RESULTS.md cites no raw files: the pattern is out of date"
    missing = []
    for c in cited:
        for pattern in _expand(c):
            regex = re.compile("bench/" + re.escape(pattern).replace(r"\*", "[^/]*") + "$")
            if not any(regex.match(t) for t in tracked):
                missing.append(pattern)
    assert not missing, f"bench/RESULTS.md cites raw files that are not committed: {missing}"
