"""Synthetic CPJUMP1-like sites and batches: determinism, realism, ground truth, effects."""
from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
from skimage.filters import gaussian, threshold_li
from skimage.measure import regionprops

from hpc_profiler import metadata as md
from hpc_profiler.config import CellsConfig, NucleiConfig, SynthConfig
from hpc_profiler.images import load_site_images
from hpc_profiler.manifest import manifest_from_loaddata, manifest_from_phenix
from hpc_profiler.synth import (
    EFFECT_FIELDS,
    NO_EFFECT,
    PerturbationEffect,
    add_synth_arguments,
    effect_for,
    generate_batch,
    main_synth,
    orf_sign,
    synthesize_site,
)

CHANNELS = ["DNA", "ER", "RNA", "AGP", "Mito"]


@pytest.fixture(scope="module")
def site():
    return synthesize_site(11, size=400, n_cells=40)


def _iou(a, b):
    return (a & b).sum() / (a | b).sum()


# ---------------------------------------------------------------- determinism
def test_same_seed_same_arrays_other_seed_differs():
    a = synthesize_site(5, size=160, n_cells=10)
    b = synthesize_site(5, size=160, n_cells=10)
    c = synthesize_site(6, size=160, n_cells=10)
    for ch in CHANNELS:
        np.testing.assert_array_equal(a.images[ch], b.images[ch])
        assert a.images[ch].dtype == np.uint16 and a.images[ch].shape == (160, 160)
        assert not np.array_equal(a.images[ch], c.images[ch])
    np.testing.assert_array_equal(a.nuclei, b.nuclei)
    np.testing.assert_array_equal(a.cells, b.cells)
    assert not np.array_equal(a.nuclei, c.nuclei)
    # a channel subset gives the same images for the channels it keeps
    d = synthesize_site(5, size=160, n_cells=10, channels=("RNA", "DNA"))
    assert list(d.images) == ["RNA", "DNA"]
    np.testing.assert_array_equal(d.images["DNA"], a.images["DNA"])


# ---------------------------------------------------------------- realism
def test_intensity_ranges_like_cpjump1(site):
    nuc, cells = site.nuclei, site.cells
    dna = site.images["DNA"] / 65535.0
    rna = site.images["RNA"] / 65535.0
    bg = cells == 0
    per_nucleus = np.bincount(nuc.ravel(), dna.ravel())[1:] / np.bincount(nuc.ravel())[1:]
    assert 0.03 <= np.median(per_nucleus) <= 0.12
    assert np.quantile(per_nucleus, 0.05) > 0.014  # above the nuclei lower bound
    assert 0.002 <= np.median(dna[bg]) <= 0.006
    cyto = (cells > 0) & (nuc == 0)
    lab = np.where(cyto, cells, 0).ravel()
    per_cell = np.bincount(lab, rna.ravel())[1:] / np.maximum(np.bincount(lab)[1:], 1)
    per_cell = per_cell[np.bincount(lab)[1:] > 0]
    assert 0.008 <= np.median(per_cell) <= 0.03
    assert 0.001 <= np.median(rna[bg]) <= 0.004


def test_bounded_li_thresholds_find_the_objects(site):
    """skimage's Li threshold with the pipeline's bounds separates objects (gt IoU)."""
    cc, nc = CellsConfig(), NucleiConfig()
    rna = site.images["RNA"] / 65535.0
    t_cells = np.clip(threshold_li(rna) * cc.correction_factor, cc.lower_bound, cc.upper_bound)
    assert _iou(rna > t_cells, site.cells > 0) > 0.85
    dna = gaussian(site.images["DNA"] / 65535.0, sigma=1.0)  # light smoothing before thresholding
    t_nuc = np.clip(threshold_li(dna) * nc.correction_factor, nc.lower_bound, nc.upper_bound)
    assert _iou(dna > t_nuc, site.nuclei > 0) > 0.8


