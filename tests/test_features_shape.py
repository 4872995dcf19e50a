"""AreaShape features (hpc_profiler.features.shape) against cp_measure and hand-made cases."""
from __future__ import annotations

import numpy as np
import pytest




# ----------------------------------------------------------------- test data
def make_site(seed: int = 0, size: int = 200, n_ellipses: int = 34):
    """Deterministic label image and 5-channel textured image for feature tests.

    Ellipses of random size/orientation are painted in order (a later one
    overwrites an earlier one), which gives touching and non-convex objects;
    one annulus (a hole: Euler number 0) and one object in two pieces are added.
    Labels are relabelled to ``1..N`` with every label present.

    Returns ``(labels int32 HxW, n_objects, images dict channel -> float HxW in [0, 1])``.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    lab = np.zeros((size, size), np.int32)
    k = 0
    for _ in range(n_ellipses):
        cy, cx = rng.uniform(12, size - 12, 2)
        a, b = rng.uniform(4, 16), rng.uniform(3, 10)
        t = rng.uniform(0, np.pi)
        u = (yy - cy) * np.cos(t) + (xx - cx) * np.sin(t)
        v = -(yy - cy) * np.sin(t) + (xx - cx) * np.cos(t)
        k += 1
        lab[(u / a) ** 2 + (v / b) ** 2 <= 1] = k
    # an annulus (hole) and a two-piece object, in a cleared corner
    lab[size - 40:, :40] = 0
    r = np.hypot(yy - (size - 20), xx - 20)
    k += 1
    lab[(r >= 6) & (r <= 14)] = k
    k += 1
    lab[size - 38:size - 33, 2:6] = k
    lab[size - 8:size - 3, 30:37] = k
    _, inv = np.unique(lab, return_inverse=True)
    lab = inv.reshape(lab.shape).astype(np.int32)
    n = int(lab.max())
    images = {}
    for ci, ch in enumerate(["DNA", "ER", "RNA", "AGP", "Mito"]):
        field = rng.normal(size=(size // 8 + 2, size // 8 + 2))
        field = np.kron(field, np.ones((8, 8)))[:size, :size]
        from scipy import ndimage as ndi

        field = ndi.gaussian_filter(field, 3 + ci)
        grad = 0.3 * np.sin(yy / (7 + ci)) * np.cos(xx / (5 + 2 * ci))
        img = 0.4 + 0.5 * field + grad + 0.05 * rng.normal(size=(size, size))
        img = (img - img.min()) / (img.max() - img.min())
        images[ch] = np.round(img * 65535) / 65535.0
    return lab, n, images


def single_masks(labels, n):
    """One binary (0/1 int32) mask per object, for cp_measure's one-mask-at-a-time API."""
    return [(labels == i + 1).astype(np.int32) for i in range(n)]


def compare_table(ours: dict, ref: dict, title: str, r_min=0.99, rel_max=1e-3, exempt=()):
    """Print per-feature agreement; return the features failing the contract.

    Contract: Pearson r across objects >= ``r_min`` and median relative
    difference <= ``rel_max``. A constant feature (e.g. Euler number 1 for
    all) is judged by the relative difference alone.
    """
    rows, failed = [], []
    for name in sorted(set(ours) & set(ref)):
        a = np.asarray(ours[name], float)
        b = np.asarray(ref[name], float)
        ok = np.isfinite(a) & np.isfinite(b)
        assert np.array_equal(np.isfinite(a), np.isfinite(b)) or name in exempt, (
            f"{title}: {name}: NaN pattern differs: ours {np.flatnonzero(~np.isfinite(a))} "
            f"ref {np.flatnonzero(~np.isfinite(b))}"
        )
        a, b = a[ok], b[ok]
        rel = np.abs(a - b) / np.maximum(np.maximum(np.abs(a), np.abs(b)), 1e-12)
        med = float(np.median(rel)) if rel.size else 0.0
        if np.std(a) > 0 and np.std(b) > 0:
            r = float(np.corrcoef(a, b)[0, 1])
        else:
            r = 1.0 if np.allclose(a, b, rtol=rel_max, atol=1e-12) else 0.0
        good = r >= r_min and med <= rel_max
        rows.append(f"{name:45s} r={r:9.6f} med_rel={med:9.2e} max_rel={rel.max() if rel.size else 0:9.2e} "
                    f"{'ok' if good else ('EXEMPT' if name in exempt else 'FAIL')}")
        if not good and name not in exempt:
            failed.append(name)
    print(f"\n== {title}: {len(rows)} features compared")
    print("\n".join(rows))
    return failed


