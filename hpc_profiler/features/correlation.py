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

Everything is a per-object sum over the labelled pixels grouped by object,
computed two ways that give the same numbers (``engine`` of
:func:`measure_correlation`):

* on the CPU, a numba kernel walks each object once for all channels and
  pairs; the sums that can cancel (Pearson's) are NumPy's ``add.reduceat``
  bit for bit (:mod:`._pairwise`), the non-negative thresholded sums are
  accumulated in one pass (within ~1e-14 relative);
* on other backends (the GPU), backend array code stacks the channels and
  the pairs into ``(C, P)`` / ``(Q, P)`` arrays and reduces each stack with
  one ``reduceat``: a few hundred launches per site whatever the number of
  objects, no device->host copy.

The dense ranks come from one sort per channel (of the site's labelled
pixels on the CPU), restricted to each object set by flags and a prefix count
(on the CPU one bit per image rank, a count per 64-bit word and a popcount,
for all channels in one walk over the set's pixels).

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
from ._cpu_segments import float32_index_keys, float32_order_key
from ._pairwise import scratch as _pairwise_scratch
from ._pairwise import segment_total
from ._objects import ObjectPixels, object_pixels, repeat_index
from ..morphology import njit_cached

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

    For float32 values - or, on the CPU, values that are all exactly float32
    (the pipeline's images are float32) - the order comes from one ``sort``
    of 64-bit keys (the float32's order-preserving bit pattern in the high
    word, the pixel index in the low word) instead of an ``argsort``: the
    same permutation up to the order of equal values, which dense ranks do
    not see, several times faster. Other inputs use ``argsort``. The choice
    is made from the dtype on a GPU (no device read).
    """
    if values.dtype == xp.float32:
        v32 = values
    elif xp is np and values.shape[0] < 2**32 and bool((values.astype(np.float32) == values).all()):
        v32 = values.astype(np.float32)
    else:
        return xp.argsort(values)
    if values.shape[0] >= 2**32:
        return xp.argsort(values)
    u = (v32 + xp.float32(0.0)).view(xp.uint32)  # + 0.0 turns -0.0 into 0.0
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


def _ranks_from_sorted_keys(key):
    """Dense ranks from ascending 64-bit keys ``value bits << 32 | pixel index`` (numba)."""
    rank = np.empty(key.shape[0], dtype=np.int64)
    _ranks_into(key, rank)
    return rank


def _ranks_into(key, rank):
    """``rank[pixel index] = `` dense rank, from ascending keys ``value bits << 32 | pixel index`` (numba)."""
    if key.shape[0] == 0:
        return
    r = 0
    prev = key[0] >> 32
    for k in range(key.shape[0]):
        hi = key[k] >> 32
        if hi != prev:
            r += 1
            prev = hi
        rank[key[k] & 0xFFFFFFFF] = r


_ranks_into = njit_cached(_ranks_into)
_ranks_from_sorted_keys_jit = njit_cached(_ranks_from_sorted_keys)


def _subset_ranks(global_rank, n_ranks):
    """:func:`subset_dense_rank` in one numba pass over the flags (float64 result)."""
    present = np.zeros(n_ranks, dtype=np.int32)
    out = np.empty(global_rank.shape[0])
    _subset_ranks_into(global_rank, np.arange(global_rank.shape[0]), present, out)
    return out


def _subset_ranks_into(ranks, flat, present, out):
    """``out[i] = `` dense rank of ``ranks[flat[i]]`` among ``ranks[flat]``; ``present`` is zeroed scratch."""
    m = flat.shape[0]
    for i in range(m):
        present[ranks[flat[i]]] = 1
    acc = 0
    for r in range(present.shape[0]):
        acc += present[r]
        present[r] = acc
    for i in range(m):
        out[i] = present[ranks[flat[i]]] - 1.0
    present[:] = 0


def _popcount64(x):
    """Number of set bits of the uint64 ``x`` (SWAR; numba)."""
    x = x - ((x >> np.uint64(1)) & np.uint64(0x5555555555555555))
    x = (x & np.uint64(0x3333333333333333)) + ((x >> np.uint64(2)) & np.uint64(0x3333333333333333))
    x = (x + (x >> np.uint64(4))) & np.uint64(0x0F0F0F0F0F0F0F0F)
    return (x * np.uint64(0x0101010101010101)) >> np.uint64(56)


_popcount64 = njit_cached(_popcount64)


def _set_values_and_ranks(image, ranks, flat, words, prefix, vals, out):
    """One channel: the object set's values (float64) and its dense ranks from the image ranks (numba).

    The ranks present in the set are bits of ``words`` (zeroed uint64
    scratch, one bit per image rank: 1/64 of an int32 count per rank, so
    the random accesses stay in the L2 cache); a pixel's rank in the set is
    the number of set bits below its image rank (a prefix count per word and
    a popcount). ``words`` is zeroed again on return.
    """
    m = flat.shape[0]
    for i in range(m):
        p = flat[i]
        vals[i] = image[p]
        r = ranks[p]
        out[i] = r
        words[r >> 6] |= np.uint64(1) << np.uint64(r & 63)
    acc = 0
    for w in range(words.shape[0]):
        prefix[w] = acc
        acc += _popcount64(words[w])
    for i in range(m):
        r = np.int64(out[i])
        below = words[r >> 6] & ((np.uint64(1) << np.uint64(r & 63)) - np.uint64(1))
        out[i] = prefix[r >> 6] + _popcount64(below)
    words[:] = 0


def _set_values_and_ranks_all(images, ranks, flat, words, prefix, vals, out):
    """:func:`_set_values_and_ranks` for all channels at once (``images``, ``ranks``: tuples of flat arrays;
    ``words``/``prefix``/``vals``/``out``: one row per channel): one walk over the set's pixels (numba)."""
    m = flat.shape[0]
    nch = len(images)
    for i in range(m):
        p = flat[i]
        for ch in range(nch):
            vals[ch, i] = images[ch][p]
            r = ranks[ch][p]
            out[ch, i] = r
            words[ch, r >> 6] |= np.uint64(1) << np.uint64(r & 63)
    for ch in range(nch):
        wc = words[ch]
        pc = prefix[ch]
        acc = 0
        for w in range(wc.shape[0]):
            pc[w] = acc
            acc += _popcount64(wc[w])
        oc = out[ch]
        for i in range(m):
            r = np.int64(oc[i])
            below = wc[r >> 6] & ((np.uint64(1) << np.uint64(r & 63)) - np.uint64(1))
            oc[i] = pc[r >> 6] + _popcount64(below)
        wc[:] = 0


_subset_ranks_into = njit_cached(_subset_ranks_into)
_set_values_and_ranks_jit = njit_cached(_set_values_and_ranks)
_set_values_and_ranks_all_jit = njit_cached(_set_values_and_ranks_all)
_subset_ranks_jit = njit_cached(_subset_ranks)


def _gather_masked_float32(flat, mask, v32, sel):
    """The values of the pixels where ``mask`` (uint8) is set, as float32, and their indices (numba).

    Returns their number, or 0 when there is none, one is NaN or one is not
    exactly a float32 (then the caller takes a generic path).
    """
    k = 0
    for p in range(flat.shape[0]):
        if mask[p]:
            x = flat[p]
            y = np.float32(x)
            if x != x or y != x:
                return 0
            v32[k] = y
            sel[k] = p
            k += 1
    return k


def _masked_keys(bits, sel):
    """``key[i] = order(bits[i]) << 32 | sel[i]``: float32 bit patterns in IEEE-754 total order, pixel index (numba)."""
    out = np.empty(bits.shape[0], dtype=np.uint64)
    for i in range(bits.shape[0]):
        out[i] = float32_order_key(bits[i], sel[i])
    return out


_gather_masked_float32_jit = njit_cached(_gather_masked_float32)
_masked_keys_jit = njit_cached(_masked_keys)


def image_dense_ranks(image, mask=None):
    """Dense rank of every pixel of ``image`` among all its pixels, same shape (int64; int32 from the masked CPU path).

    Computed once per channel and site, then restricted to each object set by
    :func:`subset_dense_rank` (one sort per channel instead of one per
    channel and object set). On the CPU, float32 data (or float64 data that
    is exactly float32) is ordered by one ``sort`` of 64-bit keys (value
    bits, pixel index) and ranked in one numba pass over the sorted keys;
    elsewhere by :func:`dense_rank`.

    ``mask`` (bool, same shape), optional: only the ranks of the pixels in
    ``mask`` are wanted (the union of a site's object sets); on the CPU the
    others are not sorted and get rank 0. Ranks among a superset of an object
    set are all :func:`subset_dense_rank` needs, so the result per object set
    is the same. Ignored on other backends (whole-image ranks).
    """
    xp = backend_of(image).xp
    flat = xp.ravel(image)
    if xp is np and mask is not None and 0 < flat.size < 2**32 and flat.dtype in (np.float32, np.float64):
        m = np.ravel(np.asarray(mask, dtype=bool)).view(np.uint8)
        v32 = np.empty(flat.size, dtype=np.float32)
        sel = np.empty(flat.size, dtype=np.uint32)
        k = int(_gather_masked_float32_jit(flat, m, v32, sel))
        if k > 0:  # the masked values are all float32 (exactly) and none is NaN
            key = np.sort(_masked_keys_jit((v32[:k] + np.float32(0.0)).view(np.uint32), sel))
            # int32 (ranks < size < 2**31 here): half the memory of the scattered writes and of the reads per set
            rank = np.zeros(flat.size, dtype=np.int32 if flat.size < 2**31 else np.int64)
            _ranks_into(key, rank)
            return rank.reshape(image.shape)
    if xp is np and 0 < flat.size < 2**32:
        v32 = None
        if flat.dtype == np.float32:
            v32 = flat
        elif flat.dtype.kind == "f":
            c = flat.astype(np.float32)
            if bool((c == flat).all()):
                v32 = c
        if v32 is not None and not bool(np.isnan(v32).any()):
            key = np.sort(float32_index_keys(v32))
            return _ranks_from_sorted_keys_jit(key).reshape(image.shape)
    if flat.dtype != xp.float32:
        flat = flat.astype(xp.float64)
    return dense_rank(xp, flat).reshape(image.shape)


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
    if xp is np and int(n_ranks) < 2**31:
        return _subset_ranks_jit(global_rank.astype(np.int64, copy=False), int(n_ranks))
    # 1-byte flags and 32-bit running counts: a quarter and a half of the memory traffic of int64
    present = xp.zeros(int(n_ranks), dtype=xp.uint8)
    present[global_rank] = 1
    acc = xp.int32 if int(n_ranks) < 2**31 else xp.int64
    return xp.cumsum(present, dtype=acc)[global_rank].astype(xp.float64) - 1.0


def _rows_segment_sum(xp, m, starts, counts):
    """Per-object sums of every row of ``m`` (rows x grouped pixels), ``add.reduceat`` per row.

    The 2-D twin of :func:`hpc_profiler.features._objects.segment_sum`, with
    the same arithmetic (so the same bits on NumPy): ``add.reduceat`` along
    the pixels, trailing empty objects clamped and the cut-off last value put
    back on the device. One launch for all rows; backends without
    ``reduceat`` use one ``bincount`` of ``row * N + object``.
    """
    n = counts.shape[0]
    rows, size = m.shape
    if size == 0:
        return xp.zeros((rows, n))
    try:
        r = xp.add.reduceat(m, xp.minimum(starts, size - 1), axis=1)
    except (AttributeError, NotImplementedError, TypeError):  # backends without ufunc.reduceat
        obj = repeat_index(counts)
        key = (xp.arange(rows, dtype=xp.int64)[:, None] * n + obj[None, :]).ravel()
        return xp.bincount(key, weights=m.ravel(), minlength=rows * n)[: rows * n].reshape(rows, n)
    j = (n - 1) - xp.argmax(counts[::-1] > 0)  # the last object with pixels
    cut = (j < n - 1) & (counts[j] >= 2)
    r[:, j] = r[:, j] + xp.where(cut, m[:, size - 1], 0.0)
    return xp.where(counts > 0, r, 0.0)


def _rows_segment_max(xp, m, obj, n: int):
    """Per-object maxima of every row of ``m`` (one scatter ``maximum.at``; empty objects ``-inf``).

    A scatter rather than ``maximum.reduceat``: CuPy has ``reduceat`` for
    ``add`` only.
    """
    rows = m.shape[0]
    out = xp.full(rows * n, -xp.inf)
    xp.maximum.at(out, (xp.arange(rows, dtype=xp.int64)[:, None] * n + obj[None, :]).ravel(), m.ravel())
    return out.reshape(rows, n)


def _array_sums(xp, vals, ranks, starts, counts, idx, factor, ia, ib, rmax):
    """The per-object sums of :func:`measure_correlation`, as backend array code (the GPU path).

    ``vals`` and ``ranks`` are ``(C, P)`` (channels x grouped pixels); every
    step works on all channels or all pairs at once, so the number of
    launches does not grow with the number of objects, channels or pairs,
    and nothing is read back to the host. Returns ``(chan, pair, any_both)``
    as :func:`_cpu_sums`.
    """
    npix = counts.astype(xp.float64)
    s1 = _rows_segment_sum(xp, vals, starts, counts)
    d = vals - (s1 / npix)[:, idx]
    sxx = _rows_segment_sum(xp, d * d, starts, counts)
    thr = factor * _rows_segment_max(xp, vals, idx, counts.shape[0])
    above = vals >= thr[:, idx]
    tot = _rows_segment_sum(xp, xp.where(above, vals, 0.0), starts, counts)
    both = above[ia] & above[ib]
    xc = xp.where(both, vals[ia], 0.0)
    yc = xp.where(both, vals[ib], 0.0)
    w = (rmax[:, None] - xp.abs(ranks[ia] - ranks[ib])) / rmax[:, None]
    q = ia.shape[0]
    stacked = xp.concatenate([d[ia] * d[ib], xc, yc, xc * w, yc * w, xc * xc, yc * yc, xc * yc])
    pair = _rows_segment_sum(xp, stacked, starts, counts).reshape(8, q, -1)
    return xp.stack([s1, sxx, tot]), pair, both.any(axis=1)


def _cpu_sums_kernel(vals, ranks, starts, counts, factor, ia, ib, rmax, chan, pair, any_both, istack, left):
    """numba twin of :func:`_array_sums`: one walk over each object's pixels.

    The sums that can cancel (per channel: total, squared deviations,
    thresholded total; per pair: the products of deviations of Pearson's r)
    are ``add.reduceat``'s to the bit (first value + NumPy's pairwise sum of
    the rest, see :mod:`._pairwise`, including the clamped last object
    that :func:`_rows_segment_sum` patches). The seven thresholded pair sums
    add non-negative terms (intensities in [0, 1], weights in (0, 1]): they
    are accumulated in one pass without buffers, within ``count * 2**-53``
    relative of the pairwise sums (measured: ~1e-16 on the bench site).
    """
    nch = vals.shape[0]
    n = starts.shape[0]
    nq = ia.shape[0]
    maxc = 0
    last = -1
    for i in range(n):
        if counts[i] > maxc:
            maxc = counts[i]
        if counts[i] > 0:
            last = i
    dev = np.empty((nch, maxc))
    above = np.empty((nch, maxc), dtype=np.bool_)
    buf = np.empty((2, maxc))
    for i in range(n):
        c = counts[i]
        if c == 0:
            continue
        s = starts[i]
        split = i == last and last < n - 1 and c >= 2
        for ch in range(nch):
            v = vals[ch, s:s + c]
            s1 = _total(v, c, split, istack, left)
            mean = s1 / np.float64(c)
            if s1 == s1:  # no NaN in v: four running maxima (the same maximum; thr's sign at 0 compares alike)
                m0 = v[0]
                m1 = v[0]
                m2 = v[0]
                m3 = v[0]
                k = 1
                while k + 4 <= c:
                    m0 = v[k] if v[k] > m0 else m0
                    m1 = v[k + 1] if v[k + 1] > m1 else m1
                    m2 = v[k + 2] if v[k + 2] > m2 else m2
                    m3 = v[k + 3] if v[k + 3] > m3 else m3
                    k += 4
                while k < c:
                    m0 = v[k] if v[k] > m0 else m0
                    k += 1
                vmax = max(max(m0, m1), max(m2, m3))
            else:
                vmax = v[0]
                for k in range(1, c):
                    if v[k] > vmax or v[k] != v[k]:  # NaN propagates, as in maximum.reduceat
                        vmax = v[k]
            thr = factor * vmax
            b0 = buf[0]
            b1 = buf[1]
            for k in range(c):
                dk = v[k] - mean
                dev[ch, k] = dk
                b0[k] = dk * dk
                a = v[k] >= thr
                above[ch, k] = a
                b1[k] = v[k] if a else 0.0
            chan[0, ch, i] = s1
            chan[1, ch, i] = _total(b0, c, split, istack, left)
            chan[2, ch, i] = _total(b1, c, split, istack, left)
        for q in range(nq):
            a = ia[q]
            b = ib[q]
            rm = rmax[q]
            x = vals[a, s:s + c]
            y = vals[b, s:s + c]
            ra = ranks[a, s:s + c]
            rb = ranks[b, s:s + c]
            da = dev[a]
            db = dev[b]
            aa = above[a]
            ab = above[b]
            b0 = buf[0]
            for k in range(c):
                b0[k] = da[k] * db[k]
            # sums of non-negative terms: one sequential pass, no buffers (no
            # cancellation, so within c * 2**-53 relative of the pairwise sum)
            sxc = 0.0
            syc = 0.0
            sxw = 0.0
            syw = 0.0
            sxx = 0.0
            syy = 0.0
            sxy = 0.0
            nb = 0
            for k in range(c):
                if aa[k] and ab[k]:
                    nb += 1
                    xc = x[k]
                    yc = y[k]
                    w = (rm - abs(ra[k] - rb[k])) / rm
                    sxc += xc
                    syc += yc
                    sxw += xc * w
                    syw += yc * w
                    sxx += xc * xc
                    syy += yc * yc
                    sxy += xc * yc
            if nb > 0:
                any_both[q] = True
            pair[0, q, i] = _total(b0, c, split, istack, left)  # Pearson's numerator cancels: NumPy's own sum
            pair[1, q, i] = sxc
            pair[2, q, i] = syc
            pair[3, q, i] = sxw
            pair[4, q, i] = syw
            pair[5, q, i] = sxx
            pair[6, q, i] = syy
            pair[7, q, i] = sxy


def _total_py(v, c, split, istack, left):
    """``add.reduceat`` of ``v[:c]`` as :func:`_rows_segment_sum` computes it (``split``: the patched last object;
    ``istack``, ``left``: :func:`._pairwise.scratch`)."""
    if split:
        return segment_total(v, 0, c - 1, istack, left) + v[c - 1]
    return segment_total(v, 0, c, istack, left)


_total = njit_cached(_total_py)
_cpu_sums_jit = njit_cached(_cpu_sums_kernel)


def _cpu_sums(vals, ranks, starts, counts, factor, ia, ib, rmax):
    """Run the numba kernel; returns ``(chan (3, C, N), pair (8, Q, N), any_both (Q,))``."""
    nch, n, nq = vals.shape[0], starts.shape[0], ia.shape[0]
    chan = np.zeros((3, nch, n))
    pair = np.zeros((8, nq, n))
    any_both = np.zeros(nq, dtype=bool)
    _cpu_sums_jit(np.ascontiguousarray(vals), np.ascontiguousarray(ranks), starts.astype(np.int64),
                  counts.astype(np.int64), float(factor), ia, ib, rmax.astype(np.float64), chan, pair, any_both,
                  *_pairwise_scratch())
    return chan, pair, any_both


def measure_correlation(
    labels,
    n_objects: int,
    images: Mapping[str, object],
    channels: Sequence[str],
    *,
    threshold_percent: float = 15.0,
    objects: ObjectPixels | None = None,
    image_ranks: Mapping[str, object] | None = None,
    engine: str = "auto",
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
    engine : {"auto", "cpu", "array"}
        ``"cpu"``: the numba kernel (NumPy inputs only); ``"array"``: the
        backend array code the GPU runs; ``"auto"``: ``"cpu"`` on NumPy,
        ``"array"`` otherwise. Both give the same bits on NumPy.

    Returns
    -------
    dict[str, array of shape (N,), float64]
        Keys as in :func:`correlation_feature_names`.

    Notes
    -----
    Reproduces CellProfiler 4 ``MeasureColocalization.run_image_pair_objects``
    (see the module docstring for the formulas and the documented differences).
    Pixels are grouped by object once (:class:`ObjectPixels`); every
    per-object quantity is a segment sum. The array code stacks the channels
    and the pairs (``(C, P)`` and ``(Q, P)`` arrays), so it launches the same
    few dozen kernels whatever the number of objects and pairs, with no host
    round trip; the CPU kernel computes the same sums in one walk per object.
    """
    bk = backend_of(labels, *[images[c] for c in channels])
    xp = bk.xp
    n = int(n_objects)
    names = correlation_feature_names(channels)
    if n == 0:
        return {k: xp.zeros(0, dtype=xp.float64) for k in names}
    if engine not in ("auto", "cpu", "array"):
        raise ValueError(f"measure_correlation: engine must be 'auto', 'cpu' or 'array', got {engine!r}")
    if engine == "auto":
        engine = "cpu" if xp is np else "array"
    if engine == "cpu" and xp is not np:
        raise ValueError("measure_correlation: engine 'cpu' needs NumPy arrays")
    labels = xp.asarray(labels)
    op = objects if objects is not None else object_pixels(labels, n)
    starts, counts = op.starts, op.counts
    empty = counts == 0
    if op.flat.shape[0] == 0:  # no labelled pixel (a host-known size): NaN everywhere
        return {k: xp.full(n, xp.nan, dtype=xp.float64) for k in names}
    chans = sorted(channels)
    row = {c: i for i, c in enumerate(chans)}
    pairs = channel_pairs(channels)
    shared = image_ranks is not None and all(c in image_ranks for c in chans)
    if engine == "cpu" and shared and 0 < images[chans[0]].size < 2**31:
        # one numba pass per channel: the set's values and its ranks from the image ranks
        vals = np.empty((len(chans), op.flat.shape[0]))
        ranks = np.empty((len(chans), op.flat.shape[0]))
        nw = (int(images[chans[0]].size) + 63) // 64  # image ranks are below the image's size
        imgs_flat = tuple(np.ravel(images[c]) for c in chans)
        ranks_flat = tuple(np.ravel(image_ranks[c]) for c in chans)
        if len({(a.dtype, a.shape) for a in imgs_flat}) == 1 and len({(a.dtype, a.shape) for a in ranks_flat}) == 1:
            # one walk over the set's pixels for all channels
            _set_values_and_ranks_all_jit(imgs_flat, ranks_flat, op.flat, np.zeros((len(chans), nw), np.uint64),
                                          np.empty((len(chans), nw), np.int64), vals, ranks)
        else:
            words = np.zeros(nw, dtype=np.uint64)
            prefix = np.empty(nw, dtype=np.int64)
            for i, c in enumerate(chans):
                _set_values_and_ranks_jit(imgs_flat[i], ranks_flat[i], op.flat, words, prefix, vals[i], ranks[i])
    else:
        vals = xp.stack([xp.ravel(images[c])[op.flat] for c in chans]).astype(xp.float64)
        ranks = []
        for c in chans:
            if image_ranks is not None and c in image_ranks:
                ranks.append(subset_dense_rank(xp, xp.ravel(image_ranks[c])[op.flat], n_ranks=image_ranks[c].size))
            else:
                ranks.append(dense_rank(xp, vals[row[c]]).astype(xp.float64))
        ranks = xp.stack(ranks)
    ia = np.array([row[a] for a, _ in pairs], dtype=np.int64)
    ib = np.array([row[b] for _, b in pairs], dtype=np.int64)
    factor = threshold_percent / 100.0
    if engine == "cpu":
        rank_max = ranks.max(axis=1)
        rmax = np.maximum(rank_max[ia], rank_max[ib]) + 1.0
        chan, pair, any_both = _cpu_sums(vals, ranks, starts, counts, factor, ia, ib, rmax)
    else:
        ia, ib = bk.asarray(ia), bk.asarray(ib)
        rank_max = ranks.max(axis=1)
        rmax = xp.maximum(rank_max[ia], rank_max[ib]) + 1.0
        with _quiet(xp):
            chan, pair, any_both = _array_sums(xp, vals, ranks, starts, counts, op.obj, factor, ia, ib, rmax)
    sxx, tot = chan[1], chan[2]
    sxy, sxc, syc, sxw, syw, fpsq, spsq, prod = (pair[t] for t in range(8))
    out = {}
    with _quiet(xp):
        corr = sxy / xp.sqrt(sxx[ia] * sxx[ib])
        # CellProfiler writes 0 for every object when no pixel of the image is
        # above both thresholds; decided on the device (no host round trip)
        keep = any_both[:, None]
        m1 = xp.where(keep, sxc / tot[ia], 0.0)
        m2 = xp.where(keep, syc / tot[ib], 0.0)
        rwc1 = xp.where(keep, sxw / tot[ia], 0.0)
        rwc2 = xp.where(keep, syw / tot[ib], 0.0)
        overlap = xp.where(keep, prod / xp.sqrt(fpsq * spsq), 0.0)
        k1 = xp.where(keep, prod / fpsq, 0.0)
        k2 = xp.where(keep, prod / spsq, 0.0)
        table = xp.where(empty[None, None, :], xp.nan, xp.stack([corr, overlap, k1, k2, m1, m2, rwc1, rwc2]))
    for q, (a, b) in enumerate(pairs):
        for t, key in enumerate((f"Correlation_{a}_{b}", f"Overlap_{a}_{b}", f"K_{a}_{b}", f"K_{b}_{a}",
                                 f"Manders_{a}_{b}", f"Manders_{b}_{a}", f"RWC_{a}_{b}", f"RWC_{b}_{a}")):
            out[f"Correlation_{key}"] = table[t, q]
    return {k: out[k] for k in names}


def _quiet(xp):
    """Silence NumPy's 0/0 warnings (CellProfiler's NaN results); CuPy does not warn."""
    return np.errstate(invalid="ignore", divide="ignore")


# ----------------------------------------------------------------- registry entry
def _correlation_names(obj, channels, params) -> list[str]:
    return correlation_feature_names(channels) if len(channels) > 1 else []


def _correlation_measure(ctx) -> dict:
    return measure_correlation(ctx.labels, ctx.n, ctx.images, ctx.channels,
                               threshold_percent=ctx.params.correlation.threshold_percent, objects=ctx.objects,
                               image_ranks=ctx.image_ranks)


from .registry import Family  # noqa: E402  (the entry closes the module)

FAMILY = Family(name="Correlation", names=_correlation_names, measure=_correlation_measure, per_channel=True,
                min_channels=2)
