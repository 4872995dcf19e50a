"""CellProfiler outputs in (hpc_profiler.cpimport), checked against pycytominer.

The data are real CellProfiler 4 per-object CSVs of the JUMP plate BR00121431
(2021_04_20_Target2, wells A01 and A02, site 1), a compact copy of pycytominer's
own test data (``tests/data/pycytominer_BR00121431``, see its README: every row,
every bookkeeping column, one feature column in 25). The SQLite is built from
the same CSVs in cytominer-database's layout (tables ``Image`` with ``Image_*``
columns and one table per compartment with prefixed columns, linked by
``TableNumber``/``ImageNumber``). The reference is pycytominer 1.7.1:
``SingleCells.merge_single_cells`` on that SQLite, then ``aggregate``.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from hpc_profiler import cpimport
from hpc_profiler.config import from_dict, load_config
from hpc_profiler.mpi import STARTUP_TIMEOUT_ENV, SerialComm
from hpc_profiler.reduce import reduce_batch
from hpc_profiler.sitefile import read_site_file

DATA = Path(__file__).resolve().parent / "data" / "pycytominer_BR00121431"
SITES = DATA / "BR00121431" / "analysis"
COMPARTMENTS = ("Cells", "Cytoplasm", "Nuclei")
STRATA = ["Metadata_Plate", "Metadata_Well"]


# --------------------------------------------------------------------------- helpers
def build_cytominer_sqlite(site_dirs, path) -> Path:
    """A cytominer-database style SQLite of the sites' CSVs (one TableNumber per folder)."""
    return cpimport.write_cytominer_sqlite(site_dirs, path, COMPARTMENTS)


def pycytominer_single_cells(db) -> pd.DataFrame:
    """pycytominer's merged single cells of a cytominer-database SQLite, Metadata_Plate/Well named as ours."""
    cells = pytest.importorskip("pycytominer.cyto_utils.cells")
    sc = cells.SingleCells(
        sql_file=f"sqlite:///{db}",
        strata=["Image_Metadata_Plate", "Image_Metadata_Well"],
        image_cols=["TableNumber", "ImageNumber", "Image_Metadata_Site"],
        fields_of_view_feature="Image_Metadata_Site",
    )
    df = sc.merge_single_cells()
    return df.rename(columns={"Image_Metadata_Plate": "Metadata_Plate", "Image_Metadata_Well": "Metadata_Well"})


def pycytominer_wells(single_cells: pd.DataFrame, features) -> pd.DataFrame:
    pcm = pytest.importorskip("pycytominer")
    sc = single_cells.copy()
    sc["Metadata_Plate"] = sc["Metadata_Plate"].astype(str)
    return pcm.aggregate(sc, strata=STRATA, features=list(features), operation="median",
                         compute_object_count=True, object_feature="Metadata_ObjectNumber")


def write_config(path, out, **cellprofiler) -> Path:
    data = {"name": "cpimport-test", "output_dir": str(out), "reduce": {"normalize_samples": "all"}}
    if cellprofiler:
        data["cellprofiler"] = cellprofiler
    Path(path).write_text(yaml.safe_dump(data))
    return Path(path)


def import_and_reduce(tmp, src, name, **cellprofiler):
    out = Path(tmp) / name
    out.mkdir(parents=True)
    cfg = load_config(write_config(out / "config.yaml", out, **cellprofiler))
    summary = cpimport.import_cellprofiler(cfg, src, SerialComm(), verbose=False)
    paths = reduce_batch(cfg, SerialComm())
    return cfg, summary, pd.read_parquet(paths["well_aggregated"])


