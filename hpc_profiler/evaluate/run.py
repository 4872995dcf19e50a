"""The CPJUMP1 benchmark driver: tasks -> AP -> nulls -> class p/q-values -> tables, on MPI ranks.

Reproduces the evaluation of Chandrasekaran et al. (2024, CPJUMP1) with the
copairs 0.5.5 definitions (``average_precision``, ``p_values``,
``mean_average_precision``):

1. for every retrieval task and group (modality x cell type x time point)
   the queries, in runs of ``block_size`` replicates of the same
   perturbations, are split across ranks balanced by their number of
   candidates (:func:`hpc_profiler.mpi.split_balanced`); each rank builds its
   queries' rank lists, normalizes only the profiles they touch, computes
   cosines in BLAS blocks and the AP of each query; the AP table is gathered;
2. the null configurations ``(n_pos, N)`` of all queries are split across
   ranks by cost; each null is drawn once (seeded by ``(seed, n_pos, N)``,
   never by rank) and kept by its owner for later tasks; the owner computes
   the p-values of every query with that configuration (gathered with the
   class p-values of step 3, :class:`DeferredGather`);
3. class significance, by default the paper's (``class_significance:
   map_permutation``): the mAP of a class against the permutation null of
   its mAP (the mean of its members' nulls), ``p = (#{null > mAP} + 1) /
   (N + 1)``, Benjamini-Hochberg over the classes of each (task, group) --
   copairs' ``mean_average_precision``, and what
   ``benchmark/output/for_paper/Figure_4a_source.csv`` of
   jump-cellpainting/2024_Chandrasekaran_NatureMethods holds (a class with
   mAP 1 has ``-log10 p = 5.000004 = -log10(1/100001)``). Classes are split
   into contiguous runs over ranks balanced by their work
   (:func:`class_costs`: classes whose members have the same null
   configurations share one null mean); each rank fetches the nulls its
   classes need from their owners (one ``alltoall``).
   ``geomean_q`` (the geometric mean of the class's per-query BH q-values)
   remains as an option and is always reported as ``geomean_q_value``.

Tasks with ``active_from`` run in a later wave, on the perturbations the
earlier task retrieved. Directionality tasks (a few matrix products) and the
table bookkeeping (BH, class means: sorts and bincounts over the queries)
are repeated on every rank rather than communicated. The numbers are
identical for any number of ranks. Without MPI the same code runs as one
process (:func:`hpc_profiler.mpi.get_comm`). The output files are written
by all ranks (:func:`write_outputs`); under MPI a Parquet table's feature
columns are decoded in shares, one per rank, and exchanged
(:func:`read_parquet_shared`). Every rank times its phases
(:class:`PhaseClock`: seconds of work and of waiting in each collective,
``evaluate_profiles(...)["seconds"]``); ``scripts/bench_evaluate.py
--phases`` prints them per rank; ``hpc-profiler evaluate`` also reports the
stages around them, from the process's start (:class:`StageTimes`).

Synchronization points per retrieval task: the AP allgather, the null
``alltoall`` and one allgather of the query and class p-values; between
them every rank works on its own share (AP chunks, owned nulls, classes).

Communication per rank and task (largest over ranks; ``Q`` queries, ``K``
classes, ``S`` null size, ``C_r`` configurations used by a rank's classes and
owned elsewhere): AP allgather ``32 Q (P-1)/P`` bytes, nulls ``4 S C_r``,
query and class p-values ``16 Q (P-1)/P + 16 K (P-1)/P`` (one allgather).
On the JUMP-scale case (b) of ``scripts/bench_evaluate.py`` (53,552 wells,
45,096 queries, 5,000 classes, 109 configurations, ``S`` = 100,000) at 64
ranks: 1.35 + 9.9 + 0.68 + 0.08 = about 12 MB received per rank (``C_r``
<= 26: a class's replicates sit on plates with different control counts,
hence different ``N``); 16.4 MB of nulls at 2 ranks and 18.3 MB at 4,
measured and replayed (``comm_per_rank`` in the benchmark). On issue 15's
set, case (c) (56,400 wells, 50,391 queries, 10,000 classes, 63
configurations), replayed with the work-balanced class split: 2 ranks 0.77 +
10.3 + 0.46 MB, 4 ranks 1.15 + 11.4 + 0.69 MB, 64 ranks 1.51 + 9.2 + 0.91 =
about 11.6 MB per rank. Per rank this shrinks with ``P`` only in the null term (a rank
needs the configurations of its classes, at most all of them): at 64 ranks
the 12 MB take ~1 ms on a 100 Gb/s link: what caps the scaling there is
the work every rank repeats (task preparation, pair index set-up, BH and the
class table), not the transfers. Reading a Parquet table in shares adds, once
per run, ``8 n F (P-1)/P`` bytes per rank (``n`` wells, ``F`` features): 133 MB
at 64 ranks for 56,400 x 300 (~11 ms at 100 Gb/s), against every rank
reading the 169 MB file (10.8 GB from the file system at 64 ranks).

Deliberate differences from copairs: BH q-values are computed per query (and
per class) within each (task, group); empty tasks are errors
(:func:`empty_task_problem`), not empty tables.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

import numpy as np
import pandas as pd

from .. import heap, mpi
from ..backend import get_backend, gpu_available, to_numpy
from ..config import Config, ConfigError, EvaluateConfig, default_eval_tasks, load_config_or_report
from ..layout import Layout
from . import ap as apk
from . import nulls, stats
from .tasks import SUMMARY_KEYS, TaskError, feature_columns, match_rules, prepare_task


# --------------------------------------------------------------------------- AP phase
def column_codes(group, cols: list[str]) -> np.ndarray:
    """:func:`hpc_profiler.evaluate.ap.encode_columns` of ``group.meta``, each column factorized once per group.

    The query split, the weights and the pair search all need codes of the
    same few metadata columns over every row of the group; every rank
    repeats that work, so each column's codes are kept on the group
    (``group.codes``) instead of being factorized three times.
    """
    out = np.empty((len(group.meta), len(cols)), dtype=np.int64)
    for c, name in enumerate(cols):
        if name not in group.codes:
            group.codes[name] = apk.encode_columns(group.meta, [name])[:, 0]
        out[:, c] = group.codes[name]
    return out


def query_weights(group) -> np.ndarray:
    """Candidates per query (balancing weight): sizes of its positive and negative sameby groups."""
    w = np.zeros(len(group.meta))
    for cols in (group.pos_sameby, group.neg_sameby):
        codes = column_codes(group, cols)
        gid = apk.group_ids(codes, len(group.meta))
        w += np.bincount(gid)[gid]
    return w


def _codes(group, cols: list[str]) -> np.ndarray:
    """Codes of ``cols``; a missing multilabel label matches nothing (a unique code per row)."""
    codes = column_codes(group, cols)
    if group.multilabel_col in cols:
        c = cols.index(group.multilabel_col)
        missing = group.meta[group.multilabel_col].isna().to_numpy()
        codes[missing, c] = codes[:, c].max() + 1 + np.flatnonzero(missing)
    return codes


def _multilabel_negatives(group, query: np.ndarray, cand: np.ndarray) -> np.ndarray:
    """Which exploded negative pairs copairs' multilabel matching keeps.

    Each negative row once (its first label row), never the query's own row,
    and, when the label column is in ``neg_diffby``, no label in common.
    """
    orig = group.orig
    first = np.concatenate([[True], np.diff(orig) != 0])
    keep = first[cand] & (orig[query] != orig[cand])
    if group.multilabel_col in group.neg_diffby and len(query):
        lab = pd.factorize(group.meta[group.multilabel_col])[0].astype(np.int64)  # missing -> -1
        n_lab = int(lab.max()) + 2
        have = np.unique(orig[lab >= 0] * n_lab + lab[lab >= 0])
        start = np.flatnonzero(first)
        cnt = np.diff(np.append(start, len(orig)))
        oq, oc = orig[query], orig[cand]
        reps = cnt[oq]
        pair = np.repeat(np.arange(len(query)), reps)
        idx = np.repeat(start[oq], reps) + (np.arange(reps.sum()) - np.repeat(np.cumsum(reps) - reps, reps))
        ql = lab[idx]
        hit = (ql >= 0) & np.isin(oc[pair] * n_lab + ql, have)
        keep &= np.bincount(pair, weights=hit, minlength=len(query)) == 0
    return keep


def group_ap(group, rows: np.ndarray, similarity: str, block_size: int, bk=None):
    """AP, n_pos, n_total of the query ``rows`` of one task group (copairs ``average_precision``).

    Only the rows the queries need (queries and their candidates) are
    normalized, so a rank's work shrinks with its share of the queries; pairs
    come grouped by the ``sameby`` group of their query (replicates of one
    perturbation, controls of one plate) so each similarity block is dense.
    The cosine blocks run on backend ``bk`` (default CPU); the rest on the host.
    """
    meta = group.meta
    multi = group.orig is not None
    neg_diff = [c for c in group.neg_diffby if not (multi and c == group.multilabel_col)]
    rl = apk.build_rank_lists(
        _codes(group, group.pos_sameby),
        _codes(group, group.pos_diffby),
        _codes(group, group.neg_sameby),
        _codes(group, neg_diff),
        rows=rows,
    )
    if multi:
        keep = rl.positive.copy()
        neg = ~rl.positive
        keep[neg] = _multilabel_negatives(group, rl.query[neg], rl.cand[neg])
        rl = apk.RankLists(rl.query[keep], rl.cand[keep], rl.positive[keep])
    need = np.zeros(len(meta), dtype=bool)
    need[rows] = True
    need[rl.cand] = True
    need_rows = np.flatnonzero(need)
    local = np.full(len(meta), -1, dtype=np.int64)
    local[need_rows] = np.arange(len(need_rows))
    if bk is None:
        unit = apk.unit_rows_of(group.feats, need_rows)
    else:
        unit = apk.unit_rows(bk.asarray(group.feats[need_rows]))
    sim = np.empty(len(rl), dtype=np.float32)
    for lab in (True, False):  # find_pairs yields each kind grouped by the sameby group of the query
        sel = np.flatnonzero(rl.positive == lab)
        sim[sel] = apk.pair_similarity(
            unit, local[rl.query[sel]], local[rl.cand[sel]], absolute=similarity == "abs_cosine",
            block_size=block_size,
        )
    ap, n_pos, n_total = apk.average_precision(rl.query, rl.positive, sim, len(meta))
    return ap[rows], n_pos[rows], n_total[rows]


def query_chunks(group, block_size: int) -> tuple[list[np.ndarray], list[float]]:
    """Queries of a group cut into runs of ``block_size`` that share candidates, with their work.

    Queries are ordered by their positive ``sameby`` group (replicates of a
    perturbation stay together) so a rank's similarity blocks stay dense.
    """
    rows = np.flatnonzero(group.is_query)
    gid = apk.group_ids(column_codes(group, group.pos_sameby), len(group.meta))[rows]
    rows = rows[np.lexsort([rows, gid])]
    w = query_weights(group)[rows]
    chunks = [rows[i : i + block_size] for i in range(0, len(rows), block_size)]
    return chunks, [float(w[i : i + block_size].sum()) for i in range(0, len(rows), block_size)]


def distributed_ap(groups, specs, block_size: int, comm, bk=None) -> list[pd.DataFrame]:
    """Per-query AP tables of ``groups`` with query chunks split across ranks by work; on every rank."""
    items, weights = [], []  # (group index, query rows), work
    for gi, g in enumerate(groups):
        chunks, w = query_chunks(g, block_size)
        items.extend((gi, c) for c in chunks)
        weights.extend(w)
    parts = mpi.split_balanced(weights, comm.Get_size())
    mine: dict[int, list[np.ndarray]] = {}
    for i in parts[comm.Get_rank()]:
        mine.setdefault(items[i][0], []).append(items[i][1])
    local = []
    with phase(comm, "ap"):
        for gi, chunks in sorted(mine.items()):
            rows = np.sort(np.concatenate(chunks))
            ap, n_pos, n_total = group_ap(groups[gi], rows, specs[groups[gi].task].similarity, block_size, bk)
            local.append((gi, rows, ap, n_pos, n_total))
    with phase(comm, "ap_gather"):
        gathered = [x for part in comm.allgather(local) for x in part]
    with phase(comm, "ap_table"):
        return _ap_tables(groups, gathered)


def _ap_tables(groups, gathered) -> list[pd.DataFrame]:
    """One AP table per group from the gathered ``(group, rows, ap, n_pos, n_total)`` parts, rows in order."""
    out = []
    for gi, g in enumerate(groups):
        mine_g = [x for x in gathered if x[0] == gi]
        rows = np.concatenate([x[1] for x in mine_g]) if mine_g else np.zeros(0, dtype=np.int64)
        order = np.argsort(rows)
        df = g.meta.iloc[rows[order]].drop(columns=["Metadata_Reference_Index"], errors="ignore").copy()
        for k, col in ((2, "average_precision"), (3, "n_pos_pairs"), (4, "n_total_pairs")):
            vals = np.concatenate([x[k] for x in mine_g]) if mine_g else np.zeros(0)
            df[col] = vals[order]
        df.insert(0, "task", g.task)
        out.append(df.reset_index(drop=True))
    return out


# --------------------------------------------------------------------------- null phase
def configurations(n_pos: np.ndarray, n_total: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct ``(n_pos, N)`` rows sorted, and the index of each query's row.

    ``np.unique(np.stack([n_pos, n_total], 1), axis=0, return_inverse=True)``
    through one int64 key per query (``n_pos (max N + 1) + N``, the same
    order): a 1-D unique instead of a structured row sort, ~15x faster on
    50,000 queries, and every rank repeats it.
    """
    n_pos, n_total = np.asarray(n_pos, dtype=np.int64), np.asarray(n_total, dtype=np.int64)
    if len(n_pos) == 0:
        return np.zeros((0, 2), dtype=np.int64), np.zeros(0, dtype=np.int64)
    if n_pos.min() < 0 or n_total.min() < 0:
        raise ValueError("configurations: negative pair counts")
    base = int(n_total.max()) + 1
    keys, inv = np.unique(n_pos * base + n_total, return_inverse=True)
    return np.stack([keys // base, keys % base], axis=1), inv.ravel().astype(np.int64)


class DeferredGather:
    """Several results gathered in one ``allgather``: each producer adds its local part and what to do with all.

    A collective is a synchronization point where every rank waits for the
    slowest; the query p-values and the class p-values travel together
    after the class p-values, so the imbalance of the null phase and of the
    class phase can cancel instead of adding up, and there is one wait
    fewer. On one process :meth:`run` hands every producer its own part.
    """

    def __init__(self, comm, name: str = "class_gather"):
        self.comm, self.name = comm, name
        self.items: list[tuple] = []

    def add(self, local, finish) -> None:
        """``finish(parts)`` receives ``local`` of every rank, in rank order, when :meth:`run` is called."""
        self.items.append((local, finish))

    def run(self) -> None:
        with phase(self.comm, self.name):
            gathered = self.comm.allgather([local for local, _ in self.items])
        for i, (_, finish) in enumerate(self.items):
            finish([part[i] for part in gathered])
        self.items = []


class NullStore:
    """Nulls owned by this rank, keyed by ``(n_pos, N)``; each is drawn once per run.

    Ownership is decided identically on every rank (``split_balanced`` over the
    new configurations of a wave), so no rank ever draws a null another owns.
    """

    def __init__(self, size: int, seed: int, comm, keep_raw: bool = False):
        self.size, self.seed, self.comm, self.keep_raw = size, seed, comm, keep_raw
        self.owner: dict[tuple, int] = {}
        self.sorted: dict[tuple, np.ndarray] = {}
        self.raw: dict[tuple, np.ndarray] = {}
        self.drawn = 0
        self.bytes_received = 0  # nulls received from other ranks (class p-values)

    def assign(self, confs: list[tuple]) -> None:
        new = [c for c in confs if c not in self.owner]
        w = [nulls.null_cost(k, n) * self.size for k, n in new]
        for p, idx in enumerate(mpi.split_balanced(w, self.comm.Get_size())):
            for i in idx:
                self.owner[new[i]] = p

    def get(self, conf: tuple) -> np.ndarray:
        if conf not in self.sorted:
            with phase(self.comm, "nulls"):
                raw = nulls.null_distribution(conf[0], conf[1], self.size, self.seed)
                if self.keep_raw:
                    self.raw[conf] = raw
                self.sorted[conf] = np.sort(raw)
            self.drawn += 1
        return self.sorted[conf]

    def p_values(self, ap: np.ndarray, n_pos: np.ndarray, n_total: np.ndarray,
                 batch: DeferredGather | None = None) -> np.ndarray:
        """p-values of all queries (NaN where n_pos = 0), computed by the owners; on every rank.

        With ``batch`` the owners' parts travel in that :class:`DeferredGather`:
        the array is filled when the batch runs.
        """
        ok = np.flatnonzero((n_pos > 0) & ~np.isnan(ap))
        p = np.full(len(ap), np.nan)
        if len(ok) == 0:
            return p
        confs_arr, inv = configurations(n_pos[ok], n_total[ok])
        confs = [(int(k), int(n)) for k, n in confs_arr]
        self.assign(confs)
        me = self.comm.Get_rank()
        order = np.argsort(inv.ravel(), kind="stable")
        bounds = np.searchsorted(inv.ravel()[order], np.arange(len(confs) + 1))
        local = []
        for ci, conf in enumerate(confs):
            if self.owner[conf] != me:
                continue
            sel = ok[order[bounds[ci] : bounds[ci + 1]]]
            local.append((sel, nulls.p_values(ap[sel], self.get(conf))))
        def fill(parts):
            for part in parts:
                for sel, pv in part:
                    p[sel] = pv

        if batch is None:
            with phase(self.comm, "p_gather"):
                fill(self.comm.allgather(local))
        else:
            batch.add(local, fill)
        return p


# --------------------------------------------------------------------------- classes
def sorted_group_ids(table: pd.DataFrame, cols: list[str]) -> tuple[np.ndarray, int]:
    """Group id of each row by the values of ``cols`` as strings, ids in sorted order of the value tuples.

    The ids of ``pd.MultiIndex.from_frame(table[cols].astype(str)).factorize(sort=True)``,
    column by column (sorted codes of a column, then dense ranks of
    ``(prefix, code)``), without building the tuples; and the number of groups.
    A missing value (pandas 3 keeps ``None`` missing through ``astype(str)``)
    sorts last, as in the MultiIndex.
    """
    gid = np.zeros(len(table), dtype=np.int64)
    n = 1 if len(table) else 0
    for c in cols:
        codes, uniq = pd.factorize(table[c].astype(str).to_numpy(), sort=True, use_na_sentinel=False)
        gid = gid * len(uniq) + codes
        uniq_gid, gid = np.unique(gid, return_inverse=True)
        gid, n = gid.ravel().astype(np.int64), len(uniq_gid)
    return gid, n


def group_rows(table: pd.DataFrame, cols: list[str]) -> list[np.ndarray]:
    """Index labels of each group of ``cols`` (one group when ``cols`` is empty), groups sorted."""
    if not cols or len(table) == 0:
        return [table.index.to_numpy()]
    gid, n = sorted_group_ids(table, cols)
    order = np.argsort(gid, kind="stable")
    return np.split(table.index.to_numpy()[order], np.searchsorted(gid[order], np.arange(1, n)))


def class_partition(first_conf: np.ndarray, work: np.ndarray, n_parts: int) -> list[np.ndarray]:
    """Classes cut into ``n_parts`` contiguous runs of similar null configurations, balanced by work.

    Classes are ordered by their smallest configuration index (configurations
    sorted by ``(n_pos, N)``: replicates of similar counts), so the classes of
    one rank use few distinct nulls and the nulls a rank fetches stay few.
    """
    order = np.lexsort([np.arange(len(first_conf)), first_conf])
    cum = np.cumsum(np.asarray(work, dtype=np.float64)[order])
    if len(cum) == 0:
        return [order[:0] for _ in range(n_parts)]
    cuts = np.searchsorted(cum, cum[-1] * np.arange(1, n_parts) / n_parts, "left")
    return np.split(order, cuts)


def class_costs(member_conf: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    """:func:`~hpc_profiler.evaluate.nulls.map_class_cost` of each class, with the classes that share its mean.

    ``member_conf[bounds[c]:bounds[c + 1]]`` are the configuration indices
    of class ``c``'s members in member order. Classes with the same sequence
    share one null mean; sequences are told apart by a 64-bit hash (a
    collision only misjudges the balance, never a result).
    """
    n_cls = len(bounds) - 1
    size = np.diff(bounds)
    if n_cls == 0:
        return np.zeros(0)
    pos = np.arange(len(member_conf)) - np.repeat(bounds[:-1], size)
    weights = np.random.default_rng(0).integers(1, 2**63, int(size.max()) + 1, dtype=np.uint64)
    with np.errstate(over="ignore"):
        terms = (member_conf.astype(np.uint64) + np.uint64(1)) * weights[pos]
        h = np.zeros(n_cls, dtype=np.uint64)
        nz = size > 0
        h[nz] = np.add.reduceat(terms, bounds[:-1][nz])
    _, inv, share = np.unique(np.stack([h, size.astype(np.uint64)], axis=1), axis=0, return_inverse=True,
                              return_counts=True)
    return nulls.map_class_cost(size, share[inv.ravel()])


def _alltoall(comm, objs: list) -> list:
    """``comm.alltoall`` (objects); the identity on one process."""
    return comm.alltoall(objs) if comm.Get_size() > 1 else list(objs)


def map_p_values(map_scores: np.ndarray, gid: np.ndarray, n_pos: np.ndarray, n_total: np.ndarray,
                 store: NullStore, batch: DeferredGather | None = None) -> np.ndarray:
    """Class mAP permutation p-values (copairs ``mean_average_precision``), classes split over ranks.

    The null of a class is the float32 mean, permutation by permutation, of its
    members' nulls; ``p = (#{null mean > mAP} + 1) / (null_size + 1)``
    (:func:`hpc_profiler.evaluate.nulls.map_p_value`; computed for a rank's
    classes at once by :func:`hpc_profiler.evaluate.nulls.map_p_values`).
    Ranks take contiguous runs of classes (:func:`class_partition`, balanced
    by :func:`~hpc_profiler.evaluate.nulls.map_class_cost`); each null a rank
    needs and does not own comes once from its owner (one ``alltoall``), and
    the p-values are gathered (16 bytes per class: index and value).

    Communication per rank (``S`` = null size, ``C_r`` = distinct
    configurations of the rank's classes, ``K`` classes, ``Q`` queries):
    receive at most ``4 S C_r`` bytes of nulls and ``8 K`` bytes of p-values;
    :attr:`NullStore.bytes_received` counts the nulls. With ``batch`` the
    p-values travel in that :class:`DeferredGather` (filled when it runs).
    """
    comm = store.comm
    n_cls = len(map_scores)
    conf_arr, vix = configurations(n_pos, n_total)
    confs = [(int(k), int(t)) for k, t in conf_arr]
    store.assign(confs)
    order = np.argsort(gid, kind="stable")
    bounds = np.searchsorted(gid[order], np.arange(n_cls + 1))
    first_conf = np.full(n_cls, len(confs), dtype=np.int64)
    np.minimum.at(first_conf, gid, vix)
    parts = class_partition(first_conf, class_costs(vix[order], bounds), comm.Get_size())
    me = comm.Get_rank()
    needs = []  # configuration indices each rank needs (known to every rank)
    for part in parts:
        mem = np.concatenate([order[bounds[c]:bounds[c + 1]] for c in part]) if len(part) else np.zeros(0, int)
        needs.append(np.unique(vix[mem]))
    send = []
    for dest, need in enumerate(needs):
        out = {}
        if dest != me:
            for ci in need:
                if store.owner[confs[ci]] == me:
                    store.get(confs[ci])
                    out[confs[ci]] = store.raw[confs[ci]]
        send.append(out)
    raw = {}
    with phase(comm, "null_exchange"):
        received = _alltoall(comm, send)
    for part in received:
        raw.update(part)
        store.bytes_received += sum(v.nbytes for v in part.values())
    for ci in needs[me]:
        if store.owner[confs[ci]] == me:
            store.get(confs[ci])
            raw[confs[ci]] = store.raw[confs[ci]]
    mine = np.asarray(parts[me], dtype=np.int64)
    seqs = [[confs[ci] for ci in vix[order[bounds[c]:bounds[c + 1]]]] for c in mine]
    local = (mine, nulls.map_p_values(map_scores[mine], seqs, raw))
    p = np.full(n_cls, np.nan)

    def fill(parts):
        for cls, pv in parts:
            p[cls] = pv

    if batch is None:
        with phase(comm, "class_gather"):
            fill(comm.allgather(local))
    else:
        batch.add(local, fill)
    return p


def _valid_queries(queries: pd.DataFrame) -> pd.DataFrame:
    """The queries that count for their class: at least one positive and an AP."""
    return queries.loc[(queries["n_pos_pairs"] > 0) & queries["average_precision"].notna()].reset_index(drop=True)


def class_table(queries: pd.DataFrame, spec, ecfg: EvaluateConfig, store: NullStore | None) -> pd.DataFrame:
    """Per-class mAP, mean normalized AP, class q-value, retrieved flag.

    The class q-value is, by default (``class_significance: map_permutation``,
    the paper's and copairs' ``mean_average_precision``), BH over the classes
    of each group of their mAP permutation p-values (:func:`map_p_values`);
    with ``geomean_q`` the geometric mean of the class's query q-values.
    ``queries`` holds the per-query ``q_value``
    (:func:`class_table_start` then its ``finish``, in one step).
    """
    return class_table_start(queries, spec, ecfg, store)(queries)


def class_table_start(queries: pd.DataFrame, spec, ecfg: EvaluateConfig, store: NullStore | None,
                      batch: DeferredGather | None = None):
    """The part of :func:`class_table` that needs only the APs; returns ``finish(queries) -> table``.

    Classes, their mAP and the class mAP p-values (with ``batch``, gathered
    when the batch runs, together with the query p-values); ``finish`` takes
    the queries with their ``q_value`` (after the batch and the per-query BH)
    and adds the geometric-mean q-values, the class BH and ``retrieved``.
    """
    keys = list(dict.fromkeys(spec.group_by + spec.class_by))
    valid = _valid_queries(queries)
    if len(valid) == 0:
        return lambda q: pd.DataFrame(columns=["task"] + keys + ["mean_average_precision", "q_value", "retrieved"])
    gid, n = sorted_group_ids(valid, keys)
    extra = [k for k in SUMMARY_KEYS if k in valid.columns and k not in keys]
    const = valid[extra].astype(str).groupby(gid, sort=True).nunique()
    keys += [k for k in extra if bool((const[k] == 1).all())]
    first = valid.groupby(gid, sort=True)[keys].first().reset_index(drop=True)
    cnt = np.bincount(gid, minlength=n)
    out = first.copy()
    out.insert(0, "task", valid["task"].iloc[0])
    out["n_queries"] = cnt
    out["mean_average_precision"] = np.bincount(gid, weights=valid["average_precision"], minlength=n) / cnt
    out["mean_normalized_average_precision"] = (
        np.bincount(gid, weights=valid["normalized_average_precision"], minlength=n) / cnt
    )
    map_p = None
    if ecfg.map_pvalue or ecfg.class_significance == "map_permutation":
        with phase(store.comm, "class_p"):
            map_p = map_p_values(
                out["mean_average_precision"].to_numpy(), np.asarray(gid, dtype=np.int64),
                valid["n_pos_pairs"].to_numpy(np.int64), valid["n_total_pairs"].to_numpy(np.int64), store, batch,
            )

    def finish(queries_q: pd.DataFrame) -> pd.DataFrame:
        q = _valid_queries(queries_q)["q_value"].to_numpy()  # the same rows as ``valid``
        out["geomean_q_value"] = stats.geometric_mean(q, gid, n)
        if map_p is not None:
            out["map_p_value"] = map_p
            out["map_q_value"] = np.nan
            for idx in group_rows(out, spec.group_by):
                out.loc[idx, "map_q_value"] = stats.bh_qvalues(out.loc[idx, "map_p_value"].to_numpy())
        qcol = "geomean_q_value" if ecfg.class_significance == "geomean_q" else "map_q_value"
        out["q_value"] = out[qcol]
        out["retrieved"] = out["q_value"] < ecfg.q_threshold
        return out

    return finish


def add_q_values(queries: pd.DataFrame, spec) -> pd.DataFrame:
    """Benjamini-Hochberg q-values over the queries of each (task, group)."""
    queries = queries.copy()
    queries["q_value"] = np.nan
    for idx in group_rows(queries, spec.group_by):
        queries.loc[idx, "q_value"] = stats.bh_qvalues(queries.loc[idx, "p_value"].to_numpy())
    return queries


def summarize(classes: pd.DataFrame, task: str, spec) -> pd.DataFrame:
    """Fraction retrieved and mean mAP per task x modality x cell type x time point."""
    rows = []
    if len(classes) == 0:
        return pd.DataFrame(rows)
    groups = classes.groupby(spec.group_by, sort=True) if spec.group_by else [((), classes)]
    for _, c in groups:
        row = {"task": task}
        for k in SUMMARY_KEYS:
            vals = sorted(c[k].astype(str).unique()) if k in c.columns else []
            row[k] = vals[0] if len(vals) == 1 else "|".join(vals) if vals else "all"
        row.update(
            n_classes=len(c),
            n_retrieved=int(c["retrieved"].sum()),
            fraction_retrieved=float(c["retrieved"].mean()),
            mean_mAP=float(c["mean_average_precision"].mean()),
        )
        rows.append(row)
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- directionality
def directionality_task(name: str, spec, profiles: pd.DataFrame, active) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Cosines of same-gene ``pair_a`` x ``pair_b`` pairs vs different-gene pairs (CPJUMP1 Fig. 5)."""
    rows, pairs = [], []
    for g in prepare_task(name, spec, profiles, active):
        where = f"evaluate task {name!r} group {g.key}"
        a = np.flatnonzero(match_rules(g.meta, spec.pair_a, where))
        b = np.flatnonzero(match_rules(g.meta, spec.pair_b, where))
        if len(a) == 0 or len(b) == 0:
            continue
        unit = apk.unit_rows(g.feats)
        cos = to_numpy(unit[a] @ unit[b].T).astype(np.float64)
        ka = apk.encode_columns(g.meta, spec.pair_by + spec.pair_sameby)
        same_pair = np.all(ka[a][:, None, :len(spec.pair_by)] == ka[b][None, :, :len(spec.pair_by)], axis=2)
        same_ctx = np.all(ka[a][:, None, len(spec.pair_by):] == ka[b][None, :, len(spec.pair_by):], axis=2)
        true_cos, null_cos = cos[same_pair & same_ctx], cos[~same_pair & same_ctx]
        if len(true_cos) == 0 or len(null_cos) == 0:
            continue
        res = stats.directionality(true_cos, null_cos)
        row = {"task": name, **{k: g.key.get(k, "all") for k in SUMMARY_KEYS}, **res}
        rows.append(row)
        ia, ib = np.nonzero(same_ctx)
        pairs.append(
            pd.DataFrame(
                {
                    "task": name,
                    "group": "|".join(map(str, g.key.values())),
                    "true_pair": same_pair[ia, ib],
                    "cosine": cos[ia, ib],
                }
            )
        )
    return pd.DataFrame(rows), (pd.concat(pairs, ignore_index=True) if pairs else pd.DataFrame())


# --------------------------------------------------------------------------- driver
def task_waves(ecfg: EvaluateConfig) -> list[list[str]]:
    """Tasks in dependency order: a task runs after its ``active_from`` task."""
    where = "evaluate.tasks"
    for t in ecfg.tasks:
        if t not in ecfg.definitions:
            raise ConfigError(f"{where}: task {t!r} has no definition (known: {sorted(ecfg.definitions)})")
    level: dict[str, int] = {}

    def depth(t, seen=()):
        if t in seen:
            raise ConfigError(f"{where}: active_from cycle through {t!r}")
        src = ecfg.definitions[t].active_from
        if src is None:
            return 0
        if src not in ecfg.tasks:
            raise ConfigError(f"evaluate.definitions.{t}.active_from: task {src!r} is not in evaluate.tasks")
        return depth(src, seen + (t,)) + 1

    for t in ecfg.tasks:
        level[t] = depth(t)
    return [[t for t in ecfg.tasks if level[t] == d] for d in range(max(level.values(), default=-1) + 1)]


def _concat(tables: list) -> pd.DataFrame:
    tables = [t for t in tables if len(t)]
    return pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()


def _distinct(table: pd.DataFrame, cols: list[str]) -> str:
    """``'col' has k distinct value(s)`` for each column (hints in empty-task messages)."""
    return ", ".join(f"{c!r} has {table[c].nunique(dropna=False)} distinct value(s)" for c in cols if c in table)


def empty_task_problem(name, spec, profiles, groups, queries, active) -> str | None:
    """Why a retrieval task has nothing to rank (no queries, positives or negatives), or None.

    The message names the task, the columns that emptied it and the counts.
    """
    where = f"evaluate task {name!r}"
    n_rows = sum(len(g.meta) for g in groups)
    if n_rows == 0:
        if active is not None:
            return (f"{where}: no queries: {len(active)} class(es) of task {spec.active_from!r} were retrieved "
                    f"(active_from), 0 rows left matching on active_by {spec.active_by}")
        cols = sorted({c for r in spec.subset for c in r})
        return f"{where}: no queries: 0 of {len(profiles)} rows match the subset rules on columns {cols}"
    n_query = int(sum(g.is_query.sum() for g in groups))
    if n_query == 0:
        cols = sorted({c for r in spec.queries for c in r})
        return f"{where}: no queries: 0 of {n_rows} rows match the queries rules on columns {cols}"
    n_pos = queries["n_pos_pairs"].to_numpy(np.int64)
    n_neg = queries["n_total_pairs"].to_numpy(np.int64) - n_pos
    if (n_pos > 0).sum() == 0 or (n_neg > 0).sum() == 0:
        sample = pd.concat([g.meta for g in groups], ignore_index=True)  # for the hint only
    if (n_pos > 0).sum() == 0:
        return (f"{where}: no positive pairs: 0 of {len(queries)} queries have a row with the same pos_sameby "
                f"{spec.pos_sameby} and different pos_diffby {spec.pos_diffby} "
                f"({_distinct(sample, spec.pos_diffby + spec.pos_sameby)})")
    if (n_neg > 0).sum() == 0:
        return (f"{where}: no negative pairs: 0 of {len(queries)} queries have a row with the same neg_sameby "
                f"{spec.neg_sameby} and different neg_diffby {spec.neg_diffby} "
                f"({_distinct(sample, spec.neg_diffby + spec.neg_sameby)})")
    return None


def empty_task_mode(ecfg: EvaluateConfig) -> str:
    """``error`` or ``warn``: ``auto`` warns only while ``evaluate.tasks`` is the default CPJUMP1 list.

    Named tasks that cannot run are configuration errors; the default list is
    applied to whatever modalities a batch has, so its tasks that do not fit
    (no ORF plates, nothing retrieved by ``replicate``) are skipped loudly.
    """
    if ecfg.empty_task != "auto":
        return ecfg.empty_task
    return "warn" if list(ecfg.tasks) == list(default_eval_tasks()) else "error"


def _empty_task(message: str, ecfg: EvaluateConfig, empties: list, comm) -> None:
    """Stop on an empty task (mode ``error``) or report it loudly and go on (``warn``)."""
    if empty_task_mode(ecfg) == "error":
        raise TaskError(message + " (evaluate.empty_task: warn skips it and runs the other tasks)")
    empties.append(message)
    if comm.Get_rank() == 0:
        print(f"WARNING: {message}; task skipped", file=sys.stderr)


class PhaseClock:
    """Wall and CPU seconds per named phase on this rank; phases nest, time goes to the innermost.

    ``with clock("ap"):`` ... ``with clock("ap_gather"):`` ...: the seconds of
    the inner block count for ``ap_gather`` only, so the phases add up to the
    time inside them; time outside every phase is ``other``. :meth:`seconds`
    gives ``{phase: s, phase_cpu: s}``; the benchmark prints it per rank.
    Phases whose name ends in ``_gather`` or ``_exchange`` are collectives:
    transfers plus waiting for the slowest rank (MPI waits by polling, so
    waiting also counts as CPU time), which tells load imbalance from serial
    work.

    :attr:`segments` are the CPU seconds of work between consecutive
    collectives (every rank calls the same collectives in the same order, so
    segment ``i`` of every rank ends at the same synchronization point). The
    sum over segments of the largest rank's segment is the critical path: the
    wall time of the run on idle cores, which other load on a shared machine
    does not inflate the way it inflates wall seconds.
    """

    #: Phases in the order a task runs them (all reported, zero when a run has none).
    PHASES = ("prepare", "ap", "ap_gather", "ap_table", "nulls", "p_values", "p_gather", "bh", "class_table",
              "class_p", "null_exchange", "class_gather", "directionality", "other")

    def __init__(self):
        self.wall = dict.fromkeys(self.PHASES, 0.0)
        self.cpu = dict.fromkeys(self.PHASES, 0.0)
        self.segments: list[float] = []
        self._work = 0.0  # CPU seconds of work since the last collective
        self._stack: list[str] = []
        self._t = _now()

    @staticmethod
    def collective(phase: str) -> bool:
        return phase.endswith(("_gather", "_exchange"))

    def _charge(self) -> None:
        now = _now()
        top = self._stack[-1] if self._stack else "other"
        self.wall[top] = self.wall.get(top, 0.0) + now[0] - self._t[0]
        self.cpu[top] = self.cpu.get(top, 0.0) + now[1] - self._t[1]
        if not self.collective(top):
            self._work += now[1] - self._t[1]
        self._t = now

    @contextmanager
    def __call__(self, phase: str):
        self._charge()
        if self.collective(phase):
            self.segments.append(self._work)
            self._work = 0.0
        self._stack.append(phase)
        try:
            yield
        finally:
            self._charge()
            self._stack.pop()

    def seconds(self) -> dict:
        """Seconds per phase (wall and ``_cpu``), ``comm`` (all collectives) and ``total``, up to now."""
        self._charge()
        out = {}
        for k in self.wall:
            out[k], out[k + "_cpu"] = self.wall[k], self.cpu[k]
        coll = [k for k in self.wall if self.collective(k)]
        out["comm"], out["comm_cpu"] = sum(self.wall[k] for k in coll), sum(self.cpu[k] for k in coll)
        out["total"], out["total_cpu"] = sum(self.wall.values()), sum(self.cpu.values())
        return out

    def work_segments(self) -> list[float]:
        """:attr:`segments` with the work after the last collective, up to now."""
        self._charge()
        return self.segments + [self._work]


def phase(comm, name: str):
    """``comm.clock(name)`` on a communicator that carries a :class:`PhaseClock`, else a no-op context."""
    clock = getattr(comm, "clock", None)
    return clock(name) if clock is not None else nullcontext()


class ClockedComm:
    """The communicator with the run's :class:`PhaseClock` attached (``comm.clock``); collectives pass through."""

    def __init__(self, comm, clock: PhaseClock):
        self._comm, self.clock = comm, clock

    def __getattr__(self, name):
        return getattr(self._comm, name)


def _now() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def _cosine_backend(device: str):
    """The GPU backend when ``device`` asks for it (``gpu``, or ``auto`` with a GPU), else None (NumPy).

    On the CPU the cosine blocks are NumPy on the host; building the CPU
    :class:`~hpc_profiler.backend.Backend` would import ``scipy.ndimage``
    (~0.3 CPU s on every rank) for nothing.
    """
    if device == "cpu" or (device == "auto" and not gpu_available()):
        return None
    return get_backend(device)


def evaluate_profiles(profiles: pd.DataFrame, ecfg: EvaluateConfig, comm=None, device: str = "cpu") -> dict:
    """Run the configured tasks on a profile table; every rank returns the same tables.

    ``device`` (``cpu``, ``gpu``, ``auto``) is where the cosine blocks run.

    Returns
    -------
    dict of DataFrame
        ``queries`` (per-query AP, p, q), ``classes`` (mAP, q, retrieved),
        ``summary`` (per task x modality x cell type x time point),
        ``directionality`` and ``direction_pairs`` (cosines, for Fig. 5);
        ``empty_tasks``: the messages of tasks skipped as empty (mode
        ``warn``, :func:`empty_task_mode`); in mode ``error`` the first empty
        task raises :class:`TaskError`, and so does a run where every task
        is empty. ``seconds``: wall and CPU seconds of this rank per phase
        (:meth:`PhaseClock.seconds`); ``work_segments``: its CPU seconds of
        work between synchronization points (:meth:`PhaseClock.work_segments`).
    """
    comm = comm or mpi.get_comm()
    bk = _cosine_backend(device)
    keep_raw = ecfg.map_pvalue or ecfg.class_significance == "map_permutation"
    all_q, all_c, all_s, all_d, all_dp = [], [], [], [], []
    empties: list[str] = []
    # wall and CPU seconds per phase on this rank (benchmarks)
    clock = PhaseClock()  # wall and CPU seconds per phase on this rank (benchmarks)
    comm = ClockedComm(comm, clock)
    store = NullStore(ecfg.null_size, ecfg.seed, comm, keep_raw=keep_raw)
    retrieved: dict[str, pd.DataFrame] = {}
    for wave in task_waves(ecfg):
        for name in wave:
            spec = ecfg.definitions[name]
            active = None
            if spec.active_from is not None:
                act = retrieved[spec.active_from]
                active = act.loc[act["retrieved"]] if len(act) else act
            if spec.kind == "directionality":
                with clock("directionality"):
                    d, dp = directionality_task(name, spec, profiles, active)
                if len(d) == 0:
                    _empty_task(f"evaluate task {name!r}: no group has both pair_a and pair_b rows with a true pair "
                                f"(sharing pair_by {spec.pair_by}) and a null pair; 0 pairs", ecfg, empties, comm)
                    continue
                all_d.append(d)
                all_dp.append(dp)
                continue
            with clock("prepare"):
                groups = prepare_task(name, spec, profiles, active)
            with clock("ap"):
                q_tabs = distributed_ap(groups, {name: spec}, ecfg.block_size, comm, bk)
            with clock("ap_table"):
                queries = pd.concat(q_tabs, ignore_index=True) if q_tabs else pd.DataFrame()
                problem = empty_task_problem(name, spec, profiles, groups, queries, active)
            if problem:
                _empty_task(problem, ecfg, empties, comm)
                retrieved[name] = pd.DataFrame(columns=["retrieved"])
                continue
            with clock("ap_table"):
                if not spec.queries:  # no query rule: the rows that have a positive
                    queries = queries.loc[queries["n_pos_pairs"] > 0].reset_index(drop=True)
                queries["normalized_average_precision"] = apk.normalized_ap(
                    queries["average_precision"].to_numpy(float), queries["n_pos_pairs"].to_numpy(np.int64),
                    queries["n_total_pairs"].to_numpy(np.int64),
                )
            # query p-values (owners of the nulls), class p-values (classes split over ranks): one gather
            batch = DeferredGather(comm)
            with clock("p_values"):
                p = store.p_values(
                    queries["average_precision"].to_numpy(float),
                    queries["n_pos_pairs"].to_numpy(np.int64),
                    queries["n_total_pairs"].to_numpy(np.int64),
                    batch,
                )
            with clock("class_table"):
                finish_classes = class_table_start(queries, spec, ecfg, store, batch)
            batch.run()
            with clock("bh"):
                queries["p_value"] = p
                queries = add_q_values(queries, spec)
            with clock("class_table"):
                classes = finish_classes(queries)
                summary = summarize(classes, name, spec)
            retrieved[name] = classes
            all_q.append(queries)
            all_c.append(classes)
            all_s.append(summary)
    ran = len(all_q) + len(all_d)
    if empties and ran == 0:
        raise TaskError(f"evaluate: every task was empty ({len(empties)}): " + "; ".join(empties))
    return {
        "queries": _concat(all_q),
        "classes": _concat(all_c),
        "summary": _concat(all_s),
        "directionality": _concat(all_d),
        "direction_pairs": _concat(all_dp),
        "nulls_drawn": store.drawn,
        "null_bytes_received": store.bytes_received,
        "empty_tasks": empties,
        "seconds": clock.seconds(),
        "work_segments": clock.work_segments(),
    }


def profiles_path(cfg: Config) -> Path:
    name = "well_feature_selected.parquet" if cfg.evaluate.profiles == "feature_selected" else "well_normalized.parquet"
    return Layout.of(cfg).profile(name)


#: CellProfiler compartments whose prefixes mark feature columns (pycytominer ``infer_cp_features``).
CP_COMPARTMENTS = ("Cells_", "Cytoplasm_", "Nuclei_")


def profile_format(path) -> str:
    """``parquet``, ``csv.gz`` or ``csv`` from the first bytes of the file (not from its name).

    Parquet files start with ``PAR1``, gzip streams with ``1f 8b``; anything
    else is read as plain CSV.
    """
    with open(path, "rb") as fh:
        head = fh.read(4)
    if head == b"PAR1":
        return "parquet"
    if head[:2] == b"\x1f\x8b":
        return "csv.gz"
    return "csv"


def profile_columns(names) -> tuple[list, list, list]:
    """Metadata, feature and left-out columns of a profile table with these column names.

    Metadata are the ``Metadata_`` columns (pycytominer ``infer_cp_features(metadata=True)``);
    features are the CellProfiler compartment columns (``Cells_``,
    ``Cytoplasm_``, ``Nuclei_``, pycytominer's default) when the table has any,
    else every other column; the rest is left out.
    """
    meta = [c for c in names if str(c).startswith("Metadata_")]
    rest = [c for c in names if not str(c).startswith("Metadata_")]
    cp = [c for c in rest if str(c).startswith(CP_COMPARTMENTS)]
    feats = cp if cp else rest
    chosen = set(feats)
    return meta, feats, [c for c in rest if c not in chosen]


def read_parquet_shared(path, comm) -> tuple[pd.DataFrame, list] | None:
    """The metadata and feature columns of a Parquet table, each rank decoding a share of the features.

    Every rank reads the metadata columns and a contiguous share of the
    feature columns (Parquet stores columns apart, so a rank decodes only its
    share), and the shares are exchanged in one ``Allgatherv`` (8 bytes per
    value; 135 MB for 56,400 wells x 300 features, once over shared memory):
    every rank then holds what ``pd.read_parquet`` gives for those columns,
    the same values in the same single float64 block, for a fraction of the
    decoding each rank did before. Returns the table and the left-out
    column names, or None (read the whole file on every rank) on one rank,
    when a feature column is not float64 or names repeat; the decision
    depends only on the file, so every rank takes the same path.
    """
    if comm is None or comm.Get_size() == 1:
        return None
    import pyarrow as pa
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    schema, n_rows = pf.schema_arrow, pf.metadata.num_rows
    index_cols = {c for c in (schema.pandas_metadata or {}).get("index_columns", []) if isinstance(c, str)}
    names = [c for c in schema.names if c not in index_cols]
    meta, feats, left_out = profile_columns(names)
    if (not meta or not feats or len(set(schema.names)) != len(schema.names)
            or any(schema.field(c).type != pa.float64() for c in feats) or len(feats) * n_rows >= 2**31):
        return None
    from mpi4py import MPI

    size, rank = comm.Get_size(), comm.Get_rank()
    cut = [len(feats) * r // size for r in range(size + 1)]
    mine = feats[cut[rank] : cut[rank + 1]]
    send = np.empty((len(mine), n_rows))
    if mine:
        for i, col in enumerate(pq.read_table(path, columns=mine, use_pandas_metadata=False).columns):
            send[i] = col.to_numpy()  # a null is NaN, as in pd.read_parquet
    values = np.empty((len(feats), n_rows))  # feature-major: pandas' own layout of one float64 block
    counts = [(cut[r + 1] - cut[r]) * n_rows for r in range(size)]
    comm.Allgatherv(send, [values, counts, [c * n_rows for c in cut[:-1]], MPI.DOUBLE])
    base = pd.read_parquet(path, columns=meta)  # with the stored index, as the whole file would have it
    return pd.concat([base, pd.DataFrame(values.T, index=base.index, columns=feats, copy=False)], axis=1), left_out


def read_profile_table(path, comm=None) -> pd.DataFrame:
    """A well-profile table from Parquet, CSV or gzip-compressed CSV (pycytominer's outputs).

    The format comes from the file's content (:func:`profile_format`);
    columns as :func:`profile_columns` tells them apart. Other columns (e.g.
    ``Image_*`` paths, an unnamed index) are left out and named on stderr; a
    non-numeric feature column is an error naming the file and the column.
    With ``comm`` of several ranks a Parquet table's features are decoded in
    shares (:func:`read_parquet_shared`); every rank gets the same table.
    """
    fmt = profile_format(path)
    shared = read_parquet_shared(path, comm) if fmt == "parquet" else None
    if shared is not None:
        table, left_out = shared
        meta, feats, _ = profile_columns(list(table.columns))
    else:
        if fmt == "parquet":
            table = pd.read_parquet(path)
        else:
            # metadata as strings (a plate named 0001 stays "0001"), features as numbers
            cols = pd.read_csv(path, nrows=0, compression="gzip" if fmt == "csv.gz" else None).columns
            dtypes = {c: str for c in cols if str(c).startswith("Metadata_")}
            table = pd.read_csv(path, compression="gzip" if fmt == "csv.gz" else None, dtype=dtypes,
                                keep_default_na=True, low_memory=False)
        meta, feats, left_out = profile_columns(list(table.columns))
    bad = [c for c in feats if not pd.api.types.is_numeric_dtype(table[c])]
    if bad:
        raise ValueError(f"evaluate: {path}: feature column {bad[0]!r} is not numeric ({len(bad)} such column(s)); "
                         f"name metadata columns with the Metadata_ prefix")
    if left_out and (comm or mpi.get_comm()).Get_rank() == 0:
        print(f"evaluate: {path}: left out {len(left_out)} column(s) that are neither Metadata_ nor "
              f"{'/'.join(CP_COMPARTMENTS)} features (e.g. {left_out[0]!r})", file=sys.stderr)
    return table[meta + feats]


def read_profiles(path: Path, drop_nonfinite: bool = False, comm=None) -> pd.DataFrame:
    """Read the well table (:func:`read_profile_table`); checks that features are finite.

    With ``drop_nonfinite`` a feature that is NaN or infinite in any well is
    dropped (a median over cells can be NaN where every cell of a well lacks a
    value, e.g. texture of objects too small for the scale; feature selection
    keeps features with under 5 % missing values); the drop is reported on
    stderr. Without it such a well is an error that names it.
    """
    try:
        table = read_profile_table(path, comm)
    except (OSError, EOFError) as exc:
        raise FileNotFoundError(f"evaluate: cannot read profiles {path}: {exc}") from exc
    except ValueError as exc:
        if str(exc).startswith("evaluate:"):
            raise
        raise FileNotFoundError(f"evaluate: cannot read profiles {path}: {exc}") from exc
    feats = feature_columns(table)
    x = table[feats].to_numpy(dtype=np.float64)
    finite = np.isfinite(x)
    if drop_nonfinite and not finite.all():
        bad_cols = [f for f, ok in zip(feats, finite.all(axis=0)) if not ok]
        if len(bad_cols) == len(feats):
            raise ValueError(f"evaluate: {path}: every feature is non-finite in some well")
        if (comm or mpi.get_comm()).Get_rank() == 0:
            print(f"evaluate: dropped {len(bad_cols)} of {len(feats)} feature(s) with non-finite values "
                  f"in some well (e.g. {bad_cols[0]})", file=sys.stderr)
        table = table.drop(columns=bad_cols)
        feats = feature_columns(table)
        x = table[feats].to_numpy(dtype=np.float64)
    bad = ~np.isfinite(x).all(axis=1)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        where = {k: table[k].iloc[i] for k in ("Metadata_Plate", "Metadata_Well") if k in table.columns}
        raise ValueError(f"evaluate: {path}: {int(bad.sum())} well(s) with non-finite features, first {where}")
    return table


#: Relative cost of writing one table cell to Parquet and one figure (for splitting the files over ranks):
#: ~0.27 us per Parquet cell and ~0.35 s per Fig. 4 (CPU, on the tables of ``scripts/bench_evaluate.py``
#: case (c) at --scale 0.2, 2026-11-28; CSV formatting, ~1.1-1.7 us per cell, is split by rows instead).
WRITE_COST = {"parquet": 1.0, "plot": 1.3e6}


def output_files(results: dict, plots: bool) -> list[tuple[str, str, float]]:
    """The Parquet tables and figures :func:`write_outputs` writes: ``(kind, table or figure, relative cost)``."""
    files = []
    for name in ("queries", "classes", "summary", "directionality", "direction_pairs"):
        cells = (len(results[name]) + 1) * (len(results[name].columns) + 1)
        files.append(("parquet", name, WRITE_COST["parquet"] * cells))
    if plots and len(results["classes"]):
        files.append(("plot", "fig4_map.png", WRITE_COST["plot"]))
    if plots and len(results["direction_pairs"]):
        files.append(("plot", "fig5_cosine.png", WRITE_COST["plot"]))
    return files


def _csv_rows(df: pd.DataFrame, rank: int, size: int) -> str:
    """Rank ``rank``'s contiguous share of ``df``'s CSV text; rank 0's starts with the header."""
    lo, hi = len(df) * rank // size, len(df) * (rank + 1) // size
    if rank > 0 and hi == lo:
        return ""
    return df.iloc[lo:hi].to_csv(index=False, header=rank == 0)


def write_outputs(results: dict, out_dir: Path, csv: bool, plots: bool, comm=None) -> None:
    """Parquet (+CSV) tables and the Fig. 4 / Fig. 5 PNGs under ``out_dir``, the work split over the ranks.

    Every rank holds the same tables. The Parquet files and figures are
    shared out whole (balanced by :data:`WRITE_COST`,
    :func:`hpc_profiler.mpi.split_balanced`); formatting CSV text, the
    largest part, is split by rows (each rank formats a contiguous share of
    every table, rank 0 joins the shares in order and writes the files: the
    bytes of ``DataFrame.to_csv(index=False)``). So rank 0 does not write
    alone while the others wait. Call it on every rank (``comm`` None: one
    process writes everything).
    """
    comm = comm or mpi.SerialComm()
    rank, size = comm.Get_rank(), comm.Get_size()
    out_dir.mkdir(parents=True, exist_ok=True)
    names = ("queries", "classes", "summary", "directionality", "direction_pairs")
    files = output_files(results, plots)
    for kind, name, _ in (files[i] for i in mpi.split_balanced([f[2] for f in files], size)[rank]):
        if kind == "parquet":
            results[name].to_parquet(out_dir / f"{name}.parquet", index=False)
        elif name == "fig4_map.png":
            from .plots import plot_retrieval

            plot_retrieval(results["classes"], results["summary"], out_dir / name)
        else:
            from .plots import plot_directionality

            plot_directionality(results["direction_pairs"], results["directionality"], out_dir / name)
    if csv:
        shares = comm.gather([_csv_rows(results[name], rank, size) for name in names], root=0)
        if rank == 0:
            for i, name in enumerate(names):
                with open(out_dir / f"{name}.csv", "w", newline="") as fh:
                    fh.write("".join(share[i] for share in shares))


def evaluate_batch(cfg: Config, comm=None) -> pd.DataFrame:
    """Library entry of ``hpc-profiler run``: read the well table, run, write on rank 0; returns the summary."""
    comm = comm or mpi.get_comm()
    with mpi.abort_on_error(comm):
        nulls.load_kernels()
        profiles = read_profiles(profiles_path(cfg), cfg.evaluate.drop_nonfinite_features, comm)
        results = evaluate_profiles(profiles, cfg.evaluate, comm, cfg.device)
        write_outputs(results, Layout.of(cfg).evaluate_dir, cfg.evaluate.csv, cfg.evaluate.plots, comm)
        comm.barrier()
    return results["summary"]


def add_evaluate_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Arguments of ``hpc-profiler evaluate`` (CONFIG plus overrides)."""
    parser.add_argument("config", help="YAML config file")
    parser.add_argument("--profiles", help="well table to evaluate (default: <output_dir>/profiles/well_*.parquet)")
    parser.add_argument("--out", help="output folder (default: <output_dir>/evaluate)")
    parser.add_argument("--null-size", type=int, help="permutations per null (default: evaluate.null_size)")
    parser.add_argument("--seed", type=int, help="seed of the nulls (default: evaluate.seed)")
    parser.add_argument("--tasks", nargs="+", help="tasks to run (default: evaluate.tasks)")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG figures")
    parser.add_argument("--strict", action="store_true",
                        help="a task with no queries, positives or negatives stops the run (evaluate.empty_task: error)")
    return parser


#: A folder where every rank of ``hpc-profiler evaluate`` writes ``rank<r>.json`` (:class:`StageTimes`),
#: for ``scripts/bench_evaluate.py``; unset (the default), nothing is written.
TIMES_ENV = "HPC_PROFILER_EVALUATE_TIMES"


def _seconds_since_start() -> float | None:
    """Wall seconds since this process started (Linux ``/proc``; None elsewhere), 10 ms resolution."""
    try:
        with open("/proc/self/stat") as fh:
            start_ticks = float(fh.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as fh:
            uptime = float(fh.read().split()[0])
        return uptime - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


class StageTimes:
    """Wall and CPU seconds of one rank of ``hpc-profiler evaluate``, stage by stage, from the process's start.

    ``startup`` is everything before :func:`main_evaluate` (interpreter,
    imports, argument parsing, the CLI's preflight): its CPU seconds are the
    process's CPU time at that point, its wall seconds the process's age
    (:func:`_seconds_since_start`). Then ``mpi_start`` (``MPI_Init``, the
    start-up watchdog), ``kernels`` (numba), ``read``, ``evaluate`` (with the
    phases of :class:`PhaseClock`), ``write`` and ``final_barrier``. Written
    only when :data:`TIMES_ENV` names a folder.
    """

    def __init__(self):
        self.stages = {"startup": (_seconds_since_start(), time.process_time())}
        self._t = _now()

    def mark(self, name: str) -> None:
        now = _now()
        self.stages[name] = (now[0] - self._t[0], now[1] - self._t[1])
        self._t = now

    def save(self, comm, results: dict) -> None:
        folder = os.environ.get(TIMES_ENV)
        if not folder:
            return
        rec = {"rank": comm.Get_rank(), "ranks": comm.Get_size(),
               "stages": {k: {"wall": w, "cpu": c} for k, (w, c) in self.stages.items()},
               "phases": results["seconds"], "work_segments": results["work_segments"],
               "null_bytes_received": results["null_bytes_received"]}
        Path(folder, f"rank{comm.Get_rank()}.json").write_text(json.dumps(rec))


def main_evaluate(args) -> int:
    """``hpc-profiler evaluate CONFIG``; under ``mpirun -n N`` the ranks share the work."""
    stages = StageTimes()
    heap.retain_freed_memory()  # freed arrays' pages serve the next ones: no fault storm in every rank
    comm = mpi.get_comm()
    stages.mark("mpi_start")
    cfg = load_config_or_report(args.config, report=comm.Get_rank() == 0)
    if cfg is None:
        return 2
    e = cfg.evaluate
    if args.null_size is not None:
        e.null_size = args.null_size
    if args.seed is not None:
        e.seed = args.seed
    if args.tasks:
        e.tasks = list(args.tasks)
    if args.no_plots:
        e.plots = False
    if args.strict:
        e.empty_task = "error"
    src = Path(args.profiles) if args.profiles else profiles_path(cfg)
    out = Path(args.out) if args.out else Layout.of(cfg).evaluate_dir
    stages.mark("config")
    try:
        with mpi.abort_on_error(comm):
            nulls.load_kernels()
            stages.mark("kernels")
            profiles = read_profiles(src, e.drop_nonfinite_features, comm)
            stages.mark("read")
            results = evaluate_profiles(profiles, e, comm, cfg.device)
            stages.mark("evaluate")
            write_outputs(results, out, e.csv, e.plots, comm)
            stages.mark("write")
            comm.barrier()  # every rank's files are written before the run reports them
            stages.mark("final_barrier")
            stages.save(comm, results)
            if comm.Get_rank() == 0:
                if len(results["summary"]):
                    with pd.option_context("display.width", 160, "display.max_columns", 20):
                        print(results["summary"].to_string(index=False))
                else:
                    print("evaluate: no summary rows (no task had classes to score)")
                print(f"evaluate: {comm.Get_size()} rank(s); tables under {out}")
    except (ConfigError, TaskError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if results["empty_tasks"]:
        # explicit warn: non-zero so a pipeline notices; auto on the default list: the batch's tasks ran
        code = 3 if e.empty_task == "warn" else 0
        if comm.Get_rank() == 0:
            print(f"WARNING: {len(results['empty_tasks'])} empty task(s) skipped (see above); exit status {code}",
                  file=sys.stderr)
        return code
    return 0


def main(argv=None) -> int:
    parser = add_evaluate_arguments(argparse.ArgumentParser(prog="python -m hpc_profiler.evaluate"))
    return main_evaluate(parser.parse_args(argv))
