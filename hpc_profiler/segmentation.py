"""Nuclei, cells and cytoplasm of one site, as the CPJUMP1 CellProfiler pipeline.

What this module reproduces (CellProfiler 5 / ``cellprofiler_library``)
-----------------------------------------------------------------------
* **IdentifyPrimaryObjects** (nuclei, on the background-subtracted DNA image):
  global threshold (Minimum Cross-Entropy = ``threshold_li`` with
  CellProfiler's tolerance, or Otsu), times the correction factor, clipped to
  the bounds; the image is Gaussian-smoothed with the "threshold smoothing
  scale" (``sigma = scale / 0.6744 / 2``, edge corrected) before it is compared
  with the threshold; 8-connected labelling; no hole filling; declumping by
  shape (distance transform of the hole-filled foreground, local maxima at
  least ``min_maxima_distance`` apart on CellProfiler's ``strel_disk``,
  watershed of the inverted distance, 8-connected); objects touching the
  border and objects whose area is outside ``pi d**2 / 4`` for ``d`` in
  ``[min_diameter, max_diameter]`` are discarded; labels renumbered 1..N.
* **IdentifySecondaryObjects "Watershed - Image"** (cells, on RNA): the
  thresholded RNA united with the seeds is the mask of a watershed of
  ``1 - RNA`` seeded by the nuclei (8-connected); holes are filled. Seeds keep
  their labels, so every nucleus has exactly one cell with its label.
* **IdentifyTertiaryObjects** with "Shrink smaller object" (cytoplasm): the
  cell minus the nucleus' interior, i.e. the cell where the nucleus label is 0
  or on the nucleus' 8-neighbour outline (``centrosome.cpmorphology.outline``).

Image measurements are named as CellProfiler's Image table without the
``Image_`` prefix: ``Threshold_FinalThreshold_<Object>``,
``Threshold_OrigThreshold_<Object>``, ``Threshold_WeightedVariance_<Object>``,
``Threshold_SumOfEntropies_<Object>`` (:func:`threshold_quality`), ``Count_<Object>``.

Where it deliberately differs
-----------------------------
* CellProfiler computes the threshold on the *unsmoothed* image and smooths
  only the image that is binarised; this is reproduced (so ``OrigThreshold``
  is ``threshold_li`` of the input image, not of the smoothed one).
* Shape declumping is CellProfiler 5's (``separate_neighboring_objects``):
  distance transform plus CellProfiler's own tie-break noise
  (``numpy.random.seed(0)``; ``uniform(0, 1e-3)``, the same numbers from a
  private ``RandomState(0)``), maxima compared only with pixels of their own
  thresholded object (:func:`is_local_maximum`), the watershed in
  scikit-image 0.24's order (:mod:`hpc_profiler.watershed`). The "size of
  smoothing filter" (``declump_filter_size``) is used by CellProfiler only
  for intensity declumping, so it has no effect here either. CellProfiler's
  "Speed up by using lower-resolution image to find local maxima" resizes
  the distance map by ``10 / min_diameter`` only when the minimum diameter
  exceeds 10 px; CPJUMP1's is 10, so CellProfiler finds the maxima at full
  resolution, as here (a configuration with a larger minimum diameter is not
  resized here).
* Cells are grown from :func:`secondary_seeds` (final nuclei plus the nuclei
  discarded for touching the border, not the ones the size filter dropped),
  as IdentifySecondaryObjects does.
* Hole filling (cells) fills background components (4-connected) that do not
  touch the image edge and whose neighbours all carry one label; CellProfiler's
  graph walk additionally fills holes nested inside holes.

Devices and speed
-----------------
Every step runs on the backend of the input (:func:`hpc_profiler.backend.backend_of`)
except the watershed, our numba implementation of scikit-image 0.24's
flooding order (:func:`hpc_profiler.watershed.watershed_numpy`; cuCIM has no
watershed, and the installed scikit-image's may flood differently), which
runs on the host (``bk.to_numpy``) with one round trip per call. Declumping
floods on the host only the thresholded objects holding two or more maxima
(:func:`watershed_contested`; on the CPU cropped to their bounding box, on
the GPU whole-frame so that no box is read back); an object with one maximum
is itself the result, assigned by a lookup on the device. The cells
watershed is one full-image call, as CellProfiler's, so that even the order
in which seeds of equal intensity flood is CellProfiler's.

On the GPU, :func:`segment_site` reads back from the device once besides
the watershed's copies: the thresholds stay 0-d device arrays (cuCIM's
threshold computes them), the threshold QC is computed on the device
(:func:`_threshold_quality_device`), label numbers are bounded by the
counts ``ndimage.label`` returns on the host instead of reading maxima, and
every measurement and the channel QC values come back in one stacked copy.

On the CPU the hot spots are exact numba or restructured equivalents with
bit-identical results (the tests compare each with the plain SciPy /
scikit-image / NumPy computation): the distance transform of declumping
(:func:`_edt_plus_noise`), ``threshold_li`` (:func:`threshold_li_host`,
NumPy's pairwise sums replicated), the threshold tolerance's sort (skipped
when two distinct values share a ``1 / 65536`` bin), the threshold QC's
fused arithmetic and histograms, the per-object local maxima
(:func:`is_local_maximum`), hole filling (:func:`fill_holes`,
:func:`fill_label_holes`), and the border and size filters with the
renumbering as one lookup table. ``numba`` is already a dependency (the
watershed); its kernels run single-threaded.
``scripts/bench_segmentation.py`` reports CPU seconds per step and, where a
GPU exists, the GPU times.

QC: a channel whose pixels are all zero, or with more than
:data:`SATURATION_WARN_FRACTION` of its pixels at full scale, gives a message
in :attr:`Segmentation.warnings` naming the channel; segmentation goes on (an
all-zero DNA image simply yields no nuclei), it never raises for such images.
A missing channel raises :class:`SegmentationError` naming it.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Mapping, Optional

import numpy as np

from .backend import backend_of
from .config import CellsConfig, DnaBackgroundConfig, NucleiConfig, SegmentationConfig
from .illumination import dna_background, gaussian_edge_corrected, subtract_background
from .morphology import edt_columns_up, edt_row_envelope, njit_cached

__all__ = [
    "SATURATION_WARN_FRACTION",
    "Segmentation",
    "SegmentationError",
    "threshold_tolerance",
    "global_threshold",
    "threshold_li_host",
    "threshold_smoothing_sigma",
    "threshold_quality",
    "binarize",
    "strel_disk",
    "watershed_contested",
    "is_local_maximum",
    "declump_shape",
    "secondary_seeds",
    "remove_border_objects",
    "filter_on_size",
    "relabel_consecutive",
    "outline",
    "fill_holes",
    "fill_label_holes",
    "segment_nuclei",
    "segment_cells",
    "cytoplasm",
    "channel_warnings",
    "segment_site",
]

#: A channel with more than this fraction of pixels at full scale (>= 1.0) is reported.
SATURATION_WARN_FRACTION = 0.01

_EIGHT = np.ones((3, 3), dtype=bool)
_FOUR = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], dtype=bool)


class SegmentationError(ValueError):
    """Segmentation cannot run on the given images; the message names the channel."""


@dataclass
class Segmentation:
    """Labels of one site (int32, 0 = background, 1..N shared by the three sets).

    The label arrays live on the device of the input images.
    """

    nuclei: object
    cells: object
    cytoplasm: object
    measurements: dict = field(default_factory=dict)
    warnings: list = field(default_factory=list)
    #: CellProfiler's ``small_removed_segmented`` of Nuclei and Cells (object name ->
    #: label image in the unedited numbering): the objects before the final filters,
    #: which MeasureObjectNeighbors also counts with "Consider objects discarded for
    #: touching image border?" = Yes (:func:`unfiltered_nuclei`; for Cells also the
    #: cells grown from border-discarded nuclei). Empty when not computed.
    unfiltered: dict = field(default_factory=dict)


# --------------------------------------------------------------------------- thresholds
def threshold_tolerance(image) -> float:
    """CellProfiler's ``threshold_li`` tolerance: half the smallest gap between
    distinct intensities, at least ``0.5 / 65536`` (``get_global_threshold``).

    The distinct values are found in the image's own dtype (a float32 image
    sorts twice as fast) and their gaps taken in float64, so the result is
    that of the float64 image. On the CPU the sort is skipped when two
    distinct values share a bin ``[k, k + 1) / 65536`` (then the smallest gap
    is below ``1 / 65536`` and the result is the floor, :func:`_gap_below_floor`;
    with thousands of distinct values among a million pixels the first such
    pair comes within a few hundred pixels)."""
    bk = backend_of(image)
    xp = bk.xp
    if not bk.is_gpu and image.size and _gap_below_floor(np.ascontiguousarray(image).ravel()):
        return 0.5 / 65536
    u = xp.unique(image.ravel())
    if u.size < 2:
        return 0.5 / 65536
    return max(float(xp.min(xp.diff(u.astype(xp.float64)))) / 2.0, 0.5 / 65536)


@njit_cached
def _gap_below_floor(values):
    """True when two distinct ``values`` lie in one bin ``[k, k + 1) / 65536``,
    i.e. their difference is below ``1 / 65536`` (exactly: ``v * 65536`` and
    its floor are exact in float64). False when no such pair exists or the
    values are not all finite or span more than 2**22 bins (the caller then
    sorts)."""
    n = values.size
    if n < 2:
        return False
    lo = math.floor(float(values[0]) * 65536.0)
    hi = lo
    for i in range(n):
        v = float(values[i])
        if not math.isfinite(v):
            return False
        k = math.floor(v * 65536.0)
        if k < lo:
            lo = k
        if k > hi:
            hi = k
    nb = int(hi - lo) + 1
    if nb > 2**22:
        return False
    first = np.empty(nb, dtype=np.float64)
    seen = np.zeros(nb, dtype=np.bool_)
    for i in range(n):
        v = float(values[i])
        b = int(math.floor(v * 65536.0) - lo)
        if not seen[b]:
            seen[b] = True
            first[b] = v
        elif first[b] != v:
            return True
    return False


@njit_cached
def _pairwise_block(a, lo, n):
    """NumPy's pairwise-sum leaf: ``n <= 128`` values, eight partial sums (fewer than 8: in order)."""
    if n < 8:
        res = -0.0
        for i in range(lo, lo + n):
            res += a[i]
        return res
    r0, r1, r2, r3 = a[lo], a[lo + 1], a[lo + 2], a[lo + 3]
    r4, r5, r6, r7 = a[lo + 4], a[lo + 5], a[lo + 6], a[lo + 7]
    i = 8
    m = n - n % 8
    while i < m:
        r0 += a[lo + i]
        r1 += a[lo + i + 1]
        r2 += a[lo + i + 2]
        r3 += a[lo + i + 3]
        r4 += a[lo + i + 4]
        r5 += a[lo + i + 5]
        r6 += a[lo + i + 6]
        r7 += a[lo + i + 7]
        i += 8
    res = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))
    while i < n:
        res += a[lo + i]
        i += 1
    return res


