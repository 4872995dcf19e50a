"""``hpc-profiler status``: how far a batch is, what runs, what failed.

Reads only files the orchestration writes (:mod:`hpc_profiler.workflow`):
the completion ledger (done = recorded with the current config hash, the file
there with the recorded size; :func:`hpc_profiler.ledger.scan_sites`; with
``--verify`` every site file is opened and validated instead), the failure
table, the work logs and the batch records; asks ``squeue`` which of the
recorded jobs still run. Per plate: done / failed / pending sites and whether
the illumination functions exist; overall: throughput (sites per hour over the
work log's span of done sites) and an ETA for the pending sites while
something is queued or running (without a running job nothing will finish by
itself, so no ETA is shown).

Dead tasks: a Slurm task of a recorded extract or illum batch that has left
the queue without writing its result (``kill -9``, ``scancel``, out of memory,
node failure) while some of its sites (its plate) are not done shows those
sites (that plate) as failed, with the task's Slurm state from ``scontrol``
(:func:`dead_task_failures`), even when no driver is waiting to record them.

The exit code of :func:`main_status` is non-zero while any failure record
exists, so a script can loop ``until hpc-profiler status CONFIG; do ...``.
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass, field
from itertools import compress
from typing import Optional

from . import manifest as manifest_mod
from .config import ConfigError, load_config
from .layout import Layout
from .workflow import OrchestrationError
from .workflow.plan import chunk_ranges, illum_done, scan_sites
from .workflow.sites import manifest_columns
from .workflow.records import list_failures, read_json, read_worklog
from .workflow.stages import STAGES, StampedStage
from .workflow.watch import slurm_job_end, slurm_queue


@dataclass
class PlateStatus:
    plate: str
    total: int = 0
    done: int = 0
    failed: int = 0
    pending: int = 0
    illum: Optional[bool] = None  # None: illumination disabled


@dataclass
class BatchStatus:
    """What :func:`collect_status` found."""

    plates: list = field(default_factory=list)
    failures: list = field(default_factory=list)  # extract and illum records not yet cleared
    running_jobs: list = field(default_factory=list)  # (job id, state) from squeue
    throughput_per_hour: Optional[float] = None
    eta_s: Optional[float] = None
    stages: dict = field(default_factory=dict)  # reduce / evaluate -> "up to date" | "out of date" | "not run"
    damaged: list = field(default_factory=list)  # (plate/well/site, path, reason): recorded done, file gone or changed
    scan: object = None  # the ledger.SiteScan the counts come from (files read, seconds)

    @property
    def totals(self) -> PlateStatus:
        t = PlateStatus("all")
        for p in self.plates:
            t.total += p.total
            t.done += p.done
            t.failed += p.failed
            t.pending += p.pending
        return t


def squeue_states(job_ids) -> list[tuple[str, str]]:
    """(job id, state) of those of ``job_ids`` (array ids or ``<array>_<task>``) still queued or running."""
    ids = sorted({str(j).split("_")[0] for j in job_ids})
    if not ids or shutil.which("squeue") is None:
        return []
    try:
        out = subprocess.run(["squeue", "-h", "-j", ",".join(ids), "-o", "%i %T"],
                             capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return []
    if out.returncode != 0:  # jobs long gone make squeue complain; nothing runs then
        return []
    return [tuple(line.split(None, 1)) for line in out.stdout.splitlines() if line.strip()]


def throughput(records: list) -> Optional[float]:
    """Sites per hour of the latest batch that finished sites: done sites over its busy span.

    The span runs from the batch's first site start to its last site end, so
    idle time between submissions does not dilute the rate.
    """
    done = [r for r in records if r.get("status") == "done"]
    if not done:
        return None
    latest = max(done, key=lambda r: r["end"]).get("batch")
    done = [r for r in done if r.get("batch") == latest]
    span = max(r["end"] for r in done) - min(r["start"] for r in done)
    return len(done) / span * 3600.0 if span > 0 else None


def collect_status(cfg, verify: bool = False) -> BatchStatus:
    """Per-plate counts, failures, running jobs, throughput and ETA of the extract stage.

    Done sites come from the completion ledger; ``verify`` validates every
    site file instead (in parallel, with progress).
    """
    cols = manifest_columns(cfg)
    scan = scan_sites(cfg, cols, verify=verify, progress=verify)
    failures = list_failures(cfg, "illum") + list_failures(cfg, "extract")
    failed_keys = {(f["plate"], f["well"], f["site"]) for f in failures if f["stage"] == "extract"}
    # counted per plate with C-level Counters: a Python loop per site costs seconds at 370,000 sites
    total = Counter(cols.plates)
    done = Counter(compress(cols.plates, scan.done))
    state = {}  # failed site of the manifest -> done by now
    if failed_keys:
        for p, w, n, d in zip(cols.plates, cols.wells, cols.numbers, scan.done):
            k = (p, w, str(n))
            if k in failed_keys:
                state[k] = d
    failed = Counter(k[0] for k, d in state.items() if not d)  # a failure counts while its site is not done
    plates = {name: PlateStatus(name, total=n, done=done[name], failed=failed[name],
                                pending=n - done[name] - failed[name]) for name, n in total.items()}
    # a failure record of a site that is done by now is stale (written by a lost race); dropped below
    done_keys = {k for k, d in state.items() if d}
    for p in plates.values():
        p.illum = illum_done(cfg, p.plate) if cfg.illumination.enabled else None
    failures = [f for f in failures if f["stage"] != "extract" or (f["plate"], f["well"], f["site"]) not in done_keys]
    job_ids = []
    bdir = Layout.of(cfg).batches
    if bdir.exists():
        for b in sorted(bdir.glob("*/batch.json")):
            try:
                job_ids += read_json(b).get("job_ids", [])
            except (OSError, ValueError):
                continue
    st = BatchStatus(plates=[plates[k] for k in sorted(plates)], failures=failures,
                     running_jobs=squeue_states(job_ids), scan=scan,
                     damaged=list(scan.problems))

    def settled_keys() -> set:  # done or already failed; built only when a Slurm batch is on record
        done_all = {(p, w, str(n)) for p, w, n, d in zip(cols.plates, cols.wells, cols.numbers, scan.done) if d}
        return done_all | failed_keys

    _add_dead_tasks(st, dead_task_failures(cfg, settled_keys))
    st.throughput_per_hour = throughput(read_worklog(cfg, "extract"))
    st.stages = mpi_stage_states(cfg)
    pending = st.totals.pending
    if st.throughput_per_hour and st.running_jobs and pending:  # an ETA only while work can progress
        st.eta_s = pending / st.throughput_per_hour * 3600.0
    return st


def dead_task_failures(cfg, settled_keys) -> list[dict]:
    """Failure rows (not written to the table) for the sites and plates of dead extract and illum tasks.

    A task of a recorded Slurm batch is dead when ``squeue`` no longer lists
    it and submitit holds no result of it. Its extract sites that are neither
    done nor already in the failure table (``settled_keys``: (plate, well,
    site) with the site as text, a set or a callable returning one, called
    only when a Slurm batch is on record), and its illum plate when that plate
    has no illumination functions and no failure record, are failed with the
    task's Slurm state. An item counts for its most recent batch only, so one
    resubmitted in a newer batch is pending, not failed. Nothing is concluded
    when ``squeue`` does not answer.
    """
    from submitit.core.utils import JobPaths

    bdir = Layout.of(cfg).batches
    records = []
    for b in bdir.glob("*/batch.json") if bdir.exists() else []:
        try:
            rec = read_json(b)
        except (OSError, ValueError):
            continue
        if rec.get("stage") in ("extract", "illum") and rec.get("kind") == "slurm" and rec.get("job_ids"):
            records.append((float(rec.get("created", 0)), b.parent, rec))
    if not records:
        return []
    queue = slurm_queue()
    if queue is None:
        return []
    if callable(settled_keys):
        settled_keys = settled_keys()
    logs = Layout.of(cfg).logs

    def dead(jid) -> bool:
        return str(jid) not in queue and not JobPaths(logs / "%j", job_id=str(jid), task_id=0).result_pickle.exists()

    def row(stage, jid, rec, reason, plate, well=None, site=None) -> dict:
        return {"stage": stage, "plate": plate, "well": well, "site": site, "error_type": "TaskLostError",
                "message": f"task {jid} ended without a result: {reason}", "task": str(jid),
                "batch": rec.get("batch", ""), "time": "-"}

    seen: set = set()
    rows = []
    illum_failed = None
    for _created, folder, rec in sorted(records, key=lambda r: r[0], reverse=True):  # newest first
        if rec["stage"] == "illum":
            if illum_failed is None:
                illum_failed = {f["plate"] for f in list_failures(cfg, "illum") if not f.get("well")}
            for jid, plate in zip(rec["job_ids"], rec.get("plates") or []):
                if ("illum", plate) in seen:
                    continue
                seen.add(("illum", plate))
                if plate not in illum_failed and dead(jid) and not illum_done(cfg, plate):
                    rows.append(row("illum", jid, rec, slurm_job_end(str(jid)), plate))
            continue
        try:
            sites = manifest_mod.load_manifest(folder / "sites.parquet")
        except Exception:  # noqa: BLE001 - a batch folder without its site list tells nothing
            continue
        ranges = chunk_ranges(len(sites), int(rec.get("sites_per_task") or 1))
        for jid, (a, b) in zip(rec["job_ids"], ranges):
            keys = [(s.plate, s.well, str(s.site)) for s in sites[a:b]]
            fresh = [k for k in keys if k not in seen]
            seen.update(keys)
            todo = [k for k in fresh if k not in settled_keys]
            if not todo or not dead(jid):
                continue  # a task that ended normally has its failures in the table
            reason = slurm_job_end(str(jid))
            rows += [row("extract", jid, rec, reason, *k) for k in todo]
    return rows


def _add_dead_tasks(st: BatchStatus, rows: list) -> None:
    """Count the sites of dead tasks as failed (they were pending) and list them with the failures."""
    by_plate = {p.plate: p for p in st.plates}
    for r in rows:
        p = by_plate.get(r["plate"])
        if r["stage"] == "extract" and p is not None and p.pending > 0:
            p.pending -= 1
            p.failed += 1
    st.failures = st.failures + rows


def mpi_stage_states(cfg) -> dict:
    """State of the stamped stages (reduce, evaluate), each asked through its
    :class:`hpc_profiler.workflow.stages.Stage` object: "up to date" when the
    stamp matches the current inputs, "out of date" when the inputs changed
    since (new or redone site files, a new profile table), "not run" without a
    stamp."""
    return {name: stage.state(cfg) for name, stage in STAGES.items() if isinstance(stage, StampedStage)}


def _fmt_s(s: Optional[float]) -> str:
    if s is None:
        return "-"
    s = int(round(s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def format_status(st: BatchStatus, failed: bool = False) -> str:
    """The table ``hpc-profiler status`` prints."""
    lines = [f"{'plate':<24} {'sites':>7} {'done':>7} {'failed':>7} {'pending':>8}  illum"]
    for p in st.plates + [st.totals]:
        illum = {None: "-", True: "yes", False: "no"}[p.illum]
        lines.append(f"{p.plate:<24} {p.total:>7} {p.done:>7} {p.failed:>7} {p.pending:>8}  {illum if p.plate != 'all' else ''}")
    tp = f"{st.throughput_per_hour:.1f} sites/h" if st.throughput_per_hour else "-"
    lines.append(f"throughput {tp}, ETA {_fmt_s(st.eta_s)}")
    running = ", ".join(f"{j} ({s})" for j, s in st.running_jobs) or "none"
    lines.append(f"jobs queued or running: {running}")
    if st.stages:
        lines.append("; ".join(f"{k}: {v}" for k, v in st.stages.items()))
    illum_failed = [f for f in st.failures if f["stage"] == "illum" and not f.get("well")]
    if illum_failed:
        lines.append(f"illumination failed for plates: {', '.join(f['plate'] for f in illum_failed)}")
    unreadable = [f for f in st.failures if f["stage"] == "illum" and f.get("well")]
    if unreadable:
        lines.append(f"illumination: {len(unreadable)} site(s) with unreadable images left out of "
                     f"plates {', '.join(sorted({f['plate'] for f in unreadable}))}")
    if st.damaged:
        lines.append(f"{len(st.damaged)} site(s) recorded as done have a missing, changed or invalid file "
                     "(pending again):")
        for key, path, reason in st.damaged if failed else st.damaged[:5]:
            lines.append(f"  {key}: {path}: {reason}")
        if not failed and len(st.damaged) > 5:
            lines.append(f"  ... {len(st.damaged) - 5} more; list them with --failed")
    stale = getattr(st.scan, "illum_stale", None)
    if stale:
        lines.append(f"{sum(stale.values())} site(s) of plate(s) {', '.join(sorted(stale))} were made with an earlier "
                     "illumination function of their plate (pending again)")
    if st.failures:
        lines.append(f"{len(st.failures)} failure(s)" + ("" if failed else "; list them with --failed"))
    if failed:
        for f in st.failures:
            where = f"{f['plate']}/{f['well']}/{f['site']}" if f.get("well") else f["plate"]
            lines.append(f"  [{f['stage']}] {where}: {f['error_type']}: {f['message']} "
                         f"(task {f['task']}, {f['time']})")
    return "\n".join(lines)


def add_status_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``hpc-profiler status``."""
    parser.add_argument("config", help="config file (YAML)")
    parser.add_argument("--failed", action="store_true", help="list every failure with its message")
    parser.add_argument("--verify", action="store_true",
                        help="open and validate every site file (in parallel) instead of trusting the ledger")


def main_status(args) -> int:
    """Print the status; exit 1 while any failure is recorded, 2 on a config error."""
    try:
        cfg = load_config(args.config)
        st = collect_status(cfg, verify=args.verify)
    except (ConfigError, OrchestrationError, manifest_mod.ManifestError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(format_status(st, failed=args.failed))
    return 1 if st.failures else 0
