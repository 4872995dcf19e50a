"""Intensity features (hpc_profiler.features.intensity) against cp_measure and by hand."""
from __future__ import annotations

import numpy as np
import scipy.ndimage as ndi
import pytest

from hpc_profiler.features._objects import object_pixels, segment_quantile, segment_sort
from hpc_profiler.features.intensity import measure_intensity, measure_intensity_channels
from test_features_shape import compare_table, make_site, single_masks


def cp_quantile(values, q):
    """CellProfiler's quantile by hand: index n*q, linear interpolation, clamped."""
    v = np.sort(values)
    pos = len(v) * q
    k = int(np.floor(pos))
    if k >= len(v) - 1:
        return v[-1]
    f = pos - k
    return v[k] * (1 - f) + v[k + 1] * f


def test_segment_quantile_matches_hand_computed():
    rng = np.random.default_rng(3)
    obj = np.repeat(np.arange(5), [1, 2, 3, 7, 10])
    vals = rng.random(obj.size)
    s = segment_sort(vals, obj)
    counts = np.bincount(obj)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    for q in (0.25, 0.5, 0.75):
        got = segment_quantile(s, starts, counts, q)
        want = [cp_quantile(vals[obj == i], q) for i in range(5)]
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-14)


def test_intensity_matches_cp_measure_all_channels():
    cpm = pytest.importorskip("cp_measure.core.measureobjectintensity")
    labels, n, images = make_site(seed=1)
    op = object_pixels(labels, n)
    masks = single_masks(labels, n)
    failed = []
    for ch in ("DNA", "Mito"):
        ours = measure_intensity(labels, n, images[ch], ch, objects=op)
        ref_rows = [cpm.get_intensity(m, images[ch], legacy=True) for m in masks]
        ref = {}
        for key in ref_rows[0]:
            if key.endswith("_Z") or "MADIntensity" in key:  # cp_measure's MAD is CellProfiler 4's (see below)
                continue
            name = key.replace("Location_", "Location_", 1)
            ref[f"{name}_{ch}"] = np.array([r[key][0] for r in ref_rows])
        assert set(ref) <= set(ours), f"missing columns: {set(ref) - set(ours)}"
        failed += compare_table(ours, ref, f"Intensity {ch} vs cp_measure (legacy=True)")
    assert not failed, f"features outside the contract: {failed}"


def test_intensity_column_names_match_cellprofiler_reference(repo_root):
    ref = repo_root.parent / "shared" / "data" / "cellprofiler_reference" / "Cells_columns.txt"
    if not ref.exists():
        pytest.skip(f"{ref} not present (../shared is not checked out)")
    cols = set(ref.read_text().split())
    labels, n, images = make_site(seed=2)
    ours = measure_intensity(labels, n, images["ER"], "ER")
    missing = [c for c in ours if c not in cols]
    assert not missing, f"not CellProfiler column names: {missing}"
    expected = {c for c in cols if c.endswith("_ER") and c.startswith(("Intensity_", "Location_"))
                and not c.endswith("_Z_ER")}
    assert expected == set(ours)


def test_empty_object_gives_nan_not_crash():
    labels, n, images = make_site(seed=4)
    out = measure_intensity(labels, n + 1, images["RNA"], "RNA")
    for name, v in out.items():
        assert v.shape == (n + 1,), name
        if name.startswith("Intensity_Integrated"):
            assert v[-1] == 0
        else:
            assert np.isnan(v[-1]), name
        assert np.all(np.isfinite(v[:-1]) | ~np.isfinite(v[:-1]))
    assert np.isfinite(out["Intensity_MedianIntensity_RNA"][:-1]).all()


