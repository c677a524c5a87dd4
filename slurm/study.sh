#!/usr/bin/env bash
# A study (distst study, jobs/study_adain.yaml) on one Slurm node: a local Ray over the node's GPUs, one GPU per
# run. Re-submitting reuses every finished run (a stopped one resumes from its checkpoints).
#
#   sbatch slurm/study.sh
#   DISTST_STUDY=jobs/local/study_adain.yaml sbatch --gpus-per-node=0 slurm/study.sh
#
# Environment (optional): DISTST_HOME, DISTST_VENV, DISTST_STUDY, DISTST_STUDY_DIR, WANDB_MODE, WANDB_PROJECT.
# USR1 arrives 180 s before the time limit: the study stops its runs (they keep their checkpoints), exits 75,
# and the job requeues itself; the next run reuses the finished runs and resumes the others.
#
#SBATCH --job-name=distst-study
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=4
#SBATCH --cpus-per-task=32
#SBATCH --time=24:00:00
#SBATCH --signal=B:USR1@180
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=slurm-%x-%j.out

set -euo pipefail
DISTST_HOME=${DISTST_HOME:-${SLURM_SUBMIT_DIR:-$PWD}}
cd "$DISTST_HOME"
DISTST_VENV=${DISTST_VENV:-$DISTST_HOME/.venv}
args=("${DISTST_STUDY:-jobs/study_adain.yaml}" --cpus "${SLURM_CPUS_ON_NODE:-${SLURM_CPUS_PER_TASK:-1}}")
[[ -n ${DISTST_STUDY_DIR:-} ]] && args+=(--out "$DISTST_STUDY_DIR")
readonly EXIT_RESUME=75
study_pid="" stop_requested=0
trap 'stop_requested=1; [[ -n $study_pid ]] && kill -USR1 "$study_pid" 2>/dev/null || true' USR1 TERM
"$DISTST_VENV/bin/distst" study "${args[@]}" &
study_pid=$!
while true; do
    status=0
    wait "$study_pid" || status=$?
    kill -0 "$study_pid" 2>/dev/null || break  # wait returned because the study ended, not for a trap
done
trap - USR1 TERM
if [[ $status -eq $EXIT_RESUME || $stop_requested -eq 1 ]]; then
    echo "distst: study stopped; requeueing job $SLURM_JOB_ID to resume ($(date -Is))"
    scontrol requeue "$SLURM_JOB_ID"
    exit 0
fi
exit "$status"
