"""Which sites to process: the manifest.

A manifest is a sorted list of :class:`Site` records, one per field of view,
each naming the TIFF file of every channel (and optionally the illumination
function of every channel). It is built from one of the image sources of the
configuration:

* a CellProfiler **LoadData** CSV (the format of CellProfiler's ``LoadData``
  module and of the Cell Painting Gallery ``load_data_csv`` files):
  ``FileName_Orig<Ch>``, ``PathName_Orig<Ch>``, ``Metadata_Plate``,
  ``Metadata_Well``, ``Metadata_Site`` and optionally ``FileName_Illum<Ch>`` /
  ``PathName_Illum<Ch>``;
* an **Opera Phenix** export folder with files named
  ``rXXcXXfXXp01-chXsk1fk1fl1.tiff`` (row, column, field, plane, channel), the
  naming of the CPJUMP1 raw images.

Deliberate differences from CellProfiler's LoadData: only the columns above are
read (other ``Metadata_*`` columns belong to the per-well metadata table),
relative ``PathName`` values are resolved against the CSV's folder (CellProfiler
resolves them against its default input folder), and the result is sorted by
(plate, well, site) so that site indices are stable across runs and ranks.

A manifest is saved as Parquet (:func:`save_manifest`, atomically) so that a
Slurm task or an MPI rank can load only its slice of sites (:func:`load_manifest`).
Which source a config names, and the Gallery source, live in
:mod:`hpc_profiler.sources`, which imports this module (never the other way).
"""
from __future__ import annotations

import csv
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Optional, Sequence

from ._atomic import atomic_path

ROWS = "ABCDEFGHIJKLMNOP"
#: Opera Phenix file name: row, column, field, plane, channel.
PHENIX_RE = re.compile(
    r"^r(?P<row>\d{2})c(?P<col>\d{2})f(?P<field>\d{2})p(?P<plane>\d{2})-ch(?P<ch>\d+)sk\d+fk\d+fl\d+\.tiff?$",
    re.IGNORECASE,
)


class ManifestError(ValueError):
    """The image source cannot be turned into a manifest (names the file/column)."""


@dataclass(frozen=True)
class Site:
    """One field of view.

    Attributes
    ----------
    plate, well : str
        Plate name and well (``"A01"``).
    site : int
        Field number (1-based, as in CellProfiler's ``Metadata_Site``).
    files : dict
        Channel name -> image path (or URL).
    illum_files : dict or None
        Channel name -> illumination function path, when the source gives one.
    """

    plate: str
    well: str
    site: int
    files: dict[str, str]
    illum_files: Optional[dict[str, str]] = None

    def __hash__(self) -> int:  # files are a dict: hash by identity of the site
        return hash((self.plate, self.well, self.site))

    @property
    def key(self) -> str:
        """``"plate/well/site"``, the identifier used in logs and errors."""
        return f"{self.plate}/{self.well}/{self.site}"

    def sort_key(self):
        return (self.plate, self.well, self.site)

    def has_own_illum(self, channels) -> bool:
        """Whether the source names an illumination function for each of ``channels``
        (CellProfiler's own, used instead of the plate's function of the illum stage)."""
        return bool(self.illum_files) and all(ch in self.illum_files for ch in channels)


@dataclass(frozen=True)
class SiteProblem:
    """A site that is listed but cannot be processed as is (e.g. a missing file)."""

    plate: str
    well: str
    site: int
    message: str

    def __str__(self) -> str:
        return f"{self.plate}/{self.well}/{self.site}: {self.message}"


def well_from_row_col(row: int, col: int) -> str:
    """Well name from 1-based row and column: ``(1, 1) -> "A01"``, ``(16, 24) -> "P24"``."""
    if not 1 <= int(row) <= len(ROWS):
        raise ValueError(f"row {row} outside 1..{len(ROWS)}")
    if not 1 <= int(col) <= 99:
        raise ValueError(f"column {col} outside 1..99")
    return f"{ROWS[int(row) - 1]}{int(col):02d}"


