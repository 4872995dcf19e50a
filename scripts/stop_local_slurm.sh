#!/usr/bin/env bash
# Stop the single-node Slurm started by scripts/start_local_slurm.sh.
#
# Ends slurmd, slurmctld and (unless --keep-munge) munged by their pid files;
# nothing is killed by name. Jobs still running are lost. The configuration
# (/etc/slurm/slurm.conf) and the state folder are left in place.
#
#   sudo bash scripts/stop_local_slurm.sh [--keep-munge]
set -euo pipefail

STATE="${HPC_SLURM_DIR:-/tmp/hpc-profiler-slurm}"
keep_munge=0
[ "${1:-}" = "--keep-munge" ] && keep_munge=1

log() { echo "[stop_local_slurm] $*"; }

stop_pidfile() {  # name pidfile
    local name="$1" pidfile="$2" pid
    if [ ! -s "$pidfile" ]; then
        log "$name: no pid file ($pidfile)"
        return 0
    fi
    pid="$(cat "$pidfile")"
    if ! kill -0 "$pid" 2>/dev/null; then
        log "$name: not running"
        rm -f "$pidfile"
        return 0
    fi
    kill -TERM "$pid"
    for _ in $(seq 100); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        log "$name: still running after 10 s, sending KILL"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$pidfile"
    log "$name (pid $pid) stopped"
}

stop_pidfile slurmd "$STATE/slurmd.pid"
stop_pidfile slurmctld "$STATE/slurmctld.pid"
if [ "$keep_munge" -eq 0 ]; then
    stop_pidfile munged /run/munge/munged.pid
fi