@njit_cached
def _pairwise_sum(a, n):
    """``np.add.reduce(a[:n])`` of a contiguous float64 array, bit for bit: NumPy's
    pairwise summation (leaves of at most 128 values, :func:`_pairwise_block`;
    longer runs split in halves at a multiple of 8, the two sums added). The
    recursion runs on an explicit stack (numba's on-disk cache does not take
    recursive functions)."""
    s_lo = np.empty(256, np.int64)
    s_n = np.empty(256, np.int64)
    s_up = np.zeros(256, np.bool_)  # children done: add their two sums
    vals = np.empty(256, np.float64)
    sp = 1
    nv = 0
    s_lo[0] = 0
    s_n[0] = n
    s_up[0] = False
    while sp > 0:
        lo = s_lo[sp - 1]
        m = s_n[sp - 1]
        if m <= 128:
            vals[nv] = _pairwise_block(a, lo, m)
            nv += 1
            sp -= 1
        elif s_up[sp - 1]:
            vals[nv - 2] = vals[nv - 2] + vals[nv - 1]
            nv -= 1
            sp -= 1
        else:
            s_up[sp - 1] = True
            m2 = m // 2
            m2 -= m2 % 8
            s_lo[sp], s_n[sp], s_up[sp] = lo + m2, m - m2, False  # right, summed second
            s_lo[sp + 1], s_n[sp + 1], s_up[sp + 1] = lo, m2, False  # left, summed first
            sp += 2
    return vals[0]


@njit_cached
def _li_split_sums(x, t, fore, back):
    """``x[x > t].sum()``, its count, ``x[~(x > t)].sum()``, its count (NumPy's sums:
    the two sides are gathered in order into ``fore`` / ``back``, then summed pairwise)."""
    nf = 0
    nb = 0
    for i in range(x.size):
        v = x[i]
        if v > t:
            fore[nf] = v
            nf += 1
        else:
            back[nb] = v
            nb += 1
    return _pairwise_sum(fore, nf), nf, _pairwise_sum(back, nb), nb


@njit_cached
def _shift_to_zero(flat, x):
    """``x = float64(flat) - min``; returns the minimum (float64), or None when a
    value is not finite or all are equal (then ``x`` is not filled)."""
    first = np.float64(flat[0])
    mn = first
    distinct = False
    for i in range(flat.size):
        v = np.float64(flat[i])
        if not np.isfinite(v):
            return None
        if v != first:
            distinct = True
        if v < mn:
            mn = v
    if not distinct:
        return None
    for i in range(flat.size):
        x[i] = np.float64(flat[i]) - mn
    return mn


def threshold_li_host(image, tolerance: float):
    """``skimage.filters.threshold_li(image.astype(float64), tolerance=tolerance)``, same bits,
    for a NumPy image of finite values that are not all equal (else scikit-image's own).

    scikit-image's loop (Li and Tam's iteration from the mean, in the image
    shifted to a zero minimum, until a step is at most ``tolerance``) with the
    two means of each step from one numba pass (:func:`_li_split_sums`, NumPy's
    pairwise sums of the same values in the same order) instead of two boolean
    gathers; the step itself is computed on NumPy scalars as scikit-image does.
    """
    flat = np.ascontiguousarray(image).ravel()
    x = np.empty(flat.size, dtype=np.float64)
    image_min = _shift_to_zero(flat, x) if flat.size else None
    if image_min is None:  # empty, not finite, or constant
        import skimage.filters

        return skimage.filters.threshold_li(np.asarray(image, dtype=np.float64), tolerance=tolerance)
    image_min = np.float64(image_min)
    t_next = np.float64(_pairwise_sum(x, x.size)) / x.size  # np.mean(x)
    t_curr = -2 * tolerance
    fore = np.empty_like(x)
    back = np.empty_like(x)
    with np.errstate(divide="ignore", invalid="ignore"):  # an empty side gives NaN, as np.mean([]) does
        while abs(t_next - t_curr) > tolerance:
            t_curr = t_next
            sf, nf, sb, nb = _li_split_sums(x, float(t_curr), fore, back)
            mean_fore = np.float64(sf) / np.float64(nf)
            mean_back = np.float64(sb) / np.float64(nb)
            if mean_back == 0.0:
                break
            t_next = (mean_back - mean_fore) / (np.log(mean_back) - np.log(mean_fore))
    return t_next + image_min


def global_threshold(image, *, method: str, correction_factor: float, lower_bound: float, upper_bound: float):
    """CellProfiler's global threshold (``get_global_threshold``).

    Parameters
    ----------
    image : array
        Unsmoothed image (CellProfiler thresholds the raw image); the
        threshold is computed on its float64 values whatever its dtype.
    method : {"li", "otsu"}
        ``li`` = Minimum Cross-Entropy: ``ski.filters.threshold_li`` with
        :func:`threshold_tolerance`; ``otsu``: ``ski.filters.threshold_otsu``.
    correction_factor, lower_bound, upper_bound : float

    Returns
    -------
    final : float
        ``min(max(orig * correction_factor, lower_bound), upper_bound)``.
    orig : float
        The threshold before correction, clipped to [0, 1] (CellProfiler's
        ``OrigThreshold``). An empty or constant image gives its value.
    """
    bk = backend_of(image)
    final, orig = _threshold(image, method, correction_factor, lower_bound, upper_bound)
    if bk.is_gpu:
        return tuple(_host_floats(bk, [final, orig]))
    return final, orig


