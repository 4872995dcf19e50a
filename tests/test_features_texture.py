"""Texture (MeasureTexture / Haralick) against cp_measure, mahotas and closed forms."""
from __future__ import annotations

import mahotas
import numpy as np
import pytest
import scipy.ndimage as ndi
import skimage.exposure
import skimage.util

from hpc_profiler.config import TextureConfig
from hpc_profiler.features import texture as tx
from hpc_profiler.features.texture import (
    HARALICK_FEATURES,
    measure_image_texture,
    measure_texture,
    quantize,
    texture_geometry,
)

CFG = TextureConfig()
SCALES = tuple(CFG.scales)
LEVELS = CFG.gray_levels


def ellipse_site(size=160, n=30, seed=3):
    """Deterministic ellipses (some touching, some tiny) and a textured image."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    labels = np.zeros((size, size), np.int32)
    k = 0
    for _ in range(n * 4):
        cy, cx = rng.uniform(6, size - 6, 2)
        a, b = rng.uniform(2.5, 15, 2)
        th = rng.uniform(0, np.pi)
        y, x = yy - cy, xx - cx
        u = (x * np.cos(th) + y * np.sin(th)) / a
        v = (-x * np.sin(th) + y * np.cos(th)) / b
        m = (u * u + v * v) <= 1
        if (labels[m] > 0).mean() > 0.25:  # allow overlap -> touching objects
            continue
        k += 1
        labels[m & (labels == 0)] = k
        if k == n:
            break
    labels = relabel(labels)
    tex = ndi.gaussian_filter(rng.random((size, size)), 1.2)
    tex = (tex - tex.min()) / (tex.max() - tex.min())
    img = 0.02 + 0.45 * tex * (labels > 0) + 0.05 * rng.random((size, size))
    return labels, int(labels.max()), np.clip(img, 0, 1)


def relabel(labels):
    """Labels 1..N in order of first appearance (drops objects fully overwritten)."""
    ids = np.unique(labels[labels > 0])
    lut = np.zeros(labels.max() + 1, np.int32)
    lut[ids] = np.arange(1, ids.size + 1)
    return lut[labels]


def cp_measure_per_object(labels, n, img, scale):
    """cp_measure 0.3.0 get_texture, one object mask at a time."""
    from cp_measure.core.measuretexture import get_texture

    out = {}
    for i in range(1, n + 1):
        res = get_texture((labels == i).astype(np.int32), img, scale=scale, gray_levels=LEVELS)
        for key, val in res.items():
            out.setdefault(key, []).append(float(val[0]))
    return {k: np.array(v) for k, v in out.items()}


def test_texture_matches_cp_measure_per_object():
    labels, n, img = ellipse_site()
    assert 20 <= n <= 40
    ours = measure_texture(labels, n, img, "RNA", scales=SCALES, gray_levels=LEVELS)
    assert len(ours) == 13 * 4 * len(SCALES)
    rows, failures = [], []
    for s in SCALES:
        ref = cp_measure_per_object(labels, n, img, s)
        for key, r in ref.items():
            feat, rest = key.split("_", 1)
            name = f"Texture_{feat}_RNA_{rest}"
            o = ours[name]
            assert o.shape == (n,) and o.dtype == np.float64
            np.testing.assert_array_equal(np.isnan(o), np.isnan(r), err_msg=f"NaN pattern of {name}")
            ok = np.isfinite(r)
            rel = np.abs(o[ok] - r[ok]) / np.maximum(np.abs(r[ok]), 1e-12)
            med = float(np.median(rel))
            const = np.ptp(r[ok]) == 0
            pr = 1.0 if const else float(np.corrcoef(o[ok], r[ok])[0, 1])
            rows.append((name, ok.sum(), pr, med))
            if not (pr >= 0.99 and med <= 1e-3):
                failures.append(name)
    print(f"\n{'feature':48s} {'n':>3s} {'pearson':>9s} {'med_rel':>9s}")
    for name, cnt, pr, med in rows:
        print(f"{name:48s} {cnt:3d} {pr:9.6f} {med:9.2e}")
    assert not failures, f"texture features off vs cp_measure: {failures}"
    # small objects: scale 10 leaves some undefined, and they must be NaN here too
    assert np.isnan(ours[f"Texture_Contrast_RNA_10_00_{LEVELS}"]).any()


@pytest.mark.parametrize("scale", [3, 10])
def test_image_texture_matches_mahotas(scale):
    labels, _, img = ellipse_site(size=120, seed=5)
    ours = measure_image_texture(img, "ER", scales=(scale,), gray_levels=LEVELS)
    ref = mahotas.features.haralick(skimage.util.img_as_ubyte(img), distance=scale)  # run_image's call
    got = np.array([[ours[f"Texture_{f}_ER_{scale}_{d:02d}_{LEVELS}"] for f in HARALICK_FEATURES] for d in range(4)])
    np.testing.assert_allclose(got, ref, rtol=1e-9, atol=1e-12)


def test_quantize_matches_skimage_and_rescale():
    rng = np.random.default_rng(0)
    for dtype in (np.float64, np.float32):
        img = rng.random((50, 40)).astype(dtype)
        img[0, :4] = [0.0, 1.0, 0.5 / 255, 1.5 / 255]  # rounding edges
        np.testing.assert_array_equal(quantize(img, 256), skimage.util.img_as_ubyte(img))
        ref8 = skimage.exposure.rescale_intensity(
            skimage.util.img_as_ubyte(img), in_range=(0, 255), out_range=(0, 7)
        ).astype(np.uint8)
        np.testing.assert_array_equal(quantize(img, 8), ref8)
    with pytest.raises(TypeError):
        quantize(np.zeros((3, 3), np.uint16))


def stripes(h, w, a, b):
    """Vertical stripes alternating the gray levels a and b column by column."""
    img = np.where(np.arange(w)[None, :] % 2 == 0, a, b) * np.ones((h, 1))
    return img / 255.0


@pytest.mark.parametrize("scale", [3, 5, 10])
def test_stripes_closed_form(scale):
    """Two-level stripes: GLCM is {(a,b): 1/2} or {(a,a),(b,b): 1/2 each}."""
    a, b = 40, 200
    img = stripes(40, 40, a, b)
    labels = np.zeros(img.shape, np.int32)
    labels[3:37, 2:38] = 1
    got = measure_texture(labels, 1, img, "AGP", scales=(scale,), gray_levels=256)

    def feat(name, d):
        return got[f"Texture_{name}_AGP_{scale}_{d:02d}_256"][0]

    mixed_dirs = [0, 1, 3] if scale % 2 else []  # odd column shift -> pairs (a, b)
    for d in range(4):
        mixed = d in mixed_dirs
        assert feat("AngularSecondMoment", d) == pytest.approx(0.5)
        assert feat("Entropy", d) == pytest.approx(1.0)
        assert feat("Contrast", d) == pytest.approx((a - b) ** 2 if mixed else 0.0)
        assert feat("Correlation", d) == pytest.approx(-1.0 if mixed else 1.0)
        assert feat("Variance", d) == pytest.approx(((a - b) / 2) ** 2)
        assert feat("SumAverage", d) == pytest.approx(a + b)
        assert feat("InverseDifferenceMoment", d) == pytest.approx(1 / ((a - b) ** 2 + 1) if mixed else 1.0)
        assert feat("DifferenceEntropy", d) == pytest.approx(0.0)
        # P(|i-j|) is a single 1 in a vector of length max level + 1 = b + 1
        fm1 = b + 1
        assert feat("DifferenceVariance", d) == pytest.approx(np.var(np.eye(fm1)[0]))
    # the whole image (mahotas with zeros kept) sees the same stripes
    img_feats = measure_image_texture(img, "AGP", scales=(scale,), gray_levels=256)
    ref = mahotas.features.haralick(skimage.util.img_as_ubyte(img), distance=scale)
    got_img = [img_feats[f"Texture_{f}_AGP_{scale}_00_256"] for f in HARALICK_FEATURES]
    np.testing.assert_allclose(got_img, ref[0], rtol=1e-9, atol=1e-12)


def test_objects_with_zero_levels_match_mahotas():
    """Dark holes (level 0) inside objects: their pairs are ignored (``ignore_zeros``),
    compared object by object with mahotas on CellProfiler's intensity-image crop."""
    labels, n, img = ellipse_site(size=120, n=16, seed=9)
    rng = np.random.default_rng(1)
    img = img * 0.6
    img[rng.random(img.shape) < 0.15] = 0.0  # ~15 % of the pixels quantize to 0
    got = measure_texture(labels, n, img, "Mito", scales=(3,), gray_levels=LEVELS)
    q = skimage.util.img_as_ubyte(img)
    checked = 0
    for i, sl in enumerate(ndi.find_objects(labels)):
        crop = np.where(labels[sl] == i + 1, q[sl], 0)
        ours = np.array([[got[f"Texture_{f}_Mito_3_{d:02d}_{LEVELS}"][i] for f in HARALICK_FEATURES]
                         for d in range(4)])
        try:
            ref = mahotas.features.haralick(crop, distance=3, ignore_zeros=True)
        except ValueError:  # a direction without a valid pair: NaN here
            assert np.isnan(ours).all()
            continue
        np.testing.assert_allclose(ours, ref, rtol=1e-7, atol=1e-10, err_msg=f"object {i + 1}")
        checked += 1
    assert checked >= n - 3 and (q[labels > 0] == 0).mean() > 0.1