# ----------------------------------------------------------------- tests
def _shape():
    from hpc_profiler.features.shape import measure_areashape

    return measure_areashape


def cp_measure_areashape(labels, n, degree=9):
    """cp_measure's sizeshape + zernike + feret, one object at a time, AreaShape_ names."""
    ss = pytest.importorskip("cp_measure.core.measureobjectsizeshape")
    rows = []
    for m in single_masks(labels, n):
        r = {}
        r.update(ss.get_sizeshape(m, None, calculate_advanced=False, new_features=False))
        r.update(ss.get_zernike(m, None, zernike_numbers=degree))
        r.update(ss.get_feret(m, None))
        rows.append(r)
    return {f"AreaShape_{k}": np.array([float(np.ravel(r[k])[0]) for r in rows]) for k in rows[0]}


def check_areashape_against_cp_measure(labels, n, title):
    """Contract check of every column, Zernike included.

    The pixels that define an object's minimum enclosing circle lie on it;
    ``rho^2 <= 1`` keeps or drops them by the last bit of the centre/radius
    arithmetic, so the circle must be centrosome's to the last bit (same start
    vertex, angles and formulas; ``hpc_profiler.features.shape``). Zernike_0_0
    (``included pixels / (pi r^2)``) would show a pixel kept by one side only.
    """
    ours = _shape()(labels, n, zernike_degree=9)
    ref = cp_measure_areashape(labels, n, degree=9)
    missing = sorted(set(ref) - set(ours))
    assert not missing, f"cp_measure columns we do not produce: {missing}"
    z0o, z0r = ours["AreaShape_Zernike_0_0"], ref["AreaShape_Zernike_0_0"]
    split = ~np.isclose(z0o, z0r, rtol=1e-12, atol=0)
    assert not split.any(), f"{title}: objects {np.nonzero(split)[0] + 1} keep other pixels on the circle"
    failed = compare_table(ours, ref, title)
    assert not failed, f"features outside the contract: {failed}"


def test_areashape_matches_cp_measure():
    labels, n, _ = make_site(seed=0)
    check_areashape_against_cp_measure(labels, n, f"AreaShape vs cp_measure ({n} objects)")


def test_disk_hand_checked():
    r = 20
    yy, xx = np.mgrid[0:61, 0:61]
    disk = ((yy - 30) ** 2 + (xx - 30) ** 2 <= r * r).astype(np.int32)
    out = {k: float(v[0]) for k, v in _shape()(disk, 1).items()}
    assert out["AreaShape_Area"] == disk.sum()
    assert out["AreaShape_Area"] == pytest.approx(np.pi * r * r, rel=0.01)
    # regionprops' perimeter (CellProfiler 4) over-estimates a digital circle by ~5%
    from skimage.measure import perimeter

    assert out["AreaShape_Perimeter"] == pytest.approx(perimeter(disk, 4), rel=1e-12)
    assert out["AreaShape_Perimeter"] == pytest.approx(2 * np.pi * r, rel=0.06)
    assert out["AreaShape_FormFactor"] == pytest.approx(1.0, abs=0.1)
    assert out["AreaShape_Eccentricity"] == pytest.approx(0.0, abs=0.02)
    assert out["AreaShape_MaxFeretDiameter"] == pytest.approx(2 * r, abs=0.01)
    assert out["AreaShape_MinFeretDiameter"] == pytest.approx(2 * r, rel=0.02)
    # the centre's nearest outside pixel is (1, 20) away: 1 + 400 > r^2
    assert out["AreaShape_MaximumRadius"] == pytest.approx(np.sqrt(401), rel=1e-12)
    assert out["AreaShape_EulerNumber"] == 1
    assert out["AreaShape_Center_X"] == 30 and out["Location_Center_Y"] == 30
    # Zernike_0_0 = (pixels inside the enclosing circle) / (pi R^2); R = 20 here
    assert out["AreaShape_Zernike_0_0"] == pytest.approx(disk.sum() / (np.pi * r * r), rel=1e-9)
    # odd m vanish on a centred disk by symmetry
    assert out["AreaShape_Zernike_1_1"] == pytest.approx(0.0, abs=1e-12)
    # convex_hull_image keeps pixel centres on the hull of the pixel diamonds: a bit > area
    from skimage.measure import regionprops

    assert out["AreaShape_Solidity"] == pytest.approx(regionprops(disk)[0].solidity, rel=1e-12)
    assert 0.95 < out["AreaShape_Solidity"] < 1.0