def _threshold(image, method: str, correction_factor: float, lower_bound: float, upper_bound: float):
    """:func:`global_threshold`; on the GPU ``(final, orig)`` stay 0-d device arrays
    (no host copy: scikit-image's and cuCIM's thresholds return an empty or
    constant image's value themselves, and :func:`threshold_tolerance` its floor)."""
    bk = backend_of(image)
    xp = bk.xp
    if method not in ("li", "otsu"):
        raise SegmentationError(f"unknown threshold method {method!r}; known: li, otsu")
    if bk.is_gpu and image.size:
        img64 = xp.asarray(image, dtype=xp.float64)
        if method == "li":
            raw = bk.ski.filters.threshold_li(img64, tolerance=_threshold_tolerance_device(image))
        else:
            raw = bk.ski.filters.threshold_otsu(img64)
        raw = xp.asarray(raw, dtype=xp.float64)
        final = xp.minimum(xp.maximum(raw * correction_factor, lower_bound), upper_bound)
        return final, xp.minimum(xp.maximum(raw, 0.0), 1.0)
    if image.size == 0:
        raw = 0.0
    else:
        lo, hi = bk.to_numpy(xp.stack([xp.min(image), xp.max(image)]).astype(xp.float64)).tolist()  # one copy
        if lo == hi:
            raw = lo
        elif method == "li":
            raw = float(threshold_li_host(image, threshold_tolerance(image)))
        else:
            raw = float(bk.ski.filters.threshold_otsu(xp.asarray(image, dtype=xp.float64)))
    final = min(max(raw * correction_factor, lower_bound), upper_bound)
    orig = min(max(raw, 0.0), 1.0)
    return final, orig


def _threshold_tolerance_device(image):
    """:func:`threshold_tolerance` as a 0-d device array (the floor when fewer than two values)."""
    xp = backend_of(image).xp
    u = xp.unique(image.ravel())  # (a sync: its size)
    if u.size < 2:
        return 0.5 / 65536
    return xp.maximum(xp.min(xp.diff(u.astype(xp.float64))) / 2.0, 0.5 / 65536)


def _host_floats(bk, values) -> list:
    """Python floats of scalars, device ones read back with ONE copy (stacked)."""
    if not bk.is_gpu:
        return [float(v) for v in values]
    xp = bk.xp
    return bk.to_numpy(xp.stack([xp.asarray(v, dtype=xp.float64).reshape(()) for v in values])).tolist()


def threshold_smoothing_sigma(scale: float) -> float:
    """CellProfiler's threshold smoothing scale -> Gaussian sigma: ``scale / 0.6744 / 2``.

    Half of the smoothed intensity comes from within the scale's diameter
    (``apply_threshold`` in ``cellprofiler_library``).
    """
    return scale / 0.6744 / 2.0


def binarize(image, threshold: float, smoothing_scale: float):
    """Foreground ``smoothed(image) >= threshold`` (CellProfiler ``apply_threshold``)."""
    if smoothing_scale > 0:
        image = gaussian_edge_corrected(image, threshold_smoothing_sigma(smoothing_scale))
    return image >= threshold


def threshold_quality(image, binary) -> tuple[float, float]:
    """CellProfiler's ``Threshold_WeightedVariance`` and ``Threshold_SumOfEntropies``
    of a thresholded image (``add_fg_bg_measurements``). On the GPU the
    statistics are computed on the device (:func:`_threshold_quality_device`)
    and read back with one copy.

    Both clamp the image below at ``max / 256`` and take ``log2``.
    *Weighted variance*: the foreground and background variances of the log
    image, weighted by their pixel counts. *Sum of entropies*: the clamped
    image is perturbed per pixel by ``2**-8``-scaled log-normal noise from
    ``RandomState(0).normal`` (centrosome's ``smooth_with_noise``: the same
    numbers in every NumPy version); foreground and background log values go
    into 256-bin histograms over the perturbed image's log range, and the
    result is ``sum p log2 p`` over the non-empty bins of each (a non-positive
    number; ``log2(pixel count)`` for a constant image, 0 when one side is
    empty).

    Parameters
    ----------
    image : array (H, W), the image the threshold was applied to
    binary : bool array (H, W), the foreground

    Returns
    -------
    (weighted_variance, sum_of_entropies) : floats
    """
    bk = backend_of(image, binary)
    if bk.is_gpu:
        q = _threshold_quality_device(image, binary)
        return tuple(_host_floats(bk, [q[0], q[1]]))
    img = np.asarray(image)
    fgm = np.asarray(binary, dtype=bool)
    valid = ~np.isnan(img)
    if img.size == 0 or not valid.any():
        return 0.0, 0.0
    minval = np.max(img[valid]) / 256
    if minval == 0:
        return 0.0, 0.0
    lfg = np.log2(np.maximum(img[fgm & valid], minval))
    lbg = np.log2(np.maximum(img[~fgm & valid], minval))
    if lfg.size == 0 or lbg.size == 0:
        wv = float(np.var(lbg if lfg.size == 0 else lfg))
    else:
        nfg, nbg = np.int64(lfg.size), np.int64(lbg.size)  # (a float32 variance times int64 is float64)
        wv = float((np.var(lfg) * nfg + np.var(lbg) * nbg) / (nfg + nbg))
    noise = _quality_noise_host(tuple(img.shape))
    delta = 2.0 ** -8
    if img.dtype in (np.float32, np.float64) and img.ndim == 2:
        # the same operations fused (numba, IEEE order kept; log2/exp2 stay NumPy's)
        flat = np.ascontiguousarray(img).ravel()
        base = np.empty_like(flat)
        base_d = np.empty_like(flat)
        _quality_base(flat, img.dtype.type(minval), img.dtype.type(delta), base, base_d)
        pert = np.empty(flat.size, dtype=np.float64)
        _quality_mix(np.log2(base_d), noise.ravel(), np.log2(base), pert)
        pert = np.clip(np.exp2(pert, out=pert), 0, 1, out=pert).reshape(img.shape)
    else:
        clamped = np.where(img < minval, minval, img)
        base = np.clip(clamped, delta, 1)
        pert = np.exp2(np.log2(base + delta) * noise + (1 - noise) * np.log2(base))
        pert = np.clip(pert, 0, 1)
    lo, hi = np.log2(np.min(pert)), np.log2(np.max(pert))
    if not (np.isfinite(lo) and np.isfinite(hi)):  # (np.histogram's error, as before)
        raise ValueError(f"supplied range of [{lo}, {hi}] is not finite")
    if lo == hi:
        return wv, float(math.log(int(valid.sum()), 2))
    n_fg = int(np.count_nonzero(fgm & valid))
    if n_fg == 0 or n_fg == int(np.count_nonzero(valid)):
        return wv, 0.0
    # np.histogram(np.log2(pert[side]), 256, range=(lo, hi)) of both sides in one pass
    hists = np.zeros((2, 256), dtype=np.intp)
    _two_histograms(np.log2(pert).ravel(), fgm.ravel(), valid.ravel(), lo, hi,
                    np.linspace(lo, hi, 257, endpoint=True, dtype=np.float64), hists)
    total = 0.0
    for h in hists:
        h = h[h > 0]
        if h.size == 0:
            h = np.ones(1, int)
        p = h.astype(float) / float(np.sum(h))
        total += float(np.sum(p * np.log2(p)))
    return wv, total


def _threshold_quality_device(image, binary):
    """:func:`threshold_quality` on the device: a 2-element float64 array
    ``(weighted_variance, sum_of_entropies)``, no host copy.

    The same quantities from per-side sums (``bincount`` with weights, in
    float64: the variances as mean square minus squared mean, so last-bit
    differences from the CPU's float32 two-pass variances; the perturbed
    image as ``exp2(a + noise (b - a))``, algebraically the CPU's
    ``exp2(b noise + (1 - noise) a)``), the two 256-bin histograms as one
    ``bincount`` of known length (bin from NumPy's formula, then one step down
    or up against the bin edges), and the special cases of the CPU version as
    selections. The image must be finite (the CPU version raises otherwise).
    """
    bk = backend_of(image, binary)
    xp = bk.xp
    f64 = xp.float64
    if image.size == 0:
        return xp.zeros(2, dtype=f64)
    with np.errstate(divide="ignore", invalid="ignore"):  # (the NumPy twin: log2(0) of an all-zero image)
        return _threshold_quality_terms(xp, image, binary)


