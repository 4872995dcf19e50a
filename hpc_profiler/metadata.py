"""CPJUMP1 perturbation metadata, the real plate maps and 384-well plate layouts.

The tables in ``hpc_profiler/data`` are the real CPJUMP1 annotations
(jump-cellpainting/pilot-cpjump1-fov-data, ``metadata/moa``: compounds with
their target gene, CRISPR guides and ORFs with their gene; and the compound
plate map ``C-7210-01-CMP-013``) and the real plate maps of the
``2020_11_04_CPJUMP1`` batch (jump-cellpainting/pilot-cpjump1-data,
``metadata/platemaps/2020_11_04_CPJUMP1``): ``barcode_platemap.csv`` (plate
barcode -> plate map), the CRISPR map ``DXH.92.93.94.95.A`` and the ORF map
``DOG.30.31.32.33.A``; plus each barcode's cell type and timepoint
(``cpjump1_plate_descriptions.csv``, the plate table of that repository's
README). Licenses: ``LICENSE-CPJUMP1-metadata.txt`` (the fov-data files under
that repository's BSD 3-Clause license; pilot-cpjump1-data has no license file,
and its plate maps are redistributed as the Cell Painting Gallery's CC0 1.0
release of cpg0000-jump-pilot).
From them this module builds the per-well table that profiling and the
benchmark need (the ``Metadata_*`` columns that pycytominer's ``annotate``
joins onto well profiles).

Barcodes
--------
:func:`cpjump1_well_metadata` annotates every well of CPJUMP1 plates given by
barcode (``BR00117010`` ...): perturbation, gene, perturbation and control
type, modality, cell type and timepoint. ``reduce`` uses it when
``input.well_metadata_csv`` is not set (:func:`default_well_metadata`), so a
CPJUMP1 LoadData CSV or Gallery source with only ``Metadata_Plate`` barcodes
needs no hand-made metadata table.

Layouts
-------
* ``compound``: the real plate map; an empty ``broad_sample`` is a DMSO well,
  written as ``Metadata_broad_sample = "DMSO"`` with control type ``negcon``.
* ``crispr`` and ``orf``: the real plate maps (every guide once, negative
  control guides in several wells; every ORF in duplicate). Their four empty
  wells (no virus) are ``Metadata_broad_sample = "empty"``, perturbation type
  ``empty``, no control type: neither treatment nor control.

Subsets (``n_wells``), which the synthetic demo batches use, keep at least
25 % negative-control wells and are built gene by gene from genes that have two
compounds on the plate map, two guides and an ORF, so the benchmark tasks have
positives in every modality: sister compounds (two compounds of a gene), sister
guides, ORF replicates, and compound-gene pairs across the modalities' subsets.
The wells are the real maps' wells.

Missing values (the target of DMSO, the control type of a treatment) are NaN,
as in the source tables.
"""
from __future__ import annotations

import math
from functools import lru_cache
from importlib import resources
from typing import Mapping, Optional

import numpy as np
import pandas as pd

MODALITIES = ("compound", "crispr", "orf")
ROWS = "ABCDEFGHIJKLMNOP"
ALL_WELLS = [f"{r}{c:02d}" for r in ROWS for c in range(1, 25)]
LAYOUT_COLUMNS = [
    "Metadata_Well",
    "Metadata_broad_sample",
    "Metadata_gene",
    "Metadata_pert_type",
    "Metadata_control_type",
    "Metadata_modality",
]
#: Default timepoints (hours) of the CPJUMP1 plates, the longer of each pair.
DEFAULT_TIMEPOINTS = {"compound": 48, "crispr": 144, "orf": 96}
#: Plate map of each modality (files ``platemap_<modality>_<name>.txt``).
PLATE_MAPS = {"compound": "C-7210-01-CMP-013", "crispr": "DXH.92.93.94.95.A", "orf": "DOG.30.31.32.33.A"}
#: What an empty well of a genetic plate map is called.
EMPTY_WELL = "empty"


def _read_table(name: str) -> pd.DataFrame:
    sep = "," if name.endswith(".csv") else "\t"
    with resources.files("hpc_profiler.data").joinpath(name).open("rb") as fh:
        return pd.read_csv(fh, sep=sep, dtype=str, keep_default_na=True)


@lru_cache(maxsize=None)
def _cached(name: str) -> pd.DataFrame:
    return _read_table(name)


def compound_metadata() -> pd.DataFrame:
    """CPJUMP1 compounds: broad_sample, target, pert_type, control_type (307 rows)."""
    return _cached("cpjump1_compound_metadata.tsv").copy()


