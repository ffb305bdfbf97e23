#!/usr/bin/env bash
# Stop the single-node CI cluster started by .ci/slurm/up.sh: every daemon by its PID file, in
# reverse start order, waiting until each PID is gone (SIGKILL after a grace period). Safe to run
# when nothing (or only part of the cluster) is running. Never kills by process name.
set -euo pipefail

GRACE_S="${SLURM_STOP_GRACE_S:-30}"
T0=$EPOCHREALTIME
step() { echo "[slurm-down +$(awk -v a="$T0" -v b="$EPOCHREALTIME" 'BEGIN{printf "%.1f", b-a}')s] $*"; }

[[ $(id -u) -eq 0 ]] || { echo "[slurm-down] must run as root" >&2; exit 1; }

# alive PID: the process exists and is not a zombie (a daemonised process whose parent is gone
# is reaped by PID 1 at its own pace; kill -0 would still succeed on the zombie).
alive() {
    local state
    state=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) || return 1
    [[ -n $state && $state != Z ]]
}

# Jobs still running would keep slurmd's step daemons (slurmstepd) alive after slurmd exits.
if [[ -s /run/slurmctld.pid ]] && alive "$(cat /run/slurmctld.pid)"; then
    scancel --user=root 2>/dev/null || true
    for _ in $(seq 60); do
        [[ -z $(squeue -h -u root -o %i 2>/dev/null) ]] && break
        sleep 0.25
    done
    step "jobs cancelled"
fi

failed=0
# stop NAME PIDFILE
stop() {
    local name=$1 pidfile=$2 pid
    if [[ ! -s $pidfile ]]; then
        step "$name: no pid file ($pidfile)"
        return
    fi
    pid=$(cat "$pidfile")
    if ! alive "$pid"; then
        step "$name: not running (stale pid $pid)"
        rm -f "$pidfile"
        return
    fi
    kill "$pid" 2>/dev/null || true
    local deadline=$(( $(date +%s) + GRACE_S ))
    while alive "$pid"; do
        if (( $(date +%s) >= deadline )); then
            echo "[slurm-down] $name (pid $pid) ignored SIGTERM for ${GRACE_S}s; sending SIGKILL" >&2
            kill -KILL "$pid" 2>/dev/null || true
            sleep 0.5
            if alive "$pid"; then
                echo "[slurm-down] ERROR: $name (pid $pid) survived SIGKILL" >&2
                failed=1
            fi
            break
        fi
        sleep 0.1
    done
    rm -f "$pidfile"
    step "$name stopped (pid $pid)"
}

stop slurmd    /run/slurmd.pid
stop slurmctld /run/slurmctld.pid
stop slurmdbd  /run/slurmdbd.pid
stop mariadbd  /run/mysqld/mysqld.pid
stop munged    /run/munge/munged.pid
rm -f /run/slurm-ci.variant
step "all daemons stopped"
exit "$failed"
