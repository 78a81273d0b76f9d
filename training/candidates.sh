#!/usr/bin/env bash
# The equal-compute comparison of generator/loss changes: short stage-3 runs from one start (the
# shipped generator, fresh discriminators), each given the same training FLOPs, two at a time with one
# thread each, then `facecomp eval table` (with the sharpness ratio) on the validation faces:
#   bash training/candidates.sh OUT [PAPER_STEPS] [VARIANT...]
# Variants (default: all four), each a config on top of the cpu preset's stage 3:
#   paper          the paper's generator continued (the control: what the same compute buys unchanged)
#   skips          generator.skips=4: encoder features reach the decoder through zero-started projections
#   skips_dilated  + generator.context=dilated: GLCIC's dilated convolutions on the deepest skip
#   skips_percep   skips + loss.perceptual=100 (parsing-network features) + loss.feature_match=30
# Steps per variant = PAPER_STEPS x (the paper step's FLOPs / the variant's), counted by
# torch.utils.flop_counter on a real step (training/candidate_flops.py). A run that exists is resumed.
# Then every trained variant and the shipped generator are scored side by side on the first FACES
# validation faces (env FACES, default 120; masks at 178x218, raw generator output: the blend is the same
# post-process for all) into OUT/table: SSIM, PSNR, hole PSNR, sharpness, identity, parsing, landmarks.
# OUT holds CelebA-derived pictures: keep it out of git.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: training/candidates.sh OUT [PAPER_STEPS] [VARIANT...]}
paper_steps=${2:-300}
shift $(( $# < 2 ? $# : 2 ))
variants=("$@")
[ ${#variants[@]} -gt 0 ] || variants=(paper skips skips_dilated skips_percep)
bin=${FACECOMP_VENV:-.venv}/bin
data=${FACECOMP_DATA:-../shared/data}
mkdir -p "$out"

overrides() {
  case $1 in
    paper) ;;
    skips) echo generator.skips=4 ;;
    skips_dilated) echo generator.skips=4 generator.context=dilated ;;
    skips_percep) echo generator.skips=4 loss.perceptual=100 loss.feature_match=30 ;;
    *) echo "unknown variant $1" >&2; return 1 ;;
  esac
}

# One start for all: the shipped generator's stage 3, continued at a warm-restart rate; fresh Ds ramp in
# over 100 steps; raw weights scored (an EMA of a few hundred steps is mostly its start).
common=(optim.lr_g=1e-4 optim.lr_d=1e-4 optim.decay_start=0.0 adversarial.warmup_steps=100 adversarial.r1=1
        train.ema=0 validation.select=last runtime.threads=1)

run() {
  local v=$1 steps
  # shellcheck disable=SC2046
  steps=$("$bin/python" training/candidate_flops.py --paper-steps "$paper_steps" $(overrides "$v"))
  local dir="$out/$v" resume=()
  [ -f "$dir/config.toml" ] && resume=(--resume)
  [ -f "$dir/result.json" ] && return 0
  # shellcheck disable=SC2046
  "$bin/facecomp" train --config cpu --stage 3 --data "$data/celeba" --data "$data/celeba_extra" \
      --run-dir "$dir" --init paper-generator --no-progress "${resume[@]}" \
      "${common[@]}" "train.stage_steps=[1, 1, $steps]" "train.ckpt_every=$steps" $(overrides "$v") \
      > "$dir.log" 2>&1
}

# two at a time, one thread each, so both see the same machine
for ((i = 0; i < ${#variants[@]}; i += 2)); do
  run "${variants[i]}" &
  [ $((i + 1)) -lt ${#variants[@]} ] && run "${variants[i + 1]}" &
  wait
done
echo "trained: ${variants[*]}"
models=(--model "shipped=paper-generator")
for v in "${variants[@]}"; do models+=(--model "$v=$out/$v"); done
OMP_NUM_THREADS=1 "$bin/facecomp" eval table "${models[@]}" --baselines "" --partition val --limit "${FACES:-120}" \
    --resolution input --blend none --metrics identity,parsing,landmarks --grid-faces 16 --workers 0 \
    --out "$out/table" --no-progress
