#!/usr/bin/env bash
# Every GPU parity test and GPU benchmark, in one command, for a session that is lent a GPU:
#   bash scripts/gpu_check.sh
# Needs CuPy and cuCIM. On the lent H100/H200 machine (Python 3.12, CUDA 13, CuPy present, no
# cuCIM), carry the wheels in ./.whl (see the device README) and this script installs them:
#   cucim-cu13 (--no-deps), tifffile, and whatever else `pip show` reports missing there.
# Prints the parity results and the benchmark tables (CPU vs GPU seconds, ratios).
set -uo pipefail
cd "$(dirname "$0")/.."
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
python3 - <<'PY' || exit 1
from hpc_profiler.backend import get_backend
bk = get_backend("gpu")
import cupy
print("GPU backend:", bk, "| device:", cupy.cuda.runtime.getDeviceProperties(0)["name"].decode())
PY
status=0
echo "== GPU parity tests"
python3 -m pytest -q -rs -m gpu tests/ || status=1
for bench in scripts/bench_segmentation.py scripts/bench_site.py; do
  if [ -f "$bench" ]; then
    echo "== $bench"
    python3 "$bench" || status=1
  fi
done
exit $status
