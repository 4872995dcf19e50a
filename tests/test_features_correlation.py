"""Colocalization (MeasureColocalization, Costes off) against cp_measure and hand cases."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi
from skimage.draw import ellipse

from hpc_profiler.config import CorrelationConfig
from hpc_profiler.features.correlation import (
    channel_pairs,
    correlation_feature_names,
    measure_correlation,
)

cm = pytest.importorskip("cp_measure.core.measurecolocalization")

CHANNELS = ["DNA", "ER", "RNA", "AGP", "Mito"]
THR = CorrelationConfig().threshold_percent  # the pipeline's 15 %


def _site(seed=0, size=200):
    """~25 ellipses (some touching) and 5 textured channels with a real dynamic range."""
    rng = np.random.default_rng(seed)
    lab = np.zeros((size, size), np.int32)
    k = 0
    for cy in range(22, size - 10, 38):
        for cx in range(22, size - 10, 38):
            k += 1
            rr, cc = ellipse(
                cy + rng.integers(-4, 5), cx + rng.integers(-4, 5), rng.integers(12, 22), rng.integers(10, 19),
                shape=lab.shape, rotation=rng.uniform(0, np.pi),
            )
            lab[rr, cc] = k
    shared = ndi.gaussian_filter(rng.random((size, size)), 2.0)
    imgs = {}
    for i, c in enumerate(CHANNELS):
        own = ndi.gaussian_filter(rng.random((size, size)), 1.0 + i)
        spots = ndi.gaussian_filter((rng.random((size, size)) > 0.995).astype(float), 1.5)
        img = 0.4 * (shared - shared.min()) + 0.3 * (own - own.min()) + 8.0 * spots
        imgs[c] = np.clip(img / img.max(), 0, 1)
    return lab, int(lab.max()), imgs


def _compare(ours, ref):
    """Pearson r across objects and median relative difference."""
    ours, ref = np.asarray(ours, float), np.asarray(ref, float)
    ok = np.isfinite(ours) & np.isfinite(ref)
    assert ok.sum() >= 10
    o, r = ours[ok], ref[ok]
    pr = 1.0 if np.ptp(o) == 0 and np.ptp(r) == 0 else float(np.corrcoef(o, r)[0, 1])
    rel = float(np.median(np.abs(o - r) / np.maximum(np.abs(r), 1e-12)))
    return pr, rel


def test_names_match_reference_pairs():
    names = correlation_feature_names(CHANNELS)
    assert len(names) == 10 * 8
    assert "Correlation_Correlation_AGP_DNA" in names and "Correlation_Correlation_DNA_AGP" not in names
    assert {"Correlation_K_AGP_DNA", "Correlation_K_DNA_AGP", "Correlation_RWC_Mito_RNA"} <= set(names)
    assert channel_pairs(CHANNELS)[0] == ("AGP", "DNA")


def test_against_cp_measure():
    lab, n, imgs = _site()
    ours = measure_correlation(lab, n, imgs, CHANNELS, threshold_percent=THR)
    assert set(ours) == set(correlation_feature_names(CHANNELS))
    rows = []
    thr = int(THR)
    assert thr == THR  # cp_measure takes an integer percentage
    for a, b in channel_pairs(CHANNELS):
        x, y = imgs[a], imgs[b]
        p = cm.get_correlation_pearson(x, y, lab)
        m = cm.get_correlation_manders_fold(x, y, lab, thr=thr)
        o = cm.get_correlation_overlap(x, y, lab, thr=thr)
        pairs = {
            f"Correlation_Correlation_{a}_{b}": p["Correlation_Pearson"],
            f"Correlation_Manders_{a}_{b}": m["Correlation_Manders_1"],
            f"Correlation_Manders_{b}_{a}": m["Correlation_Manders_2"],
            f"Correlation_Overlap_{a}_{b}": o["Correlation_Overlap"],
            f"Correlation_K_{a}_{b}": o["Correlation_K_1"],
            f"Correlation_K_{b}_{a}": o["Correlation_K_2"],
        }
        for name, ref in pairs.items():
            rows.append((name, *_compare(ours[name], ref)))
    print(f"\n{'feature':45s} {'pearson_r':>10s} {'median_rel':>11s}")
    for name, pr, rel in rows:
        print(f"{name:45s} {pr:10.6f} {rel:11.2e}")
    bad = [r for r in rows if not (r[1] >= 0.99 and r[2] <= 1e-3)]
    assert not bad, f"correlation features off cp_measure: {bad}"
    # the data exercise the threshold: Manders is not trivially 1 everywhere
    assert np.nanmin(ours["Correlation_Manders_AGP_DNA"]) < 0.99


def test_rwc_single_objects_against_cp_measure():
    """cp_measure ranks per object, CellProfiler per image: equal for one object."""
    lab, n, imgs = _site(seed=3)
    rows = {}
    for k, sl in enumerate(ndi.find_objects(lab), start=1):
        one = (lab[sl] == k).astype(np.int32)
        crop = {c: imgs[c][sl] for c in CHANNELS}
        ours = measure_correlation(one, 1, crop, CHANNELS, threshold_percent=THR)
        for a, b in channel_pairs(CHANNELS)[:4]:
            ref = cm.get_correlation_rwc(crop[a], crop[b], one, thr=int(THR))
            rows.setdefault(f"Correlation_RWC_{a}_{b}", []).append((ours[f"Correlation_RWC_{a}_{b}"][0], ref["Correlation_RWC_1"][0]))
            rows.setdefault(f"Correlation_RWC_{b}_{a}", []).append((ours[f"Correlation_RWC_{b}_{a}"][0], ref["Correlation_RWC_2"][0]))
    for name, vals in rows.items():
        o, r = np.array(vals).T
        pr, rel = _compare(o, r)
        print(f"{name:45s} {pr:10.6f} {rel:11.2e}")
        np.testing.assert_allclose(o, r, rtol=1e-9, err_msg=name)


def test_rwc_ranks_are_image_wide_by_hand():
    # object 1: x=(0.2,0.4), y=(0.4,0.2); object 2: x=y=(0.6,0.8)
    lab = np.array([[1, 1, 2, 2]], np.int32)
    x = np.array([[0.2, 0.4, 0.6, 0.8]])
    y = np.array([[0.4, 0.2, 0.6, 0.8]])
    out = measure_correlation(lab, 2, {"A": x, "B": y}, ["A", "B"], threshold_percent=THR)
    # image-wide dense ranks 0..3, R = 4: object 1 has |dRank| = 1 -> w = 3/4
    np.testing.assert_allclose(out["Correlation_RWC_A_B"], [0.75, 1.0])
    np.testing.assert_allclose(out["Correlation_RWC_B_A"], [0.75, 1.0])
    np.testing.assert_allclose(out["Correlation_Correlation_A_B"], [-1.0, 1.0])
    # thresholds: 15 % of 0.4 and of 0.8 -> every pixel is above
    np.testing.assert_allclose(out["Correlation_Manders_A_B"], [1.0, 1.0])
    np.testing.assert_allclose(out["Correlation_K_A_B"], [0.16 / 0.20, 1.0])
    np.testing.assert_allclose(out["Correlation_Overlap_A_B"], [0.16 / 0.20, 1.0])


def test_threshold_by_hand():
    lab = np.ones((1, 4), np.int32)
    x = np.array([[1.0, 0.5, 0.1, 0.0]])
    y = np.array([[0.1, 1.0, 1.0, 0.5]])
    out = measure_correlation(lab, 1, {"A": x, "B": y}, ["A", "B"], threshold_percent=20.0)
    # x >= 0.2: pixels 0,1; y >= 0.2: pixels 1,2,3; both: pixel 1
    np.testing.assert_allclose(out["Correlation_Manders_A_B"], [0.5 / 1.5])
    np.testing.assert_allclose(out["Correlation_Manders_B_A"], [1.0 / 2.5])
    np.testing.assert_allclose(out["Correlation_K_A_B"], [0.5 / 0.25])
    np.testing.assert_allclose(out["Correlation_K_B_A"], [0.5 / 1.0])
    np.testing.assert_allclose(out["Correlation_Overlap_A_B"], [1.0])


def test_constant_image_edge_cases():
    """CellProfiler's values for constant channels: r undefined, the rest defined."""
    lab = np.zeros((20, 20), np.int32)
    lab[2:8, 2:8] = 1
    lab[10:16, 10:18] = 2
    imgs = {"A": np.full((20, 20), 0.5), "B": np.full((20, 20), 0.25), "Z": np.zeros((20, 20))}
    out = measure_correlation(lab, 3, imgs, ["A", "B", "Z"], threshold_percent=THR)
    assert all(v.shape == (3,) and v.dtype == np.float64 for v in out.values())
    assert np.isnan(out["Correlation_Correlation_A_B"]).all()  # 0/0 as in CellProfiler
    np.testing.assert_allclose(out["Correlation_Manders_A_B"][:2], 1.0)
    np.testing.assert_allclose(out["Correlation_RWC_A_B"][:2], 1.0)
    np.testing.assert_allclose(out["Correlation_Overlap_A_B"][:2], 1.0)
    np.testing.assert_allclose(out["Correlation_K_A_B"][:2], 0.5)  # sum(xy)/sum(x^2) = 0.25/0.5
    np.testing.assert_allclose(out["Correlation_K_B_A"][:2], 2.0)
    # a channel of zeros: every pixel is "above" 0, denominators are 0 -> NaN
    assert np.isnan(out["Correlation_Manders_Z_A"][:2]).all()
    np.testing.assert_allclose(out["Correlation_Manders_A_Z"][:2], 1.0)
    # object 3 has no pixels: NaN everywhere, never an error
    assert all(np.isnan(v[2]) for v in out.values())


