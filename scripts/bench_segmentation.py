#!/usr/bin/env python
"""CPU seconds per 1080 x 1080 site for illumination apply + segmentation.

Runs the per-site hot path of :mod:`hpc_profiler.illumination` and
:mod:`hpc_profiler.segmentation` on a synthetic CPJUMP1-like site
(:func:`hpc_profiler.synth.synthesize_site`, 5 channels, illumination
functions from :class:`hpc_profiler.illumination.IllumAccumulator`) with the
CPJUMP1 parameters, and prints per step:

* the CPU time (``time.process_time``; run with ``OMP_NUM_THREADS=1`` etc.
  for one core) of the package code;
* the CPU time of a reference run in the same process where the cheaper
  equivalents are swapped for the plain SciPy / scikit-image calls they
  replace (``ndimage.binary_fill_holes``, ``skimage.filters.threshold_li``,
  one full-image watershed for
  declumping instead of the contested crops, 3 x 3 grey dilation/erosion for
  outlines, ``centrosome.cpmorphology.fill_labeled_holes`` and
  ``is_local_maximum`` when installed), the ratio, and whether the labels
  are identical;
* only when :func:`hpc_profiler.backend.gpu_available`: the GPU wall time of
  the same code, the CPU/GPU ratio and the label agreement (same count,
  per-object IoU >= 0.99 for every object).

Usage::

    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1 \
        python scripts/bench_segmentation.py [--size 1080] [--n-cells 220] [--repeats 3] [--seed 0]

The watershed steps include the host round trip on the GPU (cuCIM has no
watershed).
"""
from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time

import numpy as np
import scipy.ndimage as ndi
import skimage.filters

import hpc_profiler.segmentation as segmentation
from hpc_profiler.backend import cpu_backend, gpu_available, gpu_backend
from hpc_profiler.config import CPJUMP1_CHANNELS, IlluminationConfig, SegmentationConfig
from hpc_profiler.illumination import IllumAccumulator, apply_illum, dna_background, subtract_background
from hpc_profiler.segmentation import cytoplasm, segment_cells, segment_nuclei, segment_site
from hpc_profiler.synth import synthesize_site
from hpc_profiler.watershed import watershed_numpy


def _site_and_function(size: int, n_cells: int, seed: int):
    s = synthesize_site(seed, size=size, n_cells=n_cells)
    raw = {c: (s.images[c] / 65535.0).astype(np.float32) for c in CPJUMP1_CHANNELS}
    ic = IlluminationConfig()
    acc = IllumAccumulator(CPJUMP1_CHANNELS, ic.downsample)
    acc.add(raw)
    fns = acc.functions(ic.median_filter_size, ic.robust_minimum_percentile)
    return raw, fns


def _run(bk, raw, fns, seg_cfg, bg_cfg):
    """One site on backend ``bk``; returns (segmentation, {step: seconds}).

    CPU: process time of this process; GPU: wall time after synchronising.
    """
    clock = time.process_time if bk.name == "cpu" else time.perf_counter
    t = {}
    t0 = clock()
    imgs = {c: apply_illum(bk.asarray(raw[c]), bk.asarray(fns[c])) for c in raw}
    bk.synchronize()
    t["illum_apply"] = clock() - t0
    t0 = clock()
    dna = imgs[seg_cfg.nuclei.channel]
    dna = subtract_background(dna, dna_background(dna, bg_cfg.block_size, bg_cfg.smoothing))
    bk.synchronize()
    t["dna_background"] = clock() - t0
    t0 = clock()
    nuclei, _ = segment_nuclei(dna, seg_cfg.nuclei)
    bk.synchronize()
    t["nuclei"] = clock() - t0
    t0 = clock()
    cells, _ = segment_cells(imgs[seg_cfg.cells.channel], nuclei, seg_cfg.cells)
    bk.synchronize()
    t["cells"] = clock() - t0
    t0 = clock()
    cytoplasm(cells, nuclei)
    bk.synchronize()
    t["cytoplasm"] = clock() - t0
    # the public entry point, timed end to end (includes QC warnings)
    t0 = clock()
    imgs = {c: apply_illum(bk.asarray(raw[c]), bk.asarray(fns[c])) for c in raw}
    seg = segment_site(imgs, seg_cfg, bg_cfg)
    bk.synchronize()
    t["total"] = clock() - t0
    return seg, t


