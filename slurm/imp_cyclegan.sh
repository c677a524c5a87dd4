#!/usr/bin/env bash
# GAN lottery tickets for CycleGAN (IMP, jobs/imp_cyclegan.yaml) on a Slurm cluster: one GPU, one task, batch 1
# as the paper (more tasks would multiply the batch). Several runs (e.g. one per prune.discriminator option) are
# several jobs.
#
#   sbatch slurm/imp_cyclegan.sh
#   DISTST_OVERRIDES="model.inception_weights=/data/weights/pt_inception-2015-12-05-6726825d.pth" sbatch slurm/imp_cyclegan.sh
#   DISTST_OVERRIDES="prune.discriminator=finetune" sbatch slurm/imp_cyclegan.sh
#
# Environment (all optional; see slurm/README.md): DISTST_HOME, DISTST_VENV, DISTST_JOB, DISTST_RUN_DIR,
# DISTST_CONTENT (photos), DISTST_STYLE (paintings), DISTST_OVERRIDES, WANDB_MODE, WANDB_PROJECT.
# The run resumes by itself: USR1 arrives 120 s before the time limit, the trainer checkpoints and exits 75,
# and the job requeues itself.
#
#SBATCH --job-name=distst-imp-cyclegan
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=1
#SBATCH --cpus-per-task=8
#SBATCH --time=24:00:00
#SBATCH --signal=B:USR1@120
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=slurm-%x-%j.out

set -euo pipefail
DISTST_JOB=${DISTST_JOB:-jobs/imp_cyclegan.yaml}
DISTST_HOME=${DISTST_HOME:-${SLURM_SUBMIT_DIR:-$PWD}}
# shellcheck source=slurm/distst_job.sh
source "$DISTST_HOME/slurm/distst_job.sh" || { echo "error: no distst checkout at $DISTST_HOME" >&2; exit 2; }
distst_run imp
