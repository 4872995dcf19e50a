"""Permutation nulls of average precision and their p-values.

Reproduces ``copairs.compute.random_ap`` / ``get_null_dists`` / ``p_values``
and the mAP-level p-value of ``copairs.map.get_map_pvalue`` (copairs 0.5.5):
the null of a query with ``n_pos`` positives among ``N`` candidates is the AP
of random rank lists with ``n_pos`` positives placed uniformly among ``N``
positions; ``p = (#{null >= AP} + 1) / (null_size + 1)``.

Deliberate differences:

* each null is seeded by ``SeedSequence([seed, n_pos, N])``, so it depends only
  on its configuration, never on which other configurations exist or on the
  MPI rank (copairs draws per-configuration seeds from the list of
  configurations present); p-values therefore agree with copairs' within
  Monte Carlo error, not bit for bit;
* positions are drawn without building the ``null_size x N`` permutation
  matrix when ``n_pos`` is small: Floyd's algorithm samples the k-subset
  directly in O(k^2) per permutation (exactly uniform over k-subsets); large
  ``n_pos`` uses the first ``n_pos`` of a random order (argpartition of
  uniform keys), as copairs does;

Kept from copairs on purpose, so that p-values agree: null APs are float32,
computed as copairs computes them (float32 precisions ``j / r_j`` summed in
float32), and compared with the float64 observed AP. A null AP equal to the
observed one therefore counts as ``>=`` only when its float32 rounding is not
below the float64 value (e.g. ``1/3`` ties, ``1/7`` does not) -- copairs'
convention, which shifts such p-values by at most ``P(null == AP)``.

Null generation uses NumPy's ``Generator`` on the host so that the numbers
are the same on CPU and GPU installations.

Compiled kernels (numba, already a dependency for morphology; imported here
directly, not through :mod:`hpc_profiler.morphology`, whose import pulls in
the segmentation kernels the evaluate ranks never run): Floyd's set
logic and the null APs (:func:`_floyd_null_ap`) and the class mAP nulls
(:func:`_map_null_counts`) run as loops over blocks of permutations that stay
in cache, instead of NumPy passes over ``(k, null_size)`` temporaries. They
consume the same random numbers and repeat NumPy's float32 operations in
NumPy's order, so every null and p-value is bit for bit what the NumPy code
gave (``tests/test_evaluate_ap.py``). At JUMP scale (``scripts/bench_evaluate.py``,
109 configurations, 5,000 classes, 100,000 permutations, one core) the nulls
took 1.0 CPU s instead of 1.7 and the class p-values 0.9 instead of 2.0 in the
same loaded run (cProfile, CPU time).
"""
from __future__ import annotations

import time

import numba
import numpy as np

def njit_cached(fn):
    """``numba.njit(cache=True, nogil=True)``, or without the on-disk cache where none is usable.

    The same rule as :func:`hpc_profiler.morphology.njit_cached`.
    """
    try:
        return numba.njit(cache=True, nogil=True)(fn)
    except RuntimeError:  # "cannot cache function ...: no locator available"
        return numba.njit(cache=False, nogil=True)(fn)


#: Elements per generated chunk (bounds memory of a null).
CHUNK_ELEMENTS = 1 << 23


