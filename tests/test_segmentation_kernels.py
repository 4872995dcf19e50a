"""The CPU kernels of :mod:`hpc_profiler.segmentation` against the plain
computations they replace, bit for bit: SciPy's exact distance transform and
hole filling, scikit-image's ``threshold_li``, NumPy's pairwise sums and
``unique``-based gaps, and the array (GPU-branch) versions of
``fill_label_holes`` run on NumPy through the counting backend.
"""
from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage as ndi
import skimage.filters

from hpc_profiler._audit import AuditCounter, audit_backend
from hpc_profiler.segmentation import (
    _edt_plus_noise,
    _pairwise_sum,
    fill_holes,
    fill_label_holes,
    threshold_li_host,
    threshold_tolerance,
)


def _masks(seed, n=60):
    rng = np.random.RandomState(seed)
    for t in range(n):
        h, w = rng.randint(1, 45, 2)
        fg = rng.rand(h, w) < rng.rand() ** 0.3
        if t % 2:
            fg = ndi.binary_opening(fg) | ndi.binary_dilation(rng.rand(h, w) < 0.02, iterations=3)
        yield fg


def test_edt_plus_noise_equals_scipy():
    rng = np.random.RandomState(0)
    done = 0
    for fg in _masks(0):
        if fg.all():
            continue
        noise = rng.uniform(0, 1e-3, fg.shape)
        out = np.empty(fg.shape)
        _edt_plus_noise(fg, noise, out)
        assert np.array_equal(out, ndi.distance_transform_edt(fg) + noise)
        done += 1
    assert done > 40


def test_fill_holes_equals_scipy():
    for fg in _masks(1):
        assert np.array_equal(fill_holes(fg), ndi.binary_fill_holes(fg))


def test_fill_label_holes_cpu_equals_array_version():
    bk = audit_backend(AuditCounter())  # GPU branch (labelling + labelled max/min) on NumPy
    rng = np.random.RandomState(2)
    for k, fg in enumerate(_masks(2)):
        labels, _ = ndi.label(fg)
        if k % 3 == 0:
            labels = (labels % 3).astype(np.int32)  # neighbouring objects, holes between two labels
        if k % 4 == 0:
            labels = ndi.grey_dilation(labels, size=3)
        labels = labels.astype(np.int32)
        labels[rng.rand(*labels.shape) < 0.05] = 0  # pinholes
        cpu = fill_label_holes(labels)
        dev = np.asarray(fill_label_holes(bk.asarray(labels))._a)
        assert np.array_equal(cpu, dev), k
    ring = np.zeros((9, 9), np.int32)
    ring[2:7, 2:7] = 4
    ring[4, 4] = 0
    assert fill_label_holes(ring)[4, 4] == 4


@pytest.mark.parametrize("n", [0, 1, 7, 8, 9, 127, 128, 129, 1000, 65543, 300001])
def test_pairwise_sum_equals_numpy(n):
    a = np.random.RandomState(n).rand(n) ** 3 * 1e3
    assert _pairwise_sum(a, n) == np.add.reduce(a) or n == 0


def test_threshold_li_host_equals_scikit_image():
    rng = np.random.RandomState(3)
    cases = [np.array([[0.0, 1.0]]), np.array([[0.0, 0.0, 0.0, 1.0]]), np.full((3, 3), 0.25)]
    for t in range(80):
        a = rng.rand(rng.randint(1, 150), rng.randint(1, 60)) ** rng.randint(1, 6)
        if t % 4 == 0:
            a = np.round(a * 7) / 7  # ties, few values
        cases.append(a.astype(np.float32) if t % 3 == 0 else a)
    for a in cases:
        tol = threshold_tolerance(a)
        ref = skimage.filters.threshold_li(np.asarray(a, dtype=np.float64), tolerance=tol)
        assert threshold_li_host(a, tol) == ref


def test_threshold_tolerance_equals_smallest_gap():
    rng = np.random.RandomState(4)
    cases = [np.array([[0.0, 1 / 65536]]), np.array([[0.0, 0.99 / 65536]]), np.array([[0.3]]),
             (rng.randint(0, 30, (50, 50)) / 65536.0).astype(np.float32), rng.randint(0, 300, (50, 50)) / 255.0,
             rng.rand(200, 200).astype(np.float32)]
    for a in cases:
        u = np.unique(a.ravel()).astype(np.float64)
        ref = max(float(np.min(np.diff(u))) / 2, 0.5 / 65536) if u.size > 1 else 0.5 / 65536
        assert threshold_tolerance(a) == ref
