"""numba building blocks of the CPU kernels of Intensity and Correlation.

The NumPy code of these families sums per object with ``numpy.add.reduceat``.
The CPU kernels of :mod:`~hpc_profiler.features.intensity` and
:mod:`~hpc_profiler.features.correlation` walk each object once instead and
must give the same bits, so the sums here reproduce NumPy's arithmetic
exactly:

* :func:`pairwise_sum` is NumPy's pairwise summation (``DOUBLE_pairwise_sum``
  of ``loops_utils.h``: plain loop below 8 values, eight interleaved
  accumulators up to 128, halves on multiples of 8 above);
* :func:`segment_total` is what ``add.reduceat`` returns for one segment: the
  first value plus the pairwise sum of the others.

:func:`float32_index_keys` packs float32 pixel values (as unsigned integers
in the same order) with their index into 64-bit keys: one ``sort`` of those
is much faster than an ``argsort`` of floats (the dense ranks of
Correlation's RWC come from it).

numba is a hard dependency of the package (see
:func:`hpc_profiler.morphology.njit_cached`); these functions are CPU only,
the GPU runs the array code of each family.
"""
from __future__ import annotations

import numba
import numpy as np

from hpc_profiler.morphology import njit_cached

__all__ = ["pairwise_block", "pairwise_sum", "segment_total", "float32_index_keys", "float32_order_key"]


def _pairwise_block(a, lo, n):
    """NumPy's pairwise summation of ``a[lo:lo + n]`` for ``n <= 128``: a plain loop below 8
    values, else eight interleaved accumulators, then the rest."""
    if n < 8:
        res = 0.0
        for i in range(lo, lo + n):
            res += a[i]
        return res
    r0 = a[lo]
    r1 = a[lo + 1]
    r2 = a[lo + 2]
    r3 = a[lo + 3]
    r4 = a[lo + 4]
    r5 = a[lo + 5]
    r6 = a[lo + 6]
    r7 = a[lo + 7]
    m = n - (n % 8)
    i = 8
    while i < m:
        p = lo + i
        r0 += a[p]
        r1 += a[p + 1]
        r2 += a[p + 2]
        r3 += a[p + 3]
        r4 += a[p + 4]
        r5 += a[p + 5]
        r6 += a[p + 6]
        r7 += a[p + 7]
        i += 8
    res = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))
    while i < n:
        res += a[lo + i]
        i += 1
    return res


pairwise_block = njit_cached(_pairwise_block)


def _pairwise_sum(a, lo, n):
    """``sum(a[lo:lo + n])`` with NumPy's pairwise summation (bit-identical)."""
    if n <= 128:
        return pairwise_block(a, lo, n)
    n2 = n // 2
    n2 -= n2 % 8
    return pairwise_sum(a, lo, n2) + pairwise_sum(a, lo + n2, n - n2)


pairwise_sum = njit_cached(_pairwise_sum)


def _segment_total(a, lo, n):
    """``numpy.add.reduceat`` of one segment ``a[lo:lo + n]`` (``n >= 1``): ``a[lo]`` + pairwise rest."""
    return a[lo] + pairwise_sum(a, lo + 1, n - 1)


segment_total = njit_cached(_segment_total)


@numba.njit(inline="always", cache=True, nogil=True)
def float32_order_key(bits, index):
    """``order(bits) << 32 | index``: a float32 bit pattern (uint32) mapped to an unsigned
    integer in IEEE-754 total order, in the high word, and ``index`` in the low word (numba)."""
    u = np.uint64(bits)
    if u >> np.uint64(31):
        u = np.uint64(0xFFFFFFFF) - u  # negative: reverse the order (~u on 32 bits)
    else:
        u = u | np.uint64(0x80000000)
    return (u << np.uint64(32)) | np.uint64(index)


def _index_keys(bits):
    """``key[i] = order(bits[i]) << 32 | i`` for float32 bit patterns ``bits`` (uint32)."""
    out = np.empty(bits.shape[0], dtype=np.uint64)
    for i in range(bits.shape[0]):
        out[i] = float32_order_key(bits[i], i)
    return out


_index_keys_jit = njit_cached(_index_keys)


def float32_index_keys(v32: np.ndarray) -> np.ndarray:
    """``key[i] = order bits of v32[i] << 32 | i`` (uint64): sorting the keys sorts ``v32`` (no NaN).

    The high word maps the float32 to an unsigned integer in the IEEE-754
    total order (``-0.0`` taken as ``0.0``), the low word is the index.
    """
    bits = (np.ascontiguousarray(v32, dtype=np.float32) + np.float32(0.0)).view(np.uint32)
    return _index_keys_jit(bits)
