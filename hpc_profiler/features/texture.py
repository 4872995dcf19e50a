"""Haralick texture: CellProfiler 4 **MeasureTexture**, vectorized over objects.

Reproduces ``MeasureTexture.run_one`` (per object) and ``run_image`` (whole
image) of CellProfiler 4, which call ``mahotas.features.haralick`` once per
object (``ignore_zeros=True``) and once per image (``ignore_zeros=False``):

1. **Quantization** (one fixed map for the whole image, as CellProfiler's
   ``skimage.util.img_as_ubyte``): ``q = clip(rint(x * 255), 0, 255)`` computed
   in the image's float dtype; for ``gray_levels != 256`` the uint8 levels are
   rescaled with ``skimage.exposure.rescale_intensity(q, (0, 255),
   (0, gray_levels - 1))`` and truncated to integers.
2. **Co-occurrence** at offset ``scale * (dy, dx)`` for the 4 directions of
   mahotas / CellProfiler, ``_00 = (0, 1)``, ``_01 = (1, 1)``, ``_02 = (1, 0)``,
   ``_03 = (1, -1)``; symmetric (each pixel pair counted in both orders). For an
   object only pairs whose two pixels belong to the object and have a nonzero
   level are counted (mahotas ``ignore_zeros`` on the object's
   ``regionprops.intensity_image``, where pixels outside the object are 0).
3. **The 13 features** of mahotas ``haralick_features`` (defaults
   ``preserve_haralick_bug=False``, ``use_x_minus_y_variance=False``), including
   its two conventions: ``DifferenceVariance`` is the variance of the vector
   ``P(|i-j| = k)`` of length ``max level in the object + 1`` and
   ``Correlation`` is 1 when the marginal variance is 0.

Two implementations, compared with each other in the tests:

* **CPU** (:func:`_objects_kernel`, :func:`_image_kernel`, numba; numba is
  already a hard dependency for :mod:`hpc_profiler.morphology`): object by
  object and channel by channel, the object's pixel list is walked once in
  raster order and each pixel is paired with its partners at all 12 offsets,
  counted into one 256 x 256 scratch table per offset whose touched cells
  (listed in the order first met) give the features, so the work is one pass
  over the pixels; the whole image is counted the same way, zeros kept.
* **GPU** (:func:`_measure_texture_rows`, :func:`_image_texture_device`,
  array code through :mod:`hpc_profiler.backend`): the int32 keys ``(object,
  lo, hi)`` of the pairs of an object set, one row per (channel, offset),
  sorted row by row; the starts of their runs compacted once (the one
  data-sized step of an object set) and counted with a ``cumsum``; for the
  whole image one ``bincount`` of known length; then
  :func:`haralick_from_pairs` over the distinct GLCM entries, its per-object
  sums segmented reductions (no atomics on one address) and its histograms
  ``add.at`` of known length. A fixed number of launches per site, no loop
  over objects and no device->host copy. ``device_path`` selects the two
  older passes for timing (``scripts/bench_texture_gpu_paths.py``): one sort
  of 64-bit keys of all the pairs with the features over one slot per pair
  (``"batched"``, :func:`_measure_texture_device`; 4x slower than the
  per-offset pass on an H200: at 1080^2 its sums add 1.4e9 values, nearly
  all onto the address of the previous one, against 8.6e7 for the
  per-offset pass and 7.8e6 here) and one pass per offset
  and channel (``"offsets"``, or :func:`texture_geometry` passed as
  ``geometry``; one compaction, so an implicit sync, per offset and
  channel).

Where this deliberately differs (documented for ``docs``):

* **Undefined objects are NaN.** mahotas raises when a direction has no valid
  pair (object smaller than the scale, an empty compartment, an object whose
  pixels all quantize to 0); CellProfiler catches this, sets all 52 features of
  that object and scale to NaN and then *writes 0* in its table
  (``record_measurement`` replaces non-finite values). These functions return
  NaN (``cp_measure`` also does); :func:`hpc_profiler.features.measure_site`
  writes 0 as CellProfiler unless ``features.texture.undefined_as_nan`` is set.
  The same holds for the image-level measurement when the image is smaller than
  the scale (CellProfiler would raise there).
* **Variance, SumVariance, Correlation** (and DifferenceVariance on the CPU)
  come from integer moments of the pair counts, exact up to one final
  rounding, where mahotas evaluates ``sum(k^2 p_k) - mu^2`` in floating
  point: on low-contrast objects (a covariance near 0 beside a mean of ~200
  levels) that form loses most digits (on the bench site Correlation was off
  by up to 0.8 % of the exact rational value, and its CPU and GPU results
  differed by 2 % through the summation order of the GPU's atomics).
* **InfoMeas1/2** use ``HXY1 = HXY2 = 2 HX``, exact for a symmetric GLCM
  (mahotas evaluates the same sums over the outer product of the marginals).
* Float images outside ``[0, 1]`` are clipped (scikit-image raises for values
  above 1 or below -1).
"""
from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import numpy as np

from hpc_profiler.backend import backend_of
from hpc_profiler.morphology import njit_cached

#: The 13 Haralick features in CellProfiler's (and mahotas') order.
HARALICK_FEATURES = (
    "AngularSecondMoment",
    "Contrast",
    "Correlation",
    "Variance",
    "InverseDifferenceMoment",
    "SumAverage",
    "SumVariance",
    "SumEntropy",
    "Entropy",
    "DifferenceVariance",
    "DifferenceEntropy",
    "InfoMeas1",
    "InfoMeas2",
)

#: Unit offsets ``(dy, dx)`` of the directions ``_00 .. _03`` (mahotas ``_2d_deltas``).
DIRECTIONS = ((0, 1), (1, 1), (1, 0), (1, -1))

#: The GPU code paths of :func:`measure_texture_channels` (``device_path``); the first is the default.
DEVICE_PATHS = ("rows", "batched", "offsets")

#: Largest number of ``bincount`` bins used to count pair codes in one call;
#: above it the codes are counted with ``xp.unique`` (a sort) instead.
BINCOUNT_BUDGET = 1 << 23


def texture_feature_name(feature: str, channel: str, scale: int, direction: int, gray_levels: int) -> str:
    """CellProfiler's column name, e.g. ``Texture_Contrast_DNA_3_00_256``."""
    return f"Texture_{feature}_{channel}_{scale:d}_{direction:02d}_{gray_levels:d}"


def quantize(image, gray_levels: int = 256):
    """Gray levels of ``image`` as CellProfiler's MeasureTexture computes them.

    Parameters
    ----------
    image : float array
        Intensities in ``[0, 1]`` (values outside are clipped).
    gray_levels : int
        Number of levels, 2..256.

    Returns
    -------
    int32 array of the same shape with values in ``0 .. gray_levels - 1``:
    ``skimage.util.img_as_ubyte`` (``rint(x * 255)`` in the image's float dtype),
    then for ``gray_levels != 256`` ``skimage.exposure.rescale_intensity`` from
    ``(0, 255)`` to ``(0, gray_levels - 1)`` truncated to integers, as in
    ``MeasureTexture.run_one``.
    """
    if not 2 <= int(gray_levels) <= 256:
        raise ValueError(f"gray_levels must be in 2..256, got {gray_levels}")
    xp = backend_of(image).xp
    image = xp.asarray(image)
    if image.dtype.kind != "f":
        raise TypeError(f"texture expects a float image in [0, 1], got dtype {image.dtype}")
    q = xp.clip(image, 0, 1)  # a new array: scaled and rounded in place, in the image's dtype
    xp.multiply(q, 255, out=q)
    xp.rint(q, out=q)  # in [0, 255] already (NaN stays NaN, as a second clip would leave it)
    if gray_levels != 256:
        q = ((q.astype(xp.float64) / 255.0) * (gray_levels - 1)).astype(xp.uint8)
    return q.astype(xp.int32)


class PairGeometry(NamedTuple):
    """Pixel pairs inside one object at one offset (shared by all channels).

    ``first`` holds the flat index of the first pixel of each pair, ``obj`` its
    object (label - 1) and ``shift`` the flat distance to the second pixel
    (``first`` and ``obj`` are int32 for images under 2**31 pixels).
    """

    first: object
    obj: object
    shift: int


