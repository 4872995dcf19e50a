"""What `hpc-profiler run` reports as the time of a Slurm MPI stage, before and after issue 20.

    python scripts/bench_stage_times.py CONFIG [--stage reduce] [--ranks 2] [--repeat 2]

CONFIG must have finished site files (for reduce) or profiles (for evaluate)
and ``executor.kind: slurm``. In the same run, alternately:

* before: ``sbatch --wait`` of the same job (what the driver used to time:
  its wall clock includes sbatch's ~10 s polling of the job state);
* after: :func:`hpc_profiler.run.run_mpi_stage`, which reports the seconds of
  the ``srun`` inside the job (written by the job itself) and polls ``squeue``.

Prints, per repeat, the reported stage time and the driver's wall time of
both, and the ratio of the old report to the work the job measured.
"""
from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import time
from pathlib import Path

from hpc_profiler.config import load_config
from hpc_profiler.run import _mpi_env, run_mpi_stage


def old_style(cfg, stage: str, ranks: int) -> float:
    logs = Path(cfg.out) / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    ex = cfg.executor
    args = [sys.executable, "-m", "hpc_profiler", stage, str(cfg.source)]
    cmd = ["sbatch", "--wait", "--parsable", f"--job-name=old-{stage}", f"--ntasks={ranks}", f"--time={ex.time_min}",
           f"--mem-per-cpu={max(1, int(ex.mem_gb * 1024 / max(ranks, 1)))}M", f"--output={logs}/old_{stage}_%j.out"]
    if ex.partition:
        cmd.append(f"--partition={ex.partition}")
    cmd.append("--wrap=" + " ".join(["srun", "--mpi=pmix", *map(shlex.quote, args)]))
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=_mpi_env(cfg), stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("config")
    p.add_argument("--stage", default="reduce", choices=["reduce", "evaluate"])
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--repeat", type=int, default=2)
    a = p.parse_args(argv)
    cfg = load_config(a.config)
    print(f"{'repeat':>6} {'before: reported=wall':>22} {'after: reported':>16} {'after: wall':>12} {'ratio':>7}")
    for i in range(a.repeat):
        before = old_style(cfg, a.stage, a.ranks)
        t0 = time.perf_counter()
        _how, work = run_mpi_stage(cfg, a.stage, a.ranks, "slurm")
        wall = time.perf_counter() - t0
        print(f"{i:>6} {before:>20.1f} s {work:>14.1f} s {wall:>10.1f} s {before / work:>7.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
