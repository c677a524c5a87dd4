# shellcheck shell=bash
# Shared body of distst's batch scripts (sourced by slurm/*.sh after their #SBATCH headers): checks the
# environment, runs one distst task per GPU through srun, forwards the pre-time-limit signal, and requeues
# the job when the trainer has checkpointed and asked to be run again (exit code 75) - but only when this
# run wrote a checkpoint newer than the one it started from, and at most DISTST_MAX_REQUEUES times. A task
# killed by a signal (a rank's death: the OOM killer, a segfault) requeues the same way, at most
# DISTST_MAX_RANK_DEATHS times.

readonly DISTST_EXIT_REQUEUE=75  # distst.stop.EXIT_REQUEUE
# Seconds the tasks get after srun starts before a stop signal is passed on: a Python task still starting up
# has no handler yet and would die of it (exit 138/143), with no checkpoint, so the job could not requeue.
readonly DISTST_TASK_START_S=10

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

distst_give_up() {
    # One readable line, then the job fails (never 75: that code means "run me again").
    local status=$1; shift
    echo "error: $*" >&2
    [[ $status -eq 0 || $status -eq $DISTST_EXIT_REQUEUE ]] && status=1
    exit "$status"
}

distst_max_requeues() {
    local max=${DISTST_MAX_REQUEUES:-50}
    [[ $max =~ ^[0-9]+$ ]] || distst_fail "DISTST_MAX_REQUEUES=$max is not a whole number (default 50)"
    echo "$max"
}

distst_max_rank_deaths() {
    local max=${DISTST_MAX_RANK_DEATHS:-3}
    [[ $max =~ ^[0-9]+$ ]] || distst_fail "DISTST_MAX_RANK_DEATHS=$max is not a whole number (default 3)"
    echo "$max"
}

distst_rank_died() {
    # A task ended by a signal: srun reports 128 + the highest signal among its tasks, so the SIGTERM it sends the
    # others after one was SIGKILLed usually stands for the death (srun's own lines name the task and how it
    # ended). Requeued as a stop is - only if this run wrote a checkpoint (else a requeue would die the same way)
    # - and at most DISTST_MAX_RANK_DEATHS times per job, counted in the run directory: SLURM_RESTART_COUNT
    # counts the stops' requeues too. (A task's own failure whose peers srun had to end can look the same: the
    # cap bounds its requeues.)
    local status=$1 before=$2 max deaths
    local record="$DISTST_RUN_DIR/.distst-rank-deaths"
    local how="a task was ended by a signal (srun's exit code $status; srun's lines above name the task)"
    max=$(distst_max_rank_deaths) || exit 2
    if ! distst_wrote_checkpoint "$before"; then
        distst_give_up "$status" "$how before this run wrote a checkpoint in $DISTST_RUN_DIR: not requeueing," \
            "a requeue would repeat the same work (see srun's and the tasks' lines above)"
    fi
    deaths=$(grep -c "^$SLURM_JOB_ID " "$record" 2>/dev/null) || deaths=0
    if (( deaths >= max )); then
        distst_give_up "$status" "$how, and job $SLURM_JOB_ID has been requeued after $deaths rank death(s), the" \
            "limit (DISTST_MAX_RANK_DEATHS=$max): not requeueing again; resubmit it to resume from its last checkpoint"
    fi
    echo "$SLURM_JOB_ID $(date -Is) $status" >> "$record"
    echo "distst: $how; requeueing to resume from the last checkpoint (rank death $((deaths + 1)) of at most $max)"
    distst_requeue
}

distst_requeue() {
    # Slurm counts requeues in SLURM_RESTART_COUNT (unset on the first run).
    local restarts=${SLURM_RESTART_COUNT:-0} max
    max=$(distst_max_requeues) || exit 2
    if (( restarts >= max )); then
        distst_give_up 1 "job $SLURM_JOB_ID has been requeued $restarts time(s), the limit" \
            "(DISTST_MAX_REQUEUES=$max): not requeueing again; resubmit it to resume from its last checkpoint"
    fi
    echo "distst: requeueing job $SLURM_JOB_ID to resume (requeue $((restarts + 1)) of at most $max, $(date -Is))"
    scontrol requeue "$SLURM_JOB_ID"
    exit 0
}

