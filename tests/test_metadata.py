"""CPJUMP1 metadata and plate layouts (compound plate map, CRISPR, ORF, subsets)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from hpc_profiler import metadata as md

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cpjump1"
ALL_WELLS = {f"{r}{c:02d}" for r in "ABCDEFGHIJKLMNOP" for c in range(1, 25)}


def _shared(name):
    path = SHARED / name
    if not path.exists():
        pytest.skip(f"reference table {path} absent (../shared not checked out)")
    return pd.read_csv(path, sep="\t")


def test_tables_load():
    assert len(md.compound_metadata()) == 307
    assert len(md.crispr_metadata()) == 335
    assert len(md.orf_metadata()) == 175
    assert len(md.compound_platemap()) == 384


def test_compound_layout_is_the_real_plate_map():
    pm = _shared("platemap_compound_C-7210-01-CMP-013.txt")
    meta = _shared("cpjump1_compound_metadata.tsv").dropna(subset=["broad_sample"])
    ref = pm.merge(meta, on="broad_sample", how="left").set_index("well_position")
    lay = md.plate_layout("compound").set_index("Metadata_Well")
    assert set(lay.index) == set(ref.index) == ALL_WELLS
    ref = ref.loc[lay.index]
    dmso = ref["broad_sample"].isna()
    assert dmso.sum() == 64
    np.testing.assert_array_equal(lay["Metadata_broad_sample"], ref["broad_sample"].fillna("DMSO"))
    assert (lay.loc[dmso.to_numpy(), "Metadata_control_type"] == "negcon").all()
    assert (lay.loc[dmso.to_numpy(), "Metadata_pert_type"] == "control").all()
    np.testing.assert_array_equal(lay.loc[~dmso.to_numpy(), "Metadata_gene"], ref.loc[~dmso, "target"])
    np.testing.assert_array_equal(
        lay.loc[~dmso.to_numpy(), "Metadata_control_type"].fillna(""), ref.loc[~dmso, "control_type"].fillna("")
    )
    assert (lay["Metadata_modality"] == "compound").all()


def test_crispr_layout_has_every_guide_and_negcon_fill():
    guides = _shared("cpjump1_crispr_metadata.tsv").dropna(subset=["broad_sample"])
    lay = md.plate_layout("crispr")
    assert set(lay["Metadata_Well"]) == ALL_WELLS and len(lay) == 384
    counts = lay["Metadata_broad_sample"].value_counts()
    assert set(counts.index) == set(guides["broad_sample"])
    neg = set(guides.loc[guides["control_type"] == "negcon", "broad_sample"])
    assert (counts[[g for g in counts.index if g not in neg]] == 1).all()
    assert (lay["Metadata_control_type"] == "negcon").sum() == 384 - (len(guides) - len(neg))
    g = guides.set_index("broad_sample")
    np.testing.assert_array_equal(
        lay["Metadata_gene"].fillna(""), g.loc[lay["Metadata_broad_sample"], "genes"].fillna("")
    )


def test_orf_layout_in_duplicate():
    orfs = _shared("cpjump1_orf_metadata.tsv").dropna(subset=["broad_sample"])
    lay = md.plate_layout("orf")
    assert set(lay["Metadata_Well"]) == ALL_WELLS
    counts = lay["Metadata_broad_sample"].value_counts()
    trt = orfs.loc[orfs["control_type"] != "negcon", "broad_sample"]
    assert (counts[trt] == 2).all()
    assert set(counts.index) == set(orfs["broad_sample"])
    assert (lay["Metadata_control_type"] == "negcon").sum() == 384 - 2 * len(trt)


def _genes_with_two(lay, modality):
    trt = lay[lay["Metadata_control_type"] != "negcon"]
    n = trt.groupby("Metadata_gene")["Metadata_broad_sample"].nunique()
    n_wells = trt.groupby("Metadata_gene")["Metadata_Well"].nunique()
    if modality == "orf":
        return set(n_wells[n_wells >= 2].index)  # one ORF in two wells
    return set(n[n >= 2].index)  # two compounds / two guides


@pytest.mark.parametrize("n_wells", [8, 24, 60])
def test_subsets_keep_controls_sisters_and_compound_gene_pairs(n_wells):
    subsets = {m: md.plate_layout(m, n_wells=n_wells, seed=3) for m in md.MODALITIES}
    for m, lay in subsets.items():
        full = md.plate_layout(m).set_index("Metadata_Well")
        assert len(lay) == n_wells and lay["Metadata_Well"].is_unique
        # rows are the full layout's rows, unchanged
        pd.testing.assert_frame_equal(lay.set_index("Metadata_Well"), full.loc[lay["Metadata_Well"]])
        assert (lay["Metadata_control_type"] == "negcon").mean() >= 0.25
        assert list(lay["Metadata_Well"]) == sorted(lay["Metadata_Well"], key=lambda w: (w[0], int(w[1:])))
    pairs = {m: _genes_with_two(lay, m) for m, lay in subsets.items()}
    assert len(pairs["compound"]) >= (n_wells - np.ceil(n_wells / 4)) // 2 >= 1  # sister compounds
    assert pairs["compound"] == pairs["crispr"] == pairs["orf"]  # compound-gene pairs in all modalities


def test_subsets_deterministic_and_seeded():
    a = md.plate_layout("crispr", n_wells=24, seed=0)
    pd.testing.assert_frame_equal(a, md.plate_layout("crispr", n_wells=24, seed=0))
    assert set(a["Metadata_Well"]) != set(md.plate_layout("crispr", n_wells=24, seed=1)["Metadata_Well"])
    pd.testing.assert_frame_equal(md.plate_layout("orf"), md.plate_layout("orf", seed=5))
    with pytest.raises(ValueError, match="modality"):
        md.plate_layout("rnai")


def test_well_metadata_table():
    plates = {"SYN-ORF-1": "orf", "SYN-COMPOUND-1": "compound", "SYN-COMPOUND-2": "compound"}
    wm = md.well_metadata(plates, n_wells=16, seed=2)
    assert list(wm.columns[:2]) == ["Metadata_Plate", "Metadata_Well"]
    assert {"Metadata_cell_type", "Metadata_timepoint", "Metadata_control_type"} <= set(wm.columns)
    assert len(wm) == 48 and not wm.duplicated(["Metadata_Plate", "Metadata_Well"]).any()
    assert (wm["Metadata_cell_type"] == "U2OS").all()
    tp = wm.groupby("Metadata_Plate")["Metadata_timepoint"].first().to_dict()
    assert tp == {"SYN-COMPOUND-1": 48, "SYN-COMPOUND-2": 48, "SYN-ORF-1": 96}
    c1 = wm[wm["Metadata_Plate"] == "SYN-COMPOUND-1"].drop(columns="Metadata_Plate").reset_index(drop=True)
    c2 = wm[wm["Metadata_Plate"] == "SYN-COMPOUND-2"].drop(columns="Metadata_Plate").reset_index(drop=True)
    pd.testing.assert_frame_equal(c1, c2)  # replicate plates share the layout
