#!/usr/bin/env python
"""Benchmark: all feature families of one site, hpc_profiler vs cp_measure.

    python scripts/bench_features.py                       # 1080 x 1080, ~200 cells, all families
    python scripts/bench_features.py --size 540 --cells 60 # a quicker run
    python scripts/bench_features.py --families Correlation Neighbors

One synthetic CPJUMP1-like site (``hpc_profiler.synth.synthesize_site``: five
channels, Nuclei / Cells / Cytoplasm label images sharing numbers) is measured

* by :func:`hpc_profiler.features.measure_site` on the CPU (and on the GPU when
  the GPU backend is available, after one warm-up run), and
* by ``cp_measure`` 0.3.0 computing the same families on the same masks and
  pixels with the CPJUMP1 parameters (its functions loop over the objects of a
  label image internally; texture is called once per scale, correlation once per
  channel pair, neighbors once per setting),

in the same process, and the seconds and ratios per family are printed. The
ratio is cp_measure seconds / hpc_profiler seconds (higher is better for us).
"""
from __future__ import annotations

import argparse
import itertools
import os
import platform
import time

import numpy as np

from hpc_profiler.backend import gpu_available, gpu_backend
from hpc_profiler.config import CPJUMP1_CHANNELS, FEATURE_FAMILIES, FeaturesConfig
from hpc_profiler.features import measure_site, neighbor_distances
from hpc_profiler.synth import synthesize_site


def make_site(size: int, cells: int, seed: int):
    s = synthesize_site(seed, size=size, n_cells=cells)
    images = {c: s.images[c].astype(np.float32) / 65535.0 for c in CPJUMP1_CHANNELS}
    nuclei = s.nuclei.astype(np.int32)
    cells_l = s.cells.astype(np.int32)
    cyto = np.where(nuclei > 0, 0, cells_l).astype(np.int32)
    return images, {"Nuclei": nuclei, "Cells": cells_l, "Cytoplasm": cyto}