distst_checkpoints() {
    # Every finished checkpoint under a run directory, one "<inode> <path>" line each, sorted. Finished:
    # checkpoints/step_N without .tmp (IMP levels keep theirs in level_<k>/checkpoints/). A save renames a
    # new directory into place, so a checkpoint written later - even one re-written under an old name after
    # falling back from a damaged one - shows up as a line that was not there before.
    local run_dir=$1
    [[ -d $run_dir ]] || return 0
    find "$run_dir" -maxdepth 3 -type d -path '*checkpoints/step_*' ! -name '*.tmp' -printf '%i %p\n' | sort
}

distst_wrote_checkpoint() {
    # Whether the run directory holds a checkpoint that was not among those listed at the start ($1).
    local before=$1 now
    now=$(distst_checkpoints "$DISTST_RUN_DIR")
    [[ -n $now ]] && [[ -n $(comm -13 <(printf '%s\n' "$before") <(printf '%s\n' "$now")) ]]
}

distst_master_port() {
    # 20000 + (job id + an offset from the cluster's name) mod 20000 (distinct for jobs sharing a node; jobs of
    # two clusters on one node get different ports too), or the next port after it that is free here: one
    # another process holds would stop the tasks' rendezvous (EADDRINUSE). The batch script runs on the
    # allocation's first node, where rank 0 listens.
    local python=$1 offset=0
    if [[ -n ${SLURM_CLUSTER_NAME:-} ]]; then
        offset=$(( $(printf '%s' "$SLURM_CLUSTER_NAME" | cksum | cut -d' ' -f1) % 20000 ))
    fi
    local first=$((20000 + (SLURM_JOB_ID + offset) % 20000))
    "$python" - "$first" <<'PY'
import socket
import sys

first = int(sys.argv[1])
for port in range(first, first + 100):
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as torch's store: TIME_WAIT is no obstacle
        try:
            sock.bind(("", port))
        except OSError:
            continue
    print(port)
    break
else:
    sys.exit(f"error: ports {first}..{first + 99} are all in use on this node: no port for the tasks' rendezvous")
PY
}

distst_default_run_dir() {
    # runs/<job>/<config hash>, from distst's own config code (what the tasks would pick without run.out_dir).
    local python=$1 command=$2; shift 2
    local -a implied=()
    [[ $command == imp ]] && implied=("prune.method=imp")  # what `distst imp` puts before the overrides
    "$python" -c 'import sys; from distst.config import load_config
print(load_config(sys.argv[1], sys.argv[2:]).run_dir())' "$DISTST_JOB" "${implied[@]}" "$@"
}

