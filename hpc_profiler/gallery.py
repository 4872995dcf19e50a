"""Screens in the Cell Painting Gallery layout, local or on object storage.

The Gallery (e.g. ``s3://cellpainting-gallery/cpg0000-jump-pilot/source_4``)
lays a batch out as::

    images/<batch>/images/<plate folder>/Images/<tiff>       raw images
    images/<batch>/illum/<plate>/<plate>_Illum<Ch>.npy        CellProfiler illumination functions
    workspace/load_data_csv/<batch>/<plate>/load_data.csv    LoadData CSVs
    workspace/load_data_csv/<batch>/<plate>/load_data_with_illum.csv
    (either CSV may be gzipped: ``.csv.gz``)

The LoadData CSVs name the images by ``FileName_Orig<Ch>`` plus either
``URL_Orig<Ch>`` (some batches) or a ``PathName_Orig<Ch>`` of the machine
that once processed them (``/home/ubuntu/bucket/projects/.../<batch>/images/
<plate folder>/Images``). :func:`rebase_path` moves such a path under the
configured root by the part that follows ``<batch>/images/``, so the same CSV
works from a local copy, a shared file system or ``s3://``.

:func:`gallery_manifest` writes one plain LoadData CSV per plate (absolute
paths or URLs) under ``<out>/manifest/`` and reads it with
:func:`manifest.manifest_from_loaddata`: one LoadData reader for every source.
:func:`load_illum_npy` reads a plate's CellProfiler illumination functions
(the ``.npy`` files named by :attr:`manifest.Site.illum_files`) with
``numpy.load(allow_pickle=False)``, for :func:`illumination.apply_illum`.
"""
from __future__ import annotations

import io
import posixpath
from pathlib import Path
from typing import Optional, Sequence

from . import storage
from .layout import Layout


def join(root: str, *parts: str) -> str:
    """Join a local path or URL with ``/`` separators."""
    root = str(root).rstrip("/")
    return "/".join([root, *[p.strip("/") for p in parts if p]])


def load_data_csv_url(root: str, batch: str, plate: str, with_illum: bool) -> str:
    name = "load_data_with_illum.csv" if with_illum else "load_data.csv"
    return join(root, "workspace", "load_data_csv", batch, plate, name)


def loaddata_candidates(root: str, batch: str, plate: str, with_illum: bool) -> list[str]:
    """LoadData CSV URLs to try, in order: with illumination columns first when
    wanted, each as ``.csv`` then ``.csv.gz`` (some Gallery batches are gzipped)."""
    plain = load_data_csv_url(root, batch, plate, False)
    urls = [load_data_csv_url(root, batch, plate, True)] if with_illum else []
    urls.append(plain)
    return [u for url in urls for u in (url, url + ".gz")]


def _first_existing(urls: Sequence[str]) -> str:
    """The first of ``urls`` that exists, else the last one of plain ``.csv`` (so
    that the error names the file one would expect)."""
    for url in urls:
        if storage.exists(url):
            return url
    plain = [u for u in urls if not u.endswith(".gz")]
    return plain[-1] if plain else urls[-1]


def illum_url(root: str, batch: str, plate: str, channel: str) -> str:
    return join(root, "images", batch, "illum", plate, f"{plate}_Illum{channel}.npy")


def rebase_path(path_name: str, root: str, batch: str, plate: str) -> str:
    """Where a LoadData ``PathName`` of the Gallery lives under ``root``.

    ``/home/ubuntu/bucket/projects/P/<batch>/images/<plate dir>/Images`` ->
    ``<root>/images/<batch>/images/<plate dir>/Images``. A path without the
    ``<batch>/images/`` part is taken as relative to the batch's image folder.
    """
    p = str(path_name).replace("\\", "/")
    marker = f"/{batch}/images/"
    i = p.find(marker)
    if i >= 0:
        tail = p[i + len(marker):]
    elif p.startswith(f"{batch}/images/"):
        tail = p[len(batch) + len("/images/"):]
    else:
        tail = p.lstrip("/") or plate
    return join(root, "images", batch, "images", posixpath.normpath(tail))


def list_plates(root: str, batch: str) -> list[str]:
    """Plates of a batch: the folders under ``workspace/load_data_csv/<batch>/``."""
    base = join(root, "workspace", "load_data_csv", batch)
    fs = storage.filesystem(base)
    try:
        entries = fs.ls(base, detail=True)
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"{base}: no LoadData folder for batch {batch!r}") from exc
    return sorted(posixpath.basename(e["name"].rstrip("/")) for e in entries if e.get("type") == "directory")


