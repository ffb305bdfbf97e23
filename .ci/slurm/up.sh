#!/usr/bin/env bash
# Bring up a single-node SLURM cluster on this machine (CI or a dev box where you are root).
#
#   .ci/slurm/up.sh            # variant B: slurmdbd + MariaDB, so sacct works (the default)
#   SLURM_VARIANT=A .ci/slurm/up.sh   # variant A: no accounting (profile must use squeue)
#
# Tried on Debian 12 with slurm-wlm 22.05 (no systemd, no cgroups); this script is the recipe.
# Idempotent: a daemon whose PID file points at a live process is left alone, and config files
# are rewritten with the same content. If variant B cannot start, it falls back to variant A
# (unless SLURM_VARIANT=B was set explicitly). The running variant is recorded in
# /run/slurm-ci.variant (tests/test_slurm.py itself probes sacct and, without accounting, makes
# the plugin poll squeue instead).
# Not tried on hosts where systemd starts munge/mariadb/slurm units at install time: stop those
# units first, or this script starts second copies that fail on the busy ports/sockets.
# Stop everything with .ci/slurm/down.sh.
set -euo pipefail

VARIANT="${SLURM_VARIANT:-B}"
STRICT_VARIANT="${SLURM_VARIANT:+yes}"
MEM_MARGIN_MB="${SLURM_MEM_MARGIN_MB:-1024}"   # RealMemory = free -m total minus this
CLUSTER=localcluster
NODE=localhost
CONF_DIR=/etc/slurm
LOG_DIR=/var/log/slurm
STATE_FILE=/run/slurm-ci.variant

T0=$EPOCHREALTIME
step() { echo "[slurm-up +$(awk -v a="$T0" -v b="$EPOCHREALTIME" 'BEGIN{printf "%.1f", b-a}')s] $*"; }
die() { echo "[slurm-up] ERROR: $*" >&2; exit 1; }

[[ $(id -u) -eq 0 ]] || die "must run as root (installs packages, starts daemons)"