def _threshold_quality_terms(xp, image, binary):
    f64 = xp.float64
    img = xp.asarray(image, dtype=f64)
    side = xp.where(xp.asarray(binary, dtype=bool), 0, 1).ravel()  # 0: foreground, 1: background
    minval = xp.max(img) / 256
    limg = xp.log2(xp.maximum(img, minval)).ravel()
    # per side: count, sum and sum of squares of the log image (float64)
    cnt = xp.bincount(side, minlength=2).astype(f64)
    mean = xp.bincount(side, weights=limg, minlength=2) / xp.maximum(cnt, 1)
    var = xp.maximum(xp.bincount(side, weights=limg * limg, minlength=2) / xp.maximum(cnt, 1) - mean * mean, 0.0)
    n_fg, n_bg = cnt[0], cnt[1]
    wv = xp.where(n_fg == 0, var[1], xp.where(n_bg == 0, var[0], (var * cnt).sum() / xp.maximum(cnt.sum(), 1)))
    noise = _quality_noise_device(tuple(image.shape), xp)
    delta = 2.0 ** -8
    base = xp.clip(xp.maximum(img, minval), delta, 1)
    lb = xp.log2(base)
    pert = xp.clip(xp.exp2(lb + noise * (xp.log2(base + delta) - lb)), 0, 1)
    lp = xp.log2(pert).ravel()
    lo, hi = xp.min(lp), xp.max(lp)
    step = xp.where(hi > lo, hi - lo, 1.0) / 256
    k = xp.clip(((lp - lo) / step).astype(xp.int64), 0, 255)
    k = k - ((lp < lo + k * step) & (k > 0)) + ((lp >= lo + (k + 1) * step) & (k < 255))
    hist = xp.bincount(k + 256 * side, minlength=512).reshape(2, 256).astype(f64)
    p = hist / xp.maximum(hist.sum(axis=1, keepdims=True), 1)
    entropy = (p * xp.log2(xp.where(hist > 0, p, 1.0))).sum()
    soe = xp.where(lo == hi, xp.log2(cnt.sum()), xp.where((n_fg == 0) | (n_bg == 0), 0.0, entropy))
    return xp.where(minval == 0, 0.0, xp.stack([wv, soe]))


@functools.lru_cache(maxsize=4)
def _quality_noise_device(shape, xp):
    """:func:`_quality_noise_host` on the device of ``xp``, copied there once per shape."""
    return xp.asarray(_quality_noise_host(shape))


@njit_cached
def _quality_base(img, minval, delta, base, base_d):
    """``base = clip(where(img < minval, minval, img), delta, 1)`` and ``base_d = base + delta``,
    in the image's dtype (NumPy's casts of the scalars)."""
    one = base.dtype.type(1.0)
    for i in range(img.size):
        v = img[i]
        if v < minval:
            v = minval
        v = max(v, delta) if not np.isnan(v) else v
        v = min(v, one) if not np.isnan(v) else v
        base[i] = v
        base_d[i] = v + delta


@njit_cached
def _quality_mix(a, noise, b, out):
    """``out = a * noise + (1 - noise) * b`` in float64 (``a``, ``b``: log2 of the
    shifted and plain bases, in the image's dtype), as NumPy evaluates it."""
    for i in range(a.size):
        n = noise[i]
        out[i] = np.float64(a[i]) * n + (1.0 - n) * np.float64(b[i])


@njit_cached
def _two_histograms(x, fg, valid, first, last, edges, out):
    """``out[0]`` / ``out[1]``: ``np.histogram(x[fg & valid], n, range=(first, last))`` and
    the same of ``x[~fg & valid]``, ``n = out.shape[1]``, binned as NumPy's uniform-bin
    path does: index ``int((x - first) / (last - first) * n)``, ``n`` moved to
    ``n - 1``, then one step down when ``x`` is below its bin's left edge and one
    up when at or above the right edge (not past the last bin); values outside
    ``[first, last]`` (and NaN) are dropped."""
    n = out.shape[1]
    denom = last - first
    for i in range(x.size):
        if not valid[i]:
            continue
        v = x[i]
        if not (v >= first and v <= last):
            continue
        k = int((v - first) / denom * n)
        if k == n:
            k -= 1
        if v < edges[k]:
            k -= 1
        if v >= edges[k + 1] and k != n - 1:
            k += 1
        out[0 if fg[i] else 1, k] += 1


# --------------------------------------------------------------------------- label helpers
def strel_disk(radius: float, xp=np):
    """Disk footprint ``x**2 + y**2 <= radius**2`` on a ``2 int(radius) + 1`` grid
    (``centrosome.cpmorphology.strel_disk``)."""
    r = int(radius)
    y, x = np.mgrid[-r : r + 1, -r : r + 1]
    return xp.asarray((x * x + y * y) <= radius * radius)


@functools.lru_cache(maxsize=4)
def _tie_noise_host(shape):
    """CellProfiler's distance tie-break: ``uniform(0, 1e-3)`` noise after ``numpy.random.seed(0)``.

    ``separate_neighboring_objects`` seeds NumPy's global legacy generator
    with 0 and draws ``numpy.random.uniform(0, 0.001, shape)``; the legacy
    MT19937 stream of ``RandomState(0)`` is the same in every NumPy version,
    so these are CellProfiler's own numbers (drawn from a private
    ``RandomState``, the global generator is left alone). Cached per shape
    (every site of a plate has one); callers must not modify it.
    """
    noise = np.random.RandomState(0).uniform(0, 0.001, shape)
    noise.setflags(write=False)
    return noise


@functools.lru_cache(maxsize=4)
def _quality_noise_host(shape):
    """centrosome's ``smooth_with_noise`` draws for :func:`threshold_quality`:
    ``RandomState(0).normal(size=shape)``, the same numbers in every NumPy version.

    Cached per shape (drawing 1080 x 1080 normals took ~35 ms, twice per
    site: nuclei and cells); read-only, callers must not modify it.
    """
    noise = np.random.RandomState(0).normal(size=shape)
    noise.setflags(write=False)
    return noise


def _tie_noise(shape, xp):
    """:func:`_tie_noise_host` on the array module ``xp``."""
    noise = _tie_noise_host(tuple(shape))
    return noise if xp is np else xp.asarray(noise)


def _crop_box(xp, sel):
    """Row and column slices of the bounding box of the True pixels of ``sel``."""
    rows = xp.nonzero(sel.any(axis=1))[0]
    cols = xp.nonzero(sel.any(axis=0))[0]
    return slice(int(rows[0]), int(rows[-1]) + 1), slice(int(cols[0]), int(cols[-1]) + 1)


def _watershed_host(bk, image, markers, mask):
    """8-connected marker watershed with scikit-image 0.24's flooding order
    (:func:`hpc_profiler.watershed.watershed_numpy`, our numba implementation)
    on the host; labels back on ``bk``.

    cuCIM has no watershed; this is the only step that leaves the device.
    """
    from .watershed import watershed_numpy

    out = watershed_numpy(bk.to_numpy(image), bk.to_numpy(markers), bk.to_numpy(mask))
    return bk.asarray(out.astype(np.int32, copy=False))


def watershed_contested(image, markers, components, *, n_components=None, n_markers=None):
    """Watershed of ``image`` from ``markers`` within the labelled ``components``,
    flooding on the host only the components two or more markers compete for.

    * A component holding one marker label is flooded whole with it and one
      holding none stays 0, as a watershed does (it reaches exactly the
      8-connected component of its markers); this is a lookup on the device.
    * The components holding two or more labels go to :func:`_watershed_host`
      (8-connected, scikit-image 0.24's order) in one call, cropped to their
      bounding box: only that crop is copied to the host and back.

    The labels equal those of one full-image call except possibly where seed
    pixels of exactly equal value compete: the binary heap releases equal
    keys (markers all enter with age 0) in an order that depends on all the
    keys it holds. Shape declumping seeds single pixels of noisy distances,
    which never tie.

    Parameters
    ----------
    image : float array (H, W)
    markers : int array (H, W), 0 = no seed
    components : int array (H, W)
        8-connected labels of the mask (0 = outside).
    n_components, n_markers : int, optional
        Upper bounds of the component and marker numbers when known on the
        host (e.g. from ``ndimage.label``), saving a device->host copy each.

    Returns
    -------
    int32 array (H, W)

    On the GPU the contested components go to the host whole-frame (no
    bounding box to read back first).
    """
    bk = backend_of(image, markers, components)
    xp = bk.xp
    n_comp = n_components if n_components is not None else int(components.max()) if components.size else 0
    markers = xp.where(components > 0, markers, 0).astype(xp.int32)
    n_mark = n_markers if n_markers is not None else int(markers.max()) if markers.size else 0
    if n_comp == 0 or n_mark == 0:
        return xp.zeros(components.shape, dtype=xp.int32)
    seeded = markers > 0
    m_lab, m_comp = markers[seeded], components[seeded]
    # a component for each label (one of its pixels') and a label for each component
    comp_of = xp.zeros(n_mark + 1, dtype=m_comp.dtype)
    comp_of[m_lab] = m_comp
    label_of = xp.zeros(n_comp + 1, dtype=xp.int32)
    label_of[m_comp] = m_lab
    n_labels = xp.bincount(comp_of[1:], minlength=n_comp + 1)
    n_labels[0] = 0
    contested = n_labels > 1
    contested[m_comp[comp_of[m_lab] != m_comp]] = True  # a label spread over components
    single = (n_labels == 1) & ~contested
    out = xp.where(single[components], label_of[components], 0).astype(xp.int32)
    sel = contested[components]
    if bk.is_gpu:
        if xp.flatnonzero(sel).size == 0:  # (a sync, not a copy: CuPy sizes its output)
            return out
        flooded = _watershed_host(bk, image, xp.where(sel, markers, 0), sel)
        return xp.where(sel, flooded, out).astype(xp.int32)
    if not bool(sel.any()):
        return out
    rs, cs = _crop_box(xp, sel)
    sel_c = sel[rs, cs]
    flooded = _watershed_host(bk, image[rs, cs], xp.where(sel_c, markers[rs, cs], 0), sel_c)
    out[rs, cs] = xp.where(sel_c, flooded, out[rs, cs])
    return out