distst_run() {
    local command=$1
    # From the first line on, USR1/TERM (bash's default for USR1 is to die) are remembered and, once the
    # tasks run, forwarded to them through srun; each task checkpoints at its next step and exits 75.
    local stop_requested=0 forward_pending=0
    trap 'stop_requested=1; forward_pending=1' USR1 TERM
    cd "$DISTST_HOME" || distst_fail "cannot enter DISTST_HOME=$DISTST_HOME"
    DISTST_VENV=${DISTST_VENV:-$DISTST_HOME/.venv}
    local python="$DISTST_VENV/bin/python"
    [[ -x "$python" ]] || distst_fail "no Python virtual environment at $DISTST_VENV: run 'make install' in" \
        "$DISTST_HOME (or set DISTST_VENV to the venv that has distst installed)"
    [[ -f "$DISTST_JOB" ]] || distst_fail "job config $DISTST_JOB not found (relative to $DISTST_HOME; set DISTST_JOB)"
    local -a overrides
    mapfile -t overrides < <(distst_overrides)

    # Fail fast with a readable message (missing shards, weights, bad keys) before any task starts.
    distst_max_requeues > /dev/null || exit 2
    distst_max_rank_deaths > /dev/null || exit 2
    # As many processes as the srun below starts (a resume must have been written by as many); the launcher
    # variables a submitting shell may have left are not this job's.
    env -u RANK -u WORLD_SIZE "$python" -m distst check "$DISTST_JOB" "${overrides[@]}" \
        --nproc "${SLURM_NTASKS:-1}" || exit 2

    # The script must see the run directory the tasks write, to tell whether they got any further.
    if [[ -z ${DISTST_RUN_DIR:-} ]]; then
        DISTST_RUN_DIR=$(distst_default_run_dir "$python" "$command" "${overrides[@]}") ||
            distst_fail "cannot work out the run directory of $DISTST_JOB; set DISTST_RUN_DIR"
        mapfile -t overrides < <(distst_overrides)
    fi
    local checkpoints_at_start
    checkpoints_at_start=$(distst_checkpoints "$DISTST_RUN_DIR")
    if [[ $stop_requested -eq 1 ]]; then
        distst_requeue  # stopped before any work started: nothing to checkpoint
    fi

    # Ranks come from srun (SLURM_PROCID/SLURM_LOCALID/SLURM_NTASKS); values inherited from the submitting
    # shell (say, one inside torchrun) would make every task think it is rank 0 of a world of one.
    unset RANK LOCAL_RANK WORLD_SIZE LOCAL_WORLD_SIZE GROUP_RANK TORCHELASTIC_RUN_ID
    MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
    MASTER_PORT=$(distst_master_port "$python") || exit 2
    export MASTER_ADDR MASTER_PORT
    echo "distst $command $DISTST_JOB on $SLURM_JOB_NUM_NODES node(s), $SLURM_NTASKS task(s)," \
         "restart ${SLURM_RESTART_COUNT:-0}, master $MASTER_ADDR:$MASTER_PORT, $(date -Is)"

    # srun in the background, watched in a loop of short sleeps: bash runs traps only between commands, so a
    # foreground srun would delay the forwarding until it ended. srun passes the signal on to every task.
    srun --kill-on-bad-exit=1 "$python" -m distst "$command" "$DISTST_JOB" "${overrides[@]}" &
    local srun_pid=$! srun_started=$SECONDS status=0
    while kill -0 "$srun_pid" 2>/dev/null; do
        if (( forward_pending && SECONDS - srun_started >= DISTST_TASK_START_S )); then
            forward_pending=0
            echo "distst: signal received, asking the tasks to checkpoint"
            kill -USR1 "$srun_pid" 2>/dev/null || true
        fi
        sleep 1 &
        wait $! || true  # returns at once when a trap runs
    done
    wait "$srun_pid" || status=$?
    trap - USR1 TERM

    # 75: the tasks checkpointed and ask to run again. After a stop signal, another failure may also mean
    # "requeue": srun --kill-on-bad-exit counts the first task's 75 as a failure and may kill a task still
    # exiting (143). Either way requeue only if this run wrote a checkpoint: otherwise the checkpoint
    # failed (disk full, unwritable run directory) and a requeue would only repeat the same work.
    if [[ $status -eq $DISTST_EXIT_REQUEUE || ( $stop_requested -eq 1 && $status -ne 0 ) ]]; then
        if ! distst_wrote_checkpoint "$checkpoints_at_start"; then
            distst_give_up "$status" "the tasks stopped (exit code $status) but wrote no checkpoint in" \
                "$DISTST_RUN_DIR since the job started: not requeueing, a requeue would repeat the same work" \
                "(see the tasks' errors above)"
        fi
        distst_requeue
    fi
    # A task killed by a signal, not asked to stop: a rank's death. (After the hang watchdog's 75 srun kills the
    # hung peer, and may report that: requeued the same way, under this cap.)
    if (( status > 128 )); then
        distst_rank_died "$status" "$checkpoints_at_start"
    fi
    echo "distst: finished with exit code $status ($(date -Is))"
    exit "$status"
}
