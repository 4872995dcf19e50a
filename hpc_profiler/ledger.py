"""Completion ledger: which sites are done, read from O(array tasks) files, not O(sites).

Opening every site file to decide what is done (``sitefile.validate_site_file``)
costs about a millisecond per site on local disk and a metadata round trip per
site on a parallel file system: minutes per ``status`` at CPJUMP1 scale
(370,000 sites). Instead, every extract task appends one line per finished
site to its own ledger file, one tab-separated line per record::

    <out>/ledger/<task>.tsv    <plate/well/site> <file> <size> <mtime ns> <config hash> <seconds> <time> .

``file`` is relative to ``<out>`` (``sites/<plate>/<row>/<name>.h5``); a site
packed into its plate's file (:func:`hpc_profiler.pack.pack_plate`) is named
``packed/<plate>.h5::<well>_s<site>``. Tab-separated text parses about ten
times faster than JSON lines, which matters at 370,000 records. A record is
one ``os.write`` of one line on an ``O_APPEND`` file that only its task
writes; a kill can at worst cut the last line, which readers skip (a line
counts only with all its fields and the final ``.``; the next writer ends
the cut line first).

:func:`scan_sites` decides done/pending for a whole manifest from

* the ledger files (one listing of ``<out>/ledger`` + one read per task file),
* one listing per ``sites/<plate>/<row>`` folder (which site files exist), and
* one ``stat`` per ledgered site file (size and mtime must match the record;
  measured by ``scripts/bench_bookkeeping.py`` at about 1 s per 370,000 files
  on local disk, inside the 10 s budget, and it catches truncated files).

A site is trusted as done only when the newest record for it carries the
current config hash and its file exists with the recorded size and mtime.
Only files that exist without such a record (a task killed between writing
the file and its record, a file changed since its record, outputs written
before the ledger existed) are opened and validated the old way; a record
with another config hash whose file is unchanged marks the site stale without
opening it, so a config change makes every site pending at ledger cost.
``verify=True`` (``--verify`` of ``status`` and ``submit``) instead validates
every existing site file in parallel processes, with a progress bar.

Records are keyed by site: several records for one site (a requeued task, a
lost race, a repack) count once, the newest winning.
"""
from __future__ import annotations

import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

from . import sitefile
from .layout import Layout
from .sitefile import pack_group  # noqa: F401 - the name packers and readers import from here

#: candidates up to this many are validated in this process; more go to worker processes
SERIAL_LIMIT = 64


def ledger_dir(out) -> Path:
    """``<out>/ledger``: one ``<task>.tsv`` per task that finished (or packed) sites."""
    return Layout(out).ledger_dir


def site_key(plate, well, site) -> str:
    """``plate/well/site``, the same as :attr:`manifest.Site.key`."""
    return f"{plate}/{well}/{site}"


# =========================================================================== writing
class LedgerWriter:
    """Appends the records of one task to ``<out>/ledger/<task>.tsv``.

    A requeued task reuses its file (the task id is the same); if its previous
    incarnation was killed in the middle of a line, that line is ended first
    so the cut record cannot swallow the next one.
    """

    def __init__(self, out, task: str):
        self.out = Path(out)
        self.path = ledger_dir(out) / f"{task}{SUFFIX}"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with open(self.path, "rb") as fh:
                fh.seek(-1, os.SEEK_END)
                cut = fh.read(1) != b"\n"
        except (FileNotFoundError, OSError):
            cut = False
        if cut:
            self._append(b"\n")

    def _append(self, data: bytes) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)

    def record(self, key: str, path, config_hash: str, seconds: float = 0.0) -> dict:
        """Record that site ``key`` is finished in ``path`` (a file or a packed site name)."""
        file, group = sitefile.split_ref(path)
        st = os.stat(file)
        rel = os.path.relpath(file, self.out)
        rec = {"k": key, "f": rel if group is None else sitefile.site_ref(rel, group), "size": st.st_size,
               "mtime": st.st_mtime_ns, "h": config_hash, "s": round(float(seconds), 3), "t": time.time()}
        self._append(format_record(rec).encode())
        return rec


SUFFIX = ".tsv"
_FIELDS = ("k", "f", "size", "mtime", "h", "s", "t")


def format_record(rec: dict) -> str:
    """One ledger line (tab-separated, ending in ``.``); keys and paths with tabs or newlines are refused."""
    for k in ("k", "f", "h"):
        if any(c in str(rec[k]) for c in "\t\n\r"):
            raise ValueError(f"ledger: {k} {rec[k]!r} contains a tab or a line break")
    return "\t".join(str(rec[k]) for k in _FIELDS) + "\t.\n"


def parse_record(line: str) -> Optional[dict]:
    """The record of one ledger line, or None for a line cut by a kill (or otherwise malformed)."""
    p = line.split("\t")
    if len(p) != 8 or p[7] != ".":
        return None
    try:
        return {"k": p[0], "f": p[1], "size": int(p[2]), "mtime": int(p[3]), "h": p[4], "s": float(p[5]),
                "t": float(p[6])}
    except ValueError:
        return None


