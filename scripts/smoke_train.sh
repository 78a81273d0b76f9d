#!/usr/bin/env bash
# Every training stage end to end in seconds: set up, train stages 1 -> 2 -> 3 on the real faces with
# the smoke preset (stage 3 with the shipped parsing network), then complete a validation face.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
data="${FACECOMP_DATA:-../shared/data}/celeba"
out="${1:-runs/smoke}"
fc=.venv/bin/facecomp
$fc train --config smoke --stage 1 --data "$data" --run-dir "$out/stage1"
$fc train --config smoke --stage 2 --data "$data" --run-dir "$out/stage2" --init "$out/stage1"
$fc train --config smoke --stage 3 --data "$data" --run-dir "$out/stage3" --init "$out/stage2"
face=$(awk '$2 == 1 {print $1; exit}' "$data/list_eval_partition.txt")
$fc complete "$data/img_align_celeba/$face" --mask O3 --model "$out/stage3" --samples 2 --blend poisson \
  --out-dir "$out/completed"
echo "done: runs and completions under $out (TensorBoard: .venv/bin/tensorboard --logdir $out)"
