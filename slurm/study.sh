#!/usr/bin/env bash
# A study (distst study, jobs/study_adain.yaml) on one Slurm node: a local Ray over the node's GPUs, one GPU per
# run. Re-submitting reuses every finished run (a stopped one resumes from its checkpoints).
#
#   sbatch slurm/study.sh
#   DISTST_STUDY=jobs/local/study_adain.yaml sbatch --gpus-per-node=0 slurm/study.sh
#
# Environment (optional): DISTST_HOME, DISTST_VENV, DISTST_STUDY, DISTST_STUDY_DIR, WANDB_MODE, WANDB_PROJECT.
#
#SBATCH --job-name=distst-study
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=4
#SBATCH --cpus-per-task=32
#SBATCH --time=24:00:00
#SBATCH --output=slurm-%x-%j.out

set -euo pipefail
DISTST_HOME=${DISTST_HOME:-${SLURM_SUBMIT_DIR:-$PWD}}
cd "$DISTST_HOME"
DISTST_VENV=${DISTST_VENV:-$DISTST_HOME/.venv}
args=("${DISTST_STUDY:-jobs/study_adain.yaml}" --cpus "${SLURM_CPUS_ON_NODE:-${SLURM_CPUS_PER_TASK:-1}}")
[[ -n ${DISTST_STUDY_DIR:-} ]] && args+=(--out "$DISTST_STUDY_DIR")
exec "$DISTST_VENV/bin/distst" study "${args[@]}"
