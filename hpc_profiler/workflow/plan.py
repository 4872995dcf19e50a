"""What of a batch is done: sites from the completion ledger, plates' illumination functions.

* A site is done when the completion ledger names its file with the current
  config hash and its plate's current illumination function (digest), and the
  file is there with the recorded size and mtime
  (:func:`hpc_profiler.ledger.scan_columns`); a file without such a record is
  validated the old way, and ``verify=True`` validates every file.
* A plate's illumination is done when its file carries the config hash, the
  same image list and no fixed unreadable image (:func:`hpc_profiler.pipeline.illum_valid`).
"""
from __future__ import annotations

from typing import Optional, Sequence

from .. import ledger, pipeline
from ..config import Config
from ..layout import Layout
from .sites import SiteColumns


def site_illum_digest(cfg: Config, site) -> Optional[str]:
    """The digest of the illumination function ``site`` must have been made with: its plate's
    current one (:func:`hpc_profiler.ledger.plate_illum_digest`), None when illumination is off,
    the site names CellProfiler's own functions, or the plate has no function file yet."""
    if not cfg.illumination.enabled or site.has_own_illum(cfg.channels):
        return None
    return ledger.plate_illum_digest(cfg, site.plate)


def site_done(cfg: Config, site) -> bool:
    """A site is done when its file (or its group of the plate's packed file) validates for the
    current config hash and was made with its plate's current illumination function
    (:meth:`hpc_profiler.layout.Layout.site_done`, :func:`site_illum_digest`). The deep check of
    one site; for many sites use :func:`pending_sites`, which reads the ledger."""
    return Layout.of(cfg).site_done(site.plate, site.well, site.site, site_illum_digest(cfg, site))


def illum_done(cfg: Config, plate: str, sites: Optional[Sequence] = None) -> bool:
    """A plate's illumination is done when its file exists with the current config hash
    and, given the plate's ``sites``, the same image list and no fixed unreadable image
    (:func:`pipeline.illum_valid`)."""
    if not cfg.illumination.enabled:
        return True
    return pipeline.illum_valid(Layout.of(cfg).illum(plate), cfg, sites)


def illum_pending(cfg: Config, sites: Sequence, *, stale: bool = True) -> list[str]:
    """Plates that still need the illum stage: enabled, not done, and some site
    without CellProfiler illumination files of its own (``Site.illum_files``).

    ``stale=False`` lists only plates with no function for this config at all:
    a function that is only stale (an image that was unreadable has been
    fixed since) still serves the extract stage; the illum stage redoes it.
    """
    if not cfg.illumination.enabled:
        return []
    by_plate: dict = {}
    for s in sites:  # one pass over the sites, not one per plate
        by_plate.setdefault(s.plate, []).append(s)
    return [plate for plate in sorted(by_plate)
            if pipeline.plate_needs_illum(cfg, by_plate[plate])
            and not illum_done(cfg, plate, by_plate[plate] if stale else None)]


def scan_sites(cfg: Config, sites, verify: bool = False, progress: bool = False) -> "ledger.SiteScan":
    """Done/pending of every site (Site objects or :class:`SiteColumns`) from the completion ledger
    (:func:`hpc_profiler.ledger.scan_columns`)."""
    cols = sites if isinstance(sites, SiteColumns) else SiteColumns.of_sites(sites)
    return ledger.scan_columns(cfg, cols.plates, cols.wells, cols.numbers, verify=verify, progress=progress)


def pending_sites(cfg: Config, sites: Sequence, verify: bool = False, record_task: Optional[str] = None) -> list:
    """Sites not done, in manifest order (from the ledger; ``verify`` opens every file).

    With ``record_task``, sites found done by opening a file that had no
    current record (a task killed between file and record, outputs from before
    the ledger) are recorded in ``ledger/<record_task>.tsv``, so the next
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
