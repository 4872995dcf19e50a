"""The feature assembler: measure_site / feature_names against the CellProfiler reference columns."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hpc_profiler.config import CPJUMP1_CHANNELS, OBJECTS, FeaturesConfig
from hpc_profiler.features import feature_names, image_feature_names, measure_site
from hpc_profiler.features.correlation import measure_correlation
from hpc_profiler.features.neighbors import measure_neighbors
from hpc_profiler.synth import synthesize_site

REFERENCE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cellprofiler_reference"
#: the extra channels of the JUMP reference run (brightfield planes)
EXTRA_CHANNELS = ("Brightfield", "BFHigh", "BFLow")
#: reference columns that are not feature columns of a site table (see docs/feature_differences.md)
NOT_FEATURES = ("ImageNumber", "ObjectNumber", "Number_Object_Number")
#: columns CellProfiler 5 adds to the CellProfiler 4 reference run's (checked against CellProfiler 5
#: itself in tests/test_cellprofiler_reference.py)
CELLPROFILER5_COLUMNS = ("AreaShape_ConvexArea",)
NOT_FEATURE_PREFIXES = ("Parent_", "Children_")


def _reference(obj: str) -> list[str]:
    path = REFERENCE / f"{obj}_columns.txt"
    if not path.exists():
        pytest.skip(f"CellProfiler reference columns not available ({path} missing; ../shared is not checked out)")
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def _is_feature(name: str) -> bool:
    if name in NOT_FEATURES or name.startswith(NOT_FEATURE_PREFIXES):
        return False
    # 2-D images: no Z location columns
    return not (name == "Location_Center_Z" or (name.startswith("Location_") and "_Z_" in name))


def _restrict(names, channels):
    """Keep the columns that mention none of the reference channels we do not use."""
    dropped = [c for c in (*CPJUMP1_CHANNELS, *EXTRA_CHANNELS) if c not in channels]
    return [n for n in names if not any(t in dropped for t in n.split("_"))]


@pytest.fixture(scope="module")
def site():
    s = synthesize_site(7, size=256, n_cells=24)
    images = {c: s.images[c].astype(np.float32) / 65535.0 for c in CPJUMP1_CHANNELS}
    nuclei = s.nuclei.astype(np.int32)
    cells = s.cells.astype(np.int32)
    cyto = np.where(nuclei > 0, 0, cells).astype(np.int32)
    n = int(max(nuclei.max(), cells.max()))
    assert n >= 10
    # one cytoplasm without pixels: its features must be NaN, never an error
    empty = 3
    cyto[cyto == empty] = 0
    labels = {"Nuclei": nuclei, "Cells": cells, "Cytoplasm": cyto}
    params = FeaturesConfig()
    feats = measure_site(images, labels, params, CPJUMP1_CHANNELS)
    return images, labels, params, feats, n, empty


@pytest.mark.parametrize("channels", [list(CPJUMP1_CHANNELS), [*CPJUMP1_CHANNELS, *EXTRA_CHANNELS]])
@pytest.mark.parametrize("obj", OBJECTS)
def test_names_equal_cellprofiler_reference(obj, channels):
    ref = [n for n in _restrict(_reference(obj), channels) if _is_feature(n)] + list(CELLPROFILER5_COLUMNS)
    ours = [n[len(obj) + 1:] for n in feature_names(channels, FeaturesConfig())[obj]]
    assert len(ours) == len(set(ours)), "duplicate column names"
    assert sorted(ours) == sorted(ref), (
        f"{obj}: extra {sorted(set(ours) - set(ref))[:8]}, missing {sorted(set(ref) - set(ours))[:8]}"
    )


def test_image_names_equal_cellprofiler_reference():
    ref = _reference("Image")
    ref = [n for n in _restrict(ref, CPJUMP1_CHANNELS) if n.startswith(("Count_", "Texture_", "Granularity_"))]
    ours = image_feature_names(CPJUMP1_CHANNELS, FeaturesConfig())
    assert sorted(n[len("Image_"):] for n in ours) == sorted(ref)


def test_feature_names_equal_measure_site(site):
    images, labels, params, feats, n, _ = site
    names = feature_names(CPJUMP1_CHANNELS, params)
    assert set(feats.objects) == set(params.objects)
    for obj, table in feats.objects.items():
        assert table.names == names[obj]
        assert table.values.shape == (n, len(names[obj])) and table.values.dtype == np.float32
        np.testing.assert_array_equal(table.object_number, np.arange(1, n + 1))
    assert list(feats.image) == image_feature_names(CPJUMP1_CHANNELS, params)
    assert feats.image["Image_Count_Cells"] == n
    np.testing.assert_array_equal(feats.objects["Cells"].parents["Nuclei"], np.arange(1, n + 1))
    assert set(feats.objects["Cytoplasm"].parents) == {"Nuclei", "Cells"}
    assert set(feats.seconds) == set(params.families) and all(v >= 0 for v in feats.seconds.values())


def test_columns_hold_their_family_values(site):
    """The assembler puts each family's array under its own name (spot checks vs direct calls)."""
    images, labels, params, feats, n, _ = site
    cells = feats.objects["Cells"]
    col = {name: cells.values[:, j] for j, name in enumerate(cells.names)}
    corr = measure_correlation(labels["Cells"], n, images, CPJUMP1_CHANNELS, threshold_percent=15.0)
    for k in ("Correlation_Correlation_AGP_DNA", "Correlation_K_Mito_RNA", "Correlation_RWC_DNA_ER"):
        np.testing.assert_allclose(col[f"Cells_{k}"], corr[k].astype(np.float32), rtol=1e-6, equal_nan=True)
    nb = measure_neighbors(labels["Cells"], n, distance=None)
    np.testing.assert_array_equal(col["Cells_Neighbors_NumberOfNeighbors_Adjacent"], nb["Neighbors_NumberOfNeighbors_Adjacent"])
    ys, xs = np.nonzero(labels["Cells"] == 5)
    assert col["Cells_Location_Center_X"][4] == pytest.approx(xs.mean(), rel=1e-6)
    assert col["Cells_Location_Center_Y"][4] == pytest.approx(ys.mean(), rel=1e-6)
    area = np.bincount(labels["Cells"].ravel(), minlength=n + 1)[1:]
    np.testing.assert_allclose(col["Cells_AreaShape_Area"], area)


