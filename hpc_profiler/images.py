"""Reading the channel images of one site.

Reproduces what CellProfiler's ``NamesAndTypes``/``LoadData`` do for the
CPJUMP1 pipeline: each channel is a single-plane 16-bit TIFF, read as a
grayscale image and rescaled to ``[0, 1]`` by dividing by the full scale
(65535 for 16-bit, CellProfiler's "Set intensity range from: Image bit-depth").

Where it deliberately differs: every problem of a site (a missing channel, an
unreadable or corrupt TIFF, a multi-plane file, channels of different shapes or
dtypes) is collected and raised as one :class:`SiteInputError` naming the
plate, well, site and the offending file(s), so that a batch run can skip and
report the site instead of failing somewhere inside segmentation.

All file access goes through :func:`open_binary`, the one place that will route
remote URLs through fsspec.
"""
from __future__ import annotations

import io
from typing import IO, Mapping, Sequence

import numpy as np


class SiteInputError(Exception):
    """A site's images cannot be used; the message names the site and file(s)."""


class ImageReadError(SiteInputError):
    """One image file cannot be read as a 2-D image; the message names the file."""


def open_binary(path) -> IO[bytes]:
    """Open a local path or a URL (``s3://...``) for binary reading.

    Everything goes through :func:`storage.read_bytes` (fsspec, bounded retries
    with backoff for transient errors), so images on a local disk, a shared
    file system or object storage are read by the same code.

    Raises
    ------
    ImageReadError
        The file or object does not exist or cannot be read; the message names it.
    """
    from . import storage

    try:
        return io.BytesIO(storage.read_bytes(path))
    except storage.MissingObjectError as exc:
        raise ImageReadError(f"{path}: cannot open image: no such file or object") from exc
    except OSError as exc:
        raise ImageReadError(f"{path}: cannot open image: {exc}") from exc


def read_tiff(path) -> np.ndarray:
    """Read one single-plane TIFF with tifffile.

    Parameters
    ----------
    path : path or str

    Returns
    -------
    numpy.ndarray
        The 2-D image in its stored dtype (uint16 for CPJUMP1).

    Raises
    ------
    ImageReadError
        Missing, unreadable, corrupt or not 2-D; the message names the file.
    """
    import tifffile

    with open_binary(path) as fh:
        try:
            img = tifffile.imread(fh)
        except Exception as exc:  # tifffile raises many types on corrupt input
            raise ImageReadError(f"{path}: not a readable TIFF ({type(exc).__name__}: {exc})") from exc
    img = np.asarray(img)
    if img.ndim == 3 and img.shape[0] == 1:
        img = img[0]
    if img.ndim != 2:
        raise ImageReadError(f"{path}: expected a 2-D single-plane image, got shape {img.shape}")
    return img


def load_site_images(site, channels: Sequence[str], full_scale: float = 65535.0) -> dict[str, np.ndarray]:
    """Read every channel of a site and rescale it to ``[0, 1]``.

    Parameters
    ----------
    site : hpc_profiler.manifest.Site
    channels : list of str
        Channels to read, in order.
    full_scale : float
        Intensity that maps to 1.0 (65535 for 16-bit images, as CellProfiler).

    Returns
    -------
    dict
        Channel -> float32 image ``raw / full_scale`` (:func:`scale_to_unit`).

    Raises
    ------
    SiteInputError
        Naming ``plate/well/site`` and every offending file: a channel without
        a file, unreadable/corrupt files, shapes or dtypes that differ.
    """
    if full_scale <= 0:
        raise ValueError(f"full_scale must be positive, got {full_scale}")
    raw, problems = _read_channels(site.files, channels)
    if not problems:
        problems = _consistency_problems(raw, site.files)
    if problems:
        raise SiteInputError(f"site {site.key}: " + "; ".join(problems))
    return {ch: scale_to_unit(raw[ch], full_scale) for ch in channels}


def scale_to_unit(raw: np.ndarray, full_scale: float = 65535.0) -> np.ndarray:
    """``float32(raw / full_scale)``: the quotient in float64, rounded once to float32.

    CellProfiler 5 rescales an integer image with
    ``rescale_intensity(data, in_range="dtype", out_range="float64").astype("float32")``,
    i.e. divides by 65535 in float64 and rounds to float32; so does this (a
    multiplication by ``float32(1 / 65535)`` is up to one float32 step off,
    which flips thresholds such as MeasureColocalization's 15 % of the maximum).
    """
    return (np.asarray(raw, dtype=np.float64) / float(full_scale)).astype(np.float32)


def _read_channels(files: Mapping[str, str], channels: Sequence[str]):
    """Read what can be read; return (images, problem messages)."""
    raw, problems = {}, []
    for ch in channels:
        path = files.get(ch)
        if not path:
            problems.append(f"no image file for channel {ch}")
            continue
        try:
            raw[ch] = read_tiff(path)
        except ImageReadError as exc:
            problems.append(f"channel {ch}: {exc}")
    return raw, problems


def _consistency_problems(raw: Mapping[str, np.ndarray], files: Mapping[str, str]) -> list[str]:
    """Messages for channels whose shape or dtype differs from the first channel."""
    if not raw:
        return []
    first = next(iter(raw))
    ref = raw[first]
    problems = []
    for ch, img in raw.items():
        if img.shape != ref.shape:
            problems.append(
                f"channel {ch} ({files[ch]}) has shape {img.shape}, channel {first} ({files[first]}) has {ref.shape}"
            )
        elif img.dtype != ref.dtype:
            problems.append(
                f"channel {ch} ({files[ch]}) has dtype {img.dtype}, channel {first} ({files[first]}) has {ref.dtype}"
            )
    return problems