def test_constant_and_degenerate_objects():
    """Constant object: defined values (mahotas' conventions); no valid pair: NaN."""
    img = np.full((60, 60), 0.3)
    img[40:, :] = 0.0  # a region quantized to 0 (background for mahotas)
    labels = np.zeros((60, 60), np.int32)
    labels[5:25, 5:25] = 1  # constant, nonzero
    labels[45:55, 5:25] = 2  # all pixels at level 0 -> no valid pair
    labels[5:8, 40:43] = 3  # 3x3: too small for scale 3 or 5
    # label 4 has no pixels (empty compartment)
    got = measure_texture(labels, 4, img, "DNA", scales=(3, 5), gray_levels=256)
    q = skimage.util.img_as_ubyte(img)
    ref = mahotas.features.haralick(np.where(labels == 1, q, 0)[5:25, 5:25], distance=3, ignore_zeros=True)
    ours1 = np.array([[got[f"Texture_{f}_DNA_3_{d:02d}_256"][0] for f in HARALICK_FEATURES] for d in range(4)])
    np.testing.assert_allclose(ours1, ref, rtol=1e-9, atol=1e-12)
    assert ours1[0, 0] == 1.0 and ours1[0, 1] == 0.0 and ours1[0, 2] == 1.0  # ASM, Contrast, Correlation
    for f in HARALICK_FEATURES:
        for s in (3, 5):
            vals = got[f"Texture_{f}_DNA_{s}_00_256"]
            assert np.isfinite(vals[0])
            assert np.isnan(vals[1:]).all(), (f, s, vals)
    with pytest.raises(ValueError):
        mahotas.features.haralick(np.where(labels == 2, q, 0)[45:55, 5:25], distance=3, ignore_zeros=True)
    # constant images at the image level are defined too (zeros are kept there)
    for value in (0.0, 0.3):
        res = measure_image_texture(np.full((30, 30), value), "DNA", scales=(3,), gray_levels=256)
        ref = mahotas.features.haralick(skimage.util.img_as_ubyte(np.full((30, 30), value)), distance=3)
        got_img = [res[f"Texture_{f}_DNA_3_02_256"] for f in HARALICK_FEATURES]
        np.testing.assert_allclose(got_img, ref[2], rtol=1e-9, atol=1e-12)
    # no objects at all
    empty = measure_texture(np.zeros((20, 20), np.int32), 0, np.zeros((20, 20)), "DNA", scales=(3,))
    assert len(empty) == 52 and all(v.shape == (0,) for v in empty.values())