def test_ground_truth_masks_consistent(site):
    nuc, cells = site.nuclei, site.cells
    assert nuc.dtype == np.int32 and cells.dtype == np.int32
    n = nuc.max()
    assert n >= 20
    np.testing.assert_array_equal(np.unique(nuc[nuc > 0]), np.arange(1, n + 1))  # consecutive
    np.testing.assert_array_equal(np.unique(cells[cells > 0]), np.arange(1, n + 1))  # same numbers
    assert np.array_equal(cells[nuc > 0], nuc[nuc > 0])  # every nucleus inside its own cell
    assert ((cells > 0).sum() - (nuc > 0).sum()) > (nuc > 0).sum()  # cytoplasm is most of the cell
    dna = site.images["DNA"].astype(float)
    assert dna[nuc > 0].mean() > 5 * dna[nuc == 0].mean()
    diam = np.array([r.equivalent_diameter_area for r in regionprops(nuc)])
    whole = np.array([r.equivalent_diameter_area for r in regionprops(nuc) if min(r.bbox[:2]) > 0
                      and r.bbox[2] < nuc.shape[0] and r.bbox[3] < nuc.shape[1]])
    scale = nuc.shape[0] / 540
    assert 15 * scale <= np.median(whole) <= 40 * scale and diam.max() <= 42 * scale
    # touching cells and cells cut by the border exist
    touching = (cells[:, 1:] != cells[:, :-1]) & (cells[:, 1:] > 0) & (cells[:, :-1] > 0)
    assert touching.any()
    border = np.concatenate([cells[0], cells[-1], cells[:, 0], cells[:, -1]])
    assert (border > 0).any()
    # the vignette is smooth, at most 1 and darker at some edge
    for ch, v in site.vignette.items():
        assert v.max() == pytest.approx(1.0) and 0.4 < v.min() < 0.95


# ---------------------------------------------------------------- effects
def _mean_nucleus_area(sites):
    return np.mean([np.bincount(s.nuclei.ravel())[1:].mean() for s in sites])


def test_effects_change_morphology_in_the_intended_direction():
    seeds = range(4)
    kw = dict(size=220, n_cells=14, channels=("DNA", "RNA"))
    ctrl = [synthesize_site(100 + i, **kw) for i in seeds]
    big = [synthesize_site(200 + i, effect=PerturbationEffect(nucleus_size=0.25), **kw) for i in seeds]
    small = [synthesize_site(300 + i, effect=PerturbationEffect(nucleus_size=-0.25), **kw) for i in seeds]
    a_ctrl, a_big, a_small = map(_mean_nucleus_area, (ctrl, big, small))
    assert a_big > 1.3 * a_ctrl and a_small < 0.77 * a_ctrl
    bright = [synthesize_site(400 + i, effect=PerturbationEffect(intensity={"DNA": 0.3}), **kw) for i in seeds]

    def dna_in_nuclei(sites):
        return np.mean([s.images["DNA"][s.nuclei > 0].mean() for s in sites])

    assert dna_in_nuclei(bright) > 1.2 * dna_in_nuclei(ctrl)
    wide = [synthesize_site(500 + i, effect=PerturbationEffect(cell_size=0.3), **kw) for i in seeds]

    def cell_area(sites):
        return np.mean([np.bincount(s.cells.ravel())[1:].mean() for s in sites])

    assert cell_area(wide) > 1.15 * cell_area(ctrl)