def _overlap_slices(shape, dy: int, dx: int):
    """Slices ``(a, b)`` such that ``img[b]`` is ``img[a]`` moved by ``(dy, dx)``, dy >= 0."""
    h, w = shape
    c0, c1 = max(0, -dx), w - max(0, dx)
    a = (slice(0, h - dy), slice(c0, c1))
    b = (slice(dy, h), slice(c0 + dx, c1 + dx))
    return a, b


def object_pairs(labels, dy: int, dx: int) -> PairGeometry:
    """Pairs ``(p, p + (dy, dx))`` whose two pixels carry the same nonzero label.

    These are the pairs mahotas can see in an object's ``intensity_image`` crop
    (pixels of other objects and background are 0 there and so ignored). The
    pairs are in raster order of their first pixel (one boolean compress of a
    flat-index view, no ``nonzero`` + index arithmetic).
    """
    xp = backend_of(labels).xp
    h, w = labels.shape
    if dy >= h or abs(dx) >= w:
        empty = xp.zeros(0, dtype=xp.int64)
        return PairGeometry(empty, empty, dy * w + dx)
    a, b = _overlap_slices(labels.shape, dy, dx)
    la, lb = labels[a], labels[b]
    same = la == lb
    same &= la > 0
    index_type = xp.int32 if h * w < 2**31 else xp.int64  # halves the memory of a site
    flat_index = xp.arange(h * w, dtype=index_type).reshape(h, w)
    first = flat_index[a][same]  # boolean compress: raster order, no index arithmetic
    obj = la[same].astype(index_type)
    obj -= 1
    return PairGeometry(first, obj, dy * w + dx)


def texture_geometry(labels, scales: Sequence[int] = (3, 5, 10)) -> dict:
    """All :class:`PairGeometry` of a label image, keyed by ``(scale, direction)``.

    Build it once per object set and pass it to :func:`measure_texture` for
    every channel to avoid recomputing the label comparisons.
    """
    return {
        (int(s), d): object_pairs(labels, int(s) * dy, int(s) * dx)
        for s in scales
        for d, (dy, dx) in enumerate(DIRECTIONS)
    }


def _entropy_rows(p, xp):
    """``-sum(p log2 p)`` along the last axis, 0 log 0 = 0 (mahotas ``_entropy``)."""
    safe = xp.where(p > 0, p, 1.0)
    return -(p * xp.log2(safe)).sum(axis=-1)


def _level_stats(q, labels, n_objects: int, xp):
    """Per-object smallest nonzero level, largest level and pixel count.

    One ``bincount`` over ``(label, level)`` codes; returns ``(low, high,
    has_pixels)`` where ``low`` is the smallest level > 0 (``high + 1`` when
    there is none) and ``high`` the largest level of the object's pixels.
    """
    n_levels = 256
    lab = labels.ravel().astype(xp.int64)
    hist = xp.bincount(lab * n_levels + q.ravel(), minlength=(n_objects + 1) * n_levels)
    hist = hist[: (n_objects + 1) * n_levels].reshape(n_objects + 1, n_levels)[1:] > 0
    has_pixels = hist.any(axis=1)
    high = (n_levels - 1) - xp.argmax(hist[:, ::-1], axis=1)
    nz = hist[:, 1:]
    low = xp.where(nz.any(axis=1), xp.argmax(nz, axis=1) + 1, high + 1)
    high = xp.where(has_pixels, high, 0)
    return low.astype(xp.int64), high.astype(xp.int64), has_pixels


class CodeLayout(NamedTuple):
    """Per-object blocks of pair codes of one channel (see :func:`_pair_codes`).

    Depends on the objects' largest levels only, so it is computed once per
    channel and shared by its (scale, direction) passes; ``width`` and
    ``total`` are host integers (read from the device once per channel).
    """

    width: int
    total: int
    base: object
    end: object


def code_layout(high, n_objects: int, xp) -> CodeLayout:
    """:class:`CodeLayout` of objects whose largest levels are ``high``."""
    n_rows = xp.maximum(high + 1, 0)
    width = int(high.max()) + 1 if n_objects else 1
    size = n_rows * width
    end = xp.cumsum(size)
    total = int(end[-1]) if n_objects else 0
    return CodeLayout(width, total, end - size, end)


def _largest_levels(q8, objects, xp):
    """Largest level of each object's pixels (0 for an object without pixels), int64.

    The ``high`` of :func:`_level_stats`, from the grouped pixels of
    :class:`~hpc_profiler.features._objects.ObjectPixels`.
    """
    from hpc_profiler.features._objects import segment_max

    values = xp.take(xp.ravel(q8), objects.flat)
    high = segment_max(values, objects.starts, objects.counts)
    return xp.where(objects.counts > 0, high, 0).astype(xp.int64)


def _pair_codes(qa, qb, obj, high, n_objects: int, xp, layout: CodeLayout | None = None):
    """Distinct canonical pairs ``(obj, lo, hi)`` of nonzero levels with their counts.

    ``qa``, ``qb`` are the small-integer levels of the two pixels of each pair
    and ``obj`` their object. Object ``o`` gets its own block of ``(high[o] +
    1) * R`` codes (``R`` = largest level + 1 on the site), ``code = base[o] +
    lo * R + hi`` with ``lo = min``, ``hi = max``: one gather per pair for the
    offset, a few in-place integer passes and one ``bincount`` when the code
    space fits in :data:`BINCOUNT_BUDGET` (else ``xp.unique``). Pairs with a
    zero level (mahotas ``ignore_zeros``) are counted in row ``lo = 0`` and
    dropped from the distinct entries afterwards, which is cheaper than
    compressing every pair array first.
    """
    lo = xp.minimum(qa, qb)
    hi = xp.maximum(qa, qb)
    if layout is None:
        layout = code_layout(high, n_objects, xp)
    width, total, base, end = layout
    if 0 < total <= BINCOUNT_BUDGET:
        local = xp.multiply(lo, width, dtype=xp.uint16)  # lo * R + hi < 65536
        local += hi
        codes = xp.take(base, obj)
        codes += local
        counts = xp.bincount(codes, minlength=total)
        codes = xp.nonzero(counts)[0]
        counts = counts[codes]
        o = xp.searchsorted(end, codes, side="right")
        local = codes - base[o]
        i, j = local // width, local % width
    else:
        keep = lo > 0
        codes = (obj[keep].astype(xp.int64) * 256 + lo[keep]) * 256 + hi[keep]
        codes, counts = xp.unique(codes, return_counts=True)
        o, i, j = codes // 65536, (codes // 256) % 256, codes % 256
    nz = i > 0  # mahotas ignore_zeros: a pair with a 0 level is not counted
    return o[nz], i[nz], j[nz], counts[nz]


def _scatter_sum(index, weights, length: int, xp):
    """``bincount(index, weights, minlength=length)`` for indices below ``length``, with no host read.

    CuPy's ``bincount`` reads ``max(index)`` on the host to size its output;
    a zeroed array of the known length and ``add.at`` (atomic adds on a GPU)
    do not. The same sums in the same order on NumPy, which keeps
    ``bincount`` (faster there).
    """
    if xp is np:
        return np.bincount(index, weights=weights, minlength=length)[:length]
    out = xp.zeros(length, dtype=xp.float64)
    xp.add.at(out, index, weights)
    return out


def _grouped_sums(ws, first, filled, xp):
    """Per-object sums of the value arrays ``ws``, whose entries are grouped by object.

    ``first``: each object's first entry (its insertion point when it has
    none), ``filled``: whether it has any. One ``add.reduceat`` along the rows
    of the stacked values, with a zero column appended so that the objects
    after the last entry start inside the array (their sum is that 0) and
    the last object's segment is not cut; empty objects before the last entry
    get the next object's first value from ``reduceat`` and are set to 0. On
    a backend without ``reduceat``, differences of a ``cumsum`` (exact for
    integer values). No atomics, no host read.
    """
    w = xp.stack([xp.asarray(v, dtype=xp.float64) for v in ws])
    w = xp.concatenate([w, xp.zeros((w.shape[0], 1))], axis=1)
    try:
        r = xp.add.reduceat(w, first, axis=1)
    except (AttributeError, NotImplementedError, TypeError):  # no ufunc.reduceat on this backend
        cs = xp.cumsum(w, axis=1)
        ends = xp.concatenate([first[1:], xp.full(1, w.shape[1] - 1, dtype=first.dtype)])
        start_sum = xp.where(first > 0, cs[:, xp.maximum(first - 1, 0)], 0.0)
        r = cs[:, xp.maximum(ends - 1, 0)] - start_sum
    r = xp.where(filled[None, :], r, 0.0)
    return [r[k] for k in range(len(ws))]


