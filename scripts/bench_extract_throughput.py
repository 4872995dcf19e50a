#!/usr/bin/env python
"""End-to-end extract throughput: sites per second in steady state, TIFF to HDF5.

    python scripts/bench_extract_throughput.py                       # 16 sites of 1080 px, device auto
    python scripts/bench_extract_throughput.py --device cpu --sites 4 --size 540

A synthetic CPJUMP1-like plate (``hpc_profiler.synth.generate_batch``: 16-bit
Phenix TIFFs and a LoadData CSV, ``--cells`` cells per site) goes through the
real extract stage body, :func:`hpc_profiler.orchestrate.run_extract_range`,
in this process: read the 5 TIFFs -> divide by the plate's illumination
function (computed first by the illum stage) -> segmentation -> features ->
atomic HDF5 site file -> ledger record. The per-site start and end times come
from the stage's own work log. Printed: seconds per site, and sites/s in steady
state, i.e. over the sites after the first ``--warmup`` (which pay for
compilation, caches and the GPU's memory pool), from the end of the last
warm-up site to the end of the last site.

The issue's GPU target is >= 5 sites/s on one GPU; ``scripts/gpu_check.sh``
runs this on the GPU. The reference printed beside it is the same run on the
CPU backend when ``--compare-cpu`` is given (same sites, same process).
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def make_config(out: Path, device: str, sites: int, size: int, cells: int):
    """The CPJUMP1 config pointed at a synthetic plate of ``sites`` sites under ``out``."""
    import yaml

    from hpc_profiler.config import from_dict

    data = yaml.safe_load((ROOT / "configs" / "cpjump1.yaml").read_text())
    data["name"] = "throughput"
    data["device"] = device
    data["output_dir"] = str(out / "output")
    data["input"] = {"loaddata_csv": str(out / "synth" / "load_data.csv"),
                     "well_metadata_csv": str(out / "synth" / "well_metadata.csv")}
    data["synth"] = {"modalities": ["compound"], "replicate_plates": 1, "wells": sites,
                     "sites_per_well": 1, "size": size, "cells_per_site": cells, "seed": 0}
    data["executor"] = {"kind": "local", "sites_per_task": sites}
    return from_dict(data, where="bench_extract_throughput")


def run(device: str, sites: int, size: int, cells: int, warmup: int, keep: Path | None) -> dict:
    from hpc_profiler import orchestrate
    from hpc_profiler.layout import Layout
    from hpc_profiler.synth import generate_batch

    tmp = Path(tempfile.mkdtemp(prefix=f"throughput_{device}_", dir=keep))
    cfg = make_config(tmp, device, sites, size, cells)
    t0 = time.perf_counter()
    generate_batch(cfg.synth, tmp / "synth", cfg.channels)
    t_synth = time.perf_counter() - t0
    manifest = orchestrate.load_or_build_manifest(cfg, rebuild=True)
    t0 = time.perf_counter()
    for plate in orchestrate.plates_of(manifest):
        orchestrate.run_illum_plate(cfg, orchestrate.manifest_path(cfg), plate)
    t_illum = time.perf_counter() - t0
    t0 = time.perf_counter()
    counts = orchestrate.run_extract_range(cfg, orchestrate.manifest_path(cfg), 0, len(manifest), batch="bench")
    wall = time.perf_counter() - t0
    recs = sorted((r for r in orchestrate.read_worklog(cfg, "extract") if r.get("status") == "done"),
                  key=lambda r: r["end"])
    if counts.get("failed") or len(recs) != len(manifest):
        raise SystemExit(f"{device}: {counts} - every site must be done for a throughput figure "
                         f"(failures under {Layout.of(cfg).failures_dir('extract')})")
    per_site = [r["end"] - r["start"] for r in recs]
    w = min(warmup, len(recs) - 1)
    steady = (len(recs) - w) / (recs[-1]["end"] - recs[w - 1]["end"]) if w >= 1 else len(recs) / wall
    if keep is None:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"device": device, "sites": len(recs), "synth_s": t_synth, "illum_s": t_illum, "wall_s": wall,
            "per_site": per_site, "steady_sites_per_s": steady, "warmup": w}


def report(r: dict) -> None:
    ps = r["per_site"]
    print(f"{r['device']:>4s}: {r['sites']} sites, extract wall {r['wall_s']:.2f} s "
          f"(synth {r['synth_s']:.1f} s, illum {r['illum_s']:.1f} s, not counted); "
          f"seconds per site: first {ps[0]:.2f}, median {sorted(ps)[len(ps) // 2]:.3f}, max {max(ps):.3f}")
    print(f"{r['device']:>4s}: steady state after {r['warmup']} warm-up site(s): "
          f"{r['steady_sites_per_s']:.2f} sites/s")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "gpu"])
    ap.add_argument("--sites", type=int, default=16)
    ap.add_argument("--size", type=int, default=1080)
    ap.add_argument("--cells", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--compare-cpu", action="store_true", help="also run the CPU backend on the same sites")
    ap.add_argument("--keep", type=Path, default=None, help="write under this folder and keep the outputs")
    args = ap.parse_args(argv)
    from hpc_profiler.backend import get_backend

    device = get_backend(args.device).name
    print(f"extract throughput: {args.sites} synthetic sites of {args.size} px, ~{args.cells} cells each, "
          f"device {device}; python {sys.version.split()[0]}")
    main_run = run(device, args.sites, args.size, args.cells, args.warmup, args.keep)
    report(main_run)
    if args.compare_cpu and device != "cpu":
        cpu_run = run("cpu", args.sites, args.size, args.cells, args.warmup, args.keep)
        report(cpu_run)
        print(f"ratio {device}/cpu, steady sites/s: "
              f"{main_run['steady_sites_per_s'] / cpu_run['steady_sites_per_s']:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
