"""Packing a plate's finished site files into one HDF5 file (``<out>/packed/<plate>.h5``).

``python -m hpc_profiler.ledger pack CONFIG`` (or ``python -m hpc_profiler.pack pack CONFIG``):
many small files are what parallel file systems handle worst; a packed plate is
one file with one group per site (the site file's layout), recorded in the
completion ledger (:mod:`hpc_profiler.ledger`) so that ``status``, ``submit``
and ``reduce`` find the sites there.
"""
from __future__ import annotations

import os
import sys
from typing import Sequence

import h5py

from . import sitefile
from ._atomic import atomic_path
from .layout import Layout
from .ledger import LedgerWriter, scan_sites
from .sitefile import pack_group


def pack_plate(cfg, plate: str, sites: Sequence, *, remove_loose: bool = True) -> dict:
    """Pack a plate's finished sites into ``<out>/packed/<plate>.h5`` (one group per site).

    The sites are those of ``sites`` on ``plate`` that :func:`scan_sites`
    finds done (loose files, or groups of an earlier pack, which are carried
    over). The packed file is written under a temporary name and renamed into
    place; then each site gets a ledger record naming its group, and only then
    are the loose files removed (``remove_loose``), so a kill at any point
    leaves every site readable and counted once. Returns counts
    ``{"packed", "from_loose", "from_pack", "removed", "bytes"}``.
    """
    plate_sites = [s for s in sites if s.plate == plate]
    scan = scan_sites(cfg, plate_sites)
    chash = cfg.hash()
    layout = Layout.of(cfg)
    dest = layout.packed(plate)
    todo = [(s, scan.paths.get(i) or str(layout.site_of(s)))
            for i, s in enumerate(plate_sites) if scan.done[i]]
    counts = {"packed": 0, "from_loose": 0, "from_pack": 0, "removed": 0, "bytes": 0}
    if not todo:
        return counts
    illum = {}  # site key -> the illumination digest its group carries (copied with the group)
    with atomic_path(dest, suffix=".h5") as tmp, h5py.File(tmp, "w") as fd:
        fd.attrs["plate"] = str(plate)
        fd.attrs["config_hash"] = chash
        for s, ref in todo:
            group = pack_group(s.well, s.site)
            with sitefile.open_site(ref) as src:
                if not bool(src.attrs.get("complete", False)) or src.attrs.get("config_hash") != chash:
                    raise OSError(f"{ref}: not a finished site file of this config; not packed")
                d = src.attrs.get("illum_digest")
                illum[s.key] = sitefile.ILLUM_NONE if d is None else str(d)
                src.file.copy(src, fd, name=group)
            counts["from_pack" if sitefile.PACK_SEP in str(ref) else "from_loose"] += 1
        fd.attrs["complete"] = True
    w = LedgerWriter(cfg.out, f"pack-{plate}")
    for s, _ in todo:
        w.record(s.key, sitefile.site_ref(dest, pack_group(s.well, s.site)), chash, illum=illum[s.key])
    counts["packed"] = len(todo)
    counts["bytes"] = dest.stat().st_size
    if remove_loose:
        for _, ref in todo:
            if sitefile.PACK_SEP not in str(ref):
                try:
                    os.unlink(ref)
                    counts["removed"] += 1
                except FileNotFoundError:
                    pass
    return counts


def main(argv=None) -> int:
    """``python -m hpc_profiler.pack pack CONFIG [--plate P ...] [--keep-loose]`` (also ``-m hpc_profiler.ledger``)."""
    import argparse

    from .config import ConfigError, load_config
    from .manifest import ManifestError
    from .workflow import OrchestrationError
    from .workflow.sites import load_or_build_manifest, plates_of

    p = argparse.ArgumentParser(prog="python -m hpc_profiler.pack",
                                description="pack finished site files into one HDF5 file per plate")
    sub = p.add_subparsers(dest="cmd", required=True)
    pp = sub.add_parser("pack", help="pack each plate's finished sites into <out>/packed/<plate>.h5")
    pp.add_argument("config", help="config file (YAML)")
    pp.add_argument("--plate", action="append", default=None, help="only this plate (repeatable)")
    pp.add_argument("--keep-loose", action="store_true", help="keep the loose site files after packing")
    args = p.parse_args(argv)
    try:
        cfg = load_config(args.config)
        sites = load_or_build_manifest(cfg)
    except (ConfigError, OrchestrationError, ManifestError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    status = 0
    for plate in args.plate or plates_of(sites):
        try:
            c = pack_plate(cfg, plate, sites, remove_loose=not args.keep_loose)
        except OSError as exc:
            print(f"plate {plate}: {exc}", file=sys.stderr)
            status = 1
            continue
        print(f"plate {plate}: {c['packed']} site(s) packed ({c['from_loose']} loose, {c['from_pack']} "
              f"already packed), {c['removed']} loose file(s) removed, {c['bytes'] / 1e6:.1f} MB")
    return status


if __name__ == "__main__":
    sys.exit(main())
