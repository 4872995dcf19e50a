#!/usr/bin/env bash
# The CellProfiler-exactness tests under several scikit-image versions (issue 14: segmentation
# must not depend on the installed scikit-image; CellProfiler 5 itself runs with 0.24).
#   bash scripts/test_skimage_versions.sh [VERSION ...]     (default: 0.24.0 0.26.0)
# Each version is installed with --no-deps into a temporary folder put first on PYTHONPATH,
# so the project's environment (.venv, or python3 when there is none) is left as it is.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
VERSIONS=("$@")
[ ${#VERSIONS[@]} -gt 0 ] || VERSIONS=(0.24.0 0.26.0)
status=0
for v in "${VERSIONS[@]}"; do
  dir=$(mktemp -d)
  "$PY" -m pip install -q --no-deps --target "$dir" "scikit-image==$v"
  echo "== scikit-image $v"
  PYTHONPATH="$dir${PYTHONPATH:+:$PYTHONPATH}" "$PY" -c "import skimage; assert skimage.__version__ == '$v', skimage.__version__"
  PYTHONPATH="$dir${PYTHONPATH:+:$PYTHONPATH}" "$PY" -m pytest -q -p no:cacheprovider \
    tests/test_cellprofiler_reference.py tests/test_segmentation.py || status=1
  rm -rf "$dir"
done
exit $status
