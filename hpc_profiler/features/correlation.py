"""Per-object colocalization: CellProfiler 4 **MeasureColocalization**, Costes off.

Reproduces ``MeasureColocalization.run_image_pair_objects`` of CellProfiler 4
("Within objects", "Run all metrics" with the Costes measurement switched off, as
in the CPJUMP1 / JUMP analysis pipelines) for every pair of channels:

==============================  ===============================================
column                          definition (pixels ``x`` of the first, ``y`` of
                                the second channel inside one object)
==============================  ===============================================
``Correlation_Correlation_A_B``  Pearson r of ``x`` and ``y``
``Correlation_Manders_A_B``      sum(x over C) / sum(x over x >= tx)
``Correlation_Manders_B_A``      sum(y over C) / sum(y over y >= ty)
``Correlation_RWC_A_B``          sum(x * w over C) / sum(x over x >= tx)
``Correlation_RWC_B_A``          sum(y * w over C) / sum(y over y >= ty)
``Correlation_Overlap_A_B``      sum(xy over C) / sqrt(sum(x^2 over C) sum(y^2 over C))
``Correlation_K_A_B``            sum(xy over C) / sum(x^2 over C)
``Correlation_K_B_A``            sum(xy over C) / sum(y^2 over C)
==============================  ===============================================

with ``tx = threshold_percent / 100 * max(x)`` (the maximum inside the object),
``C = (x >= tx) & (y >= ty)`` and the rank weight ``w = (R - |rank(x) - rank(y)|)
/ R`` (Singan et al. 2011), where ``rank`` is the dense rank of a pixel's
intensity and ``R`` the largest rank plus one.

Pairs and names follow the CellProfiler reference output
(``Cells_columns.txt`` of the JUMP pipeline): the pair ``(A, B)`` has ``A``
before ``B`` in *sorted* channel-name order (``Correlation_Correlation_AGP_DNA``,
never ``..._DNA_AGP``), the symmetric measures (Correlation, Overlap) are written
once per pair and the asymmetric ones (K, Manders, RWC) in both orders.

Everything is computed for all objects at once with segment sums over the
labelled pixels grouped by object (CPU and GPU share this code through
:mod:`hpc_profiler.backend`); the dense ranks come from one sort per channel.

Where this deliberately follows CellProfiler rather than ``cp_measure`` 0.3.0
(the test reference), documented in ``docs/feature_differences.md``:

* **RWC ranks are image-wide.** CellProfiler 4 ranks the pixel intensities of
  *all* objects of the image together (one ``lexsort`` over the labelled pixels)
  and uses one ``R`` for the image; ``cp_measure`` ranks each object separately.
  We reproduce CellProfiler; the two agree exactly for a single object, which is
  how the test checks the formula against ``cp_measure``.
* **Per-object slope is not written.** CellProfiler 4 writes
  ``Correlation_Slope`` only for whole images; the reference object columns have
  none, so neither do we (``cp_measure`` returns a per-object slope).
* **No image-level columns.** The CPJUMP1 pipeline measures "Within objects"
  only, so there is no ``Image_Correlation_*`` (none in ``Image_columns.txt``).
* **Degenerate objects.** As in CellProfiler, a constant channel inside an
  object gives a NaN Pearson r (0/0), and an object whose thresholded set is
  empty gives 0 (Manders, RWC) or NaN (Overlap, K) instead of cp_measure's 0;
  an object with no pixels gives NaN everywhere. When *no* object of the image
  has a pixel above both thresholds, CellProfiler sets Manders, RWC, Overlap and
  K to 0 for all objects; so do we.
"""
from __future__ import annotations

from itertools import combinations
from typing import Mapping, Sequence

import numpy as np

from ..backend import backend_of
from ._objects import ObjectPixels, object_pixels, segment_max, segment_sum

#: Measures written once per unordered pair / in both orders of a pair.
SYMMETRIC = ("Correlation", "Overlap")
ASYMMETRIC = ("K", "Manders", "RWC")


def channel_pairs(channels: Sequence[str]) -> list[tuple[str, str]]:
    """Channel pairs in CellProfiler's output order (sorted names, ``A < B``).

    Examples
    --------
    >>> channel_pairs(["DNA", "ER", "AGP"])
    [('AGP', 'DNA'), ('AGP', 'ER'), ('DNA', 'ER')]
    """
    return list(combinations(sorted(channels), 2))


