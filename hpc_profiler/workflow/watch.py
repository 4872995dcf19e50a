"""Liveness of submitted jobs, from ``squeue`` and ``scontrol`` (no ``sacct``).

A task that dies outright (``kill -9``, ``scancel``, out of memory, node
failure) writes no result. The waiting driver (:func:`wait_for`) does not rely
on ``sacct`` (which fails where Slurm accounting is off, and then submitit
never sees such a task end): every ``executor.poll_interval_s`` it asks
``squeue`` which of its tasks are still queued; one that is gone without a
result is finished-with-failure (:class:`TaskLostError`, its state from
``scontrol``: CANCELLED, TIMEOUT, OUT_OF_MEMORY, NODE_FAIL, PREEMPTED, killed
by a signal). The MPI stages' Slurm jobs are watched with the same queries
(:mod:`hpc_profiler.workflow.mpijob`).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import time
from typing import Optional

from ..progress import Progress


class TaskLostError(RuntimeError):
    """A task that ended without a result: killed, cancelled, out of memory, node failure, ...

    ``task`` is the Slurm (array) job id, ``reason`` the Slurm state and
    reason as words, ``log`` the task's log file. :func:`submit_stage` fills
    ``items`` (the keys of the sites or plates it left not done).
    """

    def __init__(self, task: str, reason: str, log: str = ""):
        self.task, self.reason, self.log = str(task), reason, str(log)
        self.items: list = []
        self.item_objects: list = []
        super().__init__(f"task {task} ended without a result: {reason}" + (f"; log {log}" if log else ""))


#: squeue reasons under which a job will never start
NEVER_STARTS = ("DependencyNeverSatisfied",)

_SIGNALS = {1: "SIGHUP", 2: "SIGINT", 6: "SIGABRT", 9: "SIGKILL", 11: "SIGSEGV", 15: "SIGTERM"}


def slurm_queue(job_ids=None) -> Optional[dict]:
    """``{job id: (state, reason)}`` of this user's jobs in the Slurm queue, array tasks one by one.

    ``job_ids`` limits the answer to those ids (array ids match all their
    tasks). ``None`` when ``squeue`` cannot answer (not installed, the
    controller does not respond): then nothing may be concluded about a job.
    """
    if shutil.which("squeue") is None:
        return None
    try:
        out = subprocess.run(["squeue", "-h", "-r", "-u", str(os.getuid()), "-o", "%i|%T|%r"],
                             capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    queue = {}
    for line in out.stdout.splitlines():
        parts = line.strip().split("|")
        if len(parts) == 3:
            queue[parts[0]] = (parts[1], parts[2])
    if job_ids is not None:
        want = {str(j) for j in job_ids}
        arrays = {w for w in want if "_" not in w}
        queue = {k: v for k, v in queue.items() if k in want or k.split("_")[0] in arrays}
    return queue


def slurm_job_end(job_id: str) -> str:
    """How a job that left the queue ended, in words, from ``scontrol show job`` (works without
    accounting for ``MinJobAge`` seconds after the end), e.g. ``CANCELLED (by user), killed by SIGKILL``."""
    info = slurm_job_info(job_id)
    if not info:
        return "left the Slurm queue (state no longer known to scontrol; sacct unavailable)"
    state = info.get("JobState", "UNKNOWN")
    words = [state]
    reason = info.get("Reason", "None")
    if reason and reason != "None":
        words.append(f"reason {reason}")
    code = info.get("ExitCode", "0:0")
    try:
        rc, sig = (int(x) for x in code.split(":"))
    except ValueError:
        rc, sig = 0, 0
    if sig:
        words.append(f"killed by {_signal_name(sig)}")
    elif rc > 128:  # the job script passed on the status of a process killed by a signal (128 + signal)
        words.append(f"exit code {rc}: a process of the task was killed by {_signal_name(rc - 128)}")
    elif rc:
        words.append(f"exit code {rc}")
    return ", ".join(words)


def _signal_name(sig: int) -> str:
    return f"signal {sig} ({_SIGNALS[sig]})" if sig in _SIGNALS else f"signal {sig}"


def slurm_job_info(job_id: str) -> dict:
    """``scontrol -o show job ID`` as a dict (empty when Slurm no longer knows the job)."""
    if shutil.which("scontrol") is None:
        return {}
    try:
        out = subprocess.run(["scontrol", "-o", "show", "job", str(job_id)], capture_output=True, text=True,
                             timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return {}
    if out.returncode != 0 or not out.stdout.strip():
        return {}
    line = out.stdout.strip().splitlines()[0]
    info = {}
    for tok in line.split():
        if "=" in tok:
            k, v = tok.split("=", 1)
            info.setdefault(k, v)
    return info


def _has_result(job) -> bool:
    """submitit wrote the task's result (or its error) file."""
    try:
        folder = job.paths.folder
        folder.chmod(folder.stat().st_mode)  # refresh a network file system's cache, as submitit does
    except OSError:
        pass
    return job.paths.result_pickle.exists()