def test_device_paths_agree(monkeypatch):
    """GPU code paths on NumPy: the row-sorted default, the batched pass, the per-offset pass (by name
    and given a pair geometry; its bincount and its sort counting) and the CPU numba path give the
    same numbers."""
    labels, n, img = ellipse_site(size=100, n=20, seed=11)
    base = measure_texture(labels, n, img, "Mito", scales=(3, 5), gray_levels=256)
    kw = dict(scales=(3, 5), gray_levels=256)
    rows = device_twin(labels, n, {"Mito": img}, **kw)
    batched = device_twin(labels, n, {"Mito": img}, device_path="batched", **kw)
    offsets = device_twin(labels, n, {"Mito": img}, device_path="offsets", **kw)
    geom = texture_geometry(labels, (3, 5))
    shared = device_twin(labels, n, {"Mito": img}, geometry=geom, **kw)
    monkeypatch.setattr(tx, "BINCOUNT_BUDGET", 1)  # force xp.unique counting
    sorted_path = device_twin(labels, n, {"Mito": img}, geometry=geom, **kw)
    assert tx.DEVICE_PATHS[0] == "rows"
    for key in base:
        for other in (rows, batched, offsets, shared, sorted_path):
            np.testing.assert_allclose(other[key], base[key], rtol=1e-9, atol=1e-13, equal_nan=True, err_msg=key)
    with pytest.raises(ValueError, match="device_path"):
        tx.measure_texture_channels(labels, n, {"Mito": img}, scales=(3,), device_path="sorted")


