"""NumPy's pairwise summation in numba without recursion, for the CPU kernels of Correlation, Intensity and AreaShape.

The numba kernels of these families must sum per object exactly as
``numpy.add.reduceat`` does (first value + the pairwise sum of the rest,
see :mod:`._cpu_segments`). :func:`._cpu_segments.pairwise_sum` writes the
pairwise split as a recursive numba function; numba's recursive calls cost
~50-100 ns each (about as much as summing the 128-value block below them)
and its on-disk cache does not keep recursive functions. Here:

* :func:`block` is :func:`._cpu_segments.pairwise_block` (a plain loop below
  8 values, eight interleaved accumulators up to 128) with unsigned offsets
  from the block's start, so that numba emits no negative-index wraparound
  test per element (~1.6x faster, the same additions in the same order);
* :func:`pairwise` unrolls the recursion on a small explicit stack
  (``istack``: a ``(3, 64)`` int64 scratch, ``left``: a ``(64,)`` float64
  scratch, both allocated once per kernel call by :func:`scratch`);
* :func:`segment_total` is one ``add.reduceat`` segment.

All give the bits of :mod:`._cpu_segments` (tests/test_features_correlation.py
checks them against it and against ``add.reduceat``).
"""
from __future__ import annotations

import numpy as np

from hpc_profiler.morphology import njit_cached

__all__ = ["block", "pairwise", "scratch", "segment_total"]


def _block(a, lo, n):
    """``sum(a[lo:lo + n])`` for ``n <= 128`` with NumPy's arithmetic (``pairwise_block``)."""
    if n < 8:
        res = 0.0
        for i in range(lo, lo + n):
            res += a[i]
        return res
    b = a[lo:lo + n]
    r0 = b[0]
    r1 = b[1]
    r2 = b[2]
    r3 = b[3]
    r4 = b[4]
    r5 = b[5]
    r6 = b[6]
    r7 = b[7]
    m = n - (n % 8)
    for j in range(1, m // 8):
        p = np.uint64(8 * j)  # unsigned: no wraparound test per access
        r0 += b[p]
        r1 += b[p + np.uint64(1)]
        r2 += b[p + np.uint64(2)]
        r3 += b[p + np.uint64(3)]
        r4 += b[p + np.uint64(4)]
        r5 += b[p + np.uint64(5)]
        r6 += b[p + np.uint64(6)]
        r7 += b[p + np.uint64(7)]
    res = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))
    for i in range(m, n):
        res += b[i]
    return res


block = njit_cached(_block)


def scratch():
    """``(istack, left)`` scratch arrays for :func:`pairwise` (allocate once per kernel call)."""
    return np.zeros((3, 64), dtype=np.int64), np.zeros(64, dtype=np.float64)


def _pairwise(a, lo, n, istack, left):
    """NumPy's pairwise summation of ``a[lo:lo + n]`` (what ``add.reduce``/``reduceat`` compute).

    Blocks of at most 128 values (:func:`block`); a longer run is split at
    ``n // 2`` rounded down to a multiple of 8 and the halves' sums are
    added, left + right. The recursion is unrolled on the explicit stack
    ``istack`` (``(3, 64)`` int64: start, length, state) and ``left``
    (``(64,)`` float64: the finished left halves).
    """
    if n <= 128:
        return block(a, lo, n)
    slo = istack[0]
    sn = istack[1]
    state = istack[2]  # 1: left half pending, 2: right half pending
    sp = 0
    slo[0] = lo
    sn[0] = n
    while True:
        m = sn[sp]
        if m > 128:
            half = m // 2
            half -= half % 8
            state[sp] = 1
            slo[sp + 1] = slo[sp]
            sn[sp + 1] = half
            sp += 1
            continue
        val = block(a, slo[sp], m)
        sp -= 1
        while sp >= 0 and state[sp] == 2:
            val = left[sp] + val
            sp -= 1
        if sp < 0:
            return val
        # the left half of frame sp is done: keep it, go to the right half
        left[sp] = val
        state[sp] = 2
        half = sn[sp] // 2
        half -= half % 8
        slo[sp + 1] = slo[sp] + half
        sn[sp + 1] = sn[sp] - half
        sp += 1


pairwise = njit_cached(_pairwise)


def _segment_total(a, lo, n, istack, left):
    """``numpy.add.reduceat`` of one segment ``a[lo:lo + n]`` (``n >= 1``): ``a[lo]`` + the pairwise rest."""
    return a[lo] + pairwise(a, lo + 1, n - 1, istack, left)


segment_total = njit_cached(_segment_total)