def plate_loaddata(root: str, batch: str, plate: str, channels: Sequence[str], use_illum: bool):
    """The plate's LoadData table with image (and illumination) locations under ``root``."""
    import pandas as pd

    url = _first_existing(loaddata_candidates(root, batch, plate, use_illum))
    df = pd.read_csv(
        io.BytesIO(storage.read_bytes(url)),
        dtype=str,
        keep_default_na=False,
        compression="gzip" if url.endswith(".gz") else None,
    )
    if "Metadata_Plate" not in df.columns:
        df["Metadata_Plate"] = plate
    for ch in channels:
        f_col, p_col, u_col = f"FileName_Orig{ch}", f"PathName_Orig{ch}", f"URL_Orig{ch}"
        if f_col not in df.columns:
            raise ValueError(f"{url}: column {f_col} missing")
        if u_col in df.columns and df[u_col].str.len().gt(0).all():
            urls = df[u_col]
            # a URL of the public bucket is re-rooted the same way as a path
            df[p_col] = [rebase_path(posixpath.dirname(u.split("://", 1)[-1]), root, batch, plate) for u in urls]
        elif p_col in df.columns:
            df[p_col] = [rebase_path(p, root, batch, plate) for p in df[p_col]]
        else:
            raise ValueError(f"{url}: neither {p_col} nor {u_col} present")
        if use_illum:
            df[f"FileName_Illum{ch}"] = f"{plate}_Illum{ch}.npy"
            df[f"PathName_Illum{ch}"] = posixpath.dirname(illum_url(root, batch, plate, ch))
    return df, url


def gallery_manifest(cfg, out_dir: Optional[Path] = None):
    """Sites of the configured Gallery batch (``cfg.input.gallery``), sorted.

    Returns ``(sites, problems)`` like :func:`hpc_profiler.sources.build_manifest`; a plate
    whose LoadData CSV cannot be read is a problem naming its URL.
    """
    from .manifest import SiteProblem, manifest_from_loaddata, sort_sites

    g = cfg.input.gallery
    configure_storage(cfg)
    root = str(cfg.path(g.root)) if not storage.is_url(g.root) else g.root
    plates = list(g.plates) or list_plates(root, g.batch)
    out_dir = Path(out_dir or Layout.of(cfg).gallery_manifest_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sites, problems = [], []
    for plate in plates:
        try:
            df, url = plate_loaddata(root, g.batch, plate, cfg.channels, g.use_illum)
        except (OSError, ValueError) as exc:
            problems.append(SiteProblem(plate, "", 0, f"LoadData CSV unreadable: {exc}"))
            continue
        local = out_dir / f"gallery_{plate}.csv"
        df.to_csv(local, index=False)
        sites.extend(manifest_from_loaddata(local, cfg.channels))
    return sort_sites(sites), problems


def configure_storage(cfg) -> storage.StorageOptions:
    """Register the config's storage options (anonymous, endpoint, retries, cache)."""
    g = cfg.input.gallery
    return storage.configure(
        storage.StorageOptions(
            anonymous=bool(g.anonymous) if g else False,
            endpoint_url=g.endpoint_url if g else None,
            retries=cfg.input.retries,
            backoff_s=cfg.input.retry_backoff_s,
            cache_dir=str(cfg.path(cfg.input.cache_dir)) if cfg.input.cache_dir else None,
        )
    )


def read_npy(url):
    """One ``.npy`` array (a CellProfiler illumination function) from a path or URL.

    Read through :func:`storage.read_bytes` and parsed with
    ``numpy.load(allow_pickle=False)``: a file from a bucket stays data.

    Raises
    ------
    storage.MissingObjectError
        No such file/object (names ``url``).
    ValueError
        Not a plain numeric ``.npy`` array (names ``url``).
    """
    import numpy as np

    data = storage.read_bytes(url)
    try:
        arr = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise ValueError(f"{url}: not a readable .npy array ({type(exc).__name__}: {exc})") from exc
    if not isinstance(arr, np.ndarray) or arr.dtype.kind not in "fiu":
        raise ValueError(f"{url}: expected a numeric array, got {type(arr).__name__} {getattr(arr, 'dtype', '')}")
    return arr


def load_illum_npy(illum_files, channels: Sequence[str]) -> dict:
    """The plate's CellProfiler illumination functions: channel -> float32 array.

    Parameters
    ----------
    illum_files : dict
        Channel -> ``<plate>_Illum<Ch>.npy`` path or URL, as in
        :attr:`manifest.Site.illum_files` of a Gallery manifest.
    channels : list of str

    Returns
    -------
    dict
        Channel -> 2-D float32 array, ready for
        :func:`illumination.apply_illum` (CorrectIlluminationApply "Divide").

    Raises
    ------
    ValueError
        A channel without a file, or a file that is not a 2-D numeric array;
        the message names the channel and the URL.
    storage.MissingObjectError, storage.StorageError
        The file cannot be read (names the URL).
    """
    import numpy as np

    out = {}
    for ch in channels:
        url = (illum_files or {}).get(ch)
        if not url:
            raise ValueError(f"no illumination function for channel {ch}")
        arr = read_npy(url)
        if arr.ndim != 2:
            raise ValueError(f"{url}: illumination function of channel {ch} has shape {arr.shape}, expected 2-D")
        out[ch] = arr.astype(np.float32)
    return out
