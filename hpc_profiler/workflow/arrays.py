"""The two array stages behind one protocol: what work exists, what is done, how one task runs.

:class:`ArrayWork` is what :func:`hpc_profiler.workflow.submit.submit_stage`,
:class:`StageTask` (the submitit callable) and :func:`run_task` (plain
``sbatch`` templates) ask; :data:`ARRAY_WORK` holds one object per stage:

* ``illum`` - the items are plates; one task per plate
  (:func:`hpc_profiler.workflow.tasks.run_illum_plate`);
* ``extract`` - the items are sites; one task per chunk of
  ``executor.sites_per_task`` sites (:func:`hpc_profiler.workflow.tasks.run_extract_range`).
"""
from __future__ import annotations

from abc import ABC, abstractmethod

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import submitit

from .. import ledger, manifest as manifest_mod
from ..config import Config
from ..layout import Layout
from . import OrchestrationError
from .plan import chunk_ranges, illum_done, illum_pending, scan_sites, site_done
from .sites import load_or_build_manifest, manifest_columns, manifest_path, plates_of
from .tasks import run_extract_range, run_illum_plate


@dataclass
class Plan:
    """What a submission of one stage found: ``n_total`` items, ``todo`` not done, in ``n_tasks`` tasks."""

    n_total: int
    todo: list
    n_tasks: int


class ArrayWork(ABC):
    """The protocol of an array stage (see the module docstring)."""

    name = ""
    item = ""  # "site" or "plate"

    @abstractmethod
    def plan(self, cfg: Config, *, dry_run: bool, verify: bool, batch: str) -> Plan:
        """List the stage's items and which are not done (``dry_run``: write nothing)."""

    @abstractmethod
    def launch(self, cfg: Config, todo: Sequence, batch_dir: Path) -> tuple[list, list, Path]:
        """(argument lists of ``map_array``, the items of each task, the site list the tasks read)."""

    @abstractmethod
    def run(self, cfg: Config, sites_path, batch: str, *args) -> dict:
        """The body of one task; returns counts ``{"done", "skipped", "failed", "seconds"}``."""

    @abstractmethod
    def plain_tasks(self, cfg: Config, mpath: Path) -> list[tuple]:
        """The arguments of each task of a plain sbatch array over the whole manifest."""

    @abstractmethod
    def done(self, cfg: Config, item) -> bool:
        """Whether the item is finished (its output is valid for this config)."""

    @abstractmethod
    def key(self, item) -> str:
        """The item's name in logs and failure records."""

    @abstractmethod
    def where(self, item) -> dict:
        """The failure record's coordinates of an item (``plate`` and, for sites, ``well`` and ``site``)."""

    def progress_total(self, plan: Plan) -> int:
        """What the progress bar counts: sites for extract, tasks (plates) for illum."""
        return plan.n_tasks

    def batch_record(self, todo: Sequence) -> dict:
        """What ``batch.json`` keeps of the items, so ``status`` can tell which items a dead task held."""
        return {}


class IllumWork(ArrayWork):
    name, item = "illum", "plate"

    def plan(self, cfg, *, dry_run, verify, batch):
        sites = load_or_build_manifest(cfg, rebuild=True, write=not dry_run)
        todo = illum_pending(cfg, sites)
        return Plan(len(plates_of(sites)), todo, len(todo))

    def launch(self, cfg, todo, batch_dir):
        return [list(todo)], [[p] for p in todo], manifest_path(cfg)

    def run(self, cfg, sites_path, batch, *args):
        (plate,) = args
        return run_illum_plate(cfg, sites_path, plate, batch)

    def plain_tasks(self, cfg, mpath):
        return [(p,) for p in plates_of(manifest_mod.load_manifest(mpath))]

    def done(self, cfg, item):
        return illum_done(cfg, item)

    def key(self, item):
        return item

    def where(self, item):
        return {"plate": item}

    def batch_record(self, todo):
        return {"plates": list(todo)}  # task i holds plate i (a few hundred names at most)


