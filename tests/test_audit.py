"""The GPU-free audit (hpc_profiler._audit): exact counts on hand-written code, unchanged results."""
from __future__ import annotations

import numpy as np
import pytest

from hpc_profiler._audit import AuditCounter, DeviceArray, audit_backend
from hpc_profiler.backend import backend_of, cpu_backend, to_numpy
from hpc_profiler.config import FeaturesConfig


def _hand_written(bk):
    """Known costs on a GPU: 7 launches, 2 syncs, 3 device->host copies, 1 host->device copy."""
    xp = bk.xp
    a = bk.asarray(np.arange(10.0))      # h2d 1, launch 1
    b = a * 2                            # launch 2
    s = b.sum()                          # launch 3 (a 0-d device array, as CuPy returns)
    total = float(s)                     # d2h 1
    big = a[b > 4]                       # launches 4 (compare) and 5 (gather), sync 1 (boolean mask)
    counts = xp.bincount(xp.arange(3))   # launches 6 (arange) and 7 (bincount), sync 2 (output size)
    host = bk.to_numpy(big)              # d2h 2
    n = int(counts.shape[0])             # metadata: free
    view = a[2:5]                        # basic slice: a view, free
    first = view.reshape(-1)[0]          # view of a contiguous array and a scalar read: free (0-d on device)
    return total, host, n, bool(first == 2.0)  # == is launch 8, bool() is d2h 3


def test_hand_written_function_counted_exactly():
    counter = AuditCounter()
    bk = audit_backend(counter)
    with counter.section("hand"):
        total, host, n, first = _hand_written(bk)
    c = counter.sections["hand"]
    assert (c.launches, c.syncs, c.d2h, c.h2d) == (8, 2, 3, 1)
    # and the values are NumPy's
    ref_total, ref_host, ref_n, ref_first = _hand_written(cpu_backend())
    assert total == ref_total and n == ref_n and first == ref_first
    np.testing.assert_array_equal(host, ref_host)
    assert type(host) is np.ndarray


def test_host_conversions_and_loops_are_counted():
    counter = AuditCounter()
    bk = audit_backend(counter)
    a = bk.xp.arange(4)                  # launch
    base = counter.total()
    np.asarray(a)                        # implicit conversion (CuPy raises): d2h
    list(a)                              # Python loop over a device array: d2h
    a.tolist()                           # d2h
    a[1].item()                          # d2h (the element read itself is a view)
    int(a.max())                         # launch + d2h
    to_numpy(a)                          # module-level to_numpy: d2h
    c = counter.total()
    assert c.d2h - base.d2h == 6
    assert c.launches - base.launches == 1


def test_in_place_ops_keep_the_proxy_and_count():
    counter = AuditCounter()
    bk = audit_backend(counter)
    xp = bk.xp
    a = xp.zeros(5)
    a += 1
    a[xp.asarray(np.array([0, 2]))] = 7  # h2d + launch for the index, launch for the scatter
    xp.add.at(a, xp.arange(2), 1.0)      # arange, add.at
    out = xp.maximum.reduceat(a, xp.asarray(np.array([0, 3])))
    assert isinstance(a, DeviceArray) and isinstance(out, DeviceArray)
    np.testing.assert_array_equal(to_numpy(a), [8.0, 2.0, 7.0, 1.0, 1.0])
    np.testing.assert_array_equal(bk.to_numpy(out), [8.0, 1.0])
    c = counter.total()
    # zeros, +=, asarray, setitem, arange, add.at, asarray, reduceat
    assert c.launches == 8 and c.h2d == 2 and c.d2h == 2


def test_backend_of_follows_the_proxies():
    bk = audit_backend()
    a = bk.asarray(np.ones((3, 3)))
    assert backend_of(np.zeros(2), a) is bk
    assert backend_of(np.zeros(2)) is cpu_backend()
    ndi_out = bk.ndi.uniform_filter(a, 3)
    assert isinstance(ndi_out, DeviceArray)
    edges = bk.ski.segmentation.find_boundaries(bk.asarray(np.eye(4, dtype=np.int32)), mode="inner")
    assert isinstance(edges, DeviceArray) and edges.dtype == bool


