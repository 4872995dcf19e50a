"""Synthetic CPJUMP1-like Cell Painting plates with ground truth.

Used by the tests and the demo in place of the real CPJUMP1 images, which are
too large to ship. A site looks like a binned CPJUMP1 U2OS field of view:

* **nuclei**: non-overlapping ellipses (equivalent diameters ~15-40 px at the
  540 px scale, proportional to ``size``) with a DNA texture, centres placed
  by rejection sampling on a canvas larger than the site so some cells are cut
  by the border;
* **cells**: the nearest-nucleus (Voronoi) region of each nucleus limited to
  a wobbly radius, so touching cells and gaps both occur; cells carry the label
  of their nucleus;
* **channels**: DNA in nuclei; ER smooth, perinuclear and reticular; RNA
  cytoplasmic with speckles, dimmer nucleoplasm and bright nucleoli; AGP
  enriched at the cell edge with fibres and a Golgi spot; Mito as punctate
  granules denser near the nucleus;
* **acquisition**: Gaussian point-spread blur, a smooth per-channel
  illumination vignette multiplying the image, Poisson (shot) and Gaussian
  (read) noise, 16-bit quantisation.

Intensities follow CPJUMP1 after division by 65535: nuclei in DNA ~0.05-0.10
on a background ~0.004, RNA cytoplasm ~0.012-0.022 over ~0.002, so the
pipeline's bounded Li thresholds (nuclei >= 0.014, cells in [0.005, 0.014])
separate objects from background.

Perturbations (:class:`PerturbationEffect`, :func:`effect_for`) change nucleus
size, cell size, per-channel intensity, texture and granularity. Replicates of
a perturbation share its effect (seeded by ``broad_sample``); perturbations of
the same gene share a gene-level component (seeded by the gene) so sister
compounds, sister guides and compound-gene pairs are similar; ORFs of some
genes act opposite to CRISPR (directionality). Negative controls have none.

This is a generator, not a reproduction of a CellProfiler module; it is not on
the profiling hot path and runs on the CPU (NumPy/SciPy) only.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np
import scipy.ndimage as ndi

from ._atomic import atomic_path
from .config import CPJUMP1_CHANNELS, CPJUMP1_PHENIX_CHANNELS, SynthConfig
from .manifest import phenix_file_name, row_col_from_well

#: Background of each channel (fraction of full scale) before the vignette.
BACKGROUND = {"DNA": 0.0040, "ER": 0.0030, "RNA": 0.0020, "AGP": 0.0030, "Mito": 0.0025}
#: Per-cell signal level ranges (fraction of full scale).
LEVELS = {
    "DNA": (0.05, 0.10),
    "ER": (0.010, 0.020),
    "RNA": (0.012, 0.022),
    "AGP": (0.010, 0.020),
    "Mito": (0.010, 0.020),
}
GAIN = 2.0  # camera counts per photo-electron (shot noise)
READ_NOISE = 20.0  # counts
#: Order of the effect vector (:meth:`PerturbationEffect.as_vector`).
EFFECT_FIELDS = ("nucleus_size", "cell_size", "texture", "granularity") + tuple(
    f"intensity_{c}" for c in CPJUMP1_CHANNELS
)


def stable_seed(*parts) -> int:
    """A 63-bit seed from strings/numbers, stable across processes (unlike ``hash``)."""
    text = "\x1f".join(str(p) for p in parts).encode()
    return int.from_bytes(hashlib.sha256(text).digest()[:8], "little") >> 1


# ------------------------------------------------------------------ effects
@dataclass(frozen=True)
class PerturbationEffect:
    """Morphology changes of a perturbation; all values are natural-log factors.

    Attributes
    ----------
    nucleus_size, cell_size : float
        Log factor on nucleus semi-axes and cell radius (0: none).
    texture : float
        Log factor on the amplitude of the intensity textures.
    granularity : float
        Log factor on the size of Mito granules (and their count, inversely).
    intensity : dict
        Channel -> log factor on that channel's signal level.
    """

    nucleus_size: float = 0.0
    cell_size: float = 0.0
    texture: float = 0.0
    granularity: float = 0.0
    intensity: Mapping[str, float] = field(default_factory=dict)

    def as_vector(self) -> np.ndarray:
        """Values in :data:`EFFECT_FIELDS` order."""
        head = [self.nucleus_size, self.cell_size, self.texture, self.granularity]
        return np.array(head + [float(self.intensity.get(c, 0.0)) for c in CPJUMP1_CHANNELS])

    @classmethod
    def from_vector(cls, v) -> "PerturbationEffect":
        v = [float(x) for x in v]
        if len(v) != len(EFFECT_FIELDS):
            raise ValueError(f"effect vector needs {len(EFFECT_FIELDS)} values, got {len(v)}")
        return cls(v[0], v[1], v[2], v[3], dict(zip(CPJUMP1_CHANNELS, v[4:])))

    def gain(self, channel: str) -> float:
        return math.exp(float(self.intensity.get(channel, 0.0)))


NO_EFFECT = PerturbationEffect()
#: Typical size (log factor) of one effect component at strength 1.
EFFECT_SCALE = 0.12
#: Own (per-perturbation) component relative to the gene component (whose amplitude is 0.4-1 per
#: gene). As large as the largest gene component: replicates of a perturbation are clearly more alike
#: than its sisters (the demo's replicate retrieval finds them), while sisters, a compound and the
#: guides of its target still share the gene part (cosine ~0.3 of their effect vectors).
OWN_FRACTION = 1.0


def _is_missing(x) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x)) or str(x).strip() in ("", "nan", "NaN", "None")


def orf_sign(gene: str) -> int:
    """-1 for genes whose ORF acts opposite to the knockout (about half), else +1."""
    return -1 if stable_seed("direction", gene) % 2 == 0 else 1


def effect_for(
    broad_sample,
    gene,
    modality: str,
    strength: float = 1.0,
    control_type=None,
) -> PerturbationEffect:
    """The seeded effect of a perturbation.

    Parameters
    ----------
    broad_sample : str
        Perturbation identifier; replicates share the effect. ``"DMSO"`` or
        missing: no effect.
    gene : str or None
        Target gene: compounds, guides and ORFs of one gene share a component.
    modality : {"compound", "crispr", "orf"}
        For ORFs of genes with :func:`orf_sign` -1 the gene component flips.
    strength : float
        Scale of the effect (``SynthConfig.effect_size``); 0 gives no effect.
    control_type : str, optional
        ``"negcon"``: no effect.

    Returns
    -------
    PerturbationEffect
        ``gene_amp * z_gene * sign + OWN_FRACTION * z_own``, times
        ``EFFECT_SCALE * strength``, with ``z`` standard normal vectors seeded by
        the gene and the broad_sample, ``gene_amp`` in [0.4, 1] per gene.
    """
    if control_type == "negcon" or _is_missing(broad_sample) or str(broad_sample) == "DMSO" or strength == 0:
        return NO_EFFECT
    n = len(EFFECT_FIELDS)
    v = OWN_FRACTION * np.random.default_rng(stable_seed("own", broad_sample)).standard_normal(n)
    if not _is_missing(gene):
        g_rng = np.random.default_rng(stable_seed("gene", gene))
        amp = g_rng.uniform(0.4, 1.0)
        sign = orf_sign(str(gene)) if modality == "orf" else 1
        v = v + sign * amp * g_rng.standard_normal(n)
    return PerturbationEffect.from_vector(EFFECT_SCALE * strength * v)


# ------------------------------------------------------------------ one site
@dataclass
class SynthSite:
    """A synthetic site: 16-bit images, ground-truth labels and the vignette used."""

    images: dict
    nuclei: np.ndarray
    cells: np.ndarray
    vignette: dict


def make_vignette(seed: int, size: int, channels: Sequence[str] = CPJUMP1_CHANNELS) -> dict:
    """Smooth per-channel illumination fields in (0, 1], brightest off-centre.

    ``v = 1 - k * (r / r0)^2 + tilt``, rescaled so the maximum is 1; the edges
    fall to roughly 0.6-0.8 like a widefield/confocal flat field. Each
    channel's field depends only on ``seed`` and the channel name.
    """
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / np.float32(size)
    out = {}
    for ch in channels:
        rng = np.random.default_rng(stable_seed(seed, ch))
        cy, cx = 0.5 + rng.uniform(-0.15, 0.15, 2)
        k = rng.uniform(0.25, 0.40)
        ty, tx = rng.uniform(-0.05, 0.05, 2)
        v = 1.0 - k * ((yy - cy) ** 2 + (xx - cx) ** 2) / 0.5 + ty * yy + tx * xx
        out[ch] = (v / v.max()).astype(np.float32)
    return out


def _place_nuclei(rng, n: int, extent: float, a: np.ndarray, max_tries: int = 40):
    """Centres in [0, extent)^2 so that ellipses of semi-major axes ``a`` stay apart.

    Two centres are at least ``2.2 * max(a_i, a_j) + 2`` apart, which keeps each
    ellipse inside its own nearest-centre region. Sequential rejection sampling
    (generator set-up, not a per-object measurement).
    """
    centres = np.empty((0, 2))
    kept = []
    for i in range(n):
        cand = rng.uniform(0, extent, size=(max_tries, 2))
        if len(kept):
            d = np.hypot(cand[:, None, 0] - centres[None, :, 0], cand[:, None, 1] - centres[None, :, 1])
            need = 2.2 * np.maximum(a[i], a[kept])[None, :] + 2.0
            ok = np.all(d >= need, axis=1)
            if not ok.any():
                continue
            c = cand[np.argmax(ok)]
        else:
            c = cand[0]
        centres = np.vstack([centres, c])
        kept.append(i)
    return centres, np.asarray(kept, dtype=int)


def _smooth_noise(rng, shape, sigma) -> np.ndarray:
    """Gaussian-filtered white noise with unit standard deviation."""
    f = ndi.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma, truncate=3.0)
    return f / max(float(f.std()), 1e-6)


def _slow_field(rng, shape, terms: int = 3) -> np.ndarray:
    """Very smooth field of amplitude ~1: a sum of separable low-frequency cosines."""
    y = np.arange(shape[0], dtype=np.float32) / shape[0]
    x = np.arange(shape[1], dtype=np.float32) / shape[1]
    out = np.zeros(shape, np.float32)
    for fy, fx, py, px in zip(*(rng.uniform(0.2, 1.2, (2, terms))), *(rng.uniform(0, 2 * np.pi, (2, terms)))):
        out += np.outer(np.cos(2 * np.pi * fy * y + py), np.cos(2 * np.pi * fx * x + px))
    return out / np.float32(math.sqrt(terms))


def _spots(shape, ys, xs, amps, sigma) -> np.ndarray:
    """Gaussian spots of peak ``amps`` at integer-rounded positions (impulses + blur)."""
    img = np.zeros(shape, np.float32)
    yi = np.clip(np.round(ys).astype(int), 0, shape[0] - 1)
    xi = np.clip(np.round(xs).astype(int), 0, shape[1] - 1)
    np.add.at(img, (yi, xi), np.asarray(amps, np.float32) * np.float32(2 * np.pi * sigma**2))
    return ndi.gaussian_filter(img, sigma, truncate=3.0)


def _geometry(rng, size: int, n_cells: int, eff: PerturbationEffect):
    """Object parameters and per-pixel geometry (labels, distances) of a site."""
    s = size / 540.0
    pad = int(round(45 * s))
    extent = size + 2 * pad
    n_total = rng.poisson(n_cells * (extent / size) ** 2)
    a = 11.0 * s * np.exp(rng.normal(0.0, 0.18, n_total) + eff.nucleus_size)
    a = np.clip(a, 7.5 * s * math.exp(min(eff.nucleus_size, 0)), 20.0 * s * math.exp(max(eff.nucleus_size, 0)))
    centres, kept = _place_nuclei(rng, n_total, extent, a)
    n = len(kept)
    a = a[kept]
    b = a * rng.uniform(0.7, 0.95, n)
    theta = rng.uniform(0, np.pi, n)
    radius = np.maximum(30.0 * s * np.exp(rng.normal(0.0, 0.12, n) + eff.cell_size), 1.6 * a)
    harm_amp = rng.uniform(0.0, 0.08, (n, 3))
    harm_phase = rng.uniform(0, 2 * np.pi, (n, 3))
    if n == 0:
        empty = np.zeros((size, size), np.int32)
        return empty, empty.copy(), None

    seeds = np.zeros((extent, extent), np.int32)
    cy = np.clip(centres[:, 0], 0, extent - 1)
    cx = np.clip(centres[:, 1], 0, extent - 1)
    seeds[np.round(cy).astype(int), np.round(cx).astype(int)] = np.arange(1, n + 1)
    idx = ndi.distance_transform_edt(seeds == 0, return_distances=False, return_indices=True)
    sl = slice(pad, pad + size)
    lab = seeds[idx[0][sl, sl], idx[1][sl, sl]] - 1  # nearest nucleus, 0-based
    yy, xx = np.mgrid[pad : pad + size, pad : pad + size].astype(np.float32)
    dy = yy - cy[lab].astype(np.float32)
    dx = xx - cx[lab].astype(np.float32)
    dist = np.hypot(dy, dx)
    ct, st = np.cos(theta)[lab], np.sin(theta)[lab]
    u = dx * ct + dy * st
    v = -dx * st + dy * ct
    q = (u / a[lab]) ** 2 + (v / b[lab]) ** 2
    phi = np.arctan2(dy, dx)
    wob = np.ones_like(dist)
    for k in range(3):
        wob += harm_amp[lab, k] * np.cos((k + 2) * phi + harm_phase[lab, k])
    rr = dist / (radius[lab] * wob)
    nuc = q <= 1.0
    cell = rr <= 1.0
    # keep objects whose nucleus shows in the site; consecutive labels 1..N
    present = np.unique(lab[nuc])
    relabel = np.zeros(n + 1, np.int32)
    relabel[present + 1] = np.arange(1, len(present) + 1, dtype=np.int32)
    obj = relabel[lab + 1]
    nuclei = np.where(nuc, obj, 0).astype(np.int32)
    cells = np.where(cell, obj, 0).astype(np.int32)
    geo = dict(
        lab=lab, obj=obj, q=q, rr=rr, dist=dist, a=a, phi=phi,
        cy=cy - pad, cx=cx - pad, theta=theta, s=s, present=present,
    )
    return nuclei, cells, geo


def _channel_signal(ch: str, rng, geo, nuclei, cells, levels, eff, shape) -> np.ndarray:
    """Noise-free object signal of one channel (fraction of full scale)."""
    lab, q, rr, s = geo["lab"], geo["q"], geo["rr"], geo["s"]
    tex = math.exp(eff.texture)
    lvl = levels[lab]
    nuc = nuclei > 0
    cell = cells > 0
    cyto = cell & ~nuc
    if ch == "DNA":
        t = _smooth_noise(rng, shape, 1.2 * s)
        sig = lvl * (1.0 - 0.25 * q) * (1.0 + 0.22 * tex * t)
        return np.where(nuc, np.clip(sig, 0, None), 0.0)
    if ch == "RNA":
        speck = _smooth_noise(rng, shape, 0.8 * s)
        body = lvl * (1.0 - 0.3 * np.clip(rr, 0, 1) ** 2) * (1.0 + 0.25 * tex * speck)
        body = np.where(nuc, 0.6 * body, body)
        pres = geo["present"]
        k = rng.integers(1, 4, len(pres))
        owner = np.repeat(pres, k)
        ang = rng.uniform(0, 2 * np.pi, len(owner))
        rad = rng.uniform(0, 0.45, len(owner)) * geo["a"][owner]
        nucleoli = _spots(
            shape,
            geo["cy"][owner] + rad * np.sin(ang),
            geo["cx"][owner] + rad * np.cos(ang),
            1.6 * levels[owner],
            1.8 * s,
        )
        return np.where(cell, np.clip(body, 0, None), 0.0) + np.where(nuc, nucleoli, 0.0)
    if ch == "ER":
        f = _smooth_noise(rng, shape, 1.5 * s)
        ret = np.exp(-((f / 0.6) ** 2))  # ridges along zero crossings: a network
        peri = np.exp(-np.clip(rr - 0.3, 0, None) * 1.5)
        sig = lvl * peri * (0.55 + 0.9 * tex * ret)
        return np.where(cyto, sig, np.where(nuc, 0.25 * lvl, 0.0))
    if ch == "AGP":
        fib = ndi.gaussian_filter(rng.standard_normal(shape).astype(np.float32), (0.7 * s, 5.0 * s), truncate=3.0)
        fib /= max(float(fib.std()), 1e-6)
        edge = 0.45 + 0.9 * np.clip(rr, 0, 1) ** 4
        sig = lvl * edge * (1.0 + 0.3 * tex * fib)
        pres = geo["present"]
        ang = rng.uniform(0, 2 * np.pi, len(pres))
        off = 1.3 * geo["a"][pres]
        golgi = _spots(
            shape, geo["cy"][pres] + off * np.sin(ang), geo["cx"][pres] + off * np.cos(ang), 1.5 * levels[pres], 3.0 * s
        )
        return np.where(cell, np.clip(sig, 0, None) + golgi, 0.0)
    if ch == "Mito":
        grain = math.exp(eff.granularity)
        sigma = 1.1 * s * grain
        ys, xs = np.nonzero(cyto)
        w = np.clip(1.2 - rr[ys, xs], 0.05, None) ** 2
        n_gran = rng.poisson(0.05 * len(ys) / grain**2) if len(ys) else 0
        if n_gran:
            pick = rng.choice(len(ys), size=n_gran, p=w / w.sum())
            amp = 2.2 * levels[lab[ys[pick], xs[pick]]] * rng.uniform(0.6, 1.4, n_gran) * (0.5 + 0.5 * tex)
            gran = _spots(shape, ys[pick], xs[pick], amp, sigma)
        else:
            gran = np.zeros(shape, np.float32)
        return np.where(cyto, 0.35 * lvl + gran, 0.0)
    raise ValueError(f"synthesize_site: unknown channel {ch!r}; known: {list(BACKGROUND)}")


def _acquire(rng, signal, vignette, s: float) -> np.ndarray:
    """Point-spread blur, vignette, shot + read noise, 16-bit quantisation."""
    img = ndi.gaussian_filter(signal.astype(np.float32), 1.0 * s, truncate=3.0) * vignette
    counts = img * np.float32(65535.0)
    electrons = rng.poisson(np.clip(counts, 0, None) / np.float32(GAIN)).astype(np.float32)
    noisy = electrons * np.float32(GAIN) + rng.standard_normal(counts.shape, dtype=np.float32) * np.float32(READ_NOISE)
    return np.clip(np.rint(noisy), 0, 65535).astype(np.uint16)


def synthesize_site(
    seed: int,
    size: int = 540,
    n_cells: int = 60,
    effect: Optional[PerturbationEffect] = None,
    channels: Sequence[str] = tuple(CPJUMP1_CHANNELS),
    vignette: Optional[Mapping[str, np.ndarray]] = None,
) -> SynthSite:
    """Generate one site.

    Parameters
    ----------
    seed : int
        The site is a deterministic function of the arguments.
    size : int
        Width and height in pixels; object sizes scale with ``size / 540``.
    n_cells : int
        Mean number of nuclei centred in the site (Poisson).
    effect : PerturbationEffect, optional
        Morphology changes (default: none).
    channels : sequence of str
        Any of DNA, ER, RNA, AGP, Mito.
    vignette : dict, optional
        Channel -> illumination field (``size x size``); default: a field
        from :func:`make_vignette` seeded by ``seed``.

    Returns
    -------
    SynthSite
    """
    eff = effect or NO_EFFECT
    unknown = [c for c in channels if c not in BACKGROUND]
    if unknown:
        raise ValueError(f"synthesize_site: unknown channel(s) {unknown}; known: {list(BACKGROUND)}")
    rng = np.random.default_rng(seed)
    nuclei, cells, geo = _geometry(rng, size, n_cells, eff)
    if vignette is None:
        vignette = make_vignette(stable_seed("vignette", seed), size, channels)
    shape = (size, size)
    s = size / 540.0
    n = 0 if geo is None else len(geo["a"])
    images = {}
    for ch in CPJUMP1_CHANNELS:  # fixed order so a channel subset does not change the others
        lo, hi = LEVELS[ch]
        levels = rng.uniform(lo, hi, n).astype(np.float32) * np.float32(eff.gain(ch))
        ch_rng = np.random.default_rng(stable_seed(seed, ch))
        if ch not in channels:
            continue
        if geo is None:
            sig = np.zeros(shape, np.float32)
        else:
            sig = _channel_signal(ch, ch_rng, geo, nuclei, cells, levels, eff, shape)
        bg = BACKGROUND[ch] * (1.0 + 0.08 * _slow_field(ch_rng, shape))
        v = np.asarray(vignette[ch], np.float32)
        if v.shape != shape:
            raise ValueError(f"vignette for {ch} has shape {v.shape}, site is {shape}")
        images[ch] = _acquire(ch_rng, sig + bg.astype(np.float32), v, s)
    return SynthSite({c: images[c] for c in channels}, nuclei, cells, {c: vignette[c] for c in channels})


# ------------------------------------------------------------------ batches
@dataclass
class SynthBatch:
    """What :func:`generate_batch` wrote."""

    out_dir: Path
    plates: dict  # plate -> modality
    loaddata_csv: Path
    well_metadata_csv: Path
    n_sites: int
    channels: list
    seconds: float = 0.0


def plate_names(synth_cfg: SynthConfig) -> dict:
    """Plate name -> modality: ``SYN-COMPOUND-1``, ``SYN-COMPOUND-2``, ..."""
    return {
        f"SYN-{mod.upper()}-{rep}": mod
        for mod in synth_cfg.modalities
        for rep in range(1, synth_cfg.replicate_plates + 1)
    }


def _write_tiff(path: Path, data: np.ndarray, compress: bool = False) -> None:
    import tifffile

    with atomic_path(path) as tmp:  # a unique temporary name: two writers never share one
        tifffile.imwrite(tmp, data, compression="zlib" if compress else None, metadata=None)


def generate_batch(
    synth_cfg: SynthConfig,
    out_dir,
    channels: Sequence[str] = tuple(CPJUMP1_CHANNELS),
    phenix_channels: Optional[Mapping[int, str]] = None,
) -> SynthBatch:
    """Write a synthetic batch: Phenix TIFFs, LoadData CSV, well metadata, masks.

    Layout under ``out_dir``::

        images/<plate>/rXXcXXfXXp01-chXsk1fk1fl1.tiff
        masks/<plate>/<well>_s<site>_{nuclei,cells}.tiff   (int32 labels)
        load_data.csv        (all plates; PathName relative to out_dir)
        well_metadata.csv    (metadata.well_metadata of the plates)

    Plates come from :func:`plate_names`; each uses
    :func:`hpc_profiler.metadata.plate_layout` of its modality with
    ``synth_cfg.wells`` wells. Every site's seed derives from
    ``synth_cfg.seed``, plate, well and site; the vignette from seed, plate and
    channel; so the bytes written are a function of the arguments.
    """
    from .metadata import well_metadata

    t0 = time.perf_counter()
    out = Path(out_dir)
    pmap = dict(phenix_channels or CPJUMP1_PHENIX_CHANNELS)
    number_of = {name: int(num) for num, name in pmap.items()}
    missing = [c for c in channels if c not in number_of]
    if missing:
        raise ValueError(f"no Phenix channel number for channel(s) {missing}")
    plates = plate_names(synth_cfg)
    meta = well_metadata(plates, n_wells=synth_cfg.wells, seed=synth_cfg.seed)
    rows = []
    for plate, modality in plates.items():
        img_dir = out / "images" / plate
        mask_dir = out / "masks" / plate
        img_dir.mkdir(parents=True, exist_ok=True)
        mask_dir.mkdir(parents=True, exist_ok=True)
        vig = make_vignette(stable_seed(synth_cfg.seed, plate, "vignette"), synth_cfg.size, channels)
        layout = meta[meta["Metadata_Plate"] == plate]
        for rec in layout.itertuples(index=False):
            eff = effect_for(
                rec.Metadata_broad_sample,
                rec.Metadata_gene,
                modality,
                synth_cfg.effect_size,
                rec.Metadata_control_type,
            )
            r, c = row_col_from_well(rec.Metadata_Well)
            for site in range(1, synth_cfg.sites_per_well + 1):
                ss = synthesize_site(
                    stable_seed(synth_cfg.seed, plate, rec.Metadata_Well, site),
                    size=synth_cfg.size,
                    n_cells=synth_cfg.cells_per_site,
                    effect=eff,
                    channels=channels,
                    vignette=vig,
                )
                row = {"Metadata_Plate": plate, "Metadata_Well": rec.Metadata_Well, "Metadata_Site": site}
                for ch in channels:
                    name = phenix_file_name(r, c, site, number_of[ch])
                    _write_tiff(img_dir / name, ss.images[ch])
                    row[f"FileName_Orig{ch}"] = name
                    row[f"PathName_Orig{ch}"] = f"images/{plate}"
                stem = f"{rec.Metadata_Well}_s{site}"
                _write_tiff(mask_dir / f"{stem}_nuclei.tiff", ss.nuclei, compress=True)
                _write_tiff(mask_dir / f"{stem}_cells.tiff", ss.cells, compress=True)
                rows.append(row)
    fields = ["Metadata_Plate", "Metadata_Well", "Metadata_Site"]
    for ch in channels:
        fields += [f"FileName_Orig{ch}", f"PathName_Orig{ch}"]
    csv_path = out / "load_data.csv"
    with open(csv_path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=fields, lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    meta_path = out / "well_metadata.csv"
    meta.to_csv(meta_path, index=False, lineterminator="\n")
    return SynthBatch(out, plates, csv_path, meta_path, len(rows), list(channels), time.perf_counter() - t0)


# ------------------------------------------------------------------ CLI
def add_synth_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Arguments of ``hpc-profiler synth OUT_DIR``."""
    parser.add_argument("out_dir", metavar="OUT_DIR", help="folder to write the batch to")
    parser.add_argument("--config", metavar="FILE", help="config file whose 'synth' section (and channels) to use")
    parser.add_argument("--plates", type=int, metavar="N", help="replicate plates per modality")
    parser.add_argument("--wells", type=int, metavar="N", help="wells per plate")
    parser.add_argument("--sites", type=int, metavar="N", help="sites per well")
    parser.add_argument("--size", type=int, metavar="N", help="site width/height in pixels")
    parser.add_argument("--cells", type=int, metavar="N", help="mean cells per site")
    parser.add_argument("--seed", type=int, metavar="N", help="random seed")
    parser.add_argument(
        "--modalities", nargs="+", choices=["compound", "crispr", "orf"], help="plate layouts to generate"
    )
    return parser


