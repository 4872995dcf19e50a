"""QC pictures of a batch: outline montages, plate heat maps, illumination functions, an index page.

CellProfiler's CPJUMP1 pipeline saved nuclei and cell outline PNGs
(OverlayOutlines + SaveImages); :func:`outline_montage` draws the same check
for a handful of sites, over each of the channels. :func:`plate_heatmaps`
shows per-well cell counts and one feature by well position, where plate
layout effects (edge wells, dispensing gradients) become visible.
Everything is written as PNG with matplotlib's Agg backend; :func:`write_index`
links the pictures of a batch in one HTML page.
"""
from __future__ import annotations

import html
import re
from pathlib import Path
from typing import Iterable, Optional, Sequence

import numpy as np

ROWS = "ABCDEFGHIJKLMNOP"


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path, dpi: int = 100) -> Path:
    """Lay out, write as PNG (creating the folder), close; returns the path."""
    plt = _plt()
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def _stretch(img: np.ndarray, lo: float = 0.5, hi: float = 99.5) -> np.ndarray:
    """Percentile contrast stretch to [0, 1] for display."""
    a, b = np.percentile(img, [lo, hi])
    if b <= a:
        return np.zeros_like(img, dtype=np.float32)
    return np.clip((img - a) / (b - a), 0, 1).astype(np.float32)


def outline_overlay(image: np.ndarray, nuclei: np.ndarray, cells: np.ndarray) -> np.ndarray:
    """RGB picture of ``image`` (gray) with cell outlines in green and nuclei in magenta."""
    from skimage.segmentation import find_boundaries

    g = _stretch(np.asarray(image, dtype=np.float32))
    rgb = np.stack([g, g, g], axis=-1)
    cb = find_boundaries(cells, mode="inner")
    nb = find_boundaries(nuclei, mode="inner")
    rgb[cb] = (0.1, 1.0, 0.1)
    rgb[nb] = (1.0, 0.2, 1.0)
    return rgb


