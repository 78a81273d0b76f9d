#!/usr/bin/env bash
# The main job on a fresh machine: set up, train stages 1 -> 2 -> 3 on the real faces with the
# smoke preset (seconds each), then complete a validation face with the result.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
data="${FACECOMP_DATA:-../shared/data}/celeba"
out="${1:-runs/smoke}"
fc=.venv/bin/facecomp
# Stage 3 needs a parsing network; until a trained one ships, an untrained one of the right
# shapes exercises the stage-3 plumbing (it teaches the generator nothing about faces).
[ -f facecomp/weights/parsing.safetensors ] || $fc parsing init --config smoke -o "$out/parsing.safetensors"
parsing="parsing.weights=$out/parsing.safetensors"
[ -f facecomp/weights/parsing.safetensors ] && parsing=""
$fc train --config smoke --stage 1 --data "$data" --run-dir "$out/stage1"
$fc train --config smoke --stage 2 --data "$data" --run-dir "$out/stage2" --init "$out/stage1"
$fc train --config smoke --stage 3 --data "$data" --run-dir "$out/stage3" --init "$out/stage2" $parsing
face=$(awk '$2 == 1 {print $1; exit}' "$data/list_eval_partition.txt")
$fc complete "$data/img_align_celeba/$face" --mask O3 --model "$out/stage3" --samples 2 --blend poisson \
  --out-dir "$out/completed"
echo "done: runs and completions under $out (TensorBoard: .venv/bin/tensorboard --logdir $out)"