def _job_log(job) -> str:
    try:
        return str(job.paths.stderr)
    except Exception:  # noqa: BLE001 - a log path is a courtesy
        return ""


def wait_for(jobs: list, total: Optional[int] = None, *, kind: Optional[str] = None, poll_s: float = 5.0,
             logs: Optional[list] = None, progress=None, count_done=None) -> list:
    """Wait for submitit jobs, showing progress; returns their results.

    ``progress`` is a :class:`hpc_profiler.progress.Progress` (a bar on a
    terminal, a line every few seconds in a log); ``count_done`` returns how
    many items (sites) are done so far (:func:`batch_progress`), read every
    few seconds, so the count moves site by site rather than task by task.

    A task that failed as a whole is returned as its exception, so one lost
    task does not hide the others' results. On Slurm the driver watches
    liveness itself, every ``poll_s`` seconds: a task that has left the queue
    (``squeue``) without writing its result, or waits on a dependency that can
    never be satisfied, is finished-with-failure at once, as a
    :class:`TaskLostError` carrying its Slurm state from ``scontrol``. This
    does not use ``sacct``, which fails on clusters without accounting (then
    submitit alone would never see such a task end).
    """
    bar = progress if progress is not None else Progress("tasks", total or len(jobs), "task")
    next_count = 0.0
    logs = logs or [_job_log(j) for j in jobs]
    log_of = {j.job_id: log for j, log in zip(jobs, logs)}
    results: dict = {}
    pending = {j.job_id: j for j in jobs}
    watch = kind == "slurm"
    next_check = time.time() + min(poll_s, 1.0)

    def finish(job) -> None:
        try:
            res = job.result()
        except Exception as exc:  # noqa: BLE001 - reported to the caller, not lost
            res = exc
        results[job.job_id] = res
        pending.pop(job.job_id, None)
        finished.append(sum(res.get(k, 0) for k in ("done", "skipped", "failed")) if isinstance(res, dict) else 1)

    finished: list = []

    def show() -> None:
        counted = count_done() if count_done is not None else 0
        bar.update_to(max(counted, sum(finished)))

    while pending:
        for job in list(pending.values()):
            if _has_result(job) or (not watch and job.done()):
                finish(job)
        if watch and pending and time.time() >= next_check:
            queue = slurm_queue(pending)
            if queue is not None:
                for jid, job in list(pending.items()):
                    state = queue.get(str(jid))
                    if state is not None and state[1] not in NEVER_STARTS:
                        continue
                    if _has_result(job):  # ended between the two looks
                        finish(job)
                        continue
                    if state is not None:  # waits forever: take it out of the queue
                        subprocess.run(["scancel", str(jid)], capture_output=True)
                        reason = f"{state[0]} ({state[1]}), cancelled by hpc-profiler"
                    else:
                        reason = slurm_job_end(str(jid))
                    results[jid] = TaskLostError(str(jid), reason, log_of.get(jid, ""))
                    pending.pop(jid)
                    finished.append(0)
            next_check = time.time() + poll_s
        if time.time() >= next_count or not pending:
            show()
            next_count = time.time() + min(5.0, bar.interval_s)
        if pending:
            time.sleep(min(1.0, poll_s))  # result files are looked for once a second, as submitit does
    bar.close()
    return [results[j.job_id] for j in jobs]
