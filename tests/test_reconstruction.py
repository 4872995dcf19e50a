"""hpc_profiler.morphology against skimage.morphology.reconstruction, bit for bit."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage as sndi
import skimage.morphology

from hpc_profiler.backend import cpu_backend
from hpc_profiler.morphology import reconstruct_by_dilation, reconstruct_by_iteration

CROSS = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], bool)
SQUARE = np.ones((3, 3), bool)
FOOTPRINT = {1: CROSS, 2: SQUARE}


def skimage_rec(seed, mask, connectivity):
    return skimage.morphology.reconstruction(seed, mask, method="dilation", footprint=FOOTPRINT[connectivity])


def assert_bits_equal(got, ref):
    """Same dtype, shape and bytes (NaN-free inputs here: -0.0 vs 0.0 would count)."""
    assert got.dtype == ref.dtype
    assert got.shape == ref.shape
    assert got.tobytes() == ref.tobytes(), f"{int((got != ref).sum())} pixels differ"


def both(seed, mask, connectivity):
    """Hybrid and iterated reconstructions, each checked against scikit-image."""
    ref = skimage_rec(seed, mask, connectivity)
    assert_bits_equal(reconstruct_by_dilation(seed, mask, connectivity), ref)
    bk = cpu_backend()
    assert_bits_equal(reconstruct_by_iteration(seed, mask, bk.xp, bk.ndi, connectivity, check_every=3), ref)
    return ref


def marker_below(mask, rng, kind):
    if kind == "erosion":
        return sndi.grey_erosion(mask, footprint=CROSS, mode="nearest")
    if kind == "minus":
        return mask - rng.uniform(0, 0.5, mask.shape).astype(mask.dtype)
    if kind == "points":  # a few seeds on a floor at the mask's minimum
        seed = np.full_like(mask, mask.min())
        idx = rng.integers(0, mask.size, max(1, mask.size // 500))
        seed.flat[idx] = mask.flat[idx]
        return seed
    raise ValueError(kind)


def _corridor(n: int) -> np.ndarray:
    """An n x n serpentine corridor (every other row open, joined at alternating ends),
    rising slightly along the raster order: the longest geodesic path an image can hold."""
    mask = np.zeros((n, n))
    mask[::2] = 1.0
    for r in range(1, n, 2):
        mask[r, n - 1 if r % 4 == 1 else 0] = 1.0
    mask += np.linspace(0, 1e-3, n * n).reshape(n, n) * (mask > 0)
    return mask


@pytest.mark.parametrize("connectivity", [1, 2])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kind", ["erosion", "minus", "points"])
def test_random_images(connectivity, dtype, kind):
    rng = np.random.default_rng(hash((connectivity, kind)) % 2**32)
    for shape in [(37, 53), (64, 64), (3, 90)]:
        mask = rng.random(shape).astype(dtype)
        seed = marker_below(mask, rng, kind)
        ref = both(seed, mask, connectivity)
        assert (ref >= seed).all() and (ref <= mask).all()
        assert not np.array_equal(ref, seed) or kind == "erosion"


@pytest.mark.parametrize("connectivity", [1, 2])
def test_plateaus_ties_and_constant_regions(connectivity):
    rng = np.random.default_rng(3)
    # few grey levels: large plateaus and many ties between seed and mask
    mask = rng.integers(0, 4, (60, 70)).astype(np.float64)
    mask = sndi.median_filter(mask, 5)
    mask[10:30, 20:50] = 2.0  # a constant region
    seed = np.minimum(mask, rng.integers(0, 4, mask.shape).astype(np.float64))
    both(seed, mask, connectivity)
    # constant image, seed == mask, seed at the floor, zero and negative values
    const = np.full((20, 30), 0.25)
    both(const, const, connectivity)
    both(np.zeros_like(const), const, connectivity)
    both(mask.copy(), mask, connectivity)  # marker == mask: unchanged
    signed = mask - 2.0
    both(np.minimum(signed, -1.5), signed, connectivity)


@pytest.mark.parametrize("connectivity", [1, 2])
def test_degenerate_shapes(connectivity):
    rng = np.random.default_rng(5)
    for shape in [(1, 1), (1, 40), (40, 1), (2, 2)]:
        mask = rng.random(shape)
        seed = np.where(rng.random(shape) < 0.2, mask, 0.0)
        both(seed, mask, connectivity)


def test_serpentine_long_path():
    """A 1-pixel-wide serpentine corridor: the value travels through every corridor
    pixel from one end (worst case of the FIFO and of the iterated algorithm)."""
    n = 41
    mask = _corridor(n)  # no two corridor values tie
    seed = np.zeros_like(mask)
    seed[0, 0] = mask.max()
    seed = np.minimum(seed, mask)
    ref = both(seed, mask, 1)
    assert np.array_equal(ref > 0, mask > 0)  # it reached the far end
    bk = cpu_backend()
    steps = 0
    cur = seed
    while True:
        nxt = np.minimum(sndi.maximum_filter(cur, footprint=CROSS, mode="nearest"), mask)
        if np.array_equal(nxt, cur):
            break
        cur, steps = nxt, steps + 1
    assert steps > n * n // 2  # the iterated path really needed many blocks of steps
    assert_bits_equal(reconstruct_by_iteration(seed, mask, bk.xp, bk.ndi, check_every=64), ref)


def test_stack_is_independent_images():
    rng = np.random.default_rng(9)
    mask = rng.random((3, 30, 40))
    seed = sndi.grey_erosion(mask, footprint=CROSS[None], mode="nearest")
    got = reconstruct_by_dilation(seed, mask)
    bk = cpu_backend()
    it = reconstruct_by_iteration(seed, mask, bk.xp, bk.ndi, check_every=16)
    for k in range(3):
        ref = skimage_rec(seed[k], mask[k], 1)
        assert_bits_equal(got[k], ref)
        assert_bits_equal(it[k], ref)


def test_cell_painting_sites_and_nested_masks():
    """Granularity's sequence on synthetic CPJUMP1 channels: marker = k-th cross erosion,
    mask = the previous reconstruction (equal to the fixed mask, as granularity uses)."""
    from hpc_profiler.synth import synthesize_site

    site = synthesize_site(4, size=216, n_cells=25)
    bk = cpu_backend()
    for ch in ("DNA", "Mito", "AGP"):
        img = site.images[ch].astype(np.float32) / np.float32(65535)
        pixels = img[::2, ::2].astype(np.float64)
        ero, mask = pixels, pixels
        for _ in range(6):
            ero = skimage.morphology.erosion(ero, footprint=CROSS)
            ref = skimage_rec(ero, pixels, 1)
            got = reconstruct_by_dilation(ero, mask)
            assert_bits_equal(got, ref)
            assert_bits_equal(reconstruct_by_iteration(ero, mask, bk.xp, bk.ndi), ref)
            mask = got
        # the raw float32 16-bit image itself: many exact ties
        seed = np.minimum(img, np.float32(0.01))
        both(seed, img, 1)


def test_errors():
    with pytest.raises(ValueError, match="less than"):
        reconstruct_by_dilation(np.ones((3, 3)), np.zeros((3, 3)))
    with pytest.raises(ValueError, match="shape"):
        reconstruct_by_dilation(np.zeros((3, 3)), np.zeros((3, 4)))
    with pytest.raises(ValueError, match="connectivity"):
        reconstruct_by_dilation(np.zeros((3, 3)), np.zeros((3, 3)), connectivity=3)
    with pytest.raises(ValueError, match="2-D"):
        reconstruct_by_dilation(np.zeros(3), np.zeros(3))


def test_jit_without_a_cache_location_still_compiles():
    """Code whose file numba cannot cache (here: no file at all) is compiled per process
    instead of failing at import."""
    from hpc_profiler.morphology import njit_cached

    namespace = {}
    exec("def twice(a):\n    return 2 * a\n", namespace)
    fn = njit_cached(namespace["twice"])
    assert fn(21) == 42


# ----------------------------------------------------------------- max-tree: one mask, many markers
def tree_vs_skimage(seeds, mask, connectivity):
    from hpc_profiler.morphology import reconstruct_markers

    got = reconstruct_markers(seeds, mask, connectivity)
    for k in range(seeds.shape[0]):
        assert_bits_equal(got[k], skimage_rec(seeds[k], mask, connectivity))
    return got


@pytest.mark.parametrize("connectivity", [1, 2])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_max_tree_reconstruction_equals_skimage(connectivity, dtype):
    """Several markers on one max-tree of the mask, each equal to scikit-image bit for bit:
    random masks, plateaus with ties, a constant image, degenerate shapes, 20 markers (> one block)."""
    rng = np.random.default_rng(11 + connectivity)
    for shape in [(1, 1), (1, 40), (40, 1), (2, 2), (37, 53), (64, 64)]:
        for mask in (rng.random(shape), np.round(rng.random(shape) * 3), np.full(shape, 0.25)):
            mask = mask.astype(dtype)
            seeds = np.stack([marker_below(mask, rng, kind) for kind in ("erosion", "minus", "points")]
                             + [mask.copy(), np.full_like(mask, mask.min())])
            tree_vs_skimage(seeds, mask, connectivity)
    mask = sndi.median_filter(rng.integers(0, 5, (48, 50)).astype(np.float64), 3)
    seeds = np.stack([np.minimum(mask, rng.integers(0, 5, mask.shape)) for _ in range(20)])
    tree_vs_skimage(seeds, mask, connectivity)
    signed = mask - 2.0
    tree_vs_skimage(np.minimum(signed, -1.5)[None], signed, connectivity)


def test_max_tree_serpentine_and_cell_painting_markers():
    """The long corridor, and granularity's 16 cross erosions of a synthetic Cell Painting channel."""
    from hpc_profiler.synth import synthesize_site

    mask = _corridor(41)
    seed = np.zeros_like(mask)
    seed[0, 0] = mask.max()
    seed = np.minimum(seed, mask)
    assert np.array_equal(tree_vs_skimage(seed[None], mask, 1)[0] > 0, mask > 0)
    img = synthesize_site(4, size=216, n_cells=25).images["Mito"].astype(np.float32) / np.float32(65535)
    pixels = img[::2, ::2].astype(np.float64)
    eros, ero = [], pixels
    for _ in range(16):
        ero = skimage.morphology.erosion(ero, footprint=CROSS)
        eros.append(ero)
    tree_vs_skimage(np.stack(eros), pixels, 1)