class ExtractWork(ArrayWork):
    name, item = "extract", "site"

    def plan(self, cfg, *, dry_run, verify, batch):
        # columns, not Site objects: at 370,000 sites building the objects costs more than the ledger
        cols = manifest_columns(cfg, rebuild=True, write=not dry_run)
        scan = scan_sites(cfg, cols, verify=verify, progress=verify)
        if not dry_run:
            ledger.record_unrecorded(cfg, scan, f"submit-{batch}")
        pending = scan.pending_indices()
        todo = pending if dry_run else cols.select(pending)
        if todo and not dry_run:
            missing = illum_pending(cfg, todo, stale=False)
            if missing:
                raise OrchestrationError(
                    f"extract: plates {', '.join(missing)} have no illumination functions in "
                    f"{Layout.of(cfg).illum(missing[0]).parent}; run `hpc-profiler submit illum` first"
                )
        return Plan(len(cols), todo, len(chunk_ranges(len(todo), cfg.executor.sites_per_task)))

    def launch(self, cfg, todo, batch_dir):
        ranges = chunk_ranges(len(todo), cfg.executor.sites_per_task)
        sites_path = manifest_mod.save_manifest(list(todo), batch_dir / "sites.parquet")
        return [[a for a, _ in ranges], [b for _, b in ranges]], [list(todo[a:b]) for a, b in ranges], sites_path

    def run(self, cfg, sites_path, batch, *args):
        start, stop = args
        return run_extract_range(cfg, sites_path, int(start), int(stop), batch)

    def plain_tasks(self, cfg, mpath):
        return chunk_ranges(manifest_mod.manifest_length(mpath), cfg.executor.sites_per_task)

    def done(self, cfg, item):
        return site_done(cfg, item)

    def key(self, item):
        return f"{item.plate}/{item.well}/{item.site}"

    def where(self, item):
        return {"plate": item.plate, "well": item.well, "site": item.site}

    def progress_total(self, plan):
        return len(plan.todo)


#: The array stages, in the order ``run`` submits them.
ARRAY_WORK = {w.name: w for w in (IllumWork(), ExtractWork())}


def array_work(stage: str) -> ArrayWork:
    try:
        return ARRAY_WORK[stage]
    except KeyError:
        raise OrchestrationError(f"unknown stage {stage!r}; expected one of {', '.join(ARRAY_WORK)}") from None


class StageTask(submitit.helpers.Checkpointable):
    """One array task: ``task(start, stop)`` for extract, ``task(plate)`` for illum.

    Holds only the config, the stage, the path of the site list and the batch
    id. As a ``Checkpointable``, a task that is preempted or times out is
    requeued by submitit with the same arguments; since finished sites are
    skipped it continues from the first unfinished one. :meth:`checkpoint`
    refuses after ``executor.max_retries`` requeues, which ends the task.
    """

    def __init__(self, cfg: Config, stage: str, sites_path: str, batch: str):
        if stage not in ARRAY_WORK:
            raise ValueError(f"unknown stage {stage!r}; expected one of {tuple(ARRAY_WORK)}")
        self.cfg = cfg
        self.stage = stage
        self.sites_path = str(sites_path)
        self.batch = batch
        self.requeues = 0

    def __call__(self, *args) -> dict:
        return ARRAY_WORK[self.stage].run(self.cfg, self.sites_path, self.batch, *args)

    def checkpoint(self, *args, **kwargs):
        if self.requeues >= self.cfg.executor.max_retries:
            return None  # submitit then ends the task as failed
        self.requeues += 1
        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)


def _plain(cfg: Config, stage: str) -> tuple[ArrayWork, Path, list]:
    work = array_work(stage)
    mpath = manifest_path(cfg)
    if not mpath.exists():
        load_or_build_manifest(cfg)
    return work, mpath, work.plain_tasks(cfg, mpath)


def task_count(cfg: Config, stage: str) -> int:
    """Array size for the plain sbatch templates (writes the manifest when missing)."""
    return len(_plain(cfg, stage)[2])


def run_task(cfg: Config, stage: str, task_id: int) -> dict:
    """Task ``task_id`` of a plain sbatch array over the full manifest.

    ``extract``: sites ``[N * sites_per_task, (N + 1) * sites_per_task)`` of
    ``<out>/manifest.parquet``; ``illum``: the N-th plate (sorted). Done work
    is skipped, so rerunning the whole array resumes.
    """
    work, mpath, tasks = _plain(cfg, stage)
    if not 0 <= task_id < len(tasks):
        raise OrchestrationError(f"{stage}: task id {task_id} outside 0..{len(tasks) - 1} "
                                 f"({len(tasks)} task(s) of {work.item}s)")
    return work.run(cfg, mpath, f"sbatch-{stage}", *tasks[task_id])
