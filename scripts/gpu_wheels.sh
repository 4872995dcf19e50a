#!/usr/bin/env bash
# Wheels for the lent GPU machine (Python 3.12, CUDA 13, CuPy, NumPy, SciPy, scikit-image, h5py,
# pandas, pyarrow, tifffile, pytest, mpi4py already there), downloaded here, carried there:
#   bash scripts/gpu_wheels.sh
# A device call carries at most 64 MiB with the working tree (~8 MB), and llvmlite's wheel alone
# is ~60 MB, so the wheels come in two folders, one per call (scripts/gpu_check.sh says how), and
# llvmlite travels as its wheel's files in an xz tarball (~41 MB; a wheel is a zip of exactly
# the files an install puts in site-packages, so unpacking it there installs it):
#   .whl-numba/  numba wheel + llvmlite tarball (the host watershed and CPU reconstruction are numba)
#   .whl/        cucim-cu13 (no nvimgcodec), submitit, cp-measure, centrosome, mahotas, deprecation
# Both folders are git-ignored.
set -euo pipefail
cd "$(dirname "$0")/.."
dl() {  # folder, requirement...
  local dir=$1; shift
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any -d "$dir" "$@"
}
mkdir -p .whl .whl-numba
dl .whl-numba numba==0.68.1 llvmlite==0.50.0
if compgen -G ".whl-numba/llvmlite-*.whl" >/dev/null; then
  tmp=$(mktemp -d)
  unzip -q .whl-numba/llvmlite-*.whl -d "$tmp"
  tar -C "$tmp" -cf - . | xz -6 -T0 > .whl-numba/llvmlite.tar.xz
  rm -rf "$tmp" .whl-numba/llvmlite-*.whl
fi
dl .whl 'cucim-cu13==26.10.*' submitit cloudpickle cp-measure==0.3.0 centrosome mahotas deprecation
du -sh .whl .whl-numba
