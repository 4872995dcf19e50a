"""One HDF5 file per site, written atomically, validated before it is trusted.

Layout (h5py)::

    /                       attrs: plate, well, site, config_hash, version, backend,
                                   created, seconds_<stage>..., illum_digest (the plate's
                                   illumination function it was made with, see
                                   hpc_profiler.ledger), complete (written last)
    /objects/<Object>/features        float32 [n_objects, n_features] (float64 when the table's dtype is)
    /objects/<Object>/feature_names   str [n_features]  (e.g. Cells_Intensity_MeanIntensity_DNA)
    /objects/<Object>/object_number   int32 [n_objects]
    /objects/<Object>/parent_<Other>  int32 [n_objects]  (parent links, CellProfiler Parent_*)
    /image/names, /image/values       str [m], float64 [m]  (Image_Count_Cells, thresholds, QC)
    /labels/<Object>                  int32 [H, W], gzip-compressed

The file is written under a temporary name in the destination folder and
renamed into place with :func:`os.replace`, which is atomic on POSIX file
systems: a reader sees either no file or a whole one. Two writers racing on the
same site each write their own temporary file, and the last rename wins; both
candidates are complete, so the survivor is valid. A site with zero objects is
a valid file with zero rows.

Files live in ``<out>/sites/<plate>/<row>/`` (:func:`site_file_path`, one
folder per plate and well row). :func:`validate_site_file` is the deep check:
the file opens, its ``complete`` flag is set and its config hash matches.
Resume and status trust the completion ledger instead
(:mod:`hpc_profiler.ledger`) and run the deep check only on files without a
record, or on every file with ``--verify``. A plate's sites may be packed into
``<out>/packed/<plate>.h5``, one group per site with the layout above; such a
site is named ``<packed file>::<group>`` and :func:`open_site`,
:func:`validate_site_file` and :func:`read_site_file` take either name.
"""
from __future__ import annotations

import re
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Optional

import h5py
import numpy as np

from ._atomic import atomic_path
from ._version import __version__

STR = h5py.string_dtype("utf-8")


#: Feature precisions a site file can hold (float32 unless asked otherwise).
SITE_DTYPES = ("float32", "float64")


@dataclass
class ObjectTable:
    """Per-object measurements of one object set (Nuclei, Cells or Cytoplasm).

    ``dtype`` is the precision the values are kept and written in: float32 by
    default (the extract stage), float64 for bit-level comparisons (the
    CellProfiler import's ``cellprofiler.site_dtype``).
    """

    names: list[str]
    values: np.ndarray  # float32 [n, F] (or float64, see dtype)
    object_number: np.ndarray  # int32 [n]
    parents: dict[str, np.ndarray] = field(default_factory=dict)
    dtype: str = "float32"

    def __post_init__(self):
        if self.dtype not in SITE_DTYPES:
            raise ValueError(f"ObjectTable dtype must be one of {SITE_DTYPES}, got {self.dtype!r}")
        self.values = np.asarray(self.values, dtype=self.dtype).reshape(len(self.object_number), len(self.names))
        self.object_number = np.asarray(self.object_number, dtype=np.int32)


@dataclass
class SiteData:
    """What a site file holds, read back."""

    attrs: dict
    objects: dict[str, ObjectTable]
    image: dict[str, float]
    labels: dict[str, np.ndarray]


@dataclass
class SiteFileStatus:
    ok: bool
    reason: str = ""
    illum_digest: Optional[str] = None  # the file's ``illum_digest`` attribute (None: the file has none)


def site_file_name(plate: str, well: str, site) -> str:
    return f"{plate}_{well}_s{site}.h5"


def well_row(well: str) -> str:
    """The folder of a well's sites: its row letters (``"B03" -> "B"``, ``"AF12" -> "AF"``).

    A well name without leading letters (a source with numeric wells) is
    grouped by its first character, so no folder grows past a plate row's
    worth of sites (24 wells x 9 sites for a 384-well plate).
    """
    w = str(well)
    m = _ROW.match(w)
    return m.group(0).upper() if m else (w[:1] or "_")


_ROW = re.compile(r"[A-Za-z]+")


def site_file_path(root, plate: str, well: str, site) -> Path:
    """``root/sites/<plate>/<row>/<plate>_<well>_s<site>.h5`` (row: :func:`well_row`).

    Grouping by plate and well row keeps every folder to a few hundred files
    (a CPJUMP1 plate is 16 rows x 24 wells x 9 sites), which parallel file
    systems list and stat far better than one folder of a plate's 3,456 files.
    """
    return Path(root) / "sites" / str(plate) / well_row(well) / site_file_name(plate, well, site)