def cp_measure_site(images, labels, params: FeaturesConfig, channels) -> dict:
    """Seconds per family for cp_measure on the same site (CPJUMP1 parameters)."""
    from cp_measure.bulk import get_core_measurements, get_correlation_measurements
    from cp_measure.core.measurecolocalization import get_correlation_overlap
    from cp_measure.multimask.measureobjectneighbors import D_ADJACENT, D_WITHIN, measureobjectneighbors

    core = get_core_measurements(legacy=True)
    corr = get_correlation_measurements()
    sec = {}

    def timed(fam, fn):
        t0 = time.perf_counter()
        fn()
        sec[fam] = sec.get(fam, 0.0) + time.perf_counter() - t0

    g, r, t = params.granularity, params.radial, params.texture
    thr = int(params.correlation.threshold_percent)
    for obj in params.objects:
        lab = labels[obj]
        if "AreaShape" in params.families:
            timed("AreaShape", lambda: (core["sizeshape"](lab, None), core["zernike"](lab, None, params.zernike_degree),
                                        core["feret"](lab, None)))
        for c in channels:
            img = images[c]
            if "Intensity" in params.families:
                timed("Intensity", lambda: core["intensity"](lab, img))
            if "RadialDistribution" in params.families:
                timed("RadialDistribution", lambda: core["radial_distribution"](
                    lab, img, scaled=r.scaled, bin_count=r.bins, maximum_radius=r.max_radius))
            if "Texture" in params.families:
                for s in t.scales:
                    timed("Texture", lambda: core["texture"](lab, img, scale=s, gray_levels=t.gray_levels))
            if "Granularity" in params.families:
                timed("Granularity", lambda: core["granularity"](
                    lab, img, subsample_size=g.subsample_size, image_sample_size=g.image_sample_size,
                    element_size=g.element_size, granular_spectrum_length=g.spectrum_length))
        if "Correlation" in params.families:
            for a, b in itertools.combinations(sorted(channels), 2):
                x, y = images[a], images[b]
                timed("Correlation", lambda: (corr["pearson"](x, y, lab), corr["manders_fold"](x, y, lab, thr=thr),
                                              corr["rwc"](x, y, lab, thr=thr), get_correlation_overlap(x, y, lab, thr=thr)))
        if "Neighbors" in params.families:
            for d in neighbor_distances(obj, params):
                if d is None:
                    timed("Neighbors", lambda: measureobjectneighbors(lab, lab, distance_method=D_ADJACENT))
                else:
                    timed("Neighbors", lambda: measureobjectneighbors(lab, lab, distance_method=D_WITHIN, distance=d))
    return sec


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=1080, help="site width/height in pixels (CPJUMP1: 1080)")
    ap.add_argument("--cells", type=int, default=220, help="mean number of cells of the synthetic site")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--families", nargs="+", default=list(FEATURE_FAMILIES), choices=FEATURE_FAMILIES)
    ap.add_argument("--no-cp-measure", action="store_true", help="time this package only")
    args = ap.parse_args(argv)

    channels = list(CPJUMP1_CHANNELS)
    params = FeaturesConfig(families=list(args.families))
    images, labels = make_site(args.size, args.cells, args.seed)
    n = int(labels["Cells"].max())
    print(f"site {args.size}x{args.size}, {n} cells, channels {channels}, families {params.families}")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs visible")

    t0 = time.perf_counter()
    ours = measure_site(images, labels, params, channels)
    total = time.perf_counter() - t0
    cpu_sec = dict(ours.seconds)
    print(f"hpc_profiler CPU: {total:.2f} s")

    gpu_sec, gpu_total = None, None
    if gpu_available():
        xp = gpu_backend().xp
        gi = {c: xp.asarray(v) for c, v in images.items()}
        gl = {o: xp.asarray(v) for o, v in labels.items()}
        measure_site(gi, gl, params, channels)  # warm-up: kernel compilation, memory pool
        gpu_backend().synchronize()
        t0 = time.perf_counter()
        g = measure_site(gi, gl, params, channels)
        gpu_total = time.perf_counter() - t0
        gpu_sec = dict(g.seconds)
        print(f"hpc_profiler GPU: {gpu_total:.2f} s (after one warm-up run)")
    else:
        print("GPU: not available (no CuPy/cuCIM/device), GPU section skipped")

    ref_sec = None
    if not args.no_cp_measure:
        t0 = time.perf_counter()
        ref_sec = cp_measure_site(images, labels, params, channels)
        ref_total = time.perf_counter() - t0
        print(f"cp_measure CPU:   {ref_total:.2f} s")

    head = f"{'family':20s} {'ours_cpu_s':>11s}"
    if ref_sec:
        head += f" {'cp_measure_s':>13s} {'ratio':>7s}"
    if gpu_sec:
        head += f" {'ours_gpu_s':>11s} {'cpu/gpu':>8s}"
    print("\n" + head)
    for fam in params.families:
        line = f"{fam:20s} {cpu_sec.get(fam, 0.0):11.3f}"
        if ref_sec:
            ratio = ref_sec.get(fam, 0.0) / max(cpu_sec.get(fam, 0.0), 1e-9)
            line += f" {ref_sec.get(fam, 0.0):13.3f} {ratio:7.1f}"
        if gpu_sec:
            line += f" {gpu_sec.get(fam, 0.0):11.3f} {cpu_sec.get(fam, 0.0) / max(gpu_sec.get(fam, 1e-9), 1e-9):8.1f}"
        print(line)
    line = f"{'TOTAL':20s} {total:11.3f}"
    if ref_sec:
        line += f" {ref_total:13.3f} {ref_total / total:7.1f}"
    if gpu_sec:
        line += f" {gpu_total:11.3f} {total / gpu_total:8.1f}"
    print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
