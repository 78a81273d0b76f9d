#!/usr/bin/env bash
# The main job on a fresh machine: set up (with face detection), then complete the public-domain
# astronaut portrait under the paper's masks O1-O6 with the shipped model -> runs/demo/demo.png.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh faces
out="${1:-runs/demo}"
.venv/bin/facecomp demo -o "$out"
