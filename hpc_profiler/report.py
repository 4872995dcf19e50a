"""QC pictures of a batch: outline montages, plate heat maps, illumination functions, an index page.

CellProfiler's CPJUMP1 pipeline saved nuclei and cell outline PNGs
(OverlayOutlines + SaveImages); :func:`outline_montage` draws the same check
for a handful of sites, over each of the channels. :func:`plate_heatmaps`
shows per-well cell counts and one feature by well position, where plate
layout effects (edge wells, dispensing gradients) become visible.
Everything is written as PNG with matplotlib's Agg backend; :func:`write_index`
links the pictures of a batch in one HTML page, each with a caption that says
what it shows and what to look for, the benchmark summary as a table, and every
Parquet table with a CSV next to it (a browser or a spreadsheet opens CSV).

Pictures are meant to be read without the paper: every panel has a title and
labelled axes or a legend; channels appear in one order everywhere (the
config's ``channels``); outlines are drawn with a dark rim on each side so that
they stand out on bright nuclei as well as on dark background.
"""
from __future__ import annotations

import html
import os
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
    if fig.get_layout_engine() is None:
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


#: Outline colours (RGB in [0, 1]) of :func:`outline_overlay`.
CELL_COLOR = (0.1, 1.0, 0.1)
NUCLEUS_COLOR = (1.0, 0.2, 1.0)


