"""Segmentation stage: IdentifyPrimaryObjects (nuclei), IdentifySecondaryObjects
"Watershed - Image" (cells), IdentifyTertiaryObjects (cytoplasm).

References: ground truth of ``hpc_profiler.synth`` sites, scikit-image
(``threshold_li``, ``regionprops``), centrosome (CellProfiler's library:
``outline``, ``fill_labeled_holes``, ``strel_disk``, ``smooth_with_function_and_mask``)
and hand-built images. All calls use the CPJUMP1 parameters of
:class:`hpc_profiler.config.SegmentationConfig`.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import scipy.ndimage as ndi
import skimage.filters
import skimage.measure

from hpc_profiler.config import DnaBackgroundConfig, IlluminationConfig, SegmentationConfig
from hpc_profiler.illumination import apply_illum, dna_background, subtract_background
import skimage.segmentation

import hpc_profiler.segmentation as segmentation
from hpc_profiler.segmentation import (
    SegmentationError,
    binarize,
    cytoplasm,
    declump_shape,
    fill_holes,
    fill_label_holes,
    filter_on_size,
    global_threshold,
    outline,
    relabel_consecutive,
    remove_border_objects,
    segment_cells,
    segment_nuclei,
    segment_site,
    strel_disk,
    threshold_smoothing_sigma,
    threshold_tolerance,
    watershed_contested,
)

SEG = SegmentationConfig()
BG = IlluminationConfig().dna_background


# --------------------------------------------------------------------------- helpers
def iou_matrix(pred, gt):
    """IoU of every predicted (rows) and ground-truth (columns) object, labels 1..N."""
    n_p, n_g = int(pred.max()), int(gt.max())
    pairs = pred.ravel().astype(np.int64) * (n_g + 1) + gt.ravel()
    c = np.bincount(pairs, minlength=(n_p + 1) * (n_g + 1)).reshape(n_p + 1, n_g + 1)
    inter = c[1:, 1:]
    union = c.sum(1)[1:, None] + c.sum(0)[None, 1:] - inter
    return inter / np.maximum(union, 1)


def drop_border_objects(gt):
    edge = np.unique(np.concatenate([gt[0], gt[-1], gt[:, 0], gt[:, -1]]))
    out = gt.copy()
    out[np.isin(out, edge[edge > 0])] = 0
    return out


@pytest.fixture(scope="module")
def synth_sites():
    """Three synthetic sites, illumination-corrected with their known vignette, segmented."""
    synth = pytest.importorskip("hpc_profiler.synth")
    out = []
    for seed in (1, 2, 3):
        s = synth.synthesize_site(seed, size=540, n_cells=60, channels=["DNA", "RNA"])
        images = {c: apply_illum(s.images[c] / 65535.0, s.vignette[c]) for c in s.images}
        out.append((s, images, segment_site(images, SEG, BG)))
    return out


# --------------------------------------------------------------------------- accuracy on synthetic sites
def test_nuclei_f1_and_iou_against_ground_truth(synth_sites):
    for s, _, seg in synth_sites:
        gt = drop_border_objects(s.nuclei)  # the pipeline discards border nuclei
        ids = np.unique(gt)[1:]
        iou = iou_matrix(seg.nuclei, gt)[:, ids - 1]
        matched = iou >= 0.5  # at most one match per row and column when IoU > 0.5
        tp = int(matched.sum())
        f1 = 2 * tp / (iou.shape[0] + iou.shape[1])
        assert f1 >= 0.9, f"F1 {f1:.3f} ({iou.shape[0]} found, {iou.shape[1]} true, {tp} matched)"
        assert iou[matched].mean() >= 0.8


def test_cells_mean_iou_against_ground_truth(synth_sites):
    for s, _, seg in synth_sites:
        gt = drop_border_objects(s.nuclei)
        ids = np.unique(gt)[1:]
        nuc_iou = iou_matrix(seg.nuclei, gt)[:, ids - 1]
        pred_i, gt_j = np.nonzero(nuc_iou >= 0.5)
        cell_iou = iou_matrix(seg.cells, s.cells)[pred_i, ids[gt_j] - 1]
        assert cell_iou.mean() >= 0.7, f"mean cell IoU {cell_iou.mean():.3f}"


def test_label_sets_are_consistent(synth_sites):
    for _, _, seg in synth_sites:
        n = int(seg.measurements["Count_Nuclei"])
        assert n > 0
        for lab in (seg.nuclei, seg.cells, seg.cytoplasm):
            assert lab.dtype == np.int32
            np.testing.assert_array_equal(np.unique(lab), np.arange(n + 1))  # 1..N consecutive, shared
        # every nucleus lies inside the cell with its label
        inside = seg.nuclei > 0
        np.testing.assert_array_equal(seg.cells[inside], seg.nuclei[inside])
        assert seg.measurements["Count_Cells"] == n == seg.measurements["Count_Cytoplasm"]
        # each cell is one 8-connected piece
        for k, sl in enumerate(ndi.find_objects(seg.cells), start=1):
            assert ndi.label(seg.cells[sl] == k, np.ones((3, 3)))[1] == 1, f"cell {k} is in pieces"


def test_cytoplasm_never_overlaps_the_shrunk_nucleus(synth_sites):
    cpm = pytest.importorskip("centrosome.cpmorphology")
    for _, _, seg in synth_sites:
        rim = cpm.outline(seg.nuclei) > 0
        interior = (seg.nuclei > 0) & ~rim
        assert not (seg.cytoplasm[interior] > 0).any()
        # cytoplasm = cell outside the nucleus interior, same labels
        expected = np.where(interior, 0, seg.cells)
        np.testing.assert_array_equal(seg.cytoplasm, expected)


def test_no_nucleus_touches_the_border(synth_sites):
    for s, _, seg in synth_sites:
        assert (s.nuclei[0] > 0).any() or (s.nuclei[:, 0] > 0).any()  # the synthetic site has border nuclei
        edges = np.concatenate([seg.nuclei[0], seg.nuclei[-1], seg.nuclei[:, 0], seg.nuclei[:, -1]])
        assert not edges.any()


def test_nuclei_equivalent_diameters_within_bounds(synth_sites):
    for _, _, seg in synth_sites:
        d = np.array([p.equivalent_diameter_area for p in skimage.measure.regionprops(seg.nuclei)])
        assert d.min() >= SEG.nuclei.min_diameter and d.max() <= SEG.nuclei.max_diameter


# --------------------------------------------------------------------------- thresholds
def test_li_threshold_equals_skimage_threshold_li(synth_sites):
    """CellProfiler computes the threshold on the unsmoothed image (smoothing only
    shapes the binarised image): OrigThreshold = threshold_li(image, tolerance as CP)."""
    nuc = SEG.nuclei
    for _, images, seg in synth_sites:
        dna = images["DNA"]
        dna = subtract_background(dna, dna_background(dna, BG.block_size, BG.smoothing)).astype(np.float64)
        tol = max(np.min(np.diff(np.unique(dna))) / 2, 0.5 / 65536)
        ref = skimage.filters.threshold_li(dna, tolerance=tol)
        m = seg.measurements
        assert abs(m["Threshold_OrigThreshold_Nuclei"] - ref) <= 1e-6
        final = min(max(ref * nuc.correction_factor, nuc.lower_bound), nuc.upper_bound)
        assert abs(m["Threshold_FinalThreshold_Nuclei"] - final) <= 1e-6
        rna = np.asarray(images["RNA"], np.float64)
        tol = max(np.min(np.diff(np.unique(rna))) / 2, 0.5 / 65536)
        ref = skimage.filters.threshold_li(rna, tolerance=tol)
        cel = SEG.cells
        assert abs(m["Threshold_OrigThreshold_Cells"] - ref) <= 1e-6
        assert abs(m["Threshold_FinalThreshold_Cells"] - min(max(ref, cel.lower_bound), cel.upper_bound)) <= 1e-6


def test_threshold_bounds_apply():
    img = np.zeros((50, 50))
    img[10:20, 10:20] = 0.005  # raw Li threshold far below the nuclei lower bound
    final, orig = global_threshold(img, method="li", correction_factor=1.25, lower_bound=0.014, upper_bound=1.0)
    assert final == 0.014 and 0 < orig < 0.005
    final, _ = global_threshold(img * 100, method="li", correction_factor=1.0, lower_bound=0.005, upper_bound=0.014)
    assert final == 0.014
    final, orig = global_threshold(np.full((4, 4), 0.3), method="li", correction_factor=1.25, lower_bound=0, upper_bound=1)
    assert orig == 0.3 and final == pytest.approx(0.375)  # constant image: CellProfiler's shortcut


def test_threshold_smoothing_matches_cellprofiler_apply_threshold():
    smooth = pytest.importorskip("centrosome.smooth")
    assert threshold_smoothing_sigma(SEG.nuclei.smoothing_scale) == pytest.approx(3 / 0.6744 / 2)
    rng = np.random.default_rng(4)
    img = ndi.gaussian_filter(rng.random((80, 70)), 2)
    t = float(np.median(img))
    sigma = SEG.nuclei.smoothing_scale / 0.6744 / 2.0
    blurred = smooth.smooth_with_function_and_mask(
        img, lambda x: ndi.gaussian_filter(x, sigma, mode="constant", cval=0), np.ones(img.shape, bool)
    )
    np.testing.assert_array_equal(binarize(img, t, SEG.nuclei.smoothing_scale), blurred >= t)
    np.testing.assert_array_equal(binarize(img, t, 0.0), img >= t)


# --------------------------------------------------------------------------- label helpers vs CellProfiler
def _random_labels(seed, shape=(60, 80), n=25):
    rng = np.random.default_rng(seed)
    markers = np.zeros(shape, np.int32)
    markers[rng.integers(0, shape[0], n), rng.integers(0, shape[1], n)] = np.arange(1, n + 1)
    lab = ndi.grey_dilation(markers, size=(7, 7))
    lab[rng.random(shape) < 0.05] = 0  # pepper holes
    return lab


def test_outline_matches_centrosome():
    cpm = pytest.importorskip("centrosome.cpmorphology")
    for seed in range(3):
        lab = _random_labels(seed)
        np.testing.assert_array_equal(outline(lab), cpm.outline(lab) > 0)


def test_fill_label_holes_matches_centrosome():
    cpm = pytest.importorskip("centrosome.cpmorphology")
    for seed in range(3):
        lab = _random_labels(seed)
        np.testing.assert_array_equal(fill_label_holes(lab), cpm.fill_labeled_holes(lab))


def test_strel_disk_matches_centrosome():
    cpm = pytest.importorskip("centrosome.cpmorphology")
    for r in (1, 2.5, SEG.nuclei.min_maxima_distance - 0.5, 21):
        np.testing.assert_array_equal(strel_disk(r), cpm.strel_disk(r).astype(bool))


def test_border_size_relabel_filters():
    lab = np.zeros((40, 40), np.int32)
    lab[0:5, 10:15] = 1  # touches the border
    lab[10:13, 10:13] = 2  # 9 px: diameter 3.4 < 10
    lab[20:35, 20:35] = 5  # 225 px: diameter 16.9
    out = remove_border_objects(lab)
    assert set(np.unique(out)) == {0, 2, 5}
    out = filter_on_size(out, SEG.nuclei.min_diameter, SEG.nuclei.max_diameter)
    assert set(np.unique(out)) == {0, 5}
    d = skimage.measure.regionprops(out)[0].equivalent_diameter_area
    assert SEG.nuclei.min_diameter <= d <= SEG.nuclei.max_diameter
    rel, n = relabel_consecutive(out)
    assert n == 1 and set(np.unique(rel)) == {0, 1} and rel.dtype == np.int32


# --------------------------------------------------------------------------- declumping and cells, by hand
def test_two_touching_nuclei_are_split():
    yy, xx = np.mgrid[:120, :120]
    dna = np.full((120, 120), 0.004)
    a = (yy - 60) ** 2 + (xx - 48) ** 2 <= 14**2
    b = (yy - 60) ** 2 + (xx - 73) ** 2 <= 14**2
    dna[a | b] = 0.08
    labels, m = segment_nuclei(dna, SEG.nuclei)
    assert m["Count_Nuclei"] == 2
    assert labels[60, 40] != labels[60, 80] and labels[60, 40] > 0 and labels[60, 80] > 0


def test_cells_grow_from_nuclei_within_foreground():
    yy, xx = np.mgrid[:100, :100]
    nuclei = np.zeros((100, 100), np.int32)
    nuclei[(yy - 50) ** 2 + (xx - 30) ** 2 <= 8**2] = 1
    nuclei[(yy - 50) ** 2 + (xx - 70) ** 2 <= 8**2] = 2
    rna = np.full((100, 100), 0.002)
    rna[20:80, 10:90] = 0.02
    rna[30:36, 20:28] = 0.002  # a dim hole inside cell 1
    rna[48:53, 28:33] = 0.002  # dim pixels inside nucleus 1
    cells, m = segment_cells(rna, nuclei, SEG.cells)
    assert m["Count_Cells"] == 2
    np.testing.assert_array_equal(np.unique(cells), [0, 1, 2])
    assert (cells[20:80, 10:90] > 0).all()  # the whole foreground, the hole filled
    assert (cells[30:36, 20:28] == 1).all()
    assert not cells[:15].any() and not cells[85:].any()
    assert cells[50, 15] == 1 and cells[50, 85] == 2
    no_fill, _ = segment_cells(rna, nuclei, dataclasses.replace(SEG.cells, fill_holes=False))
    assert not no_fill[30:36, 20:28].any()  # the hole stays without fill_holes
    assert (no_fill[48:53, 28:33] == 1).all()  # nuclei are part of the watershed mask


def test_cytoplasm_by_hand():
    cells = np.zeros((12, 12), np.int32)
    nuclei = np.zeros((12, 12), np.int32)
    cells[1:10, 1:10] = 1
    nuclei[3:8, 3:8] = 1  # 5 x 5 nucleus: its 3 x 3 interior leaves the cytoplasm
    cells[0:4, 10:12] = 2
    nuclei[0:2, 10:12] = 2  # on the image edge: all outline, nothing removed
    expected = cells.copy()
    expected[4:7, 4:7] = 0
    np.testing.assert_array_equal(cytoplasm(cells, nuclei), expected)


# --------------------------------------------------------------------------- edge cases
def test_empty_site_gives_empty_labels():
    z = np.zeros((128, 128), np.float32)
    seg = segment_site({"DNA": z, "RNA": z, "ER": z}, SEG, BG)
    for lab in (seg.nuclei, seg.cells, seg.cytoplasm):
        assert lab.shape == (128, 128) and lab.dtype == np.int32 and not lab.any()
    assert seg.measurements["Count_Nuclei"] == 0 and seg.measurements["Count_Cells"] == 0
    assert seg.measurements["Count_Cytoplasm"] == 0
    assert set(seg.measurements) == {
        "Threshold_FinalThreshold_Nuclei",
        "Threshold_OrigThreshold_Nuclei",
        "Threshold_WeightedVariance_Nuclei",
        "Threshold_SumOfEntropies_Nuclei",
        "Count_Nuclei",
        "Threshold_FinalThreshold_Cells",
        "Threshold_OrigThreshold_Cells",
        "Threshold_WeightedVariance_Cells",
        "Threshold_SumOfEntropies_Cells",
        "Count_Cells",
        "Count_Cytoplasm",
    }
    assert any("DNA" in w and "zero" in w for w in seg.warnings)
    assert any("ER" in w for w in seg.warnings)


def test_saturated_channel_warns_without_crashing(synth_sites):
    _, images, _ = synth_sites[0]
    images = dict(images)
    rna = images["RNA"].copy()
    rna[:200] = 1.0
    images["RNA"] = rna
    seg = segment_site(images, SEG, BG)
    assert any(w.startswith("channel RNA") and "saturated" in w for w in seg.warnings)
    assert not any("DNA" in w for w in seg.warnings)
    assert seg.measurements["Count_Nuclei"] > 0


def test_missing_channel_is_named():
    with pytest.raises(SegmentationError, match="'RNA'"):
        segment_site({"DNA": np.zeros((16, 16))}, SEG, BG)


def test_background_subtraction_can_be_disabled():
    yy, xx = np.mgrid[:100, :100]
    dna = 0.004 + 0.0002 * xx  # a ramp, no nuclei
    dna[(yy - 50) ** 2 + (xx - 50) ** 2 <= 10**2] = 0.06
    z = np.zeros_like(dna)
    on = segment_site({"DNA": dna, "RNA": z}, SEG, DnaBackgroundConfig())
    off = segment_site({"DNA": dna, "RNA": z}, SEG, DnaBackgroundConfig(enabled=False))
    assert on.measurements["Count_Nuclei"] == 1 == off.measurements["Count_Nuclei"]
    assert on.measurements["Threshold_OrigThreshold_Nuclei"] != off.measurements["Threshold_OrigThreshold_Nuclei"]


# --------------------------------------------------------------------------- fast equivalents vs SciPy / scikit-image
def _clumps(seed, shape=(240, 260), n=40):
    """Thresholded image of random overlapping disks (clumps, singletons, border objects)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    fg = np.zeros(shape, bool)
    for cy, cx, r in zip(rng.uniform(0, shape[0], n), rng.uniform(0, shape[1], n), rng.uniform(5, 16, n)):
        fg |= (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
    fg[rng.random(shape) < 0.01] = False  # pepper: holes and ragged edges
    return ndi.label(fg, structure=np.ones((3, 3)))[0]


def test_fill_holes_equals_scipy_binary_fill_holes():
    rng = np.random.default_rng(8)
    for k in range(20):
        b = rng.random((rng.integers(1, 50), rng.integers(1, 50))) < rng.uniform(0.3, 0.9)
        np.testing.assert_array_equal(fill_holes(b), ndi.binary_fill_holes(b), err_msg=f"case {k}")
    assert fill_holes(np.ones((3, 3), bool)).all() and not fill_holes(np.zeros((3, 3), bool)).any()


def test_watershed_contested_equals_full_image_watershed():
    from hpc_profiler.watershed import watershed_numpy

    for seed in range(3):
        components = _clumps(seed)
        rng = np.random.default_rng(seed)
        image = ndi.gaussian_filter(rng.random(components.shape), 3)  # continuous: no ties
        markers = np.zeros(components.shape, np.int32)
        pick = rng.random(components.shape) < 0.002
        markers[pick] = np.arange(1, int(pick.sum()) + 1)
        markers = ndi.grey_dilation(markers, size=(3, 3))
        markers[markers == 5] = 3  # one label in two places (maybe two components)
        ref = watershed_numpy(image, markers, components > 0)
        out = watershed_contested(image, markers, components)
        assert out.dtype == np.int32
        np.testing.assert_array_equal(out, ref)
        # both paths were taken: components with one label and with several
        lab_per_comp = [
            np.unique(markers[(components == c) & (markers > 0)]).size for c in range(1, components.max() + 1)
        ]
        assert 1 in lab_per_comp and max(lab_per_comp) > 1 and 0 in lab_per_comp


def test_is_local_maximum_equals_centrosome():
    cpm = pytest.importorskip("centrosome.cpmorphology")
    from hpc_profiler.segmentation import is_local_maximum

    for seed in range(4):
        components = _clumps(seed + 20)
        rng = np.random.default_rng(seed)
        # quantised values: many equal neighbours (a pixel equal to its largest neighbour is a maximum)
        image = np.round(ndi.gaussian_filter(rng.random(components.shape), 2) * 50) / 50
        for r in (1.0, 2.5, 7.5):
            ref = cpm.is_local_maximum(image, components, strel_disk(r))
            np.testing.assert_array_equal(is_local_maximum(image, components, r), ref, err_msg=f"{seed} {r}")


def test_is_local_maximum_gpu_path_equals_cpu_path():
    """The GPU's dense comparison per disk offset (run on NumPy through a backend named "gpu")
    finds the same pixels as the CPU's shrinking candidate sets: quantised values with many
    ties, objects a few pixels apart, objects on the border, an empty label image."""
    from hpc_profiler.backend import Backend, cpu_backend
    from hpc_profiler.segmentation import is_local_maximum

    cpu = cpu_backend()
    twin = Backend("gpu", cpu.xp, cpu.ndi, cpu.ski)
    for seed in range(3):
        components = _clumps(seed + 30)
        rng = np.random.default_rng(seed)
        image = np.round(ndi.gaussian_filter(rng.random(components.shape), 2) * 50) / 50
        for r in (1.0, 2.5, 7.5):
            ref = is_local_maximum(image, components, r)
            assert ref.any()
            np.testing.assert_array_equal(is_local_maximum(image, components, r, backend=twin), ref)
    empty = np.zeros((12, 15), np.int32)
    assert not is_local_maximum(np.ones((12, 15)), empty, 2.5, backend=twin).any()


def test_declump_equals_centrosome_composition():
    """Declumping is CellProfiler 5's separate_neighboring_objects ("Shape"/"Shape"):
    centrosome's hole filling and local maxima, the seed-0 uniform noise, and the watershed."""
    cpm = pytest.importorskip("centrosome.cpmorphology")
    from hpc_profiler.watershed import watershed_numpy

    d = SEG.nuclei.min_maxima_distance
    for seed in range(3):
        components = _clumps(seed + 10)
        fast = declump_shape(components, d)
        dist = ndi.distance_transform_edt(cpm.fill_labeled_holes(components) > 0)
        np.random.seed(0)
        dist += np.random.uniform(0, 0.001, dist.shape)
        peaks = cpm.is_local_maximum(dist, components, cpm.strel_disk(max(1, d - 0.5)))
        peaks[dist <= 0] = False
        seeds = ndi.label(peaks, np.ones((3, 3), bool))[0]
        plain = watershed_numpy(-dist - np.min(-dist), seeds, components != 0)
        np.testing.assert_array_equal(fast, plain)
        assert fast.max() > np.unique(components).size - 1  # clumps were split


def test_secondary_seeds_keep_border_objects_not_size_filtered_ones():
    from hpc_profiler.segmentation import secondary_seeds

    unedited = np.zeros((20, 30), np.int32)
    unedited[0:4, 2:6] = 1  # touches the border: discarded, still a seed
    unedited[8:12, 8:12] = 2  # final
    unedited[14:16, 20:22] = 3  # too small: discarded, no seed
    final = np.where(unedited == 2, 1, 0).astype(np.int32)
    seeds = secondary_seeds(unedited, final)
    np.testing.assert_array_equal(seeds, np.where(unedited == 3, 0, unedited))


def test_threshold_tolerance_of_float32_equals_float64():
    rng = np.random.default_rng(9)
    img = (rng.permutation(np.arange(0, 60000, 7))[:4096] / 65535.0 * 1.3).astype(np.float32).reshape(64, 64)
    t32 = threshold_tolerance(img)
    u = np.unique(img.astype(np.float64))
    assert t32 == max(np.min(np.diff(u)) / 2, 0.5 / 65536)
    assert t32 == threshold_tolerance(img.astype(np.float64))


def test_cells_do_not_take_the_territory_of_discarded_border_nuclei():
    """IdentifySecondaryObjects grows cells from every primary object, including the ones
    discarded for touching the border, and then drops those cells: the surviving cell
    stops halfway to the border nucleus (CellProfiler's filter_labels)."""
    from hpc_profiler.config import CellsConfig, NucleiConfig
    from hpc_profiler.segmentation import segment_cells, segment_nuclei

    h, w = 60, 120
    dna = np.zeros((h, w))
    yy, xx = np.mgrid[:h, :w]
    dna[(yy - 30) ** 2 + (xx - 80) ** 2 <= 8**2] = 0.1  # interior nucleus
    dna[(yy - 30) ** 2 + (xx - 3) ** 2 <= 8**2] = 0.1  # touches the left border
    rna = np.full((h, w), 0.02)  # one uniform cytoplasm foreground
    nuclei, _, unedited = segment_nuclei(dna, NucleiConfig(), return_unedited=True)
    assert nuclei.max() == 1 and unedited.max() == 2
    cells, _ = segment_cells(rna, nuclei, CellsConfig(), unedited_nuclei=unedited)
    assert set(np.unique(cells)) == {0, 1}
    cols = np.nonzero((cells == 1).any(axis=0))[0]
    # the territory boundary lies between the two seeds, not at the image border
    assert 30 <= cols.min() <= 50, cols.min()
    legacy, _ = segment_cells(rna, nuclei, CellsConfig())
    assert np.nonzero((legacy == 1).any(axis=0))[0].min() == 0  # without the seeds it grows to the border


def test_threshold_quality_equals_centrosome(synth_sites):
    """Image Threshold_WeightedVariance / Threshold_SumOfEntropies as CellProfiler's
    add_fg_bg_measurements computes them (centrosome.threshold)."""
    cth = pytest.importorskip("centrosome.threshold")
    from hpc_profiler.segmentation import threshold_quality

    _, images, _ = synth_sites[0]
    rng = np.random.default_rng(1)
    cases = [(images["RNA"], images["RNA"] >= 0.006), (images["DNA"], images["DNA"] >= 0.03)]
    cases.append((np.full((20, 20), 0.3), rng.random((20, 20)) > 0.5))  # constant image
    cases.append((rng.random((20, 20)), np.zeros((20, 20), bool)))  # no foreground
    for img, fg in cases:
        mask = np.ones(img.shape, bool)
        wv, soe = threshold_quality(img, fg)
        assert wv == pytest.approx(cth.weighted_variance(img, mask, fg), rel=1e-12, abs=1e-15)
        assert soe == pytest.approx(cth.sum_of_entropies(img, mask, fg), rel=1e-12, abs=1e-15)


def test_threshold_quality_noise_is_cached_and_unchanged():
    """The sum-of-entropies noise is drawn once per shape (read-only) and is centrosome's
    ``RandomState(0).normal`` draw; two sites of one shape get the same numbers as fresh draws."""
    from hpc_profiler.segmentation import _quality_noise_host, threshold_quality

    a = _quality_noise_host((31, 40))
    assert a is _quality_noise_host((31, 40)) and not a.flags.writeable
    assert np.array_equal(a, np.random.RandomState(0).normal(size=(31, 40)))
    rng = np.random.default_rng(1)
    for _ in range(2):
        img = rng.random((31, 40))
        fg = img > 0.6
        got = threshold_quality(img, fg)
        _quality_noise_host.cache_clear()
        assert threshold_quality(img, fg) == got


def test_channel_warnings_one_copy_names_each_channel():
    """QC messages for all-zero, saturated and empty channels in channel order (the maxima and
    saturated fractions now come to the host together): hand-made images."""
    from hpc_profiler.segmentation import channel_warnings

    ok = np.full((10, 10), 0.5, np.float32)
    sat = ok.copy()
    sat[:2] = 1.0  # 20 % at full scale
    few = ok.copy()
    few[0, 0] = 1.0  # 1 %: not more than the limit
    got = channel_warnings({"DNA": np.zeros((10, 10), np.float32), "ER": ok, "RNA": sat, "AGP": few,
                            "Mito": np.zeros((0, 0), np.float32)})
    assert got == ["channel DNA: all pixels are zero", "channel RNA: 20.0% of pixels are saturated (> 1%)",
                   "channel Mito: all pixels are zero"]
    assert channel_warnings({}) == []
