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
"""
from __future__ import annotations

import numpy as np

#: Elements per generated chunk (bounds memory of a null).
CHUNK_ELEMENTS = 1 << 23


def null_rng(seed: int, n_pos: int, total: int) -> np.random.Generator:
    """The generator of the null for ``(n_pos, total)``: independent of rank and of other nulls."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(n_pos), int(total)]))


def _floyd_positions(rng, size: int, k: int, total: int) -> np.ndarray:
    """``size`` uniform k-subsets of ``range(total)``, each sorted, by Floyd's algorithm.

    Step ``jj = total-k .. total-1`` draws ``t`` uniform on ``0..jj`` and adds
    ``jj`` instead when ``t`` was already chosen (Floyd's exact k-subset
    sampler), vectorized over the subsets. The chosen values are kept sorted
    by insertion: with the old sorted values ``S``, the new ones are
    ``S'[p] = max(min(S[p], v), S[p-1])``. Columns are contiguous
    (``(k, size)``) so every step is a few vector operations.
    """
    dt = np.int16 if total < 2**15 else np.int32
    srt = np.empty((k, size), dtype=dt)
    for col, jj in enumerate(range(total - k, total)):
        t = rng.integers(0, jj + 1, size=size, dtype=dt)
        if col == 0:
            srt[0] = t
            continue
        v = np.where((srt[:col] == t).any(axis=0), dt(jj), t)
        srt[col] = np.maximum(v, srt[col - 1])
        for p in range(col - 1, 0, -1):  # descending: srt[p - 1] still holds the old value
            srt[p] = np.maximum(np.minimum(srt[p], v), srt[p - 1])
        srt[0] = np.minimum(srt[0], v)
    return np.ascontiguousarray(srt.T)


def _partition_positions(rng, size: int, k: int, total: int) -> np.ndarray:
    """``size`` uniform k-subsets, each sorted: the first k of a uniformly random order of ``range(total)``."""
    keys = rng.random((size, total))
    pos = np.argpartition(keys, k - 1, axis=1)[:, :k] if k < total else np.argsort(keys, axis=1)
    pos.sort(axis=1)
    return pos


def null_cost(n_pos: int, total: int) -> float:
    """Work per permutation of :func:`null_distribution` (for balancing ranks)."""
    return float(min(n_pos * n_pos, 4 * total) + n_pos)


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
        pos = _floyd_positions(rng, m, n_pos, total) if floyd else _partition_positions(rng, m, n_pos, total)
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
