"""Image input and manifests: LoadData CSV, Opera Phenix folders, Parquet round trip."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import tifffile

from hpc_profiler.config import CPJUMP1_PHENIX_CHANNELS, from_dict
from hpc_profiler.sources import build_manifest
from hpc_profiler.images import ImageReadError, SiteInputError, load_site_images, read_tiff
from hpc_profiler.manifest import (
    ManifestError,
    Site,
    SiteProblem,
    load_manifest,
    manifest_from_loaddata,
    manifest_from_phenix,
    manifest_length,
    phenix_file_name,
    row_col_from_well,
    save_manifest,
    well_from_row_col,
)

CHANNELS = ["DNA", "ER", "RNA", "AGP", "Mito"]
NUM = {v: k for k, v in CPJUMP1_PHENIX_CHANNELS.items()}


def _img(seed, shape=(32, 40), dtype=np.uint16):
    return np.random.default_rng(seed).integers(0, 65535, size=shape).astype(dtype)


def _write_phenix(folder: Path, wells_sites, shape=(32, 40), skip=()):
    """Phenix files for (row, col, field); ``skip`` holds (row, col, field, channel) to leave out."""
    folder.mkdir(parents=True, exist_ok=True)
    truth = {}
    for i, (r, c, f) in enumerate(wells_sites):
        for j, ch in enumerate(CHANNELS):
            if (r, c, f, ch) in skip:
                continue
            img = _img(100 * i + j, shape)
            tifffile.imwrite(folder / phenix_file_name(r, c, f, NUM[ch]), img)
            truth[(well_from_row_col(r, c), f, ch)] = img
    return truth


def _write_loaddata(path: Path, rows, channels=CHANNELS, illum=False):
    fields = ["Metadata_Plate", "Metadata_Well", "Metadata_Site"]
    for ch in channels:
        fields += [f"FileName_Orig{ch}", f"PathName_Orig{ch}"]
        if illum:
            fields += [f"FileName_Illum{ch}", f"PathName_Illum{ch}"]
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=fields)
        w.writeheader()
        for row in rows:
            w.writerow({k: row.get(k, "") for k in fields})


# ---------------------------------------------------------------- wells
def test_well_names_round_trip():
    assert well_from_row_col(1, 1) == "A01"
    assert well_from_row_col(16, 24) == "P24"
    assert all(row_col_from_well(well_from_row_col(r, c)) == (r, c) for r in range(1, 17) for c in range(1, 25))
    with pytest.raises(ValueError):
        well_from_row_col(17, 1)
    with pytest.raises(ValueError):
        row_col_from_well("Z1")


# ---------------------------------------------------------------- read_tiff / load_site_images
def test_load_site_images_scales_to_unit_range(tmp_path):
    truth = _write_phenix(tmp_path / "P", [(2, 3, 1)])
    sites, problems = manifest_from_phenix(tmp_path / "P", CPJUMP1_PHENIX_CHANNELS, CHANNELS)
    assert problems == []
    imgs = load_site_images(sites[0], CHANNELS)
    for ch in CHANNELS:
        ref = truth[("B03", 1, ch)].astype(np.float64) / 65535.0
        assert imgs[ch].dtype == np.float32
        np.testing.assert_allclose(imgs[ch], ref, rtol=1e-6, atol=1e-7)
    half = load_site_images(sites[0], ["DNA"], full_scale=4095.0)
    np.testing.assert_allclose(half["DNA"], truth[("B03", 1, "DNA")] / 4095.0, rtol=1e-6)


def test_corrupt_tiff_names_the_file(tmp_path):
    bad = tmp_path / "bad.tiff"
    bad.write_bytes(b"II*\x00this is not really a tiff")
    with pytest.raises(ImageReadError, match="bad.tiff"):
        read_tiff(bad)
    with pytest.raises(ImageReadError, match="nothere.tiff"):
        read_tiff(tmp_path / "nothere.tiff")
    stack = tmp_path / "stack.tiff"
    tifffile.imwrite(stack, np.zeros((3, 8, 8), np.uint16), photometric="minisblack")
    with pytest.raises(ImageReadError, match="stack.tiff.*2-D"):
        read_tiff(stack)


def test_site_errors_name_site_and_files(tmp_path):
    folder = tmp_path / "PLATE7"
    _write_phenix(folder, [(1, 1, 1), (1, 2, 1), (1, 3, 1)], skip={(1, 2, 1, "ER")})
    # corrupt the RNA image of A03 and make A01's Mito a different shape
    rna = folder / phenix_file_name(1, 3, 1, NUM["RNA"])
    rna.write_bytes(rna.read_bytes()[:50])
    mito = folder / phenix_file_name(1, 1, 1, NUM["Mito"])
    tifffile.imwrite(mito, _img(7, shape=(32, 41)))
    sites, problems = manifest_from_phenix(folder, CPJUMP1_PHENIX_CHANNELS, CHANNELS)
    by_well = {s.well: s for s in sites}
    assert sorted(by_well) == ["A01", "A02", "A03"]  # incomplete site still listed
    assert problems == [
        SiteProblem("PLATE7", "A02", 1, f"missing ER image {folder / phenix_file_name(1, 2, 1, NUM['ER'])}")
    ]
    with pytest.raises(SiteInputError, match=r"PLATE7/A02/1: no image file for channel ER"):
        load_site_images(by_well["A02"], CHANNELS)
    with pytest.raises(SiteInputError) as err:
        load_site_images(by_well["A03"], CHANNELS)
    assert "PLATE7/A03/1" in str(err.value) and str(rna) in str(err.value)
    with pytest.raises(SiteInputError) as err:
        load_site_images(by_well["A01"], CHANNELS)
    msg = str(err.value)
    assert "PLATE7/A01/1" in msg and str(mito) in msg and "(32, 41)" in msg


def test_dtype_mismatch_is_reported(tmp_path):
    a, b = tmp_path / "a.tiff", tmp_path / "b.tiff"
    tifffile.imwrite(a, _img(1))
    tifffile.imwrite(b, _img(2).astype(np.uint8))
    site = Site("P", "B02", 3, {"DNA": str(a), "RNA": str(b)})
    with pytest.raises(SiteInputError, match=r"P/B02/3: channel RNA \(.*b\.tiff\) has dtype uint8"):
        load_site_images(site, ["DNA", "RNA"])


# ---------------------------------------------------------------- LoadData
def test_manifest_from_loaddata_resolves_and_sorts(tmp_path):
    img_dir = tmp_path / "imgs"
    img_dir.mkdir()
    rows = []
    for plate, well, site in [("P2", "A01", 1), ("P1", "B02", 2), ("P1", "B02", 1), ("P1", "a1", 1)]:
        row = {"Metadata_Plate": plate, "Metadata_Well": well, "Metadata_Site": site}
        for ch in CHANNELS:
            row[f"FileName_Orig{ch}"] = f"{plate}_{well}_{site}_{ch}.tiff"
            row[f"PathName_Orig{ch}"] = "imgs" if ch != "Mito" else str(img_dir)
            row[f"FileName_Illum{ch}"] = f"Illum{ch}.npy"
            row[f"PathName_Illum{ch}"] = "illum"
        rows.append(row)
    sub = tmp_path / "csvs"
    sub.mkdir()
    csv_path = sub / "load_data.csv"
    _write_loaddata(csv_path, rows, illum=True)
    sites = manifest_from_loaddata(csv_path, CHANNELS)
    assert [s.key for s in sites] == ["P1/A01/1", "P1/B02/1", "P1/B02/2", "P2/A01/1"]
    s = sites[1]
    assert s.files["DNA"] == str(sub / "imgs" / "P1_B02_1_DNA.tiff")  # relative to the CSV folder
    assert s.files["Mito"] == str(img_dir / "P1_B02_1_Mito.tiff")  # absolute kept
    assert s.illum_files == {ch: str(sub / "illum" / f"Illum{ch}.npy") for ch in CHANNELS}


def test_loaddata_missing_column_names_csv_and_column(tmp_path):
    csv_path = tmp_path / "ld.csv"
    _write_loaddata(csv_path, [], channels=["DNA", "ER", "RNA", "AGP"])
    with pytest.raises(ManifestError) as err:
        manifest_from_loaddata(csv_path, CHANNELS)
    assert str(csv_path) in str(err.value) and "FileName_OrigMito" in str(err.value)
    with pytest.raises(ManifestError, match="nothere.csv"):
        manifest_from_loaddata(tmp_path / "nothere.csv", CHANNELS)


def test_loaddata_bad_values_name_the_line(tmp_path):
    csv_path = tmp_path / "ld.csv"
    row = {"Metadata_Plate": "P", "Metadata_Well": "A01", "Metadata_Site": "x"}
    row.update({f"FileName_Orig{c}": "f.tiff" for c in CHANNELS})
    _write_loaddata(csv_path, [row])
    with pytest.raises(ManifestError, match=r"line 2: Metadata_Site"):
        manifest_from_loaddata(csv_path, CHANNELS)
    row["Metadata_Site"] = 1
    _write_loaddata(csv_path, [row, row])
    with pytest.raises(ManifestError, match=r"line 3: site P/A01/1 already listed on line 2"):
        manifest_from_loaddata(csv_path, CHANNELS)


# ---------------------------------------------------------------- build_manifest
def test_build_manifest_dispatch(tmp_path):
    _write_phenix(tmp_path / "imgs", [(3, 4, 2), (1, 1, 1)])
    cfg = from_dict({"input": {"phenix_dir": "imgs", "phenix_plate": "BR00117010"}}, source=str(tmp_path / "c.yaml"))
    sites, problems = build_manifest(cfg)
    assert [s.key for s in sites] == ["BR00117010/A01/1", "BR00117010/C04/2"] and problems == []
    with pytest.raises(ManifestError, match="no image source"):
        build_manifest(from_dict({}))


# ---------------------------------------------------------------- Parquet
def test_save_load_manifest_round_trip_and_slice(tmp_path):
    sites = [
        Site(f"P{p}", well_from_row_col(r, c), f, {ch: f"/x/P{p}/{r}{c}{f}{ch}.tiff" for ch in CHANNELS})
        for p in (1, 2)
        for r in (1, 5)
        for c in (2, 7)
        for f in (1, 2, 3)
    ]
    sites[3] = Site(sites[3].plate, sites[3].well, sites[3].site, dict(sites[3].files),
                    {ch: f"/illum/{ch}.npy" for ch in CHANNELS})
    missing = dict(sites[5].files)
    del missing["ER"]
    sites[5] = Site(sites[5].plate, sites[5].well, sites[5].site, missing)
    path = save_manifest(sites, tmp_path / "m" / "manifest.parquet")
    assert manifest_length(path) == len(sites)
    assert load_manifest(path) == sites
    idx = [7, 3, 5, 0]
    assert load_manifest(path, indices=idx) == [sites[i] for i in idx]
    with pytest.raises(ManifestError, match="outside"):
        load_manifest(path, indices=[len(sites)])
