"""The body of one array task: a chunk of sites (extract) or a plate (illum).

Tasks receive only (path of the scheduled-sites Parquet file, index range) or
(manifest path, plate): never the manifest itself. A site already done is
skipped, a site that raises gets a failure record and the task goes on, so a
task is idempotent and a requeued or rerun one continues from its first
unfinished site. :class:`hpc_profiler.workflow.arrays.StageTask` runs them
under submitit, :func:`hpc_profiler.workflow.arrays.run_task` under plain
``sbatch`` templates (``hpc-profiler run-task``).
"""
from __future__ import annotations

import time
from pathlib import Path

from submitit.core.utils import UncompletedJobError

from .. import manifest as manifest_mod, pipeline, storage
from ..config import Config
from ..images import load_site_images
from ..layout import Layout
from .plan import illum_done, site_done
from .sites import plate_rows
from .records import WorkLog, clear_failure, list_failures, record_failure


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
    layout = Layout.of(cfg)
    log = WorkLog(layout, "extract", batch)
    counts = {"done": 0, "skipped": 0, "failed": 0}
    illum_cache: dict = {}
    t_task = time.time()
    todo = []
    for site in sites:
        if site_done(cfg, site):
            clear_failure(layout, "extract", plate=site.plate, well=site.well, site=site.site)
            log.record_done(site)  # a file whose record a kill prevented is recorded now
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
        remove_stale_temps(layout.site_of(site))
        try:
            key = (site.plate, bool(site.illum_files))
            if key not in illum_cache:
                illum_cache[key] = pipeline.load_illum_for(cfg, site.plate, site)
            path = pipeline.extract_site(cfg, site, illum_cache[key], images=images.result())
        except UncompletedJobError:
            raise  # submitit's "out of requeues" signal, not a site failure
        except Exception as exc:
            record_failure(layout, "extract", exc, plate=site.plate, well=site.well, site=site.site, batch=batch)
            status = "failed"
        else:
            clear_failure(layout, "extract", plate=site.plate, well=site.well, site=site.site)
            # the file is in place before its record: a kill in between leaves a file that the
            # next scan validates (and records) or the next task redoes; never a record without a file
            log.record_done(site, path, time.time() - t0)
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
    layout = Layout.of(cfg)
    log = WorkLog(layout, "illum", batch)
    t0 = time.time()
    sites = manifest_mod.load_manifest(manifest_file, plate_rows(manifest_file, plate))
    unreadable: set = set()

    def on_unreadable(site, exc) -> None:
        unreadable.add((site.well, str(site.site)))
        record_failure(layout, "illum", exc, plate=plate, well=site.well, site=site.site, batch=batch)

    if illum_done(cfg, plate, sites):
        status = "skipped"
    else:
        if cfg.illumination.enabled:
            remove_stale_temps(layout.illum(plate))
        try:
            pipeline.illum_plate(cfg, plate, sites, on_unreadable=on_unreadable)
        except UncompletedJobError:
            raise
        except Exception as exc:
            record_failure(layout, "illum", exc, plate=plate, batch=batch)
            status = "failed"
        else:
            status = "done"
            for f in list_failures(layout, "illum"):  # sites unreadable before and readable now
                if f.get("plate") == plate and f.get("well") and (f["well"], str(f.get("site"))) not in unreadable:
                    clear_failure(layout, "illum", plate=plate, well=f["well"], site=f.get("site"))
    if status != "failed":
        clear_failure(layout, "illum", plate=plate)
    log.add(plate, status, t0, time.time())
    return {"done": int(status == "done"), "skipped": int(status == "skipped"),
            "failed": int(status == "failed"), "unreadable": len(unreadable), "seconds": time.time() - t0}
