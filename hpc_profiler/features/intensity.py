"""Intensity features: CellProfiler's MeasureObjectIntensity.

Reproduces, per object and channel, the columns CellProfiler 4 writes as
``Intensity_{Integrated,Mean,Std,Min,Max}Intensity_{ch}``,
``Intensity_{Integrated,Mean,Std,Min,Max}IntensityEdge_{ch}``,
``Intensity_{LowerQuartile,Median,UpperQuartile,MAD}Intensity_{ch}``,
``Intensity_MassDisplacement_{ch}``, ``Location_CenterMassIntensity_{X,Y}_{ch}``
and ``Location_MaxIntensity_{X,Y}_{ch}``, for all objects of a site at once,
computed two ways that give the same bits when every pixel is finite
(``engine`` of :func:`measure_intensity_channels`):

* on the CPU, a numba kernel walks each object once per channel: sums are
  NumPy's ``add.reduceat`` bit for bit (:mod:`._pairwise`), the order
  statistics come from NumPy's sort of each object's values (exact; as
  float32 when the values are float32), the MAD from a binary search for
  the middle of the two sorted runs of deviations below and above the median;
  the edge pixels are tested at the labelled pixels only;
* on other backends (the GPU), backend array code stacks the channels of an
  object set into ``(C, P)`` arrays: every sum in a few ``reduceat`` calls,
  the order statistics from one segmented sort of the values and one of the
  deviations (64-bit keys for float32 data), non-finite pixels masked on the
  device - ~230 launches per object set whatever the number of objects and
  channels, no device->host copy.

:func:`intensity_statistics` (the earlier vectorized formulation, with
binary searches instead of the second sort) is kept as a reference.

CellProfiler conventions kept on purpose
----------------------------------------
* Quartiles and the median sit at fractional index ``n * q`` of the sorted
  values, interpolated with the next value and clamped at the last one - the
  arithmetic of CellProfiler's MeasureObjectIntensity (cp_measure calls it
  ``legacy=True``); not ``numpy.percentile``'s ``(n - 1) * q``.
* MADIntensity is the true median of ``|x - median|`` (the middle value, or
  the mean of the two middle values for an even pixel count), as CellProfiler
  5 computes it with ``scipy.ndimage.median``; the interpolated ``n/2``-quantile
  of CellProfiler 4 was up to 2 % off for objects of odd size.
* StdIntensity is the population standard deviation (``ddof=0``).
* Edge pixels are ``find_boundaries(labels, mode="inner")`` of the whole label
  image (see :func:`hpc_profiler.features._objects.edge_mask`).
* The max-intensity location is the first pixel in raster order among ties.
* Min/Max, the quartiles, the median and the MAD are exact order statistics
  of the pixel values (both engines sort exactly).
* What does not depend on the channel - the object grouping and float
  coordinates of the pixels (:class:`~hpc_profiler.features._objects.ObjectPixels`)
  and the grouping of the edge pixels (:func:`edge_pixels`) - is computed once
  per object set and shared by the channels.

Deliberate differences
----------------------
* 2-D only: no ``*_Z`` location columns (CellProfiler writes ``Z = 0`` for 2-D
  images; the assembler may add constant zeros if a consumer needs them).
* An object with no pixel gets NaN for every feature except the integrated
  intensities, which are 0 (cp_measure leaves such labels out; CellProfiler
  writes 0 for the statistics). Non-finite pixels are ignored like masked
  pixels in CellProfiler.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hpc_profiler.backend import backend_of
from hpc_profiler.features._pairwise import scratch as _pairwise_scratch
from hpc_profiler.features._pairwise import segment_total
from hpc_profiler.morphology import njit_cached
from hpc_profiler.features._objects import (
    check_image_shape,
    ObjectPixels,
    edge_mask,
    label_var,
    object_pixels,
    segment_max,
    segment_min,
    segment_quantile,
    segment_sort,
    segment_sum,
)

__all__ = ["measure_intensity", "measure_intensity_channels", "intensity_statistics", "edge_pixels", "EdgePixels"]


def intensity_statistics(values, obj, n: int, max_count: int | None = None) -> dict:
    """Order and moment statistics of per-object values (CellProfiler's set).

    Parameters
    ----------
    values : 1-D float array
        Pixel values, grouped by object (any order inside an object).
    obj : 1-D int array
        Object row of each value (``label - 1``), grouped ascending.
    n : int
        Number of objects.
    max_count : int, optional
        Largest number of values of an object, when known on the host (fewer
        rounds of the vectorized binary searches; the result is the same).

    Returns
    -------
    dict with keys ``Integrated, Mean, Std, Min, Max, LowerQuartile, Median,
    UpperQuartile, MAD`` mapping to ``(n,)`` float64 arrays.
    """
    xp = backend_of(values, obj).xp
    values = values.astype(xp.float64, copy=False)
    counts = xp.bincount(obj, minlength=n)[:n]
    starts = xp.zeros(n, dtype=xp.int64)
    if n > 1:
        starts[1:] = xp.cumsum(counts)[:-1]
    integrated = segment_sum(values, starts, counts)
    with_px = counts > 0
    mean = xp.full(n, xp.nan)
    mean[with_px] = integrated[with_px] / counts[with_px]
    out = {
        "Integrated": integrated,
        "Mean": mean,
        "Std": xp.sqrt(label_var(values, obj, n, counts, mean, starts)),
    }
    sorted_vals = segment_sort(values, obj)
    out["Min"] = segment_min(values, starts, counts)
    out["Max"] = segment_max(values, starts, counts)
    out["LowerQuartile"] = segment_quantile(sorted_vals, starts, counts, 0.25)
    median = segment_quantile(sorted_vals, starts, counts, 0.5)
    out["Median"] = median
    out["UpperQuartile"] = segment_quantile(sorted_vals, starts, counts, 0.75)
    out["MAD"] = _mad_from_sorted(sorted_vals, starts, counts, median, max_count)
    return out


def _search_rounds(size: int) -> int:
    """Rounds that settle a binary search over ``[0, size]`` (known on the host).

    The vectorized searches run this fixed number of rounds instead of
    asking the device after each round whether any object is still active
    (a device->host copy per round on a GPU); settled objects are unchanged
    by the extra rounds.
    """
    return int(size).bit_length() + 1


def _kth_of_two_sorted(get_a, len_a, get_b, len_b, k, size: int):
    """``k``-th smallest (0-based) of the union of two ascending sequences, per object.

    ``get_a(i)``/``get_b(i)`` return the ``i``-th element of each object's
    sequence (indices are clipped by the caller's bounds logic). Vectorized
    binary search over ``i``, the number of elements taken from ``a`` among
    the ``k + 1`` smallest: :func:`_search_rounds` of ``size`` (an upper
    bound of the lengths) rounds over all objects.
    """
    xp = backend_of(len_a).xp
    lo = xp.maximum(0, k + 1 - len_b)
    hi = xp.minimum(k + 1, len_a)
    inf = xp.inf
    for _ in range(_search_rounds(size)):
        active = lo < hi
        mid = (lo + hi) // 2
        # taking mid from a: need a[mid] >= b[k - mid] when mid < len_a and k - mid >= 0
        j = k - mid
        a_mid = xp.where(mid < len_a, get_a(xp.minimum(mid, xp.maximum(len_a - 1, 0))), inf)
        b_j = xp.where((j >= 0) & (j < len_b), get_b(xp.clip(j, 0, xp.maximum(len_b - 1, 0))), -inf)
        go_right = a_mid < b_j  # take more from a
        lo = xp.where(active & go_right, mid + 1, lo)
        hi = xp.where(active & ~go_right, mid, hi)
    i = lo
    j = k - i
    a_prev = xp.where(i > 0, get_a(xp.clip(i - 1, 0, xp.maximum(len_a - 1, 0))), -inf)
    b_prev = xp.where(j >= 0, get_b(xp.clip(j, 0, xp.maximum(len_b - 1, 0))), -inf)
    return xp.maximum(a_prev, b_prev)


def _mad_from_sorted(sorted_vals, starts, counts, median, max_count: int | None = None):
    """CellProfiler's MADIntensity from the per-object sorted values, without a second sort.

    The deviations ``|x - median|`` of the values below the median, read from
    the median downwards, and of the others, read upwards, are two ascending
    sequences; the median of their union needs its ``(n - 1) // 2``-th and
    ``n // 2``-th smallest elements, found by a vectorized binary search per
    object.
    """
    xp = backend_of(sorted_vals).xp
    n = counts.shape[0]
    out = xp.full(n, xp.nan)
    ok = counts > 0
    if not bool(ok.any()):
        return out
    st, cnt, med = starts[ok], counts[ok], median[ok]
    # m = number of values strictly below the median in each object
    size = sorted_vals.shape[0] if max_count is None else int(max_count)  # bounds every object's count
    m = _count_below(sorted_vals, starts, counts, median, size)[ok]
    len_a, len_b = m, cnt - m

    def get_a(t):  # t-th smallest deviation among the values below the median
        return med - sorted_vals[st + m - 1 - t]

    def get_b(t):  # t-th smallest deviation among the others
        return sorted_vals[st + m + t] - med

    # the true median of the deviations (``scipy.ndimage.median``): the middle
    # element, or the mean of the two middle ones for an even count
    k0 = (cnt.astype(xp.int64) - 1) // 2
    k1 = cnt.astype(xp.int64) // 2
    v0 = _kth_of_two_sorted(get_a, len_a, get_b, len_b, k0, size)
    v1 = _kth_of_two_sorted(get_a, len_a, get_b, len_b, k1, size)
    out[ok] = xp.where(k0 == k1, v0, (v0 + v1) / 2.0)
    return out


def _count_below(sorted_vals, starts, counts, threshold, size: int | None = None):
    """Per object, how many of its sorted values are strictly below ``threshold[object]``."""
    xp = backend_of(sorted_vals).xp
    n = counts.shape[0]
    lo = xp.zeros(n, dtype=xp.int64)
    hi = counts.astype(xp.int64)
    for _ in range(_search_rounds(sorted_vals.shape[0] if size is None else size)):
        active = lo < hi
        mid = (lo + hi) // 2
        v = sorted_vals[xp.minimum(starts + mid, sorted_vals.shape[0] - 1)]
        right = v < threshold
        lo = xp.where(active & right, mid + 1, lo)
        hi = xp.where(active & ~right, mid, hi)
    return lo


def _finite(op: ObjectPixels, values, extra=None):
    """Drop non-finite pixels (CellProfiler masks them); returns aligned arrays."""
    xp = backend_of(values).xp
    keep = xp.isfinite(values)
    if extra is not None:
        keep &= extra
    if bool(keep.all()):
        return values, op.obj, op.y, op.x
    return values[keep], op.obj[keep], op.y[keep], op.x[keep]


# ---------------------------------------------------------------------------
# CPU kernel (numba): every statistic of one channel in one walk per object
# ---------------------------------------------------------------------------

#: Rows of the CPU kernel's output, in this order.
_ROWS = ("Integrated", "Mean", "Std", "Min", "Max", "LowerQuartile", "Median", "UpperQuartile", "MAD",
         "MassDisplacement", "CMI_X", "CMI_Y", "Max_X", "Max_Y",
         "IntegratedEdge", "MeanEdge", "StdEdge", "MinEdge", "MaxEdge")


def _last_nonempty(counts):
    last = -1
    for i in range(counts.shape[0]):
        if counts[i] > 0:
            last = i
    return last


def _reduceat_sum(a, s, c, split, istack, left):
    """``segment_sum``'s value for one segment (``split``: the clamped last object of reduceat;
    ``istack``, ``left``: :func:`._pairwise.scratch`)."""
    if split:
        return segment_total(a, s, c - 1, istack, left) + a[s + c - 1]
    return segment_total(a, s, c, istack, left)


def _quantile(sv, s, c, fraction):
    """:func:`segment_quantile` of one sorted segment (CellProfiler's ``n * q`` interpolation)."""
    pos = np.float64(c) * fraction
    kf = np.floor(pos)
    f = pos - kf
    k = min(np.int64(kf), c - 1)
    k1 = min(k + 1, c - 1)
    v0 = np.float64(sv[s + k])  # sv may be float32: widened exactly
    if k < c - 1:
        return v0 * (1.0 - f) + np.float64(sv[s + k1]) * f
    return v0


def _mad(sv, s, c, med):
    """Median of ``|x - med|`` over one sorted segment.

    The deviations form two ascending runs, ``med - sv[m - 1 - t]`` (the
    ``m`` values below the median) and ``sv[m + t] - med`` (the others); the
    k-th smallest of their union is found by a binary search on how many come
    from the first run (O(log c), the same subtractions as a merge, so the
    same value).
    """
    lo = 0  # values strictly below the median: binary search in the sorted run
    hi = c
    while lo < hi:
        mid = (lo + hi) // 2
        if np.float64(sv[s + mid]) < med:
            lo = mid + 1
        else:
            hi = mid
    m = lo
    k0 = (c - 1) // 2
    k1 = c // 2
    v0 = _kth_deviation(sv, s, c, m, med, k0)
    if k0 == k1:
        return v0
    return (v0 + _kth_deviation(sv, s, c, m, med, k1)) / 2.0


def _kth_deviation(sv, s, c, m, med, k):
    """The k-th smallest (0-based) of the deviations ``med - sv[s + m - 1 - t]`` and ``sv[s + m + t] - med``."""
    nb = c - m
    lo = max(0, k + 1 - nb)  # how many of the k + 1 smallest come from the run below the median
    hi = min(k + 1, m)
    while lo < hi:
        a = (lo + hi) // 2
        b = k + 1 - a
        # more from below while the b-th of the upper run exceeds the (a+1)-th of the lower one
        if b > 0 and (np.float64(sv[s + m + b - 1]) - med) > (med - np.float64(sv[s + m - 1 - a])):
            lo = a + 1
        else:
            hi = a
    a = lo
    b = k + 1 - a
    out = -np.inf
    if a > 0:
        out = med - np.float64(sv[s + m - a])
    if b > 0:
        d = np.float64(sv[s + m + b - 1]) - med
        if d > out:
            out = d
    return out


def _intensity_kernel(v, sv, starts, counts, yf, xf, cm_y_all, cm_x_all, ev, estarts, ecounts, out, istack, left):
    """Fill ``out[row, object]`` (rows :data:`_ROWS`) for one channel.

    ``v``: float64 values grouped by object in raster order; ``sv``: the same
    values sorted inside each object; ``ev``/``estarts``/``ecounts``: the edge
    pixels' values grouped by object; ``cm_y_all``/``cm_x_all``: the objects'
    (unweighted) centres of mass, shared by the channels. Sums are ``add.reduceat``'s bits
    (products are formed in a scratch buffer and summed pairwise, as NumPy
    does), minima, maxima and order statistics are exact.
    """
    n = starts.shape[0]
    nan = np.nan
    maxc = 1
    for i in range(n):
        if counts[i] > maxc:
            maxc = counts[i]
        if ecounts[i] > maxc:
            maxc = ecounts[i]
    buf = np.empty((3, maxc))
    last = _last_nonempty(counts)
    elast = _last_nonempty(ecounts)
    for i in range(n):
        c = counts[i]
        for r in range(out.shape[0]):
            out[r, i] = nan
        out[0, i] = 0.0
        out[14, i] = 0.0
        if c > 0:
            s = starts[i]
            split = i == last and last < n - 1 and c >= 2
            integ = _reduceat_sum(v, s, c, split, istack, left)
            mean = integ / np.float64(c)
            b0 = buf[0]
            b1 = buf[1]
            b2 = buf[2]
            for k in range(s, s + c):
                vk = v[k]
                d = vk - mean
                b0[k - s] = d * d
                b1[k - s] = yf[k] * vk
                b2[k - s] = xf[k] * vk
            # the extremes are the sorted segment's ends; the first pixel in raster order equal to
            # each (so -0.0 / 0.0 ties give the value a scan would keep)
            lo_v = np.float64(sv[s])
            hi_v = np.float64(sv[s + c - 1])
            imin = s
            while imin < s + c - 1 and v[imin] != lo_v:
                imin += 1
            imax = s
            while imax < s + c - 1 and v[imax] != hi_v:
                imax += 1
            vmin = v[imin]
            vmax = v[imax]
            out[0, i] = integ
            out[1, i] = mean
            out[2, i] = np.sqrt(_reduceat_sum(b0, 0, c, split, istack, left) / np.float64(c))
            out[3, i] = vmin
            out[4, i] = vmax
            out[5, i] = _quantile(sv, s, c, 0.25)
            med = _quantile(sv, s, c, 0.5)
            out[6, i] = med
            out[7, i] = _quantile(sv, s, c, 0.75)
            out[8, i] = _mad(sv, s, c, med)
            # centre of mass of the intensity vs of the binary object
            cm_y = cm_y_all[i]
            cm_x = cm_x_all[i]
            if integ != 0:
                cmi_y = _reduceat_sum(b1, 0, c, split, istack, left) / integ
                cmi_x = _reduceat_sum(b2, 0, c, split, istack, left) / integ
                out[9, i] = np.sqrt((cmi_y - cm_y) ** 2 + (cmi_x - cm_x) ** 2)
                out[10, i] = cmi_x
                out[11, i] = cmi_y
            out[12, i] = xf[imax]  # the first maximum in raster order
            out[13, i] = yf[imax]
        ec = ecounts[i]
        if ec > 0:
            es = estarts[i]
            esplit = i == elast and elast < n - 1 and ec >= 2
            esum = _reduceat_sum(ev, es, ec, esplit, istack, left)
            emean = esum / np.float64(ec)
            emin = ev[es]
            emax = ev[es]
            for k in range(es, es + ec):
                d = ev[k] - emean
                buf[0, k - es] = d * d
                if ev[k] < emin:
                    emin = ev[k]
                if ev[k] > emax:
                    emax = ev[k]
            out[14, i] = esum
            out[15, i] = emean
            out[16, i] = np.sqrt(_reduceat_sum(buf[0], 0, ec, esplit, istack, left) / np.float64(ec))
            out[17, i] = emin
            out[18, i] = emax


_last_nonempty = njit_cached(_last_nonempty)
_reduceat_sum = njit_cached(_reduceat_sum)
_quantile = njit_cached(_quantile)
_kth_deviation = njit_cached(_kth_deviation)
_mad = njit_cached(_mad)
_intensity_jit = njit_cached(_intensity_kernel)


def _sorted_within(values, starts, counts):
    """Copy of ``values`` sorted inside each object (NumPy's SIMD sort per object, CPU only)."""
    out = values.copy()
    for s, c in zip(starts.tolist(), counts.tolist()):
        if c > 1:
            out[s:s + c].sort()
    return out


@dataclass(frozen=True)
class EdgePixels:
    """The edge pixels of an object set, grouped by object (channel independent).

    Attributes
    ----------
    index : 1-D int array
        Positions in the :class:`ObjectPixels` pixel list of the edge pixels.
    obj, counts, starts : 1-D int arrays
        Object row of each edge pixel, edge pixels per object, first edge
        pixel of each object (as in :class:`ObjectPixels`).
    centres : tuple of two (N,) arrays or None
        The objects' unweighted centres of mass, computed by the first
        channel that needs them and shared with the others.
    """

    index: Any
    obj: Any
    counts: Any
    starts: Any
    #: channel-independent centres of mass ``(y, x)`` of the objects, filled on first use
    centres: Any = field(default=None, compare=False)


def _inner_edge_flags(labels, flat):
    """For each labelled pixel ``flat[k]``: does a 4-neighbour inside the image carry another label?

    ``find_boundaries(labels, mode="inner")`` (connectivity 1; scikit-image's
    dilation/erosion reflect at the image border, so the border itself makes
    no edge) read at the labelled pixels only (numba, CPU).
    """
    h, w = labels.shape
    out = np.zeros(flat.shape[0], dtype=np.bool_)
    for k in range(flat.shape[0]):
        p = flat[k]
        y = p // w
        x = p - y * w
        v = labels[y, x]
        if (y > 0 and labels[y - 1, x] != v) or (y < h - 1 and labels[y + 1, x] != v) or \
                (x > 0 and labels[y, x - 1] != v) or (x < w - 1 and labels[y, x + 1] != v):
            out[k] = True
    return out


_inner_edge_flags_jit = njit_cached(_inner_edge_flags)


def edge_pixels(op: ObjectPixels, edges=None, *, labels=None) -> EdgePixels:
    """Group the edge pixels of an object set by object, once per object set.

    ``edges`` is ``edge_mask(labels)``; alternatively pass the label image as
    ``labels``: on the CPU the edge test then runs at the labelled pixels only
    (numba, the same pixels as ``edge_mask``), on a GPU ``edge_mask`` is used.
    """
    xp = backend_of(op.flat).xp
    if edges is None:
        if labels is None:
            raise ValueError("edge_pixels: pass the edge mask or the label image")
        if xp is np and labels.ndim == 2:
            flags = _inner_edge_flags_jit(np.ascontiguousarray(labels), op.flat)
            index = np.flatnonzero(flags)
        else:
            index = xp.flatnonzero(xp.ravel(edge_mask(labels))[op.flat])
    else:
        index = xp.flatnonzero(xp.ravel(edges)[op.flat])
    obj = op.obj[index]
    counts = xp.bincount(obj, minlength=op.n)[: op.n]
    return EdgePixels(index=index, obj=obj, counts=counts, starts=xp.cumsum(counts) - counts)


def measure_intensity(labels, n_objects: int, image, channel: str, *, objects: ObjectPixels | None = None,
                      edges=None, engine: str = "auto") -> dict:
    """MeasureObjectIntensity for one channel, all objects of a site at once.

    Parameters
    ----------
    labels : (H, W) int array
        Label image, objects ``1..n_objects``.
    n_objects : int
        Number of objects ``N``; row ``i`` of every output is label ``i + 1``.
    image : (H, W) float array
        Intensities (illumination-corrected, in [0, 1]).
    channel : str
        Channel name used in the column names.
    objects : ObjectPixels, optional
        ``object_pixels(labels, n_objects)`` when already computed (it does
        not depend on the channel; pass it to share it between channels).
    edges : (H, W) bool array or EdgePixels, optional
        ``edge_mask(labels)``, or ``edge_pixels(objects, edge_mask(labels))``
        to share the grouping of the edge pixels between channels.
    engine : {"auto", "cpu", "array"}
        ``"cpu"``: the numba kernel (NumPy inputs only; exact order
        statistics from a per-object sort); ``"array"``: the backend array
        code the GPU runs; ``"auto"``: ``"cpu"`` on NumPy, else ``"array"``.

    Returns
    -------
    dict
        ``{column: (N,) float64 array}`` with CellProfiler's per-object column
        names without the compartment prefix, e.g.
        ``Intensity_MedianIntensity_DNA``, ``Location_MaxIntensity_X_DNA``.

    Notes
    -----
    When every pixel value is finite (the usual case) the object grouping,
    the pixel coordinates and the edge grouping of ``objects``/``edges`` are
    used as they are; otherwise the non-finite pixels are left out first, as
    CellProfiler masks them.
    """
    return measure_intensity_channels(labels, n_objects, {channel: image}, [channel], objects=objects,
                                      edges=edges, engine=engine)


def measure_intensity_channels(labels, n_objects: int, images, channels, *, objects: ObjectPixels | None = None,
                               edges=None, engine: str = "auto") -> dict:
    """:func:`measure_intensity` for several channels of one object set at once.

    On the CPU (``engine="cpu"``) each channel goes through the numba kernel;
    the array code (``engine="array"``, the GPU path) stacks the channels so
    that its launches do not grow with their number. Parameters as
    :func:`measure_intensity`, with ``images`` a mapping channel -> image
    and ``channels`` the channels to measure; returns the columns of all of
    them.
    """
    bk = backend_of(labels, *[images[c] for c in channels])
    xp = bk.xp
    for c in channels:
        check_image_shape("measure_intensity", c, images[c], labels)
    op = objects if objects is not None else object_pixels(labels, n_objects)
    if isinstance(edges, EdgePixels):
        ep = edges
    elif edges is None:
        ep = edge_pixels(op, labels=labels)
    else:
        ep = edge_pixels(op, edges)
    if engine not in ("auto", "cpu", "array"):
        raise ValueError(f"measure_intensity: engine must be 'auto', 'cpu' or 'array', got {engine!r}")
    if engine == "auto":
        engine = "cpu" if xp is np else "array"
    if engine == "cpu":
        if xp is not np:
            raise ValueError("measure_intensity: engine 'cpu' needs NumPy arrays")
        out = {}
        for c in channels:
            out.update(_measure_cpu(op, ep, images[c], c))
        return out
    return _array_channels(xp, op, ep, images, list(channels))


def _centre_of_mass(yf, xf, starts, counts):
    """Unweighted centre of mass ``(y, x)`` of each object (NaN without pixels), as the array code computes it."""
    xp = backend_of(yf).xp
    has = counts > 0
    cm_y = xp.full(counts.shape[0], xp.nan)
    cm_x = xp.full(counts.shape[0], xp.nan)
    cm_y[has] = segment_sum(yf, starts, counts)[has] / counts[has]
    cm_x[has] = segment_sum(xf, starts, counts)[has] / counts[has]
    return cm_y, cm_x


def _centres(op, ep):
    """:func:`_centre_of_mass` of all pixels of ``op``, computed once per object set (kept on ``ep``)."""
    if ep.centres is None:
        yf, xf = op.yx_float
        object.__setattr__(ep, "centres", _centre_of_mass(yf, xf, op.starts, op.counts))
    return ep.centres


def _measure_cpu(op, ep, image, channel) -> dict:
    """One channel through the numba kernel (non-finite pixels left out, as CellProfiler masks them)."""
    n = op.n
    raw = np.ravel(image)[op.flat]  # one gather, in the image's dtype
    all_vals = raw.astype(np.float64, copy=False)
    finite = bool(np.isfinite(raw).all())
    if finite:
        vals, obj = all_vals, op.obj
        yf, xf = op.yx_float
        counts, starts = op.counts, op.starts
        evals, ecounts, estarts = all_vals[ep.index], ep.counts, ep.starts
    else:
        vals, obj, y, x = _finite(op, all_vals)
        yf, xf = y.astype(np.float64), x.astype(np.float64)
        counts = np.bincount(obj, minlength=n)[:n]
        starts = np.cumsum(counts) - counts
        raw = vals
        on_edge = np.zeros(all_vals.shape[0], dtype=bool)
        on_edge[ep.index] = True
        evals, eobj, _, _ = _finite(op, all_vals, on_edge)
        ecounts = np.bincount(eobj, minlength=n)[:n]
        estarts = np.cumsum(ecounts) - ecounts
    res = np.empty((len(_ROWS), n))
    # sorted in the image's own dtype (float32: NumPy's fastest sort; the kernel
    # widens each value it reads, so the order statistics are the same)
    # float64 values that are all float32 (the pipeline's images) and none negative or -0.0
    # (whose ties with 0.0 the two sorts could order differently) sort as float32, twice as fast
    if raw.dtype == np.float64 and raw.size and not bool(np.signbit(raw).any()):
        r32 = raw.astype(np.float32)
        if bool((r32 == raw).all()):
            raw = r32
    sv = _sorted_within(raw, starts, counts)
    if sv.dtype not in (np.float32, np.float64):
        sv = sv.astype(np.float64)
    cm_y, cm_x = _centres(op, ep) if finite else _centre_of_mass(yf, xf, starts, counts)
    _intensity_jit(np.ascontiguousarray(vals, dtype=np.float64), sv, starts.astype(np.int64, copy=False),
                   counts.astype(np.int64, copy=False), np.ascontiguousarray(yf, np.float64),
                   np.ascontiguousarray(xf, np.float64), cm_y, cm_x, np.ascontiguousarray(evals, np.float64),
                   estarts.astype(np.int64, copy=False), ecounts.astype(np.int64, copy=False), res,
                   *_pairwise_scratch())
    r = dict(zip(_ROWS, res))
    out = {}
    for key in ("Integrated", "Mean", "Std", "Min", "Max", "LowerQuartile", "Median", "UpperQuartile", "MAD"):
        out[f"Intensity_{key}Intensity_{channel}"] = r[key]
    out[f"Intensity_MassDisplacement_{channel}"] = r["MassDisplacement"]
    out[f"Location_CenterMassIntensity_X_{channel}"] = r["CMI_X"]
    out[f"Location_CenterMassIntensity_Y_{channel}"] = r["CMI_Y"]
    out[f"Location_MaxIntensity_X_{channel}"] = r["Max_X"]
    out[f"Location_MaxIntensity_Y_{channel}"] = r["Max_Y"]
    for key in ("Integrated", "Mean", "Std", "Min", "Max"):
        out[f"Intensity_{key}IntensityEdge_{channel}"] = r[f"{key}Edge"]
    return out


# ---------------------------------------------------------------------------
# Array code (the GPU path): all channels of an object set stacked, no host read
# ---------------------------------------------------------------------------

def _segments(xp, starts, counts, size: int, obj):
    """What :func:`_rows_reduce` needs of a segmentation, computed once.

    ``(starts, counts, clamped starts, last object with values, cut flag,
    object of each value)``.
    """
    n = counts.shape[0]
    idx = xp.minimum(starts, max(size - 1, 0))
    j = (n - 1) - xp.argmax(counts[::-1] > 0)  # the last object with values
    cut = (j < n - 1) & (counts[j] >= 2)
    return starts, counts, idx, j, cut, obj


def _rows_reduce(xp, name: str, m, seg):
    """Per-object reduction of every row of ``m`` over the segments ``seg`` (:func:`_segments`).

    ``add``: ``add.reduceat`` with the arithmetic of
    :func:`hpc_profiler.features._objects.segment_sum` per row (same bits on
    NumPy; trailing empty objects clamped and the last value put back on the
    device), one launch for all rows plus three for the patch.
    ``minimum``/``maximum``: one scatter ``ufunc.at`` into ``(rows, N)``
    (CuPy has ``reduceat`` for ``add`` only). Values of empty objects are
    arbitrary (callers mask them).
    """
    starts, counts, idx, j, cut, obj = seg
    n = counts.shape[0]
    rows, size = m.shape
    if size == 0:
        return xp.zeros((rows, n), dtype=m.dtype)
    if name != "add":
        ufunc = getattr(xp, name)
        if m.dtype.kind == "f":
            fill = xp.inf if name == "minimum" else -xp.inf
        else:
            info = np.iinfo(m.dtype)
            fill = info.max if name == "minimum" else info.min
        out = xp.full(rows * n, fill, dtype=m.dtype)
        gid = (xp.arange(rows, dtype=xp.int64)[:, None] * n + obj[None, :]).ravel()
        ufunc.at(out, gid, m.ravel())
        return out.reshape(rows, n)
    try:
        r = xp.add.reduceat(m, idx, axis=1)
    except (AttributeError, NotImplementedError, TypeError):  # backends without ufunc.reduceat
        return xp.stack([segment_sum(row, starts, counts) for row in m])
    last = m[:, size - 1]
    r[:, j] = r[:, j] + xp.where(cut, last, xp.zeros((), dtype=m.dtype))
    return r


def _segmented_sort_rows(xp, m, seg, n_seg: int):
    """Sort every row of ``m`` within the segments ``seg`` (grouped ascending), one sort for all rows.

    float32 data: one ``sort`` of 64-bit keys ``(row * n_seg + segment) << 32 |
    order bits``, decoded back (exact); other data: one ``lexsort``.
    Returns float64 ``(rows, P)``.
    """
    rows, size = m.shape
    gid = (xp.arange(rows, dtype=xp.int64)[:, None] * n_seg + seg[None, :]).ravel()
    if m.dtype == xp.float32 and rows * n_seg < 2**31:
        u = (m.ravel() + xp.float32(0.0)).view(xp.uint32)
        neg = (u >> 31) == 1
        u = xp.where(neg, ~u, u | xp.uint32(0x80000000)).astype(xp.uint64)
        key = xp.sort((gid.astype(xp.uint64) << xp.uint64(32)) | u)
        low = (key & xp.uint64(0xFFFFFFFF)).astype(xp.uint32)
        bits = xp.where((low >> 31) == 1, low & xp.uint32(0x7FFFFFFF), ~low)
        return bits.view(xp.float32).astype(xp.float64).reshape(rows, size)
    flat = m.ravel().astype(xp.float64)
    order = xp.lexsort(xp.stack([flat, gid.astype(xp.float64)]))
    return flat[order].reshape(rows, size)


def _gather_rows(xp, m, pos, ok, reps: int = 1):
    """``m[row, pos[t * rows + row, i]]`` for ``reps`` stacked ``(rows, N)`` index arrays, NaN where not ``ok``."""
    rows, size = m.shape
    p = xp.clip(pos, 0, max(size - 1, 0))
    row = xp.arange(reps * rows, dtype=xp.int64) % rows
    flat = (row[:, None] * size + p).ravel()
    got = m.ravel()[flat].reshape(pos.shape)
    return xp.where(xp.concatenate([ok] * reps) if reps > 1 else ok, got, xp.nan)


def _array_channels(xp, op: ObjectPixels, ep: "EdgePixels", images, channels) -> dict:
    """Every Intensity column of ``channels`` for one object set, as stacked backend array code.

    Channels are rows of ``(C, P)`` arrays; per-object reductions are one
    ``reduceat`` per quantity for all channels; the order statistics come from
    one segmented sort of the values and one of the deviations from the
    median. Non-finite pixels are left out by masks (no host-side
    compaction), so nothing is read back to the host and the launches do
    not depend on the number of objects or channels.
    """
    n = op.n
    starts, counts, obj = op.starts, op.counts, op.obj
    size = op.flat.shape[0]
    raw = xp.stack([xp.ravel(images[c])[op.flat] for c in channels])  # (C, P), the images' dtype
    v = raw.astype(xp.float64)
    fin = xp.isfinite(v)
    inf = xp.inf
    nch = len(channels)
    seg = _segments(xp, starts, counts, size, obj)
    yf, xf = op.yx_float
    finf = fin.astype(xp.float64)
    vz = xp.where(fin, v, 0.0)
    # every plain sum over the pixels in one reduceat: counts, totals, weighted and plain coordinates
    sums = _rows_reduce(xp, "add", xp.concatenate([finf, vz, yf[None, :] * vz, xf[None, :] * vz,
                                                    finf * yf[None, :], finf * xf[None, :]]), seg)
    sums = xp.where(counts > 0, sums, 0.0).reshape(6, nch, n)
    cnt, integ, syv, sxv, sy, sx = (sums[t] for t in range(6))
    has = cnt > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = xp.where(has, integ / cnt, xp.nan)
        dev = xp.where(fin, v - mean[:, obj], 0.0)
        std = xp.where(has, xp.sqrt(_rows_reduce(xp, "add", dev * dev, seg) / cnt), xp.nan)
    ext = _rows_reduce(xp, "minimum", xp.concatenate([xp.where(fin, v, inf), -xp.where(fin, v, -inf)]), seg)
    vmin = xp.where(has, ext[:nch], xp.nan)
    vmax = xp.where(has, -ext[nch:], xp.nan)

    # order statistics: non-finite pixels become +inf and sort after the finite ones
    raw_inf = xp.where(fin, raw, inf).astype(raw.dtype, copy=False) if raw.dtype.kind == "f" else raw
    sv = _segmented_sort_rows(xp, raw_inf, obj, n)
    c = cnt.astype(xp.int64)
    base = starts[None, :]
    pos = xp.stack([cnt * 0.25, cnt * 0.5, cnt * 0.75])  # (3, C, N)
    kf = xp.floor(pos)
    f = pos - kf
    k = xp.minimum(kf.astype(xp.int64), c[None] - 1)
    k1 = xp.minimum(k + 1, c[None] - 1)
    g = _gather_rows(xp, sv, base + xp.concatenate([k, k1]).reshape(6 * nch, n), has, reps=6)
    v0, v1 = g[:3 * nch].reshape(3, nch, n), g[3 * nch:].reshape(3, nch, n)
    q = xp.where(k < c[None] - 1, v0 * (1.0 - f) + v1 * f, v0)
    lq, med, uq = q[0], q[1], q[2]
    dev_med = xp.where(xp.isfinite(sv), xp.abs(sv - med[:, obj]), inf)
    sd = _segmented_sort_rows(xp, dev_med, obj, n)
    d = _gather_rows(xp, sd, base + xp.concatenate([(c - 1) // 2, c // 2]), has, reps=2)
    d0, d1 = d[:nch], d[nch:]
    mad = xp.where((c - 1) // 2 == c // 2, d0, (d0 + d1) / 2.0)

    # centres of mass, location of the maximum
    with np.errstate(invalid="ignore", divide="ignore"):
        nz = has & (integ != 0)
        cmi_y = xp.where(nz, syv / integ, xp.nan)
        cmi_x = xp.where(nz, sxv / integ, xp.nan)
        cm_y = xp.where(has, sy / cnt, xp.nan)
        cm_x = xp.where(has, sx / cnt, xp.nan)
    disp = xp.sqrt((cmi_y - cm_y) ** 2 + (cmi_x - cm_x) ** 2)
    at_max = fin & (v == vmax[:, obj])
    # float64 positions (exact below 2**53): every scatter of this module is a float64 one
    first = _rows_reduce(xp, "minimum", xp.where(at_max, xp.arange(size, dtype=xp.float64)[None, :], float(size)),
                         seg)
    idx = xp.clip(first, 0, max(size - 1, 0)).astype(xp.int64)
    max_x = xp.where(has, xf[idx], xp.nan)
    max_y = xp.where(has, yf[idx], xp.nan)

    # edge pixels
    e = v[:, ep.index]
    efin = fin[:, ep.index]
    eseg = _segments(xp, ep.starts, ep.counts, ep.index.shape[0], ep.obj)
    ec = ep.counts
    ez = xp.where(efin, e, 0.0)
    esums = xp.where(ec > 0, _rows_reduce(xp, "add", xp.concatenate([efin.astype(xp.float64), ez]), eseg), 0.0)
    ecnt, esum = esums[:nch], esums[nch:]
    ehas = ecnt > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        emean = xp.where(ehas, esum / ecnt, xp.nan)
        edev = xp.where(efin, e - emean[:, ep.obj], 0.0)
        estd = xp.where(ehas, xp.sqrt(_rows_reduce(xp, "add", edev * edev, eseg) / ecnt), xp.nan)
    eext = _rows_reduce(xp, "minimum", xp.concatenate([xp.where(efin, e, inf), -xp.where(efin, e, -inf)]), eseg)
    emin = xp.where(ehas, eext[:nch], xp.nan)
    emax = xp.where(ehas, -eext[nch:], xp.nan)

    out = {}
    for r, ch in enumerate(channels):
        cols = {
            f"Intensity_IntegratedIntensity_{ch}": integ[r], f"Intensity_MeanIntensity_{ch}": mean[r],
            f"Intensity_StdIntensity_{ch}": std[r], f"Intensity_MinIntensity_{ch}": vmin[r],
            f"Intensity_MaxIntensity_{ch}": vmax[r], f"Intensity_LowerQuartileIntensity_{ch}": lq[r],
            f"Intensity_MedianIntensity_{ch}": med[r], f"Intensity_UpperQuartileIntensity_{ch}": uq[r],
            f"Intensity_MADIntensity_{ch}": mad[r], f"Intensity_MassDisplacement_{ch}": disp[r],
            f"Location_CenterMassIntensity_X_{ch}": cmi_x[r], f"Location_CenterMassIntensity_Y_{ch}": cmi_y[r],
            f"Location_MaxIntensity_X_{ch}": max_x[r], f"Location_MaxIntensity_Y_{ch}": max_y[r],
            f"Intensity_IntegratedIntensityEdge_{ch}": esum[r], f"Intensity_MeanIntensityEdge_{ch}": emean[r],
            f"Intensity_StdIntensityEdge_{ch}": estd[r], f"Intensity_MinIntensityEdge_{ch}": emin[r],
            f"Intensity_MaxIntensityEdge_{ch}": emax[r],
        }
        out.update(cols)
    return out


# ----------------------------------------------------------------- registry entry
#: MeasureObjectIntensity columns per channel (``Intensity_<name>_<channel>``).
INTENSITY_FEATURES = (
    "IntegratedIntensity", "MeanIntensity", "StdIntensity", "MinIntensity", "MaxIntensity",
    "IntegratedIntensityEdge", "MeanIntensityEdge", "StdIntensityEdge", "MinIntensityEdge", "MaxIntensityEdge",
    "LowerQuartileIntensity", "MedianIntensity", "UpperQuartileIntensity", "MADIntensity", "MassDisplacement",
)
#: Location columns MeasureObjectIntensity writes per channel.
INTENSITY_LOCATIONS = ("CenterMassIntensity_X", "CenterMassIntensity_Y", "MaxIntensity_X", "MaxIntensity_Y")


def _intensity_names(obj, channels, params) -> list[str]:
    return [f"Intensity_{f}_{c}" for c in channels for f in INTENSITY_FEATURES] + [
        f"Location_{f}_{c}" for c in channels for f in INTENSITY_LOCATIONS
    ]


def _intensity_measure(ctx) -> dict:
    edges = edge_pixels(ctx.objects, labels=ctx.labels)  # shared by the channels
    return measure_intensity_channels(ctx.labels, ctx.n, ctx.images, ctx.channels, objects=ctx.objects, edges=edges)


from hpc_profiler.features.registry import Family  # noqa: E402  (the entry closes the module)

FAMILY = Family(name="Intensity", names=_intensity_names, measure=_intensity_measure, per_channel=True)