def _lut_apply(xp, labels, keep):
    """Zero the labels whose entry in boolean ``keep`` (indexed by label) is False."""
    keep = keep.copy()
    keep[0] = False
    return xp.where(keep[labels], labels, 0).astype(xp.int32)


def remove_border_objects(labels):
    """Discard objects with a pixel on the image border (CellProfiler ``filter_on_border``)."""
    xp = backend_of(labels).xp
    n = int(labels.max()) if labels.size else 0
    if n == 0:
        return labels.astype(xp.int32)
    edge = xp.concatenate([labels[0, :], labels[-1, :], labels[:, 0], labels[:, -1]])
    keep = xp.ones(n + 1, dtype=bool)
    keep[edge] = False
    return _lut_apply(xp, labels, keep)


def filter_on_size(labels, min_diameter: float, max_diameter: float):
    """Discard objects whose area is outside ``[pi min**2 / 4, pi max**2 / 4]``
    (CellProfiler ``filter_on_size``: equivalent diameter outside the range)."""
    xp = backend_of(labels).xp
    n = int(labels.max()) if labels.size else 0
    if n == 0:
        return labels.astype(xp.int32)
    areas = xp.bincount(labels.ravel(), minlength=n + 1)
    keep = (areas >= math.pi * min_diameter**2 / 4) & (areas <= math.pi * max_diameter**2 / 4)
    return _lut_apply(xp, labels, keep)


def relabel_consecutive(labels):
    """Renumber the labels present to 1..N in the order of the old numbers.

    Returns
    -------
    labels : int32 array
    n : int
    """
    xp = backend_of(labels).xp
    m = int(labels.max()) if labels.size else 0
    if m == 0:
        return xp.zeros(labels.shape, dtype=xp.int32), 0
    present = xp.bincount(labels.ravel(), minlength=m + 1) > 0
    present[0] = False
    lut = (xp.cumsum(present) * present).astype(xp.int32)
    return lut[labels], int(present.sum())


def outline(labels):
    """Pixels of an object with an 8-neighbour of another value, or on the image edge
    (``centrosome.cpmorphology.outline``); boolean.

    Eight comparisons of the zero-padded labels with their shifted copies
    (the same pixels as a 3 x 3 grey dilation and erosion, in a quarter of
    the time).
    """
    xp = backend_of(labels).xp
    h, w = labels.shape
    padded = xp.pad(labels, 1, mode="constant", constant_values=0)
    differs = xp.zeros(labels.shape, dtype=bool)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            if dy or dx:
                differs |= padded[1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w] != labels
    return differs & (labels != 0)


def fill_holes(binary):
    """``ndimage.binary_fill_holes(binary)`` (4-connected background).

    A background pixel stays background when its 4-connected background
    component reaches the image edge; every other one is filled. One
    labelling and a lookup instead of SciPy's iterated propagation (on the
    CPU one numba walk of the background from the edge, :func:`_fill_holes_cpu`).
    """
    bk = backend_of(binary)
    xp = bk.xp
    if not bk.is_gpu:
        out = np.array(binary, dtype=bool, order="C")
        if out.size:
            _fill_holes_cpu(out)
        return out
    bg = ~binary.astype(bool)
    blab, nb = bk.ndi.label(bg, structure=xp.asarray(_FOUR))
    if int(nb) == 0:
        return ~bg
    outside = xp.zeros(int(nb) + 1, dtype=bool)
    outside[xp.concatenate([blab[0, :], blab[-1, :], blab[:, 0], blab[:, -1]])] = True
    outside[0] = False
    return ~outside[blab]


@njit_cached
def _edge_background(bg, seen, qy, qx):
    """Set ``seen`` on the pixels of ``bg`` (bool, 2-D) reached 4-connectedly from the
    image edge through ``bg``: a breadth-first walk (``qy``, ``qx``: int64 scratch
    queues of ``bg.size``). Shared by :func:`_fill_holes_cpu` and
    :func:`_fill_label_holes_cpu`."""
    h, w = bg.shape
    n = 0
    for y in range(h):
        for x in range(w):
            if bg[y, x] and (y == 0 or y == h - 1 or x == 0 or x == w - 1) and not seen[y, x]:
                seen[y, x] = True
                qy[n] = y
                qx[n] = x
                n += 1
    head = 0
    while head < n:
        y = qy[head]
        x = qx[head]
        head += 1
        for k in range(4):
            yy = y + (-1 if k == 0 else 1 if k == 3 else 0)
            xx = x + (-1 if k == 1 else 1 if k == 2 else 0)
            if 0 <= yy < h and 0 <= xx < w and bg[yy, xx] and not seen[yy, xx]:
                seen[yy, xx] = True
                qy[n] = yy
                qx[n] = xx
                n += 1


@njit_cached
def _fill_holes_cpu(fg):
    """:func:`fill_holes` in place: the background not reached 4-connectedly from
    the edge (:func:`_edge_background`) becomes foreground."""
    h, w = fg.shape
    seen = np.zeros((h, w), dtype=np.bool_)
    _edge_background(np.logical_not(fg), seen, np.empty(h * w, dtype=np.int64), np.empty(h * w, dtype=np.int64))
    for y in range(h):
        for x in range(w):
            if not seen[y, x]:
                fg[y, x] = True


def fill_label_holes(labels):
    """Fill background holes enclosed by a single object with that object's label.

    A hole is a 4-connected background component that does not touch the
    image edge and whose 4-neighbours all carry the same label (the simple case
    of ``centrosome.cpmorphology.fill_labeled_holes``; holes nested inside
    holes are not filled). Vectorised over components: the largest and the
    smallest object label among the 4-neighbours of every pixel of a component
    that does not touch the edge (gathered by index; such pixels are never on
    the edge) are reduced per component with labelled
    ``ndimage.maximum``/``minimum``; a component is filled when the two agree.
    On the CPU the same rule in one numba pass (:func:`_fill_label_holes_cpu`).
    """
    bk = backend_of(labels)
    xp, ndi = bk.xp, bk.ndi
    labels = labels.astype(xp.int32)
    if not bk.is_gpu:
        if labels.size:
            _fill_label_holes_cpu(labels)
        return labels
    bg = labels == 0
    blab, nb = ndi.label(bg, structure=xp.asarray(_FOUR))
    nb = int(nb)
    if nb == 0:
        return labels
    touches = xp.zeros(nb + 1, dtype=bool)
    touches[xp.concatenate([blab[0, :], blab[-1, :], blab[:, 0], blab[:, -1]])] = True
    touches[0] = True  # object pixels are no candidates
    ys, xs = xp.nonzero(~touches[blab])
    if ys.size == 0:
        return labels
    big = np.iinfo(np.int32).max  # above every label (no host read of the largest)
    around = xp.stack([labels[ys - 1, xs], labels[ys + 1, xs], labels[ys, xs - 1], labels[ys, xs + 1]])
    hi_px = around.max(axis=0)
    lo_px = xp.where(around > 0, around, big).min(axis=0)
    comp = blab[ys, xs]
    contact = hi_px > 0  # pixels with no object neighbour tell nothing
    idx = xp.arange(1, nb + 1)
    hi = xp.asarray(ndi.maximum(hi_px[contact], comp[contact], idx))
    lo = xp.asarray(ndi.minimum(lo_px[contact], comp[contact], idx))
    fill = (hi == lo) & (hi > 0) & (lo < big) & ~touches[1:]
    lut = xp.zeros(nb + 1, dtype=xp.int32)
    lut[1:] = xp.where(fill, hi, 0).astype(xp.int32)
    labels[ys, xs] = lut[comp]
    return labels


