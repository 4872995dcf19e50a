#!/usr/bin/env bash
# Every GPU parity test and GPU benchmark, in one command, for a session that is lent a GPU.
#
# On the lent machine (Python 3.12, CUDA 13, CuPy; no cuCIM, no numba) the wheels travel in two
# device calls, because one call carries at most 64 MiB and llvmlite alone is ~60 MB. Here, once:
#   bash scripts/gpu_wheels.sh                # fills .whl/ and .whl-numba/ (git-ignored)
# then two device calls in a row, on the same warm machine (.device/ is kept between calls):
#   1. carry [".whl-numba"]:  bash scripts/gpu_check.sh --install-only     (~1 min)
#   2. carry [".whl"]:        bash scripts/gpu_check.sh                    (~5 min)
# On a GPU node where `pip install '.[gpu-cuda13]'` was run, plain `bash scripts/gpu_check.sh`.
# `--quick` (a re-measurement on a nearly spent device budget, ~3 min): the parity tests, bench_site.py
# without skimage's reconstruction beside it and the throughput run. Neither runs cp_measure (a CPU
# reference of ~2 min on the lent H200, which put the full check at 404 s, over the 6-minute bar).
#
# Prints: the backend, the GPU parity tests (every feature column GPU vs CPU on the same masks,
# labels, reconstruction), scripts/bench_segmentation.py, scripts/bench_site.py (CPU one thread,
# and the GPU side by side, CPU/GPU differences per column), scripts/bench_texture_gpu_paths.py
# (the Texture device paths 'rows', 'batched', 'offsets' timed side by side) and the end-to-end extract
# throughput on 16 synthetic 1080x1080 sites (scripts/bench_extract_throughput.py, sites/s in
# steady state). Everything is also written to $OUT/gpu_check.log when $OUT is set.
set -uo pipefail
cd "$(dirname "$0")/.."
SITE="$PWD/.device/site"
mkdir -p "$SITE"
for t in .whl-numba/*.tar.xz; do  # llvmlite: a wheel's files, unpacked where pip would put them
  [ -f "$t" ] && { tar -C "$SITE" -xJf "$t" || { echo "gpu_check: unpacking $t failed"; exit 1; }; }
done
for d in .whl-numba .whl; do
  if compgen -G "$d/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$d"/*.whl \
      || { echo "gpu_check: installing $d failed"; exit 1; }
  fi
done
export PYTHONPATH="$PWD:$SITE${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 NUMBA_CACHE_DIR="$PWD/.device/numba"
QUICK=0
[ "${1:-}" = "--quick" ] && QUICK=1
if [ "${1:-}" = "--install-only" ]; then
  python3 -c "import numba, llvmlite; print('installed in .device/site: numba', numba.__version__)"
  exit $?
fi
if [ -n "${OUT:-}" ]; then
  mkdir -p "$OUT"
  exec > >(tee "$OUT/gpu_check.log") 2>&1
fi
python3 -c "import numba" 2>/dev/null || {
  echo "gpu_check: numba is missing: run 'bash scripts/gpu_check.sh --install-only' carrying .whl-numba first"
  exit 1
}
python3 - <<'PY' || exit 1
from hpc_profiler.backend import get_backend
bk = get_backend("gpu")
import cupy, numba
print("GPU backend:", bk, "| device:", cupy.cuda.runtime.getDeviceProperties(0)["name"].decode(),
      "| CuPy", cupy.__version__, "| numba", numba.__version__)
PY
status=0
t0=$SECONDS
section() { echo "== [$((SECONDS - t0)) s] $*"; }
section "GPU parity tests"
python3 -m pytest -q -rs -s -m gpu tests/ || status=1
if [ $QUICK = 0 ]; then
  section "scripts/bench_segmentation.py"
  python3 scripts/bench_segmentation.py || status=1
  # cp_measure is a CPU reference (~2 min here): its ratio is measured on CPU machines (README § Performance)
  section "scripts/bench_site.py --no-cp-measure"
  python3 scripts/bench_site.py --no-cp-measure || status=1
else
  section "scripts/bench_site.py --no-cp-measure --no-granularity-reference (quick)"
  python3 scripts/bench_site.py --no-cp-measure --no-granularity-reference || status=1
fi
section "scripts/bench_texture_gpu_paths.py (the three Texture device paths, same site)"
python3 scripts/bench_texture_gpu_paths.py --no-cost-model --repeat 3 || status=1
section "scripts/bench_extract_throughput.py (16 sites of 1080 px on the GPU)"
python3 scripts/bench_extract_throughput.py --device gpu --sites 16 --size 1080 --warmup 2 || status=1
echo "gpu_check: $((SECONDS - t0)) s, exit status $status"
exit $status
