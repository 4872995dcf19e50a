"""Where a batch's files lie under ``output_dir``: the one place the on-disk layout is spelled.

Every module asks a :class:`Layout` for a path instead of joining folder names
onto ``cfg.out`` itself, and tasks that only need paths receive a layout, not
the whole config. The layout (``<out>`` is the config's ``output_dir``)::

    manifest.parquet                  every site of the batch
    manifest.source.json              size and mtime of the LoadData CSV it was built from
    illum/<plate>_illum.h5            illumination functions (or input.illum_dir)
    sites/<plate>/<row>/<plate>_<well>_s<site>.h5   one file per site (hpc_profiler.sitefile)
    packed/<plate>.h5                 a plate's sites packed into one file (hpc_profiler.ledger)
    ledger/<task>.tsv                 completion records (hpc_profiler.ledger)
    failures/<stage>/...              the failure table, one JSON file per site or plate
    logs/%j/, logs/work/<stage>/      submitit's job folders, per-task work logs
    batches/<batch>/                  what one submission scheduled (sites.parquet, batch.json)
    profiles/*.parquet, _stage.json   reduce's tables and stage stamp
    evaluate/*.parquet, _stage.json   the benchmark's tables and stage stamp
    import/                           CellProfiler import summary and skipped rows
    qc/*.png, index.html              the report

This module imports nothing of the package but :mod:`hpc_profiler.sitefile`
(the site-file naming) and is the bottom of the orchestration layer. It
imports :mod:`~hpc_profiler.sitefile` (and with it h5py, ~0.1 s) only in the
methods that name or check site files: ``hpc-profiler evaluate`` needs the
layout's folders on every MPI rank but no site file.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

#: Stages whose finished outputs carry a stage stamp (``_stage.json``, see :meth:`Layout.stamp`).
STAMPED = {"reduce": "profiles", "evaluate": "evaluate"}


@dataclass(frozen=True)
class Layout:
    """Paths of one batch's files, and the checks whether a site's result is in place.

    ``root`` is the output folder; ``illum_root`` where the illumination
    functions live (``input.illum_dir`` when set); ``config_hash`` the hash
    a finished site file must carry (:meth:`site_done`).
    """

    root: Path
    illum_root: Optional[Path] = None  # default: <root>/illum
    hash_: str = field(default="", repr=False)
    cfg: object = field(default=None, repr=False, compare=False)  # whose hash is taken when first asked

    def __post_init__(self):
        object.__setattr__(self, "root", Path(self.root))
        object.__setattr__(self, "illum_root", Path(self.illum_root) if self.illum_root else self.root / "illum")

    @classmethod
    def of(cls, cfg) -> "Layout":
        """The layout of a :class:`hpc_profiler.config.Config`."""
        root = Path(cfg.out)
        illum = Path(cfg.path(cfg.input.illum_dir)) if cfg.input.illum_dir else root / "illum"
        return cls(root=root, illum_root=illum, cfg=cfg)

    @property
    def config_hash(self) -> str:
        """The config hash a finished site file must carry (computed once, when first asked)."""
        if not self.hash_ and self.cfg is not None:
            object.__setattr__(self, "hash_", self.cfg.hash())
        return self.hash_

    # ------------------------------------------------------------------ inputs
    @property
    def manifest(self) -> Path:
        return self.root / "manifest.parquet"

    @property
    def manifest_source(self) -> Path:
        return self.root / "manifest.source.json"

    @property
    def gallery_manifest_dir(self) -> Path:
        """Where the Gallery source keeps the LoadData CSVs it fetched."""
        return self.root / "manifest"

    # ------------------------------------------------------------------ per-plate / per-site results
    def illum(self, plate: str) -> Path:
        return self.illum_root / f"{plate}_illum.h5"

    @property
    def sites_dir(self) -> Path:
        return self.root / "sites"

    def site(self, plate: str, well: str, site) -> Path:
        """``sites/<plate>/<row>/<plate>_<well>_s<site>.h5`` (:func:`hpc_profiler.sitefile.site_file_path`)."""
        from . import sitefile

        return sitefile.site_file_path(self.root, plate, well, site)

    def site_of(self, site) -> Path:
        """:meth:`site` of a :class:`hpc_profiler.manifest.Site`."""
        return self.site(site.plate, site.well, site.site)

    @property
    def packed_dir(self) -> Path:
        return self.root / "packed"

    def packed(self, plate: str) -> Path:
        from . import sitefile

        return sitefile.packed_path(self.root, plate)

    @property
    def ledger_dir(self) -> Path:
        return self.root / "ledger"

    # ------------------------------------------------------------------ bookkeeping
    def failures_dir(self, stage: str) -> Path:
        return self.root / "failures" / stage

    def failure(self, stage: str, plate: str, well: Optional[str] = None, site=None) -> Path:
        """One failure record: per site, or per plate (``well`` None: a plate's illum failure)."""
        if well is None:
            return self.failures_dir(stage) / f"{plate}.json"
        from . import sitefile

        return self.failures_dir(stage) / str(plate) / f"{Path(sitefile.site_file_name(plate, well, site)).stem}.json"

    @property
    def logs(self) -> Path:
        """submitit's job folders (``%j``), the MPI stages' logs and the work logs."""
        return self.root / "logs"

    def worklog_dir(self, stage: str) -> Path:
        return self.logs / "work" / stage

    @property
    def batches(self) -> Path:
        return self.root / "batches"

    def batch_dir(self, batch: str) -> Path:
        return self.batches / batch

    # ------------------------------------------------------------------ batch-level results
    @property
    def profiles_dir(self) -> Path:
        return self.root / "profiles"

    def profile(self, name: str) -> Path:
        return self.profiles_dir / name

    @property
    def evaluate_dir(self) -> Path:
        return self.root / "evaluate"

    @property
    def import_dir(self) -> Path:
        return self.root / "import"

    @property
    def qc_dir(self) -> Path:
        return self.root / "qc"

    @property
    def report(self) -> Path:
        return self.root / "index.html"

    def stamp(self, stage: str) -> Path:
        """``profiles/_stage.json`` (reduce) or ``evaluate/_stage.json``: the inputs' digest of the last run."""
        if stage not in STAMPED:
            raise ValueError(f"stage {stage!r} has no stamp; stamped stages: {', '.join(STAMPED)}")
        return self.root / STAMPED[stage] / "_stage.json"

    # ------------------------------------------------------------------ done / valid
    def site_done(self, plate: str, well: str, site, illum_digest: Optional[str] = None) -> bool:
        """Whether the site's result validates for :attr:`config_hash` (and, given
        ``illum_digest``, the plate's current illumination function: :func:`sitefile.illum_matches`):
        its file (complete flag, config hash), or its group of the plate's packed file. The deep
        check of one site; for many use :func:`hpc_profiler.ledger.scan_columns`, which reads the
        completion ledger."""
        from . import sitefile

        if sitefile.validate_site_file(self.site(plate, well, site), self.config_hash, illum_digest).ok:
            return True
        packed = self.packed(plate)
        return packed.exists() and sitefile.validate_site_file(
            sitefile.site_ref(packed, sitefile.pack_group(well, site)), self.config_hash, illum_digest).ok


def as_layout(where) -> Layout:
    """``where`` itself when it is a :class:`Layout`, else the layout of that config."""
    return where if isinstance(where, Layout) else Layout.of(where)