def test_granularity_and_texture_effects():
    """Granularity as in MeasureGranularity: signal removed by a small opening."""
    from skimage.morphology import disk, opening

    def removed_by_opening(effect, base):
        out = []
        for i in range(2):
            s = synthesize_site(base + i, size=300, n_cells=20, effect=effect, channels=("Mito",))
            im = s.images["Mito"].astype(float)
            cyto = (s.cells > 0) & (s.nuclei == 0)
            out.append((im - opening(im, disk(1)))[cyto].sum() / im[cyto].sum())
        return np.mean(out)

    ctrl = removed_by_opening(None, 0)
    assert removed_by_opening(PerturbationEffect(granularity=0.5), 10) < 0.85 * ctrl
    assert removed_by_opening(PerturbationEffect(granularity=-0.5), 20) > 1.1 * ctrl

    def dna_cv(effect, base):
        cvs = []
        for i in range(2):
            s = synthesize_site(base + i, size=220, n_cells=14, effect=effect, channels=("DNA",))
            inner = (s.nuclei > 0) & (np.bincount(s.nuclei.ravel())[s.nuclei] > 50)
            v = s.images["DNA"][inner].astype(float)
            cvs.append(v.std() / v.mean())
        return np.mean(cvs)

    assert dna_cv(PerturbationEffect(texture=0.7), 30) > 1.15 * dna_cv(None, 40)


def test_empty_site():
    s = synthesize_site(3, size=64, n_cells=0)
    assert s.nuclei.max() == 0 and s.cells.max() == 0
    assert 0.001 < np.median(s.images["DNA"] / 65535.0) < 0.006


def _cos(a, b):
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_effect_for_structure():
    assert effect_for("DMSO", None, "compound") == NO_EFFECT
    assert effect_for("BRD-X", "TP53", "compound", control_type="negcon") == NO_EFFECT
    assert effect_for("BRD-X", "TP53", "compound", strength=0) == NO_EFFECT
    e1 = effect_for("BRD-X", "TP53", "compound", 1.0)
    assert e1 == effect_for("BRD-X", "TP53", "compound", 1.0)  # replicates share it
    np.testing.assert_allclose(effect_for("BRD-X", "TP53", "compound", 2.0).as_vector(), 2 * e1.as_vector())
    assert len(e1.as_vector()) == len(EFFECT_FIELDS)
    assert PerturbationEffect.from_vector(e1.as_vector()) == e1
    lay_c = md.plate_layout("compound")
    lay_r = md.plate_layout("crispr")
    lay_o = md.plate_layout("orf")
    sis, unrel, same_dir, opp_dir = [], [], [], []
    genes = md.shared_genes()
    for i, g in enumerate(genes):
        comps = lay_c.loc[lay_c["Metadata_gene"] == g, "Metadata_broad_sample"].unique()
        v1, v2 = (effect_for(b, g, "compound").as_vector() for b in comps[:2])
        sis.append(_cos(v1, v2))
        other = genes[(i + 1) % len(genes)]
        b_other = lay_c.loc[lay_c["Metadata_gene"] == other, "Metadata_broad_sample"].iloc[0]
        unrel.append(_cos(v1, effect_for(b_other, other, "compound").as_vector()))
        guide = lay_r.loc[lay_r["Metadata_gene"] == g, "Metadata_broad_sample"].iloc[0]
        orf = lay_o.loc[lay_o["Metadata_gene"] == g, "Metadata_broad_sample"].iloc[0]
        c = _cos(effect_for(guide, g, "crispr").as_vector(), effect_for(orf, g, "orf").as_vector())
        (opp_dir if orf_sign(g) < 0 else same_dir).append(c)
    # sisters share the gene component, unrelated perturbations nothing; the own component keeps
    # sisters clearly less alike than replicates (cosine 1)
    assert 0.2 < np.mean(sis) < 0.5 and abs(np.mean(unrel)) < 0.1
    assert np.mean(same_dir) > 0.2 and np.mean(opp_dir) < -0.2
    assert 0.25 < len(opp_dir) / len(genes) < 0.75


# ---------------------------------------------------------------- batches
def _digest(root: Path):
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


SMALL = SynthConfig(
    modalities=["compound", "orf"], replicate_plates=1, wells=4, sites_per_well=2, size=128, cells_per_site=6, seed=4
)


