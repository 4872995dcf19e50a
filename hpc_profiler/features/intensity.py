"""Intensity features: CellProfiler's MeasureObjectIntensity.

Reproduces, per object and channel, the columns CellProfiler 4 writes as
``Intensity_{Integrated,Mean,Std,Min,Max}Intensity_{ch}``,
``Intensity_{Integrated,Mean,Std,Min,Max}IntensityEdge_{ch}``,
``Intensity_{LowerQuartile,Median,UpperQuartile,MAD}Intensity_{ch}``,
``Intensity_MassDisplacement_{ch}``, ``Location_CenterMassIntensity_{X,Y}_{ch}``
and ``Location_MaxIntensity_{X,Y}_{ch}``, vectorized over all objects of a site
(one stable sort of the labelled pixels, ``bincount`` sums, one
``lexsort((value, object))`` for the order statistics), on the backend of the
inputs (NumPy or CuPy).

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
* Min/Max are exact; the quartiles, median and MAD read the per-object sorted
  values from one sort of a combined key (see
  :func:`hpc_profiler.features._objects.segment_sort`), exact to ~1e-13. The
  MAD needs no second sort: the deviations below and above the median are two
  already-sorted runs, and a vectorized binary search picks the needed order
  statistics of their union.
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

from dataclasses import dataclass
from typing import Any

from hpc_profiler.backend import backend_of
from hpc_profiler.features._objects import (
    check_image_shape,
    ObjectPixels,
    edge_mask,
    label_var,
    object_pixels,
    segment_argmax,
    segment_max,
    segment_min,
    segment_quantile,
    segment_sort,
    segment_sum,
)

__all__ = ["measure_intensity", "intensity_statistics", "edge_pixels", "EdgePixels"]


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
    """

    index: Any
    obj: Any
    counts: Any
    starts: Any


def edge_pixels(op: ObjectPixels, edges) -> EdgePixels:
    """Group the pixels of ``edges`` (``edge_mask(labels)``) by object, once per object set."""
    xp = backend_of(op.flat).xp
    index = xp.flatnonzero(xp.ravel(edges)[op.flat])
    obj = op.obj[index]
    counts = xp.bincount(obj, minlength=op.n)[: op.n]
    return EdgePixels(index=index, obj=obj, counts=counts, starts=xp.cumsum(counts) - counts)


def measure_intensity(labels, n_objects: int, image, channel: str, *, objects: ObjectPixels | None = None,
                      edges=None) -> dict:
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
    bk = backend_of(labels, image)
    xp = bk.xp
    check_image_shape("measure_intensity", channel, image, labels)
    op = objects if objects is not None else object_pixels(labels, n_objects)
    n = op.n
    if edges is None:
        edges = edge_mask(labels)
    ep = edges if isinstance(edges, EdgePixels) else edge_pixels(op, edges)
    all_vals = xp.ravel(image)[op.flat].astype(xp.float64, copy=False)
    finite = bool(xp.isfinite(all_vals).all())
    if finite:
        vals, obj = all_vals, op.obj
        yf, xf = op.yx_float
    else:
        vals, obj, y, x = _finite(op, all_vals)
        yf, xf = y.astype(xp.float64), x.astype(xp.float64)
    stats = intensity_statistics(vals, obj, n, op.max_count if finite else None)

    out = {}
    for key in ("Integrated", "Mean", "Std", "Min", "Max"):
        out[f"Intensity_{key}Intensity_{channel}"] = stats[key]
    for key in ("LowerQuartile", "Median", "UpperQuartile"):
        out[f"Intensity_{key}Intensity_{channel}"] = stats[key]
    out[f"Intensity_MADIntensity_{channel}"] = stats["MAD"]

    # centre of mass of the intensity vs of the binary object
    integrated = stats["Integrated"]
    if finite:
        counts, starts = op.counts, op.starts
    else:
        counts = xp.bincount(obj, minlength=n)[:n]
        starts = xp.cumsum(counts) - counts
    nz = integrated != 0
    cmi_y = xp.full(n, xp.nan)
    cmi_x = xp.full(n, xp.nan)
    cmi_y[nz] = segment_sum(yf * vals, starts, counts)[nz] / integrated[nz]
    cmi_x[nz] = segment_sum(xf * vals, starts, counts)[nz] / integrated[nz]
    has = counts > 0
    cm_y = xp.full(n, xp.nan)
    cm_x = xp.full(n, xp.nan)
    cm_y[has] = segment_sum(yf, starts, counts)[has] / counts[has]
    cm_x[has] = segment_sum(xf, starts, counts)[has] / counts[has]
    out[f"Intensity_MassDisplacement_{channel}"] = xp.sqrt((cmi_y - cm_y) ** 2 + (cmi_x - cm_x) ** 2)
    out[f"Location_CenterMassIntensity_X_{channel}"] = cmi_x
    out[f"Location_CenterMassIntensity_Y_{channel}"] = cmi_y
    idx, ok = segment_argmax(vals, obj, n, maxima=stats["Max"])
    max_x = xp.full(n, xp.nan)
    max_y = xp.full(n, xp.nan)
    max_x[ok] = xf[idx[ok]]
    max_y[ok] = yf[idx[ok]]
    out[f"Location_MaxIntensity_X_{channel}"] = max_x
    out[f"Location_MaxIntensity_Y_{channel}"] = max_y

    # edge pixels
    if finite:
        evals, eobj, ecounts, estarts = all_vals[ep.index], ep.obj, ep.counts, ep.starts
    else:
        on_edge = xp.zeros(all_vals.shape[0], dtype=bool)
        on_edge[ep.index] = True
        evals, eobj, _, _ = _finite(op, all_vals, on_edge)
        ecounts = xp.bincount(eobj, minlength=n)[:n]
        estarts = xp.cumsum(ecounts) - ecounts
    esum = segment_sum(evals, estarts, ecounts)
    emean = xp.full(n, xp.nan)
    ehas = ecounts > 0
    emean[ehas] = esum[ehas] / ecounts[ehas]
    out[f"Intensity_IntegratedIntensityEdge_{channel}"] = esum
    out[f"Intensity_MeanIntensityEdge_{channel}"] = emean
    out[f"Intensity_StdIntensityEdge_{channel}"] = xp.sqrt(
        label_var(evals, eobj, n, ecounts, emean, estarts))
    out[f"Intensity_MinIntensityEdge_{channel}"] = segment_min(evals, estarts, ecounts)
    out[f"Intensity_MaxIntensityEdge_{channel}"] = segment_max(evals, estarts, ecounts)
    return out
