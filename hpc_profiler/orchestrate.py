"""Submitting the per-plate and per-site work as job arrays, resuming, and recording failures.

This is the outer layer of the pipeline (issue 5): it turns the idempotent work
functions of :mod:`hpc_profiler.pipeline` into array jobs through
``submitit.AutoExecutor`` (the Slurm backend when ``sbatch`` is on PATH, else
local processes; or forced by ``executor.kind``).

* ``hpc-profiler submit illum CONFIG`` - one array task per plate
  (:func:`hpc_profiler.pipeline.illum_plate`).
* ``hpc-profiler submit extract CONFIG`` - one array task per chunk of
  ``executor.sites_per_task`` sites (:func:`hpc_profiler.pipeline.extract_site`).
* ``hpc-profiler run-task --stage S --task-id N CONFIG`` - the same work for
  plain ``sbatch`` templates (``slurm/*.sbatch``), without submitit.

Layout under ``output_dir`` (``<out>``)::

    manifest.parquet                  every site of the batch (manifest.save_manifest)
    batches/<batch>/sites.parquet     the sites one submission scheduled (pending only)
    batches/<batch>/batch.json        stage, job ids, counts, executor (read by `status`)
    failures/<stage>/<plate>/<plate>_<well>_s<site>.json   one file per failed site
    failures/illum/<plate>.json       one file per failed plate
    logs/%j/                          submitit's per-job folder (stdout, stderr, pickles)
    logs/work/<stage>/<task>.jsonl    per-site work log (done/skipped/failed, seconds)
    ledger/<task>.jsonl               completion ledger: one record per finished site (hpc_profiler.ledger)

Resume: a site is done when the completion ledger names its file with the
current config hash and the file is there with the recorded size and mtime
(:func:`hpc_profiler.ledger.scan_sites`: a few hundred ledger files, one
listing per plate row and one stat per site, instead of opening 370,000
files); a file without such a record is validated the old way (complete flag
and config hash, :func:`hpc_profiler.sitefile.validate_site_file`), and
``verify=True`` validates every file. A plate's illumination is done when its
file carries the config hash. Submitting again schedules only what is not
done; ``dry_run`` only counts it.

Faults: a site whose work raises is recorded in the failure table (plate, well,
site, error type, message, task id, time; written atomically, removed when the
site later succeeds) and the task goes on with the next site. A task that is
preempted or reaches its time limit is checkpointed by submitit
(:class:`StageTask` is a ``submitit.helpers.Checkpointable``) and requeued;
the requeued task skips the sites already done, so it continues from the first
unfinished one. Requeues are bounded by ``executor.max_retries``.

A task that dies outright (``kill -9``, ``scancel``, out of memory, node
failure) writes no result. The waiting driver (:func:`wait_for`) does not rely
on ``sacct`` (which fails where Slurm accounting is off, and then submitit
never sees such a task end): every ``executor.poll_interval_s`` it asks
``squeue`` which of its tasks are still queued; one that is gone without a
result is finished-with-failure (:class:`TaskLostError`, its state from
``scontrol``: CANCELLED, TIMEOUT, OUT_OF_MEMORY, NODE_FAIL, PREEMPTED, killed
by a signal), its unfinished sites get failure records naming that state, and
they are resubmitted up to ``executor.max_retries`` times
(:func:`submit_stage`); what is still not done after that is
``SubmitResult.lost``, reported by ``submit --wait`` and ``run`` with a
non-zero exit.

Tasks receive only (path of the scheduled-sites Parquet file, index range) or
(manifest path, plate): never the manifest itself.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import shutil
import subprocess
import sys
import time
import traceback
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional, Sequence

import submitit
from submitit.core.utils import UncompletedJobError

from . import manifest as manifest_mod
from ._atomic import write_bytes_atomic
from . import ledger, pipeline, sitefile, storage
from .images import load_site_images
from .progress import Progress
from .config import Config, ConfigError, load_config

STAGES = ("illum", "extract")


class OrchestrationError(RuntimeError):
    """A submission cannot be made as asked (the message says why and what to do)."""


# =========================================================================== layout
def manifest_path(cfg: Config) -> Path:
    """``<out>/manifest.parquet``: every site of the batch."""
    return cfg.out / "manifest.parquet"


def batches_dir(cfg: Config) -> Path:
    return cfg.out / "batches"


def logs_dir(cfg: Config) -> Path:
    """``<out>/logs``: submitit's job folders (``%j``) and the work logs."""
    return cfg.out / "logs"


