"""QC pictures: outline overlay on the right pixels, plate grids by well position, index page."""
import numpy as np
import pandas as pd
import pytest
from skimage.segmentation import find_boundaries

from hpc_profiler import report


def test_outline_overlay_colors_exactly_the_object_boundaries():
    img = np.random.default_rng(0).random((40, 40))
    cells = np.zeros((40, 40), np.int32)
    cells[5:30, 5:30] = 1
    nuclei = np.zeros_like(cells)
    nuclei[12:20, 12:20] = 1
    rgb = report.outline_overlay(img, nuclei, cells)
    green = np.all(np.isclose(rgb, (0.1, 1.0, 0.1)), axis=-1)
    magenta = np.all(np.isclose(rgb, (1.0, 0.2, 1.0)), axis=-1)
    np.testing.assert_array_equal(magenta, find_boundaries(nuclei, mode="inner"))
    np.testing.assert_array_equal(green, find_boundaries(cells, mode="inner") & ~magenta)
    assert not (green | magenta)[0:4].any()


def test_plate_grid_places_wells():
    g = report.plate_grid(["A01", "B03", "P24"], [1.0, 2.0, 3.0])
    assert g.shape == (16, 24) and g[0, 0] == 1 and g[1, 2] == 2 and g[15, 23] == 3
    assert np.isnan(g).sum() == 16 * 24 - 3
    with pytest.raises(ValueError, match="Q01"):
        report.well_position("Q01")


def test_heatmaps_and_index(tmp_path):
    df = pd.DataFrame({"Metadata_Plate": ["P1"] * 3 + ["P2"] * 3, "Metadata_Well": ["A01", "A02", "B01"] * 2,
                       "Metadata_Object_Count": [10, 20, 30, 11, 21, 31],
                       "Cells_Intensity_MeanIntensity_DNA": np.arange(6.0)})
    png = report.plate_heatmaps(df, tmp_path / "qc" / "heat.png")
    assert png.exists() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    idx = report.write_index(tmp_path, "batch <x>", [png], [tmp_path / "t.parquet"])
    text = idx.read_text()
    assert "qc/heat.png" in text and "t.parquet" in text and "batch &lt;x&gt;" in text
