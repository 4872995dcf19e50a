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
    # a black rim on both sides of each line (so it stands out on bright nuclei), computed with scipy
    from scipy.ndimage import binary_dilation

    for labels in (cells, nuclei):
        line = find_boundaries(labels, mode="inner")
        rim = binary_dilation(line) & ~line
        assert rim.sum() > line.sum()
        assert np.all(rgb[rim] == 0)


def test_outlines_survive_the_shrink_to_the_panel():
    """A 1-pixel outline loses its odd rows and columns when the picture is shown at half size
    (the montage shows a 400 px site in ~250 px); drawn 2 pixels wide, all four sides stay."""
    img = np.full((32, 32), 0.9)  # a bright nucleus on a bright field
    nuclei = np.zeros((32, 32), np.int32)
    nuclei[11:19, 11:19] = 1  # edges on rows/columns 11 (odd) and 18 (even)

    def sides_after_half(width):
        rgb = report.outline_overlay(img, nuclei, None, width=width)[::2, ::2]  # nearest-neighbour half size
        magenta = np.all(np.isclose(rgb, report.NUCLEUS_COLOR), axis=-1)
        rows, cols = np.nonzero(magenta)
        return {"top": (rows == rows.min()).sum() >= 3 and rows.min() <= 6,
                "bottom": rows.max() >= 9, "left": cols.min() <= 6, "right": cols.max() >= 9} if len(rows) else {}

    thin = sides_after_half(1)
    assert thin and not thin["top"]  # the top edge (odd row) is gone
    assert all(sides_after_half(2).values()) and len(sides_after_half(2)) == 4
    thick = report.outline_overlay(img, nuclei, None, width=2)
    magenta = np.all(np.isclose(thick, report.NUCLEUS_COLOR), axis=-1)
    assert not magenta[~(nuclei > 0)].any()  # thickened inwards only
    assert [report.display_shrink(n, 2.7, 110) for n in (20, 400, 1080)] == [1, 2, 4]


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


def _labelled(ax) -> bool:
    return bool(ax.get_title()) and bool(ax.get_xlabel()) and bool(ax.get_ylabel())