def packed_path(root, plate: str) -> Path:
    """``root/packed/<plate>.h5``: a plate's finished sites packed into one file (:mod:`hpc_profiler.ledger`)."""
    return Path(root) / "packed" / f"{plate}.h5"


def pack_group(well, site) -> str:
    """Group of a site in its plate's packed file: ``<well>_s<site>``."""
    return f"{well}_s{site}"


#: A packed site is named ``<packed file>::<group>``; loose site files by their path.
PACK_SEP = "::"


def site_ref(pack, group: str) -> str:
    """The name of a site packed in ``pack`` as ``group`` (what :func:`open_site` opens)."""
    return f"{pack}{PACK_SEP}{group}"


def split_ref(ref) -> tuple[Path, Optional[str]]:
    """``(file, group)`` of a site name: group ``None`` for a loose site file."""
    s = str(ref)
    if PACK_SEP in s:
        file, group = s.rsplit(PACK_SEP, 1)
        return Path(file), group
    return Path(s), None


@contextmanager
def open_site(ref):
    """Open a site for reading: the h5py root of a loose file, or its group in a packed file.

    Raises ``OSError`` for an unreadable file and ``KeyError`` when a packed
    file has no such group.
    """
    file, group = split_ref(ref)
    with h5py.File(file, "r") as f:
        yield f if group is None else f[group]


def write_site_file(
    path,
    *,
    plate: str,
    well: str,
    site,
    config_hash: str,
    backend: str,
    objects: Mapping[str, ObjectTable],
    image: Mapping[str, float],
    labels: Optional[Mapping[str, np.ndarray]] = None,
    timings: Optional[Mapping[str, float]] = None,
    attrs: Optional[Mapping[str, object]] = None,
) -> Path:
    """Write a site file atomically and return its path."""
    path = Path(path)
    with atomic_path(path, suffix=".h5") as tmp, h5py.File(tmp, "w") as f:
        f.attrs.update(
            {
                "plate": str(plate),
                "well": str(well),
                "site": str(site),
                "config_hash": str(config_hash),
                "version": __version__,
                "backend": str(backend),
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "complete": False,
            }
        )
        for k, v in (attrs or {}).items():
            f.attrs[k] = v
        for stage, sec in (timings or {}).items():
            f.attrs[f"seconds_{stage}"] = float(sec)
        og = f.create_group("objects")
        for obj, table in objects.items():
            g = og.create_group(obj)
            compress = {"compression": "gzip", "compression_opts": 1, "shuffle": True} if table.values.size else {}
            g.create_dataset("features", data=table.values, dtype=np.dtype(table.dtype), **compress)
            g.create_dataset("feature_names", data=np.array(table.names, dtype=object), dtype=STR)
            g.create_dataset("object_number", data=table.object_number, dtype="i4")
            for other, par in table.parents.items():
                g.create_dataset(f"parent_{other}", data=np.asarray(par, dtype=np.int32), dtype="i4")
        ig = f.create_group("image")
        names = list(image)
        ig.create_dataset("names", data=np.array(names, dtype=object), dtype=STR)
        ig.create_dataset("values", data=np.array([float(image[n]) for n in names], dtype=np.float64))
        lg = f.create_group("labels")
        for obj, lab in (labels or {}).items():
            lab = np.asarray(lab, dtype=np.int32)
            lg.create_dataset(obj, data=lab, compression="gzip", compression_opts=4, shuffle=True)
        f.flush()
        f.attrs["complete"] = True
    return path


#: ``illum_digest`` of a site made without an illumination function of the illum stage
#: (illumination off, or CellProfiler's own functions named by the manifest)
ILLUM_NONE = "-"


def illum_matches(found: Optional[str], expected: Optional[str]) -> bool:
    """Whether a site made with illumination function ``found`` (its ``illum_digest``) is
    current when its plate's function is now ``expected``.

    ``expected`` None: nothing to compare (illumination off, or the plate has no
    function file). ``found`` None or :data:`ILLUM_NONE`: the site used no function
    of the illum stage (CellProfiler's own, an import) or predates the digest.
    """
    return expected is None or found is None or found == ILLUM_NONE or found == expected


