"""Existing CellProfiler outputs in: per-object CSVs or cytominer-database SQLite -> site files.

``hpc-profiler import cellprofiler SRC CONFIG`` (``mpirun -n N`` for MPI ranks,
or ``python -m hpc_profiler.cpimport SRC CONFIG``) turns what a CellProfiler
run already measured into the project's site files
(``<out>/sites/<plate>/<plate>_<well>_s<site>.h5``, written with the config's
hash), so that ``hpc-profiler reduce CONFIG`` aggregates, normalizes and
selects features exactly as for images profiled here.

Sources
-------
``SRC`` is a folder or a SQLite file:

* **ExportToSpreadsheet CSVs**: every folder under ``SRC`` holding an
  ``<prefix>Image.csv`` and the compartment files ``<prefix>Cells.csv``,
  ``<prefix>Cytoplasm.csv``, ``<prefix>Nuclei.csv`` (``cellprofiler.compartments``).
  A folder per site (Distributed-CellProfiler's
  ``<plate>/analysis/<plate>-<well>-<site>/``) or a batch folder whose files
  hold many images, told apart by ``ImageNumber``. Batch files are read in
  chunks of ``cellprofiler.chunk_rows`` rows; their rows must be in
  ``ImageNumber`` order, as CellProfiler writes them (a row out of order stops
  that folder with an error naming the file).
* **SQLite** from cytominer-database (or pycytominer's ``SingleCells`` input):
  tables ``Image`` (columns ``Image_*``) and one table per compartment
  (``Cells_*`` ...), linked by ``TableNumber`` and ``ImageNumber``; read one
  image at a time with the database's ``(TableNumber, ImageNumber)`` indexes.
  The file is opened read-only.

Single cells
------------
Compartments are joined on their ``Parent_*`` columns as pycytominer's
``SingleCells`` merges them: the compartment that names a parent in every
other compartment (``Cytoplasm``: ``Parent_Cells``, ``Parent_Nuclei``) gives
one row per cell, joined (inner) to its parents' rows by ``ObjectNumber``.
Bookkeeping columns (``ImageNumber``, ``ObjectNumber``, ``TableNumber``,
``Parent_*``, ``Children_*``, ``Location_*``, ``Number_*``) and ``Metadata_*``
columns of the compartments are kept out of the features; feature names get
the compartment prefix (``Cells_AreaShape_Area``). In the site files the
object numbers are the cells' row numbers 1..n (the same in every
compartment, which is how :func:`hpc_profiler.sitefile.read_cells_matrix`
joins them) and the joining compartment keeps CellProfiler's parent object
numbers as ``parent_<Compartment>``.

Plates, wells, sites come from the image table's ``Metadata_Plate``,
``Metadata_Well`` and ``Metadata_Site``; without ``Metadata_Plate`` the plate
is ``cellprofiler.plate`` or the folder (``<plate>-<well>-<site>`` folder
names, the folder above ``analysis/``, or the SQLite file's stem). The image
row's other ``Metadata_*`` values are stored in the site file (attribute
``metadata``) and the ones constant within a well go to
``<out>/import/well_metadata.csv``, which ``reduce`` joins onto the well
profiles when ``input.well_metadata_csv`` is not set.

Precision: features are stored as float32 (like the extract stage) unless
``cellprofiler.site_dtype`` is ``float64``, which keeps CellProfiler's values
bit for bit.

Bad input
---------
A missing compartment file skips the sites of its folder; a row with no
parent (``Parent_*`` 0 or naming an object that is not there) and a row with
a non-numeric feature value are skipped. Each is reported on one line
(``warning: import: <file>: image <n> object <m>: ...``) and listed in
``<out>/import/skipped.csv``; the other rows and sites go on. An existing
valid site file is kept (``--overwrite`` rewrites it); every file is written
to a temporary name and renamed into place.

Ranks
-----
Rank 0 lists the sources; the ranks read the image tables in parallel; rank 0
gives each rank whole site folders, and the images of a batch folder or SQLite
file round-robin; every rank converts its sites one at a time, so a process
holds one site's single cells plus one chunk per compartment, whatever the
plate's size. Peak RSS per rank is in ``<out>/import/import_summary.json``.
"""
from __future__ import annotations

