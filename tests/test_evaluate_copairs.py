"""evaluate stage vs copairs 0.5.5 on a seeded CPJUMP1-shaped well table (tasks 1-3).

Identical AP per query (<= 1e-9), identical mAP per class, p-values within
Monte Carlo error for the same null size, same fraction retrieved.
"""
from __future__ import annotations

import dataclasses
import importlib

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

copairs_map = pytest.importorskip("copairs.map", reason="copairs (test dependency) is not installed")
from copairs.matching import assign_reference_index  # noqa: E402

copairs_p_values = importlib.import_module("copairs.map.average_precision").p_values

from hpc_profiler.config import EvaluateConfig, default_eval_tasks  # noqa: E402
from hpc_profiler.evaluate.run import evaluate_profiles  # noqa: E402
from hpc_profiler.evaluate.synth import synthetic_profiles  # noqa: E402

NULL = 5000
SEED = 3


@pytest.fixture(scope="module")
def profiles():
    return synthetic_profiles(n_genes=14, plates=4, negcons=10, n_features=30, effect=1.5, seed=11)


@pytest.fixture(autouse=True)
def _copairs_cache_in_tmp(tmp_path, monkeypatch):
    # copairs caches nulls under ~/.copairs; keep it out of the real home
    monkeypatch.setenv("HOME", str(tmp_path))


def _ecfg(tasks, significance="map_permutation"):
    defs = {k: dataclasses.replace(v, active_from=None) for k, v in default_eval_tasks().items()}
    return EvaluateConfig(
        null_size=NULL, seed=SEED, tasks=tasks, definitions=defs, class_significance=significance, map_pvalue=True,
        plots=False,
    )


@pytest.fixture(scope="module")
def ours(profiles):
    tasks = ["replicate", "sister_compound", "sister_crispr", "compound_crispr", "compound_orf"]
    return evaluate_profiles(profiles, _ecfg(tasks))


def _feats(df):
    return df[[c for c in df.columns if c.startswith("Feature_")]].to_numpy()


def _copairs_ap(meta, feats, pos_sameby, pos_diffby, neg_sameby, neg_diffby, distance):
    return copairs_map.average_precision(
        meta, feats, pos_sameby, pos_diffby, neg_sameby, neg_diffby, distance=distance, progress_bar=False
    )


def _consensus(df, by):
    feats = [c for c in df.columns if c.startswith("Feature_")]
    meta = df.groupby(by, sort=True)[["Metadata_gene", "Metadata_modality", "Metadata_cell_type"]].first()
    return pd.concat([meta, df.groupby(by, sort=True)[feats].mean()], axis=1).reset_index()


def _replicate_reference(profiles, modality):
    df = profiles.loc[
        (profiles["Metadata_modality"] == modality)
        & ((profiles["Metadata_pert_type"] == "trt") | (profiles["Metadata_control_type"] == "negcon"))
    ].reset_index(drop=True)
    df = assign_reference_index(df, "Metadata_control_type == 'negcon'")
    ref = _copairs_ap(
        df.filter(like="Metadata_"),
        _feats(df),
        ["Metadata_broad_sample", "Metadata_Reference_Index"],
        ["Metadata_Plate"],
        [],
        ["Metadata_broad_sample", "Metadata_Reference_Index"],
        "cosine",
    )
    return ref.loc[ref["Metadata_pert_type"] == "trt"].reset_index(drop=True)


def _check_against(ref, mine, keys, class_by, cache):
    merged = ref.merge(mine, on=keys, suffixes=("_ref", ""))
    assert len(merged) == len(ref) == len(mine), "query sets differ from copairs'"
    np.testing.assert_array_equal(merged["n_pos_pairs_ref"], merged["n_pos_pairs"])
    np.testing.assert_array_equal(merged["n_total_pairs_ref"], merged["n_total_pairs"])
    np.testing.assert_allclose(merged["average_precision"], merged["average_precision_ref"], rtol=0, atol=1e-9)
    valid = ref.loc[ref["n_pos_pairs"] > 0].reset_index(drop=True)
    # per-query p-values within Monte Carlo error of the same null size
    p_ref = copairs_p_values(valid, NULL, SEED, progress_bar=False)
    m2 = valid.assign(p_ref=p_ref).merge(mine, on=keys, suffixes=("_ref", ""))
    p = m2["p_value"].to_numpy()
    tol = 5 * np.sqrt(np.maximum(p * (1 - p), 1 / NULL) / NULL) + 2 / NULL
    assert np.all(np.abs(m2["p_ref"] - p) <= tol), "per-query p-values differ beyond Monte Carlo error"
    return valid.assign(p_ref=p_ref)