def validate_site_file(path, config_hash: Optional[str] = None, illum_digest: Optional[str] = None) -> SiteFileStatus:
    """Whether ``path`` is a finished site file (for the given config hash and,
    given ``illum_digest``, made with that illumination function: :func:`illum_matches`).

    ``path`` may also name a packed site (``<packed file>::<group>``).
    """
    file, group = split_ref(path)
    if not file.exists():
        return SiteFileStatus(False, "missing")
    try:
        with open_site(path) as f:
            if not bool(f.attrs.get("complete", False)):
                return SiteFileStatus(False, "incomplete (complete flag not set)")
            if config_hash is not None and f.attrs.get("config_hash") != config_hash:
                return SiteFileStatus(False, f"stale (config hash {f.attrs.get('config_hash')} != {config_hash})")
            if "objects" not in f or "image" not in f:
                return SiteFileStatus(False, "incomplete (groups missing)")
            found = f.attrs.get("illum_digest")
            found = None if found is None else str(found)
            if not illum_matches(found, illum_digest):
                return SiteFileStatus(False, f"stale (made with illumination function {found}, the plate's is "
                                             f"now {illum_digest})", found)
    except KeyError as exc:
        return SiteFileStatus(False, f"missing from the packed file ({exc})" if group else f"unreadable ({exc})")
    except OSError as exc:
        return SiteFileStatus(False, f"unreadable ({exc})")
    return SiteFileStatus(True, "ok", found)


def _decode(a) -> list[str]:
    return [x.decode() if isinstance(x, bytes) else str(x) for x in a]


def read_site_file(path, *, labels: bool = False, objects: Optional[list[str]] = None) -> SiteData:
    """Read a site file (or packed site); raises ``OSError`` naming the file when it is not valid."""
    path = str(path)
    try:
        with open_site(path) as f:
            if not bool(f.attrs.get("complete", False)):
                raise OSError(f"{path}: site file is incomplete (complete flag not set)")
            attrs = {k: (v.item() if hasattr(v, "item") else v) for k, v in f.attrs.items()}
            objs = {}
            for obj in f["objects"]:
                if objects is not None and obj not in objects:
                    continue
                g = f["objects"][obj]
                parents = {k[len("parent_"):]: g[k][()] for k in g if k.startswith("parent_")}
                objs[obj] = ObjectTable(
                    names=_decode(g["feature_names"][()]),
                    values=g["features"][()],
                    object_number=g["object_number"][()],
                    parents=parents,
                    dtype="float64" if g["features"].dtype == np.float64 else "float32",
                )
            image = dict(zip(_decode(f["image/names"][()]), f["image/values"][()].tolist()))
            labs = {k: f["labels"][k][()] for k in f["labels"]} if labels and "labels" in f else {}
    except OSError as exc:
        if str(path) in str(exc):
            raise
        raise OSError(f"{path}: unreadable site file ({exc})") from exc
    except KeyError as exc:
        raise OSError(f"{path}: malformed site file (missing {exc})") from exc
    return SiteData(attrs=attrs, objects=objs, image=image, labels=labs)


def read_cells_matrix(path, objects=("Cells", "Cytoplasm", "Nuclei")):
    """Single-cell matrix of a site: ``(names, values float64 [cells, features], object_number)``.

    Nuclei, Cells and Cytoplasm share object numbers (labels 1..N); the
    compartments are joined on the object number (outer join, missing values
    NaN), in the order of ``objects``. The array form of
    :func:`read_cells_table`, for readers that need no DataFrame (the reduce
    stage reads every site this way).
    """
    data = read_site_file(path, objects=list(objects))
    present = [o for o in objects if o in data.objects]
    if present:
        numbers = np.unique(np.concatenate([data.objects[o].object_number for o in present]))
    else:
        numbers = np.empty(0, dtype=np.int32)
    names: list[str] = []
    blocks = []
    for o in present:
        t = data.objects[o]
        block = np.full((len(numbers), len(t.names)), np.nan)
        block[np.searchsorted(numbers, t.object_number)] = t.values
        names += t.names
        blocks.append(block)
    values = np.hstack(blocks) if blocks else np.empty((0, 0))
    return names, values, numbers.astype(np.int32), data.attrs


def read_cells_table(path, objects=("Cells", "Cytoplasm", "Nuclei")):
    """Single-cell table of a site: one row per cell, compartments side by side.

    Nuclei, Cells and Cytoplasm share object numbers (labels 1..N), so the
    compartments are joined on ``ObjectNumber``. ``Metadata_Plate``,
    ``Metadata_Well`` and ``Metadata_Site`` come first, as in pycytominer.
    """
    import pandas as pd

    names, values, numbers, attrs = read_cells_matrix(path, objects)
    df = pd.DataFrame(values, columns=names)
    df.insert(0, "ObjectNumber", numbers)
    df.insert(0, "Metadata_Site", str(attrs["site"]))
    df.insert(0, "Metadata_Well", str(attrs["well"]))
    df.insert(0, "Metadata_Plate", str(attrs["plate"]))
    return df