import argparse
import json
import re
import sqlite3
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import pandas as pd

from ._atomic import write_bytes_atomic
from .layout import Layout
from .mpi import abort_on_error, get_comm
from .sitefile import ObjectTable, validate_site_file, write_site_file

BOOKKEEPING_NAMES = frozenset({"ImageNumber", "ObjectNumber", "TableNumber"})
BOOKKEEPING_PREFIXES = ("Parent_", "Children_", "Location_", "Number_", "Metadata_")
SKIPPED_NAME = "skipped.csv"
SUMMARY_NAME = "import_summary.json"
WELL_METADATA_NAME = "well_metadata.csv"
SQLITE_SUFFIXES = (".sqlite", ".sqlite3", ".db")
_DCP_FOLDER = re.compile(r"^(?P<plate>.+)-(?P<well>[A-Za-z]{1,2}\d{1,3})-(?P<site>\d+)$")


class ImportError_(RuntimeError):
    """An import problem that stops the run (no source, unreadable SQLite), with the path named."""


def is_bookkeeping(column: str) -> bool:
    """Whether a (compartment-local) column is bookkeeping, not a feature."""
    return column in BOOKKEEPING_NAMES or column.startswith(BOOKKEEPING_PREFIXES)


# --------------------------------------------------------------------------- sources
@dataclass(frozen=True)
class TableSet:
    """One image table with its compartment tables: a CSV folder (+ file prefix) or a SQLite file."""

    kind: str  # "csv" or "sqlite"
    path: str  # folder (csv) or file (sqlite)
    prefix: str = ""

    def csv_file(self, table: str) -> Path:
        return Path(self.path) / f"{self.prefix}{table}.csv"

    @property
    def where(self) -> str:
        return str(self.csv_file("Image")) if self.kind == "csv" else self.path


def discover_sources(src, image_table: str = "Image") -> list[TableSet]:
    """Table sets under ``src``: a SQLite file, or every folder with a ``*<image_table>.csv``."""
    src = Path(src)
    if src.is_file():
        if src.suffix.lower() in SQLITE_SUFFIXES:
            return [TableSet("sqlite", str(src))]
        raise ImportError_(f"{src}: not a SQLite file ({', '.join(SQLITE_SUFFIXES)}) nor a folder of CSVs")
    if not src.is_dir():
        raise ImportError_(f"{src}: no such file or folder")
    suffix = f"{image_table}.csv"
    sets = [
        TableSet("csv", str(p.parent), p.name[: -len(suffix)])
        for p in sorted(src.rglob(f"*{suffix}"))
        if p.is_file() and not p.name.startswith(".")
    ]
    sets += [TableSet("sqlite", str(p)) for p in sorted(src.rglob("*")) if p.suffix.lower() in SQLITE_SUFFIXES]
    return sets


def folder_plate(ts: TableSet) -> str:
    """The plate a folder (or SQLite file) stands for when the image table has no ``Metadata_Plate``."""
    p = Path(ts.path)
    if ts.kind == "sqlite":
        return p.stem
    m = _DCP_FOLDER.match(p.name)
    if m:
        return m.group("plate")
    if p.parent.name == "analysis" and p.parent.parent.name:
        return p.parent.parent.name
    return p.name


# --------------------------------------------------------------------------- writing
def write_cytominer_sqlite(site_dirs, path, compartments=("Cells", "Cytoplasm", "Nuclei")) -> Path:
    """A cytominer-database style SQLite of per-site ExportToSpreadsheet folders.

    One ``TableNumber`` per folder (``t<index>_<folder name>``); ``Image`` columns
    prefixed ``Image_`` and compartment columns ``<Compartment>_`` (``ImageNumber``
    and ``ObjectNumber`` kept as they are), indexed as cytominer-database
    indexes them: the layout :func:`import_cellprofiler` and pycytominer's
    ``SingleCells`` read. Used by the tests and ``scripts/bench_import.py``.
    """
    con = sqlite3.connect(path)
    keep = ("ImageNumber", "ObjectNumber")
    try:
        for t, d in enumerate(site_dirs):
            tn = f"t{t:05d}_{Path(d).name}"
            img = pd.read_csv(Path(d) / "Image.csv")
            img = img.rename(columns={c: f"Image_{c}" for c in img.columns if c != "ImageNumber"})
            img.insert(0, "TableNumber", tn)
            img.to_sql("Image", con, if_exists="append", index=False)
            for comp in compartments:
                df = pd.read_csv(Path(d) / f"{comp}.csv")
                df = df.rename(columns={c: f"{comp}_{c}" for c in df.columns if c not in keep})
                df.insert(0, "TableNumber", tn)
                df.to_sql(comp, con, if_exists="append", index=False)
        for comp in compartments:
            con.execute(f"CREATE INDEX {comp.lower()}_idx ON {comp}(TableNumber, ImageNumber, ObjectNumber)")
        con.execute("CREATE INDEX image_idx ON Image(TableNumber, ImageNumber)")
        con.commit()
    finally:
        con.close()
    return Path(path)