def null_rng(seed: int, n_pos: int, total: int) -> np.random.Generator:
    """The generator of the null for ``(n_pos, total)``: independent of rank and of other nulls."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(n_pos), int(total)]))


def _floyd_draws(rng, size: int, k: int, total: int) -> np.ndarray:
    """The random numbers of Floyd's algorithm for ``size`` k-subsets: ``(k, size)``.

    Row ``c`` is uniform on ``0..total-k+c``.

    One ``rng.integers`` call per step, in step order: this fixes the random
    stream of the nulls (the kernels below only combine these numbers).
    """
    dt = np.int16 if total < 2**15 else np.int32
    draws = np.empty((k, size), dtype=dt)
    for col, jj in enumerate(range(total - k, total)):
        draws[col] = rng.integers(0, jj + 1, size=size, dtype=dt)
    return draws


def _floyd_subset(draws, i: int, total: int, pos) -> None:
    """Floyd's k-subset of permutation ``i`` from its draws, sorted, into ``pos`` (``k`` int64).

    Step ``c`` (``jj = total - k + c``) adds its draw ``t``, or ``jj`` when ``t``
    was already chosen (then ``jj`` exceeds every chosen value); insertion
    keeps ``pos`` sorted.
    """
    k = draws.shape[0]
    for col in range(k):
        t = np.int64(draws[col, i])
        seen = False
        for p in range(col):
            if pos[p] == t:
                seen = True
                break
        v = np.int64(total - k + col) if seen else t
        p = col
        while p > 0 and pos[p - 1] > v:
            pos[p] = pos[p - 1]
            p -= 1
        pos[p] = v


def _floyd_positions(draws, total: int) -> np.ndarray:
    """The sorted 0-based positions ``(size, k)`` of the Floyd subsets of ``draws`` (one by one)."""
    k, m = draws.shape
    out = np.empty((m, k), dtype=np.int64)
    for i in range(m):
        _floyd_subset(draws, i, total, out[i])
    return out


#: Permutations per block of :func:`_floyd_null_ap` (its ``(k, block)`` state stays in the L1/L2 cache).
FLOYD_BLOCK = 1024


def _floyd_null_ap(draws, total: int, out) -> None:
    """float32 AP of the Floyd subsets of ``draws`` (``k <= 128``, ``total < 2**16``), as :func:`null_ap` gives it.

    Blocks of permutations are processed column by column, so every step is
    a loop over the block that the compiler vectorizes. Floyd's step ``c``
    with draws ``t``: ``v = jj`` where ``t`` is among the ``c`` values
    chosen so far, else ``t``; the chosen values ``S`` are kept sorted by
    inserting ``v``: ``S'[c] = max(v, S[c-1])``, ``S'[p] = max(min(S[p], v),
    S[p-1])``, ``S'[0] = min(S[0], v)`` (``p`` descending so that ``S[p-1]``
    is still the old value).

    AP as :func:`null_ap` computes it below 2**16 candidates: ``float32(j) /
    float32(rank_j)``, each row summed in float32 in NumPy's pairwise order
    (``x.sum(axis=1)`` of a C-contiguous float32 ``(m, k)`` array is, for
    ``k <= 128``: from 0, one by one when ``k < 8``; else 8 interleaved
    partial sums combined ``((r0+r1)+(r2+r3))+((r4+r5)+(r6+r7))``, then the
    remainder one by one), then divided by ``float32(k)``. The bits are
    NumPy's (``tests/test_evaluate_ap.py`` compares on the installed NumPy).
    """
    k, m = draws.shape
    srt = np.empty((k, FLOYD_BLOCK), dtype=np.int32)
    v = np.empty(FLOYD_BLOCK, dtype=np.int32)
    acc = np.empty((8, FLOYD_BLOCK), dtype=np.float32)
    tot = np.empty(FLOYD_BLOCK, dtype=np.float32)
    kf = np.float32(k)
    for b0 in range(0, m, FLOYD_BLOCK):
        w = min(FLOYD_BLOCK, m - b0)
        for col in range(k):
            jj = np.int32(total - k + col)
            d = draws[col]
            for i in range(w):
                v[i] = d[b0 + i]
            for p in range(col):  # jj is above every chosen value: no later p matches it again
                s = srt[p]
                for i in range(w):
                    if s[i] == v[i]:
                        v[i] = jj
            if col == 0:
                for i in range(w):
                    srt[0, i] = v[i]
                continue
            for i in range(w):
                srt[col, i] = max(v[i], srt[col - 1, i])
            for p in range(col - 1, 0, -1):
                for i in range(w):
                    srt[p, i] = max(min(srt[p, i], v[i]), srt[p - 1, i])
            for i in range(w):
                srt[0, i] = min(srt[0, i], v[i])
        if k < 8:
            for i in range(w):
                tot[i] = 0
            for j in range(k):
                fj = np.float32(j + 1)
                for i in range(w):
                    tot[i] += fj / np.float32(srt[j, i] + 1)
        else:
            for q in range(8):
                fj = np.float32(q + 1)
                for i in range(w):
                    acc[q, i] = fj / np.float32(srt[q, i] + 1)
            j = 8
            while j < k - k % 8:
                for q in range(8):
                    fj = np.float32(j + q + 1)
                    for i in range(w):
                        acc[q, i] += fj / np.float32(srt[j + q, i] + 1)
                j += 8
            for i in range(w):
                tot[i] = ((acc[0, i] + acc[1, i]) + (acc[2, i] + acc[3, i])) + (
                    (acc[4, i] + acc[5, i]) + (acc[6, i] + acc[7, i]))
            while j < k:
                fj = np.float32(j + 1)
                for i in range(w):
                    tot[i] += fj / np.float32(srt[j, i] + 1)
                j += 1
        for i in range(w):
            out[b0 + i] = (np.float32(0.0) + tot[i]) / kf


_floyd_subset = njit_cached(_floyd_subset)
_floyd_positions = njit_cached(_floyd_positions)
_floyd_null_ap = njit_cached(_floyd_null_ap)


def _partition_positions(rng, size: int, k: int, total: int) -> np.ndarray:
    """``size`` uniform k-subsets, each sorted: the first k of a uniformly random order of ``range(total)``."""
    keys = rng.random((size, total))
    pos = np.argpartition(keys, k - 1, axis=1)[:, :k] if k < total else np.argsort(keys, axis=1)
    pos.sort(axis=1)
    return pos


def null_cost(n_pos: int, total: int) -> float:
    """Time per permutation of :func:`null_distribution`, relative (for balancing ranks).

    Fitted to one core's times per 100,000 permutations (ms, 2026-11-28): the
    compiled Floyd path ``0.6 k + 0.03 k^2`` (the ``k`` draws dominate up to
    ``k`` ~ 20), the per-permutation Floyd path ``4 k + 0.09 k^2``, the
    random-order path ``1.3 N`` (``N`` uniform keys per permutation).
    """
    k, n = float(n_pos), float(total)
    if n_pos * n_pos > 4 * total:
        return 1.3 * n + 0.6 * k
    if total < 2**16 and n_pos <= 128:
        return 0.6 * k + 0.03 * k * k
    return 4.0 * k + 0.09 * k * k


def null_ap(ranks: np.ndarray, total: int | None = None) -> np.ndarray:
    """float32 AP of rank lists from sorted 1-based positive ranks, as ``copairs.compute.average_precision``.

    Ranks take copairs' integer type (``uint16`` below 2**16 candidates, else
    ``uint32``) so the arithmetic, and hence the float32 rounding, is copairs'.
    """
    ranks = np.asarray(ranks)
    total = int(ranks.max()) if total is None else total
    ranks = ranks.astype(np.uint16 if total < 2**16 else np.uint32, copy=False)
    k = ranks.shape[1]
    pr = np.arange(1, k + 1, dtype=np.float32) / ranks
    return (pr.sum(axis=1) / k).astype(np.float32)


def null_distribution(n_pos: int, total: int, size: int, seed: int) -> np.ndarray:
    """AP of ``size`` random rank lists with ``n_pos`` positives among ``total`` (float32, unsorted).

    Reproduces ``copairs.compute.random_ap`` with rank-independent seeding
    (:func:`null_rng`). Ranks are 1-based, so ``n_pos = 1`` gives
    ``AP = 1 / rank`` with the rank uniform on ``1..total``.
    """
    if not 1 <= n_pos <= total:
        raise ValueError(f"null needs 1 <= n_pos <= total, got n_pos={n_pos}, total={total}")
    rng = null_rng(seed, n_pos, total)
    floyd = n_pos * n_pos <= 4 * total
    width = n_pos if floyd else total
    chunk = max(1, CHUNK_ELEMENTS // max(width, 1))
    out = np.empty(size, dtype=np.float32)
    for a in range(0, size, chunk):
        m = min(chunk, size - a)
        if floyd and total < 2**16 and n_pos <= 128:
            _floyd_null_ap(_floyd_draws(rng, m, n_pos, total), total, out[a : a + m])
            continue
        pos = _floyd_positions(_floyd_draws(rng, m, n_pos, total), total) if floyd else \
            _partition_positions(rng, m, n_pos, total)
        out[a : a + m] = null_ap(pos + 1, total)
    return out


def p_values(ap: np.ndarray, sorted_null: np.ndarray) -> np.ndarray:
    """``(#{null >= ap} + 1) / (len(null) + 1)`` for each observed AP (``copairs.compute.p_values``)."""
    m = len(sorted_null)
    num = m - np.searchsorted(sorted_null.astype(np.float64), np.asarray(ap, dtype=np.float64), "left")
    return (num + 1) / (m + 1)


def map_p_value(map_score: float, member_nulls: np.ndarray) -> float:
    """mAP-level p-value: the null of a class is the mean of its members' nulls, permutation by permutation.

    Reproduces ``copairs.map.get_map_pvalue``: ``member_nulls`` is
    ``(n_members, null_size)`` (members with the same configuration share the
    same null row, as in copairs), averaged in float32 as copairs does, and
    ``p = (#{null_mean > mAP} + 1) / (null_size + 1)`` with copairs' strict ``>``.

    The comparison is made in float32, as in copairs: it hands the mAP to
    NumPy as a Python float, which NumPy 2 compares at the precision of the
    float32 null (a null mean equal to ``float32(mAP)`` does not count). A
    NumPy float64 here would compare in float64 and count ``float32(1/13) >
    1/13``: p-values of small classes would move by ``P(null == mAP)``.

    ``member_nulls`` may also be a sequence of 1-D float32 nulls (one per
    member, shared objects allowed): they are summed row by row into one
    float32 accumulator, which is what ``mean(axis=0)`` of the stacked array
    does (rows added in order, then divided by the count), without building
    the ``(n_members, null_size)`` copy.
    """
    rows = list(member_nulls)
    acc = np.array(rows[0], dtype=np.float32, copy=True)
    for r in rows[1:]:
        acc += np.asarray(r, dtype=np.float32)
    null_mean = acc / np.float32(len(rows))
    num = int((null_mean > np.float32(map_score)).sum())
    return (num + 1) / (null_mean.shape[0] + 1)


def map_class_cost(n_members, n_sharing=1) -> np.ndarray:
    """Relative time of one class in :func:`map_p_values`, in member row passes (for balancing ranks).

    Fitted (least squares, CPU seconds at 100,000 permutations, 2026-11-28)
    over 30 class sets of issue 15's set (``scripts/bench_evaluate.py`` case
    (c)): ~32 us per class (its compare pass and its Python set-up: the
    member list, the sequence lookup), ~15 us per distinct member sequence
    (the first load of a null mean) and ~5 us per member of a distinct
    sequence. Classes whose members have the same sequence of configurations
    share one null mean, so a class pays ``1 / n_sharing`` of it:
    ``6 + (n_members + 3) / n_sharing`` member passes.
    """
    n_members = np.asarray(n_members, dtype=np.float64)
    return 6.0 + (n_members + 3.0) / np.asarray(n_sharing, dtype=np.float64)


#: Permutations per block of :func:`_map_null_counts` (a block of every configuration row stays in cache).
MAP_BLOCK = 2048


def _map_null_counts(table, members, seq_start, cls_seq_start, scores, counts) -> None:
    """``counts[c] = #{permutations: null mean of class c > scores[c]}`` for classes grouped by member sequence.

    Sequence ``u`` is the member rows ``members[seq_start[u]:seq_start[u + 1]]``
    of ``table`` (one float32 null per configuration, ``(n_conf, S)``), in
    member order; its classes are ``cls_seq_start[u]:cls_seq_start[u + 1]``
    (``scores`` and ``counts`` in that order). The null mean of a block of
    permutations is accumulated in float32 row by row in member order and
    divided by ``float32(n_members)``: :func:`map_p_value`'s arithmetic, so
    the same bits; it is computed once per sequence and compared with the
    float32 mAP of each of its classes.
    """
    n_seq = len(seq_start) - 1
    size = table.shape[1]
    buf = np.empty(MAP_BLOCK, dtype=np.float32)
    for b0 in range(0, size, MAP_BLOCK):
        w = min(MAP_BLOCK, size - b0)
        b1 = b0 + w
        acc = buf[:w]
        for u in range(n_seq):
            a, e = seq_start[u], seq_start[u + 1]
            m = a
            while m < e:  # up to four rows per pass over acc, added one after another in member order
                q = min(4, e - m)
                r1 = table[members[m], b0:b1]
                r2 = table[members[m + min(1, q - 1)], b0:b1]
                r3 = table[members[m + min(2, q - 1)], b0:b1]
                r4 = table[members[m + q - 1], b0:b1]
                if m == a:
                    if q == 1:
                        acc[:] = r1
                    elif q == 2:
                        for t in range(w):
                            acc[t] = r1[t] + r2[t]
                    elif q == 3:
                        for t in range(w):
                            acc[t] = (r1[t] + r2[t]) + r3[t]
                    else:
                        for t in range(w):
                            acc[t] = ((r1[t] + r2[t]) + r3[t]) + r4[t]
                elif q == 1:
                    for t in range(w):
                        acc[t] += r1[t]
                elif q == 2:
                    for t in range(w):
                        acc[t] = (acc[t] + r1[t]) + r2[t]
                elif q == 3:
                    for t in range(w):
                        acc[t] = ((acc[t] + r1[t]) + r2[t]) + r3[t]
                else:
                    for t in range(w):
                        acc[t] = (((acc[t] + r1[t]) + r2[t]) + r3[t]) + r4[t]
                m += q
            nf = np.float32(e - a)
            for c in range(cls_seq_start[u], cls_seq_start[u + 1]):
                sc = scores[c]
                n = 0
                for t in range(w):
                    n += acc[t] / nf > sc
                counts[c] += n


_map_null_counts = njit_cached(_map_null_counts)


def map_p_values(map_scores, member_confs: list, nulls_by_conf: dict) -> np.ndarray:
    """:func:`map_p_value` of many classes at once, bit for bit (one pass over the nulls, compiled).

    Parameters
    ----------
    map_scores : array (K,)
        mAP of each class.
    member_confs : list of sequences
        Configuration key of each member of each class, in member order
        (copairs' order: rows of the AP table).
    nulls_by_conf : dict
        Configuration key -> raw float32 null (all of the same length ``S``).

    Classes whose member sequences are equal share one null mean (copairs'
    ``get_map_pvalue`` computes the same mean once per class); on CPJUMP1's
    layout (every compound on the same plates) that is one mean for all.
    Returns ``(#{null mean > mAP} + 1) / (S + 1)`` per class.
    """
    n_cls = len(map_scores)
    if n_cls == 0:
        return np.zeros(0)
    keys = list(dict.fromkeys(k for seq in member_confs for k in seq))
    row = {k: i for i, k in enumerate(keys)}
    size = len(nulls_by_conf[keys[0]])
    table = np.empty((len(keys), size), dtype=np.float32)
    for k, i in row.items():
        table[i] = nulls_by_conf[k]
    seq_of: dict[tuple, int] = {}
    cls_seq = np.empty(n_cls, dtype=np.int64)
    for c, seq in enumerate(member_confs):
        cls_seq[c] = seq_of.setdefault(tuple(row[k] for k in seq), len(seq_of))
    seqs = list(seq_of)
    seq_start = np.zeros(len(seqs) + 1, dtype=np.int64)
    seq_start[1:] = np.cumsum([len(s) for s in seqs])
    members = np.fromiter((i for s in seqs for i in s), dtype=np.int64, count=int(seq_start[-1]))
    order = np.argsort(cls_seq, kind="stable")
    cls_seq_start = np.searchsorted(cls_seq[order], np.arange(len(seqs) + 1))
    # copairs compares with float32(mAP) (:func:`map_p_value`)
    scores = np.asarray(map_scores, dtype=np.float64)[order].astype(np.float32)
    counts = np.zeros(n_cls, dtype=np.int64)
    _map_null_counts(table, members, seq_start, cls_seq_start, scores, counts)
    out = np.empty(n_cls)
    out[order] = (counts + 1) / (size + 1)
    return out


def load_kernels() -> float:
    """Load (or compile, on a machine's first run) this module's numba kernels; returns the seconds it took.

    The first call of a kernel in a process costs ~0.3-0.4 s of numba start-up
    and cache loading, paid once per process (per MPI rank). Entry points call
    this before they read the profiles so that the cost is a start-up cost of
    the rank, not a stall inside the first null; benchmarks report it apart.
    Loaded with the signatures the nulls call them with (every call of a run
    is a cache hit). :func:`_floyd_positions`, used only for nulls with over
    128 positives or 65,536 candidates, is left to load at its first call:
    every rank would pay for loading it, most runs never call it.
    """
    t0 = time.perf_counter()
    total = 9
    draws = np.zeros((2, 1), dtype=np.int16)
    _floyd_null_ap(draws, total, np.empty(1, dtype=np.float32))
    table = np.zeros((1, 1), dtype=np.float32)
    one = np.zeros(2, dtype=np.int64)
    one[1] = 1
    _map_null_counts(table, one[:1], one, one, np.zeros(1, dtype=np.float32), np.zeros(1, dtype=np.int64))
    return time.perf_counter() - t0