def test_hand_computed_object():
    labels = np.zeros((7, 8), np.int32)
    labels[1:5, 2:6] = 1  # 4x4 square
    img = np.zeros((7, 8))
    img[1:5, 2:6] = np.arange(16).reshape(4, 4) / 16.0
    out = measure_intensity(labels, 1, img, "X")
    vals = np.arange(16) / 16.0
    assert out["Intensity_IntegratedIntensity_X"][0] == pytest.approx(vals.sum())
    assert out["Intensity_StdIntensity_X"][0] == pytest.approx(vals.std())
    assert out["Intensity_MedianIntensity_X"][0] == pytest.approx(cp_quantile(vals, 0.5))
    assert out["Intensity_LowerQuartileIntensity_X"][0] == pytest.approx(vals[4])
    # edge = the 12 outer pixels of the square
    edge = np.ones((4, 4), bool)
    edge[1:3, 1:3] = False
    ev = (np.arange(16).reshape(4, 4) / 16.0)[edge]
    assert out["Intensity_IntegratedIntensityEdge_X"][0] == pytest.approx(ev.sum())
    assert out["Intensity_MinIntensityEdge_X"][0] == 0
    assert out["Location_MaxIntensity_X_X"][0] == 5 and out["Location_MaxIntensity_Y_X"][0] == 4
    ys, xs = np.mgrid[1:5, 2:6]
    w = np.arange(16).reshape(4, 4) / 16.0
    cy, cx = (ys * w).sum() / w.sum(), (xs * w).sum() / w.sum()
    assert out["Location_CenterMassIntensity_Y_X"][0] == pytest.approx(cy)
    assert out["Intensity_MassDisplacement_X"][0] == pytest.approx(np.hypot(cy - 2.5, cx - 3.5))


def test_segment_reductions_with_empty_segments():
    from hpc_profiler.features._objects import repeat_index, segment_max, segment_min, segment_sum

    counts = np.array([3, 0, 1, 0, 4])
    starts = np.cumsum(counts) - counts
    obj = repeat_index(counts)
    np.testing.assert_array_equal(obj, np.repeat(np.arange(5), counts))
    v = np.array([0.3, 0.1, 0.2, 0.9, 0.5, 0.4, 0.8, 0.6])
    np.testing.assert_allclose(segment_sum(v, starts, counts), [0.6, 0, 0.9, 0, 2.3])
    np.testing.assert_array_equal(segment_min(v, starts, counts), [0.1, np.nan, 0.9, np.nan, 0.4])
    np.testing.assert_array_equal(segment_max(v, starts, counts), [0.3, np.nan, 0.9, np.nan, 0.8])


def test_segment_reductions_with_trailing_empty_segments():
    """Empty last objects must not cut the last pixel off the last non-empty one."""
    from hpc_profiler.features._objects import segment_max, segment_min, segment_sum

    counts = np.array([0, 2, 3, 0, 0])
    starts = np.cumsum(counts) - counts
    v = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    np.testing.assert_allclose(segment_sum(v, starts, counts), [0, 3.0, 12.0, 0, 0])
    np.testing.assert_array_equal(segment_max(v, starts, counts), [np.nan, 2.0, 5.0, np.nan, np.nan])
    np.testing.assert_array_equal(segment_min(v, starts, counts), [np.nan, 1.0, 3.0, np.nan, np.nan])
    # the same through measure_intensity: label 3 of 3 has no pixel
    lab = np.zeros((6, 6), np.int32)
    lab[1:3, 1:3] = 1
    lab[3:5, 2:5] = 2
    img = np.arange(36, dtype=np.float64).reshape(6, 6) / 36.0
    out = measure_intensity(lab, 3, img, "X")
    assert out["Intensity_MaxIntensity_X"][1] == pytest.approx(img[lab == 2].max())
    assert out["Intensity_IntegratedIntensity_X"][1] == pytest.approx(img[lab == 2].sum())
    assert np.isnan(out["Intensity_MaxIntensity_X"][2])


