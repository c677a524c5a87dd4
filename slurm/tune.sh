#!/usr/bin/env bash
# A Ray Tune sweep (distst tune, tune/imp_sweep.yaml) on a Slurm allocation: Ray on every node, the sweep
# driver on the first one, each trial a (multi-process) distst IMP run placed by Ray.
#
#   sbatch slurm/tune.sh                                              # 2 nodes x 4 GPUs, as below
#   DISTST_SWEEP=tune/imp_rate_search.yaml sbatch --nodes=4 slurm/tune.sh
#
# Environment (all optional; see slurm/README.md): DISTST_HOME, DISTST_VENV, DISTST_SWEEP, DISTST_SWEEP_DIR,
# DISTST_RAY_PORT, WANDB_MODE, WANDB_PROJECT.
# One Ray node per Slurm node (one task each), given Slurm's CPU and GPU counts explicitly (Ray would otherwise
# count every core of the node). USR1 arrives 180 s before the time limit: the sweep stops its trials (they
# keep their distst checkpoints), the job requeues itself and the next run continues with --resume.
#
#SBATCH --job-name=distst-tune
#SBATCH --nodes=2
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
DISTST_SWEEP=${DISTST_SWEEP:-tune/imp_sweep.yaml}
readonly EXIT_RESUME=75

fail() {
    echo "error: $*" >&2
    exit 2
}

stop_requested=0 tune_pid=""
# From the first line on: a stop signal is remembered and, once the sweep runs, passed on to it.
trap 'stop_requested=1; if [[ -n $tune_pid ]]; then echo "distst: signal received, stopping the sweep"; kill -USR1 "$tune_pid" 2>/dev/null || true; fi' USR1 TERM

cd "$DISTST_HOME" || fail "cannot enter DISTST_HOME=$DISTST_HOME"
DISTST_VENV=${DISTST_VENV:-$DISTST_HOME/.venv}
python="$DISTST_VENV/bin/python"
ray_cli="$DISTST_VENV/bin/ray"
[[ -x "$python" && -x "$ray_cli" ]] || fail "no Python virtual environment with Ray at $DISTST_VENV: run 'make install'" \
    "in $DISTST_HOME (or set DISTST_VENV)"
[[ -f "$DISTST_SWEEP" ]] || fail "sweep file $DISTST_SWEEP not found (relative to $DISTST_HOME; set DISTST_SWEEP)"
out_args=()
[[ -n "${DISTST_SWEEP_DIR:-}" ]] && out_args=(--out "$DISTST_SWEEP_DIR")

# Ray's head on the first node of the allocation; its address from the name Slurm gives the node.
mapfile -t nodes < <(scontrol show hostnames "$SLURM_JOB_NODELIST")
head_node=${nodes[0]}
head_ip=$(getent ahostsv4 "$head_node" | awk 'NR == 1 {print $1}')
[[ -n "$head_ip" ]] || fail "cannot resolve the head node $head_node"
port=${DISTST_RAY_PORT:-$((30000 + SLURM_JOB_ID % 10000))}
address="$head_ip:$port"
cpus=${SLURM_CPUS_PER_TASK:-${SLURM_CPUS_ON_NODE:-1}}
gpus=${SLURM_GPUS_PER_NODE:-${SLURM_GPUS_ON_NODE:-0}}
gpus=${gpus##*:}  # "a100:4" -> 4
# A short, job-private folder: Ray's socket paths must stay short, and no other Ray instance shares it.
ray_tmp="/tmp/ray_distst_$SLURM_JOB_ID"
ray_args=(--num-cpus="$cpus" --num-gpus="$gpus" --temp-dir="$ray_tmp" --block --disable-usage-stats)
echo "distst tune $DISTST_SWEEP on ${#nodes[@]} node(s) x $cpus CPUs x $gpus GPUs, Ray head $address," \
     "restart ${SLURM_RESTART_COUNT:-0}, $(date -Is)"

# Each `ray start --block` is an srun step that lives as long as its Ray node; stopping the step stops the
# node. (Not `ray symmetric-run` nor `ray stop`: both end with `ray stop`, which stops every Ray instance on
# the node, other users' and other jobs' included.)
unset RANK LOCAL_RANK WORLD_SIZE LOCAL_WORLD_SIZE MASTER_ADDR MASTER_PORT  # Ray Train sets its own
srun --nodes=1 --ntasks=1 --nodelist="$head_node" --overlap \
    "$ray_cli" start --head --node-ip-address="$head_ip" --port="$port" --include-dashboard=false "${ray_args[@]}" &
ray_pids=("$!")
if (( ${#nodes[@]} > 1 )); then
    sleep 5  # the workers retry, but give the head a head start
    srun --nodes=$((${#nodes[@]} - 1)) --ntasks-per-node=1 --exclude="$head_node" --overlap \
        "$ray_cli" start --address="$address" "${ray_args[@]}" &
    ray_pids+=("$!")
fi
stop_ray() {
    kill "${ray_pids[@]}" 2>/dev/null || true
    wait "${ray_pids[@]}" 2>/dev/null || true
}
trap 'stop_ray' EXIT

# --resume continues the sweep of an earlier (preempted) run of this job, or starts it.
status=0
if [[ $stop_requested -eq 0 ]]; then
    "$python" -m distst tune "$DISTST_SWEEP" --address "$address" --min-nodes "${#nodes[@]}" --resume \
        "${out_args[@]}" &
    tune_pid=$!
    while true; do
        status=0
        wait "$tune_pid" || status=$?
        kill -0 "$tune_pid" 2>/dev/null || break  # wait returned because the sweep ended, not for a trap
    done
fi
trap - USR1 TERM

if [[ $status -eq $EXIT_RESUME || $stop_requested -eq 1 ]]; then
    echo "distst: sweep state saved; requeueing job $SLURM_JOB_ID to resume ($(date -Is))"
    stop_ray
    scontrol requeue "$SLURM_JOB_ID"
    exit 0
fi
echo "distst: sweep finished with exit code $status ($(date -Is))"
exit "$status"
