"""RadialDistribution features (hpc_profiler.features.radial) against cp_measure and by hand."""
from __future__ import annotations

import numpy as np
import pytest

from hpc_profiler.config import RadialConfig
from hpc_profiler.features._objects import object_pixels
from hpc_profiler.features.radial import measure_radial_distribution, radial_geometry
from test_features_shape import compare_table, make_site, single_masks

CFG = RadialConfig()  # the CPJUMP1 settings: 4 scaled bins, max radius 100


def _cp_measure_radial(labels, n, image, ch, cfg):
    rd = pytest.importorskip("cp_measure.core.measureobjectintensitydistribution")
    rows = [rd.get_radial_distribution(m, image, scaled=cfg.scaled, bin_count=cfg.bins,
                                       maximum_radius=cfg.max_radius)
            for m in single_masks(labels, n)]
    out = {}
    for key in rows[0]:
        parts = key.split("_")  # RadialDistribution_FracAtD_1of4
        out[f"{parts[0]}_{parts[1]}_{ch}_{parts[2]}"] = np.array([float(r[key][0]) for r in rows])
    return out


def _thin_walks(lo: int, hi: int):
    """12 one-pixel-wide 8-connected random walks of 120 steps on 160 x 160, kept in rows and
    columns ``lo..hi`` (the first object keeps a pixel where walks cross); labels and count."""
    rng = np.random.default_rng(7)
    labels = np.zeros((160, 160), np.int32)
    for k in range(1, 13):
        y, x = rng.integers(20, 140, 2)
        for _ in range(120):
            labels[y, x] = labels[y, x] or k
            y = int(np.clip(y + rng.integers(-1, 2), lo, hi))
            x = int(np.clip(x + rng.integers(-1, 2), lo, hi))
    return labels, int(labels.max())


def test_radial_matches_cp_measure():
    labels, n, images = make_site(seed=0)
    geo = radial_geometry(labels, n, bins=CFG.bins, scaled=CFG.scaled, max_radius=CFG.max_radius)
    failed = []
    for ch in ("DNA", "AGP"):
        ours = measure_radial_distribution(labels, n, images[ch], ch, bins=CFG.bins, scaled=CFG.scaled,
                                           max_radius=CFG.max_radius, geometry=geo)
        ref = _cp_measure_radial(labels, n, images[ch], ch, CFG)
        assert set(ref) == set(ours)
        failed += compare_table(ours, ref, f"RadialDistribution {ch} vs cp_measure ({n} objects)")
    assert not failed, f"features outside the contract: {failed}"


def test_radial_unscaled_with_overflow_matches_cp_measure():
    cfg = RadialConfig(bins=3, scaled=False, max_radius=6)
    labels, n, images = make_site(seed=3, size=120, n_ellipses=12)
    ours = measure_radial_distribution(labels, n, images["RNA"], "RNA", bins=cfg.bins, scaled=False,
                                       max_radius=cfg.max_radius)
    ref = _cp_measure_radial(labels, n, images["RNA"], "RNA", cfg)
    assert set(ref) == set(ours) and any(k.endswith("Overflow") for k in ours)
    assert not compare_table(ours, ref, "RadialDistribution unscaled vs cp_measure")


def test_object_touching_image_edge_and_touching_neighbours():
    # two touching squares, the first against the image edge: image edge is not background
    labels = np.zeros((20, 30), np.int32)
    labels[0:9, 0:9] = 1
    labels[0:9, 9:18] = 2
    # float32, as CellProfiler's images: both sides then sum in float32 (coo_matrix)
    img = np.random.default_rng(0).random(labels.shape).astype(np.float32)
    geo = radial_geometry(labels, 2)
    # object 1: farthest from background/other labels is on the top row (edge not background)
    assert geo.center_y[0] == 0
    ours = measure_radial_distribution(labels, 2, img, "X")
    ref = _cp_measure_radial(labels, 2, img, "X", CFG)
    for k in ref:
        np.testing.assert_allclose(ours[k], ref[k], rtol=1e-12, err_msg=k)


