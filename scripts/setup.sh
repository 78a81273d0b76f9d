#!/usr/bin/env bash
# Create .venv and install facecomp with the given extras (default: test). Idempotent.
# torch is pinned to 2.13.0 in pyproject.toml: on these machines pip takes the CPU wheel from disk.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-test}"
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip
fi
.venv/bin/python -m pip install -q -e ".[${extras}]"
