"""evaluate on a real public profile table vs copairs 0.5.5, read straight from pycytominer's CSV.gz.

The table is one LINCS Cell Painting plate (SQ00015054, A549, 384 wells x 454
features, pycytominer ``*_normalized_feature_select.csv.gz``); source and
license in ``tests/data/README.md``. Replicate retrieval of the 58 compounds
(6 doses each, positives the other wells of the compound, negatives the 24
DMSO wells), the way a copairs user writes it on one plate.
"""
from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

copairs_map = pytest.importorskip("copairs.map", reason="copairs (test dependency) is not installed")
from copairs.matching import assign_reference_index  # noqa: E402

from hpc_profiler.config import EvalTaskConfig, EvaluateConfig  # noqa: E402
from hpc_profiler.evaluate.run import evaluate_profiles, profile_format, read_profiles  # noqa: E402

DATA = Path(__file__).parent / "data" / "SQ00015054_normalized_feature_select.csv.gz"
NULL = 20000
REF = ["Metadata_broad_sample", "Metadata_Reference_Index"]


@pytest.fixture(autouse=True)
def _copairs_cache_in_tmp(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))  # copairs caches nulls under ~/.copairs


@pytest.fixture(scope="module")
def plate():
    assert profile_format(DATA) == "csv.gz"
    return read_profiles(DATA)


def _replicate_task():
    return EvalTaskConfig(
        queries=[{"Metadata_pert_type": ["trt"]}], controls=[{"Metadata_broad_sample": ["DMSO"]}],
        pos_diffby=[], group_by=[], class_by=["Metadata_broad_sample"],
    )


def _copairs_replicate():
    df = pd.read_csv(DATA)  # copairs' user reads the same file with pandas
    df = assign_reference_index(df, "Metadata_broad_sample == 'DMSO'")
    feats = df[[c for c in df.columns if not c.startswith("Metadata_")]].to_numpy()
    ap = copairs_map.average_precision(df.filter(like="Metadata_"), feats, REF, [], [], REF, progress_bar=False)
    return ap.loc[ap["Metadata_pert_type"] == "trt"].reset_index(drop=True)


def test_lincs_plate_read_as_pycytominer_does(plate):
    raw = pd.read_csv(DATA)
    assert plate.shape == (384, 480)
    meta = [c for c in plate.columns if c.startswith("Metadata_")]
    assert len(meta) == 26 and len(plate.columns) - len(meta) == 454
    feats = [c for c in plate.columns if not c.startswith("Metadata_")]
    assert all(c.startswith(("Cells_", "Cytoplasm_", "Nuclei_")) for c in feats)
    np.testing.assert_array_equal(plate[feats].to_numpy(), raw[feats].to_numpy())


