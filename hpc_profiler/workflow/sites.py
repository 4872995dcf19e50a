"""The batch's sites: ``<out>/manifest.parquet``, built from the configured source when needed.

The manifest is built (:func:`hpc_profiler.sources.build_manifest`) when
missing, and again at each submission unless it was built from the LoadData
CSV as it is now (``manifest.source.json`` holds the CSV's size and mtime).
Large batches are read as columns (:class:`SiteColumns`), not per-site objects.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Sequence

from .. import manifest as manifest_mod, storage
from .._atomic import write_bytes_atomic
from ..config import Config
from ..layout import Layout
from ..sources import build_manifest
from . import OrchestrationError


def _read_json(path: Path):
    with open(path) as fh:
        return json.load(fh)


def manifest_path(cfg: Config) -> Path:
    """``<out>/manifest.parquet``: every site of the batch."""
    return Layout.of(cfg).manifest


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
        return _read_json(Layout.of(cfg).manifest_source) == stamp
    except (OSError, ValueError):
        return False


def _build_and_save_manifest(cfg: Config) -> list:
    stamp = _source_stamp(cfg)
    sites, _problems = build_manifest(cfg)  # incomplete sites stay in: they fail visibly
    if not sites:
        raise OrchestrationError(f"{cfg.source or '<config>'}: the image source lists no sites")
    manifest_mod.save_manifest(sites, manifest_path(cfg))
    if stamp is not None:
        write_bytes_atomic(Layout.of(cfg).manifest_source, json.dumps(stamp, indent=1, sort_keys=True).encode())
    return sites


def ensure_manifest(cfg: Config, rebuild: bool = False) -> Path:
    """``<out>/manifest.parquet``, built when missing (``rebuild``: also when the source may have changed)."""
    path = manifest_path(cfg)
    if not path.exists() or (rebuild and not manifest_is_current(cfg)):
        _build_and_save_manifest(cfg)
    return path


def load_or_build_manifest(cfg: Config, rebuild: bool = False, write: bool = True) -> list:
    """The batch's sites: ``<out>/manifest.parquet``, built from ``cfg.input`` when missing.

    ``rebuild`` builds it again unless it was built from the LoadData CSV as
    it is now (:func:`manifest_is_current`), so sites added to the input are
    picked up. ``write=False`` (a dry run) builds without saving.
    """
    path = manifest_path(cfg)
    if path.exists() and (not rebuild or manifest_is_current(cfg)):
        return manifest_mod.load_manifest(path)
    if not write:
        return build_manifest(cfg)[0]
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
        sites = build_manifest(cfg)[0]
        if not sites:
            raise OrchestrationError(f"{cfg.source or '<config>'}: the image source lists no sites")
        return SiteColumns.of_sites(sites)
    return SiteColumns.read(ensure_manifest(cfg, rebuild))


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