def haralick_from_pairs(obj, lo, hi, counts, n_objects: int, fm1, xp, n_levels: int | None = None,
                        max_pairs: int | None = None, grouped: bool = False):
    """The 13 Haralick features of per-object symmetric GLCMs given sparsely.

    Parameters
    ----------
    obj, lo, hi, counts : int arrays
        Distinct entries ``(object, i, j)`` with ``i <= j`` of the co-occurrence
        counts, one count per unordered pixel pair (the symmetric GLCM holds
        ``counts`` at ``(i, j)`` and at ``(j, i)``); entries with count 0 are
        allowed (they add nothing).
    n_objects : int
    fm1 : int array [n_objects]
        ``max level + 1`` of each object's crop (mahotas sizes its GLCM so; the
        length of the vector whose variance is ``DifferenceVariance``).
    n_levels : int, optional
        ``max(fm1)`` when already known on the host (saves a device read).
    max_pairs : int, optional
        A host bound on any object's pair count (e.g. the image's pixel
        count): below ``_EXACT_T / 2`` the moments' numerators are formed in
        int64, exactly; without it in float64.

    Returns
    -------
    features : float64 array [13, n_objects]
        In :data:`HARALICK_FEATURES` order (``mahotas.features.texture.
        haralick_features``); NaN for an object without pairs.
    n_pairs : float64 array [n_objects]
        Unordered pair count per object.
    """
    n = n_objects
    c = counts.astype(xp.float64)
    if grouped:
        ids = xp.arange(n, dtype=obj.dtype)
        first = xp.searchsorted(obj, ids, side="left")
        filled = xp.searchsorted(obj, ids, side="right") > first

        def per_obj(*ws):
            return _grouped_sums(ws, first, filled, xp)
    else:
        def per_obj(*ws):
            return [_scatter_sum(obj, w, n, xp) for w in ws]

    lof, hif = lo.astype(xp.float64), hi.astype(xp.float64)
    s = lof + hif
    # Variance, SumVariance and Correlation from integer moments: the float64
    # sums of integer weights are exact (sums < 2**53) and the numerators
    # are formed in int64, so no cancellation (mahotas' sum(k^2 p) - mu^2 loses
    # every digit of a covariance near 0; on a GPU the atomics' order then
    # decided the result) and the numba CPU path gives the same values
    # (a1: sum over the unordered pairs of lo + hi)
    n_pairs, a1, a2, s2, b2 = per_obj(c, c * s, c * (lof * lof + hif * hif), c * (lof * hif), c * (s * s))
    # mass of the entry in the symmetric GLCM (both halves); entries may have count 0
    m = c / xp.maximum(n_pairs, 1.0)[obj]
    d = hif - lof
    diag = lo == hi
    half = xp.where(diag, m, 0.5 * m)  # value of one cell of the symmetric GLCM

    if n_levels is None:
        n_levels = int(fm1.max()) if n else 1
    n_lv = max(int(n_levels), 1)
    k = xp.arange(n_lv, dtype=xp.float64)
    row = obj * n_lv
    px = _scatter_sum(row + lo, 0.5 * m, n * n_lv, xp) + _scatter_sum(row + hi, 0.5 * m, n * n_lv, xp)
    px = px.reshape(n, n_lv)
    pxy = _scatter_sum(2 * row + lo + hi, m, 2 * n * n_lv, xp).reshape(n, 2 * n_lv)
    pmy = _scatter_sum(row + (hi - lo), m, n * n_lv, xp).reshape(n, n_lv)

    T = 2.0 * n_pairs
    if max_pairs is not None and 2 * int(max_pairs) < _EXACT_T:
        ni, a1i = n_pairs.astype(xp.int64), a1.astype(xp.int64)
        sq = a1i * a1i
        var_num = (2 * ni * a2.astype(xp.int64) - sq).astype(xp.float64)
        cov_num = (4 * ni * s2.astype(xp.int64) - sq).astype(xp.float64)
        sv_num = (ni * b2.astype(xp.int64) - sq).astype(xp.float64)
    else:
        var_num, cov_num, sv_num = T * a2 - a1 * a1, 2.0 * T * s2 - a1 * a1, n_pairs * b2 - a1 * a1
    safe_n = xp.where(n_pairs > 0, n_pairs, 1.0)
    vx = var_num / (4.0 * safe_n * safe_n)
    with_var = var_num > 0
    correlation = xp.where(with_var, cov_num / xp.where(with_var, var_num, 1.0), 1.0)
    sum_avg = a1 / safe_n
    sum_var = sv_num / (safe_n * safe_n)
    contrast = pmy @ (k * k)
    fm1f = fm1.astype(xp.float64)
    inside = k[None, :] < fm1f[:, None]
    diff_var = (xp.where(inside, (pmy - 1.0 / fm1f[:, None]) ** 2, 0.0)).sum(axis=1) / fm1f
    hx = _entropy_rows(px, xp)
    # InfoMeas from the mutual information sum p log2(p / (px_i px_j)) (= 2 HX - HXY) with the
    # ratio's numerator - denominator formed from exact integer counts (see _haralick_counts)
    marg = _scatter_sum(row + lo, c, n * n_lv, xp) + _scatter_sum(row + hi, c, n * n_lv, xp)  # integer counts
    cell = xp.where(diag, 2.0 * c, c)
    den = marg[obj * n_lv + lo] * marg[obj * n_lv + hi]
    den = xp.where(c > 0, den, 1.0)  # entries with count 0 add 0: log1p(0)
    num = xp.where(c > 0, cell * (2.0 * n_pairs)[obj], 1.0)
    ratio = xp.log1p((num - den) / den) / math.log(2.0)
    asm, entropy, idm, mi = per_obj(
        m * half,
        -m * xp.log2(xp.where(half > 0, half, 1.0)),
        m / (d * d + 1.0),
        xp.where(c > 0, xp.where(diag, 1.0, 2.0) * cell / xp.maximum(2.0 * n_pairs, 1.0)[obj] * ratio, 0.0),
    )
    info1 = xp.where(hx > 0, -mi / xp.where(hx > 0, hx, 1.0), -mi)
    info2 = xp.sqrt(xp.maximum(0.0, -xp.expm1(-2.0 * mi)))
    feats = xp.stack(
        [
            asm,
            contrast,
            correlation,
            vx,
            idm,
            sum_avg,
            sum_var,
            _entropy_rows(pxy, xp),
            entropy,
            diff_var,
            _entropy_rows(pmy, xp),
            info1,
            info2,
        ]
    )
    feats = xp.where(n_pairs[None, :] > 0, feats, xp.nan)
    return feats, n_pairs


# --------------------------------------------------------------------------
# CPU path: one numba pass per object set (GLCMs and features object by object)
# --------------------------------------------------------------------------

#: Integer moments are exact in int64 while ``T**2 * 255**2 < 2**63`` (``T`` =
#: twice the pair count of one GLCM); larger GLCMs use float64 moments.
_EXACT_T = 11_000_000

_LOG2_TABLE = None
_LN2 = math.log(2.0)


def _log2_table():
    """``log2(v)`` for the integers ``v < 65536`` (entry 0 unused), built once."""
    global _LOG2_TABLE
    if _LOG2_TABLE is None:
        tab = np.zeros(1 << 16)
        tab[1:] = np.log2(np.arange(1, 1 << 16, dtype=np.float64))
        _LOG2_TABLE = tab
    return _LOG2_TABLE


def _neg_plog2p(v, total, log2_total, tab):
    """``-(v / total) * log2(v / total)`` for integer counts ``0 < v <= total``.

    ``log2(total) - log2(v)`` (table look-ups, no cancellation beyond a factor
    ``log2(total)`` since ``v <= total / 2`` there); the one count above half
    the total, where that difference cancels, takes ``log2(v / total)``.
    """
    if 2 * v <= total:
        lv = tab[v] if v < tab.shape[0] else math.log2(v)
        return (v / total) * (log2_total - lv)
    return -(v / total) * math.log2(v / total)


def _log2_int(v, tab):
    return tab[v] if v < tab.shape[0] else math.log2(v)