def test_lincs_plate_default_significance_matches_copairs(plate, tmp_path):
    ref = _copairs_replicate()
    res = {}
    for seed in (0, 1):
        ecfg = EvaluateConfig(null_size=NULL, seed=seed, tasks=["rep"], definitions={"rep": _replicate_task()},
                              plots=False)
        assert ecfg.class_significance == "map_permutation"
        res[seed] = evaluate_profiles(plate, ecfg)
    q = res[0]["queries"]
    keys = ["Metadata_Well"]
    m = ref.merge(q, on=keys, suffixes=("_cp", ""))
    assert len(m) == len(ref) == len(q) == 360
    np.testing.assert_array_equal(m["n_pos_pairs_cp"], m["n_pos_pairs"])
    np.testing.assert_array_equal(m["n_total_pairs_cp"], m["n_total_pairs"])
    np.testing.assert_allclose(m["average_precision"], m["average_precision_cp"], rtol=0, atol=1e-9)
    np.testing.assert_allclose(m["normalized_average_precision"], m["normalized_average_precision_cp"],
                               rtol=0, atol=1e-9)
    # class level: copairs mean_average_precision (mAP permutation p, BH over classes) at two seeds
    cp_counts = []
    for seed in (0, 1):
        cp = copairs_map.mean_average_precision(ref, ["Metadata_broad_sample"], null_size=NULL, threshold=0.05,
                                                seed=seed, progress_bar=False, cache_dir=tmp_path)
        c = res[seed]["classes"]
        mm = cp.merge(c, on="Metadata_broad_sample", suffixes=("_cp", ""))
        assert len(mm) == len(cp) == len(c) == 58
        np.testing.assert_allclose(mm["mean_average_precision_cp"], mm["mean_average_precision"], atol=1e-12)
        np.testing.assert_allclose(mm["mean_normalized_average_precision_cp"],
                                   mm["mean_normalized_average_precision"], atol=1e-9)
        p = mm["map_p_value"].to_numpy()
        tol = 5 * np.sqrt(np.maximum(p * (1 - p), 1 / NULL) / NULL) + 2 / NULL
        assert np.all(np.abs(mm["p_value"] - p) <= tol), "class p-values differ beyond Monte Carlo error"
        cp_counts.append(int(cp["below_corrected_p"].sum()))
        s = res[seed]["summary"]
        assert int(s["n_classes"].iloc[0]) == 58
    # fraction retrieved within Monte Carlo of copairs' (33/58 and 32/58 at seeds 0 and 1 with 100,000)
    for seed in (0, 1):
        n_ours = int(res[seed]["summary"]["n_retrieved"].iloc[0])
        assert min(cp_counts) - 2 <= n_ours <= max(cp_counts) + 2, (n_ours, cp_counts)
    assert 28 <= min(cp_counts) and max(cp_counts) <= 36, cp_counts


def test_lincs_plate_multilabel_target_matches_copairs(plate):
    """Compounds sharing a target gene (``A|B`` shares A with ``A``), copairs' multilabel matching."""
    multilabel = importlib.import_module("copairs.map.multilabel")
    trt = plate.loc[(plate["Metadata_pert_type"] == "trt") & plate["Metadata_target"].notna()].reset_index(drop=True)
    assert trt["Metadata_target"].str.contains("|", regex=False).any()
    task = EvalTaskConfig(
        subset=[{"Metadata_pert_type": ["trt"]}], controls=[], pos_sameby=["Metadata_target"],
        pos_diffby=["Metadata_broad_sample"], neg_diffby=["Metadata_target"], group_by=[], class_by=["Metadata_target"],
        multilabel_col="Metadata_target",
    )
    ours = evaluate_profiles(trt, EvaluateConfig(null_size=2000, seed=0, tasks=["target"], definitions={"target": task},
                                                 plots=False))["queries"]
    meta = trt.filter(like="Metadata_").copy()
    meta["Metadata_target"] = meta["Metadata_target"].str.split("|")
    feats = trt[[c for c in trt.columns if not c.startswith("Metadata_")]].to_numpy()
    ref = multilabel.average_precision(meta, feats, ["Metadata_target"], ["Metadata_broad_sample"], [],
                                       ["Metadata_target"], multilabel_col="Metadata_target", progress_bar=False)
    keys = ["Metadata_Well", "Metadata_target"]
    m = ref.merge(ours, on=keys, suffixes=("_cp", ""))
    assert len(m) == len(ref) == len(ours) > 100
    # a multi-target well is a query once per label
    assert ours.groupby("Metadata_Well")["Metadata_target"].nunique().max() >= 2
    np.testing.assert_array_equal(m["n_pos_pairs_cp"].astype(int), m["n_pos_pairs"])
    np.testing.assert_array_equal(m["n_total_pairs_cp"].astype(int), m["n_total_pairs"])
    np.testing.assert_allclose(m["average_precision"], m["average_precision_cp"], rtol=0, atol=1e-9)
    np.testing.assert_allclose(m["normalized_average_precision"], m["normalized_average_precision_cp"], atol=1e-9)