def crispr_metadata() -> pd.DataFrame:
    """CPJUMP1 CRISPR guides: broad_sample, genes, pert_type, control_type.

    The table's blank row (no guide) is dropped.
    """
    return _cached("cpjump1_crispr_metadata.tsv").dropna(subset=["broad_sample"]).reset_index(drop=True)


def orf_metadata() -> pd.DataFrame:
    """CPJUMP1 ORFs: broad_sample, genes, pert_type, control_type (blank row dropped)."""
    return _cached("cpjump1_orf_metadata.tsv").dropna(subset=["broad_sample"]).reset_index(drop=True)


def platemap(modality: str) -> pd.DataFrame:
    """The real plate map of a modality (384 rows: plate_map_name, well_position, broad_sample, ...)."""
    if modality not in MODALITIES:
        raise ValueError(f"modality must be one of {MODALITIES}, got {modality!r}")
    return _cached(f"platemap_{modality}_{PLATE_MAPS[modality]}.txt").copy()


def compound_platemap() -> pd.DataFrame:
    """The real compound plate map C-7210-01-CMP-013 (384 rows; empty broad_sample = DMSO)."""
    return platemap("compound")


def barcode_platemap() -> pd.DataFrame:
    """CPJUMP1 plate barcodes and their plate maps (``Assay_Plate_Barcode``, ``Plate_Map_Name``; 51 plates)."""
    return _cached("cpjump1_barcode_platemap.csv").copy()


def plate_info() -> pd.DataFrame:
    """Per CPJUMP1 barcode: plate map, modality, cell type and timepoint (hours).

    Columns ``Metadata_Plate``, ``Metadata_Plate_Map_Name``, ``Metadata_modality``,
    ``Metadata_cell_type``, ``Metadata_timepoint`` (int) and
    ``Metadata_plate_description`` (the README's description, e.g.
    ``U2OS 48-hour Compound Plate 3``).
    """
    bp = barcode_platemap()
    desc = _cached("cpjump1_plate_descriptions.csv").set_index("Assay_Plate_Barcode")["Description"]
    by_map = {v: k for k, v in PLATE_MAPS.items()}
    unknown = sorted(set(bp["Plate_Map_Name"]) - set(by_map))
    if unknown:
        raise ValueError(f"barcode_platemap names plate maps that are not shipped: {unknown}")
    d = desc.reindex(bp["Assay_Plate_Barcode"])
    if d.isna().any():
        raise ValueError(f"no description for barcodes {list(bp['Assay_Plate_Barcode'][d.isna().to_numpy()])}")
    hours = d.str.extract(r"(\d+)-hour", expand=False)
    return pd.DataFrame(
        {
            "Metadata_Plate": bp["Assay_Plate_Barcode"].to_numpy(),
            "Metadata_Plate_Map_Name": bp["Plate_Map_Name"].to_numpy(),
            "Metadata_modality": bp["Plate_Map_Name"].map(by_map).to_numpy(),
            "Metadata_cell_type": d.str.split().str[0].to_numpy(),
            "Metadata_timepoint": hours.astype(int).to_numpy(),
            "Metadata_plate_description": d.to_numpy(),
        }
    )


def cpjump1_well_metadata(plates) -> pd.DataFrame:
    """Every well of the CPJUMP1 plates among ``plates`` (barcodes), annotated from the real plate maps.

    Plates that are not CPJUMP1 barcodes are left out (an empty table when
    none is). Columns: ``Metadata_Plate``, the layout columns
    (:data:`LAYOUT_COLUMNS`), ``Metadata_cell_type``, ``Metadata_timepoint``,
    ``Metadata_Plate_Map_Name``, ``Metadata_plate_description``; sorted by
    plate then well.
    """
    info = plate_info().set_index("Metadata_Plate")
    frames = []
    for plate in sorted({str(p) for p in plates} & set(info.index)):
        row = info.loc[plate]
        lay = plate_layout(row["Metadata_modality"])
        lay.insert(0, "Metadata_Plate", plate)
        for col in ("Metadata_cell_type", "Metadata_timepoint", "Metadata_Plate_Map_Name", "Metadata_plate_description"):
            lay[col] = row[col]
        frames.append(lay)
    if not frames:
        return pd.DataFrame(columns=["Metadata_Plate", *LAYOUT_COLUMNS])
    return pd.concat(frames, ignore_index=True)


