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

Everything is computed for all objects at once with ``bincount`` sums over the
labelled pixels (CPU and GPU share this code through :mod:`hpc_profiler.backend`).

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


def _per_object_sum(xp, idx, weights, n):
    return xp.bincount(idx, weights=weights, minlength=n)[:n]


def rank_and_object_max(xp, values, idx, n: int, last):
    """Dense ranks of ``values`` and each object's maximum, from one value sort.

    Parameters
    ----------
    values : (M,) float array
        Intensities of the labelled pixels.
    idx : (M,) int array
        Object row of each pixel (``label - 1``).
    n : int
        Number of objects.
    last : (N,) int array
        Position of each object's last pixel when pixels are grouped by object
        (``cumsum(counts) - 1``; only used where the object has pixels).

    Returns
    -------
    rank : (M,) float64
        Dense rank (0 for the smallest value, equal values share a rank) over
        all pixels, CellProfiler's ``lexsort`` + ``cumsum`` of value changes.
    vmax : (N,) float64
        Maximum per object (NaN for objects without pixels).

    Notes
    -----
    A stable sort of the object rows of the value-sorted pixels groups them by
    object while keeping the value order, so each group's last pixel is the
    object's maximum (a radix sort for the small integer rows).
    """
    order = xp.argsort(values)
    ordered = values[order]
    change = xp.zeros(ordered.shape, dtype=xp.int64)
    change[1:] = ordered[1:] != ordered[:-1]
    rank = xp.empty(values.shape, dtype=xp.float64)
    rank[order] = xp.cumsum(change).astype(xp.float64)
    rows = idx[order].astype(xp.int16 if n < 32767 else xp.int32)
    grouped = order[xp.argsort(rows, kind="stable")]
    counts = xp.bincount(idx, minlength=n)[:n]
    vmax = xp.full(n, xp.nan, dtype=xp.float64)
    ok = counts > 0
    vmax[ok] = values[grouped[last[ok]]]
    return rank, vmax


def measure_correlation(
    labels,
    n_objects: int,
    images: Mapping[str, object],
    channels: Sequence[str],
    *,
    threshold_percent: float = 15.0,
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

    Returns
    -------
    dict[str, array of shape (N,), float64]
        Keys as in :func:`correlation_feature_names`.

    Notes
    -----
    Reproduces CellProfiler 4 ``MeasureColocalization.run_image_pair_objects``
    (see the module docstring for the formulas and the documented differences).
    """
    bk = backend_of(labels, *[images[c] for c in channels])
    xp = bk.xp
    n = int(n_objects)
    names = correlation_feature_names(channels)
    if n == 0:
        return {k: xp.zeros(0, dtype=xp.float64) for k in names}
    labels = xp.asarray(labels)
    inside = (labels > 0) & (labels <= n)
    lab = labels[inside].astype(xp.int64)
    idx = lab - 1
    npix = _per_object_sum(xp, idx, None, n).astype(xp.float64)
    empty = npix == 0
    if bool(empty.all()):
        return {k: xp.full(n, xp.nan, dtype=xp.float64) for k in names}
    last = xp.cumsum(npix.astype(xp.int64)) - 1

    # Per-channel quantities, computed once and reused by every pair.
    vals, centred, sxx, above, tot, rank, rank_max = {}, {}, {}, {}, {}, {}, {}
    with _quiet(xp):
        for c in sorted(channels):
            v = xp.asarray(images[c], dtype=xp.float64)[inside]
            vals[c] = v
            mean = _per_object_sum(xp, idx, v, n) / npix
            d = v - mean[idx]
            centred[c] = d
            sxx[c] = _per_object_sum(xp, idx, d * d, n)
            rank[c], vmax = rank_and_object_max(xp, v, idx, n, last)
            rank_max[c] = rank[c].max()
            thr = (threshold_percent / 100.0) * vmax
            above[c] = v >= thr[idx]
            tot[c] = _per_object_sum(xp, idx, v * above[c], n)

        out = {}
        for a, b in channel_pairs(channels):
            x, y = vals[a], vals[b]
            corr = _per_object_sum(xp, idx, centred[a] * centred[b], n) / xp.sqrt(sxx[a] * sxx[b])
            comb = xp.nonzero(above[a] & above[b])[0]  # pixels above both thresholds
            if comb.size:
                ic, xc, yc = idx[comb], x[comb], y[comb]
                m1 = _per_object_sum(xp, ic, xc, n) / tot[a]
                m2 = _per_object_sum(xp, ic, yc, n) / tot[b]
                r_max = xp.maximum(rank_max[a], rank_max[b]) + 1.0
                w = (r_max - xp.abs(rank[a][comb] - rank[b][comb])) / r_max
                rwc1 = _per_object_sum(xp, ic, xc * w, n) / tot[a]
                rwc2 = _per_object_sum(xp, ic, yc * w, n) / tot[b]
                fpsq = _per_object_sum(xp, ic, xc * xc, n)
                spsq = _per_object_sum(xp, ic, yc * yc, n)
                prod = _per_object_sum(xp, ic, xc * yc, n)
                overlap = prod / xp.sqrt(fpsq * spsq)
                k1 = prod / fpsq
                k2 = prod / spsq
            else:
                m1 = m2 = rwc1 = rwc2 = overlap = k1 = k2 = xp.zeros(n, dtype=xp.float64)
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
                v = xp.array(v, dtype=xp.float64)
                v[empty] = xp.nan
                out[k] = v
    return {k: out[k] for k in names}


def _quiet(xp):
    """Silence NumPy's 0/0 warnings (CellProfiler's NaN results); CuPy does not warn."""
    return np.errstate(invalid="ignore", divide="ignore")
