#!/usr/bin/env python
"""Benchmark AreaShape, Intensity and RadialDistribution against cp_measure.

One synthetic CPJUMP1-like site (``hpc_profiler.synth.synthesize_site``,
1080 x 1080, ~220 cells, 5 channels, Nuclei/Cells/Cytoplasm), both
implementations in this process on the same label images and pixels, with
the CPJUMP1 parameters (Zernike degree 9, 4 scaled radial bins, CellProfiler
quantiles). cp_measure is called on the whole label image (its fastest use).
Prints seconds per family and the ratio cp_measure / ours.

    python scripts/bench_shape_intensity.py [--size 1080] [--cells 220] [--device cpu|gpu]
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from hpc_profiler.backend import get_backend
from hpc_profiler.config import FeaturesConfig
from hpc_profiler.features._objects import edge_mask, object_pixels
from hpc_profiler.features.intensity import edge_pixels, measure_intensity
from hpc_profiler.features.radial import measure_radial_distribution, radial_geometry
from hpc_profiler.features.shape import measure_areashape
from hpc_profiler.synth import synthesize_site


def _site(size: int, cells: int):
    site = synthesize_site(0, size, cells)
    nuclei = site.nuclei.astype(np.int32)
    cells_ = site.cells.astype(np.int32)
    cyto = np.where(nuclei > 0, 0, cells_).astype(np.int32)
    images = {ch: img.astype(np.float64) / 65535.0 for ch, img in site.images.items()}
    n = int(cells_.max())
    return {"Nuclei": nuclei, "Cells": cells_, "Cytoplasm": cyto}, n, images


def ours(objects, n, images, cfg, bk):
    """All three families, every object set and channel; returns seconds per family."""
    t = {"AreaShape": 0.0, "Intensity": 0.0, "RadialDistribution": 0.0}
    for lab in objects.values():
        lab = bk.asarray(lab)
        imgs = {ch: bk.asarray(v) for ch, v in images.items()}
        bk.synchronize()
        t0 = time.perf_counter()
        op = object_pixels(lab, n)
        measure_areashape(lab, n, zernike_degree=cfg.zernike_degree, objects=op)
        bk.synchronize()
        t1 = time.perf_counter()
        edges = edge_pixels(op, edge_mask(lab))
        for ch, img in imgs.items():
            measure_intensity(lab, n, img, ch, objects=op, edges=edges)
        bk.synchronize()
        t2 = time.perf_counter()
        geo = radial_geometry(lab, n, bins=cfg.radial.bins, scaled=cfg.radial.scaled,
                              max_radius=cfg.radial.max_radius, objects=op)
        for ch, img in imgs.items():
            measure_radial_distribution(lab, n, img, ch, geometry=geo)
        bk.synchronize()
        t3 = time.perf_counter()
        t["AreaShape"] += t1 - t0
        t["Intensity"] += t2 - t1
        t["RadialDistribution"] += t3 - t2
    return t


def reference(objects, n, images, cfg):
    """cp_measure on the same masks (labels relabelled 1..N as it requires)."""
    from cp_measure.core import (
        measureobjectintensity as moi,
        measureobjectintensitydistribution as mid,
        measureobjectsizeshape as mss,
    )
    from skimage.segmentation import relabel_sequential

    t = {"AreaShape": 0.0, "Intensity": 0.0, "RadialDistribution": 0.0}
    for lab in objects.values():
        lab, _, _ = relabel_sequential(lab)
        t0 = time.perf_counter()
        mss.get_sizeshape(lab, None, calculate_advanced=False, new_features=False)
        mss.get_zernike(lab, None, zernike_numbers=cfg.zernike_degree)
        mss.get_feret(lab, None)
        t1 = time.perf_counter()
        for img in images.values():
            moi.get_intensity(lab, img, legacy=True)
        t2 = time.perf_counter()
        for img in images.values():
            mid.get_radial_distribution(lab, img, scaled=cfg.radial.scaled, bin_count=cfg.radial.bins,
                                        maximum_radius=cfg.radial.max_radius)
        t3 = time.perf_counter()
        t["AreaShape"] += t1 - t0
        t["Intensity"] += t2 - t1
        t["RadialDistribution"] += t3 - t2
    return t


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=1080)
    p.add_argument("--cells", type=int, default=220)
    p.add_argument("--device", default="cpu", choices=["cpu", "gpu", "auto"])
    p.add_argument("--repeats", type=int, default=1)
    args = p.parse_args(argv)
    cfg = FeaturesConfig()
    bk = get_backend(args.device)
    objects, n, images = _site(args.size, args.cells)
    print(f"site {args.size}x{args.size}, {n} cells, {len(images)} channels, 3 object sets, device {bk.name}")
    ours(objects, n, images, cfg, bk)  # warm-up (imports, GPU kernels)
    best_ours = None
    for _ in range(args.repeats):
        t = ours(objects, n, images, cfg, bk)
        best_ours = t if best_ours is None else {k: min(best_ours[k], t[k]) for k in t}
    ref = reference(objects, n, images, cfg)
    print(f"{'family':22s} {'ours_s':>9s} {'cp_measure_s':>13s} {'ratio':>7s}")
    for k in best_ours:
        print(f"{k:22s} {best_ours[k]:9.3f} {ref[k]:13.3f} {ref[k] / best_ours[k]:7.1f}x")
    to, tr = sum(best_ours.values()), sum(ref.values())
    print(f"{'total':22s} {to:9.3f} {tr:13.3f} {tr / to:7.1f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