def _haralick_counts(N, fm1, cnt, touched, nt, a, hs, hd, seen, entries, tab, out):
    """The 13 features of one GLCM given by its counts; resets the scratch tables.

    ``cnt[u * 256 + v]`` counts the ordered pairs ``(u, v)`` (first pixel at
    level ``u``, second at ``v``), the cells counted listed in ``touched[:nt]``
    (each once); ``N`` pairs in all; ``fm1`` the GLCM size (largest level + 1).
    The symmetric GLCM holds ``cnt[u, v] + cnt[v, u]`` at ``(u, v)`` and
    ``(v, u)`` (``2 cnt[u, u]`` on the diagonal) out of ``T = 2 N``. ``a``,
    ``hs``, ``hd`` are zeroed scratch histograms (marginal, sum and difference
    of the levels) of 256, 512 and 256 entries and ``seen`` a 1024-entry list
    of their nonzero bins, so the work is per distinct cell, not per level;
    ``entries [32896, 3]`` holds the distinct ``(i, j, count)``, ``i <= j``.
    InfoMeas1/2 use the mutual information ``sum p log2(p / (px_i px_j))``
    (``= HXY1 - HXY``, here ``2 HX - HXY``) from integer ratios, which keeps
    the digits that the difference of the two entropies cancels. Integer
    moments make Variance, SumVariance, Correlation and
    DifferenceVariance exact up to one final rounding (mahotas' ``sum(k^2 p)
    - mu^2`` cancels when the variance is small).
    """
    T = 2 * N
    log2_T = _log2_int(T, tab)
    log2_N = _log2_int(N, tab)
    asm2 = 0  # 2 N**2 * ASM, an integer
    s2 = 0  # sum over the unordered pairs of lo * hi
    ent = 0.0
    ne = 0
    na = 0  # seen[:na]: levels of a; seen[256:256 + ns]: sums; seen[768:768 + nd]: differences
    ns = 0
    nd = 0
    for t in range(nt):
        cell = touched[t]
        i = cell >> 8
        j = cell & 255
        if i == j:  # one cell 2c of the symmetric GLCM
            c = cnt[cell]
            cnt[cell] = 0
            asm2 += 2 * c * c
            ent += _neg_plog2p(2 * c, T, log2_T, tab)
        else:  # two cells c: the first of (i, j), (j, i) met takes both
            mirror = j * 256 + i
            c = cnt[cell] + cnt[mirror]
            if c == 0:
                continue
            cnt[cell] = 0
            cnt[mirror] = 0
            asm2 += c * c
            ent += 2.0 * _neg_plog2p(c, T, log2_T, tab)
            if i > j:
                i, j = j, i
        entries[ne, 0] = i
        entries[ne, 1] = j
        entries[ne, 2] = c
        ne += 1
        if a[i] == 0:
            seen[na] = i
            na += 1
        a[i] += c
        if a[j] == 0:
            seen[na] = j
            na += 1
        a[j] += c
        if hs[i + j] == 0:
            seen[256 + ns] = i + j
            ns += 1
        hs[i + j] += c
        if hd[j - i] == 0:
            seen[768 + nd] = j - i
            nd += 1
        hd[j - i] += c
        s2 += c * i * j
    mi = 0.0  # mutual information of the symmetric GLCM, bits
    for e in range(ne):
        i = entries[e, 0]
        j = entries[e, 1]
        c = entries[e, 2]
        v = 2 * c if i == j else c  # value of one cell; two cells off the diagonal
        den = a[i] * a[j]
        diff = v * T - den
        if 2 * abs(diff) < den:  # log2(v T / (a_i a_j)) near 0: from the exact integer difference
            lr = math.log1p(diff / den) / _LN2
        else:  # |log2| > 0.58: table look-ups lose at most a few ulps of log2(T)
            lr = _log2_int(v, tab) + log2_T - _log2_int(a[i], tab) - _log2_int(a[j], tab)
        term = (v / T) * lr
        mi += term if i == j else 2.0 * term
    a1 = 0
    a2 = 0
    hx = 0.0
    for t in range(na):
        i = seen[t]
        v = a[i]
        a[i] = 0
        a1 += v * i
        a2 += v * i * i
        hx += _neg_plog2p(v, T, log2_T, tab)
    b2 = 0
    sum_ent = 0.0
    for t in range(ns):
        k = seen[256 + t]
        v = hs[k]
        hs[k] = 0
        b2 += v * k * k
        sum_ent += _neg_plog2p(v, N, log2_N, tab)
    contrast = 0
    hd2 = 0
    idm = 0.0
    diff_ent = 0.0
    for t in range(nd):
        k = seen[768 + t]
        v = hd[k]
        hd[k] = 0
        hd2 += v * v
        contrast += v * k * k
        idm += v / (k * k + 1.0)
        diff_ent += _neg_plog2p(v, N, log2_N, tab)
    if T < _EXACT_T:  # exact integer numerators: no cancellation
        var_num = T * a2 - a1 * a1
        cov_num = 2 * T * s2 - a1 * a1
        sv_num = N * b2 - a1 * a1
        dv_num = fm1 * hd2 - N * N
    else:
        var_num = float(T) * a2 - float(a1) * a1
        cov_num = 2.0 * T * s2 - float(a1) * a1
        sv_num = float(N) * b2 - float(a1) * a1
        dv_num = float(fm1) * hd2 - float(N) * N
    out[0] = asm2 / (2.0 * N * N)
    out[1] = contrast / N
    out[2] = cov_num / var_num if var_num > 0 else 1.0
    out[3] = var_num / (float(T) * T)
    out[4] = idm / N
    out[5] = a1 / N
    out[6] = sv_num / (float(N) * N)
    out[7] = sum_ent
    out[8] = ent
    # variance of P(|i-j| = k), k < fm1: (sum p_k^2 - 1 / fm1) / fm1
    out[9] = dv_num / (float(N) * N * fm1 * fm1)
    out[10] = diff_ent
    out[11] = -mi / hx if hx > 0 else -mi  # (HXY - HXY1) / HX
    out[12] = math.sqrt(max(0.0, -math.expm1(-2.0 * mi)))  # sqrt(1 - exp(-2 (HXY2 - HXY)))


def _offset_reach(offsets):
    """The largest row offset and the largest absolute column offset of ``offsets [G, 2]``:
    how far below and to each side a partner can lie (numba)."""
    mdy = 0
    mdx = 0
    for g in range(offsets.shape[0]):
        mdy = max(mdy, offsets[g, 0])
        mdx = max(mdx, abs(offsets[g, 1]))
    return mdy, mdx


def _haralick_scratch():
    """The scratch arrays :func:`_haralick_counts` takes: ``a``, ``hs``, ``hd``, ``seen``,
    ``entries``, ``out`` (numba)."""
    return (np.zeros(256, np.int64), np.zeros(512, np.int64), np.zeros(256, np.int64),
            np.empty(1024, np.int64), np.empty((32896, 3), np.int64), np.empty(13))