def outline_overlay(image: np.ndarray, nuclei: np.ndarray, cells: np.ndarray, width: int = 1) -> np.ndarray:
    """RGB picture of ``image`` (gray) with cell outlines in green and nuclei in magenta.

    Each outline (the objects' inner boundary pixels, thickened inwards to
    ``width`` pixels) gets a black rim (``max(1, width // 2)`` pixels) on both
    sides, so that a light outline stays visible on bright nuclei; nuclei are
    drawn after cells. A ``width`` of about the factor by which the picture is
    shrunk for display keeps every outline in the shrunk picture.
    """
    from scipy.ndimage import binary_dilation
    from skimage.segmentation import find_boundaries

    width = max(1, int(width))
    g = _stretch(np.asarray(image, dtype=np.float32))
    rgb = np.stack([g, g, g], axis=-1)
    for labels, color in ((cells, CELL_COLOR), (nuclei, NUCLEUS_COLOR)):
        if labels is None:
            continue
        line = find_boundaries(labels, mode="inner")
        if width > 1:
            line = binary_dilation(line, iterations=width - 1) & (labels > 0)
        rgb[binary_dilation(line, iterations=max(1, width // 2)) & ~line] = 0.0
        rgb[line] = color
    return rgb


def display_shrink(image_px: int, panel_in: float, dpi: float) -> int:
    """About how many image pixels share one pixel of a ``panel_in`` inch panel at ``dpi``
    (the panel's drawing area taken as 85 % of it); at least 1."""
    return max(1, int(round(image_px / (0.85 * panel_in * dpi))))


def outline_montage(sites: Sequence, cfg, path, max_sites: int = 4) -> Optional[Path]:
    """One row per site, one column per channel: outlines of nuclei and cells over the image.

    ``sites`` are manifest sites whose site files exist; labels come from the
    site file, pixels from the original images after illumination correction.
    """
    from . import pipeline, sitefile
    from .images import load_site_images

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
    return _save(montage_figure(rows, cfg.channels, dpi=110), path, dpi=110)


#: Width of one montage panel, inches.
PANEL_IN = 2.7


def montage_figure(rows, channels: Sequence[str], dpi: float = 110):
    """The montage figure: ``rows`` of ``(site, images by channel, nuclei, cells)``.

    A site is shrunk to fit its panel at ``dpi``; the outlines are drawn that
    many pixels wide (:func:`display_shrink`), so that none drops out of the
    shrunk picture (1-pixel lines of a 400 px site at 110 dpi vanished in part).
    """
    from matplotlib.patches import Patch

    plt = _plt()
    nch = len(channels)
    fig, axes = plt.subplots(len(rows), nch, figsize=(PANEL_IN * nch, 2.8 * len(rows) + 0.6), squeeze=False)
    for r, (site, images, nuc, cel) in enumerate(rows):
        for c, ch in enumerate(channels):
            ax = axes[r, c]
            width = display_shrink(max(np.shape(images[ch])), PANEL_IN, dpi)
            ax.imshow(outline_overlay(images[ch], nuc, cel, width=width), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{ch} channel", fontsize=9)
            ax.set_xlabel(f"{site.well} site {site.site}", fontsize=8)
            if c == 0:
                ax.set_ylabel(f"plate {site.plate}", fontsize=8)
    fig.legend(handles=[Patch(color=NUCLEUS_COLOR, label="nucleus outline"),
                        Patch(color=CELL_COLOR, label="cell outline")],
               loc="upper right", fontsize=9, ncol=2)
    fig.suptitle("Segmentation check: outlines over each channel (illumination-corrected)", fontsize=10, x=0.4)
    return fig


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


def _short(col: str) -> str:
    return "cells per well" if col == "Metadata_Object_Count" else col


def plate_heatmaps(wells_table, path, feature: Optional[str] = None) -> Optional[Path]:
    """Per plate: cell count and ``feature`` by well position (one PNG for the batch)."""
    fig = heatmap_figure(wells_table, feature)
    return None if fig is None else _save(fig, path, dpi=90)


def heatmap_figure(wells_table, feature: Optional[str] = None, ncols: int = 4):
    """Plates laid out in a grid of up to ``ncols`` columns, one block of rows per
    measurement (cell count, then ``feature``), one colour scale per block so that
    plates compare; None when the table is empty."""
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
    plates = sorted(df["Metadata_Plate"].astype(str).unique())
    ncols = max(1, min(ncols, len(plates)))
    prow = -(-len(plates) // ncols)  # rows of plates per measurement
    fig, axes = plt.subplots(prow * len(panels), ncols, figsize=(max(6.0, 3.6 * ncols + 0.8), 2.7 * prow * len(panels) + 0.7),
                             squeeze=False, layout="constrained")
    for b, col in enumerate(panels):
        vals = df[col].astype(float)
        vmin, vmax = np.nanmin(vals), np.nanmax(vals)
        im = None
        for i, plate in enumerate(plates):
            ax = axes[b * prow + i // ncols, i % ncols]
            sub = df[df["Metadata_Plate"].astype(str) == plate]
            grid = plate_grid(sub["Metadata_Well"], sub[col].astype(float))
            im = ax.imshow(grid, cmap="viridis", interpolation="nearest", vmin=vmin, vmax=vmax)
            ax.set_xticks(range(0, 24, 2), [str(j + 1) for j in range(0, 24, 2)], fontsize=7)
            ax.set_yticks(range(0, 16, 2), [ROWS[j] for j in range(0, 16, 2)], fontsize=7)
            ax.set_xlabel("plate column", fontsize=8)
            ax.set_ylabel("plate row", fontsize=8)
            ax.set_title(f"{plate}: {_short(col)}", fontsize=8)
        for i in range(len(plates), prow * ncols):
            axes[b * prow + i // ncols, i % ncols].set_visible(False)
        block = axes[b * prow:(b + 1) * prow, :].ravel().tolist()
        cb = fig.colorbar(im, ax=block, fraction=0.025, pad=0.02)
        cb.set_label(_short(col), fontsize=8)
    fig.suptitle("Plate maps by well position (white: no well imaged)\n"
                 "edge or gradient patterns point to plate effects", fontsize=10)
    return fig


def _channel_order(found: Sequence[str], channels: Optional[Sequence[str]]) -> list[str]:
    """``found`` in the order of ``channels`` (the config's; default CPJUMP1's), others after."""
    from .config import CPJUMP1_CHANNELS

    order = list(channels) if channels else list(CPJUMP1_CHANNELS)
    return [c for c in order if c in found] + sorted(c for c in found if c not in order)


def illumination_figure(illum_files: Sequence, path, channels: Optional[Sequence[str]] = None) -> Optional[Path]:
    """The illumination functions: one row per plate, one panel per channel.

    Channels are in the order of ``channels`` (pass the config's; without it the
    CPJUMP1 order DNA, ER, RNA, AGP, Mito, which is the default config's).
    """
    fig = illumination_fig(illum_files, channels)
    return None if fig is None else _save(fig, path, dpi=90)


def illumination_fig(illum_files: Sequence, channels: Optional[Sequence[str]] = None):
    """The figure of :func:`illumination_figure`; None without files."""
    import h5py

    plt = _plt()
    files = [Path(p) for p in illum_files if Path(p).exists()]
    if not files:
        return None
    with h5py.File(files[0], "r") as f:
        order = _channel_order(list(f.keys()), channels)
    # constrained layout keeps the title above the first row of panels and their colour bars
    fig, axes = plt.subplots(len(files), len(order), figsize=(2.5 * len(order) + 0.5, 2.3 * len(files) + 0.6),
                             squeeze=False, layout="constrained")
    for r, p in enumerate(files):
        with h5py.File(p, "r") as f:
            n_sites = f.attrs.get("n_sites")
            for c, ch in enumerate(order):
                ax = axes[r, c]
                im = ax.imshow(f[ch][()], cmap="magma")
                ax.set_xticks([])
                ax.set_yticks([])
                ax.set_title(f"{ch} channel", fontsize=8)
                ax.set_xlabel("image x", fontsize=7)
                ylab = p.stem.replace("_illum", "")
                ax.set_ylabel(f"{ylab}\n({n_sites} sites)" if c == 0 and n_sites is not None else
                              (ylab if c == 0 else "image y"), fontsize=7)
                cb = fig.colorbar(im, ax=ax, fraction=0.046)
                cb.ax.tick_params(labelsize=6)
                if c == len(order) - 1:
                    cb.set_label("divisor (>= 1)", fontsize=7)
    fig.suptitle("Illumination functions per plate: each image is divided by these (bright = corrected more)",
                 fontsize=9)
    return fig


def _relative(p, root: Path) -> Path:
    p, root = Path(p).resolve(), Path(root).resolve()
    return p.relative_to(root) if p.is_relative_to(root) else p


#: Title and caption of each known picture (by file stem) in index.html.
CAPTIONS = {
    "outlines_montage": (
        "Segmentation check",
        "One site per plate (rows) over each channel (columns), illumination-corrected, with nucleus outlines in "
        "magenta and cell outlines in green. Look for nuclei split in two or merged, and cells that leak into "
        "background."),
    "plate_heatmaps": (
        "Plate maps",
        "Cells per well and one intensity feature by well position, plates side by side on one colour scale per "
        "measurement. Edge rows or columns, gradients or a single odd plate point to plating or imaging effects."),
    "illumination": (
        "Illumination functions",
        "Per plate and channel, the smooth function each image is divided by (CellProfiler "
        "CorrectIlluminationCalculate). A bright centre and darker corners are normal vignetting; sharp structures "
        "or one plate unlike the others are not."),
    "fig4_map": (
        "Perturbation retrieval (CPJUMP1 Fig. 4)",
        "For each task, modality, cell type and time point: the box shows the mean average precision (mAP) of each "
        "perturbation's replicates against controls (or of matching perturbations), the red number above it the "
        "fraction retrieved, i.e. the share of perturbations with a q-value below the threshold. Higher is better."),
    "fig5_cosine": (
        "Directionality (CPJUMP1 Fig. 5)",
        "Cosine similarity of pairs of perturbations that target the same gene (blue) against pairs of different "
        "genes (gray, the null). The dashed and dotted lines are the null's 5th and 95th percentiles; the legend "
        "gives the share of same-gene pairs beyond each, e.g. compound and CRISPR knock-out of one gene leaning "
        "to negative cosine."),
}
#: Parquet tables up to this size get a CSV copy under ``qc/csv`` when none is next to them.
CSV_COPY_MAX_BYTES = 20 * 1024 * 1024


def _csv_for(parquet: Path, out_dir: Path) -> Optional[Path]:
    """A CSV of ``parquet``: the one next to it, else a copy under ``out_dir/qc/csv``
    (written when missing or older than the table; None for big tables)."""
    side = parquet.with_suffix(".csv")
    if side.exists():
        return side
    if not parquet.exists() or parquet.stat().st_size > CSV_COPY_MAX_BYTES:
        return None
    rel = _relative(parquet, out_dir)
    dst = out_dir / "qc" / "csv" / (rel.with_suffix(".csv") if not rel.is_absolute() else Path(parquet.stem + ".csv"))
    if dst.exists() and dst.stat().st_mtime_ns >= parquet.stat().st_mtime_ns:
        return dst
    import pandas as pd

    from ._atomic import atomic_path

    dst.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(dst) as tmp:
        pd.read_parquet(parquet).to_csv(tmp, index=False)
    return dst


def summary_html(summary) -> str:
    """The benchmark summary as an HTML table (a line saying so when there is none)."""
    if summary is None or len(summary) == 0:
        return "<p>No benchmark summary: the evaluation found no task to score (e.g. a single plate).</p>"
    df = summary.copy()
    df.columns = ["time point (h)" if c == "Metadata_timepoint" else str(c).replace("Metadata_", "")
                  for c in df.columns]
    return df.to_html(index=False, float_format=lambda v: f"{v:.3f}", border=0, classes="summary")


def write_index(out_dir, title: str, pictures: Sequence, tables: Sequence = (), summary=None) -> Path:
    """An index.html with the batch's pictures (title, caption), the benchmark summary
    table and the tables as Parquet and CSV links (paths relative to the page).

    ``summary`` is the evaluate summary table; when None, ``out_dir/evaluate/summary.parquet``
    is read if present.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    esc = html.escape
    parts = [f"<!doctype html><meta charset='utf-8'><title>{esc(title)}</title>",
             "<style>body{font-family:sans-serif;max-width:1200px;margin:auto}figcaption{color:#333;margin:4px 0 24px}"
             "table.summary td,table.summary th{padding:2px 8px;text-align:right}</style>",
             f"<h1>{esc(title)}</h1>"]
    if summary is None:
        sp = out_dir / "evaluate" / "summary.parquet"
        if sp.exists():
            import pandas as pd

            summary = pd.read_parquet(sp)
    parts.append("<h2>Benchmark summary</h2>")
    parts.append("<p>Per task, modality, cell type and time point: perturbations scored (n_classes), retrieved "
                 "(q below the threshold) and their mean mAP.</p>")
    parts.append(summary_html(summary))
    for p in pictures:
        if p is None:
            continue
        rel = _relative(p, out_dir)
        head, caption = CAPTIONS.get(Path(p).stem, (Path(p).stem.replace("_", " "), f"Picture {Path(p).name}."))
        parts.append(f"<h2>{esc(head)}</h2><figure><a href='{esc(str(rel))}'>"
                     f"<img src='{esc(str(rel))}' alt='{esc(head)}' style='max-width:100%'></a>"
                     f"<figcaption>{esc(caption)} <small>({esc(str(rel))})</small></figcaption></figure>")
    if tables:
        parts.append("<h2>Tables</h2><ul>")
        for t in tables:
            t = Path(t)
            rel = _relative(t, out_dir)
            links = f"<a href='{esc(str(rel))}'>{esc(str(rel))}</a>"
            if t.suffix == ".parquet":
                c = _csv_for(t, out_dir)
                if c is not None:
                    links += f" (<a href='{esc(str(_relative(c, out_dir)))}'>CSV</a>)"
            parts.append(f"<li>{links}</li>")
        parts.append("</ul>")
    path = out_dir / "index.html"
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text("\n".join(parts) + "\n")
    os.replace(tmp, path)
    return path
