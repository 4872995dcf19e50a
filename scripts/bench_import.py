#!/usr/bin/env python
"""Benchmark of the CellProfiler import: import + reduce of >= 1 million CellProfiler rows, rows/s vs pycytominer.

    python scripts/bench_import.py                      # default: 1,013,760 rows (384 wells x 4 sites)
    python scripts/bench_import.py --wells 96 --sites 2  # shorter

Writes seeded synthetic CellProfiler ExportToSpreadsheet output, one folder per
site as Distributed-CellProfiler writes it (``<plate>/analysis/<plate>-<well>-<site>/``
with ``Image.csv``, ``Cells.csv``, ``Cytoplasm.csv``, ``Nuclei.csv``; the
bookkeeping columns ``ImageNumber``, ``ObjectNumber``, ``Parent_*``,
``Children_*``, ``Location_*``, ``Number_Object_Number`` and ``--features``
feature columns per compartment), then measures in fresh processes
(``mpirun -n R``, or one plain process when mpirun is missing):

* **large plate** (``--wells`` x ``--sites`` sites, ``--cells`` cells per site,
  3 rows per cell): ``hpc-profiler import cellprofiler`` then ``reduce``, 1 and
  2 ranks; rows/s = CellProfiler rows / (import + reduce seconds from their
  summaries, which exclude interpreter start-up); peak RSS of every rank.
* **small plate** (``--small-wells`` wells, the same sites and cells per well):
  the same with 1 rank, so the peak RSS per rank can be compared across plate
  sizes (it should not grow with the plate: a rank holds one site at a time).
* **pycytominer 1.7.1** on the small plate only (its ``SingleCells`` merges all
  single cells of a plate in memory; the large plate's merged table would not
  fit this shared 2-core machine next to the other runs): the small plate
  loaded into a cytominer-database style SQLite (load not timed), then
  ``SingleCells.merge_single_cells`` + ``pycytominer.aggregate(median)``, in a
  fresh process with its peak RSS; and our import + reduce of that same SQLite
  file, 1 rank, for the like-for-like ratio.

* with ``--pycytominer-large``: the same comparison on the large plate as well
  (its SQLite, pycytominer's peak RSS then grows with the plate; ours does not).

Ratios are against the pycytominer run of this same invocation; nothing is
asserted. Timings on a shared machine are noisy.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
MPI_ENV = {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}
COMPARTMENTS = ("Cells", "Cytoplasm", "Nuclei")
ROWS = "ABCDEFGHIJKLMNOP"


# --------------------------------------------------------------------------- data
def well_name(i: int) -> str:
    return f"{ROWS[(i // 24) % 16]}{i % 24 + 1:02d}"


def feature_columns(n: int) -> list[str]:
    kinds = ["AreaShape_Area", "AreaShape_Eccentricity"] + [
        f"Intensity_{m}_{ch}" for m in ("MeanIntensity", "MedianIntensity", "StdIntensity", "MaxIntensity")
        for ch in ("DNA", "ER", "RNA", "AGP", "Mito")
    ] + [f"Texture_Contrast_{ch}_{s}_00_256" for ch in ("DNA", "ER", "RNA", "AGP", "Mito") for s in (3, 5, 10)]
    kinds += [f"Granularity_{k}_{ch}" for k in range(1, 17) for ch in ("DNA", "ER", "RNA", "AGP", "Mito")]
    return kinds[:n]


def write_plate(root: Path, plate: str, wells: int, sites: int, cells: int, features: int, seed: int) -> int:
    """DCP-style per-site CSV folders of one plate; returns the number of CellProfiler rows written."""
    rng = np.random.default_rng(seed)
    feats = feature_columns(features)
    rows = 0
    number = 0
    for w in range(wells):
        well = well_name(w)
        shift = rng.normal(0, 0.5, size=features)
        for s in range(1, sites + 1):
            number += 1
            d = root / plate / "analysis" / f"{plate}-{well}-{s}"
            d.mkdir(parents=True, exist_ok=True)
            n = int(rng.integers(int(cells * 0.8), int(cells * 1.2) + 1))
            obj = np.arange(1, n + 1)
            pd.DataFrame({"ImageNumber": [number], "Metadata_Plate": [plate], "Metadata_Well": [well],
                          "Metadata_Site": [s], "Count_Cells": [n], "Count_Nuclei": [n], "Count_Cytoplasm": [n]}
                         ).to_csv(d / "Image.csv", index=False)
            loc = rng.uniform(0, 1080, size=(n, 2))
            for comp in COMPARTMENTS:
                df = pd.DataFrame({"ImageNumber": number, "ObjectNumber": obj})
                if comp == "Cells":
                    df["Children_Cytoplasm_Count"] = 1
                    df["Parent_Nuclei"] = obj
                elif comp == "Cytoplasm":
                    df["Parent_Cells"] = obj
                    df["Parent_Nuclei"] = obj
                else:
                    df["Children_Cells_Count"] = 1
                df["Location_Center_X"], df["Location_Center_Y"] = loc[:, 0], loc[:, 1]
                df["Number_Object_Number"] = obj
                vals = rng.normal(size=(n, features)) + shift
                vals[:, 0] = np.round(np.abs(vals[:, 0]) * 400 + 100)  # an integer column, as AreaShape_Area is
                df = pd.concat([df, pd.DataFrame(vals, columns=feats)], axis=1)
                df.to_csv(d / f"{comp}.csv", index=False, float_format="%.9g")
                rows += n
    return rows


def build_sqlite(plate_dir: Path, path: Path) -> Path:
    """cytominer-database layout of a plate's site folders (:func:`cpimport.write_cytominer_sqlite`)."""
    from hpc_profiler.cpimport import write_cytominer_sqlite

    return write_cytominer_sqlite(sorted(p for p in (plate_dir / "analysis").iterdir() if p.is_dir()), path,
                                  COMPARTMENTS)


