#!/usr/bin/env bash
# Tear down the local Slurm cluster started by scripts/slurm_local_up.sh:
# cancel jobs, then stop slurmd, slurmctld, slurmdbd, mariadb and munged.
# Idempotent: daemons that are not running are skipped.
# Keeps state (job-id counter, accounting db) in $SALN_SLURM_STATE so the next
# `up` is quick; `--purge` also deletes it and the generated /etc/slurm files.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
LOG_TAG=slurm-down
# shellcheck source=slurm/lib.sh
. "$HERE/slurm/lib.sh"

STOP_TIMEOUT=${SALN_SLURM_STOP_TIMEOUT:-20} # seconds before SIGKILL

# stop_pid NAME PID: SIGTERM, wait, then SIGKILL if it does not exit.
stop_pid() {
    local name=$1 pid=$2 deadline=$((SECONDS + STOP_TIMEOUT))
    kill -TERM "$pid" 2>/dev/null || return 0
    while alive "$pid"; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            log "$name (pid $pid) ignored SIGTERM for ${STOP_TIMEOUT}s: killing it"
            kill -KILL "$pid" 2>/dev/null || true
            break
        fi
        sleep 0.2
    done
}

# stop_daemon NAME PIDFILE [strict]: stop every live instance we can find.
stop_daemon() {
    local name=$1 pidfile=$2 strict=${3:-} pid tries=0
    pid=$(pid_of "$name" "$pidfile" "$strict")
    if [ -z "$pid" ]; then
        log "$name not running"
        return
    fi
    while [ -n "$pid" ]; do
        log "stopping $name (pid $pid)"
        stop_pid "$name" "$pid"
        pid=$(pid_of "$name" "$pidfile" "$strict")
        tries=$((tries + 1))
        [ "$tries" -lt 5 ] || die "$name (pid $pid) will not stop"
    done
    rm -f "$pidfile"
}

# Jobs would otherwise survive slurmd as orphaned slurmstepd processes.
cancel_jobs() {
    local jobs
    is_running slurmctld "$RUN_DIR/slurmctld.pid" || return 0
    jobs=$(squeue -h -o %i 2>/dev/null | tr '\n' ' ')
    [ -n "${jobs// /}" ] || return 0
    log "cancelling jobs: $jobs"
    # shellcheck disable=SC2086  # one argument per job id
    scancel $jobs 2>/dev/null || true
    local deadline=$((SECONDS + 15))
    while [ -n "$(squeue -h -o %i 2>/dev/null)" ] && [ "$SECONDS" -lt "$deadline" ]; do
        sleep 0.5
    done
}

# slurmstepd processes left by a crashed slurmd belong to our jobs: end them.
stop_stepds() {
    local pid
    for pid in $(pgrep -x slurmstepd || true); do
        alive "$pid" || continue # a finished step not yet reaped by init
        log "stopping leftover slurmstepd (pid $pid)"
        stop_pid slurmstepd "$pid"
    done
}

purge_state() {
    local f
    case "$SALN_SLURM_STATE" in
    "" | / | /var | /var/lib | /tmp) die "refusing to purge SALN_SLURM_STATE='$SALN_SLURM_STATE'" ;;
    esac
    log "purging $SALN_SLURM_STATE and generated configs in $SLURM_ETC"
    rm -rf "$SALN_SLURM_STATE"
    for f in slurm.conf slurmdbd.conf cgroup.conf; do
        if grep -qs "$GENERATED_MARK" "$SLURM_ETC/$f"; then
            rm -f "$SLURM_ETC/$f"
        fi
    done
}

main() {
    local purge=
    case "${1:-}" in
    "") ;;
    --purge) purge=1 ;;
    *) die "usage: $0 [--purge]" ;;
    esac
    require_root
    cancel_jobs
    stop_daemon slurmd "$RUN_DIR/slurmd.pid"
    stop_stepds
    stop_daemon slurmctld "$RUN_DIR/slurmctld.pid"
    stop_daemon slurmdbd "$RUN_DIR/slurmdbd.pid" # after slurmctld: it flushes job records
    stop_daemon mariadbd "$DB_PID" strict        # after slurmdbd, its only client
    stop_daemon munged "$MUNGE_PID"              # last: every Slurm daemon authenticates with it
    [ -z "$purge" ] || purge_state
    log "cluster down in ${SECONDS}s"
}

main "$@"