# --------------------------------------------------------------------------- reading
def _sqlite_connect(path) -> sqlite3.Connection:
    try:
        con = sqlite3.connect(f"file:{Path(path).resolve()}?mode=ro", uri=True)
        con.execute("SELECT name FROM sqlite_master LIMIT 1").fetchall()
    except sqlite3.Error as exc:
        raise ImportError_(f"{path}: cannot open SQLite ({exc})") from exc
    return con


def _sqlite_tables(con) -> set[str]:
    return {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}


def _strip_prefix(df: pd.DataFrame, prefix: str) -> pd.DataFrame:
    """Column names without ``<prefix>_`` (cytominer-database prefixes every measurement)."""
    p = f"{prefix}_"
    return df.rename(columns=lambda c: c[len(p):] if str(c).startswith(p) else c)


def read_image_table(ts: TableSet, image_table: str = "Image") -> pd.DataFrame:
    """The image table with compartment-local names (``ImageNumber``, ``Metadata_*``, ``Count_*``)."""
    if ts.kind == "csv":
        return pd.read_csv(ts.csv_file(image_table), low_memory=False)
    con = _sqlite_connect(ts.path)
    try:
        if image_table not in _sqlite_tables(con):
            raise ImportError_(f"{ts.path}: no table {image_table!r}")
        df = pd.read_sql_query(f'SELECT * FROM "{image_table}"', con)
    finally:
        con.close()
    return _strip_prefix(df, image_table)


def _text(v) -> Optional[str]:
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return None
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


def inspect_table_set(ts: TableSet, ccfg) -> tuple[list[dict], list[dict]]:
    """The images of a table set: ``({key, plate, well, site, metadata, image}, problems)``.

    ``key`` is ``ImageNumber`` (CSV) or ``(TableNumber, ImageNumber)`` (SQLite);
    ``image`` holds the numeric image measurements (``Image_Count_Cells`` ...).
    """
    problems: list[dict] = []
    try:
        df = read_image_table(ts, ccfg.image_table)
    except (OSError, ValueError, pd.errors.ParserError, ImportError_, sqlite3.Error) as exc:
        return [], [_problem(ts.where, None, None, f"unreadable image table ({exc})")]
    if "ImageNumber" not in df.columns:
        return [], [_problem(ts.where, None, None, "image table has no ImageNumber column")]
    default_plate = ccfg.plate or folder_plate(ts)
    m = _DCP_FOLDER.match(Path(ts.path).name) if ts.kind == "csv" else None
    meta_cols = [c for c in df.columns if str(c).startswith("Metadata_")]
    images = []
    for row in df.itertuples(index=False):
        rec = dict(zip(df.columns, row))
        number = int(rec["ImageNumber"])
        key = _image_key(ts, rec)
        meta = {c: _text(rec[c]) for c in meta_cols}
        plate = meta.get("Metadata_Plate") or default_plate
        well = meta.get("Metadata_Well") or (m.group("well") if m else None)
        site = meta.get("Metadata_Site") or (m.group("site") if m else None) or str(number)
        if not well:
            problems.append(_problem(ts.where, number, None, "no Metadata_Well and no <plate>-<well>-<site> folder name"))
            continue
        images.append(
            {"key": key, "number": number, "plate": str(plate), "well": str(well), "site": str(site),
             "metadata": {k: v for k, v in meta.items() if v is not None}}
        )
    return images, problems


