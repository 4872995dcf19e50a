"""Custom device kernels, each beside the array-call twin it replaces.

Stage code is written once against :mod:`hpc_profiler.backend`'s namespaces.
A kernel lives here only where a benchmark shows the array calls cannot reach
the budget, and each has a twin made of the array calls it fuses: the twin is
what the CPU backend runs, what the tests compare with independent references,
and what a GPU parity test (``-m gpu``) compares the kernel with.

* :func:`geodesic_dilation_step` - one step of grey reconstruction by
  dilation, ``out = min(max over the 3x3 cross (or square) of cur, mask)``.
  The twin is ``ndi.maximum_filter(..., mode="nearest")`` + ``xp.minimum``,
  two launches per step; granularity's 80 reconstructions need ~1,100 steps
  per site, so the twin alone was ~2,200 of the site's launches and put the
  CPU audit over its 10,000-launch budget (``scripts/bench_site.py
  --audit``). The kernel does the step in one launch and one pass over memory
  (CuPy ``ElementwiseKernel``, compiled by NVRTC on first use). Max and min
  are exact, so kernel and twin give the same bits for finite inputs.

On the counting backend of :mod:`hpc_profiler._audit` a kernel counts as one
launch (what the GPU does) and computes with its twin on NumPy.
"""
from __future__ import annotations

import functools

import numpy as np

__all__ = ["geodesic_dilation_step", "geodesic_dilation_step_twin"]


def _footprint(full: bool) -> np.ndarray:
    return np.ones((1, 3, 3), bool) if full else np.array([[[0, 1, 0], [1, 1, 1], [0, 1, 0]]], bool)


def geodesic_dilation_step_twin(cur, msk, out, xp, ndi, full: bool = False):
    """The array-call twin: ``out = min(maximum_filter(cur, cross|square, nearest), msk)``.

    ``cur``, ``msk``, ``out``: ``[B, H, W]`` arrays of ``xp`` (``out`` distinct
    from ``cur``). "nearest" repeats the border pixel, which is already in its
    own window, so the window's maximum is that over the in-image neighbours.
    """
    ndi.maximum_filter(cur, footprint=xp.asarray(_footprint(full)), output=out, mode="nearest")
    xp.minimum(out, msk, out=out)
    return out


_SOURCE = """
const long long w = W, h = H;
const long long x = i % w;
const long long r = (i / w) % h;
T v = cur[i];
T a;
if (x > 0) { a = cur[i - 1]; if (a > v) v = a; }
if (x < w - 1) { a = cur[i + 1]; if (a > v) v = a; }
if (r > 0) { a = cur[i - w]; if (a > v) v = a; }
if (r < h - 1) { a = cur[i + w]; if (a > v) v = a; }
if (full) {
    if (r > 0 && x > 0) { a = cur[i - w - 1]; if (a > v) v = a; }
    if (r > 0 && x < w - 1) { a = cur[i - w + 1]; if (a > v) v = a; }
    if (r < h - 1 && x > 0) { a = cur[i + w - 1]; if (a > v) v = a; }
    if (r < h - 1 && x < w - 1) { a = cur[i + w + 1]; if (a > v) v = a; }
}
const T m = msk[i];
out = (m < v) ? m : v;
"""


@functools.lru_cache(maxsize=None)
def _cupy_kernel():
    import cupy

    return cupy.ElementwiseKernel("raw T cur, raw T msk, int64 H, int64 W, bool full", "T out", _SOURCE,
                                  "hpcp_geodesic_dilation_step")


def _is_cupy(a) -> bool:
    return type(a).__module__.startswith("cupy")


def geodesic_dilation_step(cur, msk, out, bk, full: bool = False):
    """``out = min(max over the cross (``full``: 3x3 square) of cur, msk)`` on ``bk``'s device.

    ``cur``, ``msk``, ``out``: C-contiguous ``[B, H, W]`` arrays of one float
    dtype, ``out`` distinct from ``cur`` (the step reads neighbours that
    ``out`` overwrites otherwise). CuPy arrays: the fused kernel, one launch.
    The counting backend: the twin on NumPy, counted as one launch. Otherwise
    the twin through ``bk``'s namespaces.
    """
    if _is_cupy(cur):
        H, W = cur.shape[-2:]
        _cupy_kernel()(cur, msk, np.int64(H), np.int64(W), bool(full), out)
        return out
    custom = getattr(bk, "custom_kernel", None)
    if custom is not None:  # hpc_profiler._audit: one launch, as on the GPU
        return custom(geodesic_dilation_step_twin, cur, msk, out, full=full)
    return geodesic_dilation_step_twin(cur, msk, out, bk.xp, bk.ndi, full)
