"""Seeded CPJUMP1-shaped well-profile tables for tests and benchmarks.

Shape of CPJUMP1 (Chandrasekaran et al. 2024): compound, CRISPR and ORF
plates with the same perturbations on every replicate plate (same well),
negative-control wells on every plate, two compounds per target gene
(sisters), two CRISPR guides per gene, one ORF per gene. Profiles are
``effect + noise``: every gene has a latent direction ``v_g``; an ORF moves
along ``+v_g``, a CRISPR guide along ``-v_g`` (opposite direction), a compound
along ``+-v_g`` (random sign, hence absolute cosine). A fraction of
perturbations is inactive (no effect). Negative controls are noise only.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

_WELLS = [f"{r}{c:02d}" for r in "ABCDEFGHIJKLMNOP" for c in range(1, 25)]


def synthetic_profiles(
    n_genes: int = 12,
    plates: int = 4,
    negcons: int = 8,
    n_features: int = 40,
    effect: float = 1.0,
    inactive: float = 0.25,
    modalities=("compound", "crispr", "orf"),
    cell_types=("U2OS",),
    seed: int = 0,
) -> pd.DataFrame:
    """A well table with CPJUMP1 metadata columns and ``Feature_i`` columns.

    Parameters
    ----------
    n_genes : int
        Target genes; each has 2 compounds, 2 CRISPR guides, 1 ORF.
    plates : int
        Replicate plates per modality and cell type.
    negcons : int
        Negative-control wells per plate.
    effect : float
        Scale of perturbation effects relative to unit well noise (0: none).
    inactive : float
        Fraction of perturbations without effect.
    """
    rng = np.random.default_rng(seed)
    v = rng.normal(size=(n_genes, n_features))
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    genes = [f"GENE{g:04d}" for g in range(n_genes)]
    per = {"compound": 2, "crispr": 2, "orf": 1}
    sign = {"orf": lambda r: 1.0, "crispr": lambda r: -1.0, "compound": lambda r: float(r.choice([-1.0, 1.0]))}
    timepoint = {"compound": "24", "crispr": "96", "orf": "48"}
    frames = []
    for ct in cell_types:
        for mod in modalities:
            perts = []
            for g in range(n_genes):
                for k in range(per[mod]):
                    scale = 0.0 if rng.random() < inactive else effect * rng.uniform(1.5, 3.0)
                    drift = 0.5 * rng.normal(size=n_features) / np.sqrt(n_features)
                    perts.append((f"{mod[:3].upper()}-{g:04d}-{k}", genes[g], sign[mod](rng) * scale * (v[g] + drift)))
            n_wells = len(perts) + negcons
            if n_wells > len(_WELLS):
                raise ValueError(f"{n_wells} wells do not fit a 384-well plate")
            for p in range(plates):
                plate = f"{ct}-{mod}-P{p + 1}"
                plate_shift = 0.3 * rng.normal(size=n_features)
                x = rng.normal(size=(n_wells, n_features)) + plate_shift
                x[: len(perts)] += np.stack([e for _, _, e in perts]) * np.sqrt(n_features) / 4
                meta = pd.DataFrame(
                    {
                        "Metadata_Plate": plate,
                        "Metadata_Well": _WELLS[:n_wells],
                        "Metadata_broad_sample": [b for b, _, _ in perts] + [f"NEG-{mod}"] * negcons,
                        "Metadata_gene": [g for _, g, _ in perts] + [""] * negcons,
                        "Metadata_pert_type": ["trt"] * len(perts) + ["control"] * negcons,
                        "Metadata_control_type": [""] * len(perts) + ["negcon"] * negcons,
                        "Metadata_modality": mod,
                        "Metadata_cell_type": ct,
                        "Metadata_timepoint": timepoint[mod],
                    }
                )
                feats = pd.DataFrame(x, columns=[f"Feature_{i:03d}" for i in range(n_features)])
                frames.append(pd.concat([meta, feats], axis=1))
    return pd.concat(frames, ignore_index=True)
