"""CPJUMP1 perturbation metadata and 384-well plate layouts.

The tables in ``hpc_profiler/data`` are the real CPJUMP1 annotations
(jump-cellpainting/pilot-cpjump1-fov-data, ``metadata/moa``): compounds with
their target gene, CRISPR guides and ORFs with their gene, and the real
compound plate map ``C-7210-01-CMP-013``. From them this module builds the
per-well table that profiling and the benchmark need (the ``Metadata_*``
columns that pycytominer's ``annotate`` joins onto well profiles).

Layouts
-------
* ``compound``: the real plate map; an empty ``broad_sample`` is a DMSO well,
  written as ``Metadata_broad_sample = "DMSO"`` with control type ``negcon``.
* ``crispr``: every guide of the table in one well (negative-control guides
  included), the remaining wells of the 384 filled with further negative-control
  guides, placed by a fixed permutation (the real CRISPR plate map is not
  shipped, so this is a stand-in of the same shape).
* ``orf``: every ORF in duplicate, the remaining wells negative-control ORFs,
  placed the same way.

Subsets (``n_wells``) keep at least 25 % negative-control wells and are built
gene by gene from genes that have two compounds on the plate map, two guides
and an ORF, so the benchmark tasks have positives in every modality: sister
compounds (two compounds of a gene), sister guides, ORF replicates, and
compound-gene pairs across the modalities' subsets.

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
#: Fixed seed of the CRISPR/ORF well placement (part of the layout definition).
_PLACEMENT_SEED = 20230101


def _read_table(name: str) -> pd.DataFrame:
    with resources.files("hpc_profiler.data").joinpath(name).open("rb") as fh:
        return pd.read_csv(fh, sep="\t", dtype=str, keep_default_na=True)


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


def compound_platemap() -> pd.DataFrame:
    """The real compound plate map C-7210-01-CMP-013 (384 rows; empty broad_sample = DMSO)."""
    return _cached("platemap_compound_C-7210-01-CMP-013.txt").copy()


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


def _placed_layout(entries: pd.DataFrame, negcon: pd.DataFrame) -> pd.DataFrame:
    """Fill 384 wells with ``entries`` then cycled ``negcon`` rows, fixed permutation."""
    n_fill = len(ALL_WELLS) - len(entries)
    if n_fill < 0:
        raise ValueError(f"{len(entries)} perturbations do not fit a 384-well plate")
    fill = negcon.iloc[np.arange(n_fill) % len(negcon)]
    rows = pd.concat([entries, fill], ignore_index=True)
    order = np.random.default_rng(_PLACEMENT_SEED).permutation(len(ALL_WELLS))
    wells = np.asarray(ALL_WELLS)[order]
    return pd.DataFrame(
        {
            "Metadata_Well": wells,
            "Metadata_broad_sample": rows["broad_sample"].to_numpy(),
            "Metadata_gene": rows["genes"].to_numpy(),
            "Metadata_pert_type": rows["pert_type"].to_numpy(),
            "Metadata_control_type": rows["control_type"].to_numpy(),
        }
    )


def _crispr_layout() -> pd.DataFrame:
    t = crispr_metadata()
    return _placed_layout(t, t[t["control_type"] == "negcon"])


def _orf_layout() -> pd.DataFrame:
    t = orf_metadata()
    doubled = t.loc[np.repeat(np.arange(len(t)), 2)]
    return _placed_layout(doubled, t[t["control_type"] == "negcon"])


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
