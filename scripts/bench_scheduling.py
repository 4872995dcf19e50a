#!/usr/bin/env python
"""Scheduling overhead per site of ``submit extract`` on the local Slurm.

For each ``sites_per_task`` value (default 1 and 16) the same synthetic batch
(hpc_profiler.synth) is extracted from scratch through
:func:`hpc_profiler.orchestrate.submit_stage` with ``array_parallelism=1``, so
tasks run one after another and

    overhead = batch wall time - sum of per-site work

(the per-site work is the ``seconds`` of the work log's ``done`` records:
reading, segmentation, features, writing). The overhead is what the array
costs beyond the work itself: sbatch and scheduling latency, Python start-up
and imports per task, submitit pickles, the done-check of each site, polling.
It prints the overhead per site for each setting and the ratio against the
first setting (the reference run in the same process).

Needs the local Slurm (``sudo bash scripts/start_local_slurm.sh``)::

    python scripts/bench_scheduling.py                 # 32 sites of 128 px, 1 and 16 sites per task
    python scripts/bench_scheduling.py --wells 8 --size 256 --sites-per-task 1 4 16
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import yaml


def make_config(root: Path, loaddata: Path, spt: int, partition: str | None, families) -> Path:
    ex = {"kind": "slurm", "sites_per_task": spt, "array_parallelism": 1, "cpus_per_task": 1,
          "mem_gb": 1, "time_min": 30}
    if partition:
        ex["partition"] = partition
    cfg = {
        "name": f"bench-spt{spt}",
        "device": "cpu",
        "output_dir": str(root / f"out_spt{spt}"),
        "input": {"loaddata_csv": str(loaddata)},
        "illumination": {"enabled": False},  # scheduling, not illumination, is measured
        "features": {"families": list(families)},
        "executor": ex,
    }
    path = root / f"spt{spt}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def run_one(cfg_path: Path) -> dict:
    from hpc_profiler import orchestrate as orch
    from hpc_profiler.config import load_config

    cfg = load_config(cfg_path)
    t0 = time.perf_counter()
    res = orch.submit_stage(cfg, "extract", wait=True)
    wall = time.perf_counter() - t0
    bad = [r for r in res.results if not isinstance(r, dict) or r.get("failed")]
    if bad:
        raise SystemExit(f"{cfg_path}: tasks failed: {bad}")
    work = sum(r["seconds"] for r in orch.read_worklog(cfg, "extract") if r["status"] == "done")
    n = res.n_scheduled
    return {"sites": n, "tasks": res.n_tasks, "wall": wall, "work": work, "overhead_per_site": (wall - work) / n}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--wells", type=int, default=16, help="wells per plate (2 sites each, 1 plate)")
    p.add_argument("--size", type=int, default=128, help="site size in pixels")
    p.add_argument("--sites-per-task", type=int, nargs="+", default=[1, 16])
    p.add_argument("--families", nargs="+", default=["AreaShape", "Intensity"])
    p.add_argument("--partition", default=None)
    p.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = p.parse_args(argv)
    if shutil.which("sbatch") is None:
        raise SystemExit("no sbatch on PATH: start the local Slurm (sudo bash scripts/start_local_slurm.sh)")

    from hpc_profiler.config import SynthConfig
    from hpc_profiler.synth import generate_batch

    root = Path(tempfile.mkdtemp(prefix="bench_sched_"))
    try:
        synth = SynthConfig(modalities=["compound"], replicate_plates=1, wells=args.wells, sites_per_well=2,
                            size=args.size, cells_per_site=8, seed=0)
        batch = generate_batch(synth, root / "data")
        print(f"batch: {batch.n_sites} sites of {args.size} px ({root})")
        rows = []
        for spt in args.sites_per_task:
            r = run_one(make_config(root, batch.loaddata_csv, spt, args.partition, args.families))
            rows.append((spt, r))
            print(f"sites_per_task={spt:>3}: {r['tasks']:>3} tasks, wall {r['wall']:7.1f} s, "
                  f"site work {r['work']:6.1f} s, overhead {r['overhead_per_site']:6.2f} s/site", flush=True)
        ref_spt, ref = rows[0]
        for spt, r in rows[1:]:
            print(f"overhead per site, sites_per_task={spt} vs {ref_spt}: "
                  f"{r['overhead_per_site'] / ref['overhead_per_site']:.3f}x")
    finally:
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
