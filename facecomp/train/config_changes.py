"""Resuming with another config: which changes are refused unless the user allows them.

A resumed run must train what it started training; keys that change only how fast a run goes or how
much it logs may change freely (more threads on a bigger machine, a DALI loader's workers, log lines).
"""

from __future__ import annotations

from typing import Any

# Keys a resumed run may change freely: they change speed or logging, never the trained weights.
RESUME_FREE = frozenset({"runtime.threads", "runtime.kernels", "data.workers", "train.log_every",
                         "train.image_every", "validation.batch_size"})


def config_changes(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two config dicts (``a.b: old -> new``), except the free ones."""
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        path = f"{prefix}{key}"
        if isinstance(a, dict) and isinstance(b, dict):
            out += config_changes(a, b, f"{path}.")
        elif a != b and path not in RESUME_FREE:
            out.append(f"{path}: {a!r} -> {b!r}")
    return out
