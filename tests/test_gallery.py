"""Cell Painting Gallery layout: LoadData CSVs re-rooted, illumination .npy files, local copy."""
import numpy as np
import pandas as pd
import pytest
import tifffile

from hpc_profiler import gallery
from hpc_profiler.config import from_dict
from hpc_profiler.images import load_site_images
from hpc_profiler.sources import build_manifest

CH = ["DNA", "ER", "RNA", "AGP", "Mito"]
BATCH = "2020_11_04_CPJUMP1"


def make_gallery(root, plates=("BR1", "BR2"), wells=("A01", "B02"), sites=(1, 2), url_columns=False):
    """A tiny screen in the Gallery layout; PathNames as the real CSVs have them."""
    rng = np.random.default_rng(0)
    truth = {}
    for plate in plates:
        pdir = f"{plate}__2020-11-05T19_51_35-Measurement1"
        img_dir = root / "images" / BATCH / "images" / pdir / "Images"
        img_dir.mkdir(parents=True)
        rows = []
        for w in wells:
            for s in sites:
                row = {"Metadata_Plate": plate, "Metadata_Well": w, "Metadata_Site": str(s)}
                for k, ch in enumerate(CH):
                    name = f"{w}_s{s}_ch{k + 1}.tiff"
                    img = rng.integers(0, 4000, (16, 16), dtype=np.uint16)
                    tifffile.imwrite(img_dir / name, img)
                    truth[(plate, w, s, ch)] = img
                    row[f"FileName_Orig{ch}"] = name
                    remote = f"/home/ubuntu/bucket/projects/2019_07_11_JUMP-CP-pilots/{BATCH}/images/{pdir}/Images"
                    if url_columns:
                        row[f"URL_Orig{ch}"] = f"s3://cellpainting-gallery/cpg0000-jump-pilot/source_4/images/{BATCH}/images/{pdir}/Images/{name}"
                    row[f"PathName_Orig{ch}"] = remote
                rows.append(row)
        ld = root / "workspace" / "load_data_csv" / BATCH / plate
        ld.mkdir(parents=True)
        pd.DataFrame(rows).to_csv(ld / "load_data.csv", index=False)
        pd.DataFrame(rows).to_csv(ld / "load_data_with_illum.csv", index=False)
        ill = root / "images" / BATCH / "illum" / plate
        ill.mkdir(parents=True)
        for ch in CH:
            np.save(ill / f"{plate}_Illum{ch}.npy", 1.0 + rng.random((16, 16)))
    return truth


def test_rebase_path_moves_the_old_machine_path_under_root():
    p = f"/home/ubuntu/bucket/projects/X/{BATCH}/images/BR00116991__2020/Images"
    assert gallery.rebase_path(p, "s3://b/src", BATCH, "BR00116991") == f"s3://b/src/images/{BATCH}/images/BR00116991__2020/Images"
    assert gallery.rebase_path("BR1/Images", "/data", BATCH, "BR1") == f"/data/images/{BATCH}/images/BR1/Images"


@pytest.mark.parametrize("url_columns", [False, True])
def test_gallery_manifest_local_reads_the_right_pixels(tmp_path, url_columns):
    root = tmp_path / "gallery"
    truth = make_gallery(root, url_columns=url_columns)
    cfg = from_dict(
        {"output_dir": "out", "input": {"gallery": {"root": str(root), "batch": BATCH, "use_illum": True}}},
        source=str(tmp_path / "c.yaml"),
    )
    sites, problems = build_manifest(cfg)
    assert problems == []
    assert [s.key for s in sites][:3] == ["BR1/A01/1", "BR1/A01/2", "BR1/B02/1"] and len(sites) == 8
    for site in sites:
        imgs = load_site_images(site, CH)
        for ch in CH:
            np.testing.assert_allclose(imgs[ch], truth[(site.plate, site.well, site.site, ch)] / 65535.0, rtol=1e-6)
        assert site.illum_files["DNA"].endswith(f"illum/{site.plate}/{site.plate}_IllumDNA.npy")


def test_gallery_plate_listing_and_missing_csv_is_a_problem(tmp_path):
    root = tmp_path / "gallery"
    make_gallery(root)
    assert gallery.list_plates(str(root), BATCH) == ["BR1", "BR2"]
    cfg = from_dict(
        {"output_dir": "out", "input": {"gallery": {"root": str(root), "batch": BATCH, "plates": ["BR1", "BR9"]}}},
        source=str(tmp_path / "c.yaml"),
    )
    sites, problems = build_manifest(cfg)
    assert {s.plate for s in sites} == {"BR1"}
    assert len(problems) == 1 and "BR9" in str(problems[0]) and "load_data" in str(problems[0])