def correlation_feature_names(channels: Sequence[str]) -> list[str]:
    """Column names :func:`measure_correlation` returns for ``channels``."""
    names = []
    for a, b in channel_pairs(channels):
        names += [f"Correlation_{m}_{a}_{b}" for m in SYMMETRIC]
        names += [f"Correlation_{m}_{a}_{b}" for m in ASYMMETRIC]
        names += [f"Correlation_{m}_{b}_{a}" for m in ASYMMETRIC]
    return names


def value_order(xp, values):
    """Permutation sorting ``values`` ascending (as ``argsort``), fast path for float32 data.

    When every value is exactly a float32 (the pipeline's images are float32,
    widened to float64), the order comes from one ``sort`` of 64-bit keys
    (the float32's order-preserving bit pattern in the high word, the pixel
    index in the low word) instead of an ``argsort`` - the same permutation
    up to the order of equal values, which dense ranks do not see, several
    times faster on the CPU. Other inputs use ``argsort``.
    """
    v32 = values.astype(xp.float32) + xp.float32(0.0)  # + 0.0 turns -0.0 into 0.0
    if values.shape[0] >= 2**32 or not bool((v32 == values).all()):
        return xp.argsort(values)
    u = v32.view(xp.uint32)
    # IEEE-754 total order of non-NaN floats as unsigned integers
    u = xp.where(u >> 31 == 1, ~u, u | xp.uint32(0x80000000)).astype(xp.uint64)
    key = xp.sort((u << xp.uint64(32)) | xp.arange(values.shape[0], dtype=xp.uint64))
    return (key & xp.uint64(0xFFFFFFFF)).astype(xp.int64)


def dense_rank(xp, values):
    """Dense rank of ``values`` (0 for the smallest; equal values share a rank), int64.

    CellProfiler's ``lexsort`` + ``cumsum`` of value changes over all labelled
    pixels of the image (MeasureColocalization, RWC).
    """
    order = value_order(xp, values)
    ordered = values[order]
    change = xp.zeros(ordered.shape, dtype=xp.int64)
    change[1:] = ordered[1:] != ordered[:-1]
    rank = xp.empty(values.shape, dtype=xp.int64)
    rank[order] = xp.cumsum(change)
    return rank


def image_dense_ranks(image):
    """Dense rank of every pixel of ``image`` among all its pixels, int64, same shape.

    Computed once per channel and site, then restricted to each object set by
    :func:`subset_dense_rank` (one sort per channel instead of one per
    channel and object set).
    """
    xp = backend_of(image).xp
    return dense_rank(xp, xp.ravel(xp.asarray(image, dtype=xp.float64))).reshape(image.shape)


def subset_dense_rank(xp, global_rank, n_ranks: int | None = None):
    """Dense ranks within a subset of pixels from their ranks among a superset.

    ``global_rank`` holds the dense ranks (among all pixels) of the subset's
    pixels; a subset pixel's own dense rank is the number of distinct ranks
    present in the subset below its rank - exactly what sorting the subset
    would give. ``n_ranks``, an upper bound of the ranks known on the host
    (the superset's size), saves reading their maximum from the device.
    Returns float64.
    """
    if global_rank.shape[0] == 0:
        return global_rank.astype(xp.float64)
    if n_ranks is None:
        n_ranks = int(global_rank.max()) + 1
    # 1-byte flags and 32-bit running counts: a quarter and a half of the memory traffic of int64
    present = xp.zeros(int(n_ranks), dtype=xp.uint8)
    present[global_rank] = 1
    acc = xp.int32 if int(n_ranks) < 2**31 else xp.int64
    return xp.cumsum(present, dtype=acc)[global_rank].astype(xp.float64) - 1.0


