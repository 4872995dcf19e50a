#!/usr/bin/env python
"""Benchmark AreaShape's numba kernels (CPU path) against the whole-array versions they replaced.

One synthetic CPJUMP1-like site (``hpc_profiler.synth.synthesize_site``,
1080 x 1080, ~220 cells; Nuclei, Cells, Cytoplasm), both implementations in
this process on the same objects, one thread (set ``OMP_NUM_THREADS=1`` for
the project's one-core figure). Per part, CPU seconds (best of ``--repeat``)
of the whole-array NumPy version kept in :mod:`hpc_profiler.features.shape`
(``perimeters`` + ``euler_numbers``, ``radii_distances``, ``convex_hulls`` +
``feret_diameters`` + ``minimum_enclosing_circles`` + ``convex_areas``) and of
the CPU path's kernels, their ratio (higher is better for the kernels), and
whether the two give the same bits; the Zernike kernel beside its device twin
``_zernike_moments_device`` run on NumPy (a check of equal bits: the twin is
written for a GPU's launch count, not for NumPy's speed, and is not what the
CPU ran before); then ``measure_areashape`` as a whole.

    python scripts/bench_areashape_kernels.py [--size 1080] [--cells 220] [--repeat 3]
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from hpc_profiler.features import shape
from hpc_profiler.features._objects import centroids, object_pixels, row_extremes
from hpc_profiler.synth import synthesize_site


def _best(fn, repeat: int):
    out, best = None, float("inf")
    for _ in range(repeat):
        c = time.process_time()
        out = fn()
        best = min(best, time.process_time() - c)
    return best, out


def _same(a, b) -> bool:
    a = a if isinstance(a, (tuple, list)) else (a,)
    b = b if isinstance(b, (tuple, list)) else (b,)
    return all(np.array_equal(np.asarray(x), np.asarray(y), equal_nan=True) for x, y in zip(a, b))


def array_parts(lab, op, n, degree):
    """The whole-array versions, part by part (their outputs in the kernels' layout)."""
    cy, cx = centroids(op)
    eo, ey, exmin, exmax = row_extremes(op)

    def hulls():
        hobj, hy, hx = shape.convex_hulls(np.concatenate([eo, eo]), np.concatenate([ey, ey]).astype(float),
                                          np.concatenate([exmin, exmax]).astype(float), n, center=(cy, cx))
        return (*shape.feret_diameters(hobj, hy, hx, n), *shape.minimum_enclosing_circles(hobj, hy, hx, n),
                shape.convex_areas(op))

    return {
        "perimeter + Euler": lambda: (shape.perimeters(lab, n), shape.euler_numbers(lab, n)),
        "radii transform": lambda: shape.radii_distances(op),
        "hulls, Feret, circle, ConvexArea": hulls,
    }


def kernel_parts(lab, op, n, degree):
    """The CPU path's kernels, part by part."""
    ymin, xmin, ymax, xmax = op.bbox
    cy, cx = centroids(op)
    eo, ey, exmin, exmax = row_extremes(op)
    lut = np.zeros(50)
    for k, v in shape._PERIMETER_WEIGHTS.items():
        lut[k] = v
    coefs = np.asarray(shape._EULER_COEFS_8, dtype=np.float64)

    def perim_euler():
        p, e = np.zeros(n), np.zeros(n)
        shape._perimeter_euler_kernel(np.ascontiguousarray(lab), n, lut, coefs, p, e)
        return p, e

    def hulls():
        rcount = np.bincount(eo, minlength=n)[:n].astype(np.int64)
        rstart = np.cumsum(rcount) - rcount
        width = max(3, 2 * int(rcount.max()))
        hy, hx = np.full((n, width), np.nan), np.full((n, width), np.nan)
        hn = np.zeros(n, dtype=np.int64)
        fmin, fmax, area = np.empty(n), np.empty(n), np.empty(n)
        shape._hull_geometry(rstart, rcount, ey, exmin, exmax, cy, cx, ymin, ymax, float(op.shape[1]),
                             hy, hx, hn, fmin, fmax, area)
        m = max(3, int(hn.max()))
        return (fmin, fmax, *shape._enclosing_circles_padded(hy[:, :m], hx[:, :m], hn), area)

    return {
        "perimeter + Euler": perim_euler,
        "radii transform": lambda: shape._radii_host(op, None),
        "hulls, Feret, circle, ConvexArea": hulls,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=1080)
    ap.add_argument("--cells", type=int, default=220)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)
    site = synthesize_site(0, args.size, args.cells)
    nuclei = site.nuclei.astype(np.int32)
    cells = site.cells.astype(np.int32)
    labels = {"Nuclei": nuclei, "Cells": cells, "Cytoplasm": np.where(nuclei > 0, 0, cells).astype(np.int32)}
    n = int(cells.max())
    degree = 9
    ops = {o: object_pixels(lab, n) for o, lab in labels.items()}
    # warm-up: numba's first call in a process loads its cache (or compiles)
    shape.measure_areashape(labels["Nuclei"], n, objects=ops["Nuclei"])
    print(f"site {args.size}x{args.size}: {n} objects x {len(labels)} object sets; CPU seconds, best of {args.repeat}")
    print(f"{'part':36s} {'array_s':>8s} {'kernel_s':>8s} {'ratio':>6s}  same bits")
    tot_a = tot_k = 0.0
    for part in ("perimeter + Euler", "radii transform", "hulls, Feret, circle, ConvexArea", "Zernike (degree 9)"):
        ta = tk = 0.0
        same = True
        for o, lab in labels.items():
            op = ops[o]
            if part.startswith("Zernike"):
                _, (mcy, mcx, mr) = shape._areashape_host(lab, op, None)
                a_fn = lambda: list(shape._zernike_moments_device(op, mcy, mcx, mr, degree).values())  # noqa: E731
                k_fn = lambda: list(shape.zernike_moments(op, mcy, mcx, mr, degree).values())  # noqa: E731
            else:
                a_fn = array_parts(lab, op, n, degree)[part]
                k_fn = kernel_parts(lab, op, n, degree)[part]
            t1, a = _best(a_fn, args.repeat)
            t2, k = _best(k_fn, args.repeat)
            ta, tk = ta + t1, tk + t2
            same &= _same(a, k)
        if part.startswith("Zernike"):
            print(f"{'parts above together':36s} {tot_a:8.3f} {tot_k:8.3f} {tot_a / max(tot_k, 1e-9):6.1f}")
            print(f"{'Zernike: device twin on NumPy':36s} {ta:8.3f} {tk:8.3f} {'-':>6s}  {'yes' if same else 'NO'}")
            continue
        tot_a, tot_k = tot_a + ta, tot_k + tk
        print(f"{part:36s} {ta:8.3f} {tk:8.3f} {ta / max(tk, 1e-9):6.1f}  {'yes' if same else 'NO'}")
    t, _ = _best(lambda: [shape.measure_areashape(lab, n, objects=ops[o]) for o, lab in labels.items()], args.repeat)
    print(f"measure_areashape, all object sets: {t:.3f} s CPU (object_pixels excluded, as in measure_site)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
