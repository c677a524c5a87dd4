#!/usr/bin/env bash
# The first run on a GPU node: python -m distst.smoke, step by step (checklist and fixes: docs/gpu.md).
#
#   sbatch slurm/smoke_gpu.sh                                          # 1 node x 1 GPU, as below (~5 min)
#   sbatch --ntasks-per-node=4 --gpus-per-node=4 slurm/smoke_gpu.sh    # every GPU of a node, one task each
#   bash slurm/smoke_gpu.sh                                            # on a GPU node outside Slurm (no srun step)
#   bash slurm/smoke_gpu.sh --dry                                      # on a CPU machine: the same steps on the CPU
#
# Arguments (and DISTST_SMOKE_ARGS, space-separated) go to python -m distst.smoke: --dry, --out DIR,
# --nproc N, --steps-only a,b. Environment: DISTST_HOME, DISTST_VENV (as for the other scripts).
# It prints [PASS]/[FAIL]/[SKIP] per step, a summary table and where smoke.json is; exit code 1 if a step
# failed. It never requeues itself: the two requeue headers are the ones every distst batch script carries,
# and a USR1 before the time limit makes it stop, print the table and fail (raise --time if it needs more).
#
#SBATCH --job-name=distst-smoke-gpu
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=1
#SBATCH --cpus-per-task=8
#SBATCH --time=00:30:00
#SBATCH --signal=B:USR1@60
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=slurm-%x-%j.out

set -euo pipefail
# Under sbatch the script runs from a copy in Slurm's spool: the checkout is where it was submitted from.
DISTST_HOME=${DISTST_HOME:-${SLURM_SUBMIT_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}}
# shellcheck source=slurm/distst_job.sh
source "$DISTST_HOME/slurm/distst_job.sh" || { echo "error: no distst checkout at $DISTST_HOME" >&2; exit 2; }
cd "$DISTST_HOME" || distst_fail "cannot enter DISTST_HOME=$DISTST_HOME"
DISTST_VENV=${DISTST_VENV:-$DISTST_HOME/.venv}
python="$DISTST_VENV/bin/python"
[[ -x "$python" ]] || distst_fail "no Python virtual environment at $DISTST_VENV: run 'make install' in" \
    "$DISTST_HOME (or set DISTST_VENV to the venv that has distst installed)"

declare -a extra=()
read -r -a extra <<< "${DISTST_SMOKE_ARGS:-}"
args=("$@" "${extra[@]}")
dry=0
for arg in "${args[@]}"; do
    [[ $arg == --dry ]] && dry=1
done

echo "distst smoke test: $(hostname), Slurm job ${SLURM_JOB_ID:-none (outside Slurm)}, $(date -Is)"
if (( ! dry )); then
    if command -v nvidia-smi > /dev/null; then
        nvidia-smi --query-gpu=index,name,driver_version,memory.total --format=csv,noheader || true
    else
        echo "nvidia-smi: not found on $(hostname) (no NVIDIA driver here?)"
    fi
fi
# exec: the batch shell becomes the smoke test, so Slurm's USR1 (--signal=B:...) reaches it directly.
exec "$python" -m distst.smoke "${args[@]}"