@njit_cached
def _fill_label_holes_cpu(labels):
    """:func:`fill_label_holes` in place on a C-contiguous int32 array.

    A breadth-first walk marks the background reachable 4-connectedly from
    the edge; every other background component is walked in turn, and
    filled when its pixels with a positive 4-neighbour exist and the largest
    4-neighbour label over them equals the smallest positive one (the rule
    of the labelled ``maximum``/``minimum`` reduction of the array version).
    """
    h, w = labels.shape
    bg = labels == 0
    if bg.all():
        return
    seen = np.zeros((h, w), dtype=np.bool_)
    qy = np.empty(h * w, dtype=np.int64)
    qx = np.empty(h * w, dtype=np.int64)
    _edge_background(bg, seen, qy, qx)  # the background reached from the edge
    big = np.int64(np.iinfo(np.int32).max) + 1
    for y0 in range(1, h - 1):
        for x0 in range(1, w - 1):
            if labels[y0, x0] != 0 or seen[y0, x0]:
                continue
            seen[y0, x0] = True  # a hole candidate: never on the edge, so its 4 neighbours exist
            qy[0] = y0
            qx[0] = x0
            n = 1
            head = 0
            hi = np.int64(0)
            lo = big
            contact = False
            while head < n:
                y = qy[head]
                x = qx[head]
                head += 1
                hp = np.int64(-big)
                lp = big
                for k in range(4):
                    yy = y + (-1 if k == 0 else 1 if k == 3 else 0)
                    xx = x + (-1 if k == 1 else 1 if k == 2 else 0)
                    v = np.int64(labels[yy, xx])
                    if v > hp:
                        hp = v
                    if v > 0 and v < lp:
                        lp = v
                    if v == 0 and not seen[yy, xx]:
                        seen[yy, xx] = True
                        qy[n] = yy
                        qx[n] = xx
                        n += 1
                if hp > 0:
                    if not contact or hp > hi:
                        hi = hp
                    if lp < lo:
                        lo = lp
                    contact = True
            if contact and hi == lo:
                for j in range(n):
                    labels[qy[j], qx[j]] = hi


def is_local_maximum(image, labels, radius: float, backend=None):
    """Pixels of an object whose value is not below that of any pixel of the
    *same* object within ``strel_disk(radius)`` (``centrosome.cpmorphology.is_local_maximum``).

    Pixels of other objects and the background do not count. On the CPU one
    numba pass tests each object pixel against the disk offsets, nearest
    first, until a larger same-object neighbour (:func:`_local_maxima`). On the GPU every offset is
    one dense comparison of shifted views (4 launches, no synchronisation;
    the same pixels). ``backend`` defaults to the arrays' own.
    """
    bk = backend if backend is not None else backend_of(image, labels)
    xp = bk.xp
    disk = strel_disk(radius)
    r = disk.shape[0] // 2
    dy, dx = np.nonzero(disk)
    dy, dx = dy - r, dx - r
    order = np.lexsort((dx, dy, dy * dy + dx * dx))
    offsets = [(int(dy[k]), int(dx[k])) for k in order if dy[k] or dx[k]]
    lab_p = xp.pad(labels, r)
    img_p = xp.pad(image, r)
    if bk.is_gpu:
        # dense: 4 launches per offset, no data-sized output (the shrinking
        # candidate sets below sync on every boolean compaction)
        h, w = labels.shape
        out = labels > 0
        for oy, ox in offsets:
            nb_lab = lab_p[r + oy : r + oy + h, r + ox : r + ox + w]
            nb_img = img_p[r + oy : r + oy + h, r + ox : r + ox + w]
            out &= (nb_lab != labels) | (nb_img <= image)
        return out
    out = np.zeros(labels.shape, dtype=bool)
    _local_maxima(np.ascontiguousarray(lab_p), np.ascontiguousarray(img_p), r,
                  np.array([o[0] for o in offsets], dtype=np.int64), np.array([o[1] for o in offsets], dtype=np.int64), out)
    return out


@njit_cached
def _local_maxima(lab_p, img_p, r, oys, oxs, out):
    """:func:`is_local_maximum` on the CPU: every object pixel of the ``r``-padded
    labels, tested against the disk offsets ``(oys, oxs)`` nearest first until one
    same-object neighbour is larger."""
    h, w = out.shape
    n = oys.size
    for y in range(h):
        for x in range(w):
            lab = lab_p[y + r, x + r]
            if lab <= 0:
                continue
            val = img_p[y + r, x + r]
            peak = True
            for k in range(n):
                yy = y + r + oys[k]
                xx = x + r + oxs[k]
                if lab_p[yy, xx] == lab and not img_p[yy, xx] <= val:
                    peak = False
                    break
            out[y, x] = peak


@njit_cached
def _edt_plus_noise(fg, noise, out):
    """``out = ndimage.distance_transform_edt(fg) + noise`` (float64), exactly.

    Meijster's / Felzenszwalb and Huttenlocher's two-pass transform on integer
    squared distances (the column pass and row envelope shared with the
    AreaShape kernels, :mod:`hpc_profiler.morphology`), then
    ``sqrt(float(dy^2 + dx^2))`` - what SciPy computes from its feature
    transform. As in SciPy, pixels outside the image are not background: a
    column without background starts at ``big = h + w + 1``, whose parabola
    lies above every true distance. ``fg`` must hold at least one background
    pixel (then every row's envelope has a finite column).
    """
    h, w = fg.shape
    big = h + w + 1
    g = np.empty((h, w), dtype=np.int64)
    for x in range(w):
        g[0, x] = big if fg[0, x] else 0
    for y in range(1, h):
        for x in range(w):
            g[y, x] = g[y - 1, x] + 1 if fg[y, x] else 0
    edt_columns_up(g)
    sq = np.empty(w, dtype=np.int64)
    tq = np.empty(w, dtype=np.int64)
    for y in range(h):
        gy = g[y]
        orow = out[y]
        nrow = noise[y]
        q = edt_row_envelope(gy, w, sq, tq)
        for x in range(w - 1, -1, -1):
            if fg[y, x]:
                a = x - sq[q]
                orow[x] = math.sqrt(float(a * a + gy[sq[q]] * gy[sq[q]])) + nrow[x]
            else:
                orow[x] = 0.0 + nrow[x]
            if x == tq[q]:
                q -= 1


def declump_shape(components, min_maxima_distance: float, *, n_components=None, return_count: bool = False):
    """Split clumped objects by shape (IdentifyPrimaryObjects "Shape"/"Shape"),
    as CellProfiler 5's ``separate_neighboring_objects``.

    The distance transform of the hole-filled foreground plus CellProfiler's
    own tie-break noise (:func:`_tie_noise_host`); seeds are its positive
    local maxima within each component (:func:`is_local_maximum`, footprint
    ``strel_disk(max(1, d - 0.5))``), each 8-connected group of maxima one
    seed numbered in raster order; the watershed of ``max - distance`` from
    the seeds within the components, in scikit-image 0.24's order. (The
    noise makes maxima single pixels, so CellProfiler's ``binary_shrink`` of
    touching maxima has nothing to do.)

    Parameters
    ----------
    components : int array
        8-connected labels of the thresholded image.
    min_maxima_distance : float
        Maxima closer than this are suppressed.
    n_components : int, optional
        The number of components when known on the host (``ndimage.label``'s).
    return_count : bool
        Also return the number of seeds (a host int, an upper bound of the labels).

    Returns
    -------
    int32 array
    """
    bk = backend_of(components)
    xp, ndi = bk.xp, bk.ndi
    n = n_components if n_components is not None else int(components.max()) if components.size else 0
    if n == 0:
        out = xp.zeros(components.shape, dtype=xp.int32)
        return (out, 0) if return_count else out
    fg = fill_holes(components > 0)
    if bk.is_gpu or bool(fg.all()):  # (the CPU kernel needs a background pixel; SciPy's answer then)
        dist = ndi.distance_transform_edt(fg).astype(xp.float64)
        dist = dist + _tie_noise(tuple(components.shape), xp)
    else:
        dist = np.empty(fg.shape, dtype=np.float64)
        _edt_plus_noise(np.ascontiguousarray(fg, dtype=bool), _tie_noise_host(tuple(fg.shape)), dist)
    peaks = is_local_maximum(dist, components, max(1.0, min_maxima_distance - 0.5)) & (dist > 0)
    seeds, n_seeds = ndi.label(peaks, structure=xp.asarray(_EIGHT))
    n_seeds = int(n_seeds)
    top = dist.max() if bk.is_gpu else float(dist.max())  # (the same float64 subtraction)
    out = watershed_contested(top - dist, xp.asarray(seeds, dtype=xp.int32), components,
                              n_components=n, n_markers=n_seeds)
    return (out, n_seeds) if return_count else out