def assert_wells_equal(ours: pd.DataFrame, ref: pd.DataFrame, rtol: float, what: str):
    ours = ours.sort_values(STRATA).reset_index(drop=True)
    ref = ref.sort_values(STRATA).reset_index(drop=True)
    assert ours[STRATA].astype(str).values.tolist() == ref[STRATA].astype(str).values.tolist(), what
    feats = [c for c in ours.columns if not c.startswith("Metadata_")]
    assert len(feats) > 100, f"{what}: too few features compared ({len(feats)})"
    assert set(feats) <= set(ref.columns), f"{what}: not pycytominer features: {sorted(set(feats) - set(ref.columns))[:5]}"
    np.testing.assert_array_equal(ours["Metadata_Object_Count"].to_numpy(), ref["Metadata_Object_Count"].to_numpy())
    a, b = ours[feats].to_numpy(float), ref[feats].to_numpy(float)
    # relative to each feature's scale (a median that is exactly 0 in both is compared absolutely)
    scale = np.maximum(np.nanmax(np.abs(b), axis=0), 1e-300)
    np.testing.assert_allclose(a / scale, b / scale, rtol=0, atol=rtol, equal_nan=True, err_msg=what)
    return feats


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def sqlite_db(tmp_path_factory):
    site_dirs = sorted(p for p in SITES.iterdir() if p.is_dir())
    return build_cytominer_sqlite(site_dirs, tmp_path_factory.mktemp("db") / "BR00121431.sqlite")


@pytest.fixture(scope="module")
def reference(sqlite_db):
    return pycytominer_single_cells(sqlite_db)


# --------------------------------------------------------------------------- tests
def test_bookkeeping_columns_are_not_features():
    for c in ("ImageNumber", "ObjectNumber", "Parent_Nuclei", "Children_Cytoplasm_Count", "Location_Center_X",
              "Number_Object_Number", "Metadata_Site", "TableNumber"):
        assert cpimport.is_bookkeeping(c), c
    for c in ("AreaShape_Area", "Intensity_MeanIntensity_DNA", "Texture_Contrast_ER_3_00_256"):
        assert not cpimport.is_bookkeeping(c), c


@pytest.mark.parametrize("dtype,rtol", [("float64", 1e-12), ("float32", 1e-6)])
def test_site_folders_match_pycytominer(tmp_path, reference, dtype, rtol):
    cfg, summary, ours = import_and_reduce(tmp_path, DATA, dtype, site_dtype=dtype)
    assert summary["sites_written"] == 2 and summary["problems"] == 0
    assert summary["cells"] == len(reference)
    feats = [c for c in ours.columns if not c.startswith("Metadata_")]
    ref = pycytominer_wells(reference, feats)
    feats = assert_wells_equal(ours, ref, rtol, f"CSV folders, {dtype}")
    # every pycytominer feature that is not bookkeeping is ours
    pcm_feats = {c for c in reference.columns if c.startswith(COMPARTMENTS)}
    book = {c for c in pcm_feats if cpimport.is_bookkeeping(c.split("_", 1)[1])}
    assert pcm_feats - book == set(feats)
    assert not any("_Parent_" in f or "_Location_" in f or "_Children_" in f for f in feats)
    site = read_site_file(next((Path(cfg.out) / "sites" / "BR00121431").glob("*/*A01*.h5")))
    assert site.objects["Cells"].values.dtype == np.dtype(dtype)
    assert site.attrs["backend"] == "cellprofiler"
    assert set(site.objects["Cytoplasm"].parents) == {"Cells", "Nuclei"}
    assert site.image["Image_Count_Cells"] == 89.0
    # the image table's other Metadata_* columns are carried to the site files and the well profiles
    for d in sorted(p for p in SITES.iterdir() if p.is_dir()):
        img = pd.read_csv(d / "Image.csv").iloc[0]
        well = ours[ours["Metadata_Well"] == img["Metadata_Well"]].iloc[0]
        for col in ("Metadata_Row", "Metadata_Col", "Metadata_FieldID", "Metadata_ChannelName",
                    "Metadata_AbsTime"):
            assert str(well[col]) == str(img[col]), (d.name, col)
    assert json.loads(site.attrs["metadata"])["Metadata_AbsTime"] == "2021-04-07T17:32:25.107-04:00"


def test_sqlite_matches_pycytominer(tmp_path, sqlite_db, reference):
    _, summary, ours = import_and_reduce(tmp_path, sqlite_db, "sqlite", site_dtype="float64")
    assert summary["sites_written"] == 2 and summary["problems"] == 0
    feats = [c for c in ours.columns if not c.startswith("Metadata_")]
    assert_wells_equal(ours, pycytominer_wells(reference, feats), 1e-12, "SQLite")


