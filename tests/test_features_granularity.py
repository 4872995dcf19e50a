"""Granularity (MeasureGranularity) against cp_measure, a direct transcription and closed forms."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage as ndi
import skimage.morphology
from skimage.segmentation import expand_labels

from hpc_profiler.config import GranularityConfig
from hpc_profiler.features.granularity import measure_granularity, object_sampler

CFG = GranularityConfig()
PARAMS = dict(
    spectrum_length=CFG.spectrum_length,
    subsample_size=CFG.subsample_size,
    image_sample_size=CFG.image_sample_size,
    element_size=CFG.element_size,
)


def blob_site(size=200, n=30, seed=7):
    """Nuclei (ellipses), Cells (expanded, touching) and a granular image."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    nuclei = np.zeros((size, size), np.int32)
    k = 0
    for _ in range(n * 10):
        cy, cx = rng.uniform(8, size - 8, 2)
        a, b = rng.uniform(3, 8, 2)
        m = ((yy - cy) / a) ** 2 + ((xx - cx) / b) ** 2 <= 1
        if ndi.binary_dilation(m, iterations=3)[nuclei > 0].any():
            continue
        k += 1
        nuclei[m] = k
        if k == n:
            break
    cells = expand_labels(nuclei, distance=8).astype(np.int32)
    spots = np.zeros((size, size))
    spots[tuple(rng.integers(0, size, (2, 400)))] = rng.uniform(0.2, 1.0, 400)
    img = ndi.gaussian_filter(spots, 1.5) * 4 + 0.1 * (cells > 0) + 0.05 * ndi.gaussian_filter(
        rng.random((size, size)), 8
    )
    return nuclei, cells, k, np.clip(img, 0, 1)


def test_granularity_matches_cp_measure():
    from cp_measure.core.measuregranularity import get_granularity

    nuclei, cells, n, img = blob_site()
    assert 20 <= n <= 40
    per_obj, _ = measure_granularity(img, "Mito", {"Nuclei": nuclei, "Cells": cells}, {"Nuclei": n, "Cells": n}, **PARAMS)
    rows, failures = [], []
    for obj, labels in (("Nuclei", nuclei), ("Cells", cells)):
        ref = get_granularity(
            labels, img,
            subsample_size=CFG.subsample_size, image_sample_size=CFG.image_sample_size,
            element_size=CFG.element_size, granular_spectrum_length=CFG.spectrum_length,
        )
        for k in range(1, CFG.spectrum_length + 1):
            o, r = per_obj[obj][f"Granularity_{k}_Mito"], ref[f"Granularity_{k}"]
            assert o.shape == (n,) and o.dtype == np.float64
            rel = np.abs(o - r) / np.maximum(np.abs(r), 1e-12)
            pr = 1.0 if np.ptp(r) == 0 and np.ptp(o) == 0 else float(np.corrcoef(o, r)[0, 1])
            med = float(np.median(rel))
            rows.append((f"{obj}_Granularity_{k}_Mito", pr, med, float(np.abs(o - r).max())))
            if not (pr >= 0.99 and med <= 1e-3):
                failures.append(rows[-1][0])
    print(f"\n{'feature':32s} {'pearson':>9s} {'med_rel':>9s} {'max_abs':>9s}")
    for name, pr, med, mx in rows:
        print(f"{name:32s} {pr:9.6f} {med:9.2e} {mx:9.2e}")
    assert not failures, f"granularity off vs cp_measure: {failures}"
    # the spectrum is informative here (not all zeros)
    assert np.abs(per_obj["Cells"]["Granularity_2_Mito"]).max() > 1


