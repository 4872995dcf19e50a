"""Completion ledger: which sites are done, read from O(array tasks) files, not O(sites).

Opening every site file to decide what is done (``sitefile.validate_site_file``)
costs about a millisecond per site on local disk and a metadata round trip per
site on a parallel file system: minutes per ``status`` at CPJUMP1 scale
(370,000 sites). Instead, every extract task appends one line per finished
site to its own ledger file, one tab-separated line per record::

    <out>/ledger/<task>.tsv    <plate/well/site> <file> <size> <mtime ns> <config hash> <seconds> <time> <illum> .

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
current config hash and the current illumination function of its plate, and
its file exists with the recorded size and mtime.
Only files that exist without such a record (a task killed between writing
the file and its record, a file changed since its record, outputs written
before the ledger existed) are opened and validated the old way; a record
with another config hash whose file is unchanged marks the site stale without
opening it, so a config change makes every site pending at ledger cost.
``verify=True`` (``--verify`` of ``status`` and ``submit``) instead validates
every existing site file in parallel processes, with a progress bar.

Records are keyed by site: several records for one site (a requeued task, a
lost race, a repack) count once, the newest winning.

Illumination functions. The config hash does not change when a plate's
illumination function is redone (an image that was unreadable is fixed, the
plate gains images), yet every site extracted with the old function is then
out of date. The illum stage stores the function's content digest
(:func:`function_digest`, of the float32 arrays as saved) in the function's
file (attribute ``function_digest``); the extract stage stores the digest of
the function it used in the site file (attribute ``illum_digest``,
:data:`hpc_profiler.sitefile.ILLUM_NONE` when it used none of the illum
stage's: illumination off, CellProfiler's own functions) and the ledger
record copies it (field ``illum``). A scan reads one digest per plate
(:func:`plate_illum_digest`: one attribute of the plate's function file, so
the cost stays O(tasks + plates)) and a record made with another function is
stale: the site is pending, without opening its file. Redoing a function with
the same inputs gives the same arrays, hence the same digest, and leaves the
sites done. Records of the older 8-field format and site files without the
attribute (from before the digest, CellProfiler imports) are not compared.
"""
from __future__ import annotations

import hashlib
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import h5py
import numpy as np

from . import sitefile
from .backend import to_numpy
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

    def record(self, key: str, path, config_hash: str, seconds: float = 0.0, illum: Optional[str] = None) -> dict:
        """Record that site ``key`` is finished in ``path`` (a file or a packed site name).

        ``illum`` is the digest of the illumination function the site was made
        with; by default it is read from the site's ``illum_digest`` attribute
        (one open of the file the task has just written).
        """
        file, group = sitefile.split_ref(path)
        st = os.stat(file)
        if illum is None:
            illum = site_illum_digest(path)
        rel = os.path.relpath(file, self.out)
        rec = {"k": key, "f": rel if group is None else sitefile.site_ref(rel, group), "size": st.st_size,
               "mtime": st.st_mtime_ns, "h": config_hash, "s": round(float(seconds), 3), "t": time.time(),
               "i": illum}
        self._append(format_record(rec).encode())
        return rec


SUFFIX = ".tsv"
_FIELDS = ("k", "f", "size", "mtime", "h", "s", "t", "i")


def format_record(rec: dict) -> str:
    """One ledger line (tab-separated, ending in ``.``); keys and paths with tabs or newlines are refused."""
    rec = dict(rec, i=rec.get("i") or sitefile.ILLUM_NONE)
    for k in ("k", "f", "h", "i"):
        if any(c in str(rec[k]) for c in "\t\n\r"):
            raise ValueError(f"ledger: {k} {rec[k]!r} contains a tab or a line break")
    return "\t".join(str(rec[k]) for k in _FIELDS) + "\t.\n"


def parse_record(line: str) -> Optional[dict]:
    """The record of one ledger line, or None for a line cut by a kill (or otherwise malformed).

    A line of the older format (8 fields, no illumination digest) gives ``i`` None.
    """
    p = line.split("\t")
    n = len(p)
    if n == 9:
        if p[8] != ".":
            return None
        i = p[7]
    elif n == 8 and p[7] == ".":
        i = None
    else:
        return None
    try:
        return {"k": p[0], "f": p[1], "size": int(p[2]), "mtime": int(p[3]), "h": p[4], "s": float(p[5]),
                "t": float(p[6]), "i": i}
    except ValueError:
        return None


