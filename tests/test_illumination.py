"""Illumination stage: per-plate functions (CorrectIlluminationCalculate/Apply)
and the per-image DNA background ("Background" method, subtracted).

References: centrosome (CellProfiler's own morphology/smoothing library),
scikit-image and NumPy called with the pipeline's configured parameters, and
synthetic plates with a known vignette (``hpc_profiler.synth``).
"""
from __future__ import annotations

import os

import h5py
import numpy as np
import pytest
import scipy.ndimage as ndi
import skimage.filters
import skimage.filters.rank
import skimage.transform

from hpc_profiler.config import CPJUMP1_CHANNELS, IlluminationConfig
from hpc_profiler.illumination import (
    IllumAccumulator,
    IlluminationError,
    apply_illum,
    block_labels,
    dna_background,
    downsample_mean,
    illum_function,
    load_illum,
    load_illum_attrs,
    median_disk,
    median_smooth,
    save_illum,
    subtract_background,
)

IC = IlluminationConfig()


def _cv(a) -> float:
    a = np.asarray(a, dtype=np.float64)
    return float(a.std() / a.mean())


# --------------------------------------------------------------------------- DNA background
@pytest.mark.parametrize("shape", [(1080, 1080), (540, 533), (37, 100), (20, 20)])
def test_block_labels_match_centrosome_block(shape):
    cpm = pytest.importorskip("centrosome.cpmorphology")
    labels, n = block_labels(shape, IC.dna_background.block_size)
    ref, idx = cpm.block(shape, (IC.dna_background.block_size,) * 2)
    np.testing.assert_array_equal(labels, ref)
    assert n == len(idx)


@pytest.mark.parametrize("shape", [(150, 210), (157, 203)])  # equal blocks; uneven blocks
def test_dna_background_matches_cellprofiler_background_method(shape):
    """Block minima then edge-corrected Gaussian of sigma = size / 2.35 (CorrectIlluminationCalculate)."""
    cpm = pytest.importorskip("centrosome.cpmorphology")
    smooth = pytest.importorskip("centrosome.smooth")
    bs, sm = IC.dna_background.block_size, IC.dna_background.smoothing
    rng = np.random.default_rng(3)
    img = ndi.gaussian_filter(rng.random(shape), 4) * 0.05 + rng.random(shape) * 0.01
    labels, idx = cpm.block(img.shape, (bs, bs))
    minima = cpm.fixup_scipy_ndimage_result(ndi.minimum(img, labels, idx))
    ref = smooth.smooth_with_function_and_mask(
        minima[labels],
        lambda x: ndi.gaussian_filter(x, sm / 2.35, mode="constant", cval=0),
        np.ones(img.shape, bool),
    )
    got = dna_background(img, bs, sm)
    np.testing.assert_allclose(got, ref, rtol=1e-10, atol=1e-12)
    sub = subtract_background(img, got)
    assert sub.dtype == np.float32 and sub.min() >= 0
    np.testing.assert_allclose(sub, np.maximum(img - ref, 0), atol=1e-7)


def test_dna_background_of_flat_image_is_flat():
    img = np.full((90, 120), 0.02)
    np.testing.assert_allclose(dna_background(img, 30, 50.0), 0.02, rtol=1e-9)
    assert subtract_background(img, dna_background(img, 30, 50.0)).max() < 1e-7


# --------------------------------------------------------------------------- illumination function
def test_downsample_mean_matches_skimage_downscale_local_mean():
    rng = np.random.default_rng(0)
    img = rng.random((64, 48))
    ref = skimage.transform.downscale_local_mean(img, (IC.downsample, IC.downsample))
    np.testing.assert_allclose(downsample_mean(img, IC.downsample), ref, rtol=1e-12)


def test_downsample_mean_incomplete_blocks_repeat_the_edge():
    img = np.arange(5 * 6, dtype=float).reshape(5, 6)
    got = downsample_mean(img, 4)
    assert got.shape == (2, 2)
    # bottom-left block: rows 4,4,4,4 (edge repeated) x columns 0..3
    assert got[1, 0] == pytest.approx(img[4, 0:4].mean())
    # bottom-right block: row 4 repeated, columns 4,5,5,5
    assert got[1, 1] == pytest.approx(np.mean([img[4, 4], img[4, 5], img[4, 5], img[4, 5]]))


