#!/usr/bin/env python3
"""Compare hpc_profiler with a CellProfiler run on the same images.

    python scripts/compare_cellprofiler.py IMAGES_OR_LOADDATA CP_OUTPUT_DIR [--labels DIR] [--json OUT]

``IMAGES_OR_LOADDATA``: CellProfiler's ``load_data.csv`` (columns
``FileName_<Ch>``, ``PathName_<Ch>``; relative paths are relative to the
CSV's folder), or a folder holding one. ``CP_OUTPUT_DIR``: the folder
ExportToSpreadsheet wrote (``Image.csv``, ``Nuclei.csv``, ``Cells.csv``,
``Cytoplasm.csv``, or the same gzip-compressed). Row *i* of the load_data
CSV is CellProfiler's ``ImageNumber`` *i + 1*.

The project runs on each site with CellProfiler's input scaling (16-bit
value / 65535) and without the per-plate illumination functions (a single
CellProfiler analysis run has none; the DNA background is subtracted as the
CPJUMP1 pipeline does). Objects are matched

* by label overlap when CellProfiler's label images are found (``--labels``
  or CP_OUTPUT_DIR; SaveImages' ``<DNA file stem>_<nuclei|cells|cytoplasm>_labels.tif[f]``,
  float32 ``label / 2**31`` or integer): a pair is the largest overlap with
  IoU >= 0.5; "identical" means the same pixels;
* otherwise by centre (``Location_Center_X/Y`` within 1 px); "identical"
  then means the same area and centre (no pixel-level check possible).

Printed per compartment and family: objects matched / ours / CellProfiler's,
masks identical, and over the identical objects the median / p95 / max
relative difference ``|a - b| / max(|a|, |b|)`` of every column both have,
the number of values where exactly one side is NaN, and (for
RadialDistribution and Location_MaxIntensity) how many objects have a tied
centre or maximum pixel; those objects are left out of that family's
statistics and counted. Then the CellProfiler columns we do not write.
"""
from __future__ import annotations

import argparse
import csv
import gzip
import io
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

OBJECTS = ("Nuclei", "Cells", "Cytoplasm")
LABEL_SUFFIX = {"Nuclei": "nuclei_labels", "Cells": "cells_labels", "Cytoplasm": "cytoplasm_labels"}
#: CellProfiler columns that are bookkeeping, not features (see docs/feature_differences.md).
BOOKKEEPING_PREFIXES = ("ImageNumber", "ObjectNumber", "Number_Object_Number", "Parent_", "Children_")


# ----------------------------------------------------------------------------- reading
def read_csv_table(path: Path) -> tuple[list[str], np.ndarray, list[dict]]:
    """A CellProfiler CSV (plain or .gz): (numeric column names, float64 values, raw rows)."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        return [], np.zeros((0, 0)), []
    names, cols = [], []
    for k in rows[0]:
        vals = []
        try:
            for r in rows:
                v = r[k]
                vals.append(float("nan") if v in ("", "nan", "NaN") else float(v))
        except ValueError:
            continue  # text column (file names, metadata)
        names.append(k)
        cols.append(vals)
    return names, np.asarray(cols, dtype=np.float64).T, rows


def find_table(cp_dir: Path, name: str) -> Path:
    for cand in (cp_dir / f"{name}.csv", cp_dir / f"{name}.csv.gz"):
        if cand.is_file():
            return cand
    hits = sorted(cp_dir.glob(f"*{name}.csv")) + sorted(cp_dir.glob(f"*{name}.csv.gz"))
    if not hits:
        raise FileNotFoundError(f"{cp_dir}: no {name}.csv (ExportToSpreadsheet output)")
    return hits[0]


def read_loaddata(path: Path) -> list[dict]:
    """Sites of a LoadData CSV: dicts with ``files`` (channel -> path) and ``name``."""
    if path.is_dir():
        path = path / "load_data.csv"
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    sites = []
    for i, r in enumerate(rows):
        files = {}
        for k, v in r.items():
            if k.startswith("FileName_"):
                ch = k[len("FileName_"):]
                base = Path(r.get(f"PathName_{ch}", "") or ".")
                if not base.is_absolute():
                    base = path.parent / base
                files[ch] = base / v
        name = Path(files.get("DNA", next(iter(files.values())))).stem
        sites.append({"image_number": i + 1, "files": files, "name": name, "row": r})
    return sites


def read_labels(label_dir: Path, dna_stem: str, obj: str):
    """CellProfiler's label image of ``obj`` for a site, or None."""
    import tifffile

    for ext in (".tiff", ".tif"):
        p = label_dir / f"{dna_stem}_{LABEL_SUFFIX[obj]}{ext}"
        if p.is_file():
            a = tifffile.imread(p)
            if np.issubdtype(a.dtype, np.floating):
                a = np.rint(a.astype(np.float64) * 2.0**31)
            return a.astype(np.int32)
    return None