def measure_correlation(
    labels,
    n_objects: int,
    images: Mapping[str, object],
    channels: Sequence[str],
    *,
    threshold_percent: float = 15.0,
    objects: ObjectPixels | None = None,
    image_ranks: Mapping[str, object] | None = None,
) -> dict:
    """Per-object colocalization of every channel pair (MeasureColocalization).

    Parameters
    ----------
    labels : int array (H, W)
        Label image; object ``i`` (row ``i - 1``) is the pixels equal to ``i``.
    n_objects : int
        Number of objects N (labels above N are ignored).
    images : mapping channel -> float array (H, W)
        Illumination-corrected intensities in [0, 1].
    channels : sequence of str
        Channels to pair (at least two for any output).
    threshold_percent : float
        Per-object threshold, % of the object's maximum in each channel
        (CellProfiler's "Set threshold as percentage of maximum intensity").
    objects : ObjectPixels, optional
        ``object_pixels(labels, n_objects)`` when already computed.
    image_ranks : mapping channel -> int array (H, W), optional
        ``image_dense_ranks(images[channel])``, to share one sort per channel
        between the object sets of a site (the result is the same).

    Returns
    -------
    dict[str, array of shape (N,), float64]
        Keys as in :func:`correlation_feature_names`.

    Notes
    -----
    Reproduces CellProfiler 4 ``MeasureColocalization.run_image_pair_objects``
    (see the module docstring for the formulas and the documented differences).
    Pixels are grouped by object once (:class:`ObjectPixels`), so every
    per-object sum is a segment sum; per channel the mean, the centred values,
    the threshold mask and the dense ranks are computed once and shared by the
    four pairs the channel is part of.
    """
    bk = backend_of(labels, *[images[c] for c in channels])
    xp = bk.xp
    n = int(n_objects)
    names = correlation_feature_names(channels)
    if n == 0:
        return {k: xp.zeros(0, dtype=xp.float64) for k in names}
    labels = xp.asarray(labels)
    op = objects if objects is not None else object_pixels(labels, n)
    starts, counts = op.starts, op.counts
    idx = op.obj
    npix = counts.astype(xp.float64)
    empty = npix == 0
    if bool(empty.all()):
        return {k: xp.full(n, xp.nan, dtype=xp.float64) for k in names}

    def osum(w):
        return segment_sum(w, starts, counts)

    # Per-channel quantities, computed once and reused by every pair.
    vals, centred, sxx, above, tot, rank, rank_max = {}, {}, {}, {}, {}, {}, {}
    with _quiet(xp):
        for c in sorted(channels):
            v = xp.ravel(xp.asarray(images[c], dtype=xp.float64))[op.flat]
            vals[c] = v
            mean = osum(v) / npix
            d = v - mean[idx]
            centred[c] = d
            sxx[c] = osum(d * d)
            if image_ranks is not None and c in image_ranks:
                rank[c] = subset_dense_rank(xp, xp.ravel(image_ranks[c])[op.flat], n_ranks=image_ranks[c].size)
            else:
                rank[c] = dense_rank(xp, v).astype(xp.float64)
            rank_max[c] = rank[c].max()
            vmax = segment_max(v, starts, counts)
            thr = (threshold_percent / 100.0) * vmax
            above[c] = v >= thr[idx]
            tot[c] = osum(xp.where(above[c], v, 0.0))

        out = {}
        for a, b in channel_pairs(channels):
            x, y = vals[a], vals[b]
            corr = osum(centred[a] * centred[b]) / xp.sqrt(sxx[a] * sxx[b])
            both = above[a] & above[b]  # pixels above both thresholds
            # CellProfiler writes 0 for every object when no pixel of the image is
            # above both thresholds; decided on the device (no host round trip)
            any_both = both.any()
            xc = xp.where(both, x, 0.0)
            yc = xp.where(both, y, 0.0)
            m1 = osum(xc) / tot[a]
            m2 = osum(yc) / tot[b]
            r_max = xp.maximum(rank_max[a], rank_max[b]) + 1.0
            w = (r_max - xp.abs(rank[a] - rank[b])) / r_max
            rwc1 = osum(xc * w) / tot[a]
            rwc2 = osum(yc * w) / tot[b]
            fpsq = osum(xc * xc)
            spsq = osum(yc * yc)
            prod = osum(xc * yc)
            overlap = prod / xp.sqrt(fpsq * spsq)
            k1 = prod / fpsq
            k2 = prod / spsq
            m1, m2, rwc1, rwc2, overlap, k1, k2 = (
                xp.where(any_both, v, 0.0) for v in (m1, m2, rwc1, rwc2, overlap, k1, k2))
            values = {
                f"Correlation_Correlation_{a}_{b}": corr,
                f"Correlation_Overlap_{a}_{b}": overlap,
                f"Correlation_K_{a}_{b}": k1,
                f"Correlation_K_{b}_{a}": k2,
                f"Correlation_Manders_{a}_{b}": m1,
                f"Correlation_Manders_{b}_{a}": m2,
                f"Correlation_RWC_{a}_{b}": rwc1,
                f"Correlation_RWC_{b}_{a}": rwc2,
            }
            for k, v in values.items():
                out[k] = xp.where(empty, xp.nan, v.astype(xp.float64, copy=False))
    return {k: out[k] for k in names}


def _quiet(xp):
    """Silence NumPy's 0/0 warnings (CellProfiler's NaN results); CuPy does not warn."""
    return np.errstate(invalid="ignore", divide="ignore")