def test_median_disk_is_cellprofiler_strel_disk():
    cpm = pytest.importorskip("centrosome.cpmorphology")
    radius = max(1, int(IC.median_filter_size / 2.35 + 0.5))
    np.testing.assert_array_equal(median_disk(IC.median_filter_size), cpm.strel_disk(radius).astype(bool))


@pytest.mark.filterwarnings("ignore:Bad rank filter performance")
def test_median_smooth_matches_cellprofiler_rank_median_in_the_interior():
    """CellProfiler rescales to 16 bit and runs skimage's rank median with the disk."""
    rng = np.random.default_rng(1)
    u16 = (ndi.gaussian_filter(rng.random((96, 96)), 6) * 40000 + rng.integers(0, 3000, (96, 96))).astype(np.uint16)
    img = u16 / 65535.0
    fp = median_disk(IC.median_filter_size)
    r = fp.shape[0] // 2
    ref = skimage.filters.rank.median(u16, footprint=fp.astype(np.uint8)) / 65535.0
    got = median_smooth(img, IC.median_filter_size)
    np.testing.assert_allclose(got[r:-r, r:-r], ref[r:-r, r:-r], atol=0.5 / 65535)


def test_illum_function_is_resize_of_median_over_robust_minimum():
    rng = np.random.default_rng(2)
    small = ndi.gaussian_filter(rng.random((40, 50)), 5) + 0.1
    full_shape = (160, 200)
    got = illum_function(
        small,
        full_shape,
        median_filter_size=IC.median_filter_size,
        robust_minimum_percentile=IC.robust_minimum_percentile,
    )
    med = ndi.median_filter(small, footprint=median_disk(IC.median_filter_size), mode="reflect")
    up = skimage.transform.resize(med, full_shape, order=1, mode="edge", anti_aliasing=False)
    p = np.percentile(up, IC.robust_minimum_percentile)
    ref = np.maximum(up, p) / p
    assert got.dtype == np.float32 and got.shape == full_shape
    np.testing.assert_allclose(got, ref, rtol=1e-6)
    assert got.min() == pytest.approx(1.0)
    assert np.mean(got <= 1.0) >= IC.robust_minimum_percentile / 100


def test_accumulator_streams_the_mean_of_downsampled_sites():
    rng = np.random.default_rng(5)
    sites = [{ch: rng.random((32, 24)) for ch in ("DNA", "RNA")} for _ in range(3)]
    acc = IllumAccumulator(["DNA", "RNA"], 2)
    for s in sites:
        acc.add(s)
    assert acc.count == 3 and acc.shape == (32, 24)
    ref = np.mean([skimage.transform.downscale_local_mean(s["RNA"], (2, 2)) for s in sites], axis=0)
    np.testing.assert_allclose(acc.mean("RNA"), ref, rtol=1e-12)
    fn = acc.functions(5, IC.robust_minimum_percentile)
    assert set(fn) == {"DNA", "RNA"} and fn["DNA"].shape == (32, 24)


def test_accumulator_errors_name_the_channel():
    acc = IllumAccumulator(["DNA", "RNA"], 2)
    with pytest.raises(IlluminationError, match="RNA"):
        acc.add({"DNA": np.ones((8, 8))})
    acc.add({"DNA": np.ones((8, 8)), "RNA": np.ones((8, 8))})
    with pytest.raises(IlluminationError, match="DNA.*differs"):
        acc.add({"DNA": np.ones((8, 6)), "RNA": np.ones((8, 8))})
    with pytest.raises(IlluminationError, match="no site"):
        IllumAccumulator(["DNA"], 2).functions(5, 2.0)


