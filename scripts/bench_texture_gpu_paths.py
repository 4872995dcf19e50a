#!/usr/bin/env python
"""Time the GPU code paths of Texture (``measure_texture_channels(device_path=...)``) on the bench site.

    python scripts/bench_texture_gpu_paths.py                 # 1080 x 1080, ~220 cells, every path
    python scripts/bench_texture_gpu_paths.py --size 540 --cells 50 --repeat 2
    python scripts/bench_texture_gpu_paths.py --no-cost-model --repeat 3   # on a GPU: the timings only

The site is ``scripts/bench_site.py``'s (``make_site`` + its illumination
function, CPJUMP1 config), segmented once on the CPU; its three object sets
(Nuclei, Cells, Cytoplasm) and five channels go through each device path of
:data:`hpc_profiler.features.texture.DEVICE_PATHS` (scales 3, 5, 10; 256
levels), the channels' levels shared as ``measure_site`` shares them.

With a GPU (:func:`hpc_profiler.backend.gpu_available`) each path is warmed
up once, then timed ``--repeat`` times (wall seconds, stream synchronised;
the median is printed) with the ratio to the default path, and its columns
are compared with the CPU path's. Without one the paths run on the GPU twin
(NumPy through the counting backend of :mod:`hpc_profiler._audit`), the
output says so, and the seconds are those of NumPy, not of a GPU.

Either way a cost model of each path is printed from one run on the twin:
the audit's launches / implicit syncs / device->host copies, the bytes
sorted, the values added by ``bincount`` / ``ufunc.at`` (each one an atomic
add on a GPU) and, among them, those whose bin equals the previous value's
(the same address as the neighbouring thread: atomics that serialise; sorted
keys make most of them so), the bytes written by all the calls and the
largest single intermediate array. Asserts nothing.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

SORTS = {"sort", "argsort", "unique", "lexsort"}
SCATTERS = {"bincount", "at"}


class CostModel:
    """Tallies of one run on the counting backend (see the module docstring)."""

    def __init__(self):
        self.sorted_bytes = 0
        self.atomic_adds = 0
        self.same_address = 0
        self.written = 0
        self.peak = 0

    def record(self, fn, args, result):
        name = getattr(fn, "__name__", "")
        if name in SORTS and args and isinstance(args[0], np.ndarray):
            self.sorted_bytes += args[0].nbytes
        if name in SCATTERS:
            index = args[0] if name == "bincount" else args[1] if len(args) > 1 else None
            if isinstance(index, tuple):
                index = index[0]
            if isinstance(index, np.ndarray) and index.size:
                flat = index.ravel()
                self.atomic_adds += flat.size
                self.same_address += int(np.count_nonzero(flat[1:] == flat[:-1]))
        for r in result if isinstance(result, tuple) else (result,):
            if isinstance(r, np.ndarray):
                self.written += r.nbytes
                self.peak = max(self.peak, r.nbytes)


def cost_model(path, labels, n, images, scales, gray_levels):
    """(audit Counts, CostModel, twin CPU seconds) of one run of ``path`` on the counting backend."""
    from hpc_profiler import _audit
    from hpc_profiler.features import texture as tx
    from hpc_profiler.features._objects import object_pixels

    counter = _audit.AuditCounter()
    bk = _audit.audit_backend(counter)
    model = CostModel()
    original = _audit._call

    def counted(backend, fn, args, kwargs, **kw):
        result = original(backend, fn, args, kwargs, **kw)
        if backend.counter.depth == 0:
            model.record(fn, _audit._unwrap(args), _audit._unwrap(result))
        return result

    imgs = {c: bk.asarray(v) for c, v in images.items()}
    labs = {o: bk.asarray(v) for o, v in labels.items()}
    levels = tx.texture_levels(imgs, gray_levels)
    objs = {o: object_pixels(v, n) for o, v in labs.items()}
    _audit._call = counted
    try:
        c0 = time.process_time()
        with counter.section("Texture"):
            for o in labs:
                tx.measure_texture_channels(labs[o], n, imgs, scales=scales, gray_levels=gray_levels,
                                            levels=levels, objects=objs[o], device_path=path)
        seconds = time.process_time() - c0
    finally:
        _audit._call = original
    return counter.sections["Texture"], model, seconds


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=1080)
    ap.add_argument("--cells", type=int, default=220)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--paths", default=None, help="comma-separated subset of DEVICE_PATHS")
    ap.add_argument("--no-cost-model", action="store_true",
                    help="skip the cost model (its twin run of 'batched' takes ~1 min of CPU at 1080^2)")
    args = ap.parse_args(argv)

    import bench_site
    from hpc_profiler import illumination, segmentation
    from hpc_profiler.backend import cpu_backend, gpu_available, gpu_backend, to_numpy
    from hpc_profiler.config import load_config
    from hpc_profiler.features import texture as tx
    from hpc_profiler.features._objects import object_pixels

    cfg = load_config(str(ROOT / "configs" / "cpjump1.yaml"))
    t = cfg.features.texture
    scales, gray_levels = tuple(t.scales), int(t.gray_levels)
    raw = bench_site.make_site(args.size, args.cells, args.seed, cfg.channels)
    illum = bench_site.illum_functions(cfg, raw)
    cpu = cpu_backend()
    images = {c: np.asarray(illumination.apply_illum(raw[c].astype(np.float32), illum[c].astype(np.float32)),
                            np.float64) for c in cfg.channels}  # float64, as measure_site passes them
    seg = segmentation.segment_site({c: images[c].astype(np.float32) for c in cfg.channels}, cfg.segmentation,
                                    cfg.illumination.dna_background)
    labels = {o: np.asarray(cpu.to_numpy(getattr(seg, o.lower())), np.int32) for o in ("Nuclei", "Cells", "Cytoplasm")}
    n = max(int(v.max()) for v in labels.values())
    paths = [p.strip() for p in args.paths.split(",")] if args.paths else list(tx.DEVICE_PATHS)
    unknown = sorted(set(paths) - set(tx.DEVICE_PATHS))
    if unknown:
        ap.error(f"--paths: unknown {unknown}; known {tx.DEVICE_PATHS}")
    pixels = {o: int((v > 0).sum()) for o, v in labels.items()}
    print(f"site {args.size}x{args.size}, seed {args.seed}: {n} objects, labelled pixels {pixels}; channels "
          f"{list(cfg.channels)}, scales {list(scales)}, {gray_levels} levels; default path {tx.DEVICE_PATHS[0]!r}")

    levels_cpu = tx.texture_levels(images, gray_levels)
    ref = {o: tx.measure_texture_channels(labels[o], n, images, scales=scales, gray_levels=gray_levels,
                                          levels=levels_cpu) for o in labels}

    if not args.no_cost_model:
        print("\ncost model (one run on the GPU twin, the three object sets; no GPU needed):")
        print(f"{'path':8s} {'launches':>8s} {'syncs':>6s} {'d2h':>4s} {'sorted_MB':>10s} {'atomic_adds':>12s} "
              f"{'same_addr':>10s} {'written_MB':>11s} {'peak_MB':>8s} {'twin_cpu_s':>10s}")
    for p in [] if args.no_cost_model else paths:
        counts, m, secs = cost_model(p, labels, n, images, scales, gray_levels)
        print(f"{p:8s} {counts.launches:8d} {counts.syncs:6d} {counts.d2h:4d} {m.sorted_bytes / 1e6:10.1f} "
              f"{m.atomic_adds:12d} {m.same_address:10d} {m.written / 1e6:11.1f} {m.peak / 1e6:8.1f} {secs:10.2f}")

    if gpu_available():
        bk = gpu_backend()
        where = "GPU"
    else:
        from hpc_profiler._audit import audit_backend

        bk = audit_backend()
        where = "GPU twin on the CPU (NO GPU here: NumPy seconds, not a GPU's)"
    imgs = {c: bk.asarray(v) for c, v in images.items()}
    labs = {o: bk.asarray(v) for o, v in labels.items()}
    levels = tx.texture_levels(imgs, gray_levels)
    objs = {o: object_pixels(v, n) for o, v in labs.items()}

    def run(p):
        return {o: tx.measure_texture_channels(labs[o], n, imgs, scales=scales, gray_levels=gray_levels,
                                               levels=levels, objects=objs[o], device_path=p) for o in labs}

    print(f"\ntimed on: {where}; median of {args.repeat} after one warm-up, the three object sets")
    timing = {}
    for p in paths:
        got = run(p)  # warm-up (kernels, memory pool)
        bk.synchronize()
        worst = 0.0
        for o, cols in got.items():
            for k, v in cols.items():
                a, b = ref[o][k], np.asarray(to_numpy(v))
                ok = ~(np.isnan(a) | np.isnan(b))
                if (np.isnan(a) != np.isnan(b)).any():
                    worst = float("inf")
                elif ok.any():
                    worst = max(worst, float(np.max(np.abs(a[ok] - b[ok]) / np.maximum(np.abs(a[ok]), 1e-12))))
        secs = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            run(p)
            bk.synchronize()
            secs.append(time.perf_counter() - t0)
        timing[p] = statistics.median(secs)
        print(f"  {p:8s} {timing[p]:8.3f} s   largest relative difference to the CPU path {worst:.2g}")
    base = timing.get(tx.DEVICE_PATHS[0])
    if base:
        print("  ratio path / default: " + ", ".join(f"{p} {timing[p] / base:.2f}" for p in paths))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
