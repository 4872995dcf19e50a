"""One array job per stage of what is not done; lost tasks' items resubmitted.

``hpc-profiler submit illum|extract CONFIG`` and the first two stages of
``hpc-profiler run`` come here: :func:`submit_stage` lists the stage's work
(:mod:`.plan`), schedules what is not done as one submitit array
(:func:`make_executor`, parameters from :mod:`.slurm`), and with ``wait``
watches it (:func:`hpc_profiler.workflow.watch.wait_for`). Items of tasks that
ended without a result get failure records naming the Slurm state and are
resubmitted up to ``executor.max_retries`` times; what is still not done is
``SubmitResult.lost``.
"""
from __future__ import annotations

import logging
import shutil
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import submitit

from ..config import Config
from ..layout import Layout
from ..progress import Progress
from . import OrchestrationError
from .arrays import ArrayWork, StageTask, array_work
from .records import _write_json_atomic, batch_progress, read_json, record_failure
from .slurm import submitit_parameters
from .watch import TaskLostError, _job_log, wait_for


def resolve_kind(cfg: Config, kind: Optional[str] = None) -> str:
    """``slurm``, ``local`` or ``debug``: ``auto`` is Slurm when ``sbatch`` is on PATH."""
    kind = kind or cfg.executor.kind
    if kind == "auto":
        return "slurm" if shutil.which("sbatch") else "local"
    if kind not in ("slurm", "local", "debug"):
        raise OrchestrationError(f"executor.kind {kind!r}: expected auto, slurm, local or debug")
    return kind


class _SacctWarningOnce(logging.Filter):
    """submitit warns "Bypassing sacct error" at every status poll (on stdout and stderr) when
    ``sacct`` fails, as on clusters without Slurm accounting. Say it once, with what it means."""

    seen = False

    def filter(self, record: logging.LogRecord) -> bool:
        if "Bypassing sacct error" not in str(record.msg):
            return True
        if not _SacctWarningOnce.seen:
            _SacctWarningOnce.seen = True
            print("note: sacct failed (Slurm accounting is probably disabled on this cluster), so submitit "
                  "cannot read job states; hpc-profiler watches its jobs with squeue/scontrol instead, "
                  "and a task that leaves the queue without a result is reported as failed. "
                  f"(submitit: {record.getMessage()}; shown once)", file=sys.stderr, flush=True)
        return False


def quiet_sacct_warnings() -> None:
    """Install :class:`_SacctWarningOnce` on submitit's logger (idempotent)."""
    log = logging.getLogger("submitit")
    if not any(isinstance(f, _SacctWarningOnce) for f in log.filters):
        log.addFilter(_SacctWarningOnce())


def make_executor(cfg: Config, stage: str, kind: Optional[str] = None):
    """A ``submitit.AutoExecutor`` logging to ``<out>/logs/%j``."""
    quiet_sacct_warnings()
    kind = resolve_kind(cfg, kind)
    # requeues after a time-out are bounded by submitit; after preemption by StageTask.checkpoint
    extra = {"slurm_max_num_timeout": int(cfg.executor.max_retries)} if kind == "slurm" else {}
    ex = submitit.AutoExecutor(folder=Layout.of(cfg).logs / "%j", cluster=kind, **extra)
    ex.update_parameters(**submitit_parameters(cfg, stage, kind))
    return ex


@dataclass
class SubmitResult:
    """What one ``submit`` did.

    ``n_scheduled`` items (sites for extract, plates for illum) in ``n_tasks``
    array tasks; ``n_done`` were already finished and not scheduled. With
    ``wait``: ``results`` holds one entry per task of every submission (a
    dict of counts, or the exception of a task that ended without one),
    ``retries`` the resubmissions of lost tasks' sites and ``lost`` the
    :class:`TaskLostError` of tasks whose sites were still not done after the
    last retry.
    """

    stage: str
    batch: str
    kind: str
    n_total: int
    n_done: int
    n_scheduled: int
    n_tasks: int
    dry_run: bool
    batch_dir: Optional[Path] = None
    job_ids: list = field(default_factory=list)
    jobs: list = field(default_factory=list, repr=False)
    results: list = field(default_factory=list, repr=False)
    retries: int = 0
    lost: list = field(default_factory=list)

    def summary(self) -> str:
        what = f"{array_work(self.stage).item}s"
        verb = "would run" if self.dry_run else "scheduled"
        s = (f"{self.stage}: {self.n_total} {what}, {self.n_done} done, {self.n_scheduled} {verb} "
             f"in {self.n_tasks} task(s)")
        if self.job_ids:
            s += f" [{self.kind} job {self.job_ids[0].split('_')[0]}, batch {self.batch}]"
        return s

    def lost_summary(self) -> str:
        """One line per task that ended without a result (after the retries): task, Slurm state, its items, log."""
        if not self.lost:
            return ""
        n = sum(len(e.items) for e in self.lost)
        what = f"{array_work(self.stage).item}(s)"
        lines = [f"{self.stage}: {n} {what} not done: {len(self.lost)} task(s) ended without a result "
                 f"after {self.retries} retr{'y' if self.retries == 1 else 'ies'} (executor.max_retries)"]
        for e in self.lost:
            lines.append(f"  task {e.task}: {e.reason}; {what} {', '.join(e.items)}; log {e.log}")
        return "\n".join(lines)


def _new_batch_id(stage: str) -> str:
    return f"{stage}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"