def test_default_device_path_has_one_data_sized_step():
    """The default GPU path, counted on the audit backend: no device->host copy and one implicit sync
    (the compaction of the distinct GLCM entries) per object set, however many objects."""
    from hpc_profiler._audit import AuditCounter, audit_backend
    from hpc_profiler.features._objects import object_pixels

    labels, n, img = ellipse_site(size=100, n=20, seed=11)
    counter = AuditCounter()
    bk = audit_backend(counter)
    lab, images = bk.asarray(labels), {"DNA": bk.asarray(img), "ER": bk.asarray(img[::-1].copy())}
    levels, objects = tx.texture_levels(images, 256), object_pixels(lab, n)
    with counter.section("texture"):
        got = tx.measure_texture_channels(lab, n, images, scales=SCALES, levels=levels, objects=objects)
    c = counter.sections["texture"]
    assert len(got) == 2 * 13 * 4 * len(SCALES)
    assert c.d2h == 0 and c.syncs == 1, c


def test_kernels_at_the_image_edges():
    """Objects and images narrower than twice the largest offset (the kernels' bounds-tested edge
    pixels): an object filling the whole image and the image itself against mahotas."""
    rng = np.random.default_rng(8)
    img = rng.random((14, 9)) * 0.2
    img[rng.random(img.shape) < 0.2] = 0.0
    labels = np.ones(img.shape, np.int32)
    q = skimage.util.img_as_ubyte(img)
    got = measure_texture(labels, 1, img, "AGP", scales=(3, 5), gray_levels=256)
    whole = measure_image_texture(img, "AGP", scales=(3, 5), gray_levels=256)
    for s in (3, 5):
        ref = mahotas.features.haralick(q, distance=s, ignore_zeros=True)
        ours = np.array([[got[f"Texture_{f}_AGP_{s}_{d:02d}_256"][0] for f in HARALICK_FEATURES] for d in range(4)])
        np.testing.assert_allclose(ours, ref, rtol=1e-9, atol=1e-12)
        ref = mahotas.features.haralick(q, distance=s)
        ours = np.array([[whole[f"Texture_{f}_AGP_{s}_{d:02d}_256"] for f in HARALICK_FEATURES] for d in range(4)])
        np.testing.assert_allclose(ours, ref, rtol=1e-9, atol=1e-12)
    # no pair at all in a direction: NaN (the whole image: that direction only)
    tiny = measure_image_texture(img[:4, :4], "AGP", scales=(5,), gray_levels=256)
    assert all(np.isnan(tiny[f"Texture_{f}_AGP_5_{d:02d}_256"]) for f in HARALICK_FEATURES for d in range(4))