def test_sqlite_equals_csv(tmp_path, sqlite_db):
    """The SQLite route and the CSV route give the same well table, bit for bit."""
    _, _, a = import_and_reduce(tmp_path, sqlite_db, "sqlite", site_dtype="float64")
    _, _, b = import_and_reduce(tmp_path, DATA, "csv", site_dtype="float64")
    pd.testing.assert_frame_equal(a, b)


def test_batch_folder_with_image_numbers(tmp_path, reference):
    """One folder holding both sites (told apart by ImageNumber), read in chunks smaller than a site."""
    batch = tmp_path / "BR00121431"
    batch.mkdir()
    site_dirs = sorted(p for p in SITES.iterdir() if p.is_dir())
    for table in ("Image", *COMPARTMENTS):
        pd.concat([pd.read_csv(d / f"{table}.csv") for d in site_dirs]).to_csv(batch / f"{table}.csv", index=False)
    _, summary, ours = import_and_reduce(tmp_path, batch, "out", site_dtype="float64", chunk_rows=7)
    assert summary["sites_written"] == 2
    feats = [c for c in ours.columns if not c.startswith("Metadata_")]
    assert_wells_equal(ours, pycytominer_wells(reference, feats), 1e-12, "batch folder")


def test_bad_rows_are_named_and_skipped(tmp_path, reference, capsys):
    src = tmp_path / "src"
    shutil.copytree(DATA, src)
    a01 = src / "BR00121431" / "analysis" / "BR00121431-A01-1"
    a02 = src / "BR00121431" / "analysis" / "BR00121431-A02-1"
    cyto = pd.read_csv(a01 / "Cytoplasm.csv")
    orphan = int(cyto.loc[3, "ObjectNumber"])
    cyto.loc[3, "Parent_Cells"] = 0
    cyto.to_csv(a01 / "Cytoplasm.csv", index=False)
    cells = pd.read_csv(a01 / "Cells.csv").astype({"AreaShape_Area": object})
    bad_cell = int(cells.loc[10, "ObjectNumber"])
    cells.loc[10, "AreaShape_Area"] = "12;x"
    cells.to_csv(a01 / "Cells.csv", index=False)
    (a02 / "Nuclei.csv").unlink()

    out = tmp_path / "out"
    out.mkdir()
    cfg = load_config(write_config(out / "config.yaml", out, site_dtype="float64"))
    summary = cpimport.import_cellprofiler(cfg, src, SerialComm())
    err = capsys.readouterr().err.splitlines()
    assert summary["sites_written"] == 1 and summary["problems"] == 3
    assert any(str(a02 / "Nuclei.csv") in line and "missing compartment file" in line for line in err), err
    assert any(str(a01 / "Cytoplasm.csv") in line and f"object {orphan}" in line and "no parent" in line
               for line in err), err
    assert any(str(a01 / "Cells.csv") in line and "'12;x'" in line and "AreaShape_Area" in line for line in err), err
    listed = pd.read_csv(Path(cfg.out) / "import" / "skipped.csv")
    assert len(listed) == 3

    ours = pd.read_parquet(reduce_batch(cfg, SerialComm())["well_aggregated"])
    ref_cells = reference[(reference["Metadata_Well"] == "A01")
                          & (reference["Metadata_Cytoplasm_Parent_Cells"] != bad_cell)
                          & (reference["Metadata_ObjectNumber_cytoplasm"] != orphan)]
    assert len(ref_cells) == 89 - 2
    feats = [c for c in ours.columns if not c.startswith("Metadata_")]
    assert_wells_equal(ours, pycytominer_wells(ref_cells, feats), 1e-12, "bad rows skipped")


