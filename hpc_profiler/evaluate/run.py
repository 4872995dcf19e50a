"""The CPJUMP1 benchmark driver: tasks -> AP -> nulls -> q-values -> tables, on MPI ranks.

Reproduces the evaluation of Chandrasekaran et al. (2024, CPJUMP1) with the
copairs 0.5.5 definitions (``average_precision``, ``p_values``,
``mean_average_precision``):

1. for every retrieval task and group (modality x cell type x time point)
   the queries, in runs of ``block_size`` replicates of the same
   perturbations, are split across ranks balanced by their number of
   candidates (:func:`hpc_profiler.mpi.split_balanced`); each rank builds its
   queries' rank lists, computes cosines in BLAS blocks and the AP of each
   query;
2. the null configurations ``(n_pos, N)`` of all queries are split across
   ranks by cost; each null is drawn once (seeded by ``(seed, n_pos, N)``,
   never by rank) and kept by its owner for later tasks; the owner computes
   the p-values of every query with that configuration;
3. rank 0 gathers everything, applies Benjamini-Hochberg per (task, group),
   aggregates classes (mAP, geometric mean of q; optionally copairs'
   mAP-level permutation p-value), writes the tables and plots.

Tasks with ``active_from`` run in a later wave, on the perturbations the
earlier task retrieved. Directionality tasks (a few matrix products) and the
table building are repeated on every rank rather than communicated. The
numbers are identical for any number of ranks.
Without MPI the same code runs as one process (:func:`hpc_profiler.mpi.get_comm`).

Deliberate differences from copairs: BH q-values are computed per query (and
per class for ``map_permutation``) within each (task, group); the class
q-value of the paper is the geometric mean of its queries' q-values.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from .. import mpi
from ..backend import get_backend, to_numpy
from ..config import Config, ConfigError, EvaluateConfig, load_config_or_report
from . import ap as apk
from . import nulls, stats
from .tasks import SUMMARY_KEYS, TaskError, feature_columns, match_rules, prepare_task


# --------------------------------------------------------------------------- AP phase
def query_weights(group) -> np.ndarray:
    """Candidates per query (balancing weight): sizes of its positive and negative sameby groups."""
    w = np.zeros(len(group.meta))
    for cols in (group.pos_sameby, group.neg_sameby):
        codes = apk.encode_columns(group.meta, cols)
        gid = apk.group_ids(codes, len(group.meta))
        w += np.bincount(gid)[gid]
    return w


def group_ap(group, rows: np.ndarray, similarity: str, block_size: int, bk=None):
    """AP, n_pos, n_total of the query ``rows`` of one task group (copairs ``average_precision``).

    The cosine blocks run on backend ``bk`` (default CPU); the rest on the host.
    """
    meta = group.meta
    rl = apk.build_rank_lists(
        apk.encode_columns(meta, group.pos_sameby),
        apk.encode_columns(meta, group.pos_diffby),
        apk.encode_columns(meta, group.neg_sameby),
        apk.encode_columns(meta, group.neg_diffby),
        rows=rows,
    )
    unit = apk.unit_rows(group.feats if bk is None else bk.asarray(group.feats))
    sim = np.empty(len(rl), dtype=np.float32)
    for lab in (True, False):  # positives and negatives have their own block shapes
        sel = np.flatnonzero(rl.positive == lab)
        sim[sel] = apk.pair_similarity(
            unit, rl.query[sel], rl.cand[sel], absolute=similarity == "abs_cosine", block_size=block_size
        )
    ap, n_pos, n_total = apk.average_precision(rl.query, rl.positive, sim, len(meta))
    return ap[rows], n_pos[rows], n_total[rows]


def query_chunks(group, block_size: int) -> tuple[list[np.ndarray], list[float]]:
    """Queries of a group cut into runs of ``block_size`` that share candidates, with their work.

    Queries are ordered by their positive ``sameby`` group (replicates of a
    perturbation stay together) so a rank's similarity blocks stay dense.
    """
    rows = np.flatnonzero(group.is_query)
    gid = apk.group_ids(apk.encode_columns(group.meta, group.pos_sameby), len(group.meta))[rows]
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
    for gi, chunks in sorted(mine.items()):
        rows = np.sort(np.concatenate(chunks))
        ap, n_pos, n_total = group_ap(groups[gi], rows, specs[groups[gi].task].similarity, block_size, bk)
        local.append((gi, rows, ap, n_pos, n_total))
    gathered = [x for part in comm.allgather(local) for x in part]
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

    def assign(self, confs: list[tuple]) -> None:
        new = [c for c in confs if c not in self.owner]
        w = [nulls.null_cost(k, n) * self.size for k, n in new]
        for p, idx in enumerate(mpi.split_balanced(w, self.comm.Get_size())):
            for i in idx:
                self.owner[new[i]] = p

    def get(self, conf: tuple) -> np.ndarray:
        if conf not in self.sorted:
            raw = nulls.null_distribution(conf[0], conf[1], self.size, self.seed)
            if self.keep_raw:
                self.raw[conf] = raw
            self.sorted[conf] = np.sort(raw)
            self.drawn += 1
        return self.sorted[conf]

    def p_values(self, ap: np.ndarray, n_pos: np.ndarray, n_total: np.ndarray) -> np.ndarray:
        """p-values of all queries (NaN where n_pos = 0), computed by the owners; on every rank."""
        ok = np.flatnonzero((n_pos > 0) & ~np.isnan(ap))
        p = np.full(len(ap), np.nan)
        if len(ok) == 0:
            return p
        confs_arr, inv = np.unique(np.stack([n_pos[ok], n_total[ok]], axis=1), axis=0, return_inverse=True)
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
        for part in self.comm.allgather(local):
            for sel, pv in part:
                p[sel] = pv
        return p

    def raw_nulls(self, confs: list[tuple]) -> dict:
        """Unsorted nulls of ``confs`` on every rank (for copairs' mAP-level p-value)."""
        mine = {}
        for c in confs:
            if self.owner.get(c) == self.comm.Get_rank():
                self.get(c)
                mine[c] = self.raw[c]
        out = {}
        for part in self.comm.allgather(mine):
            out.update(part)
        return out


# --------------------------------------------------------------------------- classes
def group_rows(table: pd.DataFrame, cols: list[str]) -> list[np.ndarray]:
    """Index labels of each group of ``cols`` (one group when ``cols`` is empty), groups sorted."""
    if not cols or len(table) == 0:
        return [table.index.to_numpy()]
    gid, _ = pd.MultiIndex.from_frame(table[cols].astype(str)).factorize(sort=True)
    return [table.index.to_numpy()[gid == g] for g in range(gid.max() + 1)]


def class_table(queries: pd.DataFrame, spec, ecfg: EvaluateConfig, store: NullStore | None) -> pd.DataFrame:
    """Per-class mAP, combined q-value (and optionally copairs' mAP p-value), retrieved flag."""
    keys = list(dict.fromkeys(spec.group_by + spec.class_by))
    valid = queries.loc[(queries["n_pos_pairs"] > 0) & queries["average_precision"].notna()].reset_index(drop=True)
    if len(valid) == 0:
        return pd.DataFrame(columns=["task"] + keys + ["mean_average_precision", "q_value", "retrieved"])
    gid, uniq = pd.MultiIndex.from_frame(valid[keys].astype(str)).factorize(sort=True)
    n = len(uniq)
    extra = [k for k in SUMMARY_KEYS if k in valid.columns and k not in keys]
    const = valid[extra].astype(str).groupby(gid, sort=True).nunique()
    keys += [k for k in extra if bool((const[k] == 1).all())]
    first = valid.groupby(gid, sort=True)[keys].first().reset_index(drop=True)
    cnt = np.bincount(gid, minlength=n)
    out = first.copy()
    out.insert(0, "task", valid["task"].iloc[0])
    out["n_queries"] = cnt
    out["mean_average_precision"] = np.bincount(gid, weights=valid["average_precision"], minlength=n) / cnt
    out["geomean_q_value"] = stats.geometric_mean(valid["q_value"].to_numpy(), gid, n)
    if ecfg.map_pvalue or ecfg.class_significance == "map_permutation":
        confs = sorted({(int(k), int(t)) for k, t in zip(valid["n_pos_pairs"], valid["n_total_pairs"])})
        raw = store.raw_nulls(confs)
        conf_ix = {c: i for i, c in enumerate(confs)}
        stack = np.stack([raw[c] for c in confs])
        vix = np.array([conf_ix[(int(k), int(t))] for k, t in zip(valid["n_pos_pairs"], valid["n_total_pairs"])])
        members = pd.Series(np.arange(len(valid))).groupby(gid, sort=True).apply(list)
        out["map_p_value"] = [
            nulls.map_p_value(m, stack[vix[idx]]) for m, idx in zip(out["mean_average_precision"], members)
        ]
        out["map_q_value"] = np.nan
        for idx in group_rows(out, spec.group_by):
            out.loc[idx, "map_q_value"] = stats.bh_qvalues(out.loc[idx, "map_p_value"].to_numpy())
    qcol = "geomean_q_value" if ecfg.class_significance == "geomean_q" else "map_q_value"
    out["q_value"] = out[qcol]
    out["retrieved"] = out["q_value"] < ecfg.q_threshold
    return out


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


def evaluate_profiles(profiles: pd.DataFrame, ecfg: EvaluateConfig, comm=None, device: str = "cpu") -> dict:
    """Run the configured tasks on a profile table; every rank returns the same tables.

    ``device`` (``cpu``, ``gpu``, ``auto``) is where the cosine blocks run.

    Returns
    -------
    dict of DataFrame
        ``queries`` (per-query AP, p, q), ``classes`` (mAP, q, retrieved),
        ``summary`` (per task x modality x cell type x time point),
        ``directionality`` and ``direction_pairs`` (cosines, for Fig. 5).
    """
    comm = comm or mpi.get_comm()
    bk = get_backend(device)
    keep_raw = ecfg.map_pvalue or ecfg.class_significance == "map_permutation"
    store = NullStore(ecfg.null_size, ecfg.seed, comm, keep_raw=keep_raw)
    all_q, all_c, all_s, all_d, all_dp = [], [], [], [], []
    retrieved: dict[str, pd.DataFrame] = {}
    for wave in task_waves(ecfg):
        for name in wave:
            spec = ecfg.definitions[name]
            active = None
            if spec.active_from is not None:
                act = retrieved[spec.active_from]
                active = act.loc[act["retrieved"]] if len(act) else act
            if spec.kind == "directionality":
                d, dp = directionality_task(name, spec, profiles, active)
                all_d.append(d)
                all_dp.append(dp)
                continue
            groups = prepare_task(name, spec, profiles, active)
            q_tabs = distributed_ap(groups, {name: spec}, ecfg.block_size, comm, bk)
            queries = pd.concat(q_tabs, ignore_index=True) if q_tabs else pd.DataFrame()
            if not spec.queries and len(queries):  # no query rule: the rows that have a positive
                queries = queries.loc[queries["n_pos_pairs"] > 0].reset_index(drop=True)
            if len(queries) == 0:
                retrieved[name] = pd.DataFrame(columns=["retrieved"])
                continue
            queries["p_value"] = store.p_values(
                queries["average_precision"].to_numpy(float),
                queries["n_pos_pairs"].to_numpy(np.int64),
                queries["n_total_pairs"].to_numpy(np.int64),
            )
            queries = add_q_values(queries, spec)
            classes = class_table(queries, spec, ecfg, store)
            retrieved[name] = classes
            all_q.append(queries)
            all_c.append(classes)
            all_s.append(summarize(classes, name, spec))
    return {
        "queries": _concat(all_q),
        "classes": _concat(all_c),
        "summary": _concat(all_s),
        "directionality": _concat(all_d),
        "direction_pairs": _concat(all_dp),
        "nulls_drawn": store.drawn,
    }


def profiles_path(cfg: Config) -> Path:
    name = "well_feature_selected.parquet" if cfg.evaluate.profiles == "feature_selected" else "well_normalized.parquet"
    return Path(cfg.out) / "profiles" / name


def read_profiles(path: Path, drop_nonfinite: bool = False) -> pd.DataFrame:
    """Read the well table; checks that features are finite and named metadata are present.

    With ``drop_nonfinite`` a feature that is NaN or infinite in any well is
    dropped (a median over cells can be NaN where every cell of a well lacks a
    value, e.g. texture of objects too small for the scale; feature selection
    keeps features with under 5 % missing values); the drop is reported on
    stderr. Without it such a well is an error that names it.
    """
    try:
        table = pd.read_parquet(path)
    except Exception as exc:
        raise FileNotFoundError(f"evaluate: cannot read profiles {path}: {exc}") from exc
    feats = feature_columns(table)
    x = table[feats].to_numpy(dtype=np.float64)
    finite = np.isfinite(x)
    if drop_nonfinite and not finite.all():
        bad_cols = [f for f, ok in zip(feats, finite.all(axis=0)) if not ok]
        if len(bad_cols) == len(feats):
            raise ValueError(f"evaluate: {path}: every feature is non-finite in some well")
        if mpi.get_comm().Get_rank() == 0:
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


def write_outputs(results: dict, out_dir: Path, csv: bool, plots: bool) -> None:
    """Parquet (+CSV) tables and the Fig. 4 / Fig. 5 PNGs under ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in ("queries", "classes", "summary", "directionality", "direction_pairs"):
        df = results[name]
        df.to_parquet(out_dir / f"{name}.parquet", index=False)
        if csv:
            df.to_csv(out_dir / f"{name}.csv", index=False)
    if plots:
        from .plots import plot_directionality, plot_retrieval

        if len(results["classes"]):
            plot_retrieval(results["classes"], results["summary"], out_dir / "fig4_map.png")
        if len(results["direction_pairs"]):
            plot_directionality(results["direction_pairs"], results["directionality"], out_dir / "fig5_cosine.png")


def evaluate_batch(cfg: Config, comm=None) -> pd.DataFrame:
    """Library entry of ``hpc-profiler run``: read the well table, run, write on rank 0; returns the summary."""
    comm = comm or mpi.get_comm()
    with mpi.abort_on_error(comm):
        profiles = read_profiles(profiles_path(cfg), cfg.evaluate.drop_nonfinite_features)
        results = evaluate_profiles(profiles, cfg.evaluate, comm, cfg.device)
        if comm.Get_rank() == 0:
            write_outputs(results, Path(cfg.out) / "evaluate", cfg.evaluate.csv, cfg.evaluate.plots)
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
    return parser


def main_evaluate(args) -> int:
    """``hpc-profiler evaluate CONFIG``; under ``mpirun -n N`` the ranks share the work."""
    comm = mpi.get_comm()
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
    src = Path(args.profiles) if args.profiles else profiles_path(cfg)
    out = Path(args.out) if args.out else Path(cfg.out) / "evaluate"
    try:
        with mpi.abort_on_error(comm):
            results = evaluate_profiles(read_profiles(src, e.drop_nonfinite_features), e, comm, cfg.device)
            if comm.Get_rank() == 0:
                write_outputs(results, out, e.csv, e.plots)
                with pd.option_context("display.width", 160, "display.max_columns", 20):
                    print(results["summary"].to_string(index=False))
                print(f"evaluate: {comm.Get_size()} rank(s); tables under {out}")
    except (ConfigError, TaskError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def main(argv=None) -> int:
    parser = add_evaluate_arguments(argparse.ArgumentParser(prog="python -m hpc_profiler.evaluate"))
    return main_evaluate(parser.parse_args(argv))