def _image_key(ts: TableSet, rec: dict):
    """``ImageNumber``, or ``(TableNumber, ImageNumber)`` for SQLite (TableNumber as stored: text or integer)."""
    number = int(rec["ImageNumber"])
    if ts.kind != "sqlite" or "TableNumber" not in rec:
        return number
    tn = rec["TableNumber"]
    tn = tn.item() if hasattr(tn, "item") else tn
    return (tn if isinstance(tn, (str, int)) else str(tn)), number


def image_measurements(ts: TableSet, ccfg, keys) -> dict:
    """Numeric image measurements (``Image_Count_Cells`` ...) of the images ``keys``, by key.

    Read when a rank converts its sites (not gathered at planning), so rank 0
    holds one small record per image whatever the image table's width.
    """
    try:
        df = read_image_table(ts, ccfg.image_table)
    except (OSError, ValueError, pd.errors.ParserError, ImportError_, sqlite3.Error):
        return {}
    want = set(keys)
    keycols = [c for c in ("TableNumber", "ImageNumber") if c in df.columns]
    all_keys = [_image_key(ts, r) for r in df[keycols].to_dict("records")]
    sel = [i for i, k in enumerate(all_keys) if k in want]
    cols = [c for c in df.columns if not is_bookkeeping(str(c))]
    out = {}
    for i, rec in zip(sel, df.iloc[sel][cols].to_dict("records")):
        values = {}
        for c, v in rec.items():
            try:
                f = float(v)
            except (TypeError, ValueError):
                continue
            if np.isfinite(f):
                values[f"Image_{c}"] = f
        out[all_keys[i]] = values
    return out


def _problem(where, image, obj, reason: str) -> dict:
    return {"file": str(where), "image": "" if image is None else _text(image) or "",
            "object": "" if obj is None else _text(obj) or "", "reason": reason}


def _csv_header(path) -> list[str]:
    return list(pd.read_csv(path, nrows=0).columns)


def _csv_groups(path, wanted: set, chunk_rows: int) -> Iterator[tuple[int, pd.DataFrame]]:
    """``(ImageNumber, rows)`` for the wanted images of a CSV, in file order, one chunk in memory.

    Raises ``ValueError`` naming the file when ``ImageNumber`` decreases.
    """
    pending_key, pending = None, []
    last = None
    for chunk in pd.read_csv(path, chunksize=chunk_rows, low_memory=False):
        if "ImageNumber" not in chunk.columns:
            raise ValueError(f"{path}: no ImageNumber column")
        keys = pd.to_numeric(chunk["ImageNumber"], errors="coerce").to_numpy()
        if np.isnan(keys).any():
            raise ValueError(f"{path}: non-numeric ImageNumber")
        keys = keys.astype(np.int64)
        if len(keys) and ((np.diff(keys) < 0).any() or (last is not None and keys[0] < last)):
            raise ValueError(f"{path}: rows are not in ImageNumber order (CellProfiler writes them in order)")
        if len(keys):
            last = int(keys[-1])
        mine = np.isin(keys, list(wanted))
        if not mine.any():
            continue
        chunk, keys = chunk.loc[mine], keys[mine]
        starts = np.r_[0, np.flatnonzero(np.diff(keys)) + 1]
        ends = np.r_[starts[1:], len(keys)]
        for s, e in zip(starts, ends):
            k = int(keys[s])
            if pending_key is not None and k != pending_key:
                yield pending_key, pd.concat(pending) if len(pending) > 1 else pending[0]
                pending = []
            pending_key = k
            pending.append(chunk.iloc[s:e])
    if pending_key is not None:
        yield pending_key, pd.concat(pending) if len(pending) > 1 else pending[0]