def test_audited_features_equal_cpu_features():
    """Every family, run through the counting proxies, returns the CPU backend's numbers exactly."""
    from hpc_profiler.features import measure_site
    from hpc_profiler.synth import synthesize_site

    s = synthesize_site(5, size=96, n_cells=6, channels=("DNA", "RNA"))
    images = {c: np.clip(s.images[c].astype(np.float64) / 65535.0, 0, 1) for c in ("DNA", "RNA")}
    nuclei = np.asarray(s.nuclei, np.int32)
    cells = np.asarray(s.cells, np.int32)
    cyto = np.where(nuclei > 0, 0, cells).astype(np.int32)
    labels = {"Nuclei": nuclei, "Cells": cells, "Cytoplasm": cyto}
    n = int(cells.max())
    if n == 0:
        pytest.skip("synthetic site without cells")
    params = FeaturesConfig()
    params.granularity.spectrum_length = 2  # keep the test short; granularity is not audited here
    ref = measure_site(images, labels, params, ("DNA", "RNA"), n_objects=n)

    counter = AuditCounter()
    bk = audit_backend(counter)
    got = measure_site({c: bk.asarray(v) for c, v in images.items()},
                       {o: bk.asarray(v) for o, v in labels.items()}, params, ("DNA", "RNA"), n_objects=n)
    # Texture's CPU path is a numba kernel and its GPU path (audited here) array code: the two agree
    # to rounding (tests/test_features_texture.py compares them), every other column exactly
    for o in ref.objects:
        assert got.objects[o].names == ref.objects[o].names
        # RadialDistribution's GPU branch sums in float64 and rounds once, the CPU in float32
        # in raster order as CellProfiler (radial.float32_sums): float32 rounding apart (RadialCV,
        # a std of near-equal wedge means, amplifies it)
        names = ref.objects[o].names
        radial = np.array([c.startswith(f"{o}_RadialDistribution_") for c in names])
        tex = np.array(["_Texture_" in f"_{k}" for k in names])
        assert radial.any() and tex.any()
        exact = ~(radial | tex)
        np.testing.assert_array_equal(got.objects[o].values[:, exact], ref.objects[o].values[:, exact])
        np.testing.assert_allclose(got.objects[o].values[:, radial], ref.objects[o].values[:, radial],
                                   rtol=1e-5, atol=0)
        np.testing.assert_allclose(got.objects[o].values[:, tex], ref.objects[o].values[:, tex], rtol=1e-6)
    exact = {k for k in ref.image if not k.startswith("Image_Texture_")}
    assert {k: got.image[k] for k in exact} == pytest.approx({k: ref.image[k] for k in exact}, nan_ok=True, rel=0,
                                                             abs=0)
    assert got.image == pytest.approx(ref.image, nan_ok=True, rel=1e-9, abs=1e-13)
    # every family was attributed its own counts, and the tables came back with one copy each
    for fam in params.families:
        assert counter.sections[fam].launches > 0, fam
    assert counter.sections["other"].d2h <= len(params.objects) + 1


def test_watershed_copies_have_their_own_section_and_lines_are_tracked():
    """The host watershed's copies (exempt from the issue's budget) are counted apart, and
    ``track`` names the package line of each count."""
    from hpc_profiler.segmentation import _watershed_host

    counter = AuditCounter(track=True)
    bk = audit_backend(counter)
    image = bk.asarray(np.random.default_rng(0).random((20, 20)))
    markers = bk.asarray(np.pad(np.eye(2, dtype=np.int32), 9))
    with counter.section("segmentation"):
        out = _watershed_host(bk, image, markers, bk.xp.ones((20, 20), dtype=bool))
    assert isinstance(out, DeviceArray) and out.shape == (20, 20)
    assert counter.sections["watershed"].d2h == 3  # image, markers, mask to the host
    assert counter.sections["segmentation"].d2h == 0
    assert counter.sections["segmentation"].h2d == 1  # the labels back onto the device
    lines = dict(counter.top("d2h"))
    assert sum(lines.values()) == 3 and all(k.startswith("segmentation.py:") for k in lines)
