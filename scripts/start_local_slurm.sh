#!/usr/bin/env bash
# Bring up a real single-node Slurm (slurmctld + slurmd + munge) on this machine.
#
# For tests and demos on a fresh Debian/Ubuntu machine, as root. Idempotent:
# running it again while the daemons are up only waits for the node to be idle.
#
#   sudo bash scripts/start_local_slurm.sh      # start (or check) the cluster
#   sudo bash scripts/stop_local_slurm.sh       # stop the daemons (pid files)
#
# What it does
#   1. apt-get install slurmctld slurmd slurm-client munge openmpi-bin
#      libopenmpi-dev (skipped when they are present; apt-get update first)
#   2. a munge key (/etc/munge/munge.key) when there is none; starts munged
#   3. writes /etc/slurm/slurm.conf (so plain sbatch/srun/sinfo work) for one
#      node named `hostname -s` with the CPUs and memory `slurmd -C` reports:
#      SlurmUser=root, ProctrackType=proctrack/linuxproc, TaskPlugin=task/none,
#      SelectType=select/cons_tres with CR_Core_Memory, no accounting
#      (submitit then warns that sacct fails and falls back to its own checks),
#      and a count-only generic resource `testgpu` (GresTypes=testgpu, the node's
#      Gres=testgpu:N, /etc/slurm/gres.conf `Name=testgpu Count=N`) that jobs can
#      request on this CPU-only node (`--gres=testgpu:1`; the per-stage gres test
#      reads it back). Not `gpu`: Slurm's gres/gpu plugin drops a GPU without a
#      device File ("Removing file-less GPU"), and the node would drain.
#   4. starts slurmctld and slurmd and waits until `sinfo` shows the node idle
#
# State, spool, logs and pid files live under $HPC_SLURM_DIR
# (default /tmp/hpc-profiler-slurm). Environment knobs:
#   HPC_SLURM_DIR       state folder (default /tmp/hpc-profiler-slurm)
#   HPC_SLURM_CPUS      CPUs to advertise (default: the real count; a larger
#                       value lets more light test tasks run at once)
#   HPC_SLURM_TIMEOUT   seconds to wait for the node to be idle (default 60)
#   HPC_SLURM_GRES      count of the node's testgpu gres (default 4)
set -euo pipefail

STATE="${HPC_SLURM_DIR:-/tmp/hpc-profiler-slurm}"
CONF=/etc/slurm/slurm.conf
GRES_CONF=/etc/slurm/gres.conf
GRES_COUNT="${HPC_SLURM_GRES:-4}"
TIMEOUT="${HPC_SLURM_TIMEOUT:-60}"

log() { echo "[start_local_slurm] $*"; }
die() { echo "[start_local_slurm] error: $*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "must run as root (try: sudo bash $0)"

# one start at a time (parallel test sessions may call this together); the daemons are
# started with fd 9 closed (`9>&-`), else a daemon would hold the lock for its lifetime
mkdir -p "$(dirname "$STATE")"
exec 9>"${STATE}.lock"
flock -w 120 9 || die "another start_local_slurm.sh holds ${STATE}.lock"

# ------------------------------------------------------------------ packages
need_install=0
for exe in slurmctld slurmd sbatch sinfo munged mpirun mpicc; do
    command -v "$exe" >/dev/null 2>&1 || PATH="$PATH:/usr/sbin:/sbin" command -v "$exe" >/dev/null 2>&1 || need_install=1
done
export PATH="$PATH:/usr/sbin:/sbin"
if [ "$need_install" -eq 1 ]; then
    log "installing slurm, munge and openmpi with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq slurmctld slurmd slurm-client munge openmpi-bin libopenmpi-dev >/dev/null
fi

# ------------------------------------------------------------------ munge
if [ ! -s /etc/munge/munge.key ]; then
    log "creating a munge key"
    mkdir -p /etc/munge
    if command -v mungekey >/dev/null 2>&1; then
        mungekey --create --keyfile=/etc/munge/munge.key --force
    else
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
    fi
fi
MUNGE_USER=root
if id munge >/dev/null 2>&1; then MUNGE_USER=munge; fi
chown "$MUNGE_USER" /etc/munge /etc/munge/munge.key
chmod 700 /etc/munge
chmod 400 /etc/munge/munge.key
mkdir -p /run/munge /var/lib/munge /var/log/munge
chown "$MUNGE_USER" /run/munge /var/lib/munge /var/log/munge
chmod 755 /run/munge

if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    log "munged already running"
else
    log "starting munged"
    if [ "$MUNGE_USER" = munge ]; then
        runuser -u munge -- /usr/sbin/munged 9>&-
    else
        /usr/sbin/munged --force 9>&-
    fi
    for _ in $(seq 50); do
        munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break
        sleep 0.1
    done
    munge -n | unmunge >/dev/null || die "munged did not start (see /var/log/munge/munged.log)"
fi

# ------------------------------------------------------------------ slurm.conf
HOST="$(hostname -s)"
mkdir -p "$STATE/ctld" "$STATE/spool" "$STATE/log" /etc/slurm
# slurmd -C prints "NodeName=vm CPUs=2 Boards=1 ... RealMemory=24105"
HW="$(slurmd -C | head -n 1)"
CPUS="$(sed -n 's/.*CPUs=\([0-9]*\).*/\1/p' <<<"$HW")"
MEM="$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$HW")"
[ -n "$CPUS" ] && [ -n "$MEM" ] || die "could not parse 'slurmd -C': $HW"
OVERRIDES=""
if [ -n "${HPC_SLURM_CPUS:-}" ] && [ "${HPC_SLURM_CPUS}" != "$CPUS" ]; then
    CPUS="$HPC_SLURM_CPUS"
    OVERRIDES="SlurmdParameters=config_overrides"