def test_ring_euler_number_and_empty_object():
    yy, xx = np.mgrid[0:40, 0:40]
    rr = np.hypot(yy - 20, xx - 20)
    lab = ((rr >= 5) & (rr <= 12)).astype(np.int32)
    lab[30:35, 2:8] = 2  # touching nothing: a rectangle
    out = _shape()(lab, 3)  # label 3 has no pixel
    assert out["AreaShape_EulerNumber"][0] == 0
    assert out["AreaShape_EulerNumber"][1] == 1
    assert out["AreaShape_Area"][2] == 0
    for name, v in out.items():
        assert v.shape == (3,)
        if name != "AreaShape_Area":
            assert np.isnan(v[2]), name
    # rectangle 5x6: bbox, extent, solidity, Feret by hand
    assert out["AreaShape_BoundingBoxArea"][1] == 30 and out["AreaShape_Extent"][1] == 1
    assert out["AreaShape_Solidity"][1] == 1
    assert out["AreaShape_MaxFeretDiameter"][1] == pytest.approx(np.hypot(4, 5))
    assert out["AreaShape_MinFeretDiameter"][1] == pytest.approx(4)


def test_areashape_column_names_match_cellprofiler_reference(repo_root):
    ref = repo_root.parent / "shared" / "data" / "cellprofiler_reference" / "Nuclei_columns.txt"
    if not ref.exists():
        pytest.skip(f"{ref} not present (../shared is not checked out)")
    cols = set(ref.read_text().split())
    labels, n, _ = make_site(seed=5, size=96, n_ellipses=6)
    ours = set(_shape()(labels, n))
    cp5 = {"AreaShape_ConvexArea"}  # CellProfiler 5 adds it to the CellProfiler 4 reference run's columns
    assert ours - cols - cp5 == set(), f"not CellProfiler column names: {sorted(ours - cols - cp5)}"
    want = {c for c in cols if c.startswith("AreaShape_")} | {"Location_Center_X", "Location_Center_Y"} | cp5
    assert want == ours, f"missing {sorted(want - ours)}"


def synth_objects(seed: int = 3, size: int = 270, cells: int = 25):
    """Nuclei, Cells and Cytoplasm (cells minus nuclei: rings with holes) of a synthetic site."""
    synth = pytest.importorskip("hpc_profiler.synth")
    site = synth.synthesize_site(seed, size, cells)
    nuclei = site.nuclei.astype(np.int32)
    cells_ = site.cells.astype(np.int32)
    cyto = np.where(nuclei > 0, 0, cells_).astype(np.int32)
    images = {ch: img.astype(np.float64) / 65535.0 for ch, img in site.images.items()}
    return {"Nuclei": nuclei, "Cells": cells_, "Cytoplasm": cyto}, images


@pytest.mark.parametrize("obj", ["Cells", "Cytoplasm"])
def test_areashape_matches_cp_measure_on_synthetic_cells(obj):
    objects, _ = synth_objects()
    lab = objects[obj]
    n = int(lab.max())
    present = np.unique(lab[lab > 0])
    assert len(present) == n, "synthetic labels are expected to be 1..N"
    check_areashape_against_cp_measure(lab, n, f"AreaShape {obj} (synthetic site, {n} objects) vs cp_measure")


