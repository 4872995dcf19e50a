"""Per-plate and per-site work: the functions a Slurm task, a local run or a notebook calls.

This is the seam between the pure stages (illumination, segmentation, features)
and the outer layer (submitit arrays, status, resume). Every function here is
idempotent: it checks whether its output already validates and returns it
untouched, and it writes its output atomically, so rerunning a task after a
crash or a preemption redoes only the unfinished work.

* :func:`illum_plate` - the illumination stage, one call per plate.
* :func:`extract_site` - the extraction stage, one call per site:
  read the channels, apply the plate's illumination functions, segment,
  measure every feature family, write the site file.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Iterable, Optional

from . import sitefile
from .backend import get_backend
from .config import Config


class SiteProcessingError(RuntimeError):
    """A site's images were read but processing failed; the message names the site.

    The original exception is chained as ``__cause__``.
    """


def illum_path(cfg: Config, plate: str) -> Path:
    """``<out>/illum/<plate>_illum.h5`` (or ``input.illum_dir`` when set)."""
    root = cfg.path(cfg.input.illum_dir) if cfg.input.illum_dir else cfg.out / "illum"
    return Path(root) / f"{plate}_illum.h5"


def site_path(cfg: Config, site) -> Path:
    return sitefile.site_file_path(cfg.out, site.plate, site.well, site.site)


def illum_valid(path: Path, cfg: Config) -> bool:
    """Whether ``path`` holds this config's illumination functions for every channel."""
    import h5py

    if not path.exists():
        return False
    try:
        with h5py.File(path, "r") as f:
            return f.attrs.get("config_hash") == cfg.hash() and all(ch in f for ch in cfg.channels)
    except OSError:
        return False


def illum_plate(cfg: Config, plate: str, sites: Iterable, *, force: bool = False) -> Optional[Path]:
    """Compute and save the illumination functions of one plate.

    Streams the plate's sites through :class:`illumination.IllumAccumulator`
    (a running sum of downsampled images; never all sites in memory). Sites
    whose images cannot be read are skipped with a warning: one bad image must
    not cost the plate its illumination function. Returns the file path, or
    ``None`` when illumination correction is disabled or every site of the
    plate names CellProfiler illumination files of its own.
    """
    from . import illumination
    from .images import SiteInputError, load_site_images

    plate_sites = [s for s in sites if s.plate == plate]
    if not plate_needs_illum(cfg, plate_sites):
        return None
    path = illum_path(cfg, plate)
    if not force and illum_valid(path, cfg):
        return path
    ic = cfg.illumination
    acc = illumination.IllumAccumulator(cfg.channels, ic.downsample)
    shape = None
    skipped = []
    for site in plate_sites:
        try:
            images = load_site_images(site, cfg.channels, cfg.input.full_scale)
        except SiteInputError as exc:
            skipped.append(str(exc))
            continue
        shape = next(iter(images.values())).shape
        acc.add(images)
    if shape is None:
        raise RuntimeError(f"plate {plate}: no readable site to compute the illumination function from")
    functions = acc.functions(ic.median_filter_size, ic.robust_minimum_percentile, shape)
    attrs = {
        "plate": plate,
        "config_hash": cfg.hash(),
        "n_sites": acc.count,
        "n_skipped": len(skipped),
        "downsample": ic.downsample,
        "median_filter_size": ic.median_filter_size,
        "robust_minimum_percentile": ic.robust_minimum_percentile,
    }
    illumination.save_illum(path, functions, attrs)
    return path


def load_npy_illum(site, channels) -> dict:
    """CellProfiler illumination functions named by the manifest (``Illum<Ch>.npy``).

    Read through :func:`gallery.load_illum_npy` (local or object storage,
    ``allow_pickle=False``); a problem is a :class:`images.SiteInputError`
    naming the site and the file.
    """
    from .gallery import load_illum_npy
    from .images import SiteInputError

    try:
        return load_illum_npy(site.illum_files, channels)
    except (OSError, ValueError) as exc:
        raise SiteInputError(f"{site.key}: illumination function unreadable: {exc}") from exc