def _objects_kernel(H, W, flat, ys, xs, starts, counts, planes, offsets, tab, feats, npairs):
    """Per-object Haralick features of every channel and offset (CellProfiler ``run_one``).

    ``planes [C, H * W]`` uint8 levels; ``flat``/``ys``/``xs`` the objects'
    pixels grouped by object (``starts``, ``counts``), in raster order inside
    an object (:func:`~hpc_profiler.features._objects.object_pixels`). Writes
    ``feats[g, c, :, o]`` (NaN when there is no pair) and ``npairs[g, c, o]``.

    Each object's levels are copied into a zeroed crop of its bounding box
    (as mahotas sees the object's ``intensity_image``), padded by the largest
    offset to the right, left and below so that every partner lies in the
    crop. Channel by channel, the object's pixel list is walked once in raster
    order and each pixel with a nonzero level is paired with its partner at
    every offset: one 256 x 256 scratch table and touched-cell list per
    offset, so each GLCM still sees its pairs in raster order and lists its
    cells in the order they are first touched (the order in which
    :func:`_haralick_counts` sums them). A pair whose partner has level 0
    (which includes a partner outside the object; mahotas ``ignore_zeros``)
    goes to the table's cell 0, preset to 1 so that it is never listed; the
    pair count is then the number of pairs visited minus that cell's count.
    Only the object's pixels are visited (not the rest of its bounding box),
    and a pixel at level 0 is skipped for all the offsets at once.
    """
    n = starts.shape[0]
    G = offsets.shape[0]
    C = planes.shape[0]
    mdy, mdx = _offset_reach(offsets)
    cnt = np.zeros((G, 65536), np.int32)
    touched = np.empty((G, 65536), np.int32)
    nt = np.zeros(G, np.int64)
    shifts = np.zeros(G, np.int64)
    a, hs, hd, seen, entries, out = _haralick_scratch()
    mmax = 1
    for o in range(n):
        mmax = max(mmax, counts[o])
    local = np.empty(mmax, np.int64)
    crop = np.zeros(1, np.uint8)
    for o in range(n):
        s0 = starts[o]
        m = counts[o]
        y0, y1, x0, x1 = H, -1, W, -1
        for t in range(s0, s0 + m):
            y0 = min(y0, ys[t])
            y1 = max(y1, ys[t])
            x0 = min(x0, xs[t])
            x1 = max(x1, xs[t])
        bw = x1 - x0 + 1 + 2 * mdx
        size = (y1 - y0 + 1 + mdy) * bw if m else 0
        if crop.shape[0] < size:
            crop = np.zeros(size, np.uint8)
        for t in range(m):
            local[t] = (ys[s0 + t] - y0) * bw + xs[s0 + t] - x0 + mdx
        for g in range(G):
            shifts[g] = offsets[g, 0] * bw + offsets[g, 1]
        for c in range(C):
            high = 0
            for t in range(m):
                v = planes[c, flat[s0 + t]]
                crop[local[t]] = v
                high = max(high, np.int64(v))
            for g in range(G):
                cnt[g, 0] = 1  # the cell of the pairs with a level 0: never listed
                nt[g] = 0
            visited = 0
            for t in range(m):
                i = local[t]
                u = np.int32(crop[i])
                if u == 0:
                    continue
                visited += 1
                row = u * 256
                for g in range(G):
                    v = np.int32(crop[i + shifts[g]])
                    cell = (row + v) * (v != 0)
                    if cnt[g, cell] == 0:
                        touched[g, nt[g]] = cell
                        nt[g] += 1
                    cnt[g, cell] += 1
            for t in range(m):
                crop[local[t]] = 0
            for g in range(G):
                N = visited - (cnt[g, 0] - 1)
                cnt[g, 0] = 0
                npairs[g, c, o] = N
                if N == 0:
                    for f in range(13):
                        feats[g, c, f, o] = np.nan
                    continue
                _haralick_counts(N, high + 1, cnt[g], touched[g], nt[g], a, hs, hd, seen, entries, tab, out)
                for f in range(13):
                    feats[g, c, f, o] = out[f]


def _image_kernel(H, W, planes, offsets, tab, feats, npairs):
    """Whole-image Haralick features of every channel and offset (CellProfiler ``run_image``).

    All pixel pairs are counted, zeros kept. Channel by channel, each pixel is
    read once and paired with its partner at every offset, one scratch table
    per offset (the partners of pixels at least the largest offset away from
    the right, left and bottom edges need no bounds test; the others are
    tested one by one). Each table is then scanned over the GLCM's ``(high +
    1)**2`` cells in order for the counted ones. Writes ``feats[g, c, :, 0]``
    and ``npairs[g, c, 0]``.
    """
    G = offsets.shape[0]
    C = planes.shape[0]
    mdy, mdx = _offset_reach(offsets)
    cnt = np.zeros((G, 65536), np.int32)
    shifts = np.zeros(G, np.int64)
    for g in range(G):
        shifts[g] = offsets[g, 0] * W + offsets[g, 1]
    touched = np.empty(65536, np.int32)
    a, hs, hd, seen, entries, out = _haralick_scratch()
    for c in range(C):
        plane = planes[c]
        high = 0
        for t in range(H * W):
            high = max(high, np.int64(plane[t]))
        for y in range(H):
            inner = y < H - mdy
            for x in range(W):
                p = y * W + x
                row = np.int32(plane[p]) * 256
                if inner and mdx <= x < W - mdx:
                    for g in range(G):
                        cnt[g, row + plane[p + shifts[g]]] += 1
                else:
                    for g in range(G):
                        yy = y + offsets[g, 0]
                        xx = x + offsets[g, 1]
                        if yy < H and 0 <= xx < W:
                            cnt[g, row + plane[p + shifts[g]]] += 1
        fm1 = high + 1
        for g in range(G):
            dy = offsets[g, 0]
            dx = offsets[g, 1]
            N = (H - dy) * (W - abs(dx)) if dy < H and abs(dx) < W else 0
            npairs[g, c, 0] = N
            nt = 0
            for u in range(fm1):
                for v in range(fm1):
                    cell = u * 256 + v
                    if cnt[g, cell]:
                        touched[nt] = cell
                        nt += 1
            if N == 0:
                for f in range(13):
                    feats[g, c, f, 0] = np.nan
                continue
            _haralick_counts(N, fm1, cnt[g], touched, nt, a, hs, hd, seen, entries, tab, out)
            for f in range(13):
                feats[g, c, f, 0] = out[f]


_neg_plog2p = njit_cached(_neg_plog2p)
_log2_int = njit_cached(_log2_int)
_haralick_counts = njit_cached(_haralick_counts)
_offset_reach = njit_cached(_offset_reach)
_haralick_scratch = njit_cached(_haralick_scratch)
_objects_kernel = njit_cached(_objects_kernel)
_image_kernel = njit_cached(_image_kernel)


def _planes(levels: "TextureLevels", chans) -> np.ndarray:
    """The uint8 levels of ``chans`` as one C-contiguous ``[C, H * W]`` array (the kernels' input)."""
    return np.stack([np.asarray(levels.q8[c], dtype=np.uint8).reshape(-1) for c in chans])


def _offsets(scales) -> np.ndarray:
    """``[scales * directions, 2]`` int64 offsets ``(dy, dx)``, scale-major."""
    return np.asarray([(int(s) * dy, int(s) * dx) for s in scales for dy, dx in DIRECTIONS], np.int64).reshape(-1, 2)


class TextureLevels(NamedTuple):
    """Quantized levels of a site's channels, shared by its object sets.

    ``q8`` maps channel -> uint8 level image (:func:`quantize`); ``packed``
    lists ``(channels, words)``: the levels of up to 8 channels interleaved
    byte-wise in one uint64 word per pixel, so one gather per pixel pair
    reads every channel's levels in the per-offset GPU pass (empty on the
    CPU, whose kernels read ``q8``; that pass packs them itself then).
    """

    gray_levels: int
    q8: dict
    packed: list


def texture_levels(images, gray_levels: int = 256) -> TextureLevels:
    """:class:`TextureLevels` of ``images`` (mapping channel -> float image in [0, 1])."""
    chans = list(images)
    bk = backend_of(*[images[c] for c in chans])
    xp = bk.xp
    q8 = {c: quantize(xp.asarray(images[c]), gray_levels).astype(xp.uint8) for c in chans}
    return TextureLevels(int(gray_levels), q8, _packed_levels(q8, chans, xp) if bk.is_gpu else [])


def _packed_levels(q8, chans, xp) -> list:
    """:attr:`TextureLevels.packed` of the uint8 levels ``q8`` (read by the per-offset GPU pass only)."""
    packed = []
    for g in range(0, len(chans), 8):
        group = chans[g:g + 8]
        if len(group) == 1:
            packed.append((tuple(group), q8[group[0]].ravel()))
            continue
        size = q8[group[0]].size
        words = xp.zeros((size, 8), dtype=xp.uint8)
        for k, c in enumerate(group):
            words[:, k] = q8[c].ravel()
        packed.append((tuple(group), words.view(xp.uint64).reshape(size)))
    return packed


def _gather_levels(words, group, first, shift: int, xp):
    """Levels ``(qa, qb)`` per channel of ``group`` at the pairs ``(first, first + shift)``."""
    a = xp.take(words, first)
    b = xp.take(words[shift:], first) if shift >= 0 else xp.take(words, first + shift)
    if len(group) == 1:
        return [(a, b)]
    a8 = a.view(xp.uint8).reshape(-1, 8)
    b8 = b.view(xp.uint8).reshape(-1, 8)
    return [(a8[:, k], b8[:, k]) for k in range(len(group))]