def test_empty_cytoplasm_is_nan(site):
    _, _, _, feats, n, empty = site
    cyto = feats.objects["Cytoplasm"]
    row = cyto.values[empty - 1]
    intensity = [j for j, k in enumerate(cyto.names) if k.startswith("Cytoplasm_Intensity_MeanIntensity_")]
    assert np.isnan(row[intensity]).all()
    other = np.delete(cyto.values, empty - 1, axis=0)
    assert np.isfinite(other[:, intensity]).all()


def test_zero_cell_site():
    params = FeaturesConfig()
    size = 64
    rng = np.random.default_rng(0)
    images = {c: rng.random((size, size)).astype(np.float32) for c in CPJUMP1_CHANNELS}
    zeros = np.zeros((size, size), np.int32)
    feats = measure_site(images, {o: zeros for o in OBJECTS}, params, CPJUMP1_CHANNELS)
    names = feature_names(CPJUMP1_CHANNELS, params)
    for obj in OBJECTS:
        t = feats.objects[obj]
        assert t.names == names[obj] and t.values.shape == (0, len(names[obj])) and t.object_number.shape == (0,)
    assert feats.image["Image_Count_Nuclei"] == 0
    assert list(feats.image) == image_feature_names(CPJUMP1_CHANNELS, params)


def test_families_and_objects_subset():
    params = FeaturesConfig(objects=["Cells"], families=["Correlation", "Neighbors"])
    s = synthesize_site(2, size=128, n_cells=6)
    images = {c: s.images[c].astype(np.float32) / 65535.0 for c in ["DNA", "RNA"]}
    feats = measure_site(images, {"Cells": s.cells}, params, ["DNA", "RNA"])
    assert list(feats.objects) == ["Cells"]
    names = feats.objects["Cells"].names
    assert names == feature_names(["DNA", "RNA"], params)["Cells"]
    assert {n.split("_")[1] for n in names} == {"Location", "Correlation", "Neighbors"}
    assert set(feats.seconds) == {"Correlation", "Neighbors"}
    assert list(feats.image) == ["Image_Count_Cells"]


def test_missing_inputs_are_named():
    params = FeaturesConfig(objects=["Cells"], families=["Correlation"])
    lab = np.zeros((8, 8), np.int32)
    with pytest.raises(ValueError, match="Nuclei|channel"):
        measure_site({"DNA": np.zeros((8, 8))}, {"Cells": lab}, params, ["DNA", "RNA"])
    with pytest.raises(ValueError, match="Nuclei"):
        measure_site({"DNA": np.zeros((8, 8))}, {"Cells": lab}, FeaturesConfig(), ["DNA"])


def test_feature_docs_up_to_date():
    """docs/features.md is generated from feature_names (scripts/gen_feature_docs.py)."""
    from script_module import load_script

    root = Path(__file__).resolve().parents[1]
    mod = load_script("gen_feature_docs")
    doc = root / "docs" / "features.md"
    assert doc.exists() and doc.read_text() == mod.render(), "run: python scripts/gen_feature_docs.py"