def reference_image_spectrum(img, ng, sub, back_sub, radius, labels=None):
    """CellProfiler 4 run_on_image_setting written out with scipy/skimage.

    Returns the image spectrum and, when ``labels`` is given, the object spectra
    ``[ng, N]`` (full-resolution ``map_coordinates`` + ``ndimage.mean`` per step).
    """
    h, w = img.shape
    nh, nw = h * sub, w * sub
    i, j = np.mgrid[0:nh, 0:nw].astype(float) / sub
    pixels = ndi.map_coordinates(img, (i, j), order=1)
    bh, bw = nh * back_sub, nw * back_sub
    i, j = np.mgrid[0:bh, 0:bw].astype(float) / back_sub
    back = ndi.map_coordinates(pixels, (i, j), order=1)
    fp = skimage.morphology.disk(radius, dtype=bool)
    back = skimage.morphology.dilation(skimage.morphology.erosion(back, footprint=fp), footprint=fp)
    i, j = np.mgrid[0:nh, 0:nw].astype(float)
    i *= (bh - 1) / (nh - 1)
    j *= (bw - 1) / (nw - 1)
    pixels = pixels - ndi.map_coordinates(back, (i, j), order=1)
    pixels[pixels < 0] = 0
    start = pixels.mean()
    current, start = start, max(start, np.finfo(float).eps)
    cross = skimage.morphology.disk(1, dtype=bool)
    ero, out, obj_out = pixels.copy(), [], []
    if labels is not None:
        index = np.arange(1, labels.max() + 1)
        obj_current = np.nan_to_num(ndi.mean(img, labels, index))
        obj_start = np.maximum(obj_current, np.finfo(float).eps)
        ui, uj = np.mgrid[0:h, 0:w].astype(float)
        ui *= (nh - 1) / (h - 1)
        uj *= (nw - 1) / (w - 1)
    for _ in range(ng):
        ero = skimage.morphology.erosion(ero, footprint=cross)
        rec = skimage.morphology.reconstruction(ero, pixels, footprint=cross)
        out.append((current - rec.mean()) * 100 / start)
        current = rec.mean()
        if labels is not None:
            new = np.nan_to_num(ndi.mean(ndi.map_coordinates(rec, (ui, uj), order=1), labels, index))
            obj_out.append((obj_current - new) * 100 / obj_start)
            obj_current = new
    if labels is None:
        return np.array(out)
    return np.array(out), np.array(obj_out)


@pytest.mark.parametrize("shape", [(120, 120), (101, 87)])
def test_image_granularity_matches_transcription(shape):
    nuclei, cells, n, img = blob_site(size=120, n=10, seed=2)
    img = img[: shape[0], : shape[1]]
    nuclei = nuclei[: shape[0], : shape[1]]
    nuclei = relabel(nuclei)
    n = int(nuclei.max())
    per_obj, image_level = measure_granularity(img, "DNA", {"Nuclei": nuclei}, {"Nuclei": n}, **PARAMS)
    ref, ref_obj = reference_image_spectrum(
        img, CFG.spectrum_length, CFG.subsample_size, CFG.image_sample_size, CFG.element_size, labels=nuclei
    )
    got = np.array([image_level[f"Granularity_{k}_DNA"] for k in range(1, CFG.spectrum_length + 1)])
    np.testing.assert_allclose(got, ref, rtol=1e-10, atol=1e-12)
    got_obj = np.array([per_obj["Nuclei"][f"Granularity_{k}_DNA"] for k in range(1, CFG.spectrum_length + 1)])
    assert got_obj.shape == (CFG.spectrum_length, n) and n >= 5
    np.testing.assert_allclose(got_obj, ref_obj, rtol=1e-9, atol=1e-9)
    assert all(isinstance(v, float) for v in image_level.values())


@pytest.mark.parametrize("sub, back_sub", [(0.4, 0.5), (0.5, 0.25), (1.0, 0.5)])
def test_other_sampling_factors_match_transcription(sub, back_sub):
    """Subsample factors whose sample positions are not all pixels (0.4: interpolated)
    and those that are (0.5, 0.25: read as strided views) against the transcription."""
    nuclei, _, n, img = blob_site(size=120, n=10, seed=6)
    params = dict(PARAMS, subsample_size=sub, image_sample_size=back_sub)
    per_obj, image_level = measure_granularity(img, "AGP", {"Nuclei": nuclei}, {"Nuclei": n}, **params)
    ref, ref_obj = reference_image_spectrum(
        img, CFG.spectrum_length, sub, back_sub, CFG.element_size, labels=nuclei
    )
    got = np.array([image_level[f"Granularity_{k}_AGP"] for k in range(1, CFG.spectrum_length + 1)])
    np.testing.assert_allclose(got, ref, rtol=1e-10, atol=1e-12)
    got_obj = np.array([per_obj["Nuclei"][f"Granularity_{k}_AGP"] for k in range(1, CFG.spectrum_length + 1)])
    np.testing.assert_allclose(got_obj, ref_obj, rtol=1e-9, atol=1e-9)
    assert np.abs(got).max() > 0.1  # an informative spectrum


def relabel(labels):
    """Labels 1..N for the objects left after cropping."""
    ids = np.unique(labels[labels > 0])
    lut = np.zeros(labels.max() + 1, np.int32)
    lut[ids] = np.arange(1, ids.size + 1)
    return lut[labels]


