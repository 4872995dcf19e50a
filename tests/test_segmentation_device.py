"""Segmentation's GPU branches, run on NumPy through the counting backend of
:mod:`hpc_profiler._audit` (its ``is_gpu`` is True), against the CPU path:
same labels, measurements within float64 rounding, and at most the copies the
issue allows (one device->host copy outside the watershed's host round trip).

References: the CPU path (itself checked against CellProfiler, centrosome and
scikit-image in ``tests/test_segmentation.py`` and
``tests/test_cellprofiler_reference.py``).
"""
from __future__ import annotations

import numpy as np
import pytest

from hpc_profiler._audit import AuditCounter, audit_backend
from hpc_profiler.config import DnaBackgroundConfig, SegmentationConfig
from hpc_profiler.illumination import apply_illum
from hpc_profiler.segmentation import segment_cells, segment_nuclei, segment_site, threshold_quality

SEG = SegmentationConfig()
BG = DnaBackgroundConfig()


def _site(seed, size, n_cells):
    synth = pytest.importorskip("hpc_profiler.synth")
    s = synth.synthesize_site(seed, size=size, n_cells=n_cells, channels=["DNA", "RNA", "ER"])
    return {c: apply_illum((s.images[c] / 65535.0).astype(np.float32), s.vignette[c]).astype(np.float32)
            for c in s.images}


def _on_device(images):
    counter = AuditCounter()
    bk = audit_backend(counter)
    dev = {c: bk.asarray(v) for c, v in images.items()}
    with counter.section("segmentation"):
        seg = segment_site(dev, SEG, BG)
    return seg, counter


def _assert_same(cpu, dev):
    for name in ("nuclei", "cells", "cytoplasm"):
        assert np.array_equal(np.asarray(getattr(dev, name)._a), getattr(cpu, name)), name
    for name in ("Nuclei", "Cells"):
        assert np.array_equal(np.asarray(dev.unfiltered[name]._a), cpu.unfiltered[name]), name
    assert list(dev.measurements) == list(cpu.measurements)
    for k, v in cpu.measurements.items():
        assert dev.measurements[k] == pytest.approx(v, rel=1e-6, abs=1e-12), k
        if k.startswith(("Count_", "Threshold_FinalThreshold", "Threshold_OrigThreshold")):
            assert dev.measurements[k] == v, k
    assert dev.warnings == cpu.warnings


@pytest.mark.parametrize("seed,size,n_cells", [(1, 540, 60), (5, 300, 70)])
def test_device_segmentation_equals_cpu_with_one_copy(seed, size, n_cells):
    images = _site(seed, size, n_cells)
    cpu = segment_site(images, SEG, BG)
    dev, counter = _on_device(images)
    _assert_same(cpu, dev)
    assert counter.sections["segmentation"].d2h == 1  # every measurement and the channel QC, stacked
    assert counter.sections["watershed"].d2h % 3 == 0  # image, markers, mask per host flood


def test_device_segmentation_of_an_empty_site_equals_cpu():
    images = {c: np.zeros((64, 64), np.float32) for c in ("DNA", "RNA")}
    images["RNA"][10:20, 10:20] = 0.5
    cpu = segment_site(images, SEG, BG)
    dev, counter = _on_device(images)
    _assert_same(cpu, dev)
    assert cpu.measurements["Count_Nuclei"] == 0 and not cpu.cells.any()
    assert counter.sections["segmentation"].d2h == 1


def test_public_steps_on_the_device_return_host_floats():
    images = _site(2, 200, 12)
    bk = audit_backend(AuditCounter())
    nuc, m_cpu = segment_nuclei(images["DNA"], SEG.nuclei)
    nuc_d, m_dev = segment_nuclei(bk.asarray(images["DNA"]), SEG.nuclei)
    assert np.array_equal(np.asarray(nuc_d._a), nuc)
    assert all(type(v) is float for v in m_dev.values())
    assert m_dev == pytest.approx(m_cpu, rel=1e-6)
    cells, c_cpu = segment_cells(images["RNA"], nuc, SEG.cells)
    cells_d, c_dev = segment_cells(bk.asarray(images["RNA"]), nuc_d, SEG.cells)
    assert np.array_equal(np.asarray(cells_d._a), cells)
    assert c_dev == pytest.approx(c_cpu, rel=1e-6)


def test_device_threshold_quality_equals_cpu():
    bk = audit_backend(AuditCounter())
    rng = np.random.RandomState(0)
    cases = [(np.full((8, 8), 0.5, np.float32), np.eye(8, dtype=bool)),  # constant image
             (np.zeros((8, 8), np.float32), np.ones((8, 8), bool)),  # all zero
             (rng.rand(9, 9).astype(np.float32), np.zeros((9, 9), bool))]  # no foreground
    for _ in range(20):
        n = rng.randint(2, 40)
        cases.append(((rng.rand(n, n) ** 3).astype(np.float32), rng.rand(n, n) < rng.rand()))
    for img, fg in cases:
        cpu = threshold_quality(img, fg)
        dev = threshold_quality(bk.asarray(img), bk.asarray(fg))
        assert dev == pytest.approx(cpu, rel=1e-6, abs=1e-12)


def test_device_declumping_floods_contested_components_like_cpu():
    """Clumps two or more seeds compete for (the synthetic sites above have none): the GPU
    branch floods them whole-frame on the host, the CPU branch in a crop; same labels,
    and ``declump_shape``'s seed count is the host-side bound."""
    import scipy.ndimage as ndi

    from hpc_profiler.segmentation import declump_shape, watershed_contested

    yy, xx = np.mgrid[:80, :90]
    blob = np.zeros((80, 90), bool)
    for cy, cx, r in [(20, 20, 9), (20, 33, 8), (55, 60, 10), (62, 72, 9), (50, 15, 6)]:
        blob |= (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
    components, n = ndi.label(blob, structure=np.ones((3, 3), bool))
    counter = AuditCounter()
    bk = audit_backend(counter)
    cpu, n_seeds = declump_shape(components, 7.0, n_components=n, return_count=True)
    with counter.section("declump"):
        dev = declump_shape(bk.asarray(components), 7.0)
    assert np.array_equal(np.asarray(dev._a), cpu)
    assert n_seeds == cpu.max() == 5 and counter.sections["watershed"].d2h == 3
    rng = np.random.default_rng(0)
    image = ndi.gaussian_filter(rng.random(components.shape), 3)
    markers = np.zeros(components.shape, np.int32)
    markers[[20, 20, 55, 62, 50], [18, 35, 58, 74, 15]] = [1, 2, 3, 4, 5]
    ref = watershed_contested(image, markers, components)
    out = watershed_contested(bk.asarray(image), bk.asarray(markers), bk.asarray(components),
                              n_components=n, n_markers=5)
    assert np.array_equal(np.asarray(out._a), ref) and len(np.unique(ref)) == 6