def test_generate_batch_layout_and_determinism(tmp_path):
    b1 = generate_batch(SMALL, tmp_path / "a", CHANNELS)
    generate_batch(SMALL, tmp_path / "b", CHANNELS)
    d1 = _digest(tmp_path / "a")
    assert d1 == _digest(tmp_path / "b")  # same bytes
    from dataclasses import replace

    generate_batch(replace(SMALL, seed=5), tmp_path / "c", CHANNELS)
    assert d1 != _digest(tmp_path / "c")
    assert b1.plates == {"SYN-COMPOUND-1": "compound", "SYN-ORF-1": "orf"}
    assert b1.n_sites == 2 * 4 * 2
    # the LoadData CSV and the Phenix folders describe the same images
    sites = manifest_from_loaddata(b1.loaddata_csv, CHANNELS)
    assert len(sites) == b1.n_sites
    ph, problems = manifest_from_phenix(tmp_path / "a" / "images" / "SYN-ORF-1", {5: "DNA", 4: "ER", 3: "RNA",
                                        2: "AGP", 1: "Mito"}, CHANNELS)
    assert problems == []

    def resolved(site_list):
        return [(s.well, s.site, {c: Path(f).resolve() for c, f in s.files.items()}) for s in site_list]

    assert resolved(s for s in sites if s.plate == "SYN-ORF-1") == resolved(ph)
    # well metadata: the layouts of the plates
    wm = pd.read_csv(b1.well_metadata_csv)
    expect = md.well_metadata(b1.plates, n_wells=SMALL.wells, seed=SMALL.seed)
    pd.testing.assert_frame_equal(
        wm.fillna("").astype(str).reset_index(drop=True), expect.fillna("").astype(str).reset_index(drop=True)
    )
    assert {(s.plate, s.well) for s in sites} == set(zip(wm["Metadata_Plate"], wm["Metadata_Well"]))
    # masks match the images of their site
    s = sites[0]
    imgs = load_site_images(s, CHANNELS)
    nuc = tifffile.imread(tmp_path / "a" / "masks" / s.plate / f"{s.well}_s{s.site}_nuclei.tiff")
    cells = tifffile.imread(tmp_path / "a" / "masks" / s.plate / f"{s.well}_s{s.site}_cells.tiff")
    assert nuc.shape == imgs["DNA"].shape == (128, 128) and nuc.max() >= 1
    assert np.array_equal(cells[nuc > 0], nuc[nuc > 0])
    assert imgs["DNA"][nuc > 0].mean() > 5 * imgs["DNA"][cells == 0].mean()


def test_cli_main_synth(tmp_path, capsys):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("channels: [DNA, RNA]\nsegmentation: {cells: {channel: RNA}}\n"
                        "synth: {modalities: [crispr], wells: 5, size: 96, cells_per_site: 4}\n")
    parser = add_synth_arguments(argparse.ArgumentParser())
    args = parser.parse_args([str(tmp_path / "out"), "--config", str(cfg_file), "--plates", "1", "--sites", "1"])
    assert main_synth(args) == 0
    out = capsys.readouterr().out
    assert "SYN-CRISPR-1" in out and "5 sites" in out
    assert len(list((tmp_path / "out" / "images" / "SYN-CRISPR-1").glob("*.tiff"))) == 5 * 2
    bad = parser.parse_args([str(tmp_path / "o2"), "--wells", "0"])
    assert main_synth(bad) == 2


def test_empty_sites_go_through_segmentation():
    """n_cells=0 gives an empty site that segments into empty labels, not a crash."""
    from hpc_profiler.illumination import apply_illum
    from hpc_profiler.segmentation import segment_site

    for seed, size in ((3, 160), (4, 270)):
        s = synthesize_site(seed, size=size, n_cells=0)
        assert s.nuclei.max() == 0 and s.cells.max() == 0
        seg = segment_site({c: apply_illum(s.images[c] / 65535.0, s.vignette[c]) for c in s.images})
        assert seg.measurements["Count_Nuclei"] == 0 == seg.measurements["Count_Cells"]
        assert not seg.nuclei.any() and not seg.cells.any() and not seg.cytoplasm.any()
