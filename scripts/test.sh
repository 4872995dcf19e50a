#!/usr/bin/env bash
# The test command for a newcomer on a fresh Debian/Ubuntu machine (and CI).
#
#   bash scripts/test.sh [pytest args...]      e.g.  bash scripts/test.sh -x -k orchestrate
#
# 1. apt packages: Slurm + munge (the local test cluster), OpenMPI (mpirun,
#    mpi4py), python3-venv / python3-dev / a compiler (as root, or with sudo)
# 2. .venv (python3 -m venv) with `pip install -e '.[test]'`
# 3. a local single-node Slurm (scripts/start_local_slurm.sh)
# 4. python -m pytest -q -rs [args], and exits with pytest's exit code
#
# Environment: HPC_PROFILER_SKIP_APT=1 skips step 1 (packages already there),
# HPC_PROFILER_NO_SLURM=1 skips step 3 (the Slurm tests then skip with a reason),
# PYTHON=python3.11 picks the interpreter for the venv.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { echo "[test.sh] $*"; }

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else SUDO="none"; fi
fi
as_root() {
    if [ "$SUDO" = none ]; then
        log "not root and no sudo: skipping '$*'"
        return 0
    fi
    $SUDO "$@"
}

PY="${PYTHON:-python3}"
APT_PACKAGES=(slurmctld slurmd slurm-client munge openmpi-bin libopenmpi-dev python3-venv python3-dev build-essential)

# ------------------------------------------------------------------ 1. apt
if [ "${HPC_PROFILER_SKIP_APT:-0}" != 1 ] && command -v apt-get >/dev/null 2>&1; then
    missing=()
    for p in "${APT_PACKAGES[@]}"; do
        dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
    done
    # python3-venv may not be the package of $PY; what matters is that venv works
    if "$PY" -m venv --help >/dev/null 2>&1 && "$PY" -c 'import ensurepip' >/dev/null 2>&1; then
        missing=("${missing[@]/python3-venv}")
    fi
    missing=($(printf '%s\n' "${missing[@]}" | grep -v '^$' || true))
    if [ "${#missing[@]}" -gt 0 ]; then
        log "apt-get install ${missing[*]}"
        as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
fi

# ------------------------------------------------------------------ 2. venv
if [ ! -x .venv/bin/python ]; then
    log "creating .venv with $PY"
    "$PY" -m venv .venv
fi
log "pip install -e '.[test]'"
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[test]'

# ------------------------------------------------------------------ 3. slurm
if [ "${HPC_PROFILER_NO_SLURM:-0}" != 1 ]; then
    if ! as_root bash scripts/start_local_slurm.sh; then
        log "warning: the local Slurm did not start; Slurm tests will fail or skip"
    fi
fi

# ------------------------------------------------------------------ 4. pytest
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
set +e
.venv/bin/python -m pytest -q -rs "$@"
rc=$?
set -e
log "pytest exited with $rc"
exit "$rc"