def _median(runs):
    """(last segmentation, {step: median seconds}) of a list of :func:`_run` results."""
    return runs[-1][0], {k: statistics.median(r[1][k] for r in runs) for k in runs[0][1]}


def _bench(bk, raw, fns, repeats, seg_cfg, bg_cfg):
    _run(bk, raw, fns, seg_cfg, bg_cfg)  # warm-up: imports, kernel compilation
    return _median([_run(bk, raw, fns, seg_cfg, bg_cfg) for _ in range(repeats)])


@contextlib.contextmanager
def plain_scipy_skimage():
    """Swap the cheaper equivalents in :mod:`hpc_profiler.segmentation` for the
    plain SciPy / scikit-image (/ centrosome) calls they replace."""
    eight = np.ones((3, 3), bool)

    def outline(labels):
        dil = ndi.grey_dilation(labels, footprint=eight, mode="constant", cval=0)
        ero = ndi.grey_erosion(labels, footprint=eight, mode="constant", cval=0)
        return (labels != 0) & ((dil != labels) | (ero != labels))

    plain = {
        "fill_holes": ndi.binary_fill_holes,
        "watershed_contested": lambda image, markers, comps, **bounds: watershed_numpy(image, markers, comps > 0),
        "outline": outline,
        "threshold_li_host": lambda image, tol: skimage.filters.threshold_li(
            np.asarray(image, dtype=np.float64), tolerance=tol),
    }
    try:
        from centrosome.cpmorphology import fill_labeled_holes, is_local_maximum

        plain["fill_label_holes"] = lambda labels: fill_labeled_holes(labels).astype(np.int32)
        plain["is_local_maximum"] = lambda image, labels, r: is_local_maximum(
            image, labels, segmentation.strel_disk(r)
        )
    except ImportError:
        pass
    saved = {k: getattr(segmentation, k) for k in plain}
    try:
        for k, v in plain.items():
            setattr(segmentation, k, v)
        yield sorted(plain)
    finally:
        for k, v in saved.items():
            setattr(segmentation, k, v)


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
    ap.add_argument(
        "--n-cells", type=int, default=220, help="mean nuclei centred in the site (~200 is realistic at 1080)"
    )
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    seg_cfg, bg_cfg = SegmentationConfig(), IlluminationConfig().dna_background
    raw, fns = _site_and_function(args.size, args.n_cells, args.seed)
    print(f"site {args.size}x{args.size}, 5 channels, seed {args.seed}, median of {args.repeats} runs")

    # package and reference alternate, so that load from other processes hits both alike
    cbk, runs, ref_runs = cpu_backend(), [], []
    for i in range(args.repeats + 1):  # the first round is a warm-up
        run = _run(cbk, raw, fns, seg_cfg, bg_cfg)
        with plain_scipy_skimage() as swapped:
            ref = _run(cbk, raw, fns, seg_cfg, bg_cfg)
        if i:
            runs.append(run)
            ref_runs.append(ref)
    (cpu_seg, cpu_t), (ref_seg, ref_t) = _median(runs), _median(ref_runs)
    n = int(cpu_seg.measurements["Count_Nuclei"])
    print(f"CPU: {n} nuclei, {cpu_t['total']:.3f} s per site (process time)")
    print(f"reference: {', '.join(swapped)} as plain SciPy/skimage/centrosome calls")
    print(f"  {'step':15s} {'package':>9s} {'reference':>10s} {'ref/pkg':>8s}")
    for k, v in cpu_t.items():
        print(f"  {k:15s} {v:8.3f}s {ref_t[k]:9.3f}s {ref_t[k] / max(v, 1e-9):8.2f}")
    same = all(
        np.array_equal(getattr(cpu_seg, name), getattr(ref_seg, name)) for name in ("nuclei", "cells", "cytoplasm")
    )
    print("labels identical to the reference:", "yes" if same else "NO")
    if not same:
        return 1

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
