#!/usr/bin/env bash
# The device check: proves the GPU paths on a lent machine in <= 8 minutes (its time is short and every
# try counts against it), and runs the same code on a CPU in CI (--device cpu --quick). Runs from source:
# no install, any python3 that has torch.
#
#   scripts/device_check.sh --prepare                       # here: real validation faces -> device_faces/
#   OUT=/some/dir scripts/device_check.sh [--device cuda|cpu] [--quick] [--budget-s S]
#
# PYTHON picks the interpreter (default python3; it may carry flags, e.g. "python3 -X faulthandler").
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
read -r -a py <<< "${PYTHON:-python3}"
export PYTHONPATH="$repo/bench:$repo${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
cd "$repo"
exec "${py[@]}" "$repo/bench/device_check.py" "$@"
