#!/usr/bin/env bash
# The acceptance check of a new generator on all 780 validation faces (masks at 178x218):
#   bash training/acceptance.sh NEW_WEIGHTS_OR_RUN OUT [LIMIT] [OLD_WEIGHTS]
# OLD_WEIGHTS is the model to beat, by default the shipped one; once the new weights ship, name the one
# they replaced (e.g. paper-generator, the paper's generator as shipped) to check again.
# The table (new and shipped, each with and without Poisson blending; Telea, Navier-Stokes; SSIM, PSNR,
# hole PSNR, identity, parsing mIoU, landmarks; a 16-face grid to look at), recognition on the
# validation identities, then training/acceptance.py's verdict per blend. About 40 min on 2 CPU cores:
# run it with nohup. OUT holds CelebA-derived pictures: keep it out of git.
set -euo pipefail
cd "$(dirname "$0")/.."
new=${1:?usage: training/acceptance.sh NEW_WEIGHTS_OR_RUN OUT [LIMIT] [OLD_WEIGHTS]}
out=${2:?usage: training/acceptance.sh NEW_WEIGHTS_OR_RUN OUT [LIMIT] [OLD_WEIGHTS]}
limit=${3:-0}
old=${4:-shipped}
bin=${FACECOMP_VENV:-.venv}/bin
# The table runs one worker process per core (--workers 0), each scoring a share of the faces, and
# recognition runs beside it; every process has one thread, since much of the work is single-threaded
# (dlib, OpenCV).
# On 24 faces (2 cores, 2026-11-27, bench/acceptance_split.py) that took 75.8 s against 117.9 s for the
# table and recognition side by side with half the cores each (the table then ran on alone in one
# process), with identical results; the full check's table is about 4x longer than its recognition.
mkdir -p "$out"
OMP_NUM_THREADS=1 "$bin/facecomp" eval table --model "new=$new" --model "shipped=$old" --baselines telea,ns \
    --partition val --limit "$limit" --resolution input --blend poisson \
    --metrics identity,parsing,landmarks --grid-faces 16 --workers 0 --out "$out/table" --no-progress &
table=$!
OMP_NUM_THREADS=1 "$bin/facecomp" eval recognition --model "new=$new" --baselines noise,telea --partition val \
    --blend poisson --limit "$limit" --out "$out/recognition" --no-progress &
recognition=$!
wait $table
wait $recognition
"$bin/python" training/acceptance.py "$out/table" "$out/recognition" | tee "$out/acceptance.txt"
