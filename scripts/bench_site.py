#!/usr/bin/env python
"""Benchmark one whole site: illumination apply + segmentation + every feature family.

    python scripts/bench_site.py                        # 1080 x 1080, ~220 cells, cp_measure on 8+16 objects
    python scripts/bench_site.py --ref-objects 0        # cp_measure on every object (minutes)
    python scripts/bench_site.py --no-cp-measure --no-single-thread

One synthetic CPJUMP1-like site (``hpc_profiler.synth.synthesize_site``, five
channels) goes through :func:`hpc_profiler.pipeline.process_images` with the
settings of ``configs/cpjump1.yaml`` on the CPU backend (an illumination
function computed from the site itself is applied first). Every figure is the
site's second run in its process (steady state, as a task's sites after its
first); the first run's total is printed apart. Printed:

* wall and CPU (``time.process_time``) seconds per stage (illumination apply,
  segmentation, features) and per feature family (``SiteFeatures.seconds`` /
  ``SiteFeatures.cpu_seconds``);
* the same with BLAS/OpenMP limited to one thread: the script runs itself again
  in a child process whose environment sets ``OMP_NUM_THREADS``,
  ``OPENBLAS_NUM_THREADS``, ``MKL_NUM_THREADS`` and ``NUMEXPR_NUM_THREADS`` to 1
  before NumPy is imported - the "one CPU core" figure of the project's target;
* cp_measure 0.3.0 computing the same families on the same masks and pixels
  with the CPJUMP1 parameters. cp_measure's functions loop over the objects of
  the label image they are given; with ``--ref-objects K`` (K > 0) they are
  timed on label images holding only the first K and the first 2K objects and
  the seconds are extrapolated *linearly* to all N objects per family
  (``t(N) = t(K) + (t(2K) - t(K)) (N - K) / K``, so image-wide work such as
  granularity's background opening is counted once, not N/K times); the
  output says so. ``--ref-objects 0`` times every object (minutes).
* with ``--cellprofiler EXE``: CellProfiler itself (headless, one thread, the
  CPJUMP1 pipeline of ``../shared/cellprofiler``) on the same raw site, its own
  per-module seconds (``ExecutionTime_*`` of its Image table) per step and
  family beside ours, and the ratio: the issue's "10x CellProfiler" measured on
  this machine in this run rather than quoted;
* Granularity once more on the same masks and corrected images, in this
  process: as shipped and with ``skimage.morphology.reconstruction`` swapped
  in for :mod:`hpc_profiler.morphology`'s (the previous implementation), its
  CPU seconds beside cp_measure's, and whether the two give the same bits;
* a GPU section when :func:`hpc_profiler.backend.gpu_available`: the same site
  on the GPU backend (after one warm-up run), its seconds, the ratio to the CPU
  and to cp_measure, and the largest relative difference CPU vs GPU per feature
  column (the worst columns are listed).

With ``--audit`` (no GPU needed) the site also goes through the counting
backend of :mod:`hpc_profiler._audit`: per step and feature family, the
array-library calls (~ kernel launches on a GPU), the implicit syncs (CuPy
reading an output size on the host), the device->host and host->device
copies the same code would make on the GPU, printed beside the CPU seconds,
with PASS/FAIL against the budgets of issue 13 (<= 20 device->host copies per
site outside the cells watershed, <= 10,000 launches per site).
``--families`` restricts the families measured (a quick look at some of them).

Ratios are "other seconds / hpc_profiler seconds" (higher is better for us).
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

SINGLE_THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS")

import numpy as np  # noqa: E402  (the child sets the thread variables in its environment, before this)

ROOT = Path(__file__).resolve().parents[1]


def make_site(size: int, cells: int, seed: int, channels):
    """Raw images in [0, 1] and an illumination function per channel (from this site)."""
    from hpc_profiler.synth import synthesize_site

    s = synthesize_site(seed, size=size, n_cells=cells, channels=tuple(channels))
    images = {c: s.images[c].astype(np.float32) / 65535.0 for c in channels}
    return images


def illum_functions(cfg, images):
    from hpc_profiler import illumination

    acc = illumination.IllumAccumulator(cfg.channels, cfg.illumination.downsample)
    acc.add(images)
    ic = cfg.illumination
    return acc.functions(ic.median_filter_size, ic.robust_minimum_percentile)


def run_ours(cfg, images, illum, backend):
    """process_images once; returns (seg, feats, wall per stage, cpu per stage)."""
    from hpc_profiler import illumination, segmentation
    from hpc_profiler.pipeline import process_images

    c0, t0 = time.process_time(), time.perf_counter()
    seg, feats, wall = process_images(cfg, images, illum, backend)
    cpu_total, wall_total = time.process_time() - c0, time.perf_counter() - t0
    # process_images reports wall seconds per stage; its CPU seconds per stage
    # come from the same stage functions timed here once more
    bk = backend
    imgs = {ch: bk.asarray(images[ch], dtype=bk.xp.float32) for ch in cfg.channels}
    c0 = time.process_time()
    imgs = {ch: illumination.apply_illum(imgs[ch], bk.asarray(illum[ch], dtype=bk.xp.float32)) for ch in cfg.channels}
    bk.synchronize()
    c1 = time.process_time()
    segmentation.segment_site(imgs, cfg.segmentation, cfg.illumination.dna_background)
    bk.synchronize()
    c2 = time.process_time()
    cpu = {"illum_apply": c1 - c0, "segmentation": c2 - c1, "features": sum(feats.cpu_seconds.values())}
    wall = dict(wall)
    wall["total"] = wall_total
    cpu["total"] = cpu_total
    return seg, feats, wall, cpu


def _subset(lab, k: int):
    """Label image keeping labels 1..k (cp_measure needs labels 1..K without gaps)."""
    return np.where(lab <= k, lab, 0).astype(np.int32)


def cp_measure_seconds(images, labels, params, channels) -> dict:
    """CPU seconds per family of cp_measure on these label images (CPJUMP1 parameters)."""
    from cp_measure.bulk import get_core_measurements, get_correlation_measurements
    from cp_measure.core.measurecolocalization import get_correlation_overlap
    from cp_measure.multimask.measureobjectneighbors import D_ADJACENT, D_WITHIN, measureobjectneighbors

    from hpc_profiler.features import neighbor_distances

    core = get_core_measurements(legacy=True)
    corr = get_correlation_measurements()
    sec: dict = {}

    def timed(fam, fn):
        c0 = time.process_time()
        fn()
        sec[fam] = sec.get(fam, 0.0) + time.process_time() - c0

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
        if "Correlation" in params.families and len(channels) > 1:
            for a, b in itertools.combinations(channels, 2):
                x, y = images[a], images[b]
                timed("Correlation", lambda: (corr["pearson"](x, y, lab), corr["manders_fold"](x, y, lab, thr=thr),
                                              corr["rwc"](x, y, lab, thr=thr),
                                              get_correlation_overlap(x, y, lab, thr=thr)))
        if "Neighbors" in params.families:
            for d in neighbor_distances(obj, params):
                if d is None:
                    timed("Neighbors", lambda: measureobjectneighbors(lab, lab, distance_method=D_ADJACENT))
                else:
                    timed("Neighbors", lambda: measureobjectneighbors(lab, lab, distance_method=D_WITHIN, distance=d))
    return sec


def reference(images, labels, params, channels, n: int, k: int):
    """cp_measure seconds per family for all n objects, and a note on how they were obtained."""
    if k <= 0 or 2 * k >= n:
        return cp_measure_seconds(images, labels, params, channels), f"cp_measure timed on all {n} objects"
    t1 = cp_measure_seconds(images, {o: _subset(v, k) for o, v in labels.items()}, params, channels)
    t2 = cp_measure_seconds(images, {o: _subset(v, 2 * k) for o, v in labels.items()}, params, channels)
    out = {f: t1[f] + (t2.get(f, 0.0) - t1[f]) * (n - k) / k for f in t1}
    out = {f: max(v, t2.get(f, 0.0)) for f, v in out.items()}  # never below what 2K objects took
    return out, (f"cp_measure timed on the first {k} and {2 * k} of {n} objects and EXTRAPOLATED linearly "
                 f"to {n} (intercept + slope per family)")


def granularity_vs_skimage(cfg, images, illum, seg, cpu):
    """CPU seconds of Granularity as shipped and with skimage's reconstruction (same process).

    Returns ``(ours_s, skimage_s, bit_identical)``.
    """
    import skimage.morphology

    import hpc_profiler.features.granularity as G

    g = cfg.features.granularity
    imgs = {ch: np.clip(images[ch] / illum[ch], 0, 1).astype(np.float32) for ch in cfg.channels}
    labels = {o: np.asarray(cpu.to_numpy(getattr(seg, o.lower())), np.int32) for o in cfg.features.objects}
    n = max(int(lab.max()) for lab in labels.values())

    def run():
        c0 = time.process_time()
        out = G.measure_granularity_channels(
            imgs, labels, {o: n for o in labels}, spectrum_length=g.spectrum_length,
            subsample_size=g.subsample_size, image_sample_size=g.image_sample_size, element_size=g.element_size)
        return time.process_time() - c0, out

    def skimage_reconstruct(marker, mask, bk):
        out = np.empty_like(marker)
        for c in range(marker.shape[0]):
            out[c] = skimage.morphology.reconstruction(marker[c], mask[c], method="dilation", footprint=G.CROSS)
        return out

    ours_s, (a_obj, a_img) = run()
    shipped = G.reconstruct
    G.reconstruct = skimage_reconstruct
    try:
        ski_s, (b_obj, b_img) = run()
    finally:
        G.reconstruct = shipped
    same = a_img == b_img and all(
        np.array_equal(a_obj[o][k], b_obj[o][k], equal_nan=True) for o in a_obj for k in a_obj[o])
    return ours_s, ski_s, same


#: Budgets of issue 13 for one site on the GPU path.
D2H_BUDGET = 20
LAUNCH_BUDGET = 10_000


def run_audit(cfg, images, illum):
    """The site through the counting backend; returns the AuditCounter (sections per step/family)."""
    from hpc_profiler import illumination, segmentation
    from hpc_profiler._audit import AuditCounter, audit_backend
    from hpc_profiler.features import measure_site

    counter = AuditCounter()
    bk = audit_backend(counter)
    with counter.section("illum_apply"):
        imgs = {ch: bk.asarray(images[ch], dtype=bk.xp.float32) for ch in cfg.channels}
        imgs = {ch: illumination.apply_illum(imgs[ch], bk.asarray(illum[ch], dtype=bk.xp.float32))
                for ch in cfg.channels}
    with counter.section("segmentation"):
        seg = segmentation.segment_site(imgs, cfg.segmentation, cfg.illumination.dna_background)
    with counter.section("features: shared + assembly"):
        labels = {"Nuclei": seg.nuclei, "Cells": seg.cells, "Cytoplasm": seg.cytoplasm}
        measure_site(imgs, labels, cfg.features, cfg.channels, unfiltered=seg.unfiltered)
    return counter


def print_audit(counter, cfg, wall: dict, cput: dict, fam_cpu: dict) -> None:
    """The audit table beside the CPU seconds, and PASS/FAIL per budget."""
    from hpc_profiler._audit import counts_table

    order = ["illum_apply", "segmentation", "watershed", *cfg.features.families, "features: shared + assembly"]
    secs = {**{k: cput.get(k) for k in ("illum_apply", "segmentation")}, **fam_cpu}
    print(f"\nGPU audit (counting backend on the CPU; hpc_profiler._audit): per step / family")
    print(f"{'section':28s} {'cpu_s':>7s} {'launches':>9s} {'syncs':>7s} {'d2h':>6s} {'h2d':>6s}")
    for name, c in counts_table(counter, order):
        sec = secs.get(name)
        sec_s = f"{sec:7.3f}" if sec is not None else f"{'-':>7s}"
        print(f"{name:28s} {sec_s} {c.launches:9d} {c.syncs:7d} {c.d2h:6d} {c.h2d:6d}")
    tot = counter.total()
    print(f"{'TOTAL':28s} {cput.get('total', 0.0):7.3f} {tot.launches:9d} {tot.syncs:7d} {tot.d2h:6d} {tot.h2d:6d}")
    out_ws = counter.total(exclude=("watershed",))
    ok_copy = out_ws.d2h <= D2H_BUDGET
    ok_launch = tot.launches <= LAUNCH_BUDGET
    print(f"budget device->host copies outside the watershed: {out_ws.d2h} <= {D2H_BUDGET}: "
          f"{'PASS' if ok_copy else 'FAIL'}")
    print(f"budget launches per site: {tot.launches} <= {LAUNCH_BUDGET}: {'PASS' if ok_launch else 'FAIL'}")
    print(f"implicit syncs (data-sized outputs: boolean masks, nonzero, unique, bincount sizing; not in the "
          f"issue's budget): {out_ws.syncs} outside the watershed")
    print("launches count one per xp/ndi/ski call, ufunc, computing method or advanced index (scipy/"
          "scikit-image calls as one, a lower bound for their cuCIM twins); cpu_s from the run above")


def max_rel_diff(a, b) -> np.ndarray:
    """Per column: max |a - b| / max(|a|, |b|, 1e-12) over rows (NaN pairs ignored)."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    both_nan = np.isnan(a) & np.isnan(b)
    d = np.abs(a - b) / np.maximum(np.maximum(np.abs(a), np.abs(b)), 1e-12)
    d = np.where(both_nan, 0.0, d)
    d = np.where(np.isnan(d), np.inf, d)  # NaN on one side only
    return d.max(axis=0) if d.shape[0] else np.zeros(d.shape[1])


