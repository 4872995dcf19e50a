"""well_feature_selected has no NaN: features NaN in a few wells (under drop_na_columns'
5 % cutoff) are dropped after feature selection, counted and reported."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from hpc_profiler import profiles as P
from hpc_profiler.config import from_dict
from hpc_profiler.reduce import profile_tables

pcm = pytest.importorskip("pycytominer", reason="pycytominer is the reference (test dependency)")


def wells_with_nan(seed=0, n_plates=2, n_wells=24, n_feat=30):
    rng = np.random.default_rng(seed)
    n = n_plates * n_wells
    x = rng.standard_normal((n, n_feat)) * rng.uniform(0.5, 2.0, n_feat)
    names = [f"{('Cells', 'Cytoplasm', 'Nuclei')[i % 3]}_Texture_F{i:03d}_DNA" for i in range(n_feat)]
    nan_cols = [names[4], names[11], names[17]]
    x[5, 4] = np.nan  # one well each: 1/48 < 5 %, so drop_na_columns keeps these
    x[30, 11] = np.nan
    x[2, 17] = np.inf
    x[:, 20] = np.nan  # all NaN: drop_na_columns removes it already
    df = pd.DataFrame(x, columns=names)
    df.insert(0, "Metadata_Well", [f"A{i % n_wells + 1:02d}" for i in range(n)])
    df.insert(0, "Metadata_Plate", [f"P{i // n_wells}" for i in range(n)])
    return df, nan_cols


def test_drop_nonfinite_features_hand_computed():
    df, nan_cols = wells_with_nan()
    kept, dropped = P.drop_nonfinite_features(df)
    assert dropped == nan_cols + [df.columns[2 + 20]]
    assert list(kept.columns) == [c for c in df.columns if c not in dropped]
    assert np.isfinite(kept.loc[:, P.feature_columns(kept)].to_numpy()).all()
    same, none = P.drop_nonfinite_features(kept)
    assert none == [] and same is kept


def test_feature_selected_table_has_no_nan_and_count_is_reported(capsys):
    df, nan_cols = wells_with_nan()
    df = df.replace([np.inf], np.nan)  # pycytominer's reference sees a NaN where we put inf
    cfg = from_dict({"reduce": {"normalize_samples": "all",
                                "feature_select": {"operations": ["drop_na_columns", "blocklist"]}}})
    tables = profile_tables(cfg, df)
    selected = tables["well_feature_selected"]
    feats = P.feature_columns(selected)
    assert not selected.loc[:, feats].isna().any().any()
    # reference: pycytominer's feature_select on our normalized table, then pandas' NaN columns
    ref = pcm.feature_select(tables["well_normalized"], features="infer", operation=["drop_na_columns"],
                             na_cutoff=cfg.reduce.feature_select.na_cutoff)
    ref_nan = [c for c in P.feature_columns(ref) if ref[c].isna().any()]
    assert ref_nan == nan_cols  # the seeded columns survive pycytominer with their NaN
    assert feats == [c for c in P.feature_columns(ref) if c not in ref_nan]
    out = capsys.readouterr().out
    assert f"reduce: dropped {len(nan_cols)} feature(s) NaN or infinite in some well" in out
    assert nan_cols[0] in out