def _notify(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def submit_stage(cfg: Config, stage: str, dry_run: bool = False, wait: bool = False,
                 kind: Optional[str] = None, verify: bool = False, notify=_notify) -> SubmitResult:
    """Schedule what is not done of ``stage`` as one array job.

    Parameters
    ----------
    cfg : Config
    stage : {"illum", "extract"}
    dry_run : bool
        Only count what would run; nothing is written or submitted.
    wait : bool
        Block until every task has finished (a tqdm progress bar on a
        terminal); task results go to ``SubmitResult.results``. A task that
        ends without a result (killed, cancelled, out of memory, node failure;
        seen with ``squeue``, :func:`wait_for`) has its unfinished sites
        recorded in the failure table with the Slurm state, and those sites
        are resubmitted up to ``executor.max_retries`` times; what is still
        not done after that is in ``SubmitResult.lost``.
    kind : str, optional
        Override ``cfg.executor.kind``.
    verify : bool
        Decide what is done by validating every site file (in parallel, with
        progress) instead of trusting the completion ledger.
    notify : callable
        Receives one line per resubmission (default: printed to stderr).

    Raises
    ------
    OrchestrationError
        Unknown stage, or ``extract`` while some plate lacks its illumination
        functions (submit ``illum`` first).
    """
    work = array_work(stage)
    kind = resolve_kind(cfg, kind)
    # the manifest is rebuilt at every submission, so sites added to the input are picked up
    batch = _new_batch_id(stage)
    plan = work.plan(cfg, dry_run=dry_run, verify=verify, batch=batch)
    todo, n_total, n_tasks = plan.todo, plan.n_total, plan.n_tasks
    result = SubmitResult(stage=stage, batch=batch, kind=kind, n_total=n_total, n_done=n_total - len(todo),
                          n_scheduled=len(todo), n_tasks=n_tasks, dry_run=dry_run)
    if dry_run or not todo:
        return result

    jobs, items = _launch(cfg, work, kind, batch, todo)
    result.batch_dir = Layout.of(cfg).batch_dir(batch)
    result.jobs = jobs
    result.job_ids = [str(j.job_id) for j in jobs]
    if not wait:
        return result
    total = work.progress_total(plan)
    while True:
        started = time.time()
        bar = Progress(stage, total, work.item,
                       interval_s=cfg.executor.progress_interval_s)
        results = wait_for(jobs, total=total, kind=kind, poll_s=cfg.executor.poll_interval_s,
                           logs=[_job_log(j) for j in jobs], progress=bar,
                           count_done=lambda b=batch, t=started: batch_progress(cfg, stage, b, t))
        result.results += results
        lost = _record_lost_tasks(cfg, stage, batch, results, items, jobs)
        if not lost or result.retries >= cfg.executor.max_retries:
            result.lost = lost
            return result
        result.retries += 1
        again = [it for e in lost for it in e.item_objects]
        notify(f"{stage}: resubmitting {len(again)} {work.item}(s) of "
               f"{len(lost)} task(s) that ended without a result ("
               + "; ".join(f"{e.task}: {e.reason}" for e in lost)
               + f"), retry {result.retries} of {cfg.executor.max_retries}")
        batch = _new_batch_id(stage)
        jobs, items = _launch(cfg, work, kind, batch, again)
        result.job_ids += [str(j.job_id) for j in jobs]
        result.jobs += jobs
        total = len(again)


def _launch(cfg: Config, work: ArrayWork, kind: str, batch: str, todo: Sequence) -> tuple[list, list]:
    """Submit ``todo`` (sites or plates) as one array job of batch ``batch``; returns (jobs, items per job)."""
    stage = work.name
    bdir = Layout.of(cfg).batch_dir(batch)
    bdir.mkdir(parents=True, exist_ok=True)
    args, items, sites_path = work.launch(cfg, todo, bdir)
    task = StageTask(cfg, stage, str(sites_path), batch)
    executor = make_executor(cfg, stage, kind)
    jobs = executor.map_array(task, *args)
    _write_json_atomic(bdir / "batch.json", {
        "batch": batch, "stage": stage, "kind": kind, "created": time.time(),
        "n_scheduled": len(todo), "n_tasks": len(jobs), "job_ids": [str(j.job_id) for j in jobs],
        "sites_per_task": cfg.executor.sites_per_task, "config_hash": cfg.hash(), **work.batch_record(todo),
    })
    return jobs, items



def _record_lost_tasks(cfg: Config, stage: str, batch: str, results: list, items: list, jobs: list) -> list:
    """Failure records for the unfinished sites (plates) of tasks that returned no counts.

    A site the task itself recorded as failed in this batch keeps its own
    record (the real error); the others get the task's error (its Slurm
    state for a :class:`TaskLostError`). Returns one :class:`TaskLostError`
    per such task with its not-done items (tasks that left nothing undone
    are dropped).
    """
    lost = []
    for res, its, job in zip(results, items, jobs):
        if isinstance(res, dict):
            continue
        if isinstance(res, TaskLostError):
            err = res
        else:  # the task's Python raised outside the per-site guard, or submitit gave up on it
            first = str(res).strip().splitlines()[0] if str(res).strip() else ""
            err = TaskLostError(str(job.job_id), f"{type(res).__name__}: {first}", _job_log(job))
        work = array_work(stage)
        undone = [it for it in its if not work.done(cfg, it)]
        if not undone:
            continue
        for it in undone:
            where = work.where(it)
            fpath = Layout.of(cfg).failure(stage, **where)
            try:
                if read_json(fpath).get("batch") == batch:
                    continue  # the task recorded this one itself before it died
            except (OSError, ValueError):
                pass
            record_failure(cfg, stage, err, batch=batch, task=err.task, **where)
        err.items = [work.key(it) for it in undone]
        err.item_objects = undone
        lost.append(err)
    return lost