# =========================================================================== illumination digests
def function_digest(functions, memo: bool = False) -> str:
    """Content digest of one plate's illumination functions (channel -> 2-D array).

    BLAKE2b (8 bytes, 16 hex digits) of the sorted channel names, shapes and
    float32 bytes: the arrays as :func:`hpc_profiler.illumination.save_illum`
    stores them, so the digest of the functions the illum stage computed and
    of those the extract stage reads back from the file are the same. Device
    arrays are copied to the host (:func:`hpc_profiler.backend.to_numpy`). ``memo`` reuses the digest of the last
    mapping passed with ``memo`` when it is the same object (an extract task
    hands one loaded mapping per plate to every site).
    """
    global _MEMO
    if memo and _MEMO is not None and _MEMO[0] is functions:
        return _MEMO[1]
    h = hashlib.blake2b(digest_size=8)
    for ch in sorted(functions, key=str):
        a = np.ascontiguousarray(to_numpy(functions[ch]), dtype=np.float32)
        h.update(f"{ch}\0{a.shape}\0".encode())
        h.update(a.tobytes())
    d = h.hexdigest()
    if memo:
        _MEMO = (functions, d)
    return d


_MEMO = None  # (the last mapping digested with memo=True, its digest)
_CONTENT: dict = {}  # (path, size, mtime ns) -> content digest of a function file without the attribute


def illum_file_digest(path) -> Optional[str]:
    """The digest of the functions in an illumination file; None when the file is missing or unreadable.

    The file's ``function_digest`` attribute (written by the illum stage), or,
    for a file without it (written before the digest, or brought in through
    ``input.illum_dir``), :func:`function_digest` of its datasets (read once per
    file version in a process).
    """
    try:
        st = os.stat(path)
        with h5py.File(path, "r") as f:
            d = f.attrs.get("function_digest")
            if d is not None:
                return d.decode() if isinstance(d, bytes) else str(d)
            key = (str(path), st.st_size, st.st_mtime_ns)
            if key not in _CONTENT:
                _CONTENT[key] = function_digest({ch: f[ch][()] for ch in f.keys()})
            return _CONTENT[key]
    except (OSError, KeyError):
        return None


def plate_illum_digest(cfg, plate: str) -> Optional[str]:
    """The digest of ``plate``'s current illumination function (:func:`illum_file_digest` of
    :meth:`Layout.illum`); None when illumination is off or the plate has no function file."""
    if not cfg.illumination.enabled:
        return None
    return illum_file_digest(Layout.of(cfg).illum(plate))


def site_illum_digest(ref) -> str:
    """A site's ``illum_digest`` attribute (:data:`sitefile.ILLUM_NONE` when it has none)."""
    with sitefile.open_site(ref) as f:
        d = f.attrs.get("illum_digest")
    if d is None:
        return sitefile.ILLUM_NONE
    return d.decode() if isinstance(d, bytes) else str(d)


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
    get = recs.get
    for path, _size, _mtime in ledger_files(out):
        try:
            with open(path, "rb") as fh:
                text = fh.read().decode("utf-8", "replace")
        except OSError:
            continue
        res.n_files += 1
        lines = text.split("\n")
        if lines and not lines[-1]:
            lines.pop()
        res.n_lines += len(lines)
        for line in lines:
            p = line.split("\t")
            # parse_record, inlined for the common case (a whole line of the current format):
            # 370,000 calls are a second on a loaded login node
            if len(p) == 9 and p[8] == ".":
                try:
                    rec = {"k": p[0], "f": p[1], "size": int(p[2]), "mtime": int(p[3]), "h": p[4],
                           "s": float(p[5]), "t": float(p[6]), "i": p[7]}
                except ValueError:
                    rec = None
            else:
                rec = parse(line)
            if rec is None:
                res.n_bad_lines += 1
                continue
            old = get(rec["k"])
            if old is None or rec["t"] >= old["t"]:
                recs[rec["k"]] = rec
    return res


