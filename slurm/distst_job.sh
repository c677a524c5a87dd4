# shellcheck shell=bash
# Shared body of distst's batch scripts (sourced by slurm/*.sh after their #SBATCH headers): checks the
# environment, runs one distst task per GPU through srun, forwards the pre-time-limit signal, and requeues
# the job when the trainer has checkpointed and asked to be run again (exit code 75).

readonly DISTST_EXIT_REQUEUE=75

distst_fail() {
    echo "error: $*" >&2
    exit 2
}

distst_overrides() {
    # Dotted config overrides from the documented environment variables, then DISTST_OVERRIDES.
    local -a out=()
    [[ -n "${DISTST_RUN_DIR:-}" ]] && out+=("run.out_dir=$DISTST_RUN_DIR")
    [[ -n "${DISTST_CONTENT:-}" ]] && out+=("data.content=$DISTST_CONTENT")
    [[ -n "${DISTST_STYLE:-}" ]] && out+=("data.style=$DISTST_STYLE")
    [[ -n "${DISTST_VGG:-}" ]] && out+=("model.vgg_weights=$DISTST_VGG")
    [[ -n "${WANDB_PROJECT:-}" ]] && out+=("tracking.project=$WANDB_PROJECT")
    local -a extra=()
    read -r -a extra <<< "${DISTST_OVERRIDES:-}"
    printf '%s\n' "${out[@]}" "${extra[@]}"
}

distst_requeue() {
    echo "distst: checkpoint written; requeueing job $SLURM_JOB_ID to resume ($(date -Is))"
    scontrol requeue "$SLURM_JOB_ID"
    exit 0
}

distst_run() {
    local command=$1
    # From the first line on, USR1/TERM (bash's default for USR1 is to die) are remembered and, once the
    # tasks run, forwarded to them through srun; each task checkpoints at its next step and exits 75.
    local stop_requested=0 srun_pid=""
    trap 'stop_requested=1; if [[ -n $srun_pid ]]; then echo "distst: signal received, asking the tasks to checkpoint"; kill -USR1 "$srun_pid" 2>/dev/null || true; fi' USR1 TERM
    cd "$DISTST_HOME" || distst_fail "cannot enter DISTST_HOME=$DISTST_HOME"
    DISTST_VENV=${DISTST_VENV:-$DISTST_HOME/.venv}
    local python="$DISTST_VENV/bin/python"
    [[ -x "$python" ]] || distst_fail "no Python virtual environment at $DISTST_VENV: run 'make install' in" \
        "$DISTST_HOME (or set DISTST_VENV to the venv that has distst installed)"
    [[ -f "$DISTST_JOB" ]] || distst_fail "job config $DISTST_JOB not found (relative to $DISTST_HOME; set DISTST_JOB)"
    local -a overrides
    mapfile -t overrides < <(distst_overrides)

    # Fail fast with a readable message (missing shards, weights, bad keys) before any task starts.
    "$python" -m distst check "$DISTST_JOB" "${overrides[@]}" || exit 2
    if [[ $stop_requested -eq 1 ]]; then
        distst_requeue  # stopped before any work started: nothing to checkpoint
    fi

    # Ranks come from srun (SLURM_PROCID/SLURM_LOCALID/SLURM_NTASKS); values inherited from the submitting
    # shell (say, one inside torchrun) would make every task think it is rank 0 of a world of one.
    unset RANK LOCAL_RANK WORLD_SIZE LOCAL_WORLD_SIZE GROUP_RANK TORCHELASTIC_RUN_ID
    MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
    MASTER_PORT=$((20000 + SLURM_JOB_ID % 20000))
    export MASTER_ADDR MASTER_PORT
    echo "distst $command $DISTST_JOB on $SLURM_JOB_NUM_NODES node(s), $SLURM_NTASKS task(s)," \
         "restart ${SLURM_RESTART_COUNT:-0}, master $MASTER_ADDR:$MASTER_PORT, $(date -Is)"

    # srun in the background: bash runs traps only between commands, so a foreground srun would delay
    # the forwarding until it ended. srun passes the signal on to every task.
    srun --kill-on-bad-exit=1 "$python" -m distst "$command" "$DISTST_JOB" "${overrides[@]}" &
    srun_pid=$!
    local status=0
    while true; do
        status=0
        wait "$srun_pid" || status=$?
        kill -0 "$srun_pid" 2>/dev/null || break  # wait returned because srun ended, not for a trap
    done
    trap - USR1 TERM

    # 75: the tasks checkpointed and ask to run again. After a stop signal, any failure also means "requeue":
    # srun --kill-on-bad-exit counts the first task's 75 as a failure and may kill a task still exiting
    # (143), but the checkpoint was collective and is written atomically, so the last good one is intact.
    if [[ $status -eq $DISTST_EXIT_REQUEUE || ( $stop_requested -eq 1 && $status -ne 0 ) ]]; then
        distst_requeue
    fi
    echo "distst: finished with exit code $status ($(date -Is))"
    exit "$status"
}