def _launcher(ranks: int) -> list[str]:
    mpirun = shutil.which("mpirun")
    if mpirun is None:
        if ranks > 1:
            return []
        return [sys.executable]
    return [mpirun, "-n", str(ranks), "--oversubscribe", sys.executable]


def run_ours(src: Path, out: Path, ranks: int) -> dict | None:
    launcher = _launcher(ranks)
    if not launcher:
        return None
    out.mkdir(parents=True, exist_ok=True)
    cfg = out / "config.yaml"
    cfg.write_text(f"output_dir: {out}\nreduce:\n  normalize_samples: all\n")
    env = dict(os.environ, **MPI_ENV)
    extra = [] if "mpirun" in launcher[0] else ["--no-mpi"]
    for cmd in (["-m", "hpc_profiler.cpimport", str(src), str(cfg), "-q", *extra],
                ["-m", "hpc_profiler.reduce", str(cfg), *extra]):
        subprocess.run(launcher + cmd, check=True, env=env, capture_output=True, text=True)
    imp = json.loads((out / "import" / "import_summary.json").read_text())
    red = json.loads((out / "profiles" / "reduce_summary.json").read_text())
    return {
        "ranks": ranks,
        "rows": imp["rows_read"],
        "cells": imp["cells"],
        "sites": imp["sites_written"],
        "import_s": imp["seconds_total"],
        "reduce_s": red["seconds_total"],
        "peak_import_mb": [r["peak_rss_mb"] for r in imp["per_rank"]],
        "peak_reduce_mb": [r["peak_rss_mb"] for r in red["per_rank"]],
        "wells": pd.read_parquet(out / "profiles" / "well_aggregated.parquet"),
    }


PCM_CHILD = r"""
import json, resource, sys, time
import pycytominer
from pycytominer.cyto_utils.cells import SingleCells
db, feats_path, out = sys.argv[1:4]
feats = json.load(open(feats_path))
t0 = time.perf_counter()
sc = SingleCells(sql_file=f"sqlite:///{db}", strata=["Image_Metadata_Plate", "Image_Metadata_Well"],
                 image_cols=["TableNumber", "ImageNumber", "Image_Metadata_Site"],
                 fields_of_view_feature="Image_Metadata_Site")
cells = sc.merge_single_cells()
wells = pycytominer.aggregate(cells, strata=["Image_Metadata_Plate", "Image_Metadata_Well"], features=feats,
                              operation="median")
sec = time.perf_counter() - t0
wells.to_parquet(out)
print(json.dumps({"seconds": sec, "cells": len(cells),
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}))
"""


def run_pycytominer(db: Path, feats: list[str], tmp: Path) -> dict:
    fp = tmp / "features.json"
    fp.write_text(json.dumps(feats))
    out = tmp / "pcm_wells.parquet"
    proc = subprocess.run([sys.executable, "-c", PCM_CHILD, str(db), str(fp), str(out)], check=True,
                          capture_output=True, text=True)
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    res["wells"] = pd.read_parquet(out)
    return res