def test_errors_name_the_channel():
    with pytest.raises(ValueError, match="DNA"):
        measure_texture(np.zeros((5, 5), np.int32), 0, np.zeros((6, 5)), "DNA")
    labels = np.zeros((8, 8), np.int32)
    labels[1:4, 1:4] = 3
    with pytest.raises(ValueError, match="exceeds"):
        measure_texture(labels, 2, np.zeros((8, 8)), "DNA")


def exact_moment_features(q, direction, scale):
    """Correlation, Variance and SumVariance of mahotas' symmetric GLCM (``ignore_zeros``) as Fractions."""
    from fractions import Fraction

    cm = mahotas.features.texture.cooccurence(q, direction, distance=scale, symmetric=True).astype(np.int64)
    cm[0, :] = 0
    cm[:, 0] = 0
    total = int(cm.sum())
    p = {(int(a), int(b)): Fraction(int(cm[a, b]), total) for a, b in zip(*np.nonzero(cm))}
    ux = sum(a * v for (a, _), v in p.items())
    vx = sum((a - ux) ** 2 * v for (a, _), v in p.items())
    cov = sum((a - ux) * (b - ux) * v for (a, b), v in p.items())
    sa = sum((a + b) * v for (a, b), v in p.items())
    sv = sum((a + b - sa) ** 2 * v for (a, b), v in p.items())
    return {"Correlation": cov / vx if vx else Fraction(1), "Variance": vx, "SumVariance": sv}


def exact_info_measures(q, direction, scale):
    """InfoMeas1/2 of mahotas' GLCM (``ignore_zeros``) in 50-digit decimal arithmetic."""
    from decimal import Decimal, localcontext

    cm = mahotas.features.texture.cooccurence(q, direction, distance=scale, symmetric=True).astype(np.int64)
    cm[0, :] = 0
    cm[:, 0] = 0
    with localcontext() as ctx:
        ctx.prec = 50
        total = Decimal(int(cm.sum()))
        ln2 = Decimal(2).ln()
        px = [Decimal(int(v)) / total for v in cm.sum(axis=1)]
        hxy = -sum(Decimal(int(v)) / total * (Decimal(int(v)) / total).ln() for v in cm.ravel() if v) / ln2
        hx = -sum(p * p.ln() for p in px if p) / ln2
        return {"InfoMeas1": float((hxy - 2 * hx) / hx),
                "InfoMeas2": float((1 - (-2 * (2 * hx - hxy)).exp()).sqrt())}  # bits in exp, as mahotas


def device_twin(labels, n, images, **kw):
    """measure_texture_channels on the GPU code path, run on NumPy by the counting backend."""
    from hpc_profiler._audit import audit_backend
    from hpc_profiler.backend import to_numpy

    bk = audit_backend()
    got = tx.measure_texture_channels(bk.asarray(labels), n, {c: bk.asarray(v) for c, v in images.items()}, **kw)
    return {k: np.asarray(to_numpy(v)) for k, v in got.items()}


