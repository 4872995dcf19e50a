"""The bookkeeping every task writes: failure records, work logs, the task's id.

* The failure table: one JSON file per failed site (per plate for a plate's
  illumination), written atomically, removed when the site later succeeds
  (``hpc-profiler status --failed`` lists them).
* The work log: one JSON-lines file per task (``logs/work/<stage>/<task>.jsonl``),
  one record per site handled (done / skipped / failed, seconds); ``status``
  derives throughput from it and the waiting driver counts progress with it.
* Finished sites' completion records go to the ledger (:mod:`hpc_profiler.ledger`).

Every function takes a :class:`hpc_profiler.layout.Layout` (or a config, whose
layout is taken): paths are all they need.
"""
from __future__ import annotations

import json
import os
import time
import traceback
from pathlib import Path
from typing import Optional

from .. import ledger
from .._atomic import write_bytes_atomic
from ..layout import Layout, as_layout


def current_task_id() -> str:
    """Identifier of the running task: ``<array job>_<task>``, the Slurm job id, or ``local-<pid>``."""
    env = os.environ
    if env.get("SLURM_ARRAY_JOB_ID") and env.get("SLURM_ARRAY_TASK_ID"):
        return f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    if env.get("SLURM_JOB_ID"):
        return env["SLURM_JOB_ID"]
    if env.get("SUBMITIT_LOCAL_JOB_ID"):
        return f"local-{env['SUBMITIT_LOCAL_JOB_ID']}"
    return f"local-{os.getpid()}"


def _write_json_atomic(path: Path, obj) -> Path:
    """Write JSON next to ``path`` then rename over it (readers never see half a file)."""
    text = json.dumps(obj, indent=1, sort_keys=True, default=str)
    return write_bytes_atomic(path, text.encode())


def read_json(path: Path):
    with open(path) as fh:
        return json.load(fh)


def record_failure(
    where, stage: str, exc: BaseException, *, plate: str, well=None, site=None, batch: str = "",
    task: Optional[str] = None,
) -> Path:
    """Write the failure record of one site (or plate, for ``illum``); returns its path.

    The record holds plate, well, site, stage, ``error_type`` (the exception
    class), ``message`` (which names the file for input errors), ``task`` (the
    Slurm array task; ``task`` overrides it when the driver records a task
    that died, :class:`TaskLostError`), ``batch``, ``time`` and the last
    lines of the traceback.
    """
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    rec = {
        "stage": stage,
        "plate": str(plate),
        "well": None if well is None else str(well),
        "site": None if site is None else str(site),
        "error_type": type(exc).__name__,
        "message": str(exc),
        "task": task or current_task_id(),
        "batch": batch,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "traceback": tb[-4000:],
    }
    return _write_json_atomic(as_layout(where).failure(stage, plate, well, site), rec)


def clear_failure(where, stage: str, *, plate: str, well=None, site=None) -> bool:
    """Remove the failure record of a site that has now succeeded; True when one existed."""
    try:
        as_layout(where).failure(stage, plate, well, site).unlink()
        return True
    except FileNotFoundError:
        return False


def list_failures(where, stage: str) -> list[dict]:
    """All failure records of a stage, sorted by (plate, well, site)."""
    root = as_layout(where).failures_dir(stage)
    if not root.exists():
        return []
    recs = []
    for p in sorted(root.rglob("*.json")):
        try:
            rec = read_json(p)
        except (OSError, ValueError):
            continue  # being replaced right now
        rec["path"] = str(p)
        recs.append(rec)
    return sorted(recs, key=lambda r: (r.get("plate") or "", r.get("well") or "", str(r.get("site") or "")))


class WorkLog:
    """Append-only JSON-lines log of one task: one record per site (or plate) handled.

    Each task writes its own file (``logs/work/<stage>/<task>.jsonl``), so no
    two processes append to the same file. Records: ``key``, ``status``
    (``done``, ``skipped`` = already valid, ``failed``), ``start``, ``end``,
    ``seconds``, ``task``, ``batch``. :meth:`record_done` writes a finished
    site's completion record to the task's ledger file
    (:class:`hpc_profiler.ledger.LedgerWriter`).
    """

    def __init__(self, where, stage: str, batch: str = ""):
        self.layout: Layout = as_layout(where)
        self.task = current_task_id()
        self.batch = batch
        self.path = self.layout.worklog_dir(stage) / f"{self.task}.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._ledger: Optional[ledger.LedgerWriter] = None

    def record_done(self, site, path=None, seconds: float = 0.0) -> None:
        """Append the completion record of a finished site (its file must be in place)."""
        if self._ledger is None:
            self._ledger = ledger.LedgerWriter(self.layout.root, self.task)
        if path is None:
            path = self.layout.site_of(site)
            if not path.exists():  # done in the plate's packed file: recorded when it was packed
                return
        self._ledger.record(site.key, path, self.layout.config_hash, seconds)

    def add(self, key: str, status: str, start: float, end: float) -> None:
        rec = {"key": key, "status": status, "start": start, "end": end, "seconds": end - start,
               "task": self.task, "batch": self.batch}
        with open(self.path, "a") as fh:
            fh.write(json.dumps(rec) + "\n")


def read_worklog(where, stage: str) -> list[dict]:
    """Every work-log record of a stage (all tasks)."""
    root = as_layout(where).worklog_dir(stage)
    recs = []
    if root.exists():
        for p in sorted(root.glob("*.jsonl")):
            with open(p) as fh:
                text = fh.read()
            try:  # one parser call per file (370,000 records in seconds); line by line after a kill
                recs += json.loads("[" + text.strip().replace("\n", ",") + "]")
            except ValueError:
                for line in (x for x in text.split("\n") if x.strip()):
                    try:
                        recs.append(json.loads(line))
                    except ValueError:
                        pass  # a line cut by a kill
    return recs


def batch_progress(where, stage: str, batch: str, since: float) -> int:
    """Sites (plates) of ``batch`` handled so far: records in the work logs written since ``since``.

    Only the work-log files modified at or after ``since`` are read (the
    tasks of this batch write them), one read each.
    """
    root = as_layout(where).worklog_dir(stage)
    if not root.exists():
        return 0
    tag = f'"batch": {json.dumps(batch)}'
    n = 0
    for p in root.glob("*.jsonl"):
        try:
            if p.stat().st_mtime < since - 1.0:
                continue
            n += p.read_text().count(tag)
        except OSError:
            continue
    return n