def test_all_zero_channel_raises_naming_the_channel():
    acc = IllumAccumulator(["DNA", "Mito"], 2)
    acc.add({"DNA": np.full((16, 16), 0.1), "Mito": np.zeros((16, 16))})
    with pytest.raises(IlluminationError, match="channel Mito"):
        acc.functions(5, IC.robust_minimum_percentile)


def test_apply_illum_divides_and_clips():
    img = np.array([[0.2, 0.9], [0.5, 1.0]], dtype=np.float32)
    fn = np.array([[2.0, 0.5], [1.0, 4.0]], dtype=np.float32)
    np.testing.assert_allclose(apply_illum(img, fn), [[0.1, 1.0], [0.5, 0.25]])
    with pytest.raises(IlluminationError, match="shape"):
        apply_illum(img, np.ones((3, 3), np.float32))


# --------------------------------------------------------------------------- files
def test_save_load_roundtrip_is_atomic(tmp_path):
    fns = {"DNA": np.linspace(1, 2, 12, dtype=np.float32).reshape(3, 4), "RNA": np.ones((3, 4), np.float32)}
    path = tmp_path / "illum" / "P1_illum.h5"
    save_illum(path, fns, {"plate": "P1", "n_sites": 7, "median_filter_size": 50})
    assert sorted(os.listdir(path.parent)) == ["P1_illum.h5"]  # no temporary file left
    back = load_illum(path)
    assert set(back) == {"DNA", "RNA"}
    np.testing.assert_array_equal(back["DNA"], fns["DNA"])
    attrs = load_illum_attrs(path)
    assert attrs["plate"] == "P1" and attrs["n_sites"] == 7
    with h5py.File(path) as f:
        assert f["DNA"].dtype == np.float32


def test_load_illum_error_names_the_file(tmp_path):
    bad = tmp_path / "broken_illum.h5"
    bad.write_bytes(b"not hdf5")
    with pytest.raises(IlluminationError, match="broken_illum.h5"):
        load_illum(bad)


# --------------------------------------------------------------------------- synthetic plate
def test_flat_field_error_drops_5x_on_synthetic_plate_with_known_vignette():
    """A flat-field plate (synthetic sites whose cell signal is switched off,
    keeping background texture, shot and read noise) under one known vignette.

    The synthetic site is 540 px, i.e. a 2x-binned 1080 px CPJUMP1 site, so
    ``downsample`` is 2 here: the averaged image is 270 px wide as in CPJUMP1
    (1080 / 4) and the median filter of 50 px covers the same fraction of the
    field. Flat-field error: coefficient of variation of the 10 x 10 block
    means of the plate-averaged image.
    """
    synth = pytest.importorskip("hpc_profiler.synth")
    size, n_sites, chans = 540, 4, ["DNA", "RNA", "Mito"]
    vignette = synth.make_vignette(11, size, chans)
    flat = synth.PerturbationEffect(intensity={c: -30.0 for c in CPJUMP1_CHANNELS})
    sites = [
        synth.synthesize_site(200 + k, size=size, n_cells=20, effect=flat, channels=chans, vignette=vignette)
        for k in range(n_sites)
    ]
    acc = IllumAccumulator(chans, 2)
    for s in sites:
        acc.add({c: s.images[c] / 65535.0 for c in chans})
    fns = acc.functions(IC.median_filter_size, IC.robust_minimum_percentile)

    def block_cv(img):
        return _cv(img.reshape(10, size // 10, 10, size // 10).mean(axis=(1, 3)))

    for c in chans:
        fn = fns[c]
        assert fn.min() >= 1.0 and fn.shape == (size, size)
        raw = np.mean([s.images[c] / 65535.0 for s in sites], axis=0)
        corrected = np.mean([apply_illum(s.images[c] / 65535.0, fn) for s in sites], axis=0)
        before, after = block_cv(raw), block_cv(corrected)
        assert before > 0.05, f"{c}: the vignette should be visible ({before:.3f})"
        assert after * 5 <= before, f"{c}: flat-field error {before:.4f} -> {after:.4f}, less than 5x"
        # the function follows the vignette (up to a constant)
        assert np.corrcoef(fn.ravel(), vignette[c].ravel())[0, 1] > 0.97

