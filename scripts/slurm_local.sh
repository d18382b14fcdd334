#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, for the sweep tests and CI (needs root and Debian's
# slurm-wlm + munge: apt-get install -y slurm-wlm munge).
#   scripts/slurm_local.sh start   # munge key, munged, slurm.conf for this host, slurmctld + slurmd; waits for an idle node
#   scripts/slurm_local.sh stop    # stops the daemons this script started
# State lives in $SLURM_LOCAL_DIR (default /tmp/braintumor-slurm); the config goes where the SLURM tools look.
set -euo pipefail

STATE=${SLURM_LOCAL_DIR:-/tmp/braintumor-slurm}
CONF_DIR=/etc/slurm
NODE=$(hostname -s)

start() {
    for tool in munged slurmctld slurmd sinfo; do
        command -v "$tool" >/dev/null || { echo "slurm_local: $tool not found; apt-get install -y slurm-wlm munge" >&2; exit 1; }
    done
    if sinfo -h -n "$NODE" -o %T 2>/dev/null | grep -qxE 'idle|mixed|allocated|completing'; then
        echo "slurm_local: node $NODE already up"; return
    fi
    mkdir -p "$STATE"/{spool,state,log} /etc/munge /run/munge /var/log/munge /var/lib/munge "$CONF_DIR"
    if [ ! -s /etc/munge/munge.key ]; then
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
    fi
    chmod 400 /etc/munge/munge.key
    chown -R munge:munge /etc/munge /run/munge /var/log/munge /var/lib/munge 2>/dev/null || true
    pgrep -x munged >/dev/null || munged --force

    local cpus mem_mb
    cpus=$(nproc)
    mem_mb=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 * 9 / 10 ))  # leave the OS a tenth
    cat > "$CONF_DIR/slurm.conf" <<EOF
# written by scripts/slurm_local.sh: one node, this host
ClusterName=braintumor-local
SlurmctldHost=$NODE
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
MpiDefault=none
ReturnToService=2
StateSaveLocation=$STATE/state
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
MaxArraySize=10001
NodeName=$NODE CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
    pgrep -x slurmctld >/dev/null || slurmctld -i
    pgrep -x slurmd >/dev/null || slurmd
    for _ in $(seq 60); do
        state=$(sinfo -h -n "$NODE" -o %T 2>/dev/null || true)
        if [ "$state" = idle ]; then
            echo "slurm_local: node $NODE idle ($cpus CPUs, $mem_mb MB)"; return
        fi
        [ "$state" = down ] || [ "$state" = "down*" ] && scontrol update nodename="$NODE" state=resume 2>/dev/null || true
        sleep 1
    done
    echo "slurm_local: node $NODE not idle after 60 s (state: ${state:-none}); see $STATE/log" >&2
    exit 1
}

stop() {
    for daemon in slurmd slurmctld; do
        pidfile="$STATE/$daemon.pid"
        if [ -s "$pidfile" ] && kill "$(cat "$pidfile")" 2>/dev/null; then
            echo "slurm_local: stopped $daemon"
        fi
    done
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