# ----------------------------------------------------------------------------- project
def run_project(site: dict, channels, cfg=None):
    """Labels and features of the project on one site, CellProfiler's input scaling."""
    from hpc_profiler import features, segmentation
    from hpc_profiler.config import Config
    from hpc_profiler.images import read_tiff, scale_to_unit

    cfg = cfg or Config()
    imgs = {ch: scale_to_unit(read_tiff(site["files"][ch]), cfg.input.full_scale) for ch in channels}
    seg = segmentation.segment_site(imgs, cfg.segmentation, cfg.illumination.dna_background)
    labels = {"Nuclei": seg.nuclei, "Cells": seg.cells, "Cytoplasm": seg.cytoplasm}
    feats = features.measure_site(imgs, labels, cfg.features, channels, unfiltered=seg.unfiltered)
    return imgs, seg, labels, feats


# ----------------------------------------------------------------------------- matching
def match_by_overlap(ours: np.ndarray, theirs: np.ndarray):
    """Pairs (our label, their label, identical) with IoU >= 0.5 (a unique pairing)."""
    n_o, n_t = int(ours.max()), int(theirs.max())
    if n_o == 0 or n_t == 0:
        return []
    pair = ours.astype(np.int64).ravel() * (n_t + 1) + theirs.ravel()
    c = np.bincount(pair, minlength=(n_o + 1) * (n_t + 1)).reshape(n_o + 1, n_t + 1)
    inter = c[1:, 1:]
    union = c.sum(1)[1:, None] + c.sum(0)[None, 1:] - inter
    iou = inter / np.maximum(union, 1)
    out = []
    for i in range(n_o):
        j = int(np.argmax(iou[i]))
        if iou[i, j] >= 0.5:
            same = inter[i, j] == c[i + 1].sum() == c[:, j + 1].sum()
            out.append((i + 1, j + 1, bool(same)))
    return out


def match_by_centre(our_xy: np.ndarray, our_area, cp_xy: np.ndarray, cp_area):
    out = []
    for i in range(len(our_xy)):
        if not len(cp_xy):
            break
        d = np.hypot(*(cp_xy - our_xy[i]).T)
        j = int(np.argmin(d))
        if d[j] <= 1.0:
            same = our_area[i] == cp_area[j] and d[j] < 1e-6
            out.append((i + 1, j + 1, bool(same)))
    return out


# ----------------------------------------------------------------------------- ties
def tied_objects(labels: np.ndarray, images: dict, n: int):
    """Objects whose radial centre (farthest pixel from the edge) or maximum pixel is tied.

    Returns (centre_tied bool[n + 1], {channel: max_tied bool[n + 1]}).
    """
    import scipy.ndimage as ndi

    centre = np.zeros(n + 1, bool)
    maxt = {ch: np.zeros(n + 1, bool) for ch in images}
    for k, sl in enumerate(ndi.find_objects(labels, max_label=n), start=1):
        if sl is None:
            continue
        sl = tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in sl)
        m = labels[sl] == k
        d = ndi.distance_transform_edt(np.pad(m, 1))[1:-1, 1:-1]
        centre[k] = int((d[m] == d[m].max()).sum()) > 1
        for ch, img in images.items():
            v = np.asarray(img)[sl][m]
            maxt[ch][k] = int((v == v.max()).sum()) > 1
    return centre, maxt


def family_of(col: str) -> str:
    head = col.split("_", 1)[0]
    if col.startswith("AreaShape_Zernike"):
        return "AreaShape(Zernike)"
    if col.startswith("Location_MaxIntensity"):
        return "Location(MaxIntensity)"
    return head


def is_bookkeeping(col: str) -> bool:
    return col.startswith(BOOKKEEPING_PREFIXES) or col.endswith("_Z") or "_Z_" in col