def row_col_from_well(well: str) -> tuple[int, int]:
    """Inverse of :func:`well_from_row_col`: ``"B03" -> (2, 3)``."""
    m = re.fullmatch(r"([A-Pa-p])(\d{1,2})", str(well).strip())
    if m is None:
        raise ValueError(f"not a well name: {well!r}")
    return ROWS.index(m.group(1).upper()) + 1, int(m.group(2))


def normalize_well(well: str) -> str:
    """``"a1"`` / ``"A1"`` / ``"A01"`` -> ``"A01"``."""
    return well_from_row_col(*row_col_from_well(well))


def sort_sites(sites: Iterable[Site]) -> list[Site]:
    """Sites sorted by (plate, well, site): the deterministic manifest order."""
    return sorted(sites, key=Site.sort_key)


# ------------------------------------------------------------------ LoadData CSV
def _join(folder: str, name: str, base: Path, folders: Optional[dict] = None) -> str:
    """``PathName`` + ``FileName``; relative folders are taken from ``base``.

    ``folders`` caches each folder's resolved form (a CSV names a few folders
    for hundreds of thousands of files); a plain file name is then appended
    as text, the same string ``str(folder / name)`` gives.
    """
    if "://" in folder:
        return folder.rstrip("/") + "/" + name
    p = folders.get(folder) if folders is not None else None
    if p is None:
        p = Path(os.path.expanduser(folder)) if folder else Path()
        if not p.is_absolute():
            p = base / p
        if folders is not None:
            folders[folder] = p
    if name and "/" not in name and name not in (".", ".."):
        d = str(p)
        return d + name if d.endswith("/") else d + "/" + name
    return str(p / name)


def manifest_from_loaddata(csv_path, channels: Sequence[str]) -> list[Site]:
    """Sites of a CellProfiler LoadData CSV.

    Parameters
    ----------
    csv_path : path
        The CSV. Relative ``PathName_*`` values are resolved against its folder.
    channels : list of str
        Channel names; columns ``FileName_Orig<Ch>`` and ``PathName_Orig<Ch>``
        must exist for each. ``FileName_Illum<Ch>``/``PathName_Illum<Ch>`` are
        read into :attr:`Site.illum_files` when present for every channel.

    Returns
    -------
    list of Site
        Sorted by (plate, well, site).

    Raises
    ------
    ManifestError
        Missing file or column, a bad well or site value, a duplicated site;
        the message names the CSV, the column and the line.
    """
    csv_path = Path(csv_path)
    base = csv_path.resolve().parent
    try:
        fh = open(csv_path, newline="")
    except OSError as exc:
        raise ManifestError(f"{csv_path}: cannot read LoadData CSV: {exc.strerror or exc}") from exc
    with fh:
        reader = csv.reader(fh)
        header = next(reader, None) or []
        required = ["Metadata_Plate", "Metadata_Well", "Metadata_Site"]
        for ch in channels:
            required += [f"FileName_Orig{ch}", f"PathName_Orig{ch}"]
        missing = [c for c in required if c not in header]
        if missing:
            raise ManifestError(f"{csv_path}: LoadData CSV lacks column(s) {missing}")
        illum_cols = [(f"FileName_Illum{ch}", f"PathName_Illum{ch}") for ch in channels]
        has_illum = all(f in header and p in header for f, p in illum_cols)
        col = {name: i for i, name in enumerate(header)}  # a repeated name: its last column, as csv.DictReader
        i_plate, i_well, i_site = col["Metadata_Plate"], col["Metadata_Well"], col["Metadata_Site"]
        i_files = [(ch, col[f"FileName_Orig{ch}"], col[f"PathName_Orig{ch}"]) for ch in channels]
        i_illum = [(ch, col[f], col[p]) for ch, (f, p) in zip(channels, illum_cols)] if has_illum else []
        width = len(header)
        folders: dict = {}
        wells: dict = {}  # the well names as written -> normalized (384 of them, not one parse per site)
        sites, seen = [], {}
        for line, row in enumerate(reader, start=2):
            if not row:  # a blank line (csv.DictReader skips them too)
                continue
            if len(row) < width:  # a short row: the missing fields are empty (as csv.DictReader reads them)
                row = row + [""] * (width - len(row))
            plate = row[i_plate].strip()
            if not plate:
                raise ManifestError(f"{csv_path}: line {line}: empty Metadata_Plate")
            well = wells.get(row[i_well])
            if well is None:
                try:
                    well = wells[row[i_well]] = normalize_well(row[i_well])
                except ValueError as exc:
                    raise ManifestError(f"{csv_path}: line {line}: Metadata_Well: {exc}") from None
            try:
                site = int(row[i_site].strip())
            except ValueError:
                raise ManifestError(f"{csv_path}: line {line}: Metadata_Site is not an integer: "
                                    f"{row[i_site]!r}") from None
            files = {}
            for ch, i_f, i_p in i_files:
                name = row[i_f].strip()
                if not name:
                    raise ManifestError(f"{csv_path}: line {line}: empty FileName_Orig{ch} for site "
                                        f"{plate}/{well}/{site}")
                files[ch] = _join(row[i_p].strip(), name, base, folders)
            illum = None
            if has_illum:
                illum = {ch: _join(row[i_p].strip(), row[i_f].strip(), base, folders) for ch, i_f, i_p in i_illum}
            key = (plate, well, site)
            if key in seen:
                raise ManifestError(f"{csv_path}: line {line}: site {plate}/{well}/{site} already listed on line "
                                    f"{seen[key]}")
            seen[key] = line
            sites.append(Site(plate, well, site, files, illum))
    return sort_sites(sites)


