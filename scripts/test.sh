#!/usr/bin/env bash
# The test command: set up, then every test that runs on a CPU (slow ones excluded; see README).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test,faces
.venv/bin/python -m pytest -q "$@"
