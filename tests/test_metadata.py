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


DATA = Path(__file__).resolve().parents[1] / "hpc_profiler" / "data"

#: Wells read by hand from the public files (pilot-cpjump1-data plate maps, pilot-cpjump1-fov-data
#: metadata/moa): (barcode, well) -> (broad_sample, gene, pert_type, control_type, cell type, timepoint).
KNOWN_WELLS = {
    # compound plate map C-7210-01-CMP-013; BR00117010 = "U2OS 48-hour Compound Plate 3"
    ("BR00117010", "A01"): ("BRD-A86665761-001-01-1", "CACNB4", "trt", None, "U2OS", 48),
    ("BR00117010", "A02"): ("DMSO", None, "control", "negcon", "U2OS", 48),
    ("BR00117010", "A03"): ("BRD-A22032524-074-09-9", "CACNA2D3", "trt", None, "U2OS", 48),
    # CRISPR plate map DXH.92.93.94.95.A; BR00118041 = "A549 96-hour CRISPR Plate 1"
    ("BR00118041", "A01"): ("BRDN0001480888", "HIF1A", "trt", None, "A549", 96),
    ("BR00118041", "A13"): ("BRDN0001147100", None, "control", "negcon", "A549", 96),
    ("BR00118041", "A20"): ("BRDN0001148417", "MAPK14", "control", "poscon_orf", "A549", 96),
    ("BR00118041", "E01"): ("empty", None, "empty", None, "A549", 96),
    # ORF plate map DOG.30.31.32.33.A; BR00117006 = "A549 96-hour ORF Plate 2"
    ("BR00117006", "A01"): ("ccsbBroad304_00900", "KCNN1", "trt", None, "A549", 96),
    ("BR00117006", "A13"): ("ccsbBroad304_02831", "SGK3", "control", "negcon", "A549", 96),
    ("BR00117006", "C03"): ("ccsbBroad304_14696", "MET", "control", "poscon_cp", "A549", 96),
}


def _none(v):
    return None if v is None or (isinstance(v, float) and np.isnan(v)) else v


def test_known_wells_of_each_modality_from_barcodes():
    wm = md.cpjump1_well_metadata(["BR00117010", "BR00118041", "BR00117006", "NOT-A-CPJUMP1-PLATE"])
    assert sorted(wm["Metadata_Plate"].unique()) == ["BR00117006", "BR00117010", "BR00118041"]
    assert len(wm) == 3 * 384 and not wm.duplicated(["Metadata_Plate", "Metadata_Well"]).any()
    wm = wm.set_index(["Metadata_Plate", "Metadata_Well"])
    for (plate, well), (bs, gene, pert, ctl, cell, tp) in KNOWN_WELLS.items():
        row = wm.loc[(plate, well)]
        got = tuple(_none(row[c]) for c in ("Metadata_broad_sample", "Metadata_gene", "Metadata_pert_type",
                                             "Metadata_control_type", "Metadata_cell_type", "Metadata_timepoint"))
        assert got == (bs, gene, pert, ctl, cell, tp), (plate, well)
    modality = wm.groupby(level=0)["Metadata_modality"].first().to_dict()
    assert modality == {"BR00117006": "orf", "BR00117010": "compound", "BR00118041": "crispr"}
    assert md.cpjump1_well_metadata(["SYN-1"]).empty



def test_every_shipped_table_has_a_license_notice():
    """Each data file of the package is named in a LICENSE-*.txt of hpc_profiler/data (with its source)."""
    notices = {p.name: p.read_text() for p in DATA.glob("LICENSE-*.txt")}
    assert "LICENSE-CPJUMP1-metadata.txt" in notices
    text = "\n".join(notices.values())
    data_files = [p.name for p in DATA.iterdir() if p.is_file() and not p.name.startswith(("LICENSE-", "__", "."))]
    assert data_files
    assert [f for f in data_files if f not in text] == []
    cpjump1 = notices["LICENSE-CPJUMP1-metadata.txt"]
    for name in md.PLATE_MAPS.values():
        assert name in cpjump1
    assert "CC0 1.0" in cpjump1 and "cpg0000-jump-pilot" in cpjump1