#: CellProfiler module -> the step or family of this benchmark it corresponds to
CP_MODULE_STEP = {
    "CorrectIlluminationCalculate": "illum_apply", "CorrectIlluminationApply": "illum_apply",
    "IdentifyPrimaryObjects": "segmentation", "IdentifySecondaryObjects": "segmentation",
    "IdentifyTertiaryObjects": "segmentation", "MeasureColocalization": "Correlation",
    "MeasureGranularity": "Granularity", "MeasureObjectIntensity": "Intensity",
    "MeasureObjectNeighbors": "Neighbors", "MeasureObjectIntensityDistribution": "RadialDistribution",
    "MeasureObjectSizeShape": "AreaShape", "MeasureTexture": "Texture",
}


def cellprofiler_seconds(exe: str, pipeline: Path, size: int, cells: int, seed: int, channels) -> dict:
    """CellProfiler itself on the same raw site, one thread: its own per-module seconds.

    The site's raw 16-bit channels are written as TIFFs with a ``load_data.csv`` and
    headless CellProfiler runs the pipeline (``-c -r -e imageio_reader``) in a child
    whose BLAS/OpenMP threads are limited to one. CellProfiler records the CPU seconds (``os.times``) of
    every module in its Image table (``ExecutionTime_<NN><Module>``); they are summed
    per step of this benchmark (``CP_MODULE_STEP``), so start-up, pipeline loading and
    the CSV export are not counted. The child's whole CPU time (``RUSAGE_CHILDREN``,
    start-up included) is returned beside them. Nothing here reaches a shell.
    """
    import csv
    import resource
    import tempfile

    import tifffile

    from hpc_profiler.synth import synthesize_site

    s = synthesize_site(seed, size=size, n_cells=cells, channels=tuple(channels))
    env = dict(os.environ)
    env.update({v: "1" for v in SINGLE_THREAD_ENV})
    with tempfile.TemporaryDirectory() as tmp:
        tin, tout = Path(tmp) / "in", Path(tmp) / "out"
        tin.mkdir()
        tout.mkdir()
        row = {"Metadata_Plate": "BENCH", "Metadata_Well": "A01", "Metadata_Site": "1"}
        for ch in channels:
            tifffile.imwrite(tin / f"site_{ch}.tif", np.asarray(s.images[ch], np.uint16))
            row[f"FileName_{ch}"] = f"site_{ch}.tif"
            row[f"PathName_{ch}"] = str(tin)
        with open(tin / "load_data.csv", "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(row))
            w.writeheader()
            w.writerow(row)
        cmd = [exe, "-c", "-r", "-e", "imageio_reader", "-p", str(pipeline), "-i", str(tin), "-o", str(tout)]
        r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        res = subprocess.run(cmd, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        if res.returncode != 0:
            raise RuntimeError(f"CellProfiler failed ({res.returncode}): {res.stderr[-2000:]}")
        tables = sorted(tout.glob("*Image.csv"))
        if not tables:
            raise RuntimeError(f"CellProfiler wrote no Image table in {tout}: {sorted(p.name for p in tout.iterdir())}")
        with open(tables[0], newline="") as fh:
            image_row = next(csv.DictReader(fh))
    modules: dict = {}
    for col, val in image_row.items():
        if col.startswith("ExecutionTime_"):
            name = col[len("ExecutionTime_"):].lstrip("0123456789")
            modules[name] = modules.get(name, 0.0) + float(val)
    steps: dict = {}
    for name, sec in modules.items():
        step = CP_MODULE_STEP.get(name, "other")
        steps[step] = steps.get(step, 0.0) + sec
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    return {"modules": modules, "steps": steps, "total": sum(modules.values()), "process_cpu": cpu,
            "process_wall": wall}


def single_thread_child(args) -> dict:
    """Run this script in a child with one BLAS/OpenMP thread; returns its JSON result."""
    env = dict(os.environ)
    env.update({v: "1" for v in SINGLE_THREAD_ENV})
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child-json", "--size", str(args.size),
           "--cells", str(args.cells), "--seed", str(args.seed), "--config", str(args.config)]
    if args.families:
        cmd += ["--families", args.families]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(ROOT / "configs" / "cpjump1.yaml"))
    ap.add_argument("--size", type=int, default=1080, help="site width/height (CPJUMP1: 1080)")
    ap.add_argument("--cells", type=int, default=220, help="mean number of nuclei of the synthetic site")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--ref-objects", type=int, default=8,
                    help="time cp_measure on K and 2K objects and extrapolate linearly (0: all objects)")
    ap.add_argument("--no-cp-measure", action="store_true")
    ap.add_argument("--no-single-thread", action="store_true", help="skip the one-thread child run")
    ap.add_argument("--no-granularity-reference", action="store_true",
                    help="skip granularity again with skimage.morphology.reconstruction (bit-identity check)")
    ap.add_argument("--audit", action="store_true",
                    help="also count launches and host copies per family as on a GPU (counting backend)")
    ap.add_argument("--families", default=None,
                    help="comma-separated feature families to measure (default: the config's)")
    ap.add_argument("--cellprofiler", default=None, metavar="EXE",
                    help="also run CellProfiler itself (e.g. VENV/bin/cellprofiler from "
                         "../shared/cellprofiler/install_cellprofiler.sh) on the same raw site, one thread")
    ap.add_argument("--cellprofiler-pipeline", default=str(ROOT.parent / "shared/cellprofiler/cpjump1_5ch.cppipe"),
                    help="pipeline for --cellprofiler (default: the CPJUMP1 pipeline in ../shared/cellprofiler)")
    ap.add_argument("--child-json", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    from hpc_profiler.backend import cpu_backend, gpu_available, gpu_backend
    from hpc_profiler.config import load_config

    cfg = load_config(args.config)
    cfg.device = "cpu"
    if args.families:
        fams = [f.strip() for f in args.families.split(",") if f.strip()]
        unknown = sorted(set(fams) - set(cfg.features.families))
        if unknown:
            ap.error(f"--families: unknown {unknown}; the config has {cfg.features.families}")
        cfg.features.families = fams
    images = make_site(args.size, args.cells, args.seed, cfg.channels)
    illum = illum_functions(cfg, images)
    cpu = cpu_backend()
    # the first site of a process also pays one-off costs (numba kernels loaded from their on-disk cache,
    # lazily imported SciPy/scikit-image submodules): timed apart, then the site again in steady state
    _, _, _, cold = run_ours(cfg, images, illum, cpu)
    if args.child_json:
        _, feats, wall, cput = run_ours(cfg, images, illum, cpu)
        print(json.dumps({"wall": wall, "cpu": cput, "fam_cpu": feats.cpu_seconds, "fam_wall": feats.seconds,
                          "cold_total": cold["total"]}))
        return 0

    seg, feats, wall, cput = run_ours(cfg, images, illum, cpu)
    n = int(feats.objects["Cells"].values.shape[0])
    cov = float((np.asarray(seg.cells) > 0).mean())
    print(f"site {args.size}x{args.size}, seed {args.seed}: {n} cells segmented ({cov:.0%} of the pixels in cells), "
          f"channels {cfg.channels}, objects {cfg.features.objects}")
    print(f"config {args.config} (device forced to cpu); machine {platform.machine()}, {os.cpu_count()} CPUs visible, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")

    one = None
    if not args.no_single_thread:
        one = single_thread_child(args)
        print("one-thread run: child process with " + ", ".join(f"{v}=1" for v in SINGLE_THREAD_ENV))

    ref, ref_note = None, None
    if not args.no_cp_measure:
        labels = {o: np.asarray(cpu.to_numpy(getattr(seg, o.lower())), np.int32) for o in cfg.features.objects}
        imgs = {ch: np.clip(images[ch] / illum[ch], 0, 1).astype(np.float32) for ch in cfg.channels}
        ref, ref_note = reference(imgs, labels, cfg.features, cfg.channels, n, args.ref_objects)
        print(ref_note)

    cp = None
    if args.cellprofiler:
        cp = cellprofiler_seconds(args.cellprofiler, Path(args.cellprofiler_pipeline), args.size, args.cells,
                                  args.seed, cfg.channels)
        print(f"CellProfiler ({args.cellprofiler}, {Path(args.cellprofiler_pipeline).name}) on the same raw site, "
              f"one thread: {cp['total']:.2f} s in its modules (ExecutionTime_*), process "
              f"{cp['process_cpu']:.1f} s CPU / {cp['process_wall']:.1f} s wall with start-up")

    gpu = None
    if gpu_available():
        gb = gpu_backend()
        run_ours(cfg, images, illum, gb)  # warm-up: kernels, memory pool
        gseg, gfeats, gwall, gcpu = run_ours(cfg, images, illum, gb)
        # features on the CPU's masks and corrected images, for a column-by-column comparison
        from hpc_profiler.features import measure_site

        gimgs = {ch: gb.asarray(np.clip(images[ch] / illum[ch], 0, 1).astype(np.float32)) for ch in cfg.channels}
        glabs = {o: gb.asarray(cpu.to_numpy(getattr(seg, o.lower()))) for o in cfg.features.objects}
        gunf = {o: gb.asarray(cpu.to_numpy(v)) for o, v in seg.unfiltered.items()}
        same = measure_site(gimgs, glabs, cfg.features, cfg.channels, unfiltered=gunf)
        gpu = (gseg, same, gwall, gfeats)
    else:
        print("GPU: not available here (hpc_profiler.backend.gpu_available() is False); GPU section skipped")

    head = f"\n{'step':20s} {'wall_s':>8s} {'cpu_s':>8s}"
    if one:
        head += f" {'cpu_1thr_s':>10s}"
    if ref:
        head += f" {'cp_measure_cpu_s':>16s} {'ratio':>7s}"
    if cp:
        head += f" {'cellprofiler_s':>14s} {'ratio':>7s}"
    if gpu:
        head += f" {'gpu_s':>8s} {'cpu/gpu':>8s} {'cpm/gpu':>8s}"
    print(head)

    def row(name, w, c, c1, r, g, k=None):
        line = f"{name:20s} {w:8.3f} {c:8.3f}"
        if one:
            line += f" {c1:10.3f}"
        if ref:
            line += f" {r:16.2f} {r / max(c1 if one else c, 1e-9):6.1f}x" if r is not None else f" {'-':>16s} {'':7s}"
        if cp:
            line += f" {k:14.2f} {k / max(c1 if one else c, 1e-9):6.1f}x" if k is not None else f" {'-':>14s} {'':7s}"
        if gpu:
            line += f" {g:8.3f} {w / max(g, 1e-9):7.1f}x"
            line += f" {r / max(g, 1e-9):7.1f}x" if r is not None else f" {'-':>8s}"
        print(line)

    cps = cp["steps"] if cp else {}
    for st in ("illum_apply", "segmentation"):
        row(st, wall[st], cput[st], one["cpu"][st] if one else 0, None, gpu[2][st] if gpu else 0, cps.get(st))
    for fam in cfg.features.families:
        row(f"  {fam}", feats.seconds.get(fam, 0.0), feats.cpu_seconds.get(fam, 0.0),
            one["fam_cpu"].get(fam, 0.0) if one else 0, ref.get(fam, 0.0) if ref else None,
            gpu[3].seconds.get(fam, 0.0) if gpu else 0, cps.get(fam))
    rtot = sum(ref.values()) if ref else None
    ktot = sum(v for k, v in cps.items() if k not in ("illum_apply", "segmentation", "other")) if cp else None
    row("features", wall["features"], cput["features"], one["cpu"]["features"] if one else 0, rtot,
        gpu[2]["features"] if gpu else 0, ktot)
    row("TOTAL", wall["total"], cput["total"], one["cpu"]["total"] if one else 0, rtot, gpu[2]["total"] if gpu else 0,
        cp["total"] if cp else None)
    print("ratio = cp_measure CPU s / hpc_profiler CPU s" + (" (one thread)" if one else "")
          + "; cp_measure's TOTAL is its features only (no illumination or segmentation)")
    print("features cpu = sum of the families' CPU seconds; TOTAL cpu = process_images as a whole "
          "(wall seconds are unreliable on a shared machine)")
    print(f"steady state: every column is the site's second run in its process; the first (cold) run took "
          f"{cold['total']:.2f} s CPU" + (f", {one['cold_total']:.2f} s in the one-thread child" if one else "")
          + " (numba kernels loaded from their cache, lazy SciPy/scikit-image imports: once per process)")
    if cp:
        print("cellprofiler_s = CellProfiler's own ExecutionTime_* of its modules for this site "
              "(CPU seconds, os.times, of a one-thread run; illum_apply row = CorrectIlluminationCalculate + Apply; "
              "TOTAL includes "
              f"{cps.get('other', 0.0):.2f} s of LoadData/export); ratio = CellProfiler s / hpc_profiler s"
              + (" (one thread)" if one else ""))
    if "Granularity" in cfg.features.families and not args.no_granularity_reference:
        g_ours, g_ski, g_same = granularity_vs_skimage(cfg, images, illum, seg, cpu)
        line = (f"Granularity again, same masks, this process: {g_ours:.2f} s CPU; with "
                f"skimage.morphology.reconstruction {g_ski:.2f} s ({g_ski / max(g_ours, 1e-9):.1f}x); "
                f"bit-identical: {g_same}")
        if ref and ref.get("Granularity"):
            line += (f"; cp_measure {ref['Granularity']:.2f} s (ratio {ref['Granularity'] / max(g_ours, 1e-9):.1f}x, "
                     f"with skimage's reconstruction {ref['Granularity'] / max(g_ski, 1e-9):.1f}x)")
        print(line)

    if gpu:
        gfeats = gpu[1]
        n_gpu = int(gpu[3].objects["Cells"].values.shape[0])
        print(f"\nGPU segmentation found {n_gpu} cells (CPU: {n}). CPU vs GPU features on the SAME (CPU) masks "
              "and images, largest relative difference per feature column:")
        for o, tab in feats.objects.items():
            gt = gfeats.objects[o]
            if gt.values.shape != tab.values.shape:
                print(f"  {o}: CPU {tab.values.shape[0]} objects, GPU {gt.values.shape[0]}: not compared")
                continue
            d = max_rel_diff(tab.values, gt.values)
            worst = np.argsort(-d)[:5]
            print(f"  {o}: {int((d > 1e-3).sum())} of {d.size} columns differ by > 1e-3; worst: "
                  + ", ".join(f"{tab.names[j]}={d[j]:.2g}" for j in worst))

    if args.audit:
        counter = run_audit(cfg, images, illum)
        src = one if one else {"cpu": cput, "fam_cpu": feats.cpu_seconds}
        print_audit(counter, cfg, wall, src["cpu"], src["fam_cpu"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