# --------------------------------------------------------------------------- objects
def segment_nuclei(dna, params: NucleiConfig, *, return_unedited: bool = False):
    """IdentifyPrimaryObjects on a (background-subtracted) DNA image.

    Parameters
    ----------
    dna : array (H, W), float in [0, 1]
    params : NucleiConfig
        Threshold method, smoothing scale, correction factor and bounds;
        declumping distance; diameter range; border exclusion; hole filling.

    Returns
    -------
    labels : int32 array (H, W), 1..N
    measurements : dict
        ``Threshold_FinalThreshold_Nuclei``, ``Threshold_OrigThreshold_Nuclei``,
        ``Count_Nuclei``.
    unedited : int32 array (H, W), only with ``return_unedited=True``
        The declumped objects before the border and size filters
        (CellProfiler's "unedited segmentation"), which IdentifySecondaryObjects
        grows cells from.
    """
    labels, measurements, unedited, _, _ = _nuclei(dna, params)
    measurements = dict(zip(measurements, _host_floats(backend_of(dna), measurements.values())))
    if return_unedited:
        return labels, measurements, unedited
    return labels, measurements


def _nuclei(dna, params: NucleiConfig):
    """:func:`segment_nuclei`: labels, measurements (0-d device arrays on the GPU,
    floats on the CPU), the unedited objects, their number's upper bound
    (a host int: the number of declumping seeds) and their areas (``bincount``)."""
    bk = backend_of(dna)
    xp, ndi = bk.xp, bk.ndi
    img = xp.asarray(dna, dtype=xp.float64)
    final, orig = _threshold(dna, params.threshold_method, params.correction_factor,
                             params.lower_bound, params.upper_bound)
    binary = binarize(img, final, params.smoothing_scale)
    thresholded = binary
    if params.fill_holes:
        binary = fill_holes(binary)
    components, n_comp = ndi.label(binary, structure=xp.asarray(_EIGHT))
    unedited, n_unedited = declump_shape(components, params.min_maxima_distance,
                                         n_components=int(n_comp), return_count=True)
    unedited = xp.asarray(unedited, dtype=xp.int32)
    labels, n, areas = _edit_primary(unedited, n_unedited, params)
    if bk.is_gpu:
        q = _threshold_quality_device(dna, thresholded)
        wv, soe = q[0], q[1]  # (views: no copy)
    else:
        wv, soe = threshold_quality(dna, thresholded)
    measurements = {
        "Threshold_FinalThreshold_Nuclei": final,
        "Threshold_OrigThreshold_Nuclei": orig,
        "Threshold_WeightedVariance_Nuclei": wv,
        "Threshold_SumOfEntropies_Nuclei": soe,
        "Count_Nuclei": n,
    }
    return labels, measurements, unedited, n_unedited, areas


def _edit_primary(unedited, n_unedited: int, params: NucleiConfig):
    """:func:`remove_border_objects` (when excluded), :func:`filter_on_size`,
    :func:`fill_label_holes` (when filled) and :func:`relabel_consecutive` of
    the declumped objects, as one lookup table built from one ``bincount``
    (an object removed by one filter is removed whole, so the areas the size
    filter sees are the unedited ones). Returns the labels, their number
    (a host int on the CPU, a 0-d device array on the GPU) and the unedited
    objects' areas (None when there are none)."""
    xp = backend_of(unedited).xp
    if n_unedited == 0:
        return (xp.zeros(unedited.shape, dtype=xp.int32),
                (0 if not backend_of(unedited).is_gpu else xp.zeros((), xp.int64)), None)
    counts = xp.bincount(unedited.ravel(), minlength=n_unedited + 1)
    keep = counts > 0
    if params.exclude_border:
        keep[xp.concatenate([unedited[0, :], unedited[-1, :], unedited[:, 0], unedited[:, -1]])] = False
    keep &= (counts >= math.pi * params.min_diameter**2 / 4) & (counts <= math.pi * params.max_diameter**2 / 4)
    keep[0] = False
    labels = unedited
    if params.fill_holes:
        labels = fill_label_holes(xp.where(keep[labels], labels, 0).astype(xp.int32))
        keep = xp.bincount(labels.ravel(), minlength=n_unedited + 1) > 0
        keep[0] = False
    lut = (xp.cumsum(keep) * keep).astype(xp.int32)
    n = keep.sum()
    return lut[labels], (n if backend_of(unedited).is_gpu else int(n)), counts


def segment_cells(rna, nuclei, params: CellsConfig, *, unedited_nuclei=None, return_unfiltered: bool = False):
    """IdentifySecondaryObjects "Watershed - Image" seeded by the nuclei.

    Parameters
    ----------
    rna : array (H, W), float in [0, 1]
    nuclei : int32 array (H, W), labels 1..N
    params : CellsConfig
    unedited_nuclei : int32 array (H, W), optional
        The primary objects before border and size filtering. As in
        CellProfiler, cells are then grown from :func:`secondary_seeds` (the
        final nuclei plus the nuclei discarded for touching the border, so a
        cell next to a discarded border nucleus does not take its territory),
        holes are filled, and the cells of discarded nuclei are removed
        afterwards (``filter_labels``).
    return_unfiltered : bool
        Also return the cells before that removal (CellProfiler's
        ``small_removed_segmented``, unedited numbering).

    Returns
    -------
    cells : int32 array (H, W); cell ``k`` contains nucleus ``k``
    measurements : dict
        ``Threshold_FinalThreshold_Cells``, ``Threshold_OrigThreshold_Cells``,
        ``Count_Cells``.
    unfiltered : int32 array (H, W), only with ``return_unfiltered=True``
    """
    out = _cells(rna, nuclei, params, unedited_nuclei)
    cells, measurements, unfiltered = out
    measurements = dict(zip(measurements, _host_floats(backend_of(rna, nuclei), measurements.values())))
    if return_unfiltered:
        return cells, measurements, unfiltered
    return cells, measurements


def _cells(rna, nuclei, params: CellsConfig, unedited_nuclei=None, n_bound=None):
    """:func:`segment_cells`: cells, measurements (0-d device arrays on the GPU,
    floats on the CPU), unfiltered cells. ``n_bound``: an upper bound of the
    nuclei's and unedited nuclei's labels known on the host (else read).

    On the GPU the watershed always runs (a site without final nuclei floods
    from no seeds: the CPU's empty result, with no host decision)."""
    bk = backend_of(rna, nuclei)
    xp = bk.xp
    img = xp.asarray(rna, dtype=xp.float64)
    if tuple(img.shape) != tuple(nuclei.shape):
        raise SegmentationError(f"cells: image shape {tuple(img.shape)} differs from nuclei {tuple(nuclei.shape)}")
    final, orig = _threshold(rna, params.threshold_method, params.correction_factor,
                             params.lower_bound, params.upper_bound)
    foreground = binarize(img, final, params.smoothing_scale)
    if bk.is_gpu:
        q = _threshold_quality_device(rna, foreground)
        wv, soe = q[0], q[1]  # (views: no copy)
        if n_bound is None:
            n_bound = max(int(nuclei.max()) if nuclei.size else 0,
                          int(unedited_nuclei.max()) if unedited_nuclei is not None and unedited_nuclei.size else 0)
        n = n_bound
    else:
        wv, soe = threshold_quality(rna, foreground)
        n = int(nuclei.max()) if nuclei.size else 0
        if n_bound is None:
            n_bound = max(n, int(unedited_nuclei.max()) if unedited_nuclei is not None and unedited_nuclei.size else 0)
    unfiltered = cells = xp.zeros(img.shape, dtype=xp.int32)
    if n > 0:
        if unedited_nuclei is None:
            seeds = nuclei
        else:
            seeds = secondary_seeds(unedited_nuclei, nuclei, n_unedited=n_bound)
        if bk.is_gpu:
            seeds = xp.where(nuclei.max() > 0, seeds, 0)
        mask = foreground | (seeds > 0)
        cells = _watershed_host(bk, 1.0 - img, seeds.astype(xp.int32), mask)
        if params.fill_holes:
            cells = fill_label_holes(cells)
        unfiltered = cells
        if unedited_nuclei is not None:
            cells = _keep_final_objects(cells, unedited_nuclei, nuclei, n, n_unedited=n_bound)
    count = (xp.bincount(cells.ravel(), minlength=n_bound + 1)[1:] > 0).sum()
    measurements = {
        "Threshold_FinalThreshold_Cells": final,
        "Threshold_OrigThreshold_Cells": orig,
        "Threshold_WeightedVariance_Cells": wv,
        "Threshold_SumOfEntropies_Cells": soe,
        "Count_Cells": count if bk.is_gpu else float(int(count)),
    }
    return cells, measurements, unfiltered


