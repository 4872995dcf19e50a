"""``hpc-profiler run``: the whole path, illum -> extract -> reduce -> evaluate -> report.

Each stage is resumable and skipped when its outputs are valid:

The stages are objects (:mod:`hpc_profiler.workflow.stages`); this module
walks them in order and prints their lines:

* illum and extract go through :func:`hpc_profiler.workflow.submit.submit_stage`, which
  schedules only plates/sites whose files do not validate (local executor on a
  laptop, Slurm array jobs when ``sbatch`` is on the PATH or the config says so);
* reduce and evaluate write a stamp (``_stage.json``) with the digest of their
  inputs (the set of site files and the config hash; the profile table); a
  rerun with the same inputs skips them;
* the MPI stages run under ``mpirun -n executor.mpi_ranks`` when Open MPI and
  mpi4py are present (``srun --mpi=pmix --kill-on-bad-exit=1`` in a Slurm job
  when the executor is Slurm, submitted only after the extraction array has
  settled, so no dependency can be left unsatisfiable), else in this process;
  the code path is the same. A rank that dies, or does not reach the first
  barrier within ``executor.mpi_startup_timeout_s``, ends the stage with an
  error naming the job, its log and its Slurm state;
* tasks of illum/extract that die without a result are resubmitted
  ``executor.max_retries`` times; if some
  are still lost the chain ends with a summary of their sites and Slurm states
  (exit 1), and a rerun resumes.

It prints one line per stage (items, cells, seconds, items/s, failures), then
the benchmark summary table and the paths of the plots.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Optional

from .config import Config, ConfigError, load_config_or_report
from .layout import Layout
from .workflow.mpijob import StageError, _mpi_env, mpi_launcher, run_mpi_stage  # noqa: F401 - this module's names
from .workflow.sites import load_or_build_manifest
from .workflow.stages import (STAGES, RunContext, RunResult, StageLine, _digest, count_cells,  # noqa: F401
                              profiles_digest, qc_report, read_summary, site_files_digest, stage_is_current,
                              write_stamp)
from .workflow.submit import resolve_kind


# ----------------------------------------------------------------------------- input
def ensure_input(cfg: Config) -> Optional[Path]:
    """Generate the configured synthetic batch when its LoadData CSV is missing."""
    if cfg.synth is None or cfg.input.loaddata_csv is None:
        return None
    csv = Path(cfg.path(cfg.input.loaddata_csv))
    if csv.exists():
        return None
    from .synth import generate_batch

    t0 = time.perf_counter()
    batch = generate_batch(cfg.synth, csv.parent, cfg.channels)
    produced = Path(getattr(batch, "load_data_csv", csv.parent / "load_data.csv"))
    if produced.resolve() != csv.resolve():
        raise ConfigError(
            f"{cfg.source}: input.loaddata_csv: the synthetic batch wrote {produced}, but the config reads {csv}"
        )
    print(f"[synth   ] generated the synthetic batch in {csv.parent} ({time.perf_counter() - t0:.1f} s)", flush=True)
    return csv.parent


def stamp_path(cfg: Config, stage: str) -> Path:
    """``profiles/_stage.json`` or ``evaluate/_stage.json`` (:meth:`hpc_profiler.layout.Layout.stamp`)."""
    return Layout.of(cfg).stamp(stage)


# ----------------------------------------------------------------------------- driver
def run_batch(cfg: Config, *, kind: Optional[str] = None, ranks: Optional[int] = None,
              report: bool = True, out=print) -> RunResult:
    """Run every stage of ``cfg`` that is not up to date; see the module docstring."""
    ensure_input(cfg)
    ctx = RunContext(kind=resolve_kind(cfg, kind), sites=load_or_build_manifest(cfg, rebuild=True), ranks=ranks,
                     report=report, out=out)
    for stage in STAGES.values():
        line = stage.run(cfg, ctx)
        if line is not None:
            ctx.result.lines.append(line)
            out(str(line))
    return ctx.result


def format_summary(summary) -> str:
    if summary is None or len(summary) == 0:
        return "(no benchmark summary)"
    import pandas as pd

    with pd.option_context("display.max_columns", 20, "display.width", 140, "display.float_format", "{:.3f}".format):
        return summary.to_string(index=False)


# ----------------------------------------------------------------------------- CLI
def add_run_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("config", help="config file (YAML)")
    parser.add_argument("--executor", choices=["auto", "slurm", "local", "debug"], default=None,
                        help="override executor.kind (auto: Slurm when sbatch is on PATH, else local)")
    parser.add_argument("--ranks", type=int, default=None, help="MPI ranks for reduce/evaluate (default executor.mpi_ranks)")
    parser.add_argument("--no-mpi", action="store_true", help="run reduce and evaluate in this process")
    parser.add_argument("--no-report", action="store_true", help="skip the QC pictures")
    return parser


def main_run(args) -> int:
    """``hpc-profiler run CONFIG``: 0 when everything finished, 1 when some item failed."""
    cfg = load_config_or_report(args.config)
    if cfg is None:
        return 2
    ranks = 1 if args.no_mpi else args.ranks
    t0 = time.perf_counter()
    try:
        res = run_batch(cfg, kind=args.executor, ranks=ranks, report=not args.no_report)
    except StageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print()
    print("Benchmark summary (fraction retrieved = share of classes with q < "
          f"{cfg.evaluate.q_threshold}):")
    print(format_summary(res.summary))
    print()
    if res.plots:
        print("Plots:")
        for p in res.plots:
            print(f"  {p}")
    if res.index:
        print(f"QC index: {res.index}")
    print(f"Done in {time.perf_counter() - t0:.1f} s; outputs in {cfg.out}")
    if res.failures:
        print(f"{res.failures} item(s) failed: see `hpc-profiler status {args.config} --failed`", file=sys.stderr)
        return 1
    return 0