fi

NEW_CONF="$(mktemp)"
NEW_GRES="$(mktemp)"
trap 'rm -f "$NEW_CONF" "$NEW_GRES"' EXIT
cat >"$NEW_CONF" <<EOF
# Written by hpc_profiler scripts/start_local_slurm.sh: single-node test cluster.
ClusterName=local
GresTypes=testgpu
SlurmctldHost=${HOST}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=${STATE}/ctld
SlurmdSpoolDir=${STATE}/spool
SlurmctldPidFile=${STATE}/slurmctld.pid
SlurmdPidFile=${STATE}/slurmd.pid
SlurmctldLogFile=${STATE}/log/slurmctld.log
SlurmdLogFile=${STATE}/log/slurmd.log
SlurmctldPort=6817
SlurmdPort=6818
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
SchedulerParameters=sched_interval=2
MaxArraySize=100001
MaxJobCount=100000
MinJobAge=300
KillWait=5
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
DefMemPerCPU=1000
${OVERRIDES}
NodeName=${HOST} NodeAddr=127.0.0.1 CPUs=${CPUS} RealMemory=${MEM} Gres=testgpu:${GRES_COUNT} State=UNKNOWN
PartitionName=debug Nodes=${HOST} Default=YES MaxTime=INFINITE State=UP
EOF

cat >"$NEW_GRES" <<EOF
# Written by hpc_profiler scripts/start_local_slurm.sh: a count-only generic resource, no device files.
NodeName=${HOST} Name=testgpu Count=${GRES_COUNT}
EOF

pid_alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

restart=0
if [ ! -f "$CONF" ] || ! cmp -s "$NEW_CONF" "$CONF"; then
    log "writing $CONF"
    install -m 644 "$NEW_CONF" "$CONF"
    restart=1
fi
if [ ! -f "$GRES_CONF" ] || ! cmp -s "$NEW_GRES" "$GRES_CONF"; then
    log "writing $GRES_CONF"
    install -m 644 "$NEW_GRES" "$GRES_CONF"
    restart=1
fi

if [ "$restart" -eq 1 ] && { pid_alive "$STATE/slurmctld.pid" || pid_alive "$STATE/slurmd.pid"; }; then
    log "configuration changed: restarting the daemons"
    bash "$(dirname "$0")/stop_local_slurm.sh" --keep-munge
fi

if pid_alive "$STATE/slurmctld.pid"; then
    log "slurmctld already running (pid $(cat "$STATE/slurmctld.pid"))"
else
    log "starting slurmctld"
    slurmctld -f "$CONF" 9>&-
fi
if pid_alive "$STATE/slurmd.pid"; then
    log "slurmd already running (pid $(cat "$STATE/slurmd.pid"))"
else
    log "starting slurmd"
    slurmd -f "$CONF" 9>&-
fi

# ------------------------------------------------------------------ wait idle
deadline=$((SECONDS + TIMEOUT))
resumed=0
while :; do
    state="$(sinfo -h -n "$HOST" -o '%T' 2>/dev/null | head -n 1 || true)"
    case "$state" in
        idle|mixed|allocated|completing) break ;;
        down*|drain*|fail*)
            if [ "$resumed" -eq 0 ]; then
                log "node is $state: resuming it"
                scontrol update NodeName="$HOST" State=RESUME >/dev/null 2>&1 || true
                resumed=1
            fi ;;
    esac
    if [ "$SECONDS" -ge "$deadline" ]; then
        die "node $HOST not idle after ${TIMEOUT}s (state '${state}'); logs in $STATE/log"
    fi
    sleep 0.5
done
log "node $HOST is $state (CPUs=$CPUS RealMemory=${MEM}MB)"
log "config: $CONF   state and logs: $STATE"