def test_site_without_objects_is_a_valid_empty_site(tmp_path):
    src = tmp_path / "src" / "BR00121431" / "analysis" / "BR00121431-A03-1"
    shutil.copytree(SITES / "BR00121431-A02-1", src)
    img = pd.read_csv(src / "Image.csv")
    img["Metadata_Well"] = "A03"
    img.to_csv(src / "Image.csv", index=False)
    for comp in COMPARTMENTS:  # header only
        pd.read_csv(src / f"{comp}.csv").iloc[:0].to_csv(src / f"{comp}.csv", index=False)
    out = tmp_path / "out"
    out.mkdir()
    cfg = load_config(write_config(out / "config.yaml", out))
    summary = cpimport.import_cellprofiler(cfg, tmp_path / "src", SerialComm(), verbose=False)
    assert summary["sites_written"] == 1 and summary["cells"] == 0 and summary["problems"] == 0
    site = read_site_file(next((Path(cfg.out) / "sites").rglob("*.h5")))
    assert site.objects["Cells"].values.shape[0] == 0 and len(site.objects["Cells"].names) > 10


def test_existing_site_files_are_kept(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    cfg = load_config(write_config(out / "config.yaml", out))
    cpimport.import_cellprofiler(cfg, DATA, SerialComm(), verbose=False)
    files = sorted((Path(cfg.out) / "sites").rglob("*.h5"))
    stamps = [f.stat().st_mtime_ns for f in files]
    again = cpimport.import_cellprofiler(cfg, DATA, SerialComm(), verbose=False)
    assert again["kept_existing"] == 2 and again["sites_written"] == 0
    assert [f.stat().st_mtime_ns for f in files] == stamps
    assert cpimport.import_cellprofiler(cfg, DATA, SerialComm(), overwrite=True, verbose=False)["sites_written"] == 2


def test_plate_from_folder_when_no_metadata_plate(tmp_path):
    src = tmp_path / "MYPLATE" / "analysis" / "MYPLATE-B03-2"
    shutil.copytree(SITES / "BR00121431-A01-1", src)
    img = pd.read_csv(src / "Image.csv").drop(columns=["Metadata_Plate", "Metadata_Well", "Metadata_Site"])
    img.to_csv(src / "Image.csv", index=False)
    ts = cpimport.discover_sources(tmp_path)
    assert len(ts) == 1 and cpimport.folder_plate(ts[0]) == "MYPLATE"
    images, problems = cpimport.inspect_table_set(ts[0], from_dict({}).cellprofiler)
    assert problems == []
    assert (images[0]["plate"], images[0]["well"], images[0]["site"]) == ("MYPLATE", "B03", "2")
    out = tmp_path / "out"
    out.mkdir()
    cfg = load_config(write_config(out / "config.yaml", out))
    summary = cpimport.import_cellprofiler(cfg, tmp_path / "MYPLATE", SerialComm(), verbose=False)
    assert summary["sites_written"] == 1 and summary["cells"] == 89
    site = read_site_file(next((out / "sites").rglob("*.h5")))
    assert (site.attrs["plate"], site.attrs["well"], str(site.attrs["site"])) == ("MYPLATE", "B03", "2")


@pytest.mark.mpi
def test_two_ranks_equal_one(tmp_path, sqlite_db, mpirun):
    serial = {}
    for src, name in ((DATA, "csv"), (sqlite_db, "sqlite")):
        _, _, serial[name] = import_and_reduce(tmp_path / "serial", src, name)
    for src, name in ((DATA, "csv"), (sqlite_db, "sqlite")):
        out = tmp_path / "mpi" / name
        out.mkdir(parents=True)
        cfg_path = write_config(out / "config.yaml", out)
        # hang guards, not speed bounds: a loaded 2-core CI machine may start the ranks slowly
        env = {STARTUP_TIMEOUT_ENV: "600"}
        mpirun([mpirun.python, "-m", "hpc_profiler.cpimport", str(src), str(cfg_path), "-q"], n=2, timeout=900,
               env=env)
        mpirun([mpirun.python, "-m", "hpc_profiler.reduce", str(cfg_path)], n=2, timeout=900, env=env)
        summary = pd.read_json(out / "import" / "import_summary.json", typ="series")
        assert summary["ranks"] == 2 and summary["sites_written"] == 2
        assert [r["sites"] for r in summary["per_rank"]] == [1, 1]
        pd.testing.assert_frame_equal(pd.read_parquet(out / "profiles" / "well_aggregated.parquet"), serial[name])