def _check_classes(valid_ref, classes, class_by, cache):
    ref = copairs_map.mean_average_precision(
        valid_ref, class_by, null_size=NULL, threshold=0.05, seed=SEED, progress_bar=False, cache_dir=cache
    )
    m = ref.merge(classes, on=class_by, suffixes=("_ref", ""))
    assert len(m) == len(ref) == len(classes)
    np.testing.assert_allclose(m["mean_average_precision_ref"], m["mean_average_precision"], rtol=0, atol=1e-12)
    p = m["map_p_value"].to_numpy()
    tol = 5 * np.sqrt(np.maximum(p * (1 - p), 1 / NULL) / NULL) + 2 / NULL
    assert np.all(np.abs(m["p_value"] - p) <= tol), "mAP p-values differ beyond Monte Carlo error"
    # fraction retrieved (copairs: BH over classes' mAP p-values)
    assert m["below_corrected_p"].mean() == pytest.approx(m["retrieved"].mean())
    # the paper's rule from copairs' per-query p-values: BH (SciPy) then geometric mean per class
    q = sps.false_discovery_control(valid_ref["p_ref"].astype(float).to_numpy())
    gq = valid_ref.assign(q=q).groupby(class_by)["q"].agg(sps.gmean)
    ours_g = classes.set_index(class_by)["geomean_q_value"].reindex(gq.index)
    assert ((gq < 0.05) == (ours_g < 0.05)).mean() >= 0.95
    return m


@pytest.mark.parametrize("modality", ["compound", "crispr", "orf"])
def test_task1_replicate_detection_matches_copairs(profiles, ours, modality, tmp_path):
    ref = _replicate_reference(profiles, modality)
    q = ours["queries"]
    mine = q.loc[(q["task"] == "replicate") & (q["Metadata_modality"] == modality)]
    keys = ["Metadata_Plate", "Metadata_Well"]
    valid = _check_against(ref, mine[keys + ["average_precision", "n_pos_pairs", "n_total_pairs", "p_value"]],
                           keys, ["Metadata_broad_sample"], tmp_path)
    c = ours["classes"]
    classes = c.loc[(c["task"] == "replicate") & (c["Metadata_modality"] == modality)]
    m = _check_classes(valid, classes, ["Metadata_broad_sample"], tmp_path)
    assert m["retrieved"].any(), "seeded effects should be detected"


@pytest.mark.parametrize("task,modality,distance", [("sister_compound", "compound", "abs_cosine"),
                                                     ("sister_crispr", "crispr", "cosine")])
def test_task2_sister_matching_matches_copairs(profiles, ours, task, modality, distance, tmp_path):
    df = profiles.loc[(profiles["Metadata_pert_type"] == "trt") & (profiles["Metadata_modality"] == modality)]
    cons = _consensus(df, ["Metadata_broad_sample", "Metadata_timepoint"])
    ref = _copairs_ap(cons.filter(like="Metadata_"), _feats(cons), ["Metadata_gene"], ["Metadata_broad_sample"],
                      [], ["Metadata_gene"], distance)
    q = ours["queries"]
    mine = q.loc[q["task"] == task, ["Metadata_broad_sample", "average_precision", "n_pos_pairs",
                                     "n_total_pairs", "p_value"]]
    valid = _check_against(ref, mine, ["Metadata_broad_sample"], None, tmp_path)
    c = ours["classes"]
    _check_classes(valid, c.loc[c["task"] == task], ["Metadata_broad_sample"], tmp_path)


@pytest.mark.parametrize("task,genetic", [("compound_crispr", "crispr"), ("compound_orf", "orf")])
def test_task3_compound_gene_matching_matches_copairs(profiles, ours, task, genetic, tmp_path):
    df = profiles.loc[(profiles["Metadata_pert_type"] == "trt")
                      & profiles["Metadata_modality"].isin(["compound", genetic])]
    cons = _consensus(df, ["Metadata_broad_sample", "Metadata_timepoint"])
    ref = _copairs_ap(cons.filter(like="Metadata_"), _feats(cons), ["Metadata_gene"], ["Metadata_modality"],
                      [], ["Metadata_gene", "Metadata_modality"], "abs_cosine")
    ref = ref.loc[ref["Metadata_modality"] == "compound"].reset_index(drop=True)
    q = ours["queries"]
    mine = q.loc[q["task"] == task, ["Metadata_broad_sample", "average_precision", "n_pos_pairs",
                                     "n_total_pairs", "p_value"]]
    valid = _check_against(ref, mine, ["Metadata_broad_sample"], None, tmp_path)
    c = ours["classes"]
    _check_classes(valid, c.loc[c["task"] == task], ["Metadata_broad_sample"], tmp_path)