def test_uniform_disk_hand_checked():
    # uniform intensity: FracAtD equals the pixel fraction of each ring, MeanFrac = 1, CV = 0
    yy, xx = np.mgrid[0:41, 0:41]
    disk = (np.hypot(yy - 20, xx - 20) <= 15).astype(np.int32)
    out = measure_radial_distribution(disk, 1, np.full(disk.shape, 0.5), "X")
    fr = np.array([out[f"RadialDistribution_FracAtD_X_{i}of4"][0] for i in range(1, 5)])
    assert fr.sum() == pytest.approx(1.0)
    assert np.all(np.diff(fr) > 0)  # outer rings hold more pixels
    for i in range(1, 5):
        # FracAtD is a float32 quotient, as CellProfiler's: MeanFrac is 1 to float32 rounding
        assert out[f"RadialDistribution_MeanFrac_X_{i}of4"][0] == pytest.approx(1.0, abs=2e-7)
        assert out[f"RadialDistribution_RadialCV_X_{i}of4"][0] == pytest.approx(0.0, abs=1e-12)


def test_sums_are_cellprofilers_float32_raster_order():
    """CellProfiler's recipe (MeasureObjectIntensityDistribution.do_measurements) on
    our bins and wedges, written with scipy.sparse.coo_matrix as CellProfiler does:
    FracAtD equal to the last bit, MeanFrac and RadialCV to float64 rounding."""
    from scipy.sparse import coo_matrix

    labels, n, images = make_site(seed=0)
    img = np.asarray(images["DNA"], dtype=np.float32)
    geo = radial_geometry(labels, n)
    ours = measure_radial_distribution(labels, n, img, "DNA", geometry=geo)
    nb = geo.bins + 1
    flat = geo.op.flat[geo.good]
    bin_img = np.full(labels.size, -1, np.int64)
    bin_img[flat] = geo.bin[geo.good]
    wedge_img = np.zeros(labels.size, np.int64)
    wedge_img[flat] = geo.wedge[geo.good]
    good = bin_img >= 0  # CellProfiler's good_mask; boolean indexing = raster order
    lab, b, w = labels.ravel()[good] - 1, bin_img[good], wedge_img[good]
    v = img.ravel()[good]
    hist = coo_matrix((v, (lab, b)), (n, nb)).toarray()
    assert hist.dtype == np.float32
    frac = hist / np.dstack([np.sum(hist, 1)] * nb)[0]
    count = coo_matrix((np.ones(v.size), (lab, b)), (n, nb)).toarray()
    mean_frac = frac / (count / count.sum(1, keepdims=True) + np.finfo(float).eps)
    for i in range(geo.bins):
        sfx = f"DNA_{i + 1}of{geo.bins}"
        np.testing.assert_array_equal(ours[f"RadialDistribution_FracAtD_{sfx}"], frac[:, i].astype(np.float64))
        np.testing.assert_allclose(ours[f"RadialDistribution_MeanFrac_{sfx}"], mean_frac[:, i], rtol=1e-13)
        sel = b == i
        radial_values = coo_matrix((v[sel], (lab[sel], w[sel])), (n, 8)).toarray()
        pixel_count = coo_matrix((np.ones(int(sel.sum())), (lab[sel], w[sel])), (n, 8)).toarray()
        means = np.ma.masked_array(radial_values / pixel_count, pixel_count == 0)
        cv = np.asarray(np.std(means, 1) / np.mean(means, 1))
        cv[np.sum(pixel_count > 0, 1) == 0] = 0
        np.testing.assert_allclose(ours[f"RadialDistribution_RadialCV_{sfx}"], cv, rtol=1e-12, atol=1e-15)
    # a float64 sum (what the family did before) is not CellProfiler's
    hist64 = np.bincount(lab * nb + b, weights=v.astype(np.float64), minlength=n * nb).reshape(n, nb)
    assert ((hist64 / hist64.sum(1, keepdims=True))[:, : geo.bins] != frac[:, : geo.bins]).any()


def test_empty_object_nan_and_names(repo_root):
    labels, n, images = make_site(seed=6, size=96, n_ellipses=6)
    out = measure_radial_distribution(labels, n + 1, images["ER"], "ER")
    for k, v in out.items():
        assert v.shape == (n + 1,) and np.isnan(v[-1]), k
        assert np.isfinite(v[:-1]).all() or "RadialCV" not in k
    ref = repo_root.parent / "shared" / "data" / "cellprofiler_reference" / "Cells_columns.txt"
    if ref.exists():
        cols = {c for c in ref.read_text().split() if c.startswith("RadialDistribution_") and c.endswith(
            ("_ER_1of4", "_ER_2of4", "_ER_3of4", "_ER_4of4"))}
        assert cols == set(out)


