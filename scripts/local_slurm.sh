#!/usr/bin/env bash
# A real one-node SLURM on this machine (Debian slurm-wlm + munge), to try `snakemake --profile slurm`
# without a cluster; tests/test_slurm.py uses it. Needs root (apt, /etc/slurm, daemons).
#
#   bash scripts/local_slurm.sh start   # install if missing, write /etc/slurm/slurm.conf, start daemons
#   bash scripts/local_slurm.sh stop    # stop every daemon it started, by pid; remove the config
#
# No accounting daemon: `sacct` does not work here, so the profile must poll with squeue
# (site key status_command: squeue). Partition: $SEKD_SLURM_PARTITION (default "main").
# State, logs and pid files: $SEKD_SLURM_STATE (default /tmp/sekd-slurm).
set -euo pipefail

STATE=${SEKD_SLURM_STATE:-/tmp/sekd-slurm}
PARTITION=${SEKD_SLURM_PARTITION:-main}
CONF=/etc/slurm/slurm.conf
MARK="# written by sekd scripts/local_slurm.sh"
DAEMONS=(slurmd slurmctld munged)

die() { echo "local_slurm: $*" >&2; exit 1; }

install_packages() {
    command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null \
        && command -v sbatch >/dev/null && return
    [ "$(id -u)" = 0 ] || die "slurm-wlm and munge are not installed and this is not root: cannot apt-get install them"
    command -v apt-get >/dev/null || die "slurm-wlm and munge are not installed and there is no apt-get"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null || die "apt-get update failed"
    # policy-rc.d (exit 101) keeps apt from starting the daemons (this script starts them itself);
    # one made here is removed again, so later installs on the machine behave as before
    local made=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d
        made=1
    fi
    local status=0
    apt-get install -y -qq slurm-wlm slurmctld slurmd slurm-client munge >/dev/null || status=$?
    [ "$made" = 1 ] && rm -f /usr/sbin/policy-rc.d
    [ "$status" = 0 ] || die "apt-get install slurm-wlm munge failed"
}

write_conf() {
    if [ -e "$CONF" ] && ! grep -qF "$MARK" "$CONF"; then
        die "$CONF exists and was not written by this script; not touching a real cluster's config"
    fi
    local node cpus mem
    node=$(hostname -s)
    cpus=$(nproc)
    mem=$(awk '/MemTotal/ {print int($2 / 1024 * 0.8)}' /proc/meminfo)
    mkdir -p /etc/slurm "$STATE"/{log,spool/ctld,spool/d,run}
    # The jobs' own srun (the plugin clears SLURM_CONF) reads the compiled-in /etc/slurm/slurm.conf.
    cat > "$CONF.tmp" <<EOF
$MARK
ClusterName=sekdlocal
SlurmctldHost=$node(127.0.0.1)
AuthType=auth/munge
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=$STATE/spool/ctld
SlurmdSpoolDir=$STATE/spool/d
SlurmctldPidFile=$STATE/run/slurmctld.pid
SlurmdPidFile=$STATE/run/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MailProg=/bin/true
NodeName=$node NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=$PARTITION Nodes=$node Default=YES MaxTime=INFINITE State=UP
EOF
    mv "$CONF.tmp" "$CONF"
}

start_munge() {
    mkdir -p /run/munge && chown munge:munge /run/munge && chmod 755 /run/munge
    [ -s /etc/munge/munge.key ] || die "/etc/munge/munge.key is missing (reinstall munge)"
    runuser -u munge -- munged --pid-file=/run/munge/munged.pid
    ln -sf /run/munge/munged.pid "$STATE/run/munged.pid"
    munge -n | unmunge >/dev/null || die "munge does not work (see /var/log/munge/munged.log)"
}

wait_idle() {
    for _ in $(seq 1 100); do
        state=$(sinfo -h -o %T 2>/dev/null || true)
        case "$state" in idle*|mixed*|allocated*) return 0 ;; esac
        sleep 0.2
    done
    die "node did not become idle (sinfo: '${state:-}'); see $STATE/log/"
}

stop_daemons() {
    for daemon in "${DAEMONS[@]}"; do
        pidfile="$STATE/run/$daemon.pid"
        [ -e "$pidfile" ] || continue
        pid=$(cat "$pidfile" 2>/dev/null || true)
        if [ -n "$pid" ] && kill "$pid" 2>/dev/null; then
            for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
            kill -9 "$pid" 2>/dev/null || true
        fi
        rm -f "$pidfile"
    done
}

case "${1:-}" in
    start)
        [ "$(id -u)" = 0 ] || die "needs root (daemons, /etc/slurm/slurm.conf)"
        install_packages
        stop_daemons
        if pgrep -x slurmctld >/dev/null || pgrep -x slurmd >/dev/null; then
            die "a slurmctld/slurmd not started from $STATE is running (pids $(pgrep -d, -x 'slurmctld|slurmd')); stop it first"
        fi
        write_conf
        start_munge
        slurmctld -f "$CONF"
        slurmd -f "$CONF"
        wait_idle
        echo "local_slurm: partition '$PARTITION' on $(hostname -s) is up (state and logs in $STATE)"
        ;;
    stop)
        stop_daemons
        # With a config but no controller, every scontrol waits ~9 s, and the SLURM executor
        # plugin runs one each time Snakemake starts: remove the config this script wrote.
        if [ -e "$CONF" ] && grep -qF "$MARK" "$CONF"; then
            rm -f "$CONF"
        fi
        echo "local_slurm: stopped"
        ;;
    *)
        die "usage: $0 start|stop"
        ;;
esac