# =========================================================================== scanning
@dataclass
class SiteScan:
    """Done/pending for each site of a manifest (see :func:`scan_sites`).

    ``done[i]`` is the state of ``sites[i]``. ``problems`` are
    ``(site key, path, reason)`` for sites the ledger calls done whose file is now
    missing, changed or invalid (pending again); ``illum_stale`` counts, per
    plate, the sites recorded with an earlier illumination function of their
    plate (pending again). ``unrecorded`` are the
    ``(index, key)`` of sites found done by opening their file without a current record
    (:func:`record_unrecorded` adds them to the ledger). The counters say what
    the scan cost: ledger files read, illumination digests read (one per
    plate), folders listed, files stat'ed, site files opened.
    """

    done: list
    problems: list = field(default_factory=list)
    unrecorded: list = field(default_factory=list)
    paths: dict = field(default_factory=dict)  # index -> name of a done site opened or packed (else its loose file)
    illum: dict = field(default_factory=dict)  # index -> illum_digest of a site file opened and found done
    illum_stale: dict = field(default_factory=dict)  # plate -> sites recorded with an earlier illumination function
    n_ledger_files: int = 0
    n_illum_files: int = 0
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
        """Files opened for reading: ledger files, illumination function files and site files."""
        return self.n_ledger_files + self.n_illum_files + self.n_opened


def _validate_one(args) -> tuple[bool, str, Optional[str]]:
    ref, chash, illum = args
    st = sitefile.validate_site_file(ref, chash, illum)
    return st.ok, st.reason, st.illum_digest


def validate_many(refs: Sequence[str], config_hash: str, *, illum: Optional[Sequence] = None,
                  workers: Optional[int] = None, progress: bool = False,
                  desc: str = "validating site files") -> list[tuple[bool, str, Optional[str]]]:
    """:func:`sitefile.validate_site_file` of each of ``refs``, in worker processes when many:
    ``(ok, reason, the file's illum_digest)`` each.

    ``illum`` gives, per ref, the digest of its plate's current illumination
    function (None: not compared). ``progress`` shows a tqdm bar on stderr
    (when it is a terminal) and a line per tenth otherwise.
    """
    n = len(refs)
    if n == 0:
        return []
    args = [(r, config_hash, None if illum is None else illum[k]) for k, r in enumerate(refs)]
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

    A record (or, for a file without one, the file) made with another
    illumination function than its plate's current one is stale: one digest
    is read per plate (:func:`plate_illum_digest`), none per site.

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
    candidates: list = []  # (index, path, record or None, note, key, the plate's illum digest)
    sep = sitefile.PACK_SEP
    none = sitefile.ILLUM_NONE
    done = scan.done
    stat_ = os.stat
    last_pw = None  # the manifest is sorted by plate and well: folder and names change rarely
    names: set = set()
    d = prefix = ""
    illum_of: dict = {}  # plate -> digest of its current illumination function (None: not compared)
    last_plate = exp = None

    for i, (plate, well, site) in enumerate(zip(plates, wells, numbers)):
        if plate != last_plate:
            last_plate = plate
            if plate in illum_of:
                exp = illum_of[plate]
            else:
                exp = illum_of[plate] = plate_illum_digest(cfg, plate)
                scan.n_illum_files += cfg.illumination.enabled
        key = f"{plate}/{well}/{site}"
        rec = recs.get(key)
        current = rec is not None and rec["h"] == chash
        if current and exp is not None and rec["i"] not in (None, none, exp):
            current = False  # made with an earlier illumination function of its plate
            scan.illum_stale[plate] = scan.illum_stale.get(plate, 0) + 1
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
                        candidates.append((i, ref, rec, "", key, exp))
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
                try:  # temporaries (".<name>.<id>.tmp.h5") never equal a site file's name
                    names = set(os.listdir(d))
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
            candidates.append((i, path, rec if current else None, "", key, exp))
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
            # else: the file of another config hash or illumination function, unchanged since
            # recorded: stale, pending
            continue
        note = f"changed since recorded ({rec['size']} -> {st.st_size} bytes)" if current else ""
        candidates.append((i, path, rec if current else None, note, key, exp))

    results = validate_many([c[1] for c in candidates], chash, illum=[c[5] for c in candidates], workers=workers,
                            progress=progress)
    scan.n_opened = len(candidates)
    for (i, path, rec, note, key, _exp), (ok, reason, found) in zip(candidates, results):
        if ok:
            scan.done[i] = True
            scan.paths[i] = path
            if rec is None or note:
                scan.unrecorded.append((i, key))
                scan.illum[i] = found
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
            w.record(key, scan.paths[i], chash, illum=scan.illum.get(i) or sitefile.ILLUM_NONE)
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
