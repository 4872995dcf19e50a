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

import json
import os
import time
from pathlib import Path
from typing import Callable, Iterable, Optional

from . import ledger, sitefile
from .backend import get_backend
from .config import Config
from .layout import Layout


class SiteProcessingError(RuntimeError):
    """A site's images were read but processing failed; the message names the site.

    The original exception is chained as ``__cause__``.
    """


def illum_path(cfg: Config, plate: str) -> Path:
    """``<out>/illum/<plate>_illum.h5`` (or ``input.illum_dir`` when set): :meth:`Layout.illum`."""
    return Layout.of(cfg).illum(plate)


def site_path(cfg: Config, site) -> Path:
    """``<out>/sites/<plate>/<row>/<plate>_<well>_s<site>.h5``: :meth:`Layout.site_of`."""
    return Layout.of(cfg).site_of(site)


def illum_inputs(plate_sites) -> tuple[str, list]:
    """The plate's image list as a digest (sha1 of the sorted channel files).

    Together with the unreadable files recorded in the function's file
    (:func:`unreadable_stamp`), it is the illumination function's input stamp:
    the function is redone when the plate gains or loses images, or when an
    image that was unreadable changed since (was fixed).
    """
    import hashlib

    files = sorted(str(f) for s in plate_sites for f in s.files.values())
    return hashlib.sha1("\n".join(files).encode()).hexdigest(), files


def unreadable_stamp(files) -> list:
    """``[path, size, mtime_ns]`` of each file (``-1, -1`` when it is missing or remote)."""
    from . import storage

    out = []
    for f in sorted(set(map(str, files))):
        size = mtime = -1
        if not storage.is_url(f):
            try:
                st = os.stat(f)
                size, mtime = st.st_size, st.st_mtime_ns
            except OSError:
                pass
        out.append([f, size, mtime])
    return out


def illum_valid(path: Path, cfg: Config, plate_sites=None) -> bool:
    """Whether ``path`` holds this config's illumination functions for every channel.

    With ``plate_sites`` the input stamp is checked too: the same image list,
    and every image that was unreadable when the function was made unchanged
    (a fixed image makes the function stale, so it is recomputed with it).
    """
    import h5py

    if not path.exists():
        return False
    try:
        with h5py.File(path, "r") as f:
            if f.attrs.get("config_hash") != cfg.hash() or not all(ch in f for ch in cfg.channels):
                return False
            if plate_sites is None:
                return True
            digest = f.attrs.get("inputs_digest")
            unreadable = json.loads(f.attrs.get("unreadable", "[]"))
    except (OSError, ValueError):
        return False
    if digest != illum_inputs(plate_sites)[0]:
        return False
    return unreadable_stamp([u[0] for u in unreadable]) == unreadable


class IllumInputError(RuntimeError):
    """Too many of a plate's images are unreadable to make its illumination function."""


def illum_plate(cfg: Config, plate: str, sites: Iterable, *, force: bool = False,
                on_unreadable: Optional[Callable] = None) -> Optional[Path]:
    """Compute and save the illumination functions of one plate.

    Streams the plate's sites through :class:`illumination.IllumAccumulator`
    (a running sum of downsampled images; never all sites in memory). A site
    whose images cannot be read is reported to ``on_unreadable(site, exc)``
    (the illum task records it in the failure table) and left out, as long as
    such sites are at most ``illumination.max_unreadable_fraction`` of the
    plate; beyond that :class:`IllumInputError` names the count and the first
    files, and nothing is written. The file records its input stamp
    (:func:`illum_inputs`, the unreadable files with size and mtime), so a
    fixed image makes :func:`illum_valid` false and the function is redone.
    It also records the functions' content digest (``function_digest``,
    :func:`hpc_profiler.ledger.function_digest`): sites extracted with another
    function are then out of date. Returns the file path, or ``None`` when
    illumination correction is disabled or every site of the plate names
    CellProfiler illumination files of its own.
    """
    from . import illumination
    from .images import SiteInputError, load_site_images

    plate_sites = [s for s in sites if s.plate == plate]
    if not plate_needs_illum(cfg, plate_sites):
        return None
    path = illum_path(cfg, plate)
    if not force and illum_valid(path, cfg, plate_sites):
        return path
    ic = cfg.illumination
    acc = illumination.IllumAccumulator(cfg.channels, ic.downsample)
    shape = None
    skipped = []
    for site in plate_sites:
        try:
            images = load_site_images(site, cfg.channels, cfg.input.full_scale)
        except SiteInputError as exc:
            skipped.append((site, exc))
            if on_unreadable is not None:
                on_unreadable(site, exc)
            continue
        shape = next(iter(images.values())).shape
        acc.add(images)
    share = len(skipped) / max(len(plate_sites), 1)
    if shape is None or share > ic.max_unreadable_fraction:
        first = "; ".join(str(e) for _, e in skipped[:3])
        raise IllumInputError(
            f"plate {plate}: {len(skipped)} of {len(plate_sites)} sites have unreadable images ({share:.0%}, "
            f"above illumination.max_unreadable_fraction {ic.max_unreadable_fraction:g}); no illumination "
            f"function written. First: {first}")
    functions = acc.functions(ic.median_filter_size, ic.robust_minimum_percentile, shape)
    bad_files = [f for site, _ in skipped for f in site.files.values()]
    attrs = {
        "plate": plate,
        "config_hash": cfg.hash(),
        "n_sites": acc.count,
        "n_skipped": len(skipped),
        "inputs_digest": illum_inputs(plate_sites)[0],
        "function_digest": ledger.function_digest(functions),
        "unreadable": json.dumps(unreadable_stamp(bad_files)),
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
    feats = features.measure_site(imgs, labels, cfg.features, cfg.channels, unfiltered=seg.unfiltered)
    bk.synchronize()
    seconds["features"] = time.perf_counter() - t0
    return seg, feats, seconds


def extract_site(cfg: Config, site, illum: Optional[dict] = None, *, images: Optional[dict] = None,
                 force: bool = False) -> Path:
    """One site, end to end, into its site file (skipped when already valid).

    ``images`` (channel -> float image in [0, 1]) skips the read, for a caller
    that prefetched them (:func:`storage.prefetched`).

    The file records the digest of the plate's illumination function it was
    made with (``illum_digest``; :data:`sitefile.ILLUM_NONE` without one of the
    illum stage's), and a file made with another function than the plate's
    current one is not valid: it is made again.

    Raises :class:`images.SiteInputError` naming the file for unreadable or
    missing images; other exceptions (e.g. a segmentation failure) propagate
    with the site named, for the task runner to record.
    """
    from .images import load_site_images

    out = site_path(cfg, site)
    plate_fn = cfg.illumination.enabled and not site.has_own_illum(cfg.channels)  # the illum stage's function
    if not force:
        expected = None
        if plate_fn:
            expected = (ledger.function_digest(illum, memo=True) if illum is not None
                        else ledger.plate_illum_digest(cfg, site.plate))
        if sitefile.validate_site_file(out, cfg.hash(), expected).ok:
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
        attrs={"warnings": "\n".join(getattr(seg, "warnings", []) or []),
               "illum_digest": (ledger.function_digest(illum, memo=True) if plate_fn and illum is not None
                                else sitefile.ILLUM_NONE)},
    )
    return path
