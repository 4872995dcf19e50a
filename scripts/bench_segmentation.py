#!/usr/bin/env python
"""Seconds per 1080 x 1080 site for illumination apply + segmentation.

Runs the per-site hot path of :mod:`hpc_profiler.illumination` and
:mod:`hpc_profiler.segmentation` on a synthetic CPJUMP1-like site
(:func:`hpc_profiler.synth.synthesize_site`, 5 channels) with the CPJUMP1
parameters, on the CPU, and - only when :func:`hpc_profiler.backend.gpu_available`
- on the GPU with the same code, printing the CPU/GPU time ratio and the label
agreement (same nuclei count, per-object IoU >= 0.99 for every object).

Usage::

    python scripts/bench_segmentation.py [--size 1080] [--n-cells 60] [--repeats 3] [--seed 0]

The per-step timings (illumination apply, DNA background, nuclei, cells,
cytoplasm) show where the time goes; the watershed steps include the
host round trip on the GPU (cuCIM has no watershed).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np

from hpc_profiler.backend import cpu_backend, gpu_available, gpu_backend
from hpc_profiler.config import CPJUMP1_CHANNELS, IlluminationConfig, SegmentationConfig
from hpc_profiler.illumination import IllumAccumulator, apply_illum, dna_background, subtract_background
from hpc_profiler.segmentation import cytoplasm, segment_cells, segment_nuclei, segment_site
from hpc_profiler.synth import synthesize_site


def _site_and_function(size: int, n_cells: int, seed: int):
    s = synthesize_site(seed, size=size, n_cells=n_cells)
    raw = {c: (s.images[c] / 65535.0).astype(np.float32) for c in CPJUMP1_CHANNELS}
    ic = IlluminationConfig()
    acc = IllumAccumulator(CPJUMP1_CHANNELS, ic.downsample)
    acc.add(raw)
    fns = acc.functions(ic.median_filter_size, ic.robust_minimum_percentile)
    return raw, fns


def _run(bk, raw, fns, seg_cfg, bg_cfg):
    """One site on backend ``bk``; returns (segmentation, {step: seconds})."""
    t = {}
    t0 = time.perf_counter()
    imgs = {c: apply_illum(bk.asarray(raw[c]), bk.asarray(fns[c])) for c in raw}
    bk.synchronize()
    t["illum_apply"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    dna = imgs[seg_cfg.nuclei.channel]
    dna = subtract_background(dna, dna_background(dna, bg_cfg.block_size, bg_cfg.smoothing))
    bk.synchronize()
    t["dna_background"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    nuclei, _ = segment_nuclei(dna, seg_cfg.nuclei)
    bk.synchronize()
    t["nuclei"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    cells, _ = segment_cells(imgs[seg_cfg.cells.channel], nuclei, seg_cfg.cells)
    bk.synchronize()
    t["cells"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    cytoplasm(cells, nuclei)
    bk.synchronize()
    t["cytoplasm"] = time.perf_counter() - t0
    # the public entry point, timed end to end (includes QC warnings)
    t0 = time.perf_counter()
    imgs = {c: apply_illum(bk.asarray(raw[c]), bk.asarray(fns[c])) for c in raw}
    seg = segment_site(imgs, seg_cfg, bg_cfg)
    bk.synchronize()
    t["total"] = time.perf_counter() - t0
    return seg, t


def _bench(bk, raw, fns, repeats, seg_cfg, bg_cfg):
    _run(bk, raw, fns, seg_cfg, bg_cfg)  # warm-up: imports, kernel compilation
    runs = [_run(bk, raw, fns, seg_cfg, bg_cfg) for _ in range(repeats)]
    med = {k: statistics.median(r[1][k] for r in runs) for k in runs[0][1]}
    return runs[-1][0], med


def per_object_iou(a, b):
    """IoU of object k in ``a`` with object k in ``b`` for k = 1..max."""
    n = int(max(a.max(), b.max()))
    inter = np.bincount(a[a == b], minlength=n + 1)[1:]
    area_a = np.bincount(a.ravel(), minlength=n + 1)[1:]
    area_b = np.bincount(b.ravel(), minlength=n + 1)[1:]
    return inter / np.maximum(area_a + area_b - inter, 1)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=1080)
    ap.add_argument("--n-cells", type=int, default=60, help="nuclei per site (objects scale with size)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    seg_cfg, bg_cfg = SegmentationConfig(), IlluminationConfig().dna_background
    raw, fns = _site_and_function(args.size, args.n_cells, args.seed)
    print(f"site {args.size}x{args.size}, 5 channels, seed {args.seed}, median of {args.repeats} runs")

    cpu_seg, cpu_t = _bench(cpu_backend(), raw, fns, args.repeats, seg_cfg, bg_cfg)
    print(f"CPU: {int(cpu_seg.measurements['Count_Nuclei'])} nuclei, {cpu_t['total']:.3f} s per site")
    for k, v in cpu_t.items():
        if k != "total":
            print(f"  {k:15s} {v:8.3f} s")

    if not gpu_available():
        print("GPU: not available (CuPy/cuCIM or a CUDA device missing); GPU section skipped")
        return 0
    gbk = gpu_backend()
    gpu_seg, gpu_t = _bench(gbk, raw, fns, args.repeats, seg_cfg, bg_cfg)
    print(f"GPU: {int(gpu_seg.measurements['Count_Nuclei'])} nuclei, {gpu_t['total']:.3f} s per site")
    for k, v in gpu_t.items():
        if k != "total":
            print(f"  {k:15s} {v:8.3f} s   CPU/GPU {cpu_t[k] / max(v, 1e-9):6.2f}")
    print(f"CPU/GPU ratio (total): {cpu_t['total'] / gpu_t['total']:.2f}")
    ok = True
    for name in ("nuclei", "cells", "cytoplasm"):
        a = getattr(cpu_seg, name)
        b = gbk.to_numpy(getattr(gpu_seg, name))
        same_n = int(a.max()) == int(b.max())
        iou = per_object_iou(a, b)
        worst = float(iou.min()) if iou.size else 1.0
        print(f"  {name:9s} count CPU {int(a.max())} GPU {int(b.max())}; min per-object IoU {worst:.4f}")
        ok &= same_n and worst >= 0.99
    print("label agreement:", "OK" if ok else "FAILED (count differs or an object has IoU < 0.99)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