def max_rel_diff(ours: pd.DataFrame, ref: pd.DataFrame, feats) -> float:
    ref = ref.rename(columns={"Image_Metadata_Plate": "Metadata_Plate", "Image_Metadata_Well": "Metadata_Well"})
    key = ["Metadata_Plate", "Metadata_Well"]
    a = ours.sort_values(key)[feats].to_numpy(float)
    b = ref.astype({"Metadata_Plate": str}).sort_values(key)[feats].to_numpy(float)
    scale = np.maximum(np.nanmax(np.abs(b), axis=0), 1e-300)  # relative to each feature's largest median
    return float(np.nanmax(np.abs(a - b) / scale))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    ap.add_argument("--wells", type=int, default=384, help="wells of the large plate")
    ap.add_argument("--small-wells", type=int, default=24, help="wells of the small plate (also pycytominer's)")
    ap.add_argument("--sites", type=int, default=4, help="sites per well")
    ap.add_argument("--cells", type=int, default=220, help="mean cells per site")
    ap.add_argument("--features", type=int, default=30, help="feature columns per compartment")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", help="keep the data in this folder (default: a temporary one)")
    ap.add_argument("--pycytominer-large", action="store_true",
                    help="also run pycytominer (and ours on the same SQLite) on the large plate")
    args = ap.parse_args(argv)

    tmp = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench_import_"))
    tmp.mkdir(parents=True, exist_ok=True)
    try:
        t0 = time.perf_counter()
        rows_large = write_plate(tmp / "large", "PLATE-L", args.wells, args.sites, args.cells, args.features, args.seed)
        rows_small = write_plate(tmp / "small", "PLATE-S", args.small_wells, args.sites, args.cells, args.features,
                                 args.seed + 1)
        print(f"data: large plate {args.wells} wells x {args.sites} sites, {rows_large:,} CellProfiler rows; "
              f"small plate {args.small_wells} wells, {rows_small:,} rows; {args.features} features/compartment "
              f"(written in {time.perf_counter() - t0:.0f} s)")
        db = build_sqlite(tmp / "small" / "PLATE-S", tmp / "PLATE-S.sqlite")

        runs = {}
        runs["large, 1 rank"] = run_ours(tmp / "large", tmp / "out_l1", 1)
        runs["large, 2 ranks"] = run_ours(tmp / "large", tmp / "out_l2", 2)
        runs["small, 1 rank"] = run_ours(tmp / "small", tmp / "out_s1", 1)
        runs["small SQLite, 1 rank"] = run_ours(db, tmp / "out_q1", 1)
        feats = [c for c in runs["small SQLite, 1 rank"]["wells"].columns if not c.startswith("Metadata_")]
        pcm = run_pycytominer(db, feats, tmp)
        pcm_large = None
        if args.pycytominer_large:
            db_large = build_sqlite(tmp / "large" / "PLATE-L", tmp / "PLATE-L.sqlite")
            runs["large SQLite, 1 rank"] = run_ours(db_large, tmp / "out_ql1", 1)
            pcm_large = run_pycytominer(db_large, feats, tmp)

        print()
        print(f"{'run':<24} {'rows':>10} {'import s':>9} {'reduce s':>9} {'rows/s':>10}  peak RSS per rank, MiB")
        for name, r in runs.items():
            if r is None:
                print(f"{name:<24} (skipped: mpirun not on PATH)")
                continue
            sec = r["import_s"] + r["reduce_s"]
            peaks = ", ".join(f"{a:.0f}/{b:.0f}" for a, b in zip(r["peak_import_mb"], r["peak_reduce_mb"]))
            print(f"{name:<24} {r['rows']:>10,} {r['import_s']:>9.1f} {r['reduce_s']:>9.1f} {r['rows'] / sec:>10,.0f}"
                  f"  import/reduce {peaks}")
        pcms = {"small": pcm, "large": pcm_large}
        for plate, p in pcms.items():
            if p is None:
                continue
            rows = 3 * p["cells"]
            print(f"{'pycytominer, ' + plate + ' SQLite':<24} {rows:>10,} {p['seconds']:>9.1f} {'':>9} "
                  f"{rows / p['seconds']:>10,.0f}  {p['peak_mb']:.0f} (one process)")
        if pcm_large is None:
            print("(pycytominer runs on the small plate only unless --pycytominer-large: SingleCells merges a "
                  "plate's single cells in one table)")
        print()
        for plate, p in pcms.items():
            if p is None:
                continue
            q = runs[f"{plate} SQLite, 1 rank"]
            ours_rate = q["rows"] / (q["import_s"] + q["reduce_s"])
            rate = 3 * p["cells"] / p["seconds"]
            print(f"{plate} plate, same SQLite, 1 rank vs pycytominer SingleCells+aggregate: {ours_rate / rate:.2f}x "
                  f"rows/s; peak RSS {max(q['peak_import_mb'] + q['peak_reduce_mb']):.0f} vs {p['peak_mb']:.0f} MiB; "
                  f"max relative difference of the well medians {max_rel_diff(q['wells'], p['wells'], feats):.1e} "
                  f"(site files float32)")
        l1, l2, s1 = runs["large, 1 rank"], runs["large, 2 ranks"], runs["small, 1 rank"]
        if l2 is not None:
            t1, t2 = l1["import_s"] + l1["reduce_s"], l2["import_s"] + l2["reduce_s"]
            print(f"large plate, 2 ranks vs 1: {t1 / t2:.2f}x (2 cores shared with other work)")
        grow = rows_large / rows_small
        print(f"peak RSS per rank, large vs small plate ({grow:.0f}x the rows): import "
              f"{max(l1['peak_import_mb']):.0f} vs {max(s1['peak_import_mb']):.0f} MiB, reduce "
              f"{max(l1['peak_reduce_mb']):.0f} vs {max(s1['peak_reduce_mb']):.0f} MiB; pycytominer on the small "
              f"plate alone: {pcm['peak_mb']:.0f} MiB")
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
