#!/usr/bin/env bash
# The main job on the embedded default, for a newcomer on a fresh Debian/Ubuntu machine:
#   bash scripts/demo.sh
# Installs what is missing (Open MPI from apt when run as root or with sudo, the package into
# ./.venv), generates the small synthetic CPJUMP1-like batch of configs/demo.yaml, and runs
# the whole pipeline on it: illumination -> segmentation + features -> well profiles ->
# benchmark. It ends by printing the benchmark summary table and the paths of the plots.
# Extra arguments go to `hpc-profiler run` (e.g. --no-mpi, --executor local).
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" != "0" ] && command -v sudo >/dev/null 2>&1; then SUDO="sudo"; fi
need_apt=()
command -v mpirun >/dev/null 2>&1 || need_apt+=(openmpi-bin libopenmpi-dev)
python3 -m venv --help >/dev/null 2>&1 || need_apt+=(python3-venv)
if [ ${#need_apt[@]} -gt 0 ] && command -v apt-get >/dev/null 2>&1 && { [ "$(id -u)" = "0" ] || [ -n "$SUDO" ]; }; then
  echo "installing ${need_apt[*]} (apt)"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ]; then python3 -m venv .venv; fi
# shellcheck disable=SC1091
source .venv/bin/activate
python -m pip install -q --upgrade pip >/dev/null
if command -v mpirun >/dev/null 2>&1; then extras=".[mpi]"; else extras="."; fi
python -m pip install -q -e "$extras"

if [ "$(id -u)" = "0" ]; then
  export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
fi
exec hpc-profiler run configs/demo.yaml "$@"
