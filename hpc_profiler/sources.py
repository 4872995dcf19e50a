"""The image sources a manifest is built from, in one registry.

Each :class:`Source` names the ``input`` key that selects it and the function
that lists its sites; :func:`build_manifest` builds the manifest of the source
a config sets. The sources' modules import :mod:`hpc_profiler.manifest` (the
``Site`` record, the LoadData reader), never the other way round:

* ``loaddata`` - CellProfiler's LoadData CSV (``input.loaddata_csv``;
  :func:`hpc_profiler.manifest.manifest_from_loaddata`);
* ``phenix`` - an Opera Phenix folder (``input.phenix_dir``;
  :func:`hpc_profiler.manifest.manifest_from_phenix`);
* ``gallery`` - the Cell Painting Gallery on object storage (``input.gallery``;
  :func:`hpc_profiler.gallery.gallery_manifest`).

Existing CellProfiler outputs (``hpc-profiler import cellprofiler``) become
site files directly, not a manifest; a further source registers here with
:func:`register_source`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from . import gallery
from .manifest import ManifestError, manifest_from_loaddata, manifest_from_phenix


@dataclass(frozen=True)
class Source:
    """One image source: ``key`` is its ``input.<key>`` setting; ``build(cfg)`` returns ``(sites, problems)``."""

    name: str
    key: str
    build: Callable


#: The registered sources, by name, in the order they are tried.
SOURCES: dict[str, Source] = {}


def register_source(source: Source) -> Source:
    SOURCES[source.name] = source
    return source


def _loaddata(cfg):
    return manifest_from_loaddata(cfg.path(cfg.input.loaddata_csv), cfg.channels), []


def _phenix(cfg):
    inp = cfg.input
    return manifest_from_phenix(cfg.path(inp.phenix_dir), inp.phenix_channels, cfg.channels, inp.phenix_plate)


register_source(Source("loaddata", "loaddata_csv", _loaddata))
register_source(Source("phenix", "phenix_dir", _phenix))
register_source(Source("gallery", "gallery", gallery.gallery_manifest))


def configured_source(cfg) -> Source:
    """The source ``cfg.input`` sets (the config allows one)."""
    for src in SOURCES.values():
        if getattr(cfg.input, src.key, None) is not None:
            return src
    raise ManifestError(
        f"{cfg.source or '<config>'}: input: no image source; set input.loaddata_csv or input.phenix_dir"
    )


def build_manifest(cfg):
    """Manifest of the image source configured in ``cfg.input``.

    Returns
    -------
    (sites, problems)
        ``problems`` lists sites that are present but incomplete.

    Raises
    ------
    ManifestError
        No source configured, or the source is unreadable.
    """
    src = configured_source(cfg)
    gallery.configure_storage(cfg)  # storage options (anonymous, endpoint, retries) of any source
    return src.build(cfg)