def test_max_tree_errors_and_nan_fallback():
    from hpc_profiler.morphology import reconstruct_markers

    with pytest.raises(ValueError, match="less than"):
        reconstruct_markers(np.ones((1, 3, 3)), np.zeros((3, 3)))
    with pytest.raises(ValueError, match=r"\[K, H, W\]"):
        reconstruct_markers(np.zeros((3, 3)), np.zeros((3, 3)))
    with pytest.raises(ValueError, match="connectivity"):
        reconstruct_markers(np.zeros((1, 3, 3)), np.zeros((3, 3)), connectivity=0)
    mask = np.random.default_rng(2).random((20, 30))
    mask[5, 7] = np.nan  # no value order: the hybrid algorithm per marker, as before
    seed = np.where(np.isnan(mask), np.nan, mask * 0.5)[None]
    got = reconstruct_markers(seed, mask)
    ref = reconstruct_by_dilation(seed, mask[None])
    assert np.array_equal(got, ref, equal_nan=True)


def test_iteration_drops_stable_images_from_the_batch():
    """Images of one stack converge after very different step counts (a serpentine corridor,
    a noise image, a marker equal to its mask): the iterated reconstruction goes on with the
    images still changing only, and every image equals scikit-image's, whatever the blocks."""
    n = 21
    corridor = _corridor(n)
    seed0 = np.zeros_like(corridor)
    seed0[0, 0] = corridor[0, 0]
    rng = np.random.default_rng(8)
    noise = rng.random((n, n))
    masks = np.stack([corridor, noise, noise, corridor])
    seeds = np.stack([seed0, marker_below(noise, rng, "erosion"), noise.copy(), seed0 * 0.5])
    bk = cpu_backend()
    for every, most in ((1, 1), (2, 4), (3, 64)):
        got = reconstruct_by_iteration(seeds, masks, bk.xp, bk.ndi, 1, check_every=every, max_check_every=most)
        for k in range(4):
            assert_bits_equal(got[k], skimage_rec(seeds[k], masks[k], 1))
    # one mask broadcast over several markers (granularity's GPU call)
    markers = np.stack([seed0, seed0 * 0.3])[:, None]  # [2, 1, n, n]
    got = reconstruct_by_iteration(markers, np.broadcast_to(corridor, markers.shape), bk.xp, bk.ndi, 1,
                                   check_every=4)
    for k in range(2):
        assert_bits_equal(got[k, 0], skimage_rec(markers[k, 0], corridor, 1))
