#!/usr/bin/env bash
# Submit stages 1 -> 2 -> 3 as one chain: each stage starts only once the one before ended with exit 0
# (sbatch --dependency=afterok), and starts from it (--init STORAGE/stage<N-1>, which refuses a run that
# did not finish). A stage stopped by USR1/TERM is requeued and continues; its successor keeps waiting
# for it. If a stage fails, Slurm cancels the stages after it (--kill-on-invalid-dep=yes).
# From the repository root, with the settings of slurm/ray_stage.sh in the environment; any arguments
# are sbatch options for every stage:
#   FACECOMP_DATA=/shared/data FACECOMP_STORAGE=/shared/runs slurm/train_all.sh --partition=gpu --account=myproj
# Prints one line per stage: "stage N: job ID".
set -euo pipefail
[ -f slurm/ray_stage.sh ] || { echo "run slurm/train_all.sh from the repository root" >&2; exit 2; }
prev=""
for stage in 1 2 3; do
  dep=()
  if [ -n "$prev" ]; then dep=(--dependency="afterok:$prev" --kill-on-invalid-dep=yes); fi
  out=$(sbatch --parsable "${dep[@]}" "$@" "slurm/train_stage$stage.sh")
  prev=${out%%;*}  # --parsable prints ID or ID;CLUSTER
  echo "stage $stage: job $prev"
done