def load_illum_for(cfg: Config, plate: str, site=None):
    """Illumination functions for a plate's site (dict channel -> array), or None.

    CellProfiler's own functions named by the manifest (``site.illum_files``,
    e.g. the Gallery's ``<plate>_Illum<Ch>.npy``) take precedence over the
    ones this package computes in the illum stage.
    """
    from . import illumination

    if not cfg.illumination.enabled:
        return None
    if site is not None and site.illum_files and all(ch in site.illum_files for ch in cfg.channels):
        return load_npy_illum(site, cfg.channels)
    path = illum_path(cfg, plate)
    if not path.exists():
        raise FileNotFoundError(f"plate {plate}: illumination file {path} is missing; run the illum stage first")
    return illumination.load_illum(path)


def plate_needs_illum(cfg: Config, sites: Iterable) -> bool:
    """False when illumination is off or every site names its own functions."""
    if not cfg.illumination.enabled:
        return False
    return any(not (s.illum_files and all(ch in s.illum_files for ch in cfg.channels)) for s in sites)


def process_images(cfg: Config, images: dict, illum: Optional[dict] = None, backend=None):
    """Illumination apply -> segmentation -> features, on arrays.

    Pure with respect to files: ``images`` maps channel -> float image in
    [0, 1]; returns ``(segmentation, site_features, seconds)``.
    """
    from . import features, illumination, segmentation

    bk = backend or get_backend(cfg.device)
    seconds = {}
    t0 = time.perf_counter()
    imgs = {ch: bk.asarray(images[ch], dtype=bk.xp.float32) for ch in cfg.channels}
    if illum is not None:
        imgs = {ch: illumination.apply_illum(imgs[ch], bk.asarray(illum[ch], dtype=bk.xp.float32)) for ch in cfg.channels}
    bk.synchronize()
    seconds["illum_apply"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    seg = segmentation.segment_site(imgs, cfg.segmentation, cfg.illumination.dna_background)
    bk.synchronize()
    seconds["segmentation"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    labels = {"Nuclei": seg.nuclei, "Cells": seg.cells, "Cytoplasm": seg.cytoplasm}
    feats = features.measure_site(imgs, labels, cfg.features, cfg.channels)
    bk.synchronize()
    seconds["features"] = time.perf_counter() - t0
    return seg, feats, seconds


def extract_site(cfg: Config, site, illum: Optional[dict] = None, *, images: Optional[dict] = None,
                 force: bool = False) -> Path:
    """One site, end to end, into its site file (skipped when already valid).

    ``images`` (channel -> float image in [0, 1]) skips the read, for a caller
    that prefetched them (:func:`storage.prefetched`).

    Raises :class:`images.SiteInputError` naming the file for unreadable or
    missing images; other exceptions (e.g. a segmentation failure) propagate
    with the site named, for the task runner to record.
    """
    from .images import load_site_images

    out = site_path(cfg, site)
    if not force and sitefile.validate_site_file(out, cfg.hash()).ok:
        return out
    bk = get_backend(cfg.device)
    t0 = time.perf_counter()
    if images is None:
        images = load_site_images(site, cfg.channels, cfg.input.full_scale)
    if illum is None and cfg.illumination.enabled:
        illum = load_illum_for(cfg, site.plate, site)
    t_read = time.perf_counter() - t0
    try:
        seg, feats, seconds = process_images(cfg, images, illum, bk)
    except Exception as exc:
        raise SiteProcessingError(
            f"plate {site.plate}, well {site.well}, site {site.site}: {type(exc).__name__}: {exc}"
        ) from exc
    seconds = {"read": t_read, **seconds, **{f"features_{k}": v for k, v in getattr(feats, "seconds", {}).items()}}
    image = dict(feats.image)
    for k, v in seg.measurements.items():
        image.setdefault(k if k.startswith("Image_") else f"Image_{k}", float(v))
    t0 = time.perf_counter()
    path = sitefile.write_site_file(
        out,
        plate=site.plate,
        well=site.well,
        site=site.site,
        config_hash=cfg.hash(),
        backend=bk.name,
        objects=feats.objects,
        image=image,
        labels={
            "Nuclei": bk.to_numpy(seg.nuclei),
            "Cells": bk.to_numpy(seg.cells),
            "Cytoplasm": bk.to_numpy(seg.cytoplasm),
        },
        timings=seconds,
        attrs={"warnings": "\n".join(getattr(seg, "warnings", []) or [])},
    )
    return path