def worklog_dir(cfg: Config, stage: str) -> Path:
    return logs_dir(cfg) / "work" / stage


def failures_dir(cfg: Config, stage: str) -> Path:
    return cfg.out / "failures" / stage


def failure_path(cfg: Config, stage: str, plate: str, well: Optional[str] = None, site=None) -> Path:
    """File of one failure record: per site for ``extract``; for ``illum`` per plate, and
    per site for a site whose images the illum stage could not read."""
    if stage == "illum" and well is None:
        return failures_dir(cfg, stage) / f"{plate}.json"
    return failures_dir(cfg, stage) / str(plate) / f"{Path(sitefile.site_file_name(plate, well, site)).stem}.json"


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


# ============================================================ small atomic files
def _write_json_atomic(path: Path, obj) -> Path:
    """Write JSON next to ``path`` then rename over it (readers never see half a file)."""
    text = json.dumps(obj, indent=1, sort_keys=True, default=str)
    return write_bytes_atomic(path, text.encode())


def read_json(path: Path):
    with open(path) as fh:
        return json.load(fh)


# =========================================================================== failures
def record_failure(
    cfg: Config, stage: str, exc: BaseException, *, plate: str, well=None, site=None, batch: str = "",
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
    return _write_json_atomic(failure_path(cfg, stage, plate, well, site), rec)


def clear_failure(cfg: Config, stage: str, *, plate: str, well=None, site=None) -> bool:
    """Remove the failure record of a site that has now succeeded; True when one existed."""
    try:
        failure_path(cfg, stage, plate, well, site).unlink()
        return True
    except FileNotFoundError:
        return False


def list_failures(cfg: Config, stage: str) -> list[dict]:
    """All failure records of a stage, sorted by (plate, well, site)."""
    root = failures_dir(cfg, stage)
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


# =========================================================================== work log
class WorkLog:
    """Append-only JSON-lines log of one task: one record per site (or plate) handled.

    Each task writes its own file (``logs/work/<stage>/<task>.jsonl``), so no
    two processes append to the same file. Records: ``key``, ``status``
    (``done``, ``skipped`` = already valid, ``failed``), ``start``, ``end``,
    ``seconds``, ``task``, ``batch``. :meth:`record_done` writes a finished
    site's completion record to the task's ledger file
    (:class:`hpc_profiler.ledger.LedgerWriter`).
    """

    def __init__(self, cfg: Config, stage: str, batch: str = ""):
        self.task = current_task_id()
        self.batch = batch
        self.path = worklog_dir(cfg, stage) / f"{self.task}.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._ledger: Optional[ledger.LedgerWriter] = None

    def record_done(self, cfg: Config, site, path=None, seconds: float = 0.0) -> None:
        """Append the completion record of a finished site (its file must be in place)."""
        if self._ledger is None:
            self._ledger = ledger.LedgerWriter(cfg.out, self.task)
        if path is None:
            path = pipeline.site_path(cfg, site)
            if not path.exists():  # done in the plate's packed file: recorded when it was packed
                return
        self._ledger.record(site.key, path, cfg.hash(), seconds)

    def add(self, key: str, status: str, start: float, end: float) -> None:
        rec = {"key": key, "status": status, "start": start, "end": end, "seconds": end - start,
               "task": self.task, "batch": self.batch}
        with open(self.path, "a") as fh:
            fh.write(json.dumps(rec) + "\n")


def read_worklog(cfg: Config, stage: str) -> list[dict]:
    """Every work-log record of a stage (all tasks)."""
    root = worklog_dir(cfg, stage)
    recs = []
    if root.exists():
        for p in sorted(root.glob("*.jsonl")):
            with open(p) as fh:
                lines = [x for x in fh.read().split("\n") if x.strip()]
            try:  # one parser call per file (370,000 records in seconds); line by line after a kill
                recs += json.loads("[" + ",".join(lines) + "]")
            except ValueError:
                for line in lines:
                    try:
                        recs.append(json.loads(line))
                    except ValueError:
                        pass  # a line cut by a kill
    return recs


def batch_progress(cfg: Config, stage: str, batch: str, since: float) -> int:
    """Sites (plates) of ``batch`` handled so far: records in the work logs written since ``since``.

    Only the work-log files modified at or after ``since`` are read (the
    tasks of this batch write them), one read each.
    """
    root = worklog_dir(cfg, stage)
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


# =========================================================================== planning
def _source_stamp(cfg: Config) -> Optional[dict]:
    """Identity of a LoadData CSV source (path, size, mtime, channels); None for other sources."""
    if cfg.input.loaddata_csv is None or storage.is_url(str(cfg.input.loaddata_csv)):
        return None
    path = cfg.path(cfg.input.loaddata_csv)
    try:
        st = os.stat(path)
    except OSError:
        return None
    return {"loaddata_csv": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns,
            "channels": list(cfg.channels)}


def manifest_is_current(cfg: Config) -> bool:
    """Whether ``<out>/manifest.parquet`` was built from the LoadData CSV as it is now.

    Then a submission need not parse the CSV again (seconds per 100,000
    sites); any other source is listed again at every submission.
    """
    stamp = _source_stamp(cfg)
    if stamp is None or not manifest_path(cfg).exists():
        return False
    try:
        return read_json(cfg.out / MANIFEST_SOURCE) == stamp
    except (OSError, ValueError):
        return False


MANIFEST_SOURCE = "manifest.source.json"


def _build_and_save_manifest(cfg: Config) -> list:
    stamp = _source_stamp(cfg)
    sites, _problems = manifest_mod.build_manifest(cfg)  # incomplete sites stay in: they fail visibly
    if not sites:
        raise OrchestrationError(f"{cfg.source or '<config>'}: the image source lists no sites")
    manifest_mod.save_manifest(sites, manifest_path(cfg))
    if stamp is not None:
        _write_json_atomic(cfg.out / MANIFEST_SOURCE, stamp)
    return sites


def ensure_manifest(cfg: Config, rebuild: bool = False) -> Path:
    """``<out>/manifest.parquet``, built when missing (``rebuild``: also when the source may have changed)."""
    path = manifest_path(cfg)
    if not path.exists() or (rebuild and not manifest_is_current(cfg)):
        _build_and_save_manifest(cfg)
    return path


def load_or_build_manifest(cfg: Config, rebuild: bool = False) -> list:
    """The batch's sites: ``<out>/manifest.parquet``, built from ``cfg.input`` when missing.

    ``rebuild`` builds it again unless it was built from the LoadData CSV as
    it is now (:func:`manifest_is_current`), so sites added to the input are
    picked up.
    """
    path = manifest_path(cfg)
    if path.exists() and (not rebuild or manifest_is_current(cfg)):
        return manifest_mod.load_manifest(path)
    return _build_and_save_manifest(cfg)


@dataclass
class SiteColumns:
    """Plate, well and site number of every site of a manifest, as columns (no per-site objects)."""

    plates: list
    wells: list
    numbers: list
    path: Optional[Path] = None  # the Parquet manifest they were read from
    sites: Optional[list] = None  # the Site objects, when the manifest was just built

    def __len__(self) -> int:
        return len(self.plates)

    def select(self, indices: Sequence[int]) -> list:
        """The Site objects of rows ``indices`` (built from the Parquet file for those rows only)."""
        if self.sites is not None:
            return [self.sites[i] for i in indices]
        return manifest_mod.load_manifest(self.path, indices) if len(indices) else []

    @classmethod
    def of_sites(cls, sites: Sequence) -> "SiteColumns":
        return cls([s.plate for s in sites], [s.well for s in sites], [s.site for s in sites], sites=list(sites))

    @classmethod
    def read(cls, path) -> "SiteColumns":
        import pyarrow.parquet as pq

        try:
            t = pq.read_table(path, columns=["plate", "well", "site"])
        except Exception as exc:  # noqa: BLE001 - reported as the manifest's problem, naming the file
            raise manifest_mod.ManifestError(f"{path}: cannot read manifest: {exc}") from exc
        return cls(t.column("plate").to_pylist(), t.column("well").to_pylist(), t.column("site").to_pylist(),
                   path=Path(path))


def manifest_columns(cfg: Config, rebuild: bool = False, write: bool = True) -> SiteColumns:
    """The batch's sites as columns; ``write=False`` (a dry run) builds without saving when not current."""
    if not write and not (manifest_path(cfg).exists() and (not rebuild or manifest_is_current(cfg))):
        sites = manifest_mod.build_manifest(cfg)[0]
        if not sites:
            raise OrchestrationError(f"{cfg.source or '<config>'}: the image source lists no sites")
        return SiteColumns.of_sites(sites)
    return SiteColumns.read(ensure_manifest(cfg, rebuild))


def site_done(cfg: Config, site) -> bool:
    """A site is done when its file validates for the current config hash.

    The deep check of one site (opens its file, or its group of the plate's
    packed file when the ledger says it was packed); for many sites use
    :func:`pending_sites`, which reads the ledger.
    """
    chash = cfg.hash()
    if sitefile.validate_site_file(pipeline.site_path(cfg, site), chash).ok:
        return True
    packed = sitefile.packed_path(cfg.out, site.plate)
    return packed.exists() and sitefile.validate_site_file(
        sitefile.site_ref(packed, ledger.pack_group(site.well, site.site)), chash).ok


def illum_done(cfg: Config, plate: str, sites: Optional[Sequence] = None) -> bool:
    """A plate's illumination is done when its file exists with the current config hash
    and, given the plate's ``sites``, the same image list and no fixed unreadable image
    (:func:`pipeline.illum_valid`)."""
    if not cfg.illumination.enabled:
        return True
    return pipeline.illum_valid(pipeline.illum_path(cfg, plate), cfg, sites)


def illum_pending(cfg: Config, sites: Sequence) -> list[str]:
    """Plates that still need the illum stage: enabled, not done, and some site
    without CellProfiler illumination files of its own (``Site.illum_files``)."""
    if not cfg.illumination.enabled:
        return []
    by_plate: dict = {}
    for s in sites:  # one pass over the sites, not one per plate
        by_plate.setdefault(s.plate, []).append(s)
    return [plate for plate in sorted(by_plate)
            if pipeline.plate_needs_illum(cfg, by_plate[plate]) and not illum_done(cfg, plate, by_plate[plate])]


def plate_rows(manifest_file, plate: str) -> list[int]:
    """Row numbers of ``plate``'s sites in a saved manifest (reads the plate column only).

    An illum task then builds its plate's sites only, instead of every site
    of the batch and a filter.
    """
    import pyarrow.parquet as pq

    try:
        plates = pq.read_table(manifest_file, columns=["plate"]).column("plate").to_pylist()
    except Exception as exc:  # noqa: BLE001 - reported as the manifest's problem, naming the file
        raise manifest_mod.ManifestError(f"{manifest_file}: cannot read manifest: {exc}") from exc
    return [i for i, p in enumerate(plates) if p == plate]


def plates_of(sites: Iterable) -> list[str]:
    return sorted({s.plate for s in sites})


def scan_sites(cfg: Config, sites, verify: bool = False, progress: bool = False) -> "ledger.SiteScan":
    """Done/pending of every site (Site objects or :class:`SiteColumns`) from the completion ledger
    (:func:`hpc_profiler.ledger.scan_columns`)."""
    cols = sites if isinstance(sites, SiteColumns) else SiteColumns.of_sites(sites)
    return ledger.scan_columns(cfg, cols.plates, cols.wells, cols.numbers, verify=verify, progress=progress)


def pending_sites(cfg: Config, sites: Sequence, verify: bool = False, record_task: Optional[str] = None) -> list:
    """Sites not done, in manifest order (from the ledger; ``verify`` opens every file).

    With ``record_task``, sites found done by opening a file that had no
    current record (a task killed between file and record, outputs from before
    the ledger) are recorded in ``ledger/<record_task>.jsonl``, so the next
    scan trusts them without opening them.
    """
    scan = scan_sites(cfg, sites, verify=verify, progress=verify)
    if record_task:
        ledger.record_unrecorded(cfg, scan, record_task)
    return scan.pending(sites)


def chunk_ranges(n: int, size: int) -> list[tuple[int, int]]:
    """``[(0, size), (size, 2 size), ..., (k, n)]``: the index ranges of the array tasks."""
    if size < 1:
        raise ValueError(f"sites_per_task must be >= 1, got {size}")
    return [(a, min(a + size, n)) for a in range(0, n, size)]


# =========================================================================== task work
def remove_stale_temps(path: Path) -> int:
    """Delete temporary files a killed writer left next to ``path`` (``.<name>.<id>.tmp*``).

    Called only by the task that owns the site, before it writes the site
    again, so no live writer's file is removed. Returns how many were removed.
    """
    n = 0
    for tmp in Path(path).parent.glob(f".{Path(path).name}.*.tmp*"):
        try:
            tmp.unlink()
            n += 1
        except FileNotFoundError:
            pass
    return n


def run_extract_range(cfg: Config, sites_path, start: int, stop: int, batch: str = "", progress=None) -> dict:
    """Extract sites ``start:stop`` of a saved site list; the body of one extract task.

    Sites already done are skipped; a site that raises is recorded in the
    failure table and the task continues. Returns counts
    ``{"done", "skipped", "failed", "seconds"}``.
    """
    sites = manifest_mod.load_manifest(sites_path, range(start, stop))
    log = WorkLog(cfg, "extract", batch)
    counts = {"done": 0, "skipped": 0, "failed": 0}
    illum_cache: dict = {}
    t_task = time.time()
    todo = []
    for site in sites:
        if site_done(cfg, site):
            clear_failure(cfg, "extract", plate=site.plate, well=site.well, site=site.site)
            log.record_done(cfg, site)  # a file whose record a kill prevented is recorded now
            log.add(site.key, "skipped", time.time(), time.time())
            counts["skipped"] += 1
            if progress is not None:
                progress.update(1)
        else:
            todo.append(site)

    def read(site):
        return load_site_images(site, cfg.channels, cfg.input.full_scale)

    # the next site's images are read while this one computes (input.prefetch), for
    # remote inputs only: local reads are fast, and a task without a reader thread
    # leaves nothing running when Slurm preempts it
    remote = any(storage.is_url(f) for s in todo for f in s.files.values())
    for site, images in storage.prefetched(todo, read, cfg.input.prefetch if remote else 0):
        t0 = time.time()
        remove_stale_temps(pipeline.site_path(cfg, site))
        try:
            key = (site.plate, bool(site.illum_files))
            if key not in illum_cache:
                illum_cache[key] = pipeline.load_illum_for(cfg, site.plate, site)
            path = pipeline.extract_site(cfg, site, illum_cache[key], images=images.result())
        except UncompletedJobError:
            raise  # submitit's "out of requeues" signal, not a site failure
        except Exception as exc:
            record_failure(cfg, "extract", exc, plate=site.plate, well=site.well, site=site.site, batch=batch)
            status = "failed"
        else:
            clear_failure(cfg, "extract", plate=site.plate, well=site.well, site=site.site)
            # the file is in place before its record: a kill in between leaves a file that the
            # next scan validates (and records) or the next task redoes; never a record without a file
            log.record_done(cfg, site, path, time.time() - t0)
            status = "done"
        log.add(site.key, status, t0, time.time())
        counts[status] += 1
        if progress is not None:
            progress.update(1)
    counts["seconds"] = time.time() - t_task
    return counts


def run_illum_plate(cfg: Config, manifest_file, plate: str, batch: str = "") -> dict:
    """Compute one plate's illumination functions; the body of one illum task.

    Each site with unreadable images gets a row in the failure table (stage
    ``illum``, the file named); rows of sites that read well by now are
    cleared when the function is written.
    """
    log = WorkLog(cfg, "illum", batch)
    t0 = time.time()
    sites = manifest_mod.load_manifest(manifest_file, plate_rows(manifest_file, plate))
    unreadable: set = set()

    def on_unreadable(site, exc) -> None:
        unreadable.add((site.well, str(site.site)))
        record_failure(cfg, "illum", exc, plate=plate, well=site.well, site=site.site, batch=batch)

    if illum_done(cfg, plate, sites):
        status = "skipped"
    else:
        if cfg.illumination.enabled:
            remove_stale_temps(pipeline.illum_path(cfg, plate))
        try:
            pipeline.illum_plate(cfg, plate, sites, on_unreadable=on_unreadable)
        except UncompletedJobError:
            raise
        except Exception as exc:
            record_failure(cfg, "illum", exc, plate=plate, batch=batch)
            status = "failed"
        else:
            status = "done"
            for f in list_failures(cfg, "illum"):  # sites unreadable before and readable now
                if f.get("plate") == plate and f.get("well") and (f["well"], str(f.get("site"))) not in unreadable:
                    clear_failure(cfg, "illum", plate=plate, well=f["well"], site=f.get("site"))
    if status != "failed":
        clear_failure(cfg, "illum", plate=plate)
    log.add(plate, status, t0, time.time())
    return {"done": int(status == "done"), "skipped": int(status == "skipped"),
            "failed": int(status == "failed"), "unreadable": len(unreadable), "seconds": time.time() - t0}


class StageTask(submitit.helpers.Checkpointable):
    """One array task: ``task(start, stop)`` for extract, ``task(plate)`` for illum.

    Holds only the config, the stage, the path of the site list and the batch
    id. As a ``Checkpointable``, a task that is preempted or times out is
    requeued by submitit with the same arguments; since finished sites are
    skipped it continues from the first unfinished one. :meth:`checkpoint`
    refuses after ``executor.max_retries`` requeues, which ends the task.
    """

    def __init__(self, cfg: Config, stage: str, sites_path: str, batch: str):
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}; expected one of {STAGES}")
        self.cfg = cfg
        self.stage = stage
        self.sites_path = str(sites_path)
        self.batch = batch
        self.requeues = 0

    def __call__(self, *args) -> dict:
        if self.stage == "extract":
            start, stop = args
            return run_extract_range(self.cfg, self.sites_path, int(start), int(stop), self.batch)
        (plate,) = args
        return run_illum_plate(self.cfg, self.sites_path, plate, self.batch)

    def checkpoint(self, *args, **kwargs):
        if self.requeues >= self.cfg.executor.max_retries:
            return None  # submitit then ends the task as failed
        self.requeues += 1
        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)


