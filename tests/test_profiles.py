"""Profiles stage (pure table functions) against pycytominer and hand-computed cases.

Every reference call passes the parameters the pipeline is configured with
(:class:`hpc_profiler.config.ReduceConfig` defaults), never pycytominer's own
defaults implicitly.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from hpc_profiler import profiles as P
from hpc_profiler.config import ReduceConfig

pcm = pytest.importorskip("pycytominer", reason="pycytominer is the reference (test dependency)")
from pycytominer.operations import (  # noqa: E402
    correlation_threshold,
    frequency_threshold,
    get_na_columns,
    variance_threshold,
)

RC = ReduceConfig()
FS = RC.feature_select


def random_profiles(seed=0, n_plates=2, n_wells=20, n_feat=40, nan_frac=0.0, repeats=True):
    """Well-like table: Metadata_ columns, then Cells/Cytoplasm/Nuclei features."""
    rng = np.random.default_rng(seed)
    n = n_plates * n_wells
    latent = rng.standard_normal((n, 5))
    load = rng.standard_normal((5, n_feat)) * rng.uniform(0, 2, n_feat)
    x = latent @ load + rng.standard_normal((n, n_feat)) * rng.uniform(0.1, 1.0, n_feat)
    if repeats:  # features with few distinct values, a constant and an all-but-one constant
        x[:, 0] = rng.integers(0, 3, n)
        x[:, 1] = 7.0
        x[:, 2] = 1.0
        x[0, 2] = 0.0
        x[:, 3] = x[:, 4]  # a duplicated feature: tied correlation sums
        x[:, 5] = rng.integers(0, 2, n) * 0.5
    if nan_frac:
        x[rng.random(x.shape) < nan_frac] = np.nan
        x[: n // 4, 6] = np.nan  # a mostly-missing feature
    names = [f"{('Cells', 'Cytoplasm', 'Nuclei')[i % 3]}_Intensity_F{i:03d}_DNA" for i in range(n_feat)]
    df = pd.DataFrame(x, columns=names)
    df.insert(0, "Metadata_control_type", np.where(np.arange(n) % n_wells < 6, "negcon", ""))
    df.insert(0, "Metadata_Well", [f"A{i % n_wells + 1:02d}" for i in range(n)])
    df.insert(0, "Metadata_Plate", [f"P{i // n_wells}" for i in range(n)])
    return df


# --------------------------------------------------------------------------- aggregate
def test_aggregate_cells_hand_computed():
    x = np.array([[1.0, np.nan, 3.0], [2.0, np.nan, np.nan], [10.0, np.nan, 5.0], [4.0, np.nan, 4.0]])
    np.testing.assert_array_equal(P.aggregate_cells(x, "median"), [3.0, np.nan, 4.0])
    np.testing.assert_allclose(P.aggregate_cells(x, "mean"), [4.25, np.nan, 4.0])
    assert np.isnan(P.aggregate_cells(np.empty((0, 3)), "median")).all()
    with pytest.raises(ValueError, match="operation"):
        P.aggregate_cells(x, "max")


def test_nanmedian_columns_matches_numpy_and_pandas():
    rng = np.random.default_rng(11)
    for n in (1, 2, 5, 8, 101):
        x = rng.standard_normal((n, 30))
        x[rng.random(x.shape) < 0.3] = np.nan
        x[:, 0] = np.nan
        x[:, 1] = np.inf
        x[0, 2] = -np.inf
        with np.errstate(all="ignore"), pytest.warns(RuntimeWarning):
            ref = np.nanmedian(x, axis=0)
        np.testing.assert_array_equal(P.nanmedian_columns(x), ref)
        np.testing.assert_array_equal(P.nanmedian_columns(x), pd.DataFrame(x).median().to_numpy())


@pytest.mark.parametrize("operation", ["median", "mean"])
def test_aggregate_matches_pycytominer(operation):
    rng = np.random.default_rng(3)
    n = 500
    cells = pd.DataFrame(rng.standard_normal((n, 12)).astype(np.float32),
                         columns=[f"Nuclei_AreaShape_Z{i}" for i in range(12)])
    cells.iloc[rng.random(n) < 0.1, 4] = np.nan
    cells.insert(0, "ObjectNumber", np.arange(n))
    cells.insert(0, "Metadata_Well", rng.choice(["A01", "A02", "B07", "C11"], n))
    cells.insert(0, "Metadata_Plate", rng.choice(["BR1", "BR2"], n))
    ours = P.aggregate(cells, operation=operation)
    ref = pcm.aggregate(cells, strata=P.STRATA, operation=operation, compute_object_count=True,
                        object_feature="ObjectNumber")
    assert list(ours.columns) == list(ref.columns)
    pd.testing.assert_frame_equal(ours, ref, check_dtype=False, rtol=1e-12)


# --------------------------------------------------------------------------- normalize
def test_mad_robustize_hand_computed():
    ref = np.array([[1.0], [2.0], [4.0], [8.0], [np.nan]])
    # median 3, |x - 3| = 2, 1, 1, 5 -> MAD 1.5, scaled 1.5 * 1.4826
    center, scale = P.mad_robustize_fit(ref)
    assert center[0] == 3.0 and scale[0] == pytest.approx(1.5 * 1.4826)
    y = P.normalize_matrix(np.array([[3.0], [6.0]]), ref, "mad_robustize", epsilon=0.5)
    np.testing.assert_allclose(y[:, 0], [0.0, 3.0 / (1.5 * 1.4826 + 0.5)])


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the reference's own warnings (all-NaN columns)
@pytest.mark.parametrize("method", ["mad_robustize", "standardize"])
@pytest.mark.parametrize("samples", ["negcon", "all"])
def test_normalize_matches_pycytominer(method, samples):
    df = random_profiles(seed=1, nan_frac=0.03)
    ours = P.normalize(df, method=method, samples=samples, epsilon=RC.mad_robustize_epsilon)
    query = "Metadata_control_type == 'negcon'" if samples == "negcon" else "all"
    ref = pd.concat([
        pcm.normalize(g, features="infer", meta_features="infer", method=method, samples=query,
                      mad_robustize_epsilon=RC.mad_robustize_epsilon)
        for _, g in df.groupby("Metadata_Plate")
    ])
    assert list(ours.columns) == list(ref.columns)
    feats = P.feature_columns(df)
    finite = np.isfinite(ref[feats].to_numpy(float))
    np.testing.assert_allclose(ours[feats].to_numpy(float)[finite], ref[feats].to_numpy(float)[finite],
                               rtol=1e-9, atol=1e-9)
    # outside the finite part (NaN, and +-inf from a zero MAD) the two agree exactly
    np.testing.assert_array_equal(ours[feats].to_numpy(float)[~finite], ref[feats].to_numpy(float)[~finite])


def test_normalize_plate_without_negcon_is_named():
    df = random_profiles(seed=2)
    df.loc[df.Metadata_Plate == "P1", "Metadata_control_type"] = ""
    with pytest.raises(ValueError, match="plate P1"):
        P.normalize(df, samples="negcon")


# --------------------------------------------------------------------------- feature selection
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_frequency_threshold_matches_pycytominer(seed):
    df = random_profiles(seed=seed, nan_frac=0.05)
    rng = np.random.default_rng(seed)
    feats = P.feature_columns(df)
    df[feats[7]] = rng.integers(0, 40, len(df)).astype(float)  # many repeats, ratio near the cut
    df[feats[8]] = np.r_[np.zeros(len(df) - 2), 1.0, 1.0]
    mask = P.frequency_excluded(df[feats].to_numpy(), FS.freq_cut, FS.unique_cut)
    ref = frequency_threshold(df, features=feats, freq_cut=FS.freq_cut, unique_cut=FS.unique_cut)
    assert sorted(np.array(feats)[mask]) == sorted(ref)
    # unique_cut path: few distinct values among many rows
    big = pd.DataFrame({"Cells_A": np.repeat([1.0, 2.0, 3.0], 200), "Cells_B": np.arange(600.0)})
    ref = frequency_threshold(big, features=["Cells_A", "Cells_B"], freq_cut=FS.freq_cut, unique_cut=FS.unique_cut)
    assert sorted(np.array(["Cells_A", "Cells_B"])[P.frequency_excluded(big.to_numpy(), FS.freq_cut, FS.unique_cut)]) \
        == sorted(ref) == ["Cells_A"]


def test_variance_threshold_matches_pycytominer():
    df = random_profiles(seed=4, nan_frac=0.02)
    feats = P.feature_columns(df)
    df[feats[9]] = 1.0 + 1e-4 * np.arange(len(df)) % 2
    mask = P.variance_excluded(df[feats].to_numpy(), FS.min_variance)
    ref = variance_threshold(df, features=feats, min_variance=FS.min_variance)
    assert sorted(np.array(feats)[mask]) == sorted(ref)


def test_na_columns_matches_pycytominer():
    df = random_profiles(seed=5, nan_frac=0.04)
    feats = P.feature_columns(df)
    mask = P.na_excluded(df[feats].to_numpy(), FS.na_cutoff)
    ref = get_na_columns(df, features=feats, cutoff=FS.na_cutoff)
    assert sorted(np.array(feats)[mask]) == sorted(ref) and len(ref) > 0


@pytest.mark.parametrize("nan_frac", [0.0, 0.03])
@pytest.mark.parametrize("method", ["pearson", "spearman"])
def test_correlation_threshold_matches_pycytominer(nan_frac, method):
    df = random_profiles(seed=6, nan_frac=nan_frac, repeats=False)
    feats = P.feature_columns(df)
    df[feats[3]] = df[feats[4]]  # duplicated: equal sums, the tie rule decides
    df[feats[10]] = -df[feats[11]]  # perfectly anti-correlated: kept (signed rule)
    mask = P.correlation_excluded(df[feats].to_numpy(), feats, FS.corr_threshold, method)
    ref = correlation_threshold(df, features=feats, threshold=FS.corr_threshold, method=method)
    assert sorted(np.array(feats)[mask]) == sorted(ref)
    assert len(ref) > 0


def test_correlation_threshold_hand_computed():
    # a ~ b (r = 1), c independent: the pair drops the feature ranked later by |r| sum
    a = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    x = np.c_[a, 2 * a + 1, [1.0, -1.0, 0.0, 1.0, -1.0]]
    mask = P.correlation_excluded(x, ["Cells_a", "Cells_b", "Cells_c"], 0.9)
    assert mask.sum() == 1 and not mask[2]


def test_feature_select_matches_pycytominer():
    df = P.normalize(random_profiles(seed=7, nan_frac=0.02), samples="negcon")
    feats = P.feature_columns(df)
    ren = {feats[12]: "Nuclei_Correlation_Manders_AGP_DNA", feats[13]: "Nuclei_Granularity_16_ER"}
    df = df.rename(columns=ren)
    ops = ["variance_threshold", "frequency_threshold", "correlation_threshold", "drop_na_columns", "blocklist"]
    ours = P.feature_select(df, ops, freq_cut=FS.freq_cut, unique_cut=FS.unique_cut, min_variance=FS.min_variance,
                            corr_threshold=FS.corr_threshold, corr_method=FS.corr_method, na_cutoff=FS.na_cutoff)
    ref = pcm.feature_select(df, features="infer", operation=ops, freq_cut=FS.freq_cut, unique_cut=FS.unique_cut,
                             min_variance=FS.min_variance, corr_threshold=FS.corr_threshold,
                             corr_method=FS.corr_method, na_cutoff=FS.na_cutoff)
    assert list(ours.columns) == list(ref.columns)
    pd.testing.assert_frame_equal(ours, ref)
    assert not set(ren.values()) & set(ours.columns)


def test_shipped_blocklist_is_pycytominers():
    from pycytominer.cyto_utils import get_blocklist_features

    assert P.load_blocklist() == get_blocklist_features()
    assert len(P.load_blocklist()) == 55


def test_unknown_operation_is_named():
    with pytest.raises(ValueError, match="noise_removal"):
        P.feature_select(random_profiles(), ["noise_removal"])


# --------------------------------------------------------------------------- metadata
def test_join_metadata_names_missing_wells_and_orders_columns():
    wells = pd.DataFrame({"Metadata_Plate": ["P0", "P0", "P1"], "Metadata_Well": ["A01", "A02", "A01"],
                          "Metadata_Object_Count": [3, 4, 5], "Cells_X": [1.0, 2.0, 3.0]})
    meta = pd.DataFrame({"Metadata_Plate": ["P0", "P0", "P1"], "Metadata_Well": ["A01", "A02", "A01"],
                         "Metadata_control_type": ["negcon", None, None], "Metadata_gene": [None, "TP53", "KRAS"],
                         "Other": [1, 2, 3]})
    out = P.join_metadata(wells, meta, "plate_map.csv")
    assert list(out.columns) == ["Metadata_Plate", "Metadata_Well", "Metadata_Object_Count",
                                 "Metadata_control_type", "Metadata_gene", "Cells_X"]
    assert out.Metadata_gene.tolist()[1:] == ["TP53", "KRAS"]
    with pytest.raises(ValueError, match=r"plate_map.csv.*P1/A01"):
        P.join_metadata(wells, meta.iloc[:2], "plate_map.csv")
    with pytest.raises(ValueError, match="duplicate"):
        P.join_metadata(wells, pd.concat([meta, meta.iloc[:1]]), "plate_map.csv")
