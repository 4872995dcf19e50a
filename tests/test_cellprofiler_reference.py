"""The project against CellProfiler 5 itself on the committed reference set.

``tests/data/cellprofiler/`` holds a few 5-channel 16-bit sites (three
synthetic ones in CPJUMP1's intensity range, two crops of a real fluorescence
field: CellProfiler's ExampleFly images, whose 8-bit values give many ties),
the label images and the per-object CSVs that CellProfiler 5
(``cellprofiler-nightly`` 5.0.0.dev784, scikit-image 0.24) wrote for them with
the CPJUMP1 pipeline (``scripts/make_cellprofiler_reference.py`` regenerates
them; provenance in ``provenance.json``). ``scripts/compare_cellprofiler.py`` does the matching;
these tests hold its numbers to the issue's bar: nuclei and cells masks
identical for >= 99.5 % of CellProfiler's objects.

``watershed_skimage024.npz`` holds scikit-image 0.24 watershed labels of
small images with many tied values (``scripts/make_watershed_reference.py``
in the CellProfiler venv); our own watershed must reproduce them whatever
scikit-image is installed.
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from hpc_profiler.watershed import watershed_numpy
from script_module import SCRIPTS, load_script

DATA = Path(__file__).parent / "data" / "cellprofiler"
SCRIPT = SCRIPTS / "compare_cellprofiler.py"


def _compare_module():
    return load_script("compare_cellprofiler")


@pytest.fixture(scope="module")
def result():
    mod = _compare_module()
    return mod.compare(DATA / "load_data.csv", DATA / "cellprofiler", DATA / "cellprofiler" / "labels")


def test_watershed_equals_skimage_024_on_ties():
    ref = np.load(DATA / "watershed_skimage024.npz")
    assert str(ref["skimage_version"]).startswith("0.24")
    k = 0
    while f"image{k}" in ref:
        out = watershed_numpy(ref[f"image{k}"], ref[f"markers{k}"], ref[f"mask{k}"])
        np.testing.assert_array_equal(out, ref[f"labels{k}"], err_msg=f"case {k}")
        k += 1
    assert k >= 4


@pytest.mark.parametrize("obj", ["Nuclei", "Cells"])
def test_masks_identical_to_cellprofiler(result, obj):
    o = result["objects"][obj]
    assert o["theirs"] > 100
    assert o["ours"] == o["theirs"]
    assert o["identical"] >= 0.995 * o["theirs"], o


def test_image_measurements_equal(result):
    """Counts, the four threshold measurements of Nuclei and Cells, image texture: all within 1e-6."""
    img = result["image"]
    for obj in ("Nuclei", "Cells"):
        for m in ("FinalThreshold", "OrigThreshold", "WeightedVariance", "SumOfEntropies"):
            assert f"Threshold_{m}_{obj}" in img, sorted(img)
    texture = [k for k in img if k.startswith("Texture_")]
    assert len(texture) == 5 * 13 * 4 * 3
    for col, d in img.items():
        if col.startswith(("Count_", "Threshold_", "Texture_")):
            assert d <= 1e-6, (col, d)


def test_input_scaling_is_cellprofiler_5s():
    """CellProfiler 5 loads a uint16 image as
    ``rescale_intensity(data, in_range="dtype", out_range="float64").astype("float32")``."""
    from skimage.exposure import rescale_intensity

    from hpc_profiler.images import scale_to_unit

    raw = np.arange(65536, dtype=np.uint16).reshape(256, 256)
    ref = rescale_intensity(raw, in_range="dtype", out_range="float64").astype("float32")
    out = scale_to_unit(raw)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, ref)
    # the former multiplication by float32(1 / 65535) differs on part of the values
    assert (raw.astype(np.float32) * np.float32(1 / 65535) != ref).any()


def test_texture_of_undefined_objects_is_zero_as_cellprofiler_writes_it():
    """CellProfiler writes 0 for an object without pixel pairs at a scale
    (record_measurement replaces non-finite values); NaN stays available."""
    from hpc_profiler.config import FeaturesConfig
    from hpc_profiler.features import measure_site

    rng = np.random.default_rng(3)
    lab = np.zeros((40, 40), np.int32)
    lab[2:30, 2:30] = 1  # defined at every scale
    lab[33:36, 33:36] = 2  # 3 x 3: no pair at scales 5 and 10
    images = {"DNA": rng.random((40, 40)).astype(np.float32)}
    labels = {"Nuclei": lab, "Cells": lab, "Cytoplasm": lab}
    for as_nan in (False, True):
        params = FeaturesConfig(families=["Texture"])
        params.texture.undefined_as_nan = as_nan
        tab = measure_site(images, labels, params, ["DNA"]).objects["Nuclei"]
        j = tab.names.index("Nuclei_Texture_Contrast_DNA_10_00_256")
        assert np.isfinite(tab.values[0, j])
        assert np.isnan(tab.values[1, j]) if as_nan else tab.values[1, j] == 0.0


def test_empty_objects_as_cellprofiler_writes_them():
    """``features.empty_objects: cellprofiler``: an object without pixels (here an empty
    cytoplasm) gets CellProfiler's values, by hand from its modules: MeasureObjectIntensity
    starts every column (Intensity_*, Location_CenterMassIntensity_*, Location_MaxIntensity_*)
    at 0 and fills only objects it finds; RadialCV is 0 where no wedge has pixels, FracAtD
    and MeanFrac are 0 / 0 = NaN; MeasureObjectSizeShape fills missing objects with NaN;
    Granularity and Correlation (``scipy.ndimage.mean`` of nothing) and Location_Center are
    NaN. Objects with pixels are unchanged."""
    from hpc_profiler.config import FeaturesConfig
    from hpc_profiler.features import measure_site

    rng = np.random.default_rng(5)
    lab = np.zeros((64, 64), np.int32)
    lab[4:28, 4:28] = 1
    lab[34:60, 34:60] = 2
    lab[4:28, 36:60] = 3
    cyto = np.where(lab == 2, 0, lab).astype(np.int32)
    images = {c: rng.random(lab.shape).astype(np.float32) for c in ("DNA", "RNA")}
    labels = {"Nuclei": lab, "Cells": lab, "Cytoplasm": cyto}
    tabs = {}
    for mode in ("nan", "cellprofiler"):
        params = FeaturesConfig()
        params.empty_objects = mode
        tabs[mode] = measure_site(images, labels, params, ["DNA", "RNA"]).objects["Cytoplasm"]
    names = tabs["nan"].names
    ours, cp = tabs["nan"].values, tabs["cellprofiler"].values
    np.testing.assert_array_equal(ours[[0, 2]], cp[[0, 2]])
    for j, name in enumerate(names):
        col = name[len("Cytoplasm_"):]
        if col.startswith(("Intensity_", "Location_CenterMassIntensity_", "Location_MaxIntensity_",
                           "RadialDistribution_RadialCV_", "Texture_")):
            assert cp[1, j] == 0.0, name
        else:
            assert np.isnan(cp[1, j]), name
    j = names.index("Cytoplasm_Intensity_MeanIntensity_DNA")
    assert np.isnan(ours[1, j])  # the default: a mean of nothing is undefined
    assert ours[1, names.index("Cytoplasm_AreaShape_Area")] == 0.0


#: (compartment, family) pairs not yet at the bar, with the looser bound they are held to and why
#: (docs/feature_differences.md "Open"). Empty: every family and compartment is at the bar.
OPEN: dict = {}


def test_features_on_identical_masks_within_the_bar(result):
    fams = result["families"]
    assert {f for _, f in fams} >= {
        "AreaShape", "AreaShape(Zernike)", "Intensity", "Location", "Location(MaxIntensity)",
        "RadialDistribution", "Texture", "Granularity", "Correlation", "Neighbors",
    }
    failed = []
    for key, f in sorted(fams.items()):
        med_bar, p95_bar = OPEN.get(key, (1e-6, 1e-4))
        assert f["n_values"] > 0, key
        if f["nan_mismatch"] or not (f["median"] <= med_bar and f["p95"] <= p95_bar):
            failed.append((key, f["median"], f["p95"], f["nan_mismatch"], f["worst_column"]))
    assert not failed, failed


def test_no_cellprofiler_column_is_missing(result):
    for obj, cols in result["missing"].items():
        assert not cols, (obj, cols)


def test_neighbors_count_discarded_switch_on_the_reference(tmp_path):
    """CPJUMP1 sets "Consider objects discarded for touching image border?" = Yes: with
    ``features.neighbors.count_discarded`` (the default) Cells and Nuclei neighbours are
    CellProfiler's; switched off (the setting "No"), cells next to the cell of a
    border-discarded nucleus differ from this reference. First site only, Neighbors only."""
    from hpc_profiler.config import Config

    mod = _compare_module()
    with open(DATA / "load_data.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    first = {k: (str(DATA / v) if k.startswith("PathName_") else v) for k, v in rows[0].items()}
    one = tmp_path / "load_data.csv"
    with open(one, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(first))
        w.writeheader()
        w.writerow(first)
    out = {}
    for count in (True, False):
        cfg = Config()
        cfg.features.families = ["Neighbors"]
        cfg.features.neighbors.count_discarded = count
        res = mod.compare(one, DATA / "cellprofiler", DATA / "cellprofiler" / "labels", cfg=cfg)
        out[count] = res["families"][("Cells", "Neighbors")]
        assert res["objects"]["Cells"]["identical"] == res["objects"]["Cells"]["theirs"] > 0
    assert out[True]["median"] <= 1e-6 and out[True]["p95"] <= 1e-4, out[True]
    assert out[False]["max"] > 1e-2, out[False]