# =========================================================================== executor
def resolve_kind(cfg: Config, kind: Optional[str] = None) -> str:
    """``slurm``, ``local`` or ``debug``: ``auto`` is Slurm when ``sbatch`` is on PATH."""
    kind = kind or cfg.executor.kind
    if kind == "auto":
        return "slurm" if shutil.which("sbatch") else "local"
    if kind not in ("slurm", "local", "debug"):
        raise OrchestrationError(f"executor.kind {kind!r}: expected auto, slurm, local or debug")
    return kind


def parse_extra_sbatch(lines: Sequence[str]) -> dict:
    """``["--constraint=a100", "exclusive", "#SBATCH --reservation r"]`` -> ``slurm_additional_parameters``.

    Accepts ``--key=value``, ``--key value``, ``key=value`` and bare flags
    (``--exclusive`` -> ``{"exclusive": True}``, which submitit writes as a
    flag). Short options (``-C x``) are refused: write their long names, which
    read unambiguously in a config.
    """
    out = {}
    for raw in lines:
        line = raw.strip()
        if line.startswith("#SBATCH"):
            line = line[len("#SBATCH"):].strip()
        if not line:
            continue
        if line.startswith("-") and not line.startswith("--"):
            raise OrchestrationError(f"executor.extra_sbatch: {raw!r}: use the long option (--name=value)")
        line = line[2:] if line.startswith("--") else line
        if "=" in line:
            key, value = line.split("=", 1)
        elif " " in line:
            key, value = line.split(None, 1)
        else:
            key, value = line, True
        out[key.strip().replace("-", "_")] = value.strip() if isinstance(value, str) else value
    return out