# ----------------------------------------------------------------- Opera Phenix
def phenix_file_name(row: int, col: int, field: int, channel_number: int, plane: int = 1) -> str:
    """Opera Phenix file name ``rXXcXXfXXpXX-chXsk1fk1fl1.tiff`` (CPJUMP1 naming)."""
    return f"r{row:02d}c{col:02d}f{field:02d}p{plane:02d}-ch{channel_number}sk1fk1fl1.tiff"


def manifest_from_phenix(
    folder,
    channel_map: Mapping[int, str],
    channels: Sequence[str],
    plate: Optional[str] = None,
) -> tuple[list[Site], list[SiteProblem]]:
    """Sites of an Opera Phenix export folder (files directly in ``folder``).

    Parameters
    ----------
    folder : path
        Folder holding ``rXXcXXfXXp01-chXsk1fk1fl1.tiff`` files.
    channel_map : dict
        Phenix channel number -> channel name (CPJUMP1: ``{5: "DNA", ...}``).
    channels : list of str
        Channels to use; each needs a number in ``channel_map``.
    plate : str, optional
        Plate name (default: the folder's name).

    Returns
    -------
    sites : list of Site
        Every (well, field) with at least one file of a wanted channel, sorted.
        A site lacking a channel is still listed (its ``files`` lacks that
        channel) so that it is visible; reading it raises
        :class:`~hpc_profiler.images.SiteInputError`.
    problems : list of SiteProblem
        One per site with a missing channel file, naming the expected file.
        Only plane ``p01`` is read; other planes are reported once per site.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ManifestError(f"{folder}: Phenix image folder does not exist")
    plate = plate or folder.resolve().name
    number_of = {}
    for num, name in channel_map.items():
        number_of[name] = int(num)
    missing_map = [c for c in channels if c not in number_of]
    if missing_map:
        raise ManifestError(f"{folder}: no Phenix channel number for channel(s) {missing_map} in {dict(channel_map)}")
    wanted = {number_of[c]: c for c in channels}
    found: dict[tuple[int, int, int], dict[str, str]] = {}
    other_planes: set[tuple[int, int, int]] = set()
    for entry in sorted(os.listdir(folder)):
        m = PHENIX_RE.match(entry)
        if m is None:
            continue
        r, c, f, p, chn = (int(m.group(k)) for k in ("row", "col", "field", "plane", "ch"))
        if chn not in wanted:
            continue
        if p != 1:
            other_planes.add((r, c, f))
            continue
        found.setdefault((r, c, f), {})[wanted[chn]] = str(folder / entry)
    sites, problems = [], []
    for (r, c, f), files in found.items():
        try:
            well = well_from_row_col(r, c)
        except ValueError as exc:
            raise ManifestError(f"{folder}: file r{r:02d}c{c:02d}f{f:02d}: {exc}") from None
        for ch in channels:
            if ch not in files:
                expected = folder / phenix_file_name(r, c, f, number_of[ch])
                problems.append(SiteProblem(plate, well, f, f"missing {ch} image {expected}"))
        if (r, c, f) in other_planes:
            problems.append(SiteProblem(plate, well, f, "files of planes other than p01 ignored"))
        sites.append(Site(plate, well, f, {ch: files[ch] for ch in channels if ch in files}))
    problems.sort(key=lambda p: (p.plate, p.well, p.site, p.message))
    return sort_sites(sites), problems


# ------------------------------------------------------------------- dispatch
# ------------------------------------------------------------------- Parquet
def _columns(channels: Sequence[str]) -> list[str]:
    return ["plate", "well", "site"] + [f"file_{c}" for c in channels] + [f"illum_{c}" for c in channels]


def save_manifest(sites: Sequence[Site], path) -> Path:
    """Write ``sites`` to a Parquet file (one row per site, one column per channel).

    The channel order is stored in the file's metadata. All sites must have the
    same channels (an incomplete site of :func:`manifest_from_phenix` is
    stored with an empty path for its missing channel).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    channels: list[str] = []
    for s in sites:
        for c in s.files:
            if c not in channels:
                channels.append(c)
        for c in s.illum_files or {}:
            if c not in channels:
                channels.append(c)
    data: dict[str, list] = {k: [] for k in _columns(channels)}
    for s in sites:
        data["plate"].append(s.plate)
        data["well"].append(s.well)
        data["site"].append(int(s.site))
        for c in channels:
            data[f"file_{c}"].append(s.files.get(c))
            data[f"illum_{c}"].append(None if s.illum_files is None else s.illum_files.get(c))
    schema = pa.schema(
        [("plate", pa.string()), ("well", pa.string()), ("site", pa.int32())]
        + [(f"file_{c}", pa.string()) for c in channels]
        + [(f"illum_{c}", pa.string()) for c in channels],
        metadata={"hpc_profiler.channels": json.dumps(channels)},
    )
    table = pa.table(data, schema=schema)
    with atomic_path(path) as tmp:  # a unique temporary name: two writers never share one
        pq.write_table(table, tmp, row_group_size=4096)
    return path