def measure_texture_channels(
    labels,
    n_objects: int,
    images,
    *,
    scales: Sequence[int] = (3, 5, 10),
    gray_levels: int = 256,
    geometry: dict | None = None,
    levels: TextureLevels | None = None,
    objects=None,
    undefined=None,
    device_path: str = "rows",
) -> dict:
    """:func:`measure_texture` for every channel of ``images`` (mapping channel -> image).

    The same numbers; ``levels`` (:func:`texture_levels` of the same images)
    shares the quantization between the object sets of a site and
    ``objects`` (``_objects.object_pixels(labels, n_objects)``) the grouping
    of the pixels. ``undefined``: the value written for an undefined object
    instead of NaN (CellProfiler writes 0), replaced in one pass over all the
    columns. On the CPU one numba pass (:func:`_objects_kernel`). On a GPU
    ``device_path`` (one of :data:`DEVICE_PATHS`) selects the array code:
    ``"rows"`` (default, :func:`_measure_texture_rows`: one batched sort of
    32-bit keys per (channel, offset) row, the distinct entries compacted
    once), ``"batched"`` (:func:`_measure_texture_device`: one sort of 64-bit
    keys of all the pairs, the features over one slot per pair) or
    ``"offsets"`` (one pass per offset and channel over the pairs of
    :func:`texture_geometry`, which ``geometry`` also selects); the three give
    the same numbers (tests), ``scripts/bench_texture_gpu_paths.py`` times them.
    """
    chans = list(images)
    bk = backend_of(labels, *[images[c] for c in chans])
    xp = bk.xp
    labels = xp.asarray(labels)
    for c in chans:
        if labels.shape != images[c].shape:
            raise ValueError(f"texture {c}: labels {labels.shape} and image {images[c].shape} differ in shape")
    n_objects = int(n_objects)
    # (a host read: skipped on a GPU when measure_site passes the grouped pixels of checked labels)
    if n_objects and (objects is None or not bk.is_gpu) and int(labels.max()) > n_objects:
        raise ValueError(f"texture {','.join(chans)}: label {int(labels.max())} exceeds n_objects={n_objects}")
    out = {}
    if n_objects == 0:
        for c in chans:
            for s in scales:
                for d in range(len(DIRECTIONS)):
                    for f in HARALICK_FEATURES:
                        out[texture_feature_name(f, c, s, d, gray_levels)] = xp.zeros(0)
        return out
    if levels is None or int(levels.gray_levels) != int(gray_levels) or set(chans) - set(levels.q8):
        levels = texture_levels({c: images[c] for c in chans}, gray_levels)
    if device_path not in DEVICE_PATHS:
        raise ValueError(f"texture: device_path must be one of {DEVICE_PATHS}, got {device_path!r}")
    if not bk.is_gpu:
        return _measure_texture_numba(labels, n_objects, chans, levels, scales, gray_levels, objects, out,
                                      undefined)
    if geometry is None and device_path == "rows":
        return _measure_texture_rows(labels, n_objects, chans, levels, scales, gray_levels, objects, out,
                                     undefined)
    if geometry is None and device_path == "batched":
        return _measure_texture_device(labels, n_objects, chans, levels, scales, gray_levels, objects, out,
                                       undefined)
    if geometry is None:
        geometry = texture_geometry(labels, scales)
    high, fm1, layout = {}, {}, {}
    for c in chans:
        if objects is not None:
            high[c] = _largest_levels(levels.q8[c], objects, xp)
        else:
            _, high[c], _ = _level_stats(levels.q8[c], labels, n_objects, xp)
        fm1[c] = high[c] + 1
        layout[c] = code_layout(high[c], n_objects, xp)  # shared by the scales and directions
    offsets = [(int(s), d) for s in scales for d in range(len(DIRECTIONS))]
    for group, words in levels.packed or _packed_levels(levels.q8, list(levels.q8), xp):
        wanted = [(k, c) for k, c in enumerate(group) if c in images]
        if not wanted:
            continue
        # the sparse GLCM entries of every (scale, direction) of a channel, object
        # rows offset by g * N for offset g: one Haralick evaluation per channel
        entries = {c: [] for _, c in wanted}
        for g, (s, d) in enumerate(offsets):
            pairs = geometry[(s, d)]
            pair_levels = _gather_levels(words, group, pairs.first, pairs.shift, xp)
            for k, c in wanted:
                qa, qb = pair_levels[k]
                o, i, j, cnt = _pair_codes(qa, qb, pairs.obj, high[c], n_objects, xp, layout[c])
                entries[c].append((o + g * n_objects, i, j, cnt))
        n_all = len(offsets) * n_objects
        for _, c in wanted:
            o, i, j, cnt = (xp.concatenate([e[t] for e in entries[c]]) for t in range(4))
            # max(fm1) = max(high) + 1 = the layout's width
            feats, n_pairs = haralick_from_pairs(o, i, j, cnt, n_all, xp.tile(fm1[c], len(offsets)), xp,
                                                 n_levels=layout[c].width, max_pairs=labels.size)
            for si, s in enumerate(scales):
                rows = [slice((si * len(DIRECTIONS) + d) * n_objects, (si * len(DIRECTIONS) + d + 1) * n_objects)
                        for d in range(len(DIRECTIONS))]
                _store_scale(out, [(feats[:, r], n_pairs[r]) for r in rows], c, s, gray_levels, xp)
    if undefined is not None:
        out = {k: xp.where(xp.isnan(v), undefined, v) for k, v in out.items()}
    return out


def _measure_texture_numba(labels, n_objects: int, chans, levels: TextureLevels, scales, gray_levels: int, objects,
                           out: dict, undefined=None) -> dict:
    """CPU path of :func:`measure_texture_channels`: one :func:`_objects_kernel` pass.

    Object by object and channel by channel, the GLCMs of all the offsets are
    counted in one walk over the object's pixels (raster order, as
    ``object_pixels`` groups them), each into its own 256 x 256 scratch table
    whose touched cells give the features (no per-pair arrays for the site).
    """
    from hpc_profiler.features._objects import object_pixels

    if objects is None:
        objects = object_pixels(labels, n_objects)
    offs = _offsets(scales)
    n = len(objects.starts)
    feats = np.empty((len(offs), len(chans), 13, n))
    npairs = np.zeros((len(offs), len(chans), n), np.int64)
    h, w = labels.shape
    args = [np.ascontiguousarray(v, dtype=np.int64) for v in (objects.flat, objects.y, objects.x, objects.starts,
                                                              objects.counts)]
    _objects_kernel(h, w, *args, _planes(levels, chans), offs, _log2_table(), feats, npairs)
    nd = len(DIRECTIONS)
    return _columns(feats.reshape(len(scales), nd, len(chans), 13, -1).transpose(3, 2, 0, 1, 4),
                    npairs.reshape(len(scales), nd, len(chans), -1).transpose(2, 0, 1, 3),
                    chans, scales, gray_levels, undefined, out, np)


def _columns(feats, n_pairs, chans, scales, gray_levels: int, undefined, out: dict, xp) -> dict:
    """Columns from ``feats [13, C, scales, directions, N]`` and ``n_pairs [C, scales, directions, N]``.

    mahotas raises if ANY direction of a scale has no pair: the object's 52
    features at that scale are then undefined (NaN, or ``undefined``); one
    array pass for all the columns, which are views of it.
    """
    defined = n_pairs.min(axis=2) > 0
    feats = xp.where(defined[None, :, :, None, :], feats, xp.nan if undefined is None else undefined)
    if undefined is not None:
        feats = xp.where(xp.isnan(feats), undefined, feats)
    for ci, c in enumerate(chans):
        for si, s in enumerate(scales):
            for d in range(len(DIRECTIONS)):
                for k, f in enumerate(HARALICK_FEATURES):
                    out[texture_feature_name(f, c, s, d, gray_levels)] = feats[k, ci, si, d]
    return out


def _device_setup(labels, n_objects: int, objects, scales):
    """What both device paths start from: ``xp``, the object count, the object pixels
    (:func:`~hpc_profiler.features._objects.object_pixels` unless given) and the
    (dy, dx) offsets, scale by scale in the :data:`DIRECTIONS` order."""
    from hpc_profiler.features._objects import object_pixels

    xp = backend_of(labels).xp
    n = int(n_objects)
    if objects is None:
        objects = object_pixels(labels, n)
    offsets = [(int(s) * dy, int(s) * dx) for s in scales for dy, dx in DIRECTIONS]
    return xp, n, objects, offsets


