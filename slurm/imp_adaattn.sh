#!/usr/bin/env bash
# Lottery tickets for AdaAttN (IMP, jobs/imp_adaattn.yaml) on a Slurm cluster: N nodes x G GPUs, one task per GPU.
#
#   sbatch slurm/imp_adaattn.sh                                   # 1 node x 4 GPUs, as below
#   sbatch --nodes=2 --ntasks-per-node=8 --gpus-per-node=8 slurm/imp_adaattn.sh
#   DISTST_OVERRIDES="prune.rounds=8" sbatch slurm/imp_adaattn.sh
#
# Environment (all optional; see slurm/README.md): DISTST_HOME, DISTST_VENV, DISTST_JOB, DISTST_RUN_DIR,
# DISTST_CONTENT, DISTST_STYLE, DISTST_VGG, DISTST_OVERRIDES, WANDB_MODE, WANDB_PROJECT.
# The run resumes by itself: USR1 arrives 120 s before the time limit, the trainer checkpoints and exits 75,
# and the job requeues itself.
#
#SBATCH --job-name=distst-imp-adaattn
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=4
#SBATCH --gpus-per-node=4
#SBATCH --cpus-per-task=8
#SBATCH --time=24:00:00
#SBATCH --signal=B:USR1@120
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=slurm-%x-%j.out

set -euo pipefail
DISTST_JOB=${DISTST_JOB:-jobs/imp_adaattn.yaml}
DISTST_HOME=${DISTST_HOME:-${SLURM_SUBMIT_DIR:-$PWD}}
# shellcheck source=slurm/distst_job.sh
source "$DISTST_HOME/slurm/distst_job.sh" || { echo "error: no distst checkout at $DISTST_HOME" >&2; exit 2; }
distst_run imp
