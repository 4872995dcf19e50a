"""measure_site on the GPU (CuPy/cuCIM) against the CPU on the same site: every feature."""
from __future__ import annotations

import numpy as np
import pytest

from hpc_profiler.backend import gpu_available, gpu_backend
from hpc_profiler.config import CPJUMP1_CHANNELS, FeaturesConfig
from hpc_profiler.features import measure_site
from hpc_profiler.synth import synthesize_site

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not gpu_available(), reason="no GPU backend here (CuPy + cuCIM + a CUDA device are needed)"),
]

RTOL = 1e-4  # |a - b| relative to the column's largest |value|, every object
MEDIAN_REL = 1e-5  # the bar per column: median over objects of |a - b| / max(|a|, |b|, floor)
MAX_REL = 1e-3  # ... and its maximum
#: the floor: 1e-9 of the column's largest |value|. A value that is zero up to rounding (an odd Zernike
#: moment of a symmetric nucleus: ~1e-13 of the column's range on the H200) has no relative difference
#: worth the name; without a floor its last bits counted as 0.5% on the H200.
FLOOR = 1e-9


def _site():
    s = synthesize_site(11, size=384, n_cells=40)
    images = {c: s.images[c].astype(np.float32) / 65535.0 for c in CPJUMP1_CHANNELS}
    cyto = np.where(s.nuclei > 0, 0, s.cells).astype(np.int32)
    labels = {"Nuclei": s.nuclei.astype(np.int32), "Cells": s.cells.astype(np.int32), "Cytoplasm": cyto}
    return images, labels


def test_measure_site_gpu_equals_cpu():
    images, labels = _site()
    params = FeaturesConfig()
    cpu = measure_site(images, labels, params, CPJUMP1_CHANNELS)
    xp = gpu_backend().xp
    gpu = measure_site(
        {c: xp.asarray(v) for c, v in images.items()},
        {o: xp.asarray(v) for o, v in labels.items()},
        params,
        CPJUMP1_CHANNELS,
    )
    bad = []
    for obj, table in cpu.objects.items():
        other = gpu.objects[obj]
        assert other.names == table.names
        a = table.values.astype(np.float64)
        b = other.values.astype(np.float64)
        nan_a, nan_b = np.isnan(a), np.isnan(b)
        scale = np.maximum(np.nanmax(np.abs(a), axis=0, initial=0.0), 1e-12)
        diff = np.where(nan_a | nan_b, 0.0, np.abs(a - b)) / scale  # relative to the column's range
        rel = np.where(nan_a | nan_b, 0.0,
                       np.abs(a - b) / np.maximum(np.maximum(np.abs(a), np.abs(b)), FLOOR * scale))
        for j, name in enumerate(table.names):
            med = float(np.median(rel[:, j])) if rel.shape[0] else 0.0
            if ((nan_a[:, j] != nan_b[:, j]).any() or diff[:, j].max(initial=0) > RTOL
                    or med > MEDIAN_REL or rel[:, j].max(initial=0) > MAX_REL):
                bad.append((name, int((nan_a[:, j] != nan_b[:, j]).sum()), float(diff[:, j].max(initial=0)),
                            med, float(rel[:, j].max(initial=0))))
    for k, v in cpu.image.items():
        w = gpu.image[k]
        if not (np.isnan(v) and np.isnan(w)) and abs(v - w) > RTOL * max(abs(v), 1e-12):
            bad.append((k, 0, abs(v - w), abs(v - w) / max(abs(v), 1e-12), abs(v - w) / max(abs(v), 1e-12)))
    print(f"\nGPU vs CPU: {len(bad)} columns over {RTOL:g}")
    for row in bad[:50]:
        print("  %-60s nan-mismatch=%d max/range=%.3g median rel=%.3g max rel=%.3g" % row)
    print("seconds cpu", {k: round(v, 3) for k, v in cpu.seconds.items()})
    print("seconds gpu", {k: round(v, 3) for k, v in gpu.seconds.items()})
    assert not bad, f"{len(bad)} feature columns differ between CPU and GPU, first: {bad[:10]}"