def test_package_never_reads_the_shared_reference_folder():
    """Only tests and scripts may read ../shared; no string in the package's modules names it."""
    import ast

    pkg = DATA.parent
    hits = []
    for path in sorted(pkg.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                v = node.value.replace("\\", "/")
                if "../shared" in v or "/work/shared" in v or v.strip("/") == "shared" or v.startswith("shared/"):
                    hits.append(f"{path.relative_to(pkg)}:{node.lineno}: {v!r}")
    assert hits == []

def test_every_barcode_has_a_map_cell_type_and_timepoint():
    info = md.plate_info()
    assert len(info) == 51 and info["Metadata_Plate"].is_unique
    assert info["Metadata_modality"].value_counts().to_dict() == {"compound": 24, "crispr": 18, "orf": 9}
    assert set(info["Metadata_cell_type"]) == {"A549", "U2OS"}
    assert set(info["Metadata_timepoint"]) == {24, 48, 96, 144}


@pytest.mark.parametrize("modality,meta_name", [("crispr", "cpjump1_crispr_metadata.tsv"),
                                                 ("orf", "cpjump1_orf_metadata.tsv")])
def test_genetic_layouts_are_the_real_plate_maps(modality, meta_name):
    pm = pd.read_csv(next(DATA.glob(f"platemap_{modality}_*.txt")), sep="\t")
    meta = pd.read_csv(DATA / meta_name, sep="\t").dropna(subset=["broad_sample"])
    ref = pm.merge(meta, on="broad_sample", how="left").set_index("well_position")
    lay = md.plate_layout(modality).set_index("Metadata_Well")
    assert set(lay.index) == set(ref.index) == ALL_WELLS
    ref = ref.loc[lay.index]
    empty = ref["broad_sample"].isna().to_numpy()
    assert empty.sum() == 4
    np.testing.assert_array_equal(lay["Metadata_broad_sample"], ref["broad_sample"].fillna("empty"))
    np.testing.assert_array_equal(lay["Metadata_gene"].fillna(""), ref["genes"].fillna(""))
    np.testing.assert_array_equal(lay["Metadata_control_type"].fillna(""), ref["control_type"].fillna(""))
    assert (lay.loc[empty, "Metadata_pert_type"] == "empty").all()
    assert set(lay["Metadata_broad_sample"]) - {"empty"} == set(meta["broad_sample"])  # every perturbation placed
    if modality == "orf":  # ORFs in duplicate
        trt = lay[lay["Metadata_pert_type"] == "trt"]
        assert (trt["Metadata_broad_sample"].value_counts() == 2).all()


def test_loaddata_with_only_barcodes_gets_annotated_profiles(tmp_path):
    """A CPJUMP1 LoadData CSV with only Metadata_Plate barcodes: reduce needs no well_metadata_csv.

    The sites come from the LoadData CSV (:func:`manifest.manifest_from_loaddata`, as ``run`` reads
    it); their site files hold seeded cells; the reduction (negcon normalization, the default)
    annotates every well from the shipped plate maps.
    """
    import yaml

    from hpc_profiler.config import load_config
    from hpc_profiler.manifest import manifest_from_loaddata
    from hpc_profiler.mpi import SerialComm
    from hpc_profiler.reduce import reduce_batch
    from hpc_profiler.sitefile import ObjectTable, site_file_path, write_site_file

    cfg_path = tmp_path / "config.yaml"
    cfg_path.write_text(yaml.safe_dump({"output_dir": str(tmp_path / "out")}))
    cfg = load_config(cfg_path)
    wells = {"BR00117010": ["A01", "A02", "A03", "B02"], "BR00118041": ["A01", "A13", "A20", "E01"],
             "BR00117006": ["A01", "A13", "C03", "E01"]}
    rows = []
    for plate, ws in wells.items():
        for w in ws:
            for site in (1, 2):
                row = {"Metadata_Plate": plate, "Metadata_Well": w, "Metadata_Site": site}
                for ch in cfg.channels:
                    row[f"FileName_Orig{ch}"] = f"{plate}_{w}_s{site}_{ch}.tiff"
                    row[f"PathName_Orig{ch}"] = "images"
                rows.append(row)
    loaddata = tmp_path / "load_data.csv"
    pd.DataFrame(rows).to_csv(loaddata, index=False)
    sites = manifest_from_loaddata(loaddata, cfg.channels)
    assert len(sites) == 24
    rng = np.random.default_rng(0)
    for s in sites:
        n = 5
        objects = {o: ObjectTable(names=[f"{o}_AreaShape_Area", f"{o}_Intensity_MeanIntensity_DNA"],
                                  values=rng.normal(size=(n, 2)), object_number=np.arange(1, n + 1))
                   for o in ("Cells", "Cytoplasm", "Nuclei")}
        write_site_file(site_file_path(cfg.out, s.plate, s.well, s.site), plate=s.plate, well=s.well, site=s.site,
                        config_hash=cfg.hash(), backend="test", objects=objects, image={})
    paths = reduce_batch(cfg, SerialComm())
    norm = pd.read_parquet(paths["well_normalized"]).set_index(["Metadata_Plate", "Metadata_Well"])
    for (plate, well), (bs, gene, pert, ctl, cell, tp) in KNOWN_WELLS.items():
        if well not in wells.get(plate, []):
            continue
        row = norm.loc[(plate, well)]
        assert (row["Metadata_broad_sample"], _none(row["Metadata_gene"]), row["Metadata_pert_type"]) == (bs, gene, pert)
        assert _none(row["Metadata_control_type"]) == ctl
        assert (row["Metadata_cell_type"], int(row["Metadata_timepoint"])) == (cell, tp)


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


#: The ``hpc-profiler run`` test: two replicate barcodes per modality (same cell type and timepoint, so
#: that evaluate's replicate task has positives) and the LoadData wells of every plate (KNOWN_WELLS among them).
RUN_BARCODES = {"compound": ["BR00117010", "BR00117011"], "crispr": ["BR00118041", "BR00118042"],
                "orf": ["BR00117006", "BR00118050"]}
RUN_WELLS = {"compound": ["A01", "A02", "A03", "B02"], "crispr": ["A01", "A13", "A20", "E01"],
             "orf": ["A01", "A13", "C03", "E01"]}


@pytest.mark.slow
def test_run_on_cpjump1_loaddata_with_only_barcodes(tmp_path, capsys):
    """``hpc-profiler run`` on a CPJUMP1-style LoadData CSV whose only plate information is the barcode.

    The images are a small synthetic batch (two plates per modality, 4 wells, 1 site, 256 px); its
    LoadData CSV is rewritten to name real CPJUMP1 barcodes and wells, and no
    ``input.well_metadata_csv`` is given. The whole command runs (illum, extract, reduce with the
    default negcon normalization, evaluate), and the profiles carry each well's perturbation, gene,
    control type, cell type and timepoint as read by hand from the public plate maps (KNOWN_WELLS).
    """
    import yaml

    from hpc_profiler import cli
    from hpc_profiler.config import SynthConfig
    from hpc_profiler.synth import generate_batch, plate_names

    channels = ["DNA", "ER", "RNA", "AGP", "Mito"]
    sc = SynthConfig(modalities=list(RUN_BARCODES), replicate_plates=2, wells=4, sites_per_well=1,
                     size=256, cells_per_site=16, seed=1)
    src = tmp_path / "images"
    generate_batch(sc, src, channels)
    barcode, wells_of = {}, {}
    for name, modality in plate_names(sc).items():
        barcode[name] = RUN_BARCODES[modality][int(name.rsplit("-", 1)[1]) - 1]
        wells_of[barcode[name]] = RUN_WELLS[modality]
    ld = pd.read_csv(src / "load_data.csv")
    ld["Metadata_Plate"] = ld["Metadata_Plate"].map(barcode)
    for plate, wells in wells_of.items():
        rows = ld.index[ld["Metadata_Plate"] == plate]
        assert len(rows) == len(wells)
        ld.loc[rows, "Metadata_Well"] = wells
    loaddata = src / "cpjump1_load_data.csv"
    ld.to_csv(loaddata, index=False)
    assert [c for c in ld.columns if c.startswith("Metadata_")] == ["Metadata_Plate", "Metadata_Well",
                                                                   "Metadata_Site"]

    out = tmp_path / "out"
    cfg_path = tmp_path / "config.yaml"
    cfg_path.write_text(yaml.safe_dump({
        "name": "cpjump1-barcodes", "device": "cpu", "output_dir": str(out),
        "input": {"loaddata_csv": str(loaddata)},
        "illumination": {"downsample": 2, "median_filter_size": 25},
        "executor": {"kind": "debug", "cpus_per_task": 1},
        "evaluate": {"null_size": 200},
    }))
    rc = cli.main(["run", str(cfg_path), "--executor", "debug", "--no-mpi", "--no-report"])
    printed = capsys.readouterr()
    assert rc == 0, printed.out + printed.err

    norm = pd.read_parquet(out / "profiles" / "well_normalized.parquet")
    assert sorted(zip(norm["Metadata_Plate"], norm["Metadata_Well"])) == sorted(
        (p, w) for p, ws in wells_of.items() for w in ws)
    assert (norm["Metadata_Object_Count"] > 0).all(), "sites without cells: the profiles compare nothing"
    norm = norm.set_index(["Metadata_Plate", "Metadata_Well"])
    checked = {m: 0 for m in md.MODALITIES}
    for (plate, well), (bs, gene, pert, ctl, cell, tp) in KNOWN_WELLS.items():
        row = norm.loc[(plate, well)]
        got = (row["Metadata_broad_sample"], _none(row["Metadata_gene"]), row["Metadata_pert_type"],
               _none(row["Metadata_control_type"]), row["Metadata_cell_type"], int(row["Metadata_timepoint"]))
        assert got == (bs, gene, pert, ctl, cell, tp), (plate, well)
        checked[row["Metadata_modality"]] += 1
    assert all(n >= 3 for n in checked.values()), checked
    # the replicate barcode of each modality: the same plate map, so the same annotations well by well
    for modality, (first, second) in RUN_BARCODES.items():
        cols = ["Metadata_broad_sample", "Metadata_pert_type", "Metadata_modality", "Metadata_Plate_Map_Name"]
        pd.testing.assert_frame_equal(norm.loc[first, cols], norm.loc[second, cols])
    summary = pd.read_parquet(out / "evaluate" / "summary.parquet")
    assert len(summary) > 0