# =========================================================================== reading
@dataclass
class LedgerRecords:
    """The newest record per site key, and how many ledger files were read."""

    records: dict
    n_files: int = 0
    n_lines: int = 0
    n_bad_lines: int = 0


def ledger_files(out) -> list[tuple[str, int, int]]:
    """``(path, size, mtime ns)`` of every ledger file, sorted: one listing and a stat per task file."""
    root = ledger_dir(out)
    try:
        entries = [e for e in os.scandir(root) if e.name.endswith(SUFFIX) and not e.name.startswith(".")]
    except FileNotFoundError:
        return []
    out_ = []
    for e in entries:
        try:
            st = e.stat()
        except FileNotFoundError:
            continue
        out_.append((e.path, st.st_size, st.st_mtime_ns))
    return sorted(out_)


def read_ledgers(out) -> LedgerRecords:
    """Every ledger file of ``out``: newest record per site key (lines cut by a kill skipped)."""
    recs: dict = {}
    res = LedgerRecords(recs)
    parse = parse_record
    for path, _size, _mtime in ledger_files(out):
        try:
            with open(path, "rb") as fh:
                text = fh.read().decode("utf-8", "replace")
        except OSError:
            continue
        res.n_files += 1
        for line in text.split("\n"):
            if not line:
                continue
            res.n_lines += 1
            rec = parse(line)
            if rec is None:
                res.n_bad_lines += 1
                continue
            old = recs.get(rec["k"])
            if old is None or rec["t"] >= old["t"]:
                recs[rec["k"]] = rec
    return res


# =========================================================================== scanning
@dataclass
class SiteScan:
    """Done/pending for each site of a manifest (see :func:`scan_sites`).

    ``done[i]`` is the state of ``sites[i]``. ``problems`` are
    ``(site key, path, reason)`` for sites the ledger calls done whose file is now
    missing, changed or invalid (pending again). ``unrecorded`` are the
    ``(index, key)`` of sites found done by opening their file without a current record
    (:func:`record_unrecorded` adds them to the ledger). The counters say what
    the scan cost: ledger files read, folders listed, files stat'ed, site
    files opened.
    """

    done: list
    problems: list = field(default_factory=list)
    unrecorded: list = field(default_factory=list)
    paths: dict = field(default_factory=dict)  # index -> name of a done site opened or packed (else its loose file)
    n_ledger_files: int = 0
    n_listings: int = 0
    n_stats: int = 0
    n_opened: int = 0
    seconds: float = 0.0

    def pending(self, sites: Sequence) -> list:
        return [s for s, d in zip(sites, self.done) if not d]

    def pending_indices(self) -> list:
        return [i for i, d in enumerate(self.done) if not d]

    @property
    def n_done(self) -> int:
        return sum(self.done)

    @property
    def files_read(self) -> int:
        """Files opened for reading: ledger files and site files."""
        return self.n_ledger_files + self.n_opened


def _validate_one(args) -> tuple[bool, str]:
    ref, chash = args
    st = sitefile.validate_site_file(ref, chash)
    return st.ok, st.reason