@pytest.mark.parametrize("seed", [2, 17, 40])
def test_moments_exact_on_low_contrast_objects(seed):
    """Covariance near 0 beside a mean of ~231 levels: mahotas' ``sum(ij p) - mu^2`` (the form used
    before, and on the GPU summed in atomics' order) lost ~1e-9 relative here and up to 1 % on the
    bench site's cytoplasm; the integer moments give the exact value, on the CPU and the device twin."""
    rng = np.random.default_rng(seed)
    q = (230 + rng.integers(0, 3, (24, 24))).astype(np.uint8)
    labels = np.ones(q.shape, np.int32)
    img = q / 255.0
    cpu = measure_texture(labels, 1, img, "ER", scales=SCALES, gray_levels=256)
    dev = device_twin(labels, 1, {"ER": img}, scales=SCALES, gray_levels=256)
    smallest = 1.0
    for s in SCALES:
        for d in range(4):
            for feat, ref in exact_moment_features(q, d, s).items():
                key = f"Texture_{feat}_ER_{s}_{d:02d}_256"
                for got in (cpu[key][0], dev[key][0]):
                    assert abs(got - float(ref)) <= 1e-15 * abs(float(ref)), (key, got, float(ref))
            smallest = min(smallest, abs(float(exact_moment_features(q, d, s)["Correlation"])))
            # InfoMeas: HXY - 2 HX cancels on such objects; the mutual information form keeps the digits
            for feat, ref in exact_info_measures(q, d, s).items():
                key = f"Texture_{feat}_ER_{s}_{d:02d}_256"
                for got in (cpu[key][0], dev[key][0]):
                    assert abs(got - ref) <= 1e-11 * abs(ref), (key, got, ref)
    assert smallest < 5e-3  # the cancellation case is there: a correlation near 0


def test_numba_path_equals_device_twin():
    """The CPU (numba) path and the GPU code path (run on NumPy) on objects with dark holes, two channels
    sharing the levels, and the whole-image texture."""
    labels, n, img = ellipse_site(size=120, n=16, seed=9)
    rng = np.random.default_rng(4)
    holes = img * 0.6
    holes[rng.random(img.shape) < 0.1] = 0.0
    images = {"DNA": img, "Mito": holes}
    levels = tx.texture_levels(images, 256)
    cpu = tx.measure_texture_channels(labels, n, images, scales=SCALES, levels=levels)
    dev = device_twin(labels, n, images, scales=SCALES)
    assert set(cpu) == set(dev) and len(cpu) == 2 * 13 * 4 * len(SCALES)
    for key in cpu:
        np.testing.assert_array_equal(np.isnan(cpu[key]), np.isnan(dev[key]), err_msg=key)
        np.testing.assert_allclose(cpu[key], dev[key], rtol=1e-9, atol=1e-13, equal_nan=True, err_msg=key)
    from hpc_profiler._audit import audit_backend
    from hpc_profiler.backend import to_numpy

    img_cpu = tx.image_texture_channels(images, scales=SCALES, levels=levels)
    bk = audit_backend()
    for c in images:
        ref = tx.image_texture_values(bk.asarray(images[c]), c, scales=SCALES)
        assert len(ref) == 13 * 4 * len(SCALES)
        for key, v in ref.items():
            assert img_cpu[key] == pytest.approx(float(to_numpy(v)), rel=1e-9, abs=1e-13), key


def test_grouped_sums_match_bincount_with_and_without_reduceat():
    """The segmented per-object sums of the default GPU path (empty objects first, in the middle and
    last) equal bincount's; so does the cumsum fallback for backends without ``ufunc.reduceat``."""
    import types

    rng = np.random.default_rng(3)
    n = 9
    sizes = np.array([0, 3, 1, 0, 0, 5, 2, 0, 0])
    obj = np.repeat(np.arange(n), sizes)
    ws = [rng.integers(0, 50, obj.size).astype(float), rng.random(obj.size)]
    ids = np.arange(n)
    first = np.searchsorted(obj, ids, side="left")
    filled = np.searchsorted(obj, ids, side="right") > first
    no_reduceat = types.SimpleNamespace(**{k: getattr(np, k) for k in
                                           ("stack", "asarray", "float64", "concatenate", "zeros", "cumsum",
                                            "full", "where", "maximum")})
    no_reduceat.add = types.SimpleNamespace()  # np.add without reduceat
    for xp in (np, no_reduceat):
        got = tx._grouped_sums(ws, first, filled, xp)
        for g, w in zip(got, ws):
            np.testing.assert_allclose(g, np.bincount(obj, weights=w, minlength=n), rtol=1e-13, atol=0)
        np.testing.assert_array_equal(got[0], np.bincount(obj, weights=ws[0], minlength=n))  # integers: exact
