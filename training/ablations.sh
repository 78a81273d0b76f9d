#!/usr/bin/env bash
# The recipe ablations: short stage-2 runs from one stage-1 result, one knob changed each, then
# each run's last checkpoint (raw and EMA) scored on the first FACES validation faces:
#   bash training/ablations.sh STAGE1_RUN OUT [STEPS] [FACES] [VARIANT...]
# Variants (default: all), each against `base` (the cpu preset: cosine decay over the second half, no R1,
# adversarial weight 300, EMA 0.999):
#   no_decay   optim.lr_decay=none                 (learning-rate decay)
#   r1         adversarial.r1=1                    (R1 penalty on real faces, Mescheder et al. 2018)
#   adv_half   loss.adv_local=150                  (the adversarial weight, halved)
#   adv_double loss.adv_local=600                  (and doubled)
#   adv_quarter loss.adv_local=75                  (not in the default list: a quarter)
# A run that exists is resumed, so the script can be stopped and started again. STEPS (default 1000)
# includes the 500-step adversarial warm-up. Then `python training/ablations.py OUT` prints the table.
# Several hours on 2 CPU cores: run it with nohup. OUT holds CelebA-derived pictures: keep it out of git.
set -euo pipefail
cd "$(dirname "$0")/.."
init=${1:?usage: training/ablations.sh STAGE1_RUN OUT [STEPS] [FACES] [VARIANT...]}
out=${2:?usage: training/ablations.sh STAGE1_RUN OUT [STEPS] [FACES] [VARIANT...]}
steps=${3:-1000}
faces=${4:-100}
shift $(( $# < 4 ? $# : 4 ))
variants=("$@")
# The adversarial weight first: at 300, stage 2's training grids show stripes and colour blotches.
[ ${#variants[@]} -gt 0 ] || variants=(base adv_half r1 no_decay adv_double)
bin=${FACECOMP_VENV:-.venv}/bin
data=${FACECOMP_DATA:-../shared/data}

overrides() {
  case $1 in
    base) ;;
    no_decay) echo optim.lr_decay=none ;;
    r1) echo adversarial.r1=1 ;;
    adv_half) echo loss.adv_local=150 ;;
    adv_double) echo loss.adv_local=600 ;;
    adv_quarter) echo loss.adv_local=75 ;;
    *) echo "unknown variant $1" >&2; return 1 ;;
  esac
}

for v in "${variants[@]}"; do
  run=$out/$v
  extra=$(overrides "$v")
  if [ ! -f "$run/result.json" ]; then
    if [ -f "$run/checkpoints/latest" ]; then
      "$bin/facecomp" train --stage 2 --run-dir "$run" --resume --no-progress >> "$out/$v.log" 2>&1
    else
      mkdir -p "$out"
      # shellcheck disable=SC2086  # $extra: zero or one key=value
      "$bin/facecomp" train --config cpu --stage 2 --data "$data/celeba" --data "$data/celeba_extra" \
          --run-dir "$run" --init "$init" --no-progress "train.stage_steps=[9400, $steps, 4700]" \
          validation.select=last $extra >> "$out/$v.log" 2>&1
    fi
  fi
  last=$run/checkpoints/$(cat "$run/checkpoints/latest")
  [ -f "$run/table/results.json" ] || "$bin/facecomp" eval table --model "raw=$last/generator.safetensors" \
      --model "ema=$last/generator_ema.safetensors" --baselines "" --partition val --limit "$faces" \
      --resolution input --metrics identity,parsing,landmarks --out "$run/table" --no-progress > /dev/null
done
"$bin/python" training/ablations.py "$out"