def test_degenerate_objects_and_no_objects():
    from hpc_profiler.features.intensity import measure_intensity
    from hpc_profiler.features.radial import measure_radial_distribution

    lab = np.zeros((20, 20), np.int32)
    lab[2, 2] = 1  # one pixel
    lab[5, 5:9] = 2  # a horizontal line
    lab[10:15, 12] = 3  # a vertical line
    lab[16, 16] = lab[17, 17] = 4  # two diagonal pixels
    img = np.linspace(0, 1, 400).reshape(20, 20)
    out = _shape()(lab, 4)
    ref = cp_measure_areashape(lab, 4)
    for k in ("AreaShape_MaxFeretDiameter", "AreaShape_MinFeretDiameter", "AreaShape_Perimeter",
              "AreaShape_EulerNumber", "AreaShape_MaximumRadius", "AreaShape_Zernike_0_0"):
        np.testing.assert_allclose(out[k], ref[k], rtol=1e-9, err_msg=k)
    assert out["AreaShape_MaxFeretDiameter"][1] == 3 and out["AreaShape_MinFeretDiameter"][1] == 0
    for n in (0, 4):
        lab0 = lab if n else np.zeros_like(lab)
        assert all(v.shape == (n,) for v in _shape()(lab0, n).values())
        assert all(v.shape == (n,) for v in measure_intensity(lab0, n, img, "X").values())
        assert all(v.shape == (n,) for v in measure_radial_distribution(lab0, n, img, "X").values())
    # objects declared but absent
    assert np.isnan(_shape()(np.zeros_like(lab), 2)["AreaShape_Perimeter"]).all()


def test_radii_distances_shared_with_radial_edge_distances():
    """AreaShape's radii from RadialDistribution's distance transform (objects touching the
    image edge redone alone) equal the radii from AreaShape's own packed transform."""
    from hpc_profiler.features._objects import object_pixels
    from hpc_profiler.features.radial import edge_distances
    from hpc_profiler.features.shape import radii_distances

    lab = np.zeros((40, 40), np.int32)
    lab[5:12, 5:15] = 1
    lab[12:20, 5:15] = 2  # touches object 1
    lab[25:30, 25:39] = 3
    lab[30:40, 0:6] = 4  # touches two image edges
    for labels in (lab, lab[:, 3:], lab[2:38, 2:38]):
        op = object_pixels(labels, int(labels.max()) + 1)  # one trailing empty object
        own = radii_distances(op)
        shared = radii_distances(op, edge_distances(op)[1])
        np.testing.assert_array_equal(shared, own)
        # the edge path is exercised: the radial transform alone differs (object 4 on the edge)
        assert not np.array_equal(edge_distances(op)[1], own)


def _kernel_cases():
    """Label images for the kernel-vs-array-version checks: the test site (touching, holed,
    two-piece objects), a crop whose objects touch the image edge, degenerate objects, and
    trailing empty objects (``n`` above the largest label)."""
    lab, n, _ = make_site(seed=3, size=160, n_ellipses=30)
    deg = np.zeros((20, 20), np.int32)
    deg[2, 2] = 1
    deg[5, 5:9] = 2
    deg[10:15, 12] = 3
    deg[16, 16] = deg[17, 17] = 4
    return [(lab, n), (lab[7:150, 11:141], n), (lab, n + 3), (deg, 4), (deg, 6)]


@pytest.mark.parametrize("case", range(5))
def test_numba_kernels_equal_array_versions(case):
    """Each numba kernel of the CPU path gives the bits of the whole-array version it replaced
    (``perimeters``, ``euler_numbers``, ``convex_hulls`` + ``feret_diameters`` +
    ``minimum_enclosing_circles``, ``convex_areas``, ``radii_distances``)."""
    from hpc_profiler.features import shape
    from hpc_profiler.features._objects import centroids, object_pixels, row_extremes

    lab, n = _kernel_cases()[case]
    op = object_pixels(lab, n)
    out, (mcy, mcx, mr) = shape._areashape_host(lab, op, None)
    empty = op.counts == 0
    np.testing.assert_array_equal(out["AreaShape_Perimeter"][~empty], shape.perimeters(lab, n)[~empty])
    np.testing.assert_array_equal(out["AreaShape_EulerNumber"][~empty], shape.euler_numbers(lab, n)[~empty])
    np.testing.assert_array_equal(out["AreaShape_ConvexArea"][~empty], shape.convex_areas(op)[~empty])
    cy, cx = centroids(op)
    eo, ey, exmin, exmax = row_extremes(op)
    hobj, hy, hx = shape.convex_hulls(np.concatenate([eo, eo]), np.concatenate([ey, ey]).astype(float),
                                      np.concatenate([exmin, exmax]).astype(float), n, center=(cy, cx))
    fmin, fmax = shape.feret_diameters(hobj, hy, hx, n)
    np.testing.assert_array_equal(out["AreaShape_MinFeretDiameter"], fmin)
    np.testing.assert_array_equal(out["AreaShape_MaxFeretDiameter"], fmax)
    for got, ref in zip((mcy, mcx, mr), shape.minimum_enclosing_circles(hobj, hy, hx, n)):
        np.testing.assert_array_equal(got, ref)
    d = shape._radii_host(op, None)
    np.testing.assert_array_equal(d, shape.radii_distances(op))
    assert np.isnan(out["AreaShape_MaxFeretDiameter"][empty]).all()