def rel_diff(a: np.ndarray, b: np.ndarray):
    """|a - b| / max(|a|, |b|) (0 where equal, NaN where exactly one is NaN)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        d = np.abs(a - b) / np.maximum(np.abs(a), np.abs(b))
    d = np.where(a == b, 0.0, d)
    both_nan = np.isnan(a) & np.isnan(b)
    return np.where(both_nan, 0.0, d)


# ----------------------------------------------------------------------------- compare
def compare(loaddata: Path, cp_dir: Path, label_dir: Path | None = None, cfg=None) -> dict:
    """Run the project on every site and compare with CellProfiler's tables.

    Returns a dict: ``objects`` (per compartment: matched, ours, theirs,
    identical), ``families`` (per (compartment, family): n_objects, n_values,
    median, p95, max, nan_mismatch, tied_objects), ``missing`` (per
    compartment: CellProfiler columns we lack), ``image`` (Image-table
    columns both have: max relative difference), ``worst`` (per family the
    column with the largest difference).
    """
    from hpc_profiler.config import Config

    cfg = cfg or Config()
    cfg.illumination.enabled = False
    sites = read_loaddata(Path(loaddata))
    cp_dir = Path(cp_dir)
    label_dir = Path(label_dir) if label_dir else cp_dir
    tables = {o: read_csv_table(find_table(cp_dir, o)) for o in OBJECTS}
    img_names, img_vals, _ = read_csv_table(find_table(cp_dir, "Image"))
    channels = [c for c in cfg.channels if all(c in s["files"] for s in sites)]
    objects = {o: {"matched": 0, "ours": 0, "theirs": 0, "identical": 0} for o in OBJECTS}
    diffs: dict = {}  # (obj, family) -> list of arrays
    worst: dict = {}
    nanmis: dict = {}
    tied: dict = {}
    nobj: dict = {}
    missing = {}
    image_diff = {}
    for site in sites:
        imgs, seg, labels, feats = run_project(site, channels, cfg)
        inum = site["image_number"]
        img_row = int(np.nonzero(img_vals[:, img_names.index("ImageNumber")] == inum)[0][0])
        ours_image = {k: v for k, v in seg.measurements.items() if k.startswith(("Count_", "Threshold_"))}
        ours_image.update({k[len("Image_"):]: v for k, v in feats.image.items()})
        for col, v in ours_image.items():
            if col in img_names:
                cpv = img_vals[img_row, img_names.index(col)]
                image_diff[col] = max(image_diff.get(col, 0.0), float(rel_diff(np.array(v), np.array(cpv))))
        for obj in OBJECTS:
            names, vals, _ = tables[obj]
            rows = vals[vals[:, names.index("ImageNumber")] == inum]
            cp_num = rows[:, names.index("ObjectNumber")].astype(int)
            tab = feats.objects[obj]
            ours_cols = {c[len(obj) + 1:]: j for j, c in enumerate(tab.names)}
            cp_cols = [c for c in names if not is_bookkeeping(c)]
            missing[obj] = sorted(set(missing.get(obj, set())) | {c for c in cp_cols if c not in ours_cols})
            our_lab = np.asarray(labels[obj])
            cp_lab = read_labels(label_dir, site["name"], obj)
            present = np.bincount(our_lab.ravel(), minlength=tab.values.shape[0] + 1)[1:] > 0
            objects[obj]["ours"] += int(present.sum())
            objects[obj]["theirs"] += len(cp_num)
            if cp_lab is not None:
                pairs = match_by_overlap(our_lab, cp_lab)
            else:
                xy = tab.values[:, [ours_cols["Location_Center_X"], ours_cols["Location_Center_Y"]]]
                cxy = rows[:, [names.index("Location_Center_X"), names.index("Location_Center_Y")]]
                pairs = match_by_centre(xy, tab.values[:, ours_cols["AreaShape_Area"]], cxy,
                                        rows[:, names.index("AreaShape_Area")])
            objects[obj]["matched"] += len(pairs)
            ident = [(i, j) for i, j, same in pairs if same]
            objects[obj]["identical"] += len(ident)
            if not ident:
                continue
            row_of = {int(n): r for r, n in enumerate(cp_num)}
            ident = [(i, j) for i, j in ident if j in row_of]
            oi = np.array([i - 1 for i, _ in ident])
            ci = np.array([row_of[j] for _, j in ident])
            n_lab = int(our_lab.max())
            centre_tied, max_tied = tied_objects(our_lab, imgs, n_lab)
            for c in cp_cols:
                if c not in ours_cols:
                    continue
                fam = family_of(c)
                a = tab.values[oi, ours_cols[c]].astype(np.float64)
                b = rows[ci, names.index(c)]
                keep = np.ones(len(oi), bool)
                if fam == "RadialDistribution":
                    keep = ~centre_tied[oi + 1]
                elif fam == "Location(MaxIntensity)":
                    ch = c.rsplit("_", 1)[1]
                    keep = ~max_tied[ch][oi + 1] if ch in max_tied else keep
                key = (obj, fam)
                tied.setdefault(key, set()).update((inum, int(x)) for x in oi[~keep])
                nobj.setdefault(key, set()).update((inum, int(x)) for x in oi[keep])
                d = rel_diff(a[keep], b[keep])
                mis = np.isnan(d)
                nanmis[key] = nanmis.get(key, 0) + int(mis.sum())
                d = d[~mis]
                diffs.setdefault(key, []).append(d)
                if d.size and d.max() > worst.get(key, ("", -1.0))[1]:
                    worst[key] = (c, float(d.max()))
    fams = {}
    for key, parts in diffs.items():
        d = np.concatenate(parts) if parts else np.zeros(0)
        fams[key] = {
            "n_objects": len(nobj.get(key, ())),
            "n_values": int(d.size),
            "median": float(np.median(d)) if d.size else float("nan"),
            "p95": float(np.percentile(d, 95)) if d.size else float("nan"),
            "max": float(d.max()) if d.size else float("nan"),
            "nan_mismatch": nanmis.get(key, 0),
            "tied_objects": len(tied.get(key, ())),
            "worst_column": worst.get(key, ("", 0.0))[0],
        }
    return {"objects": objects, "families": fams, "missing": missing, "image": image_diff}


def print_report(res: dict, out=sys.stdout) -> None:
    print("objects      matched  ours  CellProfiler  identical masks", file=out)
    for obj, o in res["objects"].items():
        pct = 100.0 * o["identical"] / max(o["theirs"], 1)
        print(f"{obj:<12} {o['matched']:>7} {o['ours']:>5} {o['theirs']:>13} {o['identical']:>9} ({pct:.2f}%)",
              file=out)
    print("\nImage measurements (max relative difference over the sites):", file=out)
    groups: dict = {}
    for k, v in sorted(res["image"].items()):
        if k.startswith(("Count_", "Threshold_")):
            print(f"  {k:<40} {v:.3g}", file=out)
        else:
            groups.setdefault(k.split("_", 1)[0], []).append(v)
    for fam, vals in sorted(groups.items()):
        vals = np.asarray(vals)
        print(f"  {fam + '_* (' + str(vals.size) + ' columns)':<40} median {np.median(vals):.3g}, max {vals.max():.3g}",
              file=out)
    print("\nper family on identical masks: relative difference |a-b|/max(|a|,|b|)", file=out)
    print(f"{'compartment':<10} {'family':<24} {'objects':>7} {'values':>8} {'median':>9} {'p95':>9} {'max':>9}"
          f" {'NaN-mism':>8} {'tied':>5}  worst column", file=out)
    for (obj, fam), f in sorted(res["families"].items()):
        print(f"{obj:<10} {fam:<24} {f['n_objects']:>7} {f['n_values']:>8} {f['median']:>9.2e} {f['p95']:>9.2e}"
              f" {f['max']:>9.2e} {f['nan_mismatch']:>8} {f['tied_objects']:>5}  {f['worst_column']}", file=out)
    for obj, cols in res["missing"].items():
        if cols:
            print(f"\n{obj}: {len(cols)} CellProfiler column(s) we do not write: {', '.join(cols[:40])}"
                  f"{' ...' if len(cols) > 40 else ''}", file=out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("images_or_loaddata", help="CellProfiler load_data.csv or a folder holding one")
    ap.add_argument("cp_output_dir", help="folder of CellProfiler's Image/Nuclei/Cells/Cytoplasm CSVs")
    ap.add_argument("--labels", help="folder of CellProfiler's saved label images (default: CP_OUTPUT_DIR)")
    ap.add_argument("--json", help="also write the numbers as JSON here")
    args = ap.parse_args(argv)
    try:
        res = compare(Path(args.images_or_loaddata), Path(args.cp_output_dir), args.labels)
    except (FileNotFoundError, KeyError, ValueError) as exc:
        print(f"compare_cellprofiler: {exc}", file=sys.stderr)
        return 2
    print_report(res)
    if args.json:
        fam = {f"{o}/{f}": v for (o, f), v in res["families"].items()}
        Path(args.json).write_text(json.dumps({**res, "families": fam}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