def test_zero_objects():
    out = measure_correlation(np.zeros((8, 8), np.int32), 0, {"A": np.ones((8, 8)), "B": np.ones((8, 8))}, ["A", "B"])
    assert list(out) == correlation_feature_names(["A", "B"])
    assert all(v.shape == (0,) for v in out.values())


def test_dense_rank_fast_path_equals_argsort_ranks():
    """The float32 key sort gives CellProfiler's dense ranks (ties, signs, -0.0 included)."""
    from hpc_profiler.features.correlation import dense_rank

    rng = np.random.default_rng(3)
    v = rng.integers(-50, 50, 5000).astype(np.float32) / np.float32(7.0)  # many ties, both signs
    v[:10] = -0.0
    v[10:20] = 0.0
    v = v.astype(np.float64)
    ordered = np.unique(v)  # NumPy's own sort: -0.0 == 0.0
    expected = np.searchsorted(ordered, v)
    np.testing.assert_array_equal(dense_rank(np, v), expected)
    w = v + 1e-12  # not float32-exact: the argsort path
    np.testing.assert_array_equal(dense_rank(np, w), np.searchsorted(np.unique(w), w))


def test_shared_image_ranks_give_the_same_result():
    """Ranks restricted from the whole image equal ranks sorted per object set."""
    from hpc_profiler.features._objects import object_pixels
    from hpc_profiler.features.correlation import image_dense_ranks

    lab, n, imgs = _site(seed=4, size=120)
    imgs = {c: v.astype(np.float32).astype(np.float64) for c, v in imgs.items()}
    ranks = {c: image_dense_ranks(v) for c, v in imgs.items()}
    a = measure_correlation(lab, n + 1, imgs, CHANNELS, threshold_percent=THR)
    b = measure_correlation(lab, n + 1, imgs, CHANNELS, threshold_percent=THR,
                            objects=object_pixels(lab, n + 1), image_ranks=ranks)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def _with_odd_objects(lab, n):
    """Add a one-pixel object, an empty label in the middle and empty labels at the end."""
    lab = lab.copy()
    lab[0, 0] = n + 1  # one pixel
    lab[lab == 3] = 0  # label 3 empty
    return lab, n + 4  # labels n + 2 .. n + 4 empty (the clamped last segment of reduceat)