def executor_parameters(cfg: Config, stage: str, kind: str) -> dict:
    """``AutoExecutor.update_parameters`` arguments from ``cfg.executor``."""
    ex = cfg.executor
    params = {
        "name": f"{cfg.name}-{stage}",
        "timeout_min": int(ex.time_min),
        "cpus_per_task": int(ex.cpus_per_task),
        "mem_gb": float(ex.mem_gb),
    }
    if ex.gpus_per_node is not None:
        params["gpus_per_node"] = int(ex.gpus_per_node)
    if kind == "slurm":
        params["slurm_array_parallelism"] = int(ex.array_parallelism)
        for key in ("partition", "account", "qos", "gres"):
            value = getattr(ex, key)
            if value:
                params[f"slurm_{key}"] = value
        extra = parse_extra_sbatch(ex.extra_sbatch)
        if extra:
            params["slurm_additional_parameters"] = extra
        # keep BLAS/OpenMP threads to the CPUs the task asked for
        params["slurm_setup"] = [f"export OMP_NUM_THREADS={int(ex.cpus_per_task)}"]
    return params


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
    ex = submitit.AutoExecutor(folder=logs_dir(cfg) / "%j", cluster=kind, **extra)
    ex.update_parameters(**executor_parameters(cfg, stage, kind))
    return ex


