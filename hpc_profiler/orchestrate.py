"""``hpc-profiler submit`` and ``run-task``, and the names of the orchestration layer in one place.

The work itself lives in :mod:`hpc_profiler.workflow` (one idea per module):
:mod:`~hpc_profiler.workflow.plan` what is to do and what is done,
:mod:`~hpc_profiler.workflow.tasks` the body of an array task,
:mod:`~hpc_profiler.workflow.slurm` the submission parameters per stage,
:mod:`~hpc_profiler.workflow.submit` the arrays and their retries,
:mod:`~hpc_profiler.workflow.watch` the liveness watch,
:mod:`~hpc_profiler.workflow.records` failures and work logs;
paths come from :class:`hpc_profiler.layout.Layout`.

* ``hpc-profiler submit illum CONFIG`` - one array task per plate
  (:func:`hpc_profiler.pipeline.illum_plate`).
* ``hpc-profiler submit extract CONFIG`` - one array task per chunk of
  ``executor.sites_per_task`` sites (:func:`hpc_profiler.pipeline.extract_site`).
* ``hpc-profiler run-task --stage S --task-id N CONFIG`` - the same work for
  plain ``sbatch`` templates (``slurm/*.sbatch``), without submitit.

Resume: a site is done when the completion ledger names its file with the
current config hash and the file is there with the recorded size and mtime;
submitting again schedules only what is not done; ``dry_run`` only counts it.
Faults: a site whose work raises is recorded in the failure table and the task
goes on; a preempted or timed-out task is requeued by submitit; a task that
dies outright is seen with ``squeue`` and its sites resubmitted up to
``executor.max_retries`` times.
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys

from . import manifest as manifest_mod, pipeline  # noqa: F401 - names kept for callers of this module
from .config import ConfigError, load_config
from .layout import Layout
from .workflow import ARRAY_STAGES, OrchestrationError
from .workflow.arrays import ARRAY_WORK, StageTask, run_task, task_count  # noqa: F401
from .workflow.plan import (chunk_ranges, illum_done, illum_pending, pending_sites, scan_sites,  # noqa: F401
                            site_done)
from .workflow.records import (WorkLog, batch_progress, clear_failure, current_task_id,  # noqa: F401
                               list_failures, read_json, read_worklog, record_failure)
from .workflow.sites import (SiteColumns, ensure_manifest, load_or_build_manifest, manifest_columns,  # noqa: F401
                             manifest_is_current, manifest_path, plate_rows, plates_of)
from .workflow.slurm import parse_extra_sbatch, stage_resources, submitit_parameters  # noqa: F401
from .workflow.submit import (SubmitResult, _record_lost_tasks, _SacctWarningOnce, make_executor,  # noqa: F401
                              quiet_sacct_warnings, resolve_kind, submit_stage)
from .workflow.tasks import remove_stale_temps, run_extract_range, run_illum_plate  # noqa: F401
from .workflow.watch import (NEVER_STARTS, TaskLostError, slurm_job_end, slurm_job_info,  # noqa: F401
                             slurm_queue, wait_for)

STAGES = ARRAY_STAGES


def add_submit_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``hpc-profiler submit``."""
    parser.add_argument("stage", choices=STAGES, help="illum: one task per plate; extract: chunks of sites")
    parser.add_argument("config", help="config file (YAML)")
    parser.add_argument("--dry-run", action="store_true", help="print how many would run; submit nothing")
    parser.add_argument("--verify", action="store_true",
                        help="open and validate every site file (in parallel) instead of trusting the ledger")
    parser.add_argument("--wait", action="store_true", help="wait for the tasks (progress bar)")
    parser.add_argument("--kind", choices=["auto", "slurm", "local", "debug"], default=None,
                        help="override executor.kind")


def main_submit(args) -> int:
    """``hpc-profiler submit STAGE CONFIG``: exit 0 when submitted (or nothing to do)."""
    try:
        cfg = load_config(args.config)
        res = submit_stage(cfg, args.stage, dry_run=args.dry_run, wait=args.wait, kind=args.kind,
                           verify=args.verify)
    except (ConfigError, OrchestrationError, manifest_mod.ManifestError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(res.summary())
    if res.job_ids:
        print(f"logs: {Layout.of(cfg).logs}/<job id>   status: hpc-profiler status {shlex.quote(args.config)}")
    if res.lost:
        print(res.lost_summary(), file=sys.stderr)
    if args.wait and res.results:
        failed = sum(r.get("failed", 0) for r in res.results if isinstance(r, dict)) + len(res.lost)
        if failed:
            print(f"{failed} failed; see: hpc-profiler status --failed {shlex.quote(args.config)}", file=sys.stderr)
            return 1
    return 0


def add_run_task_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``hpc-profiler run-task`` (plain sbatch templates)."""
    parser.add_argument("config", help="config file (YAML)")
    parser.add_argument("--stage", choices=STAGES, required=True)
    parser.add_argument("--task-id", type=int, default=None,
                        help="array task index (default: $SLURM_ARRAY_TASK_ID)")
    parser.add_argument("--count", action="store_true",
                        help="print the number of array tasks (writes the manifest) and exit")


def main_run_task(args) -> int:
    """``hpc-profiler run-task``: exit 0 when every site of the task is done, 1 when some failed."""
    try:
        cfg = load_config(args.config)
        if args.count:
            print(task_count(cfg, args.stage))
            return 0
        task_id = args.task_id
        if task_id is None:
            env = os.environ.get("SLURM_ARRAY_TASK_ID")
            if env is None:
                raise OrchestrationError("--task-id not given and SLURM_ARRAY_TASK_ID not set")
            task_id = int(env)
        counts = run_task(cfg, args.stage, task_id)
    except (ConfigError, OrchestrationError, manifest_mod.ManifestError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{args.stage} task {task_id}: " + ", ".join(f"{k} {v:.1f}" if k == "seconds" else f"{k} {v}"
                                                      for k, v in counts.items()))
    return 1 if counts["failed"] else 0
