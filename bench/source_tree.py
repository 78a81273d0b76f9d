"""Import facecomp from a checkout that was never installed (the lent GPU machine: no pip, and torch
there is not the version pyproject pins, so `pip install -e .` is not an option).

``facecomp/`` imports as is from the repository root on ``sys.path``; ``kernels/``, ``export/`` and
``cluster/`` install as ``facecomp.kernels``, ``facecomp.export`` and ``facecomp.cluster`` through
setuptools' ``package-dir`` (pyproject.toml), so from source they need this finder. Where facecomp
is installed (editable or not) the installed mapping is used and nothing is added.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGE_DIRS = {"facecomp.kernels": "kernels", "facecomp.export": "export", "facecomp.cluster": "cluster"}


class _PackageDirFinder(importlib.abc.MetaPathFinder):
    """setuptools' package-dir mapping for the three top-level folders, nothing else."""

    def __init__(self, repo: Path):
        self.repo = repo

    def find_spec(self, name, path=None, target=None):
        folder = PACKAGE_DIRS.get(name)
        if folder is None:
            return None
        root = self.repo / folder
        return importlib.util.spec_from_file_location(name, root / "__init__.py",
                                                      submodule_search_locations=[str(root)])


def install(repo: Path = REPO) -> str:
    """Make ``import facecomp.kernels`` (etc.) work from ``repo``; returns how facecomp is imported."""
    if str(repo) not in sys.path:
        sys.path.insert(0, str(repo))
    if importlib.util.find_spec("facecomp.kernels") is not None:
        return "installed"
    sys.meta_path.insert(0, _PackageDirFinder(repo))
    if importlib.util.find_spec("facecomp.kernels") is None:  # an internal invariant: the folders are there
        raise ImportError(f"facecomp.kernels not found under {repo}")
    return "source"