# =========================================================================== submit
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
        what = "sites" if self.stage == "extract" else "plates"
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
        what = "site(s)" if self.stage == "extract" else "plate(s)"
        lines = [f"{self.stage}: {n} {what} not done: {len(self.lost)} task(s) ended without a result "
                 f"after {self.retries} retr{'y' if self.retries == 1 else 'ies'} (executor.max_retries)"]
        for e in self.lost:
            lines.append(f"  task {e.task}: {e.reason}; {what} {', '.join(e.items)}; log {e.log}")
        return "\n".join(lines)


def _new_batch_id(stage: str) -> str:
    return f"{stage}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"


def _missing_illum(cfg: Config, sites: Sequence) -> list[str]:
    """Plates of ``sites`` that need illumination functions and have none for this config.

    A function that is only stale (an image that was unreadable has been fixed
    since) still serves the extract stage; the illum stage redoes it.
    """
    if not cfg.illumination.enabled:
        return []
    by_plate: dict = {}
    for s in sites:
        by_plate.setdefault(s.plate, []).append(s)
    return [plate for plate in sorted(by_plate)
            if pipeline.plate_needs_illum(cfg, by_plate[plate]) and not illum_done(cfg, plate)]


def _item_key(stage: str, item) -> str:
    """``plate/well/site`` of a site, or the plate name."""
    return item if stage == "illum" else f"{item.plate}/{item.well}/{item.site}"


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
    if stage not in STAGES:
        raise OrchestrationError(f"unknown stage {stage!r}; expected one of {', '.join(STAGES)}")
    kind = resolve_kind(cfg, kind)
    # the manifest is rebuilt at every submission, so sites added to the input are picked up
    batch = _new_batch_id(stage)
    if stage == "extract":
        # columns, not Site objects: at 370,000 sites building the objects costs more than the ledger
        cols = manifest_columns(cfg, rebuild=True, write=not dry_run)
        scan = scan_sites(cfg, cols, verify=verify, progress=verify)
        if not dry_run:
            ledger.record_unrecorded(cfg, scan, f"submit-{batch}")
        pending = scan.pending_indices()
        todo = pending if dry_run else cols.select(pending)
        n_total = len(cols)
        if todo and not dry_run:
            missing = _missing_illum(cfg, todo)
            if missing:
                raise OrchestrationError(
                    f"extract: plates {', '.join(missing)} have no illumination functions in "
                    f"{pipeline.illum_path(cfg, missing[0]).parent}; run `hpc-profiler submit illum` first"
                )
        n_tasks = len(chunk_ranges(len(todo), cfg.executor.sites_per_task))
    else:
        sites = manifest_mod.build_manifest(cfg)[0] if dry_run else load_or_build_manifest(cfg, rebuild=True)
        plates = plates_of(sites)
        todo = illum_pending(cfg, sites)
        n_total = len(plates)
        n_tasks = len(todo)
    result = SubmitResult(stage=stage, batch=batch, kind=kind, n_total=n_total, n_done=n_total - len(todo),
                          n_scheduled=len(todo), n_tasks=n_tasks, dry_run=dry_run)
    if dry_run or not todo:
        return result

    jobs, items = _launch(cfg, stage, kind, batch, todo)
    result.batch_dir = batches_dir(cfg) / batch
    result.jobs = jobs
    result.job_ids = [str(j.job_id) for j in jobs]
    if not wait:
        return result
    total = len(todo) if stage == "extract" else n_tasks
    while True:
        started = time.time()
        bar = Progress(stage, total, "site" if stage == "extract" else "plate",
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
        notify(f"{stage}: resubmitting {len(again)} {'site' if stage == 'extract' else 'plate'}(s) of "
               f"{len(lost)} task(s) that ended without a result ("
               + "; ".join(f"{e.task}: {e.reason}" for e in lost)
               + f"), retry {result.retries} of {cfg.executor.max_retries}")
        batch = _new_batch_id(stage)
        jobs, items = _launch(cfg, stage, kind, batch, again)
        result.job_ids += [str(j.job_id) for j in jobs]
        result.jobs += jobs
        total = len(again)


def _launch(cfg: Config, stage: str, kind: str, batch: str, todo: Sequence) -> tuple[list, list]:
    """Submit ``todo`` (sites or plates) as one array job of batch ``batch``; returns (jobs, items per job)."""
    bdir = batches_dir(cfg) / batch
    bdir.mkdir(parents=True, exist_ok=True)
    if stage == "extract":
        ranges = chunk_ranges(len(todo), cfg.executor.sites_per_task)
        args: list = [[a for a, _ in ranges], [b for _, b in ranges]]
        items = [list(todo[a:b]) for a, b in ranges]
        sites_path = manifest_mod.save_manifest(list(todo), bdir / "sites.parquet")
    else:
        args = [list(todo)]
        items = [[p] for p in todo]
        sites_path = manifest_path(cfg)
    task = StageTask(cfg, stage, str(sites_path), batch)
    executor = make_executor(cfg, stage, kind)
    jobs = executor.map_array(task, *args)
    _write_json_atomic(bdir / "batch.json", {
        "batch": batch, "stage": stage, "kind": kind, "created": time.time(),
        "n_scheduled": len(todo), "n_tasks": len(jobs), "job_ids": [str(j.job_id) for j in jobs],
        "sites_per_task": cfg.executor.sites_per_task, "config_hash": cfg.hash(),
    })
    return jobs, items


# =========================================================================== liveness
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
        undone = [it for it in its if not (illum_done(cfg, it) if stage == "illum" else site_done(cfg, it))]
        if not undone:
            continue
        for it in undone:
            where = dict(plate=it) if stage == "illum" else dict(plate=it.plate, well=it.well, site=it.site)
            fpath = failure_path(cfg, stage, **where)
            try:
                if read_json(fpath).get("batch") == batch:
                    continue  # the task recorded this one itself before it died
            except (OSError, ValueError):
                pass
            record_failure(cfg, stage, err, batch=batch, task=err.task, **where)
        err.items = [_item_key(stage, it) for it in undone]
        err.item_objects = undone
        lost.append(err)
    return lost


# =========================================================================== plain sbatch
def task_count(cfg: Config, stage: str) -> int:
    """Array size for the plain sbatch templates (writes the manifest when missing)."""
    sites = load_or_build_manifest(cfg)
    if stage == "illum":
        return len(plates_of(sites))
    return len(chunk_ranges(len(sites), cfg.executor.sites_per_task))


def run_task(cfg: Config, stage: str, task_id: int) -> dict:
    """Task ``task_id`` of a plain sbatch array over the full manifest.

    ``extract``: sites ``[N * sites_per_task, (N + 1) * sites_per_task)`` of
    ``<out>/manifest.parquet``; ``illum``: the N-th plate (sorted). Done work
    is skipped, so rerunning the whole array resumes.
    """
    mpath = manifest_path(cfg)
    if not mpath.exists():
        load_or_build_manifest(cfg)
    if stage == "illum":
        plates = plates_of(manifest_mod.load_manifest(mpath))
        if not 0 <= task_id < len(plates):
            raise OrchestrationError(f"illum: task id {task_id} outside 0..{len(plates) - 1} ({len(plates)} plates)")
        return run_illum_plate(cfg, mpath, plates[task_id], batch=f"sbatch-{stage}")
    if stage != "extract":
        raise OrchestrationError(f"unknown stage {stage!r}; expected one of {', '.join(STAGES)}")
    n = manifest_mod.manifest_length(mpath)
    ranges = chunk_ranges(n, cfg.executor.sites_per_task)
    if not 0 <= task_id < len(ranges):
        raise OrchestrationError(f"extract: task id {task_id} outside 0..{len(ranges) - 1} ({n} sites)")
    start, stop = ranges[task_id]
    return run_extract_range(cfg, mpath, start, stop, batch=f"sbatch-{stage}")


# =========================================================================== CLI
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
        print(f"logs: {logs_dir(cfg)}/<job id>   status: hpc-profiler status {shlex.quote(args.config)}")
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


def add_status_arguments(parser: argparse.ArgumentParser) -> None:
    from .status import add_status_arguments as _add

    _add(parser)


def main_status(args) -> int:
    from .status import main_status as _main

    return _main(args)