def test_heatmap_figure_lays_plates_out_in_a_grid_with_labels(tmp_path):
    rng = np.random.default_rng(0)
    plates = [f"BR{i:02d}" for i in range(12)]
    wells = ["A01", "B02", "C03", "P24"]
    df = pd.DataFrame([(p, w) for p in plates for w in wells], columns=["Metadata_Plate", "Metadata_Well"])
    df["Metadata_Object_Count"] = rng.integers(10, 60, len(df))
    df["Cells_Intensity_MeanIntensity_DNA"] = rng.random(len(df))
    fig = report.heatmap_figure(df)
    shown = [ax for ax in fig.axes if ax.get_visible() and ax.get_images()]
    assert len(shown) == 24  # 12 plates x (count, feature)
    assert all(_labelled(ax) for ax in shown)
    assert {ax.get_title() for ax in shown} >= {"BR00: cells per well", "BR11: Cells_Intensity_MeanIntensity_DNA"}
    w, h = fig.get_size_inches()
    assert 0.5 < w / h < 2.0  # a grid, not a 1:3.3 strip
    colorbars = [ax for ax in fig.axes if ax.get_ylabel() in ("cells per well", "Cells_Intensity_MeanIntensity_DNA")
                 and not ax.get_images()]
    assert len(colorbars) == 2  # one shared scale per measurement
    png = report.plate_heatmaps(df, tmp_path / "h.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert report.heatmap_figure(df.iloc[:0]) is None


def test_illumination_panels_follow_the_config_channel_order(tmp_path):
    from hpc_profiler.illumination import save_illum

    chans = ["DNA", "ER", "RNA", "AGP", "Mito"]
    files = []
    for plate in ("P1", "P2"):
        f = tmp_path / f"{plate}_illum.h5"
        save_illum(f, {ch: np.ones((8, 8), np.float32) * (i + 1) for i, ch in enumerate(chans)}, {"n_sites": 3})
        files.append(f)
    fig = report.illumination_fig(files)
    imgs = [ax for ax in fig.axes if ax.get_images()]
    assert [ax.get_title() for ax in imgs[:5]] == [f"{c} channel" for c in chans]  # not the file's A-Z order
    assert imgs[0].get_ylabel() == "P1\n(3 sites)" and all(ax.get_xlabel() for ax in imgs)
    custom = ["Mito", "AGP", "RNA", "ER", "DNA"]
    fig = report.illumination_fig(files, custom)
    assert [ax.get_title() for ax in fig.axes if ax.get_images()][:5] == [f"{c} channel" for c in custom]
    assert report.illumination_figure(files, tmp_path / "i.png").exists()


def test_montage_figure_titles_labels_and_legend():
    from types import SimpleNamespace

    chans = ["DNA", "ER"]
    lab = np.zeros((20, 20), np.int32)
    lab[5:15, 5:15] = 1
    site = SimpleNamespace(plate="P1", well="B03", site=1)
    images = {c: np.random.default_rng(1).random((20, 20)) for c in chans}
    fig = report.montage_figure([(site, images, lab, lab)], chans)
    assert [ax.get_title() for ax in fig.axes] == ["DNA channel", "ER channel"]
    assert fig.axes[0].get_ylabel() == "plate P1" and fig.axes[1].get_xlabel() == "B03 site 1"
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == ["nucleus outline", "cell outline"]


def test_index_has_captions_summary_table_and_csv_links(tmp_path):
    (tmp_path / "qc").mkdir()
    (tmp_path / "evaluate").mkdir()
    (tmp_path / "profiles").mkdir()
    pics = [tmp_path / "qc" / "plate_heatmaps.png", tmp_path / "evaluate" / "fig5_cosine.png"]
    for p in pics:
        p.write_bytes(b"png")
    summary = pd.DataFrame({"task": ["replicate"], "Metadata_modality": ["compound"], "n_classes": [10],
                            "fraction_retrieved": [0.4], "mean_mAP": [0.51234]})
    summary.to_parquet(tmp_path / "evaluate" / "summary.parquet")
    summary.to_csv(tmp_path / "evaluate" / "summary.csv", index=False)
    wells = pd.DataFrame({"Metadata_Plate": ["P1"], "Cells_x": [1.5]})
    wells.to_parquet(tmp_path / "profiles" / "well_aggregated.parquet")
    tables = [tmp_path / "profiles" / "well_aggregated.parquet", tmp_path / "evaluate" / "summary.parquet"]
    text = report.write_index(tmp_path, "batch", pics, tables).read_text()
    assert "<h2>Plate maps</h2>" in text and "<h2>Directionality (CPJUMP1 Fig. 5)</h2>" in text
    assert text.count("<figcaption>") == 2 and "5th and 95th percentiles" in text
    assert "<h2>Benchmark summary</h2>" in text and "<td>replicate</td>" in text and "0.512" in text
    assert ">modality</th>" in text
    assert "href='evaluate/summary.csv'" in text  # the CSV evaluate wrote
    copy = tmp_path / "qc" / "csv" / "profiles" / "well_aggregated.csv"
    assert "href='qc/csv/profiles/well_aggregated.csv'" in text
    pd.testing.assert_frame_equal(pd.read_csv(copy), wells)
    # a run without a benchmark says so instead of an empty table
    (tmp_path / "evaluate" / "summary.parquet").unlink()
    text = report.write_index(tmp_path, "batch", [], [], summary=pd.DataFrame()).read_text()
    assert "No benchmark summary" in text and "Empty DataFrame" not in text


def _inside_and_clear(fig):
    """The figure's title lies inside the figure and above every panel title (drawn, in pixels)."""
    fig.canvas.draw()
    r = fig.canvas.get_renderer()
    fb = fig.bbox
    tb = fig._suptitle.get_window_extent(r)
    assert fb.x0 <= tb.x0 and tb.x1 <= fb.x1 and tb.y1 <= fb.y1, (tb, fb)  # not cut off
    for ax in fig.axes:
        if ax.get_visible() and ax.get_title():
            assert ax.title.get_window_extent(r).y1 <= tb.y0 + 1, ax.get_title()  # not over a panel


def test_figure_titles_fit_and_clear_the_panels(tmp_path):
    """Fig. 5 with one panel (the demo's case) kept its title in the picture; the
    illumination title did not sit on the first row of panels."""
    from hpc_profiler.evaluate import plots
    from hpc_profiler.illumination import save_illum

    pairs = pd.DataFrame({"task": "direction_orf_crispr", "group": "U2OS",
                          "cosine": [-0.2, 0.25, 0.45, 0.5], "true_pair": [False, False, False, True]})
    _inside_and_clear(plots.directionality_figure(pairs, pd.DataFrame()))
    chans = ["DNA", "ER", "RNA", "AGP", "Mito"]
    files = []
    for plate in ("P1", "P2", "P3"):
        f = tmp_path / f"{plate}_illum.h5"
        save_illum(f, {ch: np.ones((8, 8), np.float32) * (i + 1) for i, ch in enumerate(chans)}, {"n_sites": 3})
        files.append(f)
    _inside_and_clear(report.illumination_fig(files, chans))


def test_montage_shows_plates_spread_over_the_batch():
    """12 plates (4 replicates x 3 modalities, sorted by name): the montage shows every modality."""
    from hpc_profiler.manifest import Site
    from hpc_profiler.workflow.stages import montage_sites

    plates = [f"SYN-{m}-{r}" for m in ("COMPOUND", "CRISPR", "ORF") for r in (1, 2, 3, 4)]
    sites = [Site(p, w, n, {}) for p in plates for w in ("A01", "B02", "C03") for n in (1, 2)]
    picked = montage_sites(sites)
    assert [s.plate for s in picked] == ["SYN-COMPOUND-1", "SYN-CRISPR-1", "SYN-CRISPR-4", "SYN-ORF-4"]
    assert all((s.well, s.site) == ("B02", 2) for s in picked)  # the middle site of each plate
    assert [s.plate for s in montage_sites(sites[:12])] == ["SYN-COMPOUND-1", "SYN-COMPOUND-2"]
    assert montage_sites([]) == []