def manifest_length(path) -> int:
    """Number of sites in a saved manifest (reads the Parquet footer only)."""
    import pyarrow.parquet as pq

    return pq.ParquetFile(path).metadata.num_rows


def load_manifest(path, indices: Optional[Sequence[int]] = None) -> list[Site]:
    """Read a manifest written by :func:`save_manifest`.

    Parameters
    ----------
    path : path
    indices : sequence of int, optional
        Row numbers to return, in that order (a Slurm task's or MPI rank's
        slice). Only those rows become :class:`Site` objects.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as exc:
        raise ManifestError(f"{path}: cannot read manifest: {exc}") from exc
    meta = table.schema.metadata or {}
    try:
        channels = json.loads(meta[b"hpc_profiler.channels"])
    except KeyError:
        raise ManifestError(f"{path}: not a hpc_profiler manifest (no channel list)") from None
    if indices is not None:
        idx = [int(i) for i in indices]
        bad = [i for i in idx if not 0 <= i < table.num_rows]
        if bad:
            raise ManifestError(f"{path}: site indices {bad[:5]} outside 0..{table.num_rows - 1}")
        table = table.take(pa.array(idx, type=pa.int64()))
    # column by column (a row-wise to_pylist costs a dict per row: seconds at 370,000 sites)
    plates, wells, numbers = (table.column(k).to_pylist() for k in ("plate", "well", "site"))
    files = [table.column(f"file_{c}").to_pylist() for c in channels]
    illums = [(c, v) for c in channels for v in [table.column(f"illum_{c}").to_pylist()]
              if any(x is not None for x in v)]
    sites = []
    for i, (plate, well, number, *fv) in enumerate(zip(plates, wells, numbers, *files)):
        f = dict(zip(channels, fv)) if None not in fv else {c: x for c, x in zip(channels, fv) if x is not None}
        il = {c: v[i] for c, v in illums if v[i] is not None} if illums else None
        sites.append(Site(plate, well, int(number), f, il or None))
    return sites