def outline_montage(sites: Sequence, cfg, path, max_sites: int = 4) -> Optional[Path]:
    """One row per site, one column per channel: outlines of nuclei and cells over the image.

    ``sites`` are manifest sites whose site files exist; labels come from the
    site file, pixels from the original images after illumination correction.
    """
    from . import pipeline, sitefile
    from .images import load_site_images

    plt = _plt()
    rows = []
    for site in sites:
        sp = pipeline.site_path(cfg, site)
        if not sitefile.validate_site_file(sp).ok:
            continue
        data = sitefile.read_site_file(sp, labels=True, objects=[])
        images = load_site_images(site, cfg.channels, cfg.input.full_scale)
        illum = None
        try:
            illum = pipeline.load_illum_for(cfg, site.plate)
        except FileNotFoundError:
            pass
        if illum:
            images = {ch: np.clip(images[ch] / illum[ch], 0, 1) for ch in cfg.channels}
        rows.append((site, images, data.labels.get("Nuclei"), data.labels.get("Cells")))
        if len(rows) >= max_sites:
            break
    if not rows:
        return None
    nch = len(cfg.channels)
    fig, axes = plt.subplots(len(rows), nch, figsize=(2.6 * nch, 2.7 * len(rows)), squeeze=False)
    for r, (site, images, nuc, cel) in enumerate(rows):
        for c, ch in enumerate(cfg.channels):
            ax = axes[r, c]
            ax.imshow(outline_overlay(images[ch], nuc, cel), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(ch)
            if c == 0:
                ax.set_ylabel(f"{site.plate}\n{site.well} s{site.site}", fontsize=8)
    fig.suptitle("Nuclei (magenta) and cell (green) outlines", fontsize=10)
    return _save(fig, path, dpi=110)


def well_position(well: str) -> tuple[int, int]:
    """``"B03"`` -> (1, 2): zero-based row and column of a 384-well plate."""
    m = re.fullmatch(r"([A-Pa-p])0?(\d{1,2})", str(well))
    if not m:
        raise ValueError(f"not a 384-well position: {well!r}")
    return ROWS.index(m.group(1).upper()), int(m.group(2)) - 1


def plate_grid(wells: Iterable[str], values: Iterable[float], shape=(16, 24)) -> np.ndarray:
    """Values placed by well position on a plate grid; empty wells are NaN."""
    grid = np.full(shape, np.nan)
    for w, v in zip(wells, values):
        r, c = well_position(w)
        grid[r, c] = v
    return grid


def plate_heatmaps(wells_table, path, feature: Optional[str] = None) -> Optional[Path]:
    """Per plate: cell count and ``feature`` by well position (one PNG for the batch)."""
    plt = _plt()
    df = wells_table
    if df is None or len(df) == 0:
        return None
    count_col = "Metadata_Object_Count" if "Metadata_Object_Count" in df.columns else None
    if feature is None:
        feats = [c for c in df.columns if not c.startswith("Metadata_")]
        preferred = [c for c in feats if c.endswith("Intensity_MeanIntensity_DNA")]
        feature = preferred[0] if preferred else (feats[0] if feats else None)
    panels = [c for c in (count_col, feature) if c]
    plates = sorted(df["Metadata_Plate"].unique())
    fig, axes = plt.subplots(len(plates), len(panels), figsize=(5.2 * len(panels), 2.9 * len(plates)), squeeze=False)
    for r, plate in enumerate(plates):
        sub = df[df["Metadata_Plate"] == plate]
        for c, col in enumerate(panels):
            ax = axes[r, c]
            grid = plate_grid(sub["Metadata_Well"], sub[col].astype(float))
            im = ax.imshow(grid, cmap="viridis", interpolation="nearest")
            ax.set_xticks(range(0, 24, 4), [str(i + 1) for i in range(0, 24, 4)], fontsize=6)
            ax.set_yticks(range(0, 16, 3), [ROWS[i] for i in range(0, 16, 3)], fontsize=6)
            ax.set_title(f"{plate}: {'cell count' if col == count_col else col}", fontsize=7)
            fig.colorbar(im, ax=ax, fraction=0.03)
    return _save(fig, path, dpi=100)


def illumination_figure(illum_files: Sequence, path) -> Optional[Path]:
    """The illumination functions: one row per plate, one panel per channel."""
    import h5py

    plt = _plt()
    files = [Path(p) for p in illum_files if Path(p).exists()]
    if not files:
        return None
    with h5py.File(files[0], "r") as f:
        channels = [k for k in f.keys()]
    fig, axes = plt.subplots(len(files), len(channels), figsize=(2.4 * len(channels), 2.4 * len(files)), squeeze=False)
    for r, p in enumerate(files):
        with h5py.File(p, "r") as f:
            for c, ch in enumerate(channels):
                ax = axes[r, c]
                im = ax.imshow(f[ch][()], cmap="magma")
                ax.set_xticks([])
                ax.set_yticks([])
                ax.set_title(f"{ch}", fontsize=8)
                if c == 0:
                    ax.set_ylabel(p.stem.replace("_illum", ""), fontsize=7)
                fig.colorbar(im, ax=ax, fraction=0.046)
    return _save(fig, path, dpi=100)


def _relative(p, root: Path) -> Path:
    p, root = Path(p).resolve(), Path(root).resolve()
    return p.relative_to(root) if p.is_relative_to(root) else p


def write_index(out_dir, title: str, pictures: Sequence, tables: Sequence = ()) -> Path:
    """An index.html linking the batch's pictures and tables (paths relative to it)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    parts = [f"<!doctype html><meta charset='utf-8'><title>{html.escape(title)}</title>", f"<h1>{html.escape(title)}</h1>"]
    for p in pictures:
        if p is None:
            continue
        rel = _relative(p, out_dir)
        parts.append(f"<h2>{html.escape(Path(p).stem)}</h2><a href='{html.escape(str(rel))}'><img src='{html.escape(str(rel))}' style='max-width:100%'></a>")
    if tables:
        parts.append("<h2>Tables</h2><ul>")
        for t in tables:
            rel = _relative(t, out_dir)
            parts.append(f"<li><a href='{html.escape(str(rel))}'>{html.escape(str(rel))}</a></li>")
        parts.append("</ul>")
    path = out_dir / "index.html"
    path.write_text("\n".join(parts) + "\n")
    return path