@pytest.mark.parametrize("shared_ranks", [False, True])
def test_cpu_kernel_equals_array_code(shared_ranks):
    """The numba kernel (CPU default) and the backend array code (the GPU path) agree.

    Pearson's r (the sums that can cancel) to the bit; the thresholded sums,
    accumulated sequentially by the kernel, within 1e-13 relative.
    """
    from hpc_profiler.features.correlation import image_dense_ranks

    lab, n, imgs = _site(seed=6, size=140)
    lab, n = _with_odd_objects(lab, n)
    imgs = {c: v.astype(np.float32) for c, v in imgs.items()}
    ranks = {c: image_dense_ranks(v) for c, v in imgs.items()} if shared_ranks else None
    cpu = measure_correlation(lab, n, imgs, CHANNELS, threshold_percent=THR, image_ranks=ranks, engine="cpu")
    arr = measure_correlation(lab, n, imgs, CHANNELS, threshold_percent=THR, image_ranks=ranks, engine="array")
    assert np.isnan(cpu["Correlation_Correlation_AGP_DNA"][[2, n - 1]]).all()
    for k in cpu:
        if k.startswith("Correlation_Correlation_"):
            np.testing.assert_array_equal(cpu[k], arr[k], err_msg=k)
        else:
            np.testing.assert_allclose(cpu[k], arr[k], rtol=1e-13, atol=0, err_msg=k)