def test_constant_image_closed_form():
    """Constant image: the background removes everything, so the object spectrum is
    100 % in the first step (the start mean is the raw image) and 0 after. An
    object without pixels is NaN. The image spectrum divides interpolation
    round-off (~1e-17) by itself, as CellProfiler does: compared with the
    transcription, not with 0."""
    labels = np.zeros((80, 80), np.int32)
    labels[10:30, 10:40] = 1
    labels[30:60, 10:40] = 2  # touching label 1
    img = np.full((80, 80), 0.4)
    per_obj, image_level = measure_granularity(img, "ER", {"Cells": labels}, {"Cells": 3}, **PARAMS)
    g = np.array([per_obj["Cells"][f"Granularity_{k}_ER"] for k in range(1, 17)])
    np.testing.assert_allclose(g[0, :2], 100.0)
    np.testing.assert_allclose(g[1:, :2], 0.0, atol=1e-12)
    assert np.isnan(g[:, 2]).all()
    ref = reference_image_spectrum(img, 16, CFG.subsample_size, CFG.image_sample_size, CFG.element_size)
    np.testing.assert_allclose([image_level[f"Granularity_{k}_ER"] for k in range(1, 17)], ref, atol=1e-12)
    assert all(np.isfinite(v) for v in image_level.values())


def test_shared_sampler_and_empty_sets():
    nuclei, cells, n, img = blob_site(size=100, n=8, seed=4)
    a, _ = measure_granularity(img, "RNA", {"Cells": cells}, {"Cells": n}, **PARAMS)
    b, _ = measure_granularity(
        img, "RNA", {"Cells": cells}, {"Cells": n}, samplers={"Cells": object_sampler(cells, n, CFG.subsample_size)}, **PARAMS
    )
    for key in a["Cells"]:
        np.testing.assert_array_equal(a["Cells"][key], b["Cells"][key])
    empty, _ = measure_granularity(img, "RNA", {"Nuclei": np.zeros_like(cells)}, {"Nuclei": 0}, **PARAMS)
    assert all(v.shape == (0,) for v in empty["Nuclei"].values())
    with pytest.raises(ValueError, match="RNA/Cells"):
        measure_granularity(img, "RNA", {"Cells": cells[:-1]}, {"Cells": n}, **PARAMS)


# --- exact building blocks and the GPU path on its CPU twin ---------------------------------

def gpu_twin():
    """The GPU code path (``is_gpu``) on NumPy/SciPy: CuPy and cupyx mirror these namespaces."""
    from hpc_profiler.backend import Backend, cpu_backend

    cpu = cpu_backend()
    return Backend("gpu", cpu.xp, cpu.ndi, cpu.ski)


def test_disk_half_widths_rebuild_skimage_disk():
    from hpc_profiler.features.granularity import disk_half_widths

    for r in range(0, 13):
        w = disk_half_widths(r)
        rebuilt = np.abs(np.arange(-r, r + 1))[None, :] <= w[:, None]
        np.testing.assert_array_equal(rebuilt, skimage.morphology.disk(r, dtype=bool))