def validate_many(refs: Sequence[str], config_hash: str, *, workers: Optional[int] = None,
                  progress: bool = False, desc: str = "validating site files") -> list[tuple[bool, str]]:
    """:func:`sitefile.validate_site_file` of each of ``refs``, in worker processes when many.

    ``progress`` shows a tqdm bar on stderr (when it is a terminal) and a
    line per tenth otherwise.
    """
    n = len(refs)
    if n == 0:
        return []
    args = [(r, config_hash) for r in refs]
    workers = workers or min(8, os.cpu_count() or 1)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n, desc=desc, unit="file", file=sys.stderr, disable=not sys.stderr.isatty())
    out = []
    step = max(1, n // 10)

    def tick(i):
        if bar is not None:
            bar.update(1)
            if bar.disable and (i + 1) % step == 0:
                print(f"{desc}: {i + 1}/{n}", file=sys.stderr, flush=True)

    if n <= SERIAL_LIMIT or workers <= 1:
        for i, a in enumerate(args):
            out.append(_validate_one(a))
            tick(i)
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for i, r in enumerate(pool.map(_validate_one, args, chunksize=max(1, min(256, n // (4 * workers))))):
                out.append(r)
                tick(i)
    if bar is not None:
        bar.close()
    return out


def scan_sites(cfg, sites: Sequence, **kwargs) -> SiteScan:
    """Which of ``sites`` (:class:`manifest.Site`) are done; see :func:`scan_columns`."""
    return scan_columns(cfg, [s.plate for s in sites], [s.well for s in sites], [s.site for s in sites], **kwargs)


def scan_columns(cfg, plates: Sequence, wells: Sequence, numbers: Sequence, *, verify: bool = False,
                 stat: bool = True, workers: Optional[int] = None, progress: bool = False) -> SiteScan:
    """Which sites are done, from the ledger (see the module docstring).

    The sites are given as columns (plate, well and site number of site
    ``i``), as a manifest's Parquet file holds them: a status of 370,000 sites
    builds no per-site objects.

    Parameters
    ----------
    cfg : Config
    plates, wells, numbers : sequences of equal length
    verify : bool
        Validate every existing site file (today's deep check, in parallel)
        instead of trusting the ledger.
    stat : bool
        Compare each ledgered file's size and mtime with its record (one stat
        per ledgered site). Without it only existence (the folder listing) is
        checked.
    """
    t0 = time.perf_counter()
    out = str(cfg.out)
    chash = cfg.hash()
    led = read_ledgers(out)
    recs = led.records
    scan = SiteScan(done=[False] * len(plates), n_ledger_files=led.n_files)
    listings: dict = {}
    pack_stats: dict = {}
    candidates: list = []  # (index, path, record or None, note, key)
    sep = sitefile.PACK_SEP
    done = scan.done
    stat_ = os.stat
    last_pw = None  # the manifest is sorted by plate and well: folder and names change rarely
    names: set = set()
    d = prefix = ""

    for i, (plate, well, site) in enumerate(zip(plates, wells, numbers)):
        key = f"{plate}/{well}/{site}"
        rec = recs.get(key)
        current = rec is not None and rec["h"] == chash
        if rec is not None and sep in rec["f"]:  # packed
            if current:
                pfile, group = rec["f"].rsplit(sep, 1)
                st = pack_stats.get(pfile, 0)
                if st == 0:
                    try:
                        st = os.stat(f"{out}/{pfile}")
                    except FileNotFoundError:
                        st = None
                    pack_stats[pfile] = st
                    scan.n_stats += 1
                ref = f"{out}/{rec['f']}"
                if st is not None and st.st_size == rec["size"] and st.st_mtime_ns == rec["mtime"]:
                    if verify:
                        candidates.append((i, ref, rec, "", key))
                    else:
                        done[i] = True
                        scan.paths[i] = ref
                    continue
                scan.problems.append((key, ref, "packed file missing or changed since it was recorded"))
            rec, current = None, False  # a loose file may still be there: judged below
        if (plate, well) != last_pw:
            last_pw = (plate, well)
            d = f"{out}/sites/{plate}/{sitefile.well_row(well)}"
            prefix = f"{plate}_{well}_s"
            names = listings.get(d)
            if names is None:
                try:
                    names = {e.name for e in os.scandir(d) if not e.name.startswith(".")}
                except (FileNotFoundError, NotADirectoryError):
                    names = set()
                listings[d] = names
                scan.n_listings += 1
        name = f"{prefix}{site}.h5"
        path = f"{d}/{name}"
        if name not in names:
            if current:
                scan.problems.append((key, path, "recorded as done but the file is missing"))
            continue
        if verify or rec is None:
            candidates.append((i, path, rec if current else None, "", key))
            continue
        if stat:
            try:
                st = stat_(path)
            except FileNotFoundError:  # removed since the listing
                if current:
                    scan.problems.append((key, path, "recorded as done but the file is missing"))
                continue
            scan.n_stats += 1
            same = st.st_size == rec["size"] and st.st_mtime_ns == rec["mtime"]
        else:
            same = True
        if same:
            if current:
                done[i] = True
            # else: the file of another config hash, unchanged since recorded: stale, pending
            continue
        note = f"changed since recorded ({rec['size']} -> {st.st_size} bytes)" if current else ""
        candidates.append((i, path, rec if current else None, note, key))

    results = validate_many([c[1] for c in candidates], chash, workers=workers, progress=progress)
    scan.n_opened = len(candidates)
    for (i, path, rec, note, key), (ok, reason) in zip(candidates, results):
        if ok:
            scan.done[i] = True
            scan.paths[i] = path
            if rec is None or note:
                scan.unrecorded.append((i, key))
        elif rec is not None:
            scan.problems.append((key, path, f"{note}: {reason}" if note else reason))
    scan.seconds = time.perf_counter() - t0
    return scan


def record_unrecorded(cfg, scan: SiteScan, task: str) -> int:
    """Add the sites a scan found done without a current record to the ledger (file ``<task>.tsv``)."""
    if not scan.unrecorded:
        return 0
    w = LedgerWriter(cfg.out, task)
    chash = cfg.hash()
    n = 0
    for i, key in scan.unrecorded:
        try:
            w.record(key, scan.paths[i], chash)
            n += 1
        except FileNotFoundError:
            continue  # removed since the scan: it is found pending next time
    return n


def ledger_signature(cfg) -> list[tuple]:
    """``(ledger file name, size, mtime ns)`` of every ledger file: changes with every record written.

    A digest input for "have finished sites changed?" that costs one listing
    and one stat per task, without reading a record.
    """
    return [(os.path.basename(p), size, mtime) for p, size, mtime in ledger_files(cfg.out)]


if __name__ == "__main__":  # ``python -m hpc_profiler.ledger pack CONFIG``, as before: the packer's CLI
    from hpc_profiler.pack import main

    sys.exit(main())