def default_well_metadata(plates, imported: Optional[pd.DataFrame] = None) -> Optional[pd.DataFrame]:
    """Per-well metadata when no ``input.well_metadata_csv`` is given, or None when nothing is known.

    The shipped CPJUMP1 annotations for the plates that are CPJUMP1 barcodes,
    and ``imported`` (the ``Metadata_*`` that a CellProfiler import carried,
    :func:`hpc_profiler.cpimport.imported_well_metadata`) for every imported
    well; where both name a column, the plate map's value wins.
    """
    keys = ["Metadata_Plate", "Metadata_Well"]
    maps = cpjump1_well_metadata(plates)
    if imported is not None and len(imported):
        imported = imported.astype({k: str for k in keys})
        if len(maps):
            extra = [c for c in imported.columns if c not in maps.columns]
            merged = maps.merge(imported[keys + extra], on=keys, how="outer")
            return merged.sort_values(keys, kind="stable").reset_index(drop=True)
        return imported
    return maps if len(maps) else None


# ------------------------------------------------------------------ full layouts
def _compound_layout() -> pd.DataFrame:
    pm = compound_platemap()
    meta = compound_metadata().dropna(subset=["broad_sample"]).set_index("broad_sample")
    bs = pm["broad_sample"]
    is_dmso = bs.isna()
    unknown = sorted(set(bs[~is_dmso]) - set(meta.index))
    if unknown:
        raise ValueError(f"compound plate map lists compounds missing from the metadata: {unknown[:5]}")
    looked = meta.reindex(bs.where(~is_dmso))
    out = pd.DataFrame(
        {
            "Metadata_Well": pm["well_position"].to_numpy(),
            "Metadata_broad_sample": bs.where(~is_dmso, "DMSO").to_numpy(),
            "Metadata_gene": looked["target"].to_numpy(),
            "Metadata_pert_type": np.where(is_dmso, "control", looked["pert_type"].to_numpy()),
            "Metadata_control_type": np.where(is_dmso, "negcon", looked["control_type"].to_numpy()),
        }
    )
    return out


def _genetic_layout(modality: str, meta: pd.DataFrame) -> pd.DataFrame:
    """A CRISPR or ORF plate map joined to its annotations; empty wells marked :data:`EMPTY_WELL`."""
    pm = platemap(modality)
    bs = pm["broad_sample"]
    empty = bs.isna()
    table = meta.set_index("broad_sample")
    unknown = sorted(set(bs[~empty]) - set(table.index))
    if unknown:
        raise ValueError(f"{modality} plate map lists perturbations missing from the metadata: {unknown[:5]}")
    looked = table.reindex(bs.where(~empty))
    return pd.DataFrame(
        {
            "Metadata_Well": pm["well_position"].to_numpy(),
            "Metadata_broad_sample": bs.where(~empty, EMPTY_WELL).to_numpy(),
            "Metadata_gene": looked["genes"].to_numpy(),
            "Metadata_pert_type": np.where(empty, EMPTY_WELL, looked["pert_type"].to_numpy()),
            "Metadata_control_type": looked["control_type"].to_numpy(),
        }
    )


def _crispr_layout() -> pd.DataFrame:
    return _genetic_layout("crispr", crispr_metadata())


def _orf_layout() -> pd.DataFrame:
    return _genetic_layout("orf", orf_metadata())


def _full_layout(modality: str) -> pd.DataFrame:
    if modality not in MODALITIES:
        raise ValueError(f"modality must be one of {MODALITIES}, got {modality!r}")
    df = {"compound": _compound_layout, "crispr": _crispr_layout, "orf": _orf_layout}[modality]()
    df["Metadata_modality"] = modality
    return df


# ------------------------------------------------------------------ subsets
@lru_cache(maxsize=None)
def shared_genes() -> tuple[str, ...]:
    """Genes with two compounds on the plate map, two guides and an ORF (sorted).

    These genes give every benchmark task positives: sister compounds, sister
    guides and compound-gene pairs with both genetic modalities.
    """
    comp = _compound_layout()
    comp = comp[comp["Metadata_control_type"] != "negcon"].drop_duplicates("Metadata_broad_sample")
    n_comp = comp.groupby("Metadata_gene")["Metadata_broad_sample"].nunique()
    cr = crispr_metadata()
    n_guides = cr[cr["control_type"] != "negcon"].groupby("genes")["broad_sample"].nunique()
    orf = orf_metadata()
    orf_genes = set(orf.loc[orf["control_type"] != "negcon", "genes"])
    genes = set(n_comp[n_comp == 2].index) & set(n_guides[n_guides >= 2].index) & orf_genes
    return tuple(sorted(genes))