def _object_pairs(labels, objects, obj, chans, levels: TextureLevels, offsets, itype, xp):
    """The pixel pairs of every object at every offset, for the device paths.

    ``objects``: :class:`~hpc_profiler.features._objects.ObjectPixels` (``M``
    pixels), ``obj`` their object indices (0-based) in the key dtype, ``offsets``
    the ``G`` (dy, dx) pairs, ``itype`` the dtype of the pixel arithmetic (None:
    the coordinates' own). Returns ``lo``, ``hi`` (uint8 ``[C, G, M]``: the
    smaller and larger level of each pair) and ``keep`` (bool ``[C, G, M]``: the
    partner is inside the image and the same object, and both levels are
    nonzero, as mahotas' ``ignore_zeros``).
    """
    h, w = labels.shape
    step = xp.asarray([[dy, dx] for dy, dx in offsets], dtype=xp.int64 if itype is None else itype)
    oy, ox = (objects.y, objects.x) if itype is None else (objects.y.astype(itype), objects.x.astype(itype))
    ys, xs = oy[None, :] + step[:, 0:1], ox[None, :] + step[:, 1:2]  # [G, M]
    inside = (ys < h) & (xs >= 0) & (xs < w)
    partner = xp.where(inside, ys * w + xs, 0)
    same = inside & (xp.take(xp.ravel(labels), partner) == (obj + 1)[None, :])
    q = xp.stack([xp.ravel(levels.q8[c]) for c in chans])  # [C, H * W] uint8
    qa = xp.take(q, objects.flat, axis=1)[:, None, :]  # [C, 1, M]
    qb = xp.take(q, partner, axis=1)  # [C, G, M]
    lo = xp.minimum(qa, qb)
    hi = xp.maximum(qa, qb)
    keep = same[None, :, :] & (lo > 0)  # mahotas ignore_zeros: lo > 0 iff both levels are
    return lo, hi, keep


