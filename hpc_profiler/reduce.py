"""Site files to well profiles with MPI: aggregate, annotate, normalize, select.

``mpirun -n N hpc-profiler reduce CONFIG`` (or ``python -m hpc_profiler.reduce
CONFIG``; without a launcher the same code runs on :class:`~hpc_profiler.mpi.SerialComm`):

1. Rank 0 lists the site files ``<out>/sites/<plate>/<row>/*.h5`` and the
   sites packed into ``<out>/packed/<plate>.h5`` (:func:`discover_site_files`;
   a loose file wins over the packed copy of the same site); the ranks validate them in
   parallel (:func:`hpc_profiler.sitefile.validate_site_file` with the config
   hash) and read their plate, well, site and cell count.
2. Rank 0 assigns whole wells to ranks, balanced by cell count
   (:func:`hpc_profiler.mpi.split_balanced`); a well's sites go to one rank.
3. Each rank reads its wells one at a time (:func:`read_site`, the one
   function through which this stage reads a site)
   and keeps only the per-well median (CPJUMP1's aggregation; optionally the
   mean) and cell count, so a process never holds more single cells than the
   largest well.
4. Rank 0 gathers one well table, joins the per-well metadata
   (``input.well_metadata_csv``; without it, :func:`default_metadata`: the
   shipped CPJUMP1 plate maps for plates that are CPJUMP1 barcodes and the
   ``Metadata_*`` that ``hpc-profiler import cellprofiler`` carried), normalizes per plate
   (:func:`hpc_profiler.profiles.normalize`) and selects features
   (:func:`hpc_profiler.profiles.feature_select`), and writes
   ``<out>/profiles/well_aggregated.parquet``, ``well_normalized.parquet`` and
   ``well_feature_selected.parquet`` (CSV too with ``reduce.csv``), each written
   to a temporary file and renamed into place, plus ``reduce_summary.json``
   (per-rank sites, wells, cells, largest well, seconds and peak RSS;
   ``seconds_total`` runs until the tables are ready, writing excluded).

Reproduces the ``pycytominer.aggregate`` -> ``annotate`` -> ``normalize`` ->
``feature_select`` chain of the CPJUMP1 profiling recipe; the numbers are those
of :mod:`hpc_profiler.profiles`. Differences: feature selection runs once over
all wells of the batch (all plates), after per-plate normalization.

An invalid or unreadable site file stops the run with an error naming the file
on every rank (:func:`hpc_profiler.mpi.abort_on_error`: no rank is left
waiting in a collective). With ``skip_invalid`` such files are skipped and
listed in ``<out>/profiles/skipped_site_files.csv``.
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Optional

import h5py
import numpy as np
import pandas as pd

from . import profiles as P
from ._atomic import atomic_path, write_bytes_atomic
from .layout import Layout
from .mpi import abort_on_error, get_comm, split_balanced
from .sitefile import open_site, read_cells_matrix, site_ref, validate_site_file

PROFILE_TABLES = ("well_aggregated", "well_normalized", "well_feature_selected")
SKIPPED_NAME = "skipped_site_files.csv"
SUMMARY_NAME = "reduce_summary.json"


class ReduceError(RuntimeError):
    """A reduction problem, with the file, plate or well named."""


# --------------------------------------------------------------------------- discovery
def discover_site_files(out) -> list[str]:
    """Sorted names of the batch's sites: loose files and packed sites.

    Loose files are ``<out>/sites/<plate>/<row>/*.h5`` (temporary files
    excluded); packed sites are the groups of ``<out>/packed/<plate>.h5``,
    named ``<file>::<group>`` (:func:`sitefile.site_ref`). A site present both
    ways (a pack whose loose files were kept, or a site redone after packing)
    is listed once, as its loose file.
    """
    layout = Layout(out)
    root = layout.sites_dir
    loose = sorted(str(p) for p in root.glob("*/*/*.h5") if not p.name.startswith(".")) if root.is_dir() else []
    names = {Path(p).parent.parent.name + "/" + Path(p).name for p in loose}
    packed = []
    pdir = layout.packed_dir
    if pdir.is_dir():
        for pack in sorted(pdir.glob("*.h5")):
            if pack.name.startswith("."):
                continue
            plate = pack.stem
            try:
                with h5py.File(pack, "r") as f:
                    groups = sorted(f)
            except OSError:
                packed.append(str(pack))  # unreadable: listed, so validation names it
                continue
            packed += [site_ref(pack, g) for g in groups if f"{plate}/{plate}_{g}.h5" not in names]
    return sorted(loose + packed)


def read_site(ref):
    """One site's single-cell matrix ``(names, values, object_number, attrs)``, from a loose or packed site.

    The one place this stage reads a site (:func:`sitefile.read_cells_matrix`).
    """
    return read_cells_matrix(ref)


def inspect_site_file(path, config_hash: Optional[str]) -> dict:
    """Validate a site file and read its plate, well, site and object count.

    Returns a record ``{path, ok, reason, plate, well, site, n_cells}``; an
    invalid file gives ``ok=False`` and the reason, never an exception.
    """
    rec = {"path": str(path), "ok": False, "reason": "", "plate": "", "well": "", "site": "", "n_cells": 0}
    status = validate_site_file(path, config_hash)
    if not status.ok:
        rec["reason"] = status.reason
        return rec
    try:
        with open_site(path) as f:
            rec["plate"], rec["well"], rec["site"] = (str(f.attrs[k]) for k in ("plate", "well", "site"))
            counts = [f["objects"][o]["object_number"].shape[0] for o in f["objects"]]
    except (OSError, KeyError) as exc:
        rec["reason"] = f"unreadable ({exc})"
        return rec
    rec["n_cells"] = int(max(counts, default=0))
    rec["ok"] = True
    return rec


def group_wells(records: list[dict]) -> tuple[list[tuple[str, str]], list[list[str]], list[int]]:
    """Valid records grouped by (plate, well): keys, site paths (sorted), cell counts."""
    paths: dict = defaultdict(list)
    cells: dict = defaultdict(int)
    for r in records:
        if r["ok"]:
            key = (r["plate"], r["well"])
            paths[key].append(r["path"])
            cells[key] += r["n_cells"]
    keys = sorted(paths)
    return keys, [sorted(paths[k]) for k in keys], [cells[k] for k in keys]


def assign_wells(weights, n_ranks: int) -> list[list[int]]:
    """Well indices per rank, balanced by cell count (:func:`mpi.split_balanced`)."""
    return split_balanced([w + 1 for w in weights], n_ranks)  # +1: empty wells still cost a read


# --------------------------------------------------------------------------- per rank
def _skip_record(path, reason: str, stage: str, plate="", well="", site="") -> dict:
    return {"path": str(path), "plate": plate, "well": well, "site": site, "stage": stage, "reason": reason}


def reduce_wells(
    wells: list[tuple[tuple[str, str], list[str]]],
    operation: str = "median",
    also_mean: bool = False,
    skip_invalid: bool = False,
) -> dict:
    """Aggregate the wells of one rank, one well in memory at a time.

    Parameters
    ----------
    wells : list of ((plate, well), [site file paths])
    operation : {"median", "mean"}
        The main aggregation (pycytominer ``aggregate(operation=...)``).
    also_mean : bool
        Also return per-well means.
    skip_invalid : bool
        Record unreadable site files and go on, instead of raising.

    Returns
    -------
    dict
        ``keys`` [(plate, well)], ``count`` int64 [n], ``values`` float64 [n, F],
        ``mean`` float64 [n, F] or None, ``names`` [F] or None, ``skipped`` [records],
        ``sites``, ``cells``.
    """
    names: Optional[list[str]] = None
    keys, counts, rows, means, skipped = [], [], [], [], []
    n_sites = 0
    for (plate, well), paths in wells:
        blocks = []
        for path in paths:
            try:
                feats, values, _, _ = read_site(path)
            except Exception as exc:  # noqa: BLE001 - any failure to read is reported with the file
                msg = str(exc) if str(path) in str(exc) else f"{path}: unreadable site file ({exc})"
                if not skip_invalid:
                    raise ReduceError(msg) from exc
                skipped.append(_skip_record(path, msg, "read", plate, well))
                continue
            if not feats and len(values) == 0:  # a site without objects (nor feature columns): zero cells
                n_sites += 1
                continue
            if names is None:
                names = feats
            elif feats != names:
                if set(feats) != set(names):
                    diff = sorted(set(feats) ^ set(names))[:5]
                    raise ReduceError(
                        f"{path}: plate {plate} well {well}: feature columns differ from the other site files "
                        f"(e.g. {diff})"
                    )
            if feats != names:
                where = {n: j for j, n in enumerate(feats)}
                values = values[:, [where[n] for n in names]]
            blocks.append(values)
            n_sites += 1
        if not blocks:
            continue
        x = np.concatenate(blocks, axis=0)
        keys.append((plate, well))
        counts.append(x.shape[0])
        rows.append(P.aggregate_cells(x, operation))
        if also_mean:
            means.append(P.aggregate_cells(x, "mean"))
    f = len(names) if names is not None else 0
    return {
        "keys": keys,
        "count": np.asarray(counts, dtype=np.int64),
        "values": np.vstack(rows) if rows else np.empty((0, f)),
        "mean": (np.vstack(means) if means else np.empty((0, f))) if also_mean else None,
        "names": names,
        "skipped": skipped,
        "sites": n_sites,
        "cells": int(np.sum(counts)) if counts else 0,
    }


def merge_parts(parts: list[dict], field: str = "values") -> pd.DataFrame:
    """One well table from the ranks' parts, sorted by plate and well.

    Columns: ``Metadata_Plate``, ``Metadata_Well``, ``Metadata_Object_Count``,
    features (pycytominer ``aggregate(compute_object_count=True)`` layout).
    """
    named = [p for p in parts if p["names"] is not None and p["keys"]]
    if not named:
        raise ReduceError("no cells: no readable site file with objects was found")
    names = named[0]["names"]
    for p in named[1:]:
        if set(p["names"]) != set(names):
            raise ReduceError(
                f"well {p['keys'][0][0]}/{p['keys'][0][1]}: feature columns differ between site files "
                f"(e.g. {sorted(set(p['names']) ^ set(names))[:5]})"
            )
    keys = [k for p in named for k in p["keys"]]
    values = np.vstack([pd.DataFrame(p[field], columns=p["names"]).loc[:, names].to_numpy() for p in named])
    meta = pd.DataFrame(keys, columns=P.STRATA)
    meta[P.COUNT_COLUMN] = np.concatenate([p["count"] for p in named])
    table = pd.concat([meta, pd.DataFrame(values, columns=names)], axis=1)
    return table.sort_values(P.STRATA, kind="stable").reset_index(drop=True)


# --------------------------------------------------------------------------- output
def write_table_atomic(df: pd.DataFrame, path, kind: str = "parquet") -> Path:
    """Write ``df`` to ``path`` (Parquet via pyarrow, or CSV) through a temporary file + ``os.replace``."""
    with atomic_path(path) as tmp:
        if kind == "parquet":
            df.to_parquet(tmp, engine="pyarrow", index=False)
        else:
            df.to_csv(tmp, index=False)
    return Path(path)


def read_well_metadata(path) -> pd.DataFrame:
    """The per-well metadata CSV, plate and well read as text."""
    try:
        return pd.read_csv(path, dtype={"Metadata_Plate": str, "Metadata_Well": str})
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise ReduceError(f"{path}: cannot read well metadata ({exc})") from exc


def _peak_rss_mb() -> float:
    """Peak resident set size of this process, MiB (``getrusage``; Linux reports kB).

    Linux keeps ``ru_maxrss`` across fork + exec, so a rank started directly
    by a large parent process reports at least the parent's peak; ranks
    started by ``mpirun``/``srun`` are not affected.
    """
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _write_outputs(cfg, tables: dict, skipped: list, skip_invalid: bool, summary: dict) -> dict:
    outdir = Layout.of(cfg).profiles_dir
    paths = {}
    for name, df in tables.items():
        paths[name] = str(write_table_atomic(df, outdir / f"{name}.parquet"))
        if cfg.reduce.csv:
            paths[f"{name}_csv"] = str(write_table_atomic(df, outdir / f"{name}.csv", "csv"))
    if skip_invalid:
        cols = ["path", "plate", "well", "site", "stage", "reason"]
        paths["skipped"] = str(write_table_atomic(pd.DataFrame(skipped, columns=cols), outdir / SKIPPED_NAME, "csv"))
    write_bytes_atomic(outdir / SUMMARY_NAME, json.dumps(summary, indent=2).encode())
    paths["summary"] = str(outdir / SUMMARY_NAME)
    return paths


def default_metadata(cfg, aggregated: pd.DataFrame):
    """``(table, name)`` of the per-well metadata used without ``input.well_metadata_csv``, or ``(None, "")``.

    The shipped CPJUMP1 plate maps for plates that are CPJUMP1 barcodes and the
    ``Metadata_*`` a CellProfiler import carried (:func:`metadata.default_well_metadata`).
    """
    from .cpimport import WELL_METADATA_NAME, imported_well_metadata
    from .metadata import default_well_metadata

    imported = imported_well_metadata(cfg.out)
    meta = default_well_metadata(aggregated["Metadata_Plate"].unique(), imported)
    where = "shipped CPJUMP1 plate maps" + (
        f" + {Layout.of(cfg).import_dir / WELL_METADATA_NAME}" if imported is not None else ""
    )
    return meta, where


def profile_tables(cfg, aggregated: pd.DataFrame, mean_table: Optional[pd.DataFrame] = None) -> dict:
    """Annotate, normalize and select: the tables written by the reduction."""
    rc = cfg.reduce
    meta_csv = cfg.path(cfg.input.well_metadata_csv)
    meta, where = (read_well_metadata(meta_csv), str(meta_csv)) if meta_csv is not None else default_metadata(cfg, aggregated)
    if meta is not None:
        aggregated = P.join_metadata(aggregated, meta, where=where)
        if mean_table is not None:
            mean_table = P.join_metadata(mean_table, meta, where=where)
    if rc.normalize_samples == "negcon" and "Metadata_control_type" not in aggregated.columns:
        raise ReduceError(
            "reduce.normalize_samples is 'negcon' but no Metadata_control_type: set input.well_metadata_csv "
            "(plates that are CPJUMP1 barcodes are annotated from the shipped plate maps)"
        )
    normalized = P.normalize(
        aggregated, method=rc.normalize_method, samples=rc.normalize_samples, epsilon=rc.mad_robustize_epsilon
    )
    fs = rc.feature_select
    blocklist = P.load_blocklist(cfg.path(fs.blocklist_file)) if fs.blocklist_file else None
    selected = P.feature_select(
        normalized,
        fs.operations,
        freq_cut=fs.freq_cut,
        unique_cut=fs.unique_cut,
        min_variance=fs.min_variance,
        corr_threshold=fs.corr_threshold,
        corr_method=fs.corr_method,
        na_cutoff=fs.na_cutoff,
        blocklist=blocklist,
    )
    selected, nonfinite = P.drop_nonfinite_features(selected)
    if nonfinite:
        print(f"reduce: dropped {len(nonfinite)} feature(s) NaN or infinite in some well from "
              f"well_feature_selected (e.g. {', '.join(nonfinite[:3])})", flush=True)
    tables = {"well_aggregated": aggregated, "well_normalized": normalized, "well_feature_selected": selected}
    if mean_table is not None:
        tables["well_aggregated_mean"] = mean_table
    return tables


# --------------------------------------------------------------------------- driver
def reduce_batch(cfg, comm=None, skip_invalid: bool = False) -> dict:
    """Run the reduction of a batch on all ranks of ``comm``; output paths on every rank.

    ``comm=None`` decides from the environment (:func:`mpi.get_comm`). Every
    rank must call this. Raises :class:`ReduceError` (or ``ValueError`` for a
    table problem) naming the file, plate or well; with more than one rank an
    error on any rank aborts all of them (:func:`mpi.abort_on_error`) instead
    of leaving the others waiting.
    """
    comm = comm if comm is not None else get_comm()
    with abort_on_error(comm):
        return _reduce_batch(cfg, comm, skip_invalid)


def _reduce_batch(cfg, comm, skip_invalid: bool) -> dict:
    rank, size = comm.Get_rank(), comm.Get_size()
    t0 = time.perf_counter()

    files = [str(p) for p in discover_site_files(cfg.out)] if rank == 0 else None
    files = comm.bcast(files, root=0)
    chash = cfg.hash()
    mine = [inspect_site_file(p, chash) for p in files[rank::size]]
    gathered = comm.gather(mine, root=0)

    plan, skipped = None, []
    if rank == 0:
        records = [r for part in gathered for r in part]
        bad = [r for r in records if not r["ok"]]
        if bad and not skip_invalid:
            listing = "; ".join(f"{r['path']}: {r['reason']}" for r in bad[:10])
            raise ReduceError(f"{len(bad)} invalid site file(s) (use --skip-invalid to skip them): {listing}")
        skipped = [_skip_record(r["path"], r["reason"], "validate") for r in bad]
        if not any(r["ok"] for r in records):
            raise ReduceError(f"no valid site files under {Layout.of(cfg).sites_dir}")
        keys, paths, weights = group_wells(records)
        parts = assign_wells(weights, size)
        plan = [[(keys[i], paths[i]) for i in part] for part in parts]
    work = comm.scatter(plan, root=0)

    rc = cfg.reduce
    also_mean = rc.also_mean and rc.aggregate != "mean"
    t1 = time.perf_counter()
    part = reduce_wells(work, rc.aggregate, also_mean, skip_invalid)
    part["rank"] = rank
    part["seconds"] = time.perf_counter() - t1
    part["peak_rss_mb"] = _peak_rss_mb()
    parts = comm.gather(part, root=0)

    paths = None
    if rank == 0:
        skipped += [s for p in parts for s in p["skipped"]]
        aggregated = P.metadata_first(merge_parts(parts, "values"))
        mean_table = merge_parts(parts, "mean") if also_mean else None
        tables = profile_tables(cfg, aggregated, mean_table)
        summary = {
            "ranks": size,
            "sites": int(sum(p["sites"] for p in parts)),
            "wells": int(len(aggregated)),
            "cells": int(sum(p["cells"] for p in parts)),
            "skipped": len(skipped),
            "seconds_total": time.perf_counter() - t0,
            "per_rank": [
                {
                    "rank": p["rank"],
                    "wells": len(p["keys"]),
                    "sites": p["sites"],
                    "cells": p["cells"],
                    "max_cells_per_well": int(p["count"].max()) if len(p["count"]) else 0,
                    "seconds": p["seconds"],
                    "peak_rss_mb": p["peak_rss_mb"],
                }
                for p in parts
            ],
        }
        paths = _write_outputs(cfg, tables, skipped, skip_invalid, summary)
    return comm.bcast(paths, root=0)


# --------------------------------------------------------------------------- CLI
def add_reduce_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Arguments of ``hpc-profiler reduce``."""
    parser.add_argument("config", help="YAML config file (output_dir, input.well_metadata_csv, reduce section)")
    parser.add_argument(
        "--skip-invalid",
        action="store_true",
        help="skip invalid or unreadable site files and list them in profiles/skipped_site_files.csv",
    )
    parser.add_argument("--no-mpi", action="store_true", help="run in one process even under an MPI launcher")
    return parser


def main_reduce(args) -> int:
    """``hpc-profiler reduce CONFIG``: 0 on success, 1 on a reduction error, 2 on a config error."""
    from .config import load_config_or_report

    cfg = load_config_or_report(args.config)
    if cfg is None:
        return 2
    comm = get_comm(False if args.no_mpi else None)
    try:
        paths = reduce_batch(cfg, comm, skip_invalid=args.skip_invalid)
    except (ReduceError, OSError, ValueError) as exc:
        print(f"error: reduce: {exc}", file=sys.stderr)
        return 1
    if comm.Get_rank() == 0:
        for name, p in paths.items():
            print(f"{name}: {p}")
    return 0


def main(argv=None) -> int:
    """``python -m hpc_profiler.reduce CONFIG [--skip-invalid] [--no-mpi]``."""
    parser = add_reduce_arguments(argparse.ArgumentParser(prog="python -m hpc_profiler.reduce"))
    return main_reduce(parser.parse_args(argv))


if __name__ == "__main__":  # pragma: no cover - exercised through mpirun in tests
    sys.exit(main())