def test_geodesic_distance_matches_skimage_mcp_on_nonconvex_objects():
    # a U shape and a ring touching it: paths must go around, never across objects
    from skimage.graph import MCP_Geometric

    from hpc_profiler.features._objects import pack_objects
    from hpc_profiler.features.radial import geodesic_from_seeds

    lab = np.zeros((40, 50), np.int32)
    lab[5:35, 5:12] = 1
    lab[5:35, 25:32] = 1
    lab[28:35, 5:32] = 1
    yy, xx = np.mgrid[0:40, 0:50]
    r = np.hypot(yy - 15, xx - 40)
    lab[(r >= 3) & (r <= 8)] = 2
    op = object_pixels(lab, 2)
    packed = pack_objects(op, pad=1)
    seeds = np.array([0, op.starts[1]])  # first raster pixel of each object
    d = geodesic_from_seeds(packed, op.flat.size, seeds)
    for i in range(2):
        costs = np.where(lab == i + 1, 1.0, np.inf)
        s = op.flat[seeds[i]]
        cum, _ = MCP_Geometric(costs).find_costs([(s // lab.shape[1], s % lab.shape[1])])
        mine = d[op.obj == i]
        ref = cum.ravel()[op.flat[op.obj == i]]
        np.testing.assert_allclose(mine, ref, rtol=1e-12)
    assert np.isfinite(d).all()


@pytest.mark.parametrize("obj", ["Cells", "Cytoplasm"])
def test_radial_matches_cp_measure_on_synthetic_cells(obj):
    from test_features_shape import synth_objects

    objects, images = synth_objects()
    lab = objects[obj]
    n = int(lab.max())
    ours = measure_radial_distribution(lab, n, images["Mito"], "Mito", bins=CFG.bins, scaled=CFG.scaled,
                                       max_radius=CFG.max_radius)
    ref = _cp_measure_radial(lab, n, images["Mito"], "Mito", CFG)
    assert not compare_table(ours, ref, f"RadialDistribution {obj} (synthetic site) vs cp_measure")


def test_edt_at_equals_scipy_distance_map():
    """Distances read from the feature transform equal SciPy's distance map exactly."""
    from scipy import ndimage as ndi

    from hpc_profiler.features._objects import edt_at

    rng = np.random.default_rng(5)
    mask = ndi.binary_opening(rng.random((90, 110)) > 0.3)
    ys, xs = np.nonzero(mask)
    np.testing.assert_array_equal(edt_at(mask, ys, xs), ndi.distance_transform_edt(mask)[ys, xs])


def test_gpu_path_on_cpu_twin_close_to_cpu(monkeypatch):
    """The GPU branch (float64 sums rounded to float32 once, see the module docstring),
    run on NumPy: within the CPU vs GPU parity bound of the raster-order float32 sums."""
    import hpc_profiler.features.radial as R
    from hpc_profiler.backend import Backend, cpu_backend

    labels, n, images = make_site(seed=2)
    img = np.asarray(images["Mito"], dtype=np.float32)
    cpu = measure_radial_distribution(labels, n, img, "Mito")
    twin = Backend("gpu", cpu_backend().xp, cpu_backend().ndi, cpu_backend().ski)
    monkeypatch.setattr(R, "backend_of", lambda *a: twin)
    gpu = measure_radial_distribution(labels, n, img, "Mito")
    d = np.concatenate([np.abs(gpu[k] - cpu[k]) / np.maximum(np.abs(cpu[k]), 1e-30) for k in cpu])
    d = d[np.isfinite(d)]
    assert np.median(d) <= 1e-5 and d.max() <= 1e-3, (np.median(d), d.max())
    assert d.max() > 0  # the two summations differ somewhere: the branch ran


def test_float32_sums_kernel_equals_numpy_add_at():
    """The numba loop accumulates as ``numpy.add.at`` on float32 (in order, unbuffered) and
    as scipy's ``coo_matrix(...).toarray()``; not as a float64 sum rounded once."""
    from scipy.sparse import coo_matrix

    from hpc_profiler.backend import cpu_backend
    from hpc_profiler.features.radial import float32_sums

    rng = np.random.default_rng(4)
    keys = rng.integers(0, 7, 20000)
    vals = rng.random(20000).astype(np.float32)
    got = float32_sums(cpu_backend(), keys, vals, 9)
    ref = np.zeros(9, np.float32)
    np.add.at(ref, keys, vals)
    np.testing.assert_array_equal(got, ref)
    coo = coo_matrix((vals, (keys, np.zeros_like(keys))), (9, 1)).toarray()[:, 0]
    np.testing.assert_array_equal(got, coo)
    assert (got != np.bincount(keys, weights=vals.astype(np.float64), minlength=9).astype(np.float32)).any()


def test_geodesic_cpu_loop_equals_the_device_rounds():
    """The CPU's numba label-correcting loop and the device path's Bellman-Ford rounds
    (run on NumPy through the GPU code path) give the same distances to the bit."""
    from hpc_profiler.backend import Backend, cpu_backend
    from hpc_profiler.features._objects import segment_argmax
    from hpc_profiler.features.radial import edge_distances, geodesic_from_seeds

    cpu = cpu_backend()
    twin = Backend("gpu", cpu.xp, cpu.ndi, cpu.ski)
    for seed in (0, 3):
        labels, n, _ = make_site(seed=seed)
        op = object_pixels(labels, n)
        packed, d_edge = edge_distances(op)
        idx, ok = segment_argmax(d_edge, op.obj, n)
        a = geodesic_from_seeds(packed, op.flat.shape[0], idx[ok])
        b = geodesic_from_seeds(packed, op.flat.shape[0], idx[ok], backend=twin)
        np.testing.assert_array_equal(a, b)
        assert np.isinf(a).any() and np.isfinite(a).sum() > 1000  # a split object's far piece stays inf


def test_geodesic_device_two_step_paths_on_thin_objects():
    """One-pixel-wide 8-connected walks: most two-step paths have one of their two
    intermediate pixels outside the object, so a two-step offer summed in the wrong
    order would show up as a last-bit difference from the CPU loop."""
    from hpc_profiler.backend import Backend, cpu_backend
    from hpc_profiler.features._objects import pack_objects
    from hpc_profiler.features.radial import geodesic_from_seeds

    labels, n = _thin_walks(1, 158)
    op = object_pixels(labels, n)
    packed = pack_objects(op, pad=1, image_edge_is_background=False)
    seeds = op.starts[op.counts > 0] + op.counts[op.counts > 0] // 2  # a middle pixel of each object
    cpu = cpu_backend()
    twin = Backend("gpu", cpu.xp, cpu.ndi, cpu.ski)
    a = geodesic_from_seeds(packed, op.flat.shape[0], seeds)
    b = geodesic_from_seeds(packed, op.flat.shape[0], seeds, backend=twin)
    np.testing.assert_array_equal(a, b)
    assert np.isfinite(a).sum() > 500 and a[np.isfinite(a)].max() > 20


def _edge_cases_labels():
    """Objects against every image edge and corner, one spanning the full height, a split
    object, thin 8-connected walks, touching neighbours."""
    rng = np.random.default_rng(11)
    labels = np.zeros((90, 120), np.int32)
    labels[0:12, 0:15] = 1            # top-left corner
    labels[0:10, 15:40] = 2           # top edge, touching 1
    labels[80:90, 100:120] = 3        # bottom-right corner
    labels[:, 60:64] = 4              # full height: no background above or below
    labels[40:52, 0:9] = 5            # left edge
    labels[30:45, 112:120] = 6        # right edge
    labels[20:30, 20:30] = 7          # split object: two pieces
    labels[33:37, 33:37] = 7
    yy, xx = np.mgrid[0:90, 0:120]
    labels[(np.hypot(yy - 60, xx - 35) <= 12) & (np.hypot(yy - 60, xx - 35) >= 6)] = 8  # ring
    for k in (9, 10):
        y, x = rng.integers(20, 70, 2) + [0, 50]
        for _ in range(80):
            if labels[y, x] == 0:
                labels[y, x] = k
            y = int(np.clip(y + rng.integers(-1, 2), 0, 89))
            x = int(np.clip(x + rng.integers(-1, 2), 66, 110))
    return labels, int(labels.max())


@pytest.mark.parametrize("case", ["site0", "site3", "edges"])
def test_cpu_geometry_equals_packed_canvas_path_to_the_bit(case):
    """The CPU's per-object numba pass (its own EDT, argmax, geodesic, bins, wedges) against
    the packed canvas + SciPy transform + label-correcting path (``edges=`` given), and its
    edge distances against SciPy's transform of each object alone in the whole image
    (CellProfiler's ``distance_to_edge``: the image edge is not background)."""
    from scipy import ndimage as ndi

    import hpc_profiler.features.radial as R

    if case == "edges":
        labels, n = _edge_cases_labels()
        img = np.random.default_rng(1).random(labels.shape).astype(np.float32)
    else:
        labels, n, images = make_site(seed=int(case[-1]))
        img = np.asarray(images["RNA"], dtype=np.float32)
    for bins, scaled in ((4, True), (3, False)):
        op = object_pixels(labels, n)
        fast = radial_geometry(labels, n, bins=bins, scaled=scaled, max_radius=7, objects=op)
        slow = radial_geometry(labels, n, bins=bins, scaled=scaled, max_radius=7, objects=op,
                               edges=R.edge_distances(op))
        for attr in ("good", "bin", "wedge", "center_y", "center_x"):
            np.testing.assert_array_equal(getattr(fast, attr), getattr(slow, attr), err_msg=attr)
        a = measure_radial_distribution(labels, n, img, "X", bins=bins, scaled=scaled, max_radius=7, geometry=fast)
        b = measure_radial_distribution(labels, n, img, "X", bins=bins, scaled=scaled, max_radius=7, geometry=slow)
        for k in b:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert (~fast.good).any()  # a split object's far piece is left out
    # the kernel's edge distances = SciPy's transform of each object alone, image edge not background
    d_edge, d_center = np.empty(op.flat.shape[0]), np.empty(op.flat.shape[0])
    seed = np.empty(n, np.int64)
    good, bin_, wedge = (np.empty(op.flat.shape[0], t) for t in (np.bool_, np.int64, np.int64))
    R._geometry_objects_jit(op.y, op.x, op.starts, op.counts, labels.shape[0],
                            labels.shape[1], R._STEP_LENGTHS, 4, True, 100.0, d_edge, d_center, seed,
                            good, bin_, wedge, op.flat, *(np.empty(op.flat.shape[0], np.int64) for _ in range(3)),
                            np.zeros(n * 5 * 8, np.int64))
    ref = np.empty_like(d_edge)
    for i in range(n):
        sl = slice(op.starts[i], op.starts[i] + op.counts[i])
        ref[sl] = ndi.distance_transform_edt(labels == i + 1)[op.y[sl], op.x[sl]]
    np.testing.assert_array_equal(d_edge, ref)


def test_all_channels_at_once_equal_channel_by_channel_to_the_bit():
    """measure_radial_channels (one numba pass for the channels' sums, array expressions over a
    channel axis) against measure_radial_distribution channel by channel: the same bits, also
    for channels of mixed dtypes (float32 and float64 images)."""
    from hpc_profiler.features.radial import measure_radial_channels

    labels, n, images = make_site(seed=4)
    imgs = {c: (np.asarray(images[c], np.float32) if i % 2 else np.asarray(images[c], np.float64))
            for i, c in enumerate(("DNA", "ER", "Mito"))}
    geo = radial_geometry(labels, n)
    together = measure_radial_channels(labels, n, imgs, geometry=geo)
    alone = {}
    for c, im in imgs.items():
        alone.update(measure_radial_distribution(labels, n, im, c, geometry=geo))
    assert list(together) == list(alone) and len(together) == 3 * 3 * 4
    for k in alone:
        np.testing.assert_array_equal(together[k], alone[k], err_msg=k)


def test_gpu_path_all_channels_on_cpu_twin_close_to_cpu(monkeypatch):
    """The device branch of measure_radial_channels (one gather of all channels, scatter-adds of
    known length) run on NumPy: within the parity bound of the CPU's float32 sums, every channel."""
    import hpc_profiler.features.radial as R
    from hpc_profiler.backend import Backend, cpu_backend

    labels, n, images = make_site(seed=2)
    imgs = {c: np.asarray(images[c], dtype=np.float64) for c in ("DNA", "AGP", "Mito")}
    cpu = R.measure_radial_channels(labels, n, imgs)
    twin = Backend("gpu", cpu_backend().xp, cpu_backend().ndi, cpu_backend().ski)
    monkeypatch.setattr(R, "backend_of", lambda *a: twin)
    gpu = R.measure_radial_channels(labels, n, imgs)
    assert list(gpu) == list(cpu)
    for c in imgs:
        keys = [k for k in cpu if f"_{c}_" in k]
        d = np.concatenate([np.abs(gpu[k] - cpu[k]) / np.maximum(np.abs(cpu[k]), 1e-30) for k in keys])
        d = d[np.isfinite(d)]
        assert np.median(d) <= 1e-5 and d.max() <= 1e-3, (c, np.median(d), d.max())
        assert d.max() > 0  # the device sums (float64, rounded once) differ somewhere: the branch ran


def _serpentine_labels():
    """A serpentine (shortest paths many times its box's extent: the device rounds need
    several chunks) beside a disk and a ring."""
    labels = np.zeros((70, 110), np.int32)
    for r in range(0, 41, 2):  # bars on even rows, joined at alternate ends
        labels[5 + r, 5:46] = 1
        if r < 40:
            labels[6 + r, 45 if (r // 2) % 2 == 0 else 5] = 1
    yy, xx = np.mgrid[0:70, 0:110]
    labels[np.hypot(yy - 20, xx - 75) <= 12] = 2
    labels[(np.hypot(yy - 52, xx - 80) <= 14) & (np.hypot(yy - 52, xx - 80) >= 7)] = 3
    return labels, 3


@pytest.mark.parametrize("case", ["site0", "site3", "edges", "thin", "serpentine"])
def test_device_geometry_on_cpu_twin_equals_cpu_to_the_bit(case, monkeypatch):
    """The device geometry (row of tiles + one transform, scatter-max seeds, Jacobi rounds
    pulling 1- and 2-step path sums in image coordinates), run on NumPy: the same edge
    distances' bins, seeds, reached pixels and wedges as the CPU's numba pass, and the same
    features through the device sums (within the parity bound of the float32 sums)."""
    import hpc_profiler.features.radial as R
    from hpc_profiler.backend import Backend, cpu_backend

    rounds = []
    if case == "edges":
        labels, n = _edge_cases_labels()
    elif case == "serpentine":
        labels, n = _serpentine_labels()
        pull_rounds = R._pull_rounds
        monkeypatch.setattr(R, "_pull_rounds", lambda *a: (rounds.append(a[-1]), pull_rounds(*a))[1])
    elif case == "thin":  # one-pixel-wide 8-connected walks: two-step paths through the background
        labels, n = _thin_walks(0, 159)
    else:
        labels, n, _ = make_site(seed=int(case[-1]))
    img = np.random.default_rng(3).random(labels.shape)
    twin = Backend("gpu", cpu_backend().xp, cpu_backend().ndi, cpu_backend().ski)
    for bins, scaled in ((4, True), (3, False)):
        cpu = radial_geometry(labels, n, bins=bins, scaled=scaled, max_radius=7)
        cpu_cols = R.measure_radial_channels(labels, n, {"X": img}, bins=bins, scaled=scaled, max_radius=7,
                                             geometry=cpu)
        with monkeypatch.context() as m:
            m.setattr(R, "backend_of", lambda *a: twin)
            dev = radial_geometry(labels, n + 1, bins=bins, scaled=scaled, max_radius=7)  # + an empty object
            dev_cols = R.measure_radial_channels(labels, n + 1, {"X": img}, bins=bins, scaled=scaled,
                                                 max_radius=7, geometry=dev)
        for attr in ("good", "bin", "wedge"):
            np.testing.assert_array_equal(getattr(dev, attr), getattr(cpu, attr), err_msg=attr)
        for attr in ("center_y", "center_x"):
            np.testing.assert_array_equal(getattr(dev, attr)[:n], getattr(cpu, attr), err_msg=attr)
            assert np.isnan(getattr(dev, attr)[n])
        d = np.concatenate([np.abs(dev_cols[k][:n] - v) / np.maximum(np.abs(v), 1e-30) for k, v in cpu_cols.items()])
        assert np.array_equal(np.isnan(d), np.concatenate([np.isnan(v) for v in cpu_cols.values()]))
        d = d[np.isfinite(d)]
        assert np.median(d) <= 1e-5 and d.max() <= 1e-3, (np.median(d), d.max())  # the parity bound
        for k, v in cpu_cols.items():
            if "RadialCV" in k:
                assert dev_cols[k][n] == 0 or np.isnan(dev_cols[k][n])
            else:
                assert np.isnan(dev_cols[k][n])
    if case == "serpentine":  # the shortest paths outgrew the first chunk of rounds
        assert len(rounds) > 2 * 2, rounds