@pytest.mark.parametrize("case", range(5))
def test_zernike_kernel_equals_device_twin(case):
    """The numba Zernike kernel (CPU path) and its whole-array twin (device path), both on
    NumPy, give the same bits, also with trailing empty objects (``reduceat``'s split sum)."""
    from hpc_profiler.features import shape
    from hpc_profiler.features._objects import object_pixels

    lab, n = _kernel_cases()[case]
    op = object_pixels(lab, n)
    _, (mcy, mcx, mr) = shape._areashape_host(lab, op, None)
    cpu = shape.zernike_moments(op, mcy, mcx, mr, 9)
    twin = shape._zernike_moments_device(op, mcy, mcx, mr, 9)
    assert list(cpu) == list(twin) == shape.zernike_indexes(9)
    for k in cpu:
        np.testing.assert_array_equal(cpu[k], twin[k], err_msg=str(k))
    ok = op.counts > 0
    assert np.isfinite(cpu[(0, 0)][ok & (mr > 0)]).all()


def test_device_path_copies_the_labels_once():
    """Through the counting backend (what CuPy would do), AreaShape of several label images
    costs one device->host copy in all, launches that do not grow with the number of objects,
    and gives the CPU path's numbers."""
    from hpc_profiler._audit import AuditCounter, audit_backend
    from hpc_profiler.features import shape

    def run(lab, n):
        labels = {"a": lab, "b": np.where(lab % 3 == 0, 0, lab).astype(np.int32)}
        ref = {k: shape.measure_areashape(v, n) for k, v in labels.items()}
        counter = AuditCounter()
        bk = audit_backend(counter)
        dev = {k: bk.asarray(v) for k, v in labels.items()}
        with counter.section("shape"):
            host = shape.host_areashape(dev, n)
            got = {k: shape.measure_areashape(dev[k], n, host=host[k]) for k in labels}
        for k in labels:
            assert list(got[k]) == list(ref[k])
            for col, v in ref[k].items():
                np.testing.assert_array_equal(bk.to_numpy(got[k][col]), v, err_msg=f"{k} {col}")
        return counter.sections["shape"]

    few = run(*make_site(seed=4, size=160, n_ellipses=8)[:2])
    many = run(*make_site(seed=4, size=160, n_ellipses=30)[:2])
    assert few.d2h == many.d2h == 1, (few, many)
    assert few.launches == many.launches <= 2 * 200, (few, many)


def test_median_radius_by_counting_equals_the_key_sort():
    """MedianRadius from the counted squared distances is segment_median(segment_sort(...)) to the bit;
    distances that are not square roots of integers take the sort."""
    from hpc_profiler.features._objects import object_pixels, segment_median, segment_sort
    from hpc_profiler.features.shape import _median_radius_host, _radii_host

    rng = np.random.default_rng(31)
    lab = np.zeros((160, 160), np.int32)
    k = 0
    for cy in range(15, 150, 30):
        for cx in range(15, 150, 30):
            k += 1
            yy, xx = np.ogrid[:160, :160]
            r = rng.integers(3, 14)
            lab[((yy - cy) ** 2 / r ** 2 + (xx - cx) ** 2 / rng.integers(2, 14) ** 2 <= 1) & (lab == 0)] = k
    lab[lab == 4] = 0  # an empty object in the middle
    op = object_pixels(lab, k + 2)  # and two empty ones at the end
    d = _radii_host(op, None)
    ref = segment_median(segment_sort(d, op.obj), op.starts, op.counts)
    got = _median_radius_host(d, op)
    np.testing.assert_array_equal(got, ref)
    assert np.isnan(got[3]) and np.isfinite(got[0])
    w = d * 1.01  # not square roots of integers: the sort
    np.testing.assert_array_equal(_median_radius_host(w, op), segment_median(segment_sort(w, op.obj), op.starts,
                                                                             op.counts))