def secondary_seeds(unedited, final, *, n_unedited=None):
    """The seeds IdentifySecondaryObjects grows from: the unedited primary
    objects that touch the image edge (whole) and the pixels of the final
    primary objects, in the unedited numbering.

    So objects discarded for touching the border still claim their territory,
    objects discarded by the size filter do not (``identifysecondaryobjects``
    in ``cellprofiler_library``). ``n_unedited``: an upper bound of the unedited
    labels when known on the host (else read).
    """
    xp = backend_of(unedited, final).xp
    unedited = unedited.astype(xp.int32)
    m = n_unedited if n_unedited is not None else int(unedited.max()) if unedited.size else 0
    touching = xp.zeros(m + 1, dtype=bool)
    touching[xp.concatenate([unedited[0, :], unedited[-1, :], unedited[:, 0], unedited[:, -1]])] = True
    touching[0] = False
    return xp.where(touching[unedited] | (final > 0), unedited, 0).astype(xp.int32)


def unfiltered_nuclei(unedited, params: NucleiConfig, *, n_unedited=None, areas=None):
    """CellProfiler's ``small_removed_segmented`` of the primary objects: the
    unedited objects without the border-touching ones (when excluded) and
    without the too-small ones, but with the too-large ones; not hole-filled,
    unedited numbering (``identifyprimaryobjects``: ``filter_on_size(...,
    return_only_small=True)`` after ``filter_on_border``). ``n_unedited``: an
    upper bound of the labels when known on the host (else read: one copy);
    ``areas``: their ``bincount`` (length ``n_unedited + 1``) when already computed.
    """
    xp = backend_of(unedited).xp
    m = n_unedited if n_unedited is not None else int(unedited.max()) if unedited.size else 0
    if m == 0:
        return unedited.astype(xp.int32)
    if areas is None:
        areas = xp.bincount(unedited.ravel(), minlength=m + 1)
    keep = areas >= math.pi * params.min_diameter**2 / 4
    if params.exclude_border:
        keep[xp.concatenate([unedited[0, :], unedited[-1, :], unedited[:, 0], unedited[:, -1]])] = False
    return _lut_apply(xp, unedited, keep)


def _keep_final_objects(grown, unedited, final, n_final: int, *, n_unedited=None):
    """Relabel objects grown from ``unedited`` seeds to the ``final`` numbering;
    objects whose seed was filtered out (no final label) become background."""
    xp = backend_of(grown, unedited, final).xp
    if n_unedited is None:
        n_unedited = int(unedited.max()) if unedited.size else 0
    lut = xp.zeros(n_unedited + 1, dtype=xp.int32)
    inside = final > 0
    # every final nucleus is exactly one unedited object: map its number over
    lut[unedited[inside]] = final[inside].astype(xp.int32)
    return lut[grown]


def cytoplasm(cells, nuclei):
    """IdentifyTertiaryObjects (shrink primary by 1 px): cells where the nucleus
    is absent or on its outline; same labels as the cells."""
    xp = backend_of(cells, nuclei).xp
    keep = (nuclei == 0) | outline(nuclei)
    return xp.where(keep, cells, 0).astype(xp.int32)


# --------------------------------------------------------------------------- site
def channel_warnings(images: Mapping) -> list:
    """QC messages for all-zero or saturated channels (see module docstring)."""
    filled, values = _channel_stats(images)
    host = _host_floats(backend_of(*(images[ch] for ch in filled)), values) if filled else []
    return _channel_messages(images, filled, host)


def _channel_stats(images: Mapping):
    """The channels with pixels and, for each, its maximum and saturated fraction
    (0-d arrays on the images' device, two per channel, no host copy)."""
    filled = [ch for ch, img in images.items() if img.size]
    if not filled:
        return [], []
    bk = backend_of(*(images[ch] for ch in filled))
    xp = bk.xp
    values = []
    for ch in filled:
        img = images[ch]
        if not bk.is_gpu and img.dtype in (np.float32, np.float64):
            mx, n_sat = _max_and_saturated(np.ascontiguousarray(img).ravel())
            if not np.isnan(mx):  # (NaN: NumPy's answer below)
                values += [np.float64(mx), np.float64(n_sat) / img.size]  # = np.mean(img >= 1.0)
                continue
        values += [xp.max(img).astype(xp.float64), xp.mean(img >= 1.0)]
    return filled, values


@njit_cached
def _max_and_saturated(flat):
    """The largest value (NaN if any) and the number of values ``>= 1`` of a float array."""
    mx = flat[0]
    n = 0
    for i in range(flat.size):
        v = flat[i]
        if np.isnan(v):
            return np.nan, 0
        if v > mx:
            mx = v
        if v >= 1.0:
            n += 1
    return np.float64(mx), n


def _channel_messages(images: Mapping, filled: list, host: list) -> list:
    """:func:`channel_warnings`' messages from the host values of :func:`_channel_stats`."""
    stats = {ch: host[2 * i : 2 * i + 2] for i, ch in enumerate(filled)}
    out = []
    for ch, img in images.items():
        if img.size == 0 or stats[ch][0] <= 0.0:
            out.append(f"channel {ch}: all pixels are zero")
            continue
        frac = stats[ch][1]
        if frac > SATURATION_WARN_FRACTION:
            out.append(
                f"channel {ch}: {100 * frac:.1f}% of pixels are saturated "
                f"(> {100 * SATURATION_WARN_FRACTION:.0f}%)"
            )
    return out


def segment_site(
    images: Mapping, seg: Optional[SegmentationConfig] = None, dna_bg: Optional[DnaBackgroundConfig] = None
) -> Segmentation:
    """Nuclei, cells and cytoplasm of one site.

    Parameters
    ----------
    images : dict
        channel -> illumination-corrected float image in [0, 1] (NumPy or CuPy).
    seg : SegmentationConfig, optional
        Defaults to CPJUMP1's settings.
    dna_bg : DnaBackgroundConfig, optional
        DNA background subtracted before nuclei (CPJUMP1: block 30, smoothing 50).

    Returns
    -------
    Segmentation
        Labels on the device of the images, the image measurements and QC warnings.

    Raises
    ------
    SegmentationError
        When a channel the segmentation needs is missing or not 2-D.
    """
    seg = seg or SegmentationConfig()
    dna_bg = dna_bg or DnaBackgroundConfig()
    for role, ch in (("nuclei", seg.nuclei.channel), ("cells", seg.cells.channel)):
        if ch not in images:
            raise SegmentationError(f"segmentation: {role} channel {ch!r} is not among the images {list(images)}")
        if images[ch].ndim != 2:
            raise SegmentationError(f"segmentation: channel {ch!r} is not a 2-D image (shape {images[ch].shape})")
    filled, stats = _channel_stats(images)
    dna = images[seg.nuclei.channel]
    bk = backend_of(dna)
    xp = bk.xp
    if dna_bg.enabled:
        dna = subtract_background(dna, dna_background(dna, dna_bg.block_size, dna_bg.smoothing))
    nuclei, m_nuc, unedited, n_unedited, areas = _nuclei(dna, seg.nuclei)
    cells, m_cells, cells_unfiltered = _cells(images[seg.cells.channel], nuclei, seg.cells,
                                              unedited_nuclei=unedited, n_bound=n_unedited)
    cyto = cytoplasm(cells, nuclei)
    n_cyto = (xp.bincount(cyto.ravel(), minlength=2)[1:] > 0).sum()
    measurements = {**m_nuc, **m_cells, "Count_Cytoplasm": n_cyto}
    # every measurement and the channel QC values with one device->host copy
    host = _host_floats(bk, [*measurements.values(), *stats])
    measurements = dict(zip(measurements, host[: len(measurements)]))
    warnings = _channel_messages(images, filled, host[len(measurements):])
    unfiltered = {"Nuclei": unfiltered_nuclei(unedited, seg.nuclei, n_unedited=n_unedited, areas=areas),
                  "Cells": cells_unfiltered}
    return Segmentation(nuclei, cells, cyto, measurements, warnings, unfiltered)