def iter_csv_sites(ts: TableSet, numbers: list[int], compartments, chunk_rows: int, report):
    """``(ImageNumber, {compartment: rows})`` for ``numbers`` of a CSV table set, in order.

    A missing or unreadable compartment file is reported and ends the table set.
    """
    files = {c: ts.csv_file(c) for c in compartments}
    missing = [str(f) for f in files.values() if not f.is_file()]
    if missing:
        for f in missing:
            report(_problem(f, None, None, f"missing compartment file: {len(numbers)} site(s) of {ts.path} skipped"))
        return
    wanted = set(int(n) for n in numbers)
    empty: dict = {}
    try:
        gens = {c: _csv_groups(f, wanted, chunk_rows) for c, f in files.items()}
        heads = {c: next(g, None) for c, g in gens.items()}
        for n in sorted(wanted):
            tables = {}
            for c in compartments:
                while heads[c] is not None and heads[c][0] < n:  # rows of an image not in the image table
                    report(_problem(files[c], heads[c][0], None, "rows of an image missing from the image table"))
                    heads[c] = next(gens[c], None)
                if heads[c] is not None and heads[c][0] == n:
                    tables[c] = heads[c][1]
                    heads[c] = next(gens[c], None)
                else:  # no objects of this compartment in the image: an empty table with the file's columns
                    if c not in empty:
                        empty[c] = pd.DataFrame(columns=_csv_header(files[c]))
                    tables[c] = empty[c]
            yield n, tables
    except (OSError, ValueError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        msg = str(exc) if ts.path in str(exc) else f"{ts.path}: {exc}"
        report(_problem(ts.path, None, None, f"unreadable compartment file, rest of the folder skipped ({msg})"))


def iter_sqlite_sites(ts: TableSet, keys: list, compartments, report):
    """``(key, {compartment: rows})`` for the images ``keys`` of a cytominer-database SQLite."""
    con = _sqlite_connect(ts.path)
    try:
        tables = _sqlite_tables(con)
        missing = [c for c in compartments if c not in tables]
        if missing:
            report(_problem(ts.path, None, None, f"missing compartment table(s) {missing}: {len(keys)} site(s) skipped"))
            return
        has_tn = {c: "TableNumber" in {r[1] for r in con.execute(f'PRAGMA table_info("{c}")')} for c in compartments}
        for key in keys:
            tn, number = key if isinstance(key, tuple) else (None, key)
            out = {}
            for c in compartments:
                if has_tn[c] and tn is not None:
                    q, params = f'SELECT * FROM "{c}" WHERE TableNumber = ? AND ImageNumber = ?', (tn, number)
                else:
                    q, params = f'SELECT * FROM "{c}" WHERE ImageNumber = ?', (number,)
                out[c] = _strip_prefix(pd.read_sql_query(q, con, params=params), c)
            yield key, out
    finally:
        con.close()


# --------------------------------------------------------------------------- single cells
def _numeric_features(df: pd.DataFrame, comp: str, where: str, image, report) -> tuple[pd.DataFrame, np.ndarray, list]:
    """Feature values (float64) of a compartment's rows and a mask of rows with a non-numeric value."""
    columns = list(df.columns)
    idx = [i for i, c in enumerate(columns) if not is_bookkeeping(str(c))]
    feats = [columns[i] for i in idx]
    bad = np.zeros(len(df), dtype=bool)
    if all(d.kind in "fiub" for d in df.dtypes):  # the usual case: every column parsed as numbers
        return feats, df.to_numpy(dtype=np.float64)[:, idx], bad
    cols = {}
    for i, c in zip(idx, feats):
        col = df.iloc[:, i]
        if col.dtype.kind in "fiub":
            cols[c] = col.to_numpy(dtype=np.float64)
            continue
        num = pd.to_numeric(col, errors="coerce")
        wrong = (num.isna() & col.notna()).to_numpy()
        if wrong.any():
            for i in np.flatnonzero(wrong):
                obj = df["ObjectNumber"].iloc[i] if "ObjectNumber" in df.columns else None
                report(_problem(where, image, obj, f"{comp} row skipped: non-numeric value {col.iloc[i]!r} in {c}"))
            bad |= wrong
        cols[c] = num.to_numpy(dtype=np.float64)
    values = np.column_stack([cols[c] for c in feats]) if feats else np.empty((len(df), 0))
    return feats, values, bad


def join_compartments(tables: dict, compartments, where_of, image, report) -> Optional[dict]:
    """Single cells of one site as aligned :class:`~hpc_profiler.sitefile.ObjectTable`\\ s.

    ``tables`` maps compartment -> rows with compartment-local column names.
    The compartment with a ``Parent_<other>`` column for every other
    compartment anchors the join (pycytominer ``SingleCells`` inner merge).
    Returns None (reported) when no compartment can anchor it.
    """
    anchor = None
    for c in compartments:
        if all(f"Parent_{o}" in tables[c].columns for o in compartments if o != c):
            anchor = c
            break
    if anchor is None:
        report(_problem(where_of(compartments[0]), image, None,
                        f"cannot join {list(compartments)}: no compartment has Parent_ columns for all the others"))
        return None
    parsed = {}
    for c in compartments:
        df = tables[c]
        if "ObjectNumber" not in df.columns:
            report(_problem(where_of(c), image, None, f"{c}: no ObjectNumber column; site skipped"))
            return None
        names, values, bad = _numeric_features(df, c, where_of(c), image, report)
        numbers = pd.to_numeric(df["ObjectNumber"], errors="coerce").to_numpy()
        parsed[c] = (names, values, bad, numbers)
    a_names, a_values, a_bad, a_numbers = parsed[anchor]
    a_df = tables[anchor]
    keep = ~a_bad
    rows = {}
    parents = {}
    for o in compartments:
        if o == anchor:
            continue
        names, values, bad, numbers = parsed[o]
        valid = pd.Index(numbers[~bad])
        if valid.has_duplicates:
            dup = valid[valid.duplicated()][0]
            report(_problem(where_of(o), image, dup, f"{o}: duplicate ObjectNumber; site skipped"))
            return None
        par = pd.to_numeric(a_df[f"Parent_{o}"], errors="coerce").to_numpy()
        pos = valid.get_indexer(par)
        lost = (pos < 0) & keep
        already = np.isin(par, numbers[bad])  # its parent row was skipped (and reported) already
        for i in np.flatnonzero(lost & ~already):
            why = "no parent" if not np.isfinite(par[i]) or par[i] == 0 else f"parent {o} {par[i]:g} not found"
            report(_problem(where_of(anchor), image, a_numbers[i], f"{anchor} row skipped: {why} (Parent_{o})"))
        keep &= pos >= 0
        rows[o] = (np.flatnonzero(~bad), pos)
        parents[o] = par
    n = int(keep.sum())
    numbers = np.arange(1, n + 1, dtype=np.int32)
    out = {}
    for c in compartments:
        names, values, _, _ = parsed[c]
        if c == anchor:
            v = values[keep]
        else:
            idx, pos = rows[c]
            v = values[idx[pos[keep]]]
        par = {o: parents[o][keep].astype(np.int32) for o in parents} if c == anchor else {}
        out[c] = (
            [f"{c}_{f}" for f in names],
            v,
            numbers,
            par,
        )
    return out


# --------------------------------------------------------------------------- per rank
def _site_path(cfg, rec) -> Path:
    return Layout.of(cfg).site(rec["plate"], rec["well"], rec["site"])


def convert_units(cfg, units: list[tuple[TableSet, list[dict]]], report) -> dict:
    """Convert this rank's images to site files; counts of sites, cells and rows read."""
    ccfg = cfg.cellprofiler
    comps = list(ccfg.compartments)
    chash = cfg.hash()
    stats = {"sites": 0, "cells": 0, "rows": 0, "files": []}
    for ts, recs in units:
        by_key = {r["key"]: r for r in recs}
        image = image_measurements(ts, ccfg, list(by_key))
        if ts.kind == "csv":
            it = iter_csv_sites(ts, [r["number"] for r in recs], comps, ccfg.chunk_rows, report)

            def where_of(c, ts=ts):
                return str(ts.csv_file(c))
        else:
            it = iter_sqlite_sites(ts, [r["key"] for r in recs], comps, report)

            def where_of(c, ts=ts):
                return f"{ts.path}:{c}"
        for key, tables in it:
            rec = by_key[key]
            stats["rows"] += sum(len(t) for t in tables.values())
            joined = join_compartments(tables, comps, where_of, rec["number"], report)
            if joined is None:
                continue
            objects = {
                c: ObjectTable(names=names, values=v, object_number=nums, parents=par, dtype=ccfg.site_dtype)
                for c, (names, v, nums, par) in joined.items()
            }
            path = write_site_file(
                _site_path(cfg, rec),
                plate=rec["plate"],
                well=rec["well"],
                site=rec["site"],
                config_hash=chash,
                backend="cellprofiler",
                objects=objects,
                image=image.get(key, {}),
                attrs={
                    "source": where_of(comps[0]),
                    "source_image_number": int(rec["number"]),
                    "metadata": json.dumps(rec["metadata"], sort_keys=True),
                },
            )
            stats["sites"] += 1
            stats["cells"] += len(joined[comps[0]][2])
            stats["files"].append(str(path))
    return stats


def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# --------------------------------------------------------------------------- plan
def plan_units(images: list[tuple[TableSet, list[dict]]], n_ranks: int) -> list[list[tuple[TableSet, list[dict]]]]:
    """Work per rank: a table set with one image goes whole to one rank; a batch's images round-robin.

    Single-site folders are dealt out by their cumulative image count so that
    each rank opens only its own folders.
    """
    plan: list[list] = [[] for _ in range(n_ranks)]
    load = [0] * n_ranks
    for ts, recs in images:
        if not recs:
            continue
        if len(recs) == 1:
            r = int(np.argmin(load))
            plan[r].append((ts, recs))
            load[r] += 1
            continue
        for r in range(n_ranks):
            mine = recs[r::n_ranks]
            if mine:
                plan[r].append((ts, mine))
                load[r] += len(mine)
    return plan


def well_metadata_table(images: list[dict]) -> pd.DataFrame:
    """Per-well ``Metadata_*`` values that are the same at every site of the well."""
    rows = []
    for r in images:
        meta = dict(r["metadata"])
        meta["Metadata_Plate"], meta["Metadata_Well"] = r["plate"], r["well"]
        rows.append(meta)
    if not rows:
        return pd.DataFrame(columns=["Metadata_Plate", "Metadata_Well"])
    df = pd.DataFrame(rows).astype(object)
    keys = ["Metadata_Plate", "Metadata_Well"]
    others = [c for c in df.columns if c not in keys]
    g = df.groupby(keys, sort=True)
    constant = [c for c in others if (g[c].nunique(dropna=False) <= 1).all()]
    return g[constant].first().reset_index() if constant else g.size().reset_index()[keys]


# --------------------------------------------------------------------------- driver
def import_cellprofiler(cfg, src, comm=None, overwrite: bool = False, verbose: bool = True) -> dict:
    """Import ``src`` into ``<out>/sites`` on all ranks of ``comm``; the summary on every rank."""
    comm = comm if comm is not None else get_comm()
    with abort_on_error(comm):
        return _import(cfg, src, comm, overwrite, verbose)


def _import(cfg, src, comm, overwrite: bool, verbose: bool) -> dict:
    rank, size = comm.Get_rank(), comm.Get_size()
    t0 = time.perf_counter()
    ccfg = cfg.cellprofiler
    sets = discover_sources(src, ccfg.image_table) if rank == 0 else None
    sets = comm.bcast(sets, root=0)
    if not sets:
        raise ImportError_(f"{src}: no CellProfiler outputs found (*{ccfg.image_table}.csv or SQLite)")

    problems: list[dict] = []

    def report(p):
        problems.append(p)
        if verbose:
            where = f"{p['file']}" + (f": image {p['image']}" if p["image"] else "") + (
                f" object {p['object']}" if p["object"] else "")
            print(f"warning: import: {where}: {p['reason']}", file=sys.stderr, flush=True)

    mine = [(i, inspect_table_set(sets[i], ccfg)) for i in range(rank, len(sets), size)]
    for _, (_, probs) in mine:
        for p in probs:
            report(p)
    gathered = comm.gather([(i, imgs) for i, (imgs, _) in mine], root=0)

    plan = None
    summary_head = {}
    if rank == 0:
        per_set = dict(item for part in gathered for item in part)
        seen: dict = {}
        images, all_images, kept_existing = [], [], 0
        for i in range(len(sets)):
            recs = []
            for r in per_set.get(i, []):
                k = (r["plate"], r["well"], r["site"])
                if k in seen:
                    report(_problem(sets[i].where, r["number"], None,
                                    f"plate {k[0]} well {k[1]} site {k[2]} already read from {seen[k]}; skipped"))
                    continue
                seen[k] = sets[i].where
                all_images.append(r)
                if not overwrite and validate_site_file(_site_path(cfg, r), cfg.hash()).ok:
                    kept_existing += 1
                    continue
                recs.append(r)
            images.append((sets[i], recs))
        plan = plan_units(images, size)
        meta = well_metadata_table(all_images)
        out = Layout.of(cfg).import_dir
        out.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(out / WELL_METADATA_NAME, meta.to_csv(index=False).encode())
        summary_head = {"sources": len(sets), "images": len(all_images), "kept_existing": kept_existing}
    work = comm.scatter(plan, root=0)
    t1 = time.perf_counter()
    stats = convert_units(cfg, work, report)
    stats.update(rank=rank, seconds=time.perf_counter() - t1, peak_rss_mb=_peak_rss_mb(), problems=problems)
    parts = comm.gather(stats, root=0)

    summary = None
    if rank == 0:
        all_problems = [p for part in parts for p in part["problems"]]
        out = Layout.of(cfg).import_dir
        cols = ["file", "image", "object", "reason"]
        write_bytes_atomic(out / SKIPPED_NAME, pd.DataFrame(all_problems, columns=cols).to_csv(index=False).encode())
        summary = dict(summary_head)
        summary.update(
            ranks=size,
            sites_written=int(sum(p["sites"] for p in parts)),
            cells=int(sum(p["cells"] for p in parts)),
            rows_read=int(sum(p["rows"] for p in parts)),
            problems=len(all_problems),
            site_dtype=ccfg.site_dtype,
            seconds_total=time.perf_counter() - t0,
            per_rank=[{k: p[k] for k in ("rank", "sites", "cells", "rows", "seconds", "peak_rss_mb")} for p in parts],
            skipped_csv=str(out / SKIPPED_NAME),
            well_metadata_csv=str(out / WELL_METADATA_NAME),
        )
        write_bytes_atomic(out / SUMMARY_NAME, json.dumps(summary, indent=2).encode())
    return comm.bcast(summary, root=0)


def imported_well_metadata(out) -> Optional[pd.DataFrame]:
    """``<out>/import/well_metadata.csv`` when an import wrote one (plate and well as text)."""
    path = Layout(out).import_dir / WELL_METADATA_NAME
    if not path.is_file():
        return None
    return pd.read_csv(path, dtype=str, keep_default_na=True)


# --------------------------------------------------------------------------- CLI
def add_import_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Arguments of ``hpc-profiler import``."""
    parser.add_argument("kind", choices=["cellprofiler"], help="what to import (CellProfiler CSVs or SQLite)")
    parser.add_argument("src", help="folder of ExportToSpreadsheet CSVs (per site or per batch) or a SQLite file")
    parser.add_argument("config", help="YAML config file (output_dir, cellprofiler section)")
    parser.add_argument("--overwrite", action="store_true", help="rewrite site files that already exist")
    parser.add_argument("--no-mpi", action="store_true", help="run in one process even under an MPI launcher")
    parser.add_argument("-q", "--quiet", action="store_true", help="do not print skipped rows (still listed in the CSV)")
    return parser


def main_import(args) -> int:
    """``hpc-profiler import cellprofiler SRC CONFIG``: 0 on success, 1 on an import error, 2 on a config error."""
    from .config import load_config_or_report

    cfg = load_config_or_report(args.config)
    if cfg is None:
        return 2
    comm = get_comm(False if args.no_mpi else None)
    try:
        summary = import_cellprofiler(cfg, args.src, comm, overwrite=args.overwrite, verbose=not args.quiet)
    except (ImportError_, OSError, ValueError, sqlite3.Error) as exc:
        print(f"error: import: {exc}", file=sys.stderr)
        return 1
    if comm.Get_rank() == 0:
        print(
            f"imported {summary['sites_written']} site(s), {summary['cells']} cells "
            f"({summary['kept_existing']} existing kept, {summary['problems']} problem(s)) into {Layout.of(cfg).sites_dir}"
        )
        print(f"summary: {Layout.of(cfg).import_dir / SUMMARY_NAME}")
    return 0


def main(argv=None) -> int:
    """``python -m hpc_profiler.cpimport SRC CONFIG [--overwrite] [--no-mpi]``."""
    parser = argparse.ArgumentParser(prog="python -m hpc_profiler.cpimport")
    add_import_arguments(parser)
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] != "cellprofiler":
        argv = ["cellprofiler", *argv]
    return main_import(parser.parse_args(argv))


if __name__ == "__main__":  # pragma: no cover - exercised through mpirun in tests
    sys.exit(main())