# pid_alive PIDFILE: true if the file exists and names a live process.
pid_alive() { [[ -s $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

# wait_for SECONDS DESCRIPTION CMD...: poll CMD every 0.25 s until it succeeds.
wait_for() {
    local limit=$1 what=$2; shift 2
    local deadline=$(( $(date +%s) + limit ))
    until "$@" >/dev/null 2>&1; do
        (( $(date +%s) < deadline )) || die "timed out after ${limit}s waiting for: $what"
        sleep 0.25
    done
}

# ---------------------------------------------------------------------------------------------
# 1. Packages (apt, only if missing)
need_pkgs=()
[[ -x /usr/sbin/slurmctld && -x /usr/sbin/slurmd ]] || need_pkgs+=(slurm-wlm)
[[ -x /usr/sbin/munged ]] || need_pkgs+=(munge)
if [[ $VARIANT == B ]]; then
    [[ -x /usr/sbin/mariadbd ]] || need_pkgs+=(mariadb-server)
    [[ -x /usr/sbin/slurmdbd ]] || need_pkgs+=(slurmdbd)
fi
if (( ${#need_pkgs[@]} )); then
    echo "[slurm-up] installing: ${need_pkgs[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null
    step "packages installed"
else
    step "packages already installed"
fi

# ---------------------------------------------------------------------------------------------
# 2. Configuration, sized from this machine
CPUS=$(nproc)
TOTAL_MB=$(free -m | awk '/^Mem:/ {print $2}')
REAL_MB=$(( TOTAL_MB - MEM_MARGIN_MB ))
(( REAL_MB > 256 )) || die "not enough memory: free -m total ${TOTAL_MB} MB, margin ${MEM_MARGIN_MB} MB"

mkdir -p "$CONF_DIR" /run/munge /var/lib/slurm/slurmctld /var/lib/slurm/slurmd "$LOG_DIR"
chown munge:munge /run/munge
chown slurm:slurm "$LOG_DIR" /var/lib/slurm/slurmctld

write_slurm_conf() {  # $1 = A|B
    local acct
    if [[ $1 == B ]]; then
        acct="JobAcctGatherType=jobacct_gather/linux
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=6819
# Store sbatch --comment (the plugin puts rule_<rule>_wildcards_<wc> there): sacct -o Comment
AccountingStoreFlags=job_comment"
    else
        acct="JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none"
    fi
    local new="$CONF_DIR/slurm.conf.new"
    cat >"$new" <<CONF
# Written by .ci/slurm/up.sh (variant $1) - single-node CI cluster, do not edit by hand.
ClusterName=$CLUSTER
SlurmctldHost=localhost
SlurmUser=slurm
AuthType=auth/munge
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=/var/lib/slurm/slurmctld
SlurmdSpoolDir=/var/lib/slurm/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
$acct
JobCompType=jobcomp/none
NodeName=$NODE CPUs=$CPUS RealMemory=$REAL_MB State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
CONF
    if cmp -s "$new" "$CONF_DIR/slurm.conf"; then
        rm -f "$new"
    else
        mv "$new" "$CONF_DIR/slurm.conf"
        # Daemons already running read the new file on reconfigure.
        if pid_alive /run/slurmctld.pid; then
            scontrol reconfigure && echo "[slurm-up] slurm.conf changed: reconfigured running slurmctld"
        fi
    fi
}

write_slurmdbd_conf() {
    cat >"$CONF_DIR/slurmdbd.conf" <<CONF
# Written by .ci/slurm/up.sh - local accounting for the CI cluster, do not edit by hand.
AuthType=auth/munge
DbdHost=localhost
DbdPort=6819
SlurmUser=slurm
LogFile=$LOG_DIR/slurmdbd.log
PidFile=/run/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=slurmpw
StorageLoc=slurm_acct_db
CONF
    chown slurm:slurm "$CONF_DIR/slurmdbd.conf"
    chmod 600 "$CONF_DIR/slurmdbd.conf"   # slurmdbd refuses to start otherwise
}

# A running cluster of the other variant must not be reconfigured underneath itself.
if [[ -s $STATE_FILE ]] && pid_alive /run/slurmctld.pid && [[ $(cat "$STATE_FILE") != "$VARIANT" ]]; then
    if [[ -n $STRICT_VARIANT ]]; then
        die "variant $(cat "$STATE_FILE") is running; run .ci/slurm/down.sh first"
    fi
    VARIANT=$(cat "$STATE_FILE")
    echo "[slurm-up] variant $VARIANT is already running; keeping it"
fi
write_slurm_conf "$VARIANT"
step "configured: NodeName=$NODE CPUs=$CPUS RealMemory=${REAL_MB}MB (free -m total ${TOTAL_MB}), variant $VARIANT"

# ---------------------------------------------------------------------------------------------
# 3. Daemons, in order: munged -> [mariadbd -> slurmdbd] -> slurmctld -> slurmd
if pid_alive /run/munge/munged.pid; then
    step "munged already running (pid $(cat /run/munge/munged.pid))"
else
    runuser -u munge -- /usr/sbin/munged
    wait_for 10 "munged pid file" pid_alive /run/munge/munged.pid
    step "munged started (pid $(cat /run/munge/munged.pid))"
fi
# The pid file can appear before munged answers on its socket: poll, do not try once.
munge_round_trip() { munge -n | unmunge; }
wait_for 15 "a munge round trip (munge -n | unmunge)" munge_round_trip

start_accounting() {  # returns non-zero instead of exiting, so the caller can fall back
    mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld
    if pid_alive /run/mysqld/mysqld.pid; then
        step "mariadbd already running (pid $(cat /run/mysqld/mysqld.pid))"
    else
        setsid /usr/sbin/mariadbd --user=mysql --bind-address=127.0.0.1 \
            --pid-file=/run/mysqld/mysqld.pid \
            >"$LOG_DIR/mariadb.log" 2>&1 </dev/null &
        local deadline=$(( $(date +%s) + 60 ))
        until mariadb -e 'select 1' >/dev/null 2>&1; do
            (( $(date +%s) < deadline )) || { echo "mariadbd did not answer; see $LOG_DIR/mariadb.log" >&2; return 1; }
            sleep 0.25
        done
        step "mariadbd started (pid $(cat /run/mysqld/mysqld.pid))"
    fi
    mariadb -e "CREATE DATABASE IF NOT EXISTS slurm_acct_db;
        CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurmpw';
        GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;" || return 1
    write_slurmdbd_conf
    if pid_alive /run/slurmdbd.pid; then
        step "slurmdbd already running (pid $(cat /run/slurmdbd.pid))"
    else
        /usr/sbin/slurmdbd || return 1
        local deadline=$(( $(date +%s) + 30 ))
        until sacctmgr -n list cluster >/dev/null 2>&1; do
            (( $(date +%s) < deadline )) || { echo "slurmdbd did not answer; see $LOG_DIR/slurmdbd.log" >&2; return 1; }
            sleep 0.25
        done
        step "slurmdbd started (pid $(cat /run/slurmdbd.pid))"
    fi
    # Without -P the name is truncated ("localclus+"); adding an existing cluster exits non-zero.
    if ! sacctmgr -n -P list cluster format=cluster | grep -qx "$CLUSTER"; then
        sacctmgr -i add cluster "$CLUSTER" >/dev/null || return 1
        step "cluster $CLUSTER registered in slurmdbd"
    fi
}

if [[ $VARIANT == B ]] && ! start_accounting; then
    [[ -z $STRICT_VARIANT ]] || die "variant B (slurmdbd + MariaDB) failed"
    echo "[slurm-up] WARNING: variant B failed; falling back to variant A (no accounting)" >&2
    VARIANT=A
    for pidfile in /run/slurmdbd.pid /run/mysqld/mysqld.pid; do
        if pid_alive "$pidfile"; then kill "$(cat "$pidfile")" || true; fi
    done
    write_slurm_conf A
fi
echo "$VARIANT" >"$STATE_FILE"

if pid_alive /run/slurmctld.pid; then
    step "slurmctld already running (pid $(cat /run/slurmctld.pid))"
else
    /usr/sbin/slurmctld
    wait_for 30 "slurmctld pid file" pid_alive /run/slurmctld.pid
    wait_for 30 "slurmctld answering" scontrol ping
    step "slurmctld started (pid $(cat /run/slurmctld.pid))"
fi

if pid_alive /run/slurmd.pid; then
    step "slurmd already running (pid $(cat /run/slurmd.pid))"
else
    /usr/sbin/slurmd -N "$NODE"
    wait_for 30 "slurmd pid file" pid_alive /run/slurmd.pid
    step "slurmd started (pid $(cat /run/slurmd.pid))"
fi

node_idle() { sinfo -h -n "$NODE" -o %t | grep -qx idle; }
if ! node_idle; then
    # A node left down/drained by an earlier run comes back with RESUME.
    state=$(sinfo -h -n "$NODE" -o %t || true)
    if [[ $state == down* || $state == drain* ]]; then
        scontrol update NodeName="$NODE" State=RESUME || true
    fi
fi
wait_for 60 "node $NODE idle (sinfo: $(sinfo -h -o '%t %E' 2>&1 || true))" node_idle
# Smoke test: one real job step through slurmctld -> slurmd (also proves munge auth end to end).
# Retried within a minute: right after slurmd registers, a first step can be refused.
srun_true() { timeout -s INT 30 srun --quiet -N1 -n1 -t 1 true; }
wait_for 60 "a job step through slurmctld -> slurmd (srun true)" srun_true
wait_for 30 "node $NODE idle again after the smoke test" node_idle
step "cluster up: variant $VARIANT, node $NODE idle, srun works"
sinfo