def test_intensity_matches_cp_measure_on_synthetic_cytoplasm():
    from test_features_shape import synth_objects

    cpm = pytest.importorskip("cp_measure.core.measureobjectintensity")
    objects, images = synth_objects()
    lab = objects["Cytoplasm"]
    n = int(lab.max())
    ours = measure_intensity(lab, n, images["AGP"], "AGP")
    rows = [cpm.get_intensity(m, images["AGP"], legacy=True) for m in single_masks(lab, n)]
    ref = {f"{k}_AGP": np.array([r[k][0] for r in rows]) for k in rows[0] if not k.endswith("_Z") and "MAD" not in k}
    assert not compare_table(ours, ref, f"Intensity Cytoplasm (synthetic site, {n} objects) vs cp_measure")


def test_mad_without_second_sort_matches_definition():
    # ties, odd/even sizes, single values: CellProfiler 5's MAD = scipy.ndimage.median(|x - median|)
    from hpc_profiler.features.intensity import intensity_statistics

    rng = np.random.default_rng(7)
    sizes = [1, 2, 3, 4, 5, 8, 13, 50, 101]
    obj = np.repeat(np.arange(len(sizes)), sizes)
    vals = np.round(rng.random(obj.size) * 6) / 6  # many ties
    out = intensity_statistics(vals, obj, len(sizes))
    for i in range(len(sizes)):
        v = vals[obj == i]
        med = cp_quantile(v, 0.5)
        assert out["Median"][i] == pytest.approx(med, abs=1e-14)
        ref = ndi.median(np.abs(v - med), np.ones(v.size, int), 1)
        assert out["MAD"][i] == pytest.approx(ref, abs=1e-14), i


def _odd_site(dtype):
    """Synthetic cytoplasm plus a one-pixel object, an empty label inside and empty labels at the end."""
    from test_features_shape import synth_objects

    objects, images = synth_objects()
    lab = objects["Cytoplasm"].copy()
    n = int(lab.max())
    lab[lab == 2] = 0
    lab[0, 0] = n + 1
    img = images["AGP"].astype(dtype)
    return lab, n + 3, img


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("with_nan", [False, True])
def test_cpu_kernel_equals_array_code(dtype, with_nan):
    """The numba kernel (CPU default) and the backend array code (the GPU path) agree.

    To the bit when every pixel is finite; with non-finite pixels (left out by
    compaction on the CPU, by masks in the array code, so the sums group their
    terms differently) within 1e-13.
    """
    lab, n, img = _odd_site(dtype)
    if with_nan:
        ys, xs = np.nonzero(lab == 5)
        img[ys[:3], xs[:3]] = np.nan  # non-finite pixels are left out, as CellProfiler masks them
        img[lab == 7] = np.inf
    cpu = measure_intensity(lab, n, img, "C", engine="cpu")
    arr = measure_intensity(lab, n, img, "C", engine="array")
    assert set(cpu) == set(arr)
    assert np.isnan(cpu["Intensity_MeanIntensity_C"][[1, n - 1]]).all()
    for k in cpu:
        if with_nan:
            np.testing.assert_allclose(cpu[k], arr[k], rtol=1e-13, atol=1e-15, err_msg=k)
        else:
            np.testing.assert_array_equal(cpu[k], arr[k], err_msg=k)
    # several channels at once (stacked in the array code) give the same columns
    img2 = np.flipud(img).copy()
    both = measure_intensity_channels(lab, n, {"C": img, "D": img2}, ["C", "D"], engine="array")
    for k in arr:
        np.testing.assert_array_equal(both[k], arr[k], err_msg=k)
    d = measure_intensity(lab, n, img2, "D", engine="cpu")
    for k in d:
        np.testing.assert_allclose(both[k], d[k], rtol=1e-13 if with_nan else 0, atol=1e-15 if with_nan else 0,
                                   err_msg=k)


