#!/usr/bin/env python
"""RadialDistribution on the bench site: this checkout's radial.py vs a reference revision's, one thread.

    python scripts/bench_radial.py                 # reference: radial.py of git revision "main"
    python scripts/bench_radial.py --ref-rev f06f715 --repeat 5 --profile

The synthetic 1080^2 CPJUMP1-like site of ``scripts/bench_site.py`` is
segmented once (CPU backend) and its pixels grouped by object (outside the
timings, as ``measure_site`` shares them between families); then, in this one process with BLAS/OpenMP
limited to one thread (set before NumPy is imported), the whole
RadialDistribution family of the site (``radial_geometry`` once per object set,
``measure_radial_channels`` of all channels, or ``measure_radial_distribution`` per channel
where a revision has no ``measure_radial_channels``; 3 compartments x 5 channels) is
run with this checkout's ``hpc_profiler/features/radial.py`` and with the
reference revision's (loaded from ``git show REV:hpc_profiler/features/radial.py``
as a separate module), in ``--repeat`` interleaved (reference, ours) pairs. Printed: the best
CPU seconds of each, their ratio, the median of the pairs' ratios (steadier on a shared
machine), and whether every column is equal to the bit
(``numpy.array_equal`` with NaNs equal). ``--profile`` adds a cProfile of ours.
"""
from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ[_v] = "1"

import argparse  # noqa: E402
import importlib.util  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))


def load_reference(rev: str):
    src = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:hpc_profiler/features/radial.py"],
                         check=True, capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / "radial_reference.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location("radial_reference", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def object_sets(labels):
    """``ObjectPixels`` per object set, built outside the timings (as ``measure_site`` shares them)."""
    from hpc_profiler.features._objects import object_pixels

    return {o: object_pixels(lab, int(lab.max())) for o, lab in labels.items()}


def run_family(mod, labels, images, r, ops=None):
    out = {}
    ops = ops if ops is not None else object_sets(labels)
    for obj, lab in labels.items():
        n = int(lab.max())
        g = mod.radial_geometry(lab, n, bins=r.bins, scaled=r.scaled, max_radius=r.max_radius, objects=ops[obj])
        if hasattr(mod, "measure_radial_channels"):  # all channels at once, as the family runs
            cols = mod.measure_radial_channels(lab, n, images, bins=r.bins, scaled=r.scaled,
                                               max_radius=r.max_radius, geometry=g)
            out.update({f"{obj}_{k}": v for k, v in cols.items()})
            continue
        for c, img in images.items():
            cols = mod.measure_radial_distribution(lab, n, img, c, bins=r.bins, scaled=r.scaled,
                                                   max_radius=r.max_radius, geometry=g)
            out.update({f"{obj}_{k}": v for k, v in cols.items()})
    return out


def best_of(fn, labels, repeat: int) -> float:
    """Best CPU seconds of ``fn(ops)``, fresh ``ObjectPixels`` each time (their cached boxes not reused)."""
    best = float("inf")
    for _ in range(repeat):
        ops = object_sets(labels)
        c0 = time.process_time()
        fn(ops)
        best = min(best, time.process_time() - c0)
    return best


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ref-rev", default="main", help="git revision whose radial.py is the reference")
    ap.add_argument("--size", type=int, default=1080)
    ap.add_argument("--cells", type=int, default=220)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args()

    from bench_site import illum_functions, make_site

    import hpc_profiler.features.radial as ours
    from hpc_profiler.backend import cpu_backend
    from hpc_profiler.config import load_config
    from hpc_profiler.pipeline import process_images

    cfg = load_config(str(ROOT / "configs" / "cpjump1.yaml"))
    cfg.device = "cpu"
    cfg.features.families = ["RadialDistribution"]
    raw = make_site(args.size, args.cells, args.seed, cfg.channels)
    illum = illum_functions(cfg, raw)
    seg, _, _ = process_images(cfg, raw, illum, cpu_backend())
    labels = {o: np.asarray(getattr(seg, o.lower())) for o in cfg.features.objects}
    images = {c: np.clip(raw[c] / illum[c], 0, 1).astype(np.float32) for c in cfg.channels}
    r = cfg.features.radial
    ref = load_reference(args.ref_rev)
    print(f"site {args.size}^2 seed {args.seed}: objects " + ", ".join(f"{o} {int(v.max())}" for o, v in labels.items())
          + f"; channels {list(images)}; one thread; reference radial.py of {args.ref_rev}")

    a = run_family(ours, labels, images, r)  # warm-up (numba compile / cache load)
    b = run_family(ref, labels, images, r)
    same = sorted(a) == sorted(b) and all(np.array_equal(a[k], b[k], equal_nan=True) for k in a)
    differ = [k for k in a if k in b and not np.array_equal(a[k], b[k], equal_nan=True)]
    # interleaved (reference, ours) pairs: a shared machine's load changes between pairs,
    # less within one; the median of the pairs' ratios is the steadier figure
    pairs = [(best_of(lambda ops: run_family(ref, labels, images, r, ops), labels, 1),
              best_of(lambda ops: run_family(ours, labels, images, r, ops), labels, 1))
             for _ in range(args.repeat)]
    t_ref = min(p[0] for p in pairs)
    t_ours = min(p[1] for p in pairs)
    med = float(np.median([p[0] / p[1] for p in pairs]))
    print(f"RadialDistribution CPU s (best of {args.repeat}, interleaved): reference {t_ref:.3f}  ours {t_ours:.3f}  "
          f"ratio of the bests {t_ref / t_ours:.2f}, median ratio of the pairs {med:.2f}")
    print(f"{len(a)} columns, bit-identical to the reference: {same}" + (f" (differ: {differ[:5]})" if differ else ""))
    if args.profile:
        import cProfile
        import pstats

        ops = object_sets(labels)
        pr = cProfile.Profile()
        pr.enable()
        run_family(ours, labels, images, r, ops)
        pr.disable()
        pstats.Stats(pr).sort_stats("tottime").print_stats(15)
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