def test_image_dense_ranks_cpu_path_equals_dense_rank():
    """The CPU key sort + numba pass gives the generic dense ranks (ties, signs, -0.0, float64 input)."""
    from hpc_profiler.features.correlation import dense_rank, image_dense_ranks

    rng = np.random.default_rng(8)
    v = (rng.integers(-60, 60, (70, 90)).astype(np.float32) / np.float32(7.0))
    v[0, :10] = -0.0
    v[1, :10] = 0.0
    expected = np.searchsorted(np.unique(v), v)
    np.testing.assert_array_equal(image_dense_ranks(v), expected)
    np.testing.assert_array_equal(image_dense_ranks(v.astype(np.float64)), expected)
    w = v.astype(np.float64) + 1e-12  # not float32-exact: the generic path
    np.testing.assert_array_equal(image_dense_ranks(w), dense_rank(np, w.ravel()).reshape(w.shape))


def test_pairwise_segment_total_is_reduceat_bit_for_bit():
    """The CPU kernels' sum is NumPy's add.reduceat to the bit, over all segment sizes."""
    from hpc_profiler.features._cpu_segments import segment_total

    rng = np.random.default_rng(9)
    counts = np.concatenate([np.arange(1, 300), rng.integers(300, 9000, 30)])
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    a = rng.random(int(counts.sum())) * rng.choice([1.0, 1e-4, 1e4], int(counts.sum())) - 0.3
    ref = np.add.reduceat(a, starts)
    got = np.array([segment_total(a, int(s), int(c)) for s, c in zip(starts, counts)])
    np.testing.assert_array_equal(got, ref)


def test_array_code_launches_do_not_grow_with_objects_and_read_nothing_back():
    """GPU path through the counting backend: no loop over objects, no device->host copy."""
    from hpc_profiler._audit import AuditCounter, audit_backend
    from hpc_profiler.features.correlation import image_dense_ranks

    counts = []
    for size in (90, 180):
        lab, n, imgs = _site(seed=10, size=size)
        counter = AuditCounter()
        bk = audit_backend(counter)
        dimgs = {c: bk.asarray(v.astype(np.float32)) for c, v in imgs.items()}
        with counter.section("corr"):
            ranks = {c: image_dense_ranks(v) for c, v in dimgs.items()}
            out = measure_correlation(bk.asarray(lab), n, dimgs, CHANNELS, threshold_percent=THR, image_ranks=ranks)
        ref = measure_correlation(lab, n, {c: v.astype(np.float32) for c, v in imgs.items()}, CHANNELS,
                                  threshold_percent=THR)
        for k in ref:
            np.testing.assert_allclose(bk.to_numpy(out[k]), ref[k], rtol=1e-13, atol=0, err_msg=k)
        c = counter.sections["corr"]
        assert c.d2h == 0, c
        counts.append((n, c.launches))
    (n1, l1), (n2, l2) = counts
    assert n2 > 2 * n1
    assert l1 == l2, counts


