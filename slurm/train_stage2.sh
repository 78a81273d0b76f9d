#!/usr/bin/env bash
# Stage 2 (+ local adversarial loss, from stage 1) on a Slurm allocation: Ray head on the first node,
# workers on the others, one DeepSpeed worker per GPU. Submit from the repository root:
#   FACECOMP_DATA=/shared/data sbatch slurm/train_stage2.sh   # the folder holding celeba/
# Settings: slurm/ray_stage.sh. Override the allocation on the command line, e.g.
#   sbatch --partition=gpu --account=myproj --nodes=4 --gpus-per-node=4 --mem=0 --time=12:00:00 ...
# USR1 to the batch shell five minutes before the time limit (or scancel --signal=USR1|TERM --batch JOB)
# checkpoints the stage and requeues the job, which continues it; the log is appended to. All three
# stages as one chain: slurm/train_all.sh.
#SBATCH --job-name=facecomp-stage2
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=64
#SBATCH --time=24:00:00
#SBATCH --output=%x-%j.out
#SBATCH --open-mode=append
#SBATCH --signal=B:USR1@300
#SBATCH --requeue

# shellcheck source=slurm/ray_stage.sh
source "${SLURM_SUBMIT_DIR:-.}/slurm/ray_stage.sh"
run_stage 2 --init "$storage/stage1"