def _gene_wells(layout: pd.DataFrame, gene: str) -> list[str]:
    """Two wells of ``gene``: its two compounds/guides, or one ORF twice."""
    rows = layout[(layout["Metadata_gene"] == gene) & (layout["Metadata_control_type"] != "negcon")]
    rows = rows.sort_values(["Metadata_broad_sample", "Metadata_Well"])
    first_per_sample = rows.drop_duplicates("Metadata_broad_sample")
    if len(first_per_sample) >= 2:
        return first_per_sample["Metadata_Well"].tolist()[:2]
    return rows["Metadata_Well"].tolist()[:2]


def _subset(layout: pd.DataFrame, n_wells: int, seed: int) -> pd.DataFrame:
    if n_wells < 3:
        raise ValueError(f"n_wells must be >= 3 (controls and one gene pair), got {n_wells}")
    rng = np.random.default_rng(seed)
    genes = list(shared_genes())
    n_neg = math.ceil(0.25 * n_wells)
    n_pairs = min((n_wells - n_neg) // 2, len(genes))
    chosen = [genes[i] for i in sorted(rng.permutation(len(genes))[:n_pairs])]
    wells: list[str] = []
    for g in chosen:
        wells += _gene_wells(layout, g)
    negcon = layout.loc[layout["Metadata_control_type"] == "negcon", "Metadata_Well"].to_numpy()
    others = layout.loc[
        (layout["Metadata_control_type"] != "negcon") & ~layout["Metadata_Well"].isin(wells), "Metadata_Well"
    ].to_numpy()
    n_neg_take = n_wells - len(wells)
    n_other = 0
    if n_neg_take > len(negcon):  # only for very large subsets
        n_other = n_neg_take - len(negcon)
        n_neg_take = len(negcon)
    wells += list(rng.choice(negcon, size=n_neg_take, replace=False))
    wells += list(rng.choice(others, size=n_other, replace=False))
    return layout[layout["Metadata_Well"].isin(wells)]


def _well_order(wells: pd.Series) -> np.ndarray:
    return np.array([ROWS.index(w[0]) * 100 + int(w[1:]) for w in wells])


def plate_layout(modality: str, n_wells: Optional[int] = None, seed: int = 0) -> pd.DataFrame:
    """One row per well of a CPJUMP1-like plate of ``modality``.

    Parameters
    ----------
    modality : {"compound", "crispr", "orf"}
    n_wells : int, optional
        Deterministic subset of this many wells (see the module docstring);
        ``None`` or >= 384: the whole plate.
    seed : int
        Seed of the subset choice (the full layouts do not depend on it).

    Returns
    -------
    pandas.DataFrame
        Columns :data:`LAYOUT_COLUMNS`, sorted by well (row-major).
    """
    layout = _full_layout(modality)
    if n_wells is not None and n_wells < len(layout):
        layout = _subset(layout, int(n_wells), seed)
    layout = layout.iloc[np.argsort(_well_order(layout["Metadata_Well"]), kind="stable")]
    return layout[LAYOUT_COLUMNS].reset_index(drop=True)


def well_metadata(
    plates: Mapping[str, str],
    n_wells: Optional[int] = None,
    seed: int = 0,
    cell_type: str = "U2OS",
    timepoints: Optional[Mapping[str, int]] = None,
) -> pd.DataFrame:
    """The per-well metadata table of a batch (what ``input.well_metadata_csv`` points at).

    Parameters
    ----------
    plates : dict
        Plate name -> modality.
    n_wells, seed
        Passed to :func:`plate_layout` (replicate plates share a layout).
    cell_type : str
        ``Metadata_cell_type`` (CPJUMP1: U2OS and A549).
    timepoints : dict, optional
        Modality -> hours (default :data:`DEFAULT_TIMEPOINTS`).

    Returns
    -------
    pandas.DataFrame
        ``Metadata_Plate`` then the layout columns, ``Metadata_cell_type``
        and ``Metadata_timepoint``; sorted by plate then well.
    """
    tp = dict(DEFAULT_TIMEPOINTS, **(timepoints or {}))
    frames = []
    for plate in sorted(plates):
        modality = plates[plate]
        lay = plate_layout(modality, n_wells=n_wells, seed=seed)
        lay.insert(0, "Metadata_Plate", plate)
        lay["Metadata_cell_type"] = cell_type
        lay["Metadata_timepoint"] = int(tp[modality])
        frames.append(lay)
    return pd.concat(frames, ignore_index=True)
