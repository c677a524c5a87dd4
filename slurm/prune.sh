#!/usr/bin/env bash
# Channel pruning (distst prune: l2, iccp or cpst; default jobs/iccp_adain.yaml) on a Slurm cluster: N nodes x G
# GPUs, one task per GPU; ends in RUN_DIR/slim/model.pt.
#
#   sbatch slurm/prune.sh                                       # ICCP on AdaIN, 1 node x 4 GPUs, as below
#   DISTST_JOB=jobs/l2_adain.yaml sbatch slurm/prune.sh         # any channel-pruning job
#   DISTST_OVERRIDES="prune.lam=3e-4" sbatch slurm/prune.sh
#
# Environment (all optional; see slurm/README.md): DISTST_HOME, DISTST_VENV, DISTST_JOB, DISTST_RUN_DIR,
# DISTST_CONTENT, DISTST_STYLE, DISTST_VGG, DISTST_OVERRIDES, WANDB_MODE, WANDB_PROJECT.
# The run resumes by itself, finished stages skipped: USR1 arrives 120 s before the time limit, the trainer
# checkpoints and exits 75,
# and the job requeues itself.
#
#SBATCH --job-name=distst-prune
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
DISTST_JOB=${DISTST_JOB:-jobs/iccp_adain.yaml}
DISTST_HOME=${DISTST_HOME:-${SLURM_SUBMIT_DIR:-$PWD}}
# shellcheck source=slurm/distst_job.sh
source "$DISTST_HOME/slurm/distst_job.sh" || { echo "error: no distst checkout at $DISTST_HOME" >&2; exit 2; }
distst_run prune