@pytest.mark.parametrize("shape", [(270, 270), (31, 17), (5, 40), (1, 1)])
@pytest.mark.parametrize("radius", [1, 3, 10])
def test_disk_filters_equal_skimage_bit_for_bit(shape, radius):
    """The background opening's erosion/dilation by rows equals skimage's 2-D footprint,
    also on images smaller than the footprint (reflect of reflect)."""
    from hpc_profiler.backend import cpu_backend
    from hpc_profiler.features.granularity import _disk_filter

    rng = np.random.default_rng(radius)
    img = rng.random(shape)
    img[: shape[0] // 2] = np.round(img[: shape[0] // 2], 1)  # ties
    fp = skimage.morphology.disk(radius, dtype=bool)
    for op, ref in (("min", skimage.morphology.erosion(img, fp)), ("max", skimage.morphology.dilation(img, fp))):
        got = _disk_filter(img, radius, op, cpu_backend())
        assert got.dtype == ref.dtype and np.array_equal(got, ref), op
        # the GPU path (one footprint filter over a stack) on its CPU twin
        got = _disk_filter(np.stack([img, img[::-1].copy()]), radius, op, gpu_twin())
        assert np.array_equal(got[0], ref), op
        assert np.array_equal(got[1], _disk_filter(img[::-1].copy(), radius, op, cpu_backend())), op


def test_cross_erosion_both_paths_equal_skimage():
    from hpc_profiler.backend import cpu_backend
    from hpc_profiler.features.granularity import CROSS, erode_cross

    rng = np.random.default_rng(1)
    stack = np.round(rng.random((3, 41, 29)), 2)
    for bk in (cpu_backend(), gpu_twin()):
        got = erode_cross(stack, bk)
        for c in range(3):
            np.testing.assert_array_equal(got[c], skimage.morphology.erosion(stack[c], CROSS))
    np.testing.assert_array_equal(erode_cross(stack[0], cpu_backend()), skimage.morphology.erosion(stack[0], CROSS))


def test_spectrum_reconstructions_equal_skimage_fixed_mask():
    """Each stored reconstruction equals skimage's reconstruction of the k-th erosion under the
    background-subtracted image itself (the nested masks and our reconstruction change no bit)."""
    from hpc_profiler.features.granularity import CROSS, background_subtracted, granular_spectrum

    _, _, _, img = blob_site(size=160, n=12, seed=3)
    spec = granular_spectrum(img, **PARAMS)
    pixels, _ = background_subtracted(img)
    assert np.array_equal(spec.pixels, pixels)
    ero = pixels
    for k, rec in enumerate(spec.recs):
        ero = skimage.morphology.erosion(ero, CROSS)
        ref = skimage.morphology.reconstruction(ero, pixels, method="dilation", footprint=CROSS)
        assert np.array_equal(rec, ref), f"scale {k + 1}"


def test_background_of_a_stack_equals_each_image():
    """The GPU path subtracts the background of a site's channels as one stack (also with
    non-integer sampling factors, map_coordinates per image): the same bits as one by one."""
    from hpc_profiler.features.granularity import background_subtracted

    _, _, _, img = blob_site(size=90, n=6, seed=2)
    stack = np.stack([img, img.T.copy(), np.sqrt(img)])
    for sub, back in ((0.5, 0.5), (0.4, 0.7), (1.0, 0.5)):
        kw = dict(subsample_size=sub, image_sample_size=back, element_size=4)
        for bk in (None, gpu_twin()):
            got, length = background_subtracted(stack, backend=bk, **kw)
            for c in range(3):
                ref, ref_len = background_subtracted(stack[c], **kw)
                assert np.array_equal(got[c], ref) and length == ref_len, (sub, back, c)


def test_gpu_path_on_cpu_twin_equals_cpu():
    """The GPU code path (batched channels, iterated reconstruction, one minimum_filter per
    erosion, all scales reconstructed at once under the fixed mask, a bincount per step) run on
    NumPy gives the CPU's numbers for several channels at once, up to the order of summation
    (exact zeros stay exact); its reconstructions are the CPU's bit for bit."""
    from hpc_profiler.features.granularity import measure_granularity_channels

    nuclei, cells, n, img = blob_site(size=120, n=10, seed=5)
    rng = np.random.default_rng(0)
    images = {"DNA": img, "Mito": np.clip(img * rng.uniform(0.5, 1.5, img.shape), 0, 1), "ER": img[::-1].copy()}
    labels = {"Nuclei": nuclei, "Cells": cells}
    counts = {"Nuclei": n, "Cells": n}
    cpu_obj, cpu_img = measure_granularity_channels(images, labels, counts, **PARAMS)
    gpu_obj, gpu_img = measure_granularity_channels(images, labels, counts, backend=gpu_twin(), **PARAMS)
    assert cpu_img.keys() == gpu_img.keys() and len(cpu_img) == 3 * CFG.spectrum_length
    a, b = np.array(list(cpu_img.values())), np.array([gpu_img[k] for k in cpu_img])
    np.testing.assert_array_equal(a == 0, b == 0)
    np.testing.assert_allclose(a, b, rtol=1e-9, atol=0)
    from hpc_profiler.features.granularity import granular_spectra

    cpu_specs = granular_spectra(list(images.values()), **PARAMS)
    gpu_specs = granular_spectra(list(images.values()), backend=gpu_twin(), **PARAMS)
    for cs, gs in zip(cpu_specs, gpu_specs):
        assert all(np.array_equal(x, y) for x, y in zip(cs.recs, gs.recs))
    for o in labels:
        assert cpu_obj[o].keys() == gpu_obj[o].keys()
        for key in cpu_obj[o]:
            a, b = cpu_obj[o][key], gpu_obj[o][key]
            np.testing.assert_array_equal(a == 0, b == 0, err_msg=f"{o} {key}")
            np.testing.assert_allclose(a, b, rtol=1e-9, atol=0, err_msg=f"{o} {key}")
    # and one channel at a time (measure_granularity) gives the same columns
    one, one_img = measure_granularity(images["Mito"], "Mito", labels, counts, **PARAMS)
    for key, v in one["Cells"].items():
        np.testing.assert_array_equal(v, cpu_obj["Cells"][key])
    assert all(cpu_img[k] == v for k, v in one_img.items())
    # the iterated reconstruction with a broadcast mask and doubling blocks, on its own
    from hpc_profiler.morphology import reconstruct_by_iteration

    spec = cpu_specs[0]
    ero, markers = spec.pixels, []
    for _ in range(4):
        ero = skimage.morphology.erosion(ero, skimage.morphology.disk(1))
        markers.append(ero)
    markers = np.stack(markers)
    got = reconstruct_by_iteration(markers, np.broadcast_to(spec.pixels, markers.shape), np, ndi,
                                   check_every=2, max_check_every=8)
    for k in range(4):
        assert np.array_equal(got[k], spec.recs[k])


def test_object_spectrum_does_not_depend_on_summation_order(monkeypatch):
    """The GPU/CPU disagreement of issue 13 (up to 28 % on ~60 columns per compartment):
    CuPy's bincount adds with atomics, in a different order from one call to the next, and the
    spectrum was the difference of two such means. Where a scale changes nothing inside an
    object the CPU gave exactly 0 and the GPU ~1e-13, which a relative comparison floored at
    1e-12 reads as 10-30 %. The loss is now the mean of rec_{k-1} - rec_k: exactly 0 there in
    any order. Simulated here on the GPU path (CPU twin) with the sampler's entries in a new
    order at every call, against the CPU path (one ordered pass)."""
    import hpc_profiler.features.granularity as G

    nuclei, cells, n, img = blob_site(size=200, n=30, seed=7)
    spec = G.granular_spectrum(img, **PARAMS)
    s = object_sampler(cells, n, CFG.subsample_size)
    ref = G.object_spectrum(spec, img, cells, n, s)
    assert np.array_equal(ref, G.object_spectrum(spec, img, cells, n, s), equal_nan=True)  # deterministic
    assert (ref[1:] == 0).any()  # scales that change nothing in some objects
    rng = np.random.default_rng(0)
    ordered = G._object_step_means

    def any_order(sampler, recs, n_objects, xp):
        p = rng.permutation(sampler.obj.size)
        return ordered(G.ObjectSampler(sampler.obj[p], sampler.src[p], sampler.weight[p], sampler.count),
                       recs, n_objects, xp)

    monkeypatch.setattr(G, "_object_step_means", any_order)
    for _ in range(3):
        got = G.object_spectrum(spec, img, cells, n, s, backend=gpu_twin())
        np.testing.assert_array_equal(got == 0, ref == 0)
        rel = np.abs(got - ref) / np.maximum(np.maximum(np.abs(got), np.abs(ref)), 1e-12)
        assert np.nanmax(rel) < 1e-6


def test_cpu_pixel_major_kernels_equal_their_plain_twins():
    """The CPU spectrum's numba kernels against the array code they replace, bit for bit:
    16 cross erosions written pixel-major (wavefront) vs ``erode_cross`` 16 times (also on odd
    and one-row shapes); the per-object step sums from the pixel-major reconstructions vs
    ``_cpu_step_means`` over the k-major steps; the image-level losses vs means of
    ``rec_{k-1} - rec_k``."""
    import hpc_profiler.features.granularity as G
    from hpc_profiler.backend import cpu_backend

    eroded = G._cpu_kernels()[0]
    rng = np.random.default_rng(4)
    for shape in [(1, 1), (1, 9), (9, 1), (2, 3), (31, 17)]:
        img = np.round(rng.random(shape), 2)
        m = np.empty((img.size, 16))
        eroded(img, m)
        ero = img
        for k in range(16):
            ero = G.erode_cross(ero, cpu_backend())
            assert np.array_equal(m[:, k].reshape(shape), ero), (shape, k)
        # the same erosions on the image's int32 codes (ranks), mapped back to values
        from hpc_profiler.morphology import mask_tree

        tree = mask_tree(img)
        assert np.array_equal(tree.values[tree.codes], img) and tree.codes.dtype == np.int32
        codes = np.empty((img.size, 16), np.int32)
        eroded(tree.codes, codes)
        back = np.empty((img.size, 16))
        G._cpu_kernels()[4](tree.values, codes, back)
        assert back.tobytes() == m.tobytes(), shape
    # every object set's per-object sums of every channel in one pass = one bincount each, bit for bit
    labs = rng.integers(0, 7, (3, 500))
    chans = rng.random((2, 500)).astype(np.float32)
    sums = np.zeros((3, 2, 7))
    G._cpu_kernels()[5](labs, chans, sums)
    for s_ in range(3):
        for c in range(2):
            ref = np.bincount(labs[s_], weights=chans[c].astype(np.float64), minlength=7)
            assert sums[s_, c].tobytes() == ref.tobytes()
    nuclei, cells, n, img = blob_site(size=160, n=14, seed=9)
    spec = G.granular_spectrum(img, **PARAMS)
    assert spec.pixel_recs is not None and spec.pixel_recs.shape == (spec.pixels.size, CFG.spectrum_length)
    prev = spec.pixels
    for k, rec in enumerate(spec.recs):
        assert spec.image_values[k] * max(spec.pixels.mean(), np.finfo(float).eps) / 100.0 == pytest.approx(
            (prev - rec).mean(), rel=1e-15, abs=0)
        prev = rec
    for lab in (nuclei, cells):
        s = object_sampler(lab, n, CFG.subsample_size)
        got = G.object_spectrum(spec, img, lab, n, s)
        ref = G.object_spectrum(spec._replace(pixel_recs=None), img, lab, n, s)
        assert got.tobytes() == ref.tobytes()


def test_cpu_sampler_kernel_equals_the_bincount_path():
    """object_sampler's numba pass (CPU) against its one-bincount twin (the GPU path on NumPy,
    off-grid samples weighted 0): the same entries, weights equal up to the order of the
    additions, for touching cells, nuclei, odd sizes and sampling factors whose samples fall
    off the grid."""
    from hpc_profiler.features.granularity import object_sampler

    nuclei, cells, n, _ = blob_site(size=151, n=12, seed=4)
    for lab in (nuclei, cells, cells[:97, :120]):
        m = int(lab.max())
        for sub in (0.5, 0.3, 1.0):
            a = object_sampler(lab, m, sub)
            b = object_sampler(lab, m, sub, backend=gpu_twin())
            for f in ("obj", "src", "count"):
                assert np.array_equal(getattr(a, f), getattr(b, f)), (sub, f)
            np.testing.assert_allclose(b.weight, a.weight, rtol=1e-14, atol=0)
    empty = object_sampler(np.zeros((20, 20), np.int32), 3, 0.5)
    assert empty.obj.size == 0 and np.array_equal(empty.count, np.zeros(3))


def test_label_above_n_objects_names_the_object_set():
    from hpc_profiler.features.granularity import measure_granularity_channels

    nuclei, cells, n, img = blob_site(size=60, n=4, seed=1)
    with pytest.raises(ValueError, match=rf"granularity DNA/Cells: label {n} exceeds n_objects={n - 1}"):
        measure_granularity_channels({"DNA": img}, {"Nuclei": np.minimum(nuclei, n - 1), "Cells": cells},
                                     {"Nuclei": n - 1, "Cells": n - 1}, **PARAMS)


def test_cpu_bilinear_kernel_equals_map_coordinates():
    """The background's upsampling on the CPU (numba, separable) against
    ``scipy.ndimage.map_coordinates(order=1)`` at the same coordinates, bit for bit:
    granularity's scales, odd sizes, ties, samples on the last row and column."""
    from scipy import ndimage as sndi

    import hpc_profiler.features.granularity as G

    rng = np.random.default_rng(21)
    for h, w, H, W in [(270, 270, 540, 540), (135, 151, 270, 303), (7, 9, 13, 17), (2, 2, 5, 3), (1, 4, 1, 9)]:
        img = rng.random((h, w)) * rng.integers(0, 3, (h, w))
        yc = np.arange(H, dtype=np.float64) * ((h - 1) / max(H - 1, 1))
        xc = np.arange(W, dtype=np.float64) * ((w - 1) / max(W - 1, 1))
        ref = sndi.map_coordinates(img, np.stack(np.meshgrid(yc, xc, indexing="ij")), order=1)
        out = np.empty((H, W))
        G._cpu_kernels()[6](img, yc, xc, out)
        assert out.tobytes() == ref.tobytes(), (h, w, H, W)
