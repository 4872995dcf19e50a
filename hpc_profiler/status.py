"""``hpc-profiler status``: how far a batch is, what runs, what failed.

Reads only files the orchestration writes (:mod:`hpc_profiler.orchestrate`):
the completion ledger (done = recorded with the current config hash, the file
there with the recorded size; :func:`hpc_profiler.ledger.scan_sites`; with
``--verify`` every site file is opened and validated instead), the failure
table, the work logs and the batch records; asks ``squeue`` which of the
recorded jobs still run. Per plate: done / failed / pending sites and whether
the illumination functions exist; overall: throughput (sites per hour over the
work log's span of done sites) and an ETA for the pending sites.

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

from . import orchestrate as orch
from .config import ConfigError, load_config


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
    cols = orch.manifest_columns(cfg)
    scan = orch.scan_sites(cfg, cols, verify=verify, progress=verify)
    failures = orch.list_failures(cfg, "illum") + orch.list_failures(cfg, "extract")
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
        p.illum = orch.illum_done(cfg, p.plate) if cfg.illumination.enabled else None
    failures = [f for f in failures if f["stage"] != "extract" or (f["plate"], f["well"], f["site"]) not in done_keys]
    job_ids = []
    bdir = orch.batches_dir(cfg)
    if bdir.exists():
        for b in sorted(bdir.glob("*/batch.json")):
            try:
                job_ids += orch.read_json(b).get("job_ids", [])
            except (OSError, ValueError):
                continue
    st = BatchStatus(plates=[plates[k] for k in sorted(plates)], failures=failures,
                     running_jobs=squeue_states(job_ids), scan=scan,
                     damaged=list(scan.problems))
    st.throughput_per_hour = throughput(orch.read_worklog(cfg, "extract"))
    st.stages = mpi_stage_states(cfg)
    pending = st.totals.pending
    if st.throughput_per_hour:
        st.eta_s = pending / st.throughput_per_hour * 3600.0
    return st


def mpi_stage_states(cfg) -> dict:
    """State of the MPI stages from their stamps (:mod:`hpc_profiler.run`):
    "up to date" when the stamp matches the current inputs, "out of date" when
    the inputs changed since (new or redone site files, a new profile table),
    "not run" without a stamp."""
    from . import run

    states = {}
    for stage, digest in (("reduce", run.site_files_digest), ("evaluate", run.profiles_digest)):
        if run.stage_is_current(cfg, stage, digest(cfg)):
            states[stage] = "up to date"
        elif run.stamp_path(cfg, stage).exists():
            states[stage] = "out of date"
        else:
            states[stage] = "not run"
    return states


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
    illum_failed = [f for f in st.failures if f["stage"] == "illum"]
    if illum_failed:
        lines.append(f"illumination failed for plates: {', '.join(f['plate'] for f in illum_failed)}")
    if st.damaged:
        lines.append(f"{len(st.damaged)} site(s) recorded as done have a missing, changed or invalid file "
                     "(pending again):")
        for key, path, reason in st.damaged if failed else st.damaged[:5]:
            lines.append(f"  {key}: {path}: {reason}")
        if not failed and len(st.damaged) > 5:
            lines.append(f"  ... {len(st.damaged) - 5} more; list them with --failed")
    if st.failures:
        lines.append(f"{len(st.failures)} failure(s)" + ("" if failed else "; list them with --failed"))
    if failed:
        for f in st.failures:
            where = f["plate"] if f["stage"] == "illum" else f"{f['plate']}/{f['well']}/{f['site']}"
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
    except (ConfigError, orch.OrchestrationError, orch.manifest_mod.ManifestError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(format_status(st, failed=args.failed))
    return 1 if st.failures else 0
