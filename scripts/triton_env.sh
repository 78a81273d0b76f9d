#!/usr/bin/env bash
# A Triton Inference Server for the end-to-end test (tests/test_triton.py), in its own environment:
# .venv/triton/ holds nvidia-pytriton (its wheel bundles a CPU-capable `tritonserver` 2.51 binary and
# the Python backend) and what facecomp_complete imports there (numpy, OpenCV; facecomp's source comes
# in through PYTHONPATH). Its own venv because that Python backend stub reads numpy 2 arrays wrongly
# (every input arrived as zeros): pytriton pins numpy<2, while facecomp's .venv has numpy 2.
# Idempotent; the test skips with the reason when this environment is absent.
set -euo pipefail
cd "$(dirname "$0")/.."
env=.venv/triton  # inside .venv/, which git ignores
if [ ! -x "$env/bin/python" ]; then
  python3 -m venv "$env"
fi
"$env/bin/python" -m pip install -q "nvidia-pytriton==0.7.0" "numpy<2" "opencv-python-headless>=4.8" \
  "onnxruntime==1.31.1"
