"""Average precision of rank lists: pairs, cosine blocks and the AP kernel.

Reproduces ``copairs.map.average_precision`` (copairs 0.5.5) for the
``cosine`` and ``abs_cosine`` similarities, number for number:

* pairs follow copairs' rules: rows *i != j* are a positive pair when they hold
  the same value in every ``pos_sameby`` column and different values in every
  ``pos_diffby`` column (negatives likewise); every row in a pair is a query
  and its rank list holds all its partners;
* similarities are rounded to float32 (copairs stores them so) and a rank
  list is ordered by ``float32(1 - sim)`` ascending; **ties are broken in
  favour of positives** (copairs' stable ``lexsort`` keeps positive pairs,
  concatenated first, ahead of tied negatives). The order among tied
  positives does not change AP;
* ``AP = sum_k (R_k - R_{k-1}) P_k = (1/n_pos) sum_j j / r_j`` with ``r_j`` the
  rank of the j-th positive; a query without positives has AP NaN.

Deliberate differences: pairs are enumerated with array index arithmetic
instead of a DuckDB join, similarities come from BLAS blocks (query block x
candidate columns) instead of row-wise products, and the AP kernel sorts
64-bit keys ``(query, float32 bits of 1 - sim)`` instead of building a full
rank list (same ranks, less memory). Cosines may differ from copairs' in the
last float64 bit; after the float32 rounding that copairs applies they are
equal except in the rarest rounding-boundary cases.

The similarity blocks run on the backend of the features (NumPy or CuPy via
:func:`hpc_profiler.backend.backend_of`); pair bookkeeping and the AP kernel
are integer index work on the host.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..backend import backend_of


@dataclass
class RankLists:
    """Candidate pairs of a task, flattened: one entry per (query, candidate).

    Attributes
    ----------
    query, cand : ndarray of int64
        Row indices of the query and of its candidate.
    positive : ndarray of bool
        True for a positive pair, False for a negative one.
    """

    query: np.ndarray
    cand: np.ndarray
    positive: np.ndarray

    def __len__(self) -> int:
        return len(self.query)


def encode_columns(table, columns: list[str]) -> np.ndarray:
    """Integer codes ``(len(table), len(columns))`` of DataFrame columns (equal value, equal code).

    Equality is that of the values (copairs' SQL equality on metadata; a
    missing value is one more value); codes follow the order of first
    appearance (hashing, no sort).
    """
    out = np.empty((len(table), len(columns)), dtype=np.int64)
    for c, name in enumerate(columns):
        out[:, c] = pd.factorize(table[name], use_na_sentinel=False)[0]
    return out


def group_ids(codes: np.ndarray, n: int) -> np.ndarray:
    """Group id of each of ``n`` rows from their code columns (one group when there is no column)."""
    if codes.shape[1] == 0:
        return np.zeros(n, dtype=np.int64)
    gid = pd.factorize(codes[:, 0])[0].astype(np.int64)
    for c in range(1, codes.shape[1]):
        col = pd.factorize(codes[:, c])[0].astype(np.int64)
        gid = pd.factorize(gid * (int(col.max()) + 1) + col)[0].astype(np.int64)  # < n^2: no overflow
    return gid


def find_pairs(same: np.ndarray, diff: np.ndarray, rows=None, max_pairs: int = 1 << 24):
    """All ordered pairs ``(i, j)``, ``i != j``, equal on ``same``, different on every ``diff`` column.

    Reproduces ``copairs.matching.find_pairs`` (which returns each unordered
    pair once; both orders are returned here because both rows are queries).

    Rows are sorted by (``same`` group, code of one ``diff`` column); the
    candidates of row *i* are its group minus its own block of equal codes,
    i.e. two contiguous runs, so excluded rows are never enumerated (with
    copairs' reference-index recipe a treatment only visits the controls).
    The block column is the ``diff`` column that excludes the most pairs; the
    other ``diff`` columns are checked on the enumerated pairs.

    Parameters
    ----------
    same, diff : ndarray (n, a), (n, b) of int
        Codes of the ``sameby`` and ``diffby`` columns (:func:`encode_columns`).
    rows : ndarray of int, optional
        Only pairs whose first element is in ``rows`` (default: all rows).
    max_pairs : int
        Candidate pairs enumerated per chunk (bounds memory).

    Yields
    ------
    (i, j) : ndarray of int64
        Chunks of pairs, grouped by ``i``.
    """
    n = max(same.shape[0], diff.shape[0])
    gid = group_ids(same, n)
    # block column: the diff column whose equal-code blocks (within groups) are largest
    block = np.arange(n)  # no diff column: a row's block is itself
    best = 0
    for c in range(diff.shape[1]):
        codes = group_ids(np.stack([gid, diff[:, c]], axis=1), n)
        excluded = np.bincount(codes).astype(np.float64) ** 2
        if excluded.sum() > best:
            best, block = excluded.sum(), codes
    others = [np.ascontiguousarray(diff[:, c]) for c in range(diff.shape[1])]
    order = np.lexsort([block, gid])
    where = np.empty(n, dtype=np.int64)
    where[order] = np.arange(n)
    g_sorted, b_sorted = gid[order], block[order]
    # group ids are dense (0..G-1): a group's run in sorted order starts after the smaller groups' rows
    size = np.bincount(gid)
    g_hi = np.cumsum(size)[gid]
    g_lo = g_hi - size[gid]
    first = np.concatenate([[True], (np.diff(g_sorted) != 0) | (np.diff(b_sorted) != 0)])
    run_start = np.maximum.accumulate(np.where(first, np.arange(n), 0))
    run_end = np.append(np.flatnonzero(first)[1:], n)[np.cumsum(first) - 1]
    b_lo, b_hi = run_start[where], run_end[where]
    queries = np.arange(n) if rows is None else np.asarray(rows, dtype=np.int64)
    queries = queries[np.lexsort([queries, gid[queries]])]
    left = b_lo[queries] - g_lo[queries]
    per_q = left + g_hi[queries] - b_hi[queries]
    cum = np.cumsum(per_q)
    lo = 0
    while lo < len(queries):
        done = cum[lo - 1] if lo else 0
        hi = max(int(np.searchsorted(cum, done + max_pairs, "right")), lo + 1)
        q, cnt, lft = queries[lo:hi], per_q[lo:hi], left[lo:hi]
        i = np.repeat(q, cnt)
        offs = np.arange(cnt.sum()) - np.repeat(np.cumsum(cnt) - cnt, cnt)
        lft_i = np.repeat(lft, cnt)
        pos = np.where(offs < lft_i, np.repeat(g_lo[q], cnt) + offs, np.repeat(b_hi[q], cnt) + offs - lft_i)
        j = order[pos]
        keep = np.ones(len(i), dtype=bool)
        for col in others:
            keep &= col[i] != col[j]
        yield i[keep], j[keep]
        lo = hi


def build_rank_lists(pos_same, pos_diff, neg_same, neg_diff, rows=None) -> RankLists:
    """Positive and negative candidates of every query (copairs' pair rules).

    ``rows`` restricts the queries (rank lists of other rows are not built;
    a row's rank list does not depend on which other rows are queries).
    """
    parts = []
    for same, diff, lab in ((pos_same, pos_diff, True), (neg_same, neg_diff, False)):
        for i, j in find_pairs(same, diff, rows):
            parts.append((i, j, np.full(len(i), lab)))
    if not parts:
        e = np.zeros(0, dtype=np.int64)
        return RankLists(e, e.copy(), np.zeros(0, dtype=bool))
    q = np.concatenate([p[0] for p in parts])
    c = np.concatenate([p[1] for p in parts])
    lab = np.concatenate([p[2] for p in parts])
    return RankLists(q, c, lab)


def _xp(a):
    """``(xp, to_numpy)`` of the backend owning ``a``; NumPy itself for a NumPy array.

    A NumPy array is the CPU backend's (``backend_of`` would say so, after
    importing ``scipy.ndimage`` to build that backend: ~0.3 CPU s at every
    rank's start-up that the evaluation never uses).
    """
    if type(a) is np.ndarray:
        return np, np.asarray
    bk = backend_of(a)
    return bk.xp, bk.to_numpy


def unit_rows(feats):
    """Rows scaled to unit Euclidean norm (backend of ``feats``), float64."""
    xp = _xp(feats)[0]
    x = xp.asarray(feats, dtype=xp.float64)
    return x / xp.linalg.norm(x, axis=1)[:, None]


#: Rows per chunk of :func:`unit_rows_of` (2.4 MB of float64 at 300 features: the temporaries stay in cache).
UNIT_CHUNK = 1024


def unit_rows_of(feats: np.ndarray, rows: np.ndarray, chunk: int = UNIT_CHUNK) -> np.ndarray:
    """``unit_rows(feats[rows])`` (NumPy), bit for bit, gathered and scaled ``chunk`` rows at a time.

    The gather, the squares of the norm and the quotient would each be a
    full-size temporary (three times ``len(rows) x d x 8`` bytes, 220 MB for
    one rank's share of issue 15's set): fresh memory that the kernel must
    fault in page by page, system time that every rank pays. In chunks only
    the output is full size and the temporaries stay in cache; a gathered
    chunk is C-ordered like the full gather, so each row's norm is summed in
    the same order (the same bits).
    """
    rows = np.asarray(rows, dtype=np.int64)
    out = np.empty((len(rows), feats.shape[1]), dtype=np.float64)
    for a in range(0, len(rows), chunk):
        x = np.asarray(feats[rows[a : a + chunk]], dtype=np.float64)
        np.divide(x, np.linalg.norm(x, axis=1)[:, None], out=out[a : a + chunk])
    return out


def pair_similarity(unit, query, cand, *, absolute: bool = False, block_size: int = 256) -> np.ndarray:
    """Cosine similarity of pairs ``(query[k], cand[k])`` as float32, by BLAS blocks.

    Pairs are taken in the order given (:func:`build_rank_lists` yields them
    grouped by their ``sameby`` group, so a block's queries share candidates);
    each run of pairs covering ``b`` distinct consecutive queries is one
    product ``U[q_block] @ U[c_block].T`` over the distinct rows and columns
    it needs, and the pairs are read from it. ``b`` is 4 x the mean number of
    candidates per query, between 8 and ``block_size`` (replicate lists of a
    few positives use small blocks, control lists large ones). Reproduces
    ``copairs.compute.pairwise_cosine`` / ``pairwise_abs_cosine`` followed by
    copairs' float32 storage.

    Parameters
    ----------
    unit : array (n, d)
        Unit-norm profiles (:func:`unit_rows`), NumPy or CuPy.
    query, cand : ndarray of int
        Pair row indices.
    absolute : bool
        Absolute cosine (both directions of an effect count).
    """
    xp, to_numpy = _xp(unit)
    out = np.empty(len(query), dtype=np.float32)
    if len(query) == 0:
        return out
    new_run = np.concatenate([[True], np.diff(query) != 0])
    run_id = np.cumsum(new_run) - 1  # runs of equal query: rows of the blocks
    starts = np.flatnonzero(new_run)
    # few candidates per query (replicates): small blocks, else most of the product is unused
    rows_per_block = int(np.clip(4 * len(query) / len(starts), 8, block_size))
    edges = np.append(starts[::rows_per_block], len(query))
    col_of = np.full(unit.shape[0], -1, dtype=np.int64)  # scratch: row -> column in the block
    for a, b in zip(edges[:-1], edges[1:]):
        qb, cb = query[a:b], cand[a:b]
        urow = qb[new_run[a:b]]
        ri = run_id[a:b] - run_id[a]
        seen = np.zeros(unit.shape[0], dtype=bool)
        seen[cb] = True
        ucol = np.flatnonzero(seen)
        col_of[ucol] = np.arange(len(ucol))
        ci = col_of[cb]
        s = unit[xp.asarray(urow)] @ unit[xp.asarray(ucol)].T
        vals = s[xp.asarray(ri), xp.asarray(ci)]
        if absolute:
            vals = xp.abs(vals)
        out[a:b] = to_numpy(vals.astype(xp.float32))
    return out


def rank_keys(sim32: np.ndarray) -> np.ndarray:
    """Order keys of copairs' rank list: bits of ``float32(1 - sim)`` (>= 0, so bit order = value order)."""
    t = (np.float32(1.0) - np.asarray(sim32, dtype=np.float32)).astype(np.float32)
    t = np.where(t == 0, np.float32(0.0), t)  # -0.0 cannot arise, but keep the key non-negative
    return t.view(np.uint32).astype(np.uint64)


def average_precision(query, positive, sim32, n_rows: int):
    """AP per query from flattened rank lists (vectorized over all queries).

    For query *q* with positives sorted by similarity (descending), the j-th
    positive has rank ``r_j = j + #{negatives ranked before it}``, where a
    negative ranks before a positive when its ``float32(1 - sim)`` is strictly
    smaller (ties favour positives, as in copairs), and
    ``AP = (1/n_pos) sum_j j / r_j``.

    Parameters
    ----------
    query : ndarray of int
        Query row of each pair.
    positive : ndarray of bool
        Pair label.
    sim32 : ndarray of float32
        Pair similarity.
    n_rows : int
        Number of rows (length of the outputs).

    Returns
    -------
    ap : ndarray (n_rows,) float64
        NaN for rows with no positive pair (or no pair at all).
    n_pos, n_total : ndarray (n_rows,) int64
        Positive and total candidates per row (copairs' ``n_pos_pairs``,
        ``n_total_pairs``).
    """
    query = np.asarray(query, dtype=np.uint64)
    positive = np.asarray(positive, dtype=bool)
    key = (query << np.uint64(32)) | rank_keys(sim32)
    kp, kn = np.sort(key[positive]), np.sort(key[~positive])
    qp = (kp >> np.uint64(32)).astype(np.int64)
    n_pos = np.bincount(qp, minlength=n_rows)
    n_neg = np.bincount(query[~positive].astype(np.int64), minlength=n_rows)
    neg_before = np.searchsorted(kn, kp, "left") - np.searchsorted(kn, kp & ~np.uint64(0xFFFFFFFF), "left")
    first = np.concatenate([[0], np.cumsum(n_pos)[:-1]])
    j = np.arange(1, len(kp) + 1) - first[qp]
    contrib = j / (j + neg_before)
    with np.errstate(invalid="ignore", divide="ignore"):
        ap = np.bincount(qp, weights=contrib, minlength=n_rows) / n_pos
    ap[n_pos == 0] = np.nan
    return ap, n_pos.astype(np.int64), (n_pos + n_neg).astype(np.int64)


def ap_from_ranks(ranks: np.ndarray) -> np.ndarray:
    """AP of rank lists given the sorted 1-based ranks of their positives (rows of ``ranks``).

    ``AP = (1/k) sum_j j / r_j``; used for the nulls and hand checks.
    """
    ranks = np.asarray(ranks, dtype=np.float64)
    k = ranks.shape[-1]
    return (np.arange(1, k + 1) / ranks).sum(axis=-1) / k


def expected_ap(n_pos, n_total) -> np.ndarray:
    """Expected AP of a random rank list with ``n_pos`` positives among ``n_total`` (copairs' ``expected_ap``).

    ``E[AP] = (1/L) ((M - 1)/(L - 1) (L - H_L) + H_L)`` with ``M = n_pos``,
    ``L = n_total`` and ``H_L`` the L-th harmonic number (summed 1/1 + ... + 1/L
    in order, as copairs does); 1 when every candidate is positive, 0 without
    positives, and for ``L = 1`` 1 or 0.
    """
    m = np.asarray(n_pos, dtype=np.int64)
    tot = np.asarray(n_total, dtype=np.int64)
    if m.size and ((m < 0).any() or (tot < m).any()):
        raise ValueError("expected_ap needs 0 <= n_pos <= n_total")
    top = int(tot.max()) if tot.size else 0
    harmonic = np.concatenate([[0.0], np.cumsum(1.0 / np.arange(1, top + 1))])
    h = harmonic[tot]
    with np.errstate(invalid="ignore", divide="ignore"):
        mu = ((m - 1.0) / (tot - 1.0) * (tot - h) + h) / tot
    mu = np.where(tot == 1, (m == 1).astype(np.float64), mu)
    mu = np.where(m == 0, 0.0, mu)
    return np.where((m == tot) & (tot > 0), 1.0, mu)


def normalized_ap(ap, n_pos, n_total, eps: float = 1e-10) -> np.ndarray:
    """copairs' ``normalized_average_precision``: ``(AP - E[AP]) / max(1 - E[AP], eps)``, clipped to [-1, 1].

    0 is chance level, 1 a perfect ranking; NaN where AP is NaN.
    """
    mu = expected_ap(n_pos, n_total)
    return np.clip((np.asarray(ap, dtype=np.float64) - mu) / np.maximum(1.0 - mu, eps), -1.0, 1.0)
