#!/usr/bin/env python
"""Benchmark of the reduce stage: sites/s for 1 and 2 ranks vs pycytominer, and peak RSS per rank.

    python scripts/bench_reduce.py                  # default batch (short)
    python scripts/bench_reduce.py --wells 32 --sites 4 --cells 300 --features 200

Writes a seeded batch of site files (the generator of tests/test_reduce_mpi.py),
then measures, on the same files:

* hpc_profiler reduce in fresh processes, 1 and 2 ranks (``mpirun -n 1|2``):
  the whole reduction (read, aggregate, annotate, normalize, select, write);
  seconds from ``reduce_summary.json``, which excludes interpreter and MPI
  start-up, and the peak RSS of every rank.
* the aggregation part alone in this process (:func:`hpc_profiler.reduce.reduce_wells`),
* pycytominer: the same site files read into one single-cell table
  (:func:`sitefile.read_cells_table`) and ``pycytominer.aggregate(operation="median")``.

Memory: the batch is then made 4x larger (4x the wells, same cells per well);
the peak RSS of the ranks should stay flat, because a rank holds one well's
cells at a time, while the single-cell table pycytominer needs grows 4x.
Ratios are printed against pycytominer run in this same process; nothing is
asserted.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
MPI_ENV = {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}


def _generator():
    spec = importlib.util.spec_from_file_location("reduce_batch_gen", REPO / "tests" / "test_reduce_mpi.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def make(root: Path, args, wells: int, gen):
    from hpc_profiler.config import load_config

    root.mkdir(parents=True, exist_ok=True)
    chash = load_config(gen.write_config(root / "hash.yaml", root, root / "x.csv")).hash()
    cells, _, csv = gen.make_batch(root, chash, n_plates=args.plates, n_wells=wells, n_sites=args.sites,
                                   cells_per_site=args.cells, per_compartment=args.features // 3, seed=args.seed)
    cfg = gen.write_config(root / "config.yaml", root, csv)
    n_sites = len(list((root / "sites").glob("*/*/*.h5")))
    return cfg, n_sites, cells.shape


def run_reduce(cfg: Path, ranks: int) -> tuple[dict, float]:
    env = dict(os.environ, **MPI_ENV)
    for v in ("OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_SIZE"):
        env.pop(v, None)
    # Always through mpirun, also for 1 rank: Linux keeps ru_maxrss across fork+exec, so a rank
    # forked straight from this (large) process would report this process's peak RSS.
    cmd = ["mpirun", "-n", str(ranks), "--oversubscribe", sys.executable, "-m", "hpc_profiler.reduce", str(cfg)]
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return json.loads((cfg.parent / "profiles" / "reduce_summary.json").read_text()), wall


def in_process(cfg: Path):
    """Our aggregation alone, and pycytominer's read + aggregate, in this process."""
    import pycytominer

    from hpc_profiler.config import load_config
    from hpc_profiler.reduce import discover_site_files, group_wells, inspect_site_file, reduce_wells
    from hpc_profiler.sitefile import read_cells_table

    c = load_config(cfg)
    files = discover_site_files(c.out)
    t = time.perf_counter()
    keys, paths, _ = group_wells([inspect_site_file(p, c.hash()) for p in files])
    reduce_wells(list(zip(keys, paths)), "median")
    ours = time.perf_counter() - t
    t = time.perf_counter()
    cells = pd.concat([read_cells_table(p) for p in files], ignore_index=True)
    t_read = time.perf_counter() - t
    t = time.perf_counter()
    pycytominer.aggregate(cells, strata=["Metadata_Plate", "Metadata_Well"], operation="median",
                          compute_object_count=True, object_feature="ObjectNumber")
    t_agg = time.perf_counter() - t
    return ours, t_read, t_agg


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--plates", type=int, default=2)
    ap.add_argument("--wells", type=int, default=16, help="wells per plate")
    ap.add_argument("--sites", type=int, default=4, help="sites per well")
    ap.add_argument("--cells", type=int, default=150, help="mean cells per site")
    ap.add_argument("--features", type=int, default=300, help="features per cell (3 compartments)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-memory", action="store_true", help="skip the 4x batch (memory check)")
    ap.add_argument("--keep", help="keep the batches in this folder")
    args = ap.parse_args(argv)
    if shutil.which("mpirun") is None or importlib.util.find_spec("mpi4py") is None:
        raise SystemExit("bench_reduce: needs mpirun and mpi4py")
    gen = _generator()
    tmp = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench_reduce_"))
    try:
        cfg, n_sites, shape = make(tmp / "batch", args, args.wells, gen)
        print(f"batch: {args.plates} plates x {args.wells} wells x {args.sites} sites = {n_sites} sites, "
              f"{shape[0]} cells x {shape[1] - 4} features")
        s1, w1 = run_reduce(cfg, 1)
        s2, w2 = run_reduce(cfg, 2)
        ours, t_read, t_agg = in_process(cfg)
        mb = shape[0] * (shape[1] - 4) * 8 / 2**20  # pycytominer works on a float64 copy
        ref = t_read + t_agg
        rows = [
            ("hpc_profiler reduce, 1 rank (whole stage)", s1["seconds_total"]),
            ("hpc_profiler reduce, 2 ranks (whole stage)", s2["seconds_total"]),
            ("hpc_profiler aggregation only, 1 process", ours),
            ("pycytominer: read site files + aggregate", ref),
            ("pycytominer: aggregate only (table in memory)", t_agg),
        ]
        print(f"\n{'what':48s} {'seconds':>8s} {'sites/s':>9s} {'vs pycytominer read+aggregate':>30s}")
        for name, sec in rows:
            print(f"{name:48s} {sec:8.2f} {n_sites / sec:9.1f} {ref / sec:29.2f}x")
        print(f"(wall incl. interpreter and MPI start: 1 rank {w1:.2f} s, 2 ranks {w2:.2f} s; "
              f"2-rank speed-up {s1['seconds_total'] / s2['seconds_total']:.2f}x)")
        print(f"single-cell table of the batch (float64, what pycytominer aggregates): {mb:.0f} MiB")
        report = [("x1", args.wells, s1, s2, mb)]
        if not args.no_memory:
            cfg4, n4, shape4 = make(tmp / "batch4", args, 4 * args.wells, gen)
            s41, _ = run_reduce(cfg4, 1)
            s42, _ = run_reduce(cfg4, 2)
            mb4 = shape4[0] * (shape4[1] - 4) * 8 / 2**20
            report.append(("x4", 4 * args.wells, s41, s42, mb4))
        print("\npeak RSS per rank (resource.getrusage ru_maxrss), MiB:")
        print(f"{'batch':6s} {'wells':>6s} {'cells':>8s} {'max cells/well':>15s} {'1 rank':>8s} {'2 ranks':>16s} "
              f"{'single-cell table':>18s}")
        for tag, wells, a, b, mbt in report:
            mx = max(r["max_cells_per_well"] for r in a["per_rank"])
            rss2 = ", ".join(f"{r['peak_rss_mb']:.0f}" for r in b["per_rank"])
            print(f"{tag:6s} {wells * args.plates:6d} {a['cells']:8d} {mx:15d} {a['per_rank'][0]['peak_rss_mb']:8.0f} "
                  f"{rss2:>16s} {mbt:17.0f}M")
        if len(report) == 2:
            g = report[1][2]["per_rank"][0]["peak_rss_mb"] - report[0][2]["per_rank"][0]["peak_rss_mb"]
            print(f"4x the cells (same wells size): rank peak RSS grew by {g:.0f} MiB while the single-cell "
                  f"table grew by {report[1][4] - report[0][4]:.0f} MiB -> bounded by the largest well, not the plate")
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