def test_masked_image_ranks_give_the_same_result():
    """Ranks sorted among the labelled pixels only (image_dense_ranks(mask=...)) give the same features."""
    from hpc_profiler.features.correlation import image_dense_ranks

    lab, n, imgs = _site(seed=12, size=120)
    imgs = {c: v.astype(np.float32) for c, v in imgs.items()}
    mask = lab > 0
    full = {c: image_dense_ranks(v) for c, v in imgs.items()}
    part = {c: image_dense_ranks(v, mask=mask) for c, v in imgs.items()}
    assert not np.array_equal(full["ER"], part["ER"])  # the masked sort ranks fewer pixels
    a = measure_correlation(lab, n, imgs, CHANNELS, threshold_percent=THR, image_ranks=full)
    b = measure_correlation(lab, n, imgs, CHANNELS, threshold_percent=THR, image_ranks=part)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_cpu_kernel_equals_array_code_with_nan_pixels():
    """A NaN pixel spoils its object's sums the same way in both engines (NaN propagates)."""
    lab, n, imgs = _site(seed=13, size=100)
    imgs = {c: v.astype(np.float32) for c, v in imgs.items()}
    ys, xs = np.nonzero(lab == 2)
    imgs["ER"][ys[0], xs[0]] = np.nan
    imgs["DNA"][ys[5], xs[5]] = np.nan
    cpu = measure_correlation(lab, n, imgs, CHANNELS, threshold_percent=THR, engine="cpu")
    arr = measure_correlation(lab, n, imgs, CHANNELS, threshold_percent=THR, engine="array")
    for k in cpu:
        np.testing.assert_allclose(cpu[k], arr[k], rtol=1e-13, atol=0, equal_nan=True, err_msg=k)
    assert np.isnan(cpu["Correlation_Correlation_DNA_ER"][1])


def test_masked_image_ranks_fallbacks_and_set_ranks_by_bits():
    """Masked ranks: float32-exact data by the fused key pass, other data by the generic paths (same ranks);
    an object set's ranks from the per-word bit counts equal ranking the set's values directly."""
    from hpc_profiler.features.correlation import _set_values_and_ranks_jit, image_dense_ranks

    rng = np.random.default_rng(14)
    v = rng.integers(0, 300, (50, 70)).astype(np.float32) / np.float32(299.0)
    mask = rng.random(v.shape) < 0.6
    ref = np.zeros(v.shape, np.int64)
    ref[mask] = np.searchsorted(np.unique(v[mask]), v[mask])
    np.testing.assert_array_equal(image_dense_ranks(v, mask=mask), ref)
    np.testing.assert_array_equal(image_dense_ranks(v.astype(np.float64), mask=mask), ref)
    w = v.astype(np.float64) + 1e-12  # not float32-exact: whole-image ranks
    np.testing.assert_array_equal(image_dense_ranks(w, mask=mask), np.searchsorted(np.unique(w), w))
    x = v.copy()
    x[~mask] = np.nan  # NaN outside the mask is not looked at
    np.testing.assert_array_equal(image_dense_ranks(x, mask=mask), ref)
    np.testing.assert_array_equal(image_dense_ranks(v, mask=np.zeros(v.shape, bool)),
                                  np.searchsorted(np.unique(v), v))  # empty mask: whole-image ranks
    ranks = image_dense_ranks(v, mask=mask).ravel()
    flat = np.flatnonzero(mask.ravel() & (rng.random(v.size) < 0.5))
    words = np.zeros((v.size + 63) // 64, np.uint64)
    prefix = np.empty(words.shape[0], np.int64)
    vals, out = np.empty(flat.size), np.empty(flat.size)
    _set_values_and_ranks_jit(np.ravel(v.astype(np.float64)), ranks, flat, words, prefix, vals, out)
    sub = v.ravel()[flat]
    np.testing.assert_array_equal(out, np.searchsorted(np.unique(sub), sub).astype(float))
    np.testing.assert_array_equal(vals, sub.astype(np.float64))
    assert not words.any()  # the scratch is handed back zeroed


def test_nonrecursive_pairwise_is_reduceat_bit_for_bit():
    """The stack-unrolled pairwise sum of the CPU kernels (._pairwise) is add.reduceat's, over all segment sizes."""
    from hpc_profiler.features._pairwise import block, scratch, segment_total

    rng = np.random.default_rng(15)
    counts = np.concatenate([np.arange(1, 300), rng.integers(300, 20000, 30)])
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    a = rng.random(int(counts.sum())) * rng.choice([1.0, 1e-4, 1e4], int(counts.sum())) - 0.3
    istack, left = scratch()
    got = np.array([segment_total(a, int(s), int(c), istack, left) for s, c in zip(starts, counts)])
    np.testing.assert_array_equal(got, np.add.reduceat(a, starts))
    for n in range(0, 129):
        assert block(a, 5, n) == np.add.reduce(a[5:5 + n]), n