def synth_config_from_args(args) -> tuple[SynthConfig, list]:
    """SynthConfig and channels from ``--config`` (if any) overridden by the flags."""
    from dataclasses import replace

    from .config import load_config

    channels = list(CPJUMP1_CHANNELS)
    cfg = SynthConfig()
    if getattr(args, "config", None):
        full = load_config(args.config)
        channels = list(full.channels)
        if full.synth is not None:
            cfg = full.synth
    over = {
        "replicate_plates": args.plates,
        "wells": args.wells,
        "sites_per_well": args.sites,
        "size": args.size,
        "cells_per_site": getattr(args, "cells", None),
        "seed": args.seed,
        "modalities": args.modalities,
    }
    cfg = replace(cfg, **{k: v for k, v in over.items() if v is not None})
    for key in ("replicate_plates", "wells", "sites_per_well", "size", "cells_per_site"):
        if getattr(cfg, key) < 1:
            raise ValueError(f"synth: {key} must be >= 1, got {getattr(cfg, key)}")
    return cfg, channels


def main_synth(args) -> int:
    """``hpc-profiler synth``: generate a batch and print what was written."""
    from .config import ConfigError

    try:
        cfg, channels = synth_config_from_args(args)
        batch = generate_batch(cfg, args.out_dir, channels)
    except (ConfigError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(
        f"wrote {len(batch.plates)} plate(s) x {cfg.wells} wells x {cfg.sites_per_well} sites = "
        f"{batch.n_sites} sites of {cfg.size}x{cfg.size} px, channels {', '.join(channels)} "
        f"in {batch.seconds:.1f} s"
    )
    for plate, mod in batch.plates.items():
        print(f"  {plate} ({mod}): {batch.out_dir / 'images' / plate}")
    print(f"  LoadData CSV:   {batch.loaddata_csv}")
    print(f"  well metadata:  {batch.well_metadata_csv}")
    print(f"  ground truth:   {batch.out_dir / 'masks'}")
    return 0
