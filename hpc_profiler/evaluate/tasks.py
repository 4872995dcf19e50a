"""Benchmark tasks as data: row selection, consensus profiles, pair rules.

A task is an :class:`hpc_profiler.config.EvalTaskConfig` block. This module
turns it plus a well-profile table into per-group inputs of the AP engine:

* ``subset`` keeps rows (a list of rules, OR of AND-ed ``column: [values]``);
  rules are plain data, never evaluated as code;
* ``active_from`` keeps only perturbations retrieved by an earlier task
  (CPJUMP1: tasks 2-4 drop perturbations with q > 0.05 in task 1);
* ``consensus_by`` averages replicate wells into consensus profiles (mean of
  every feature, like ``pycytominer.consensus`` with ``operation="mean"``;
  metadata columns constant within a consensus group are kept);
* ``controls`` rows get a unique ``Metadata_Reference_Index`` and the column is
  added to ``pos_sameby`` and ``neg_diffby`` (copairs'
  ``assign_reference_index`` recipe): controls are never positives of each
  other and two treatments are never each other's negatives;
* ``group_by`` splits the table (modality x cell type x time point);
* ``multilabel_col`` (copairs' multilabel matching): a row whose column
  holds ``A|B`` becomes one row per label (:func:`explode_labels`); positives
  share one label (the column is in ``pos_sameby``), negatives share none
  (it is in ``neg_diffby``, checked on the label sets, each negative row
  counted once), one AP per query and label.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ..config import EvalTaskConfig

REFERENCE_COL = "Metadata_Reference_Index"
#: Columns of the summary table (task x modality x cell type x time point).
SUMMARY_KEYS = ["Metadata_modality", "Metadata_cell_type", "Metadata_timepoint"]


class TaskError(ValueError):
    """A task definition that does not fit the profile table (names the task and column)."""


def metadata_columns(table: pd.DataFrame) -> list[str]:
    return [c for c in table.columns if str(c).startswith("Metadata_")]


def feature_columns(table: pd.DataFrame) -> list[str]:
    return [c for c in table.columns if not str(c).startswith("Metadata_")]


def match_rules(meta: pd.DataFrame, rules: list[dict], where: str = "") -> np.ndarray:
    """Rows matching any rule; a rule matches when every column holds one of its values.

    An empty rule list matches every row. Values are compared as strings.
    """
    if not rules:
        return np.ones(len(meta), dtype=bool)
    out = np.zeros(len(meta), dtype=bool)
    for rule in rules:
        ok = np.ones(len(meta), dtype=bool)
        for col, values in rule.items():
            if col not in meta.columns:
                raise TaskError(f"{where}: column {col!r} of a row rule is not in the profile table")
            ok &= meta[col].astype(str).isin([str(v) for v in values]).to_numpy()
        out |= ok
    return out


def consensus_profiles(table: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """Mean profile per ``by`` group; metadata constant within a group are kept.

    Mirrors ``pycytominer.consensus(..., operation="mean")``; groups are
    sorted by ``by`` so the result does not depend on row order.
    """
    feats = feature_columns(table)
    meta = metadata_columns(table)
    gid, uniq = pd.MultiIndex.from_frame(table[by].astype(str)).factorize(sort=True)
    means = table[feats].astype(np.float64).groupby(gid, sort=True).mean()
    first = table[meta].groupby(gid, sort=True).first()
    distinct = table[meta].astype(str).groupby(gid, sort=True).nunique()
    keep = [c for c in meta if c in by or bool((distinct[c] == 1).all())]
    meta_df = first[keep].reset_index(drop=True)
    meta_df["Metadata_n_replicates"] = np.bincount(gid, minlength=len(uniq))
    return pd.concat([meta_df, means.reset_index(drop=True)], axis=1)


def active_mask(meta: pd.DataFrame, active: pd.DataFrame | None, by: list[str], where: str) -> np.ndarray:
    """Rows whose ``by`` values appear among the ``active`` (retrieved) classes."""
    if active is None:
        return np.ones(len(meta), dtype=bool)
    if len(active) == 0:
        return np.zeros(len(meta), dtype=bool)
    missing = [c for c in by if c not in meta.columns or c not in active.columns]
    if missing:
        raise TaskError(f"{where}: active_by columns {missing} missing in the profiles or the earlier task's classes")
    keys = pd.MultiIndex.from_frame(active[by].astype(str))
    return pd.MultiIndex.from_frame(meta[by].astype(str)).isin(keys)


@dataclass
class TaskGroup:
    """Inputs of one (task, group) run of the AP engine."""

    task: str
    key: dict
    meta: pd.DataFrame
    feats: np.ndarray
    pos_sameby: list[str]
    pos_diffby: list[str]
    neg_sameby: list[str]
    neg_diffby: list[str]
    is_query: np.ndarray
    #: multilabel only: original row of each (exploded) row, and the label column
    orig: np.ndarray | None = None
    multilabel_col: str | None = None
    #: integer codes of metadata columns, filled on first use (``hpc_profiler.evaluate.run.column_codes``)
    codes: dict = field(default_factory=dict, repr=False)


def split_labels(values, sep: str) -> list[frozenset]:
    """Label set of each value: ``"A|B"`` -> {A, B}; missing or empty -> the empty set."""
    out = []
    for v in values:
        if v is None or (isinstance(v, float) and np.isnan(v)):
            out.append(frozenset())
        elif isinstance(v, (list, tuple, set, frozenset, np.ndarray)):
            out.append(frozenset(str(x) for x in v))
        else:
            out.append(frozenset(x.strip() for x in str(v).split(sep) if x.strip()))
    return out


def explode_labels(meta: pd.DataFrame, col: str, sep: str):
    """One row per (row, label) of ``col``; a row without labels stays one row with a missing label.

    Returns the exploded metadata (``col`` holds one label), the original row
    of each exploded row, and the label sets of the original rows.
    """
    sets = split_labels(meta[col].tolist(), sep)
    orig = np.repeat(np.arange(len(meta)), [max(len(s), 1) for s in sets])
    labels = [lab for s in sets for lab in (sorted(s) if s else [None])]
    out = meta.iloc[orig].reset_index(drop=True)
    out[col] = pd.array(labels, dtype=object)
    return out, orig, sets


def check_multilabel(spec: EvalTaskConfig, where: str) -> None:
    col = spec.multilabel_col
    if col is None:
        return
    if col not in spec.pos_sameby:
        raise TaskError(f"{where}: multilabel_col {col!r} must be in pos_sameby (positives share a label)")
    if col in spec.neg_sameby or col in spec.pos_diffby:
        raise TaskError(f"{where}: multilabel_col {col!r} may be in pos_sameby and neg_diffby only "
                        "(copairs' multilabel matching)")


def prepare_task(name: str, spec: EvalTaskConfig, profiles: pd.DataFrame, active: pd.DataFrame | None = None):
    """Split a profile table into the :class:`TaskGroup` runs of task ``name``.

    Groups are ordered by their ``group_by`` values so every rank sees the
    same list.
    """
    where = f"evaluate task {name!r}"
    check_multilabel(spec, where)
    for key in ("pos_sameby", "pos_diffby", "neg_sameby", "neg_diffby", "group_by", "class_by", "consensus_by"):
        missing = [c for c in getattr(spec, key) if c not in profiles.columns]
        if missing:
            raise TaskError(f"{where}: {key} columns {missing} are not in the profile table")
    table = profiles.loc[match_rules(profiles, spec.subset, where)]
    table = table.loc[active_mask(table, active, spec.active_by, where)].reset_index(drop=True)
    if spec.consensus_by and len(table):
        table = consensus_profiles(table, list(dict.fromkeys(spec.group_by + spec.consensus_by)))
    groups = []
    if len(table) == 0:
        return groups
    gkeys = table[spec.group_by].astype(str) if spec.group_by else pd.DataFrame(index=table.index)
    if spec.group_by:
        gid, uniq = pd.MultiIndex.from_frame(gkeys).factorize(sort=True)
    else:
        gid, uniq = np.zeros(len(table), dtype=np.int64), [()]
    for g, values in enumerate(uniq):
        sub = table.loc[gid == g].reset_index(drop=True)
        meta = sub[metadata_columns(sub)].copy()
        pos_same, neg_diff = list(spec.pos_sameby), list(spec.neg_diffby)
        if spec.controls:
            ctrl = match_rules(meta, spec.controls, where)
            meta[REFERENCE_COL] = np.where(ctrl, np.arange(len(meta)), -1)
            pos_same.append(REFERENCE_COL)
            neg_diff.append(REFERENCE_COL)
        values = values if isinstance(values, tuple) else (values,)
        is_query = match_rules(meta, spec.queries, where)
        feats = sub[feature_columns(sub)].to_numpy(dtype=np.float64)
        orig = None
        if spec.multilabel_col is not None:
            meta, orig, _ = explode_labels(meta, spec.multilabel_col, spec.multilabel_sep or "|")
            feats, is_query = feats[orig], is_query[orig]
        groups.append(
            TaskGroup(
                task=name,
                key=dict(zip(spec.group_by, values)),
                meta=meta,
                feats=feats,
                pos_sameby=pos_same,
                pos_diffby=list(spec.pos_diffby),
                neg_sameby=list(spec.neg_sameby),
                neg_diffby=neg_diff,
                is_query=is_query,
                orig=orig,
                multilabel_col=spec.multilabel_col,
            )
        )
    return groups