def _measure_texture_rows(labels, n_objects: int, chans, levels: TextureLevels, scales, gray_levels: int, objects,
                          out: dict, undefined=None) -> dict:
    """GPU path of :func:`measure_texture_channels` (the default): one row per channel and offset.

    Each labelled pixel is paired with its partner at every offset (a
    ``[offsets, pixels]`` index); a pair is kept when both pixels carry the
    object's label and nonzero levels. Its key ``(object, lo, hi)`` packs into
    an int32 (``object << 16 | lo << 8 | hi``, while ``N < 32768``; int64
    beyond) and each ``(channel, offset)`` row of ``[C * G, pixels]`` keys is
    sorted on its own (a batched sort of 32-bit keys: half the bytes and
    radix passes of one global 64-bit sort, no row index in the key). The
    starts of the runs of valid keys are compacted once per object set (one
    data-sized ``flatnonzero``, no loop), a ``cumsum`` of the valid flags
    gives each run's count, and :func:`haralick_from_pairs` sees only the
    distinct GLCM entries (about 1 / 40 of the pairs on the bench site)
    instead of one slot per pair, so its per-object bincounts add ~40x fewer
    values (sorted by object, i.e. onto the same address in a row: atomics
    that serialise). A fixed number of launches per object set, no host read.
    """
    xp, n, objects, offsets = _device_setup(labels, n_objects, objects, scales)
    h, w = labels.shape
    nd = len(DIRECTIONS)
    n_off, n_ch = len(offsets), len(chans)
    narrow = n < 32768 and h * w < 2**31
    itype = xp.int32 if narrow else xp.int64
    sentinel = 2**31 - 1 if narrow else 2**63 - 1
    obj = objects.obj.astype(itype)
    lo, hi, keep = _object_pairs(labels, objects, obj, chans, levels, offsets, itype, xp)
    key = (obj << 16)[None, None, :] | (lo.astype(itype) << 8) | hi.astype(itype)
    key = xp.where(keep, key, sentinel).astype(itype, copy=False)
    m = key.shape[-1]
    key = xp.sort(key.reshape(n_ch * n_off, m), axis=1)  # rows (channel, offset); sentinels last
    valid = key != sentinel
    start = valid.copy()
    start[:, 1:] &= key[:, 1:] != key[:, :-1]
    at = xp.flatnonzero(start)  # the one data-sized step: the distinct entries, rows in order
    seen = xp.cumsum(valid.ravel(), dtype=xp.int32 if valid.size < 2**31 else xp.int64)  # valid keys so far
    before = xp.where(at > 0, seen[at - 1], 0)  # ... before each run
    counts = xp.diff(xp.concatenate([before, seen[-1:]]))  # runs end at the next start (sentinels count 0)
    k = xp.take(key.ravel(), at).astype(xp.int64)
    glcm = (at // m) * n + (k >> 16)  # (channel, offset, object), ascending
    high = xp.stack([_largest_levels(levels.q8[c], objects, xp) for c in chans])  # [C, N]
    fm1 = xp.broadcast_to((high + 1)[:, None, :], (n_ch, n_off, n)).reshape(-1)
    feats, n_pairs = haralick_from_pairs(glcm, (k >> 8) & 255, k & 255, counts, n_ch * n_off * n, fm1, xp,
                                         n_levels=256, max_pairs=h * w, grouped=True)
    return _columns(feats.reshape(13, n_ch, len(scales), nd, n), n_pairs.reshape(n_ch, len(scales), nd, n),
                    chans, scales, gray_levels, undefined, out, xp)


def _measure_texture_device(labels, n_objects: int, chans, levels: TextureLevels, scales, gray_levels: int, objects,
                            out: dict, undefined=None) -> dict:
    """GPU path of :func:`measure_texture_channels`: every channel, offset and object in one pass.

    Each labelled pixel is paired with its partner at every offset (an
    ``[offsets, pixels]`` index, no compress); a pair is kept when both pixels
    have the object's label and nonzero levels. Its key ``((channel, offset,
    object), lo, hi)`` is sorted once; run starts, a ``cumsum`` and one
    ``bincount`` of length = the number of pairs give each distinct GLCM entry
    and its count (unused run slots keep count 0), which
    :func:`haralick_from_pairs` turns into the features. A fixed number of
    launches per object set, no host read.
    """
    xp, n, objects, offsets = _device_setup(labels, n_objects, objects, scales)
    h, w = labels.shape
    nd = len(DIRECTIONS)
    n_off, n_ch = len(offsets), len(chans)
    lo, hi, keep = _object_pairs(labels, objects, objects.obj, chans, levels, offsets, None, xp)
    combo = xp.arange(n_ch * n_off, dtype=xp.int64).reshape(n_ch, n_off, 1) * n + objects.obj[None, None, :]
    key = combo * 65536 + lo.astype(xp.int64) * 256 + hi
    sentinel = n_ch * n_off * n * 65536
    key = xp.sort(xp.where(keep, key, sentinel).ravel())
    n_keys = int(key.shape[0])
    start = xp.concatenate([xp.ones(1, dtype=bool), key[1:] != key[:-1]])
    run = xp.cumsum(start) - 1
    counts = xp.bincount(run, weights=(key != sentinel).astype(xp.float64), minlength=n_keys)[:n_keys]
    run_key = xp.zeros(n_keys, dtype=xp.int64)
    run_key[run] = key  # every pair of a run writes the same key
    run_key = xp.where(counts > 0, run_key, 0)
    high = xp.stack([_largest_levels(levels.q8[c], objects, xp) for c in chans])  # [C, N]
    fm1 = xp.broadcast_to((high + 1)[:, None, :], (n_ch, n_off, n)).reshape(-1)
    feats, n_pairs = haralick_from_pairs(run_key // 65536, (run_key // 256) % 256, run_key % 256, counts,
                                         n_ch * n_off * n, fm1, xp, n_levels=256, max_pairs=h * w)
    return _columns(feats.reshape(13, n_ch, len(scales), nd, n), n_pairs.reshape(n_ch, len(scales), nd, n),
                    chans, scales, gray_levels, undefined, out, xp)


def _image_texture_device(images, chans, levels: TextureLevels, scales, gray_levels: int) -> dict:
    """GPU path of :func:`image_texture_channels`: one ``bincount`` of known length for every GLCM.

    The canonical codes ``((channel, offset), lo, hi)`` of all pixel pairs of
    the image (zeros kept, as ``run_image``) are counted into a dense
    ``[channels * offsets, 256 * 256]`` table whose cells, count 0 included,
    are the entries of :func:`haralick_from_pairs`.
    """
    xp = backend_of(*[images[c] for c in chans]).xp
    q = xp.stack([levels.q8[c] for c in chans])  # [C, H, W] uint8
    n_ch, (h, w) = len(chans), q.shape[1:]
    offsets = [(int(s) * dy, int(s) * dx) for s in scales for dy, dx in DIRECTIONS]
    n_off = len(offsets)
    rows = xp.arange(n_ch, dtype=xp.int64)[:, None, None] * n_off
    codes = []
    for g, (dy, dx) in enumerate(offsets):  # 12 offsets, not objects
        if dy >= h or abs(dx) >= w:
            continue  # no pair: NaN, as haralick_from_pairs gives for an empty GLCM
        a, b = _overlap_slices((h, w), dy, dx)
        qa, qb = q[(slice(None),) + a], q[(slice(None),) + b]
        code = (rows + g) * 65536 + xp.minimum(qa, qb).astype(xp.int64) * 256
        code += xp.maximum(qa, qb)
        codes.append(code.ravel())
    n_all = n_ch * n_off
    if codes:
        counts = xp.bincount(xp.concatenate(codes), minlength=n_all * 65536)[: n_all * 65536]
    else:
        counts = xp.zeros(n_all * 65536, dtype=xp.int64)
    cell = xp.arange(n_all * 65536, dtype=xp.int64)
    high = q.reshape(n_ch, -1).max(axis=1).astype(xp.int64)
    fm1 = xp.broadcast_to((high + 1)[:, None], (n_ch, n_off)).reshape(-1)
    i, j = (cell // 256) % 256, cell % 256  # cells below the diagonal have count 0
    feats, _ = haralick_from_pairs(cell // 65536, xp.minimum(i, j), xp.maximum(i, j), counts, n_all, fm1, xp,
                                   n_levels=256, max_pairs=h * w, grouped=True)  # cells ascend by GLCM
    feats = feats.reshape(13, n_ch, n_off)
    return {texture_feature_name(f, c, int(s), d, gray_levels): feats[k, ci, si * len(DIRECTIONS) + d]
            for ci, c in enumerate(chans) for si, s in enumerate(scales) for d in range(len(DIRECTIONS))
            for k, f in enumerate(HARALICK_FEATURES)}


def _store_scale(out: dict, per_dir, channel: str, scale: int, gray_levels: int, xp) -> None:
    """Columns of one channel and scale from the per-direction ``(features, pair counts)``."""
    # mahotas raises if ANY direction is empty -> the whole object is NaN.
    defined = xp.stack([n for _, n in per_dir]).min(axis=0) > 0
    for d, (feats, _) in enumerate(per_dir):
        feats = xp.where(defined[None, :], feats, xp.nan)
        for k, f in enumerate(HARALICK_FEATURES):  # rows by index: no loop over a device array
            out[texture_feature_name(f, channel, scale, d, gray_levels)] = feats[k]


def measure_texture(
    labels,
    n_objects: int,
    image,
    channel: str,
    *,
    scales: Sequence[int] = (3, 5, 10),
    gray_levels: int = 256,
    geometry: dict | None = None,
) -> dict:
    """Per-object Haralick features (CellProfiler ``MeasureTexture.run_one``).

    Parameters
    ----------
    labels : int32 array [H, W]
        Object labels ``1..n_objects`` (0 background).
    n_objects : int
        Number of objects N; row ``i`` is label ``i + 1``.
    image : float array [H, W]
        Illumination-corrected intensities in ``[0, 1]``.
    channel : str
        Channel name used in the column names.
    scales : sequence of int
        Pixel distances (CPJUMP1: 3, 5, 10).
    gray_levels : int
        Quantization levels (CPJUMP1: 256).
    geometry : dict, optional
        :func:`texture_geometry` of ``labels`` for these scales, to share the
        pair geometry between channels.

    Returns
    -------
    dict
        ``Texture_{Feature}_{channel}_{scale}_{dd}_{gray_levels}`` -> float64
        array [N]. All features of an object at a scale are NaN when any
        direction has no valid pair (see the module docstring).
    """
    return measure_texture_channels(labels, n_objects, {channel: image}, scales=scales,
                                    gray_levels=gray_levels, geometry=geometry)


def measure_image_texture(
    image,
    channel: str,
    *,
    scales: Sequence[int] = (3, 5, 10),
    gray_levels: int = 256,
) -> dict:
    """Whole-image Haralick features as Python floats (one device->host copy).

    See :func:`image_texture_values`, which returns the same values as 0-d
    arrays on the image's device.
    """
    bk = backend_of(image)
    values = image_texture_values(image, channel, scales=scales, gray_levels=gray_levels)
    names = list(values)
    xp = bk.xp
    host = bk.to_numpy(xp.stack([xp.reshape(values[k], ()) for k in names])).tolist() if names else []
    return {k: float(v) for k, v in zip(names, host)}


def image_texture_values(
    image,
    channel: str,
    *,
    scales: Sequence[int] = (3, 5, 10),
    gray_levels: int = 256,
    q8=None,
) -> dict:
    """Whole-image Haralick features (CellProfiler ``MeasureTexture.run_image``).

    All pixel pairs of the image at each offset are counted, zeros included
    (``mahotas.features.haralick(..., ignore_zeros=False)``), with the GLCM sized
    by the image's largest level.

    Returns
    -------
    dict
        ``Texture_{Feature}_{channel}_{scale}_{dd}_{gray_levels}`` -> float64
        0-d array on the image's device (the ``Image_`` prefix is left to the
        caller); NaN when the image is smaller than the scale. ``q8``, the
        image's uint8 levels (:func:`texture_levels`), skips the quantization.
    """
    xp = backend_of(image).xp
    q8 = quantize(xp.asarray(image), gray_levels).astype(xp.uint8) if q8 is None else q8
    return image_texture_channels({channel: image}, scales=scales, gray_levels=gray_levels,
                                  levels=TextureLevels(int(gray_levels), {channel: q8}, [((channel,), q8.ravel())]))

def image_texture_channels(
    images,
    *,
    scales: Sequence[int] = (3, 5, 10),
    gray_levels: int = 256,
    levels: TextureLevels | None = None,
) -> dict:
    """:func:`image_texture_values` of every channel of ``images`` (mapping channel -> image).

    ``levels`` (:func:`texture_levels` of the same images) skips the
    quantization. On the CPU one numba pass reads the levels of up to 8
    channels per pixel pair; on a GPU this is one :func:`image_texture_values`
    per channel.
    """
    chans = list(images)
    bk = backend_of(*[images[c] for c in chans])
    if levels is None or int(levels.gray_levels) != int(gray_levels) or set(chans) - set(levels.q8):
        levels = texture_levels({c: images[c] for c in chans}, gray_levels)
    if bk.is_gpu:
        return _image_texture_device(images, chans, levels, scales, gray_levels)
    h, w = levels.q8[chans[0]].shape
    offs = _offsets(scales)
    feats = np.empty((len(offs), len(chans), 13, 1))
    npairs = np.zeros((len(offs), len(chans), 1), np.int64)
    _image_kernel(h, w, _planes(levels, chans), offs, _log2_table(), feats, npairs)
    nd = len(DIRECTIONS)
    return {texture_feature_name(f, c, int(s), d, gray_levels): feats[si * nd + d, ci, k, 0]
            for ci, c in enumerate(chans) for si, s in enumerate(scales) for d in range(nd)
            for k, f in enumerate(HARALICK_FEATURES)}


# ----------------------------------------------------------------- registry entry
def _texture_channel_names(channel: str, params) -> list[str]:
    t = params.texture
    return [
        texture_feature_name(f, channel, s, d, t.gray_levels)
        for s in t.scales
        for d in range(len(DIRECTIONS))
        for f in HARALICK_FEATURES
    ]


def _texture_names(obj, channels, params) -> list[str]:
    return [n for c in channels for n in _texture_channel_names(c, params)]


def _texture_image_names(channels, params) -> list[str]:
    return _texture_names(None, channels, params) if params.texture.image_texture else []


def _texture_measure(ctx) -> dict:
    t = ctx.params.texture
    return measure_texture_channels(
        ctx.labels, ctx.n, {c: ctx.images[c] for c in ctx.channels}, scales=t.scales, gray_levels=t.gray_levels,
        levels=ctx.texture_levels, objects=ctx.objects,  # the GPU path builds its pair geometry itself
        # CellProfiler's record_measurement writes 0 for non-finite values
        undefined=None if t.undefined_as_nan else 0.0,
    )


from hpc_profiler.features.registry import Family  # noqa: E402  (the entry closes the module)

FAMILY = Family(name="Texture", names=_texture_names, measure=_texture_measure, per_channel=True,
                image_names=_texture_image_names)
