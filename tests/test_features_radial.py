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
    img = np.random.default_rng(0).random(labels.shape)
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
        assert out[f"RadialDistribution_MeanFrac_X_{i}of4"][0] == pytest.approx(1.0, abs=1e-12)
        assert out[f"RadialDistribution_RadialCV_X_{i}of4"][0] == pytest.approx(0.0, abs=1e-12)


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