def test_cpu_order_statistics_are_exact():
    """Quartiles, median and MAD of the CPU kernel equal a per-object NumPy computation to the bit."""
    lab, n, img = _odd_site(np.float32)
    img = np.round(img * 40) / 40  # many ties
    out = measure_intensity(lab, n, img, "C", engine="cpu")
    for i in range(n):
        v = np.sort(img[lab == i + 1].astype(np.float64))
        if v.size == 0:
            continue
        med = cp_quantile(v, 0.5)
        assert out["Intensity_LowerQuartileIntensity_C"][i] == cp_quantile(v, 0.25)
        assert out["Intensity_MedianIntensity_C"][i] == med
        assert out["Intensity_UpperQuartileIntensity_C"][i] == cp_quantile(v, 0.75)
        assert out["Intensity_MADIntensity_C"][i] == np.median(np.abs(v - med)), i


def test_edge_pixels_from_labels_equal_find_boundaries():
    """The CPU edge test at the labelled pixels picks find_boundaries(mode='inner')'s pixels."""
    from hpc_profiler.features._objects import edge_mask
    from hpc_profiler.features.intensity import edge_pixels

    rng = np.random.default_rng(11)
    lab = ndi.zoom(rng.integers(0, 9, (9, 11)), 7, order=0)[:60, :70].astype(np.int32)  # touching blocks, image edge
    lab[rng.random(lab.shape) < 0.02] = 0  # holes
    lab[5, 5] = 9  # a one-pixel object
    n = int(lab.max())
    op = object_pixels(lab, n)
    a = edge_pixels(op, edge_mask(lab))
    b = edge_pixels(op, labels=lab)
    for f in ("index", "obj", "counts", "starts"):
        np.testing.assert_array_equal(getattr(a, f), getattr(b, f), err_msg=f)
    assert 0 < a.index.size < op.flat.size


def test_array_code_launches_do_not_grow_with_objects_and_read_nothing_back():
    """GPU path through the counting backend: no loop over objects or channels, no device->host copy."""
    from hpc_profiler._audit import AuditCounter, audit_backend
    from hpc_profiler.features.intensity import edge_pixels

    counts = []
    for size in (90, 180):
        rng = np.random.default_rng(size)
        grid = np.zeros((size, size), bool)
        for y in range(2, size - 12, 15):
            for x in range(2, size - 12, 15):
                grid[y:y + rng.integers(6, 13), x:x + rng.integers(6, 13)] = True
        lab = ndi.label(grid)[0].astype(np.int32)
        n = int(lab.max())
        imgs = {c: rng.random(lab.shape).astype(np.float32) for c in ("A", "B", "C")}
        counter = AuditCounter()
        bk = audit_backend(counter)
        dlab = bk.asarray(lab)
        op = object_pixels(dlab, n)
        ep = edge_pixels(op, labels=dlab)
        dimgs = {c: bk.asarray(v) for c, v in imgs.items()}
        with counter.section("int"):
            out = measure_intensity_channels(dlab, n, dimgs, list(imgs), objects=op, edges=ep)
        ref = measure_intensity_channels(lab, n, imgs, list(imgs))
        for k in ref:
            np.testing.assert_array_equal(bk.to_numpy(out[k]), ref[k], err_msg=k)
        c = counter.sections["int"]
        assert c.d2h == 0, c
        counts.append((n, c.launches))
    (n1, l1), (n2, l2) = counts
    assert n2 > 2 * n1
    assert l1 == l2, counts


def test_mad_by_binary_search_equals_numpy_median():
    """The CPU kernel's MAD (k-th of two sorted runs of deviations) equals NumPy's median of |x - median|,
    with ties, duplicates of the median, one and two values."""
    from hpc_profiler.features.intensity import _mad, _quantile

    rng = np.random.default_rng(21)
    for t in range(400):
        c = int(rng.integers(1, 60)) if t % 4 else int(rng.integers(60, 3000))
        x = rng.integers(0, 1 + int(rng.integers(1, 40)), c).astype(np.float64) / 7.0 if t % 2 else rng.random(c)
        sv = np.concatenate([[9.0, 9.0], np.sort(x)])  # the segment starts at offset 2
        med = _quantile(sv, 2, c, 0.5)
        ref = np.median(np.abs(x - med))
        assert _mad(sv, 2, c, med) == ref, (t, c)
