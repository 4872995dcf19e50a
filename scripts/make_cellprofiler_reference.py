#!/usr/bin/env python3
"""Regenerate the CellProfiler reference set under ``tests/data/cellprofiler/``.

    python scripts/make_cellprofiler_reference.py [--cellprofiler VENV/bin/cellprofiler]
        [--pipeline ../shared/cellprofiler/cpjump1_5ch_labels.cppipe] [--out tests/data/cellprofiler]

1. Writes a few synthetic 5-channel sites (``hpc_profiler.synth``, CPJUMP1's
   intensity range: nuclei well above the 0.014 lower threshold bound) as
   16-bit TIFFs, cropped from 540 x 540 sites so that objects keep their
   CPJUMP1 size while the files stay small, plus crops of a real fluorescence
   field (CellProfiler's ExampleFly images, see ``REAL_SITES``; re-cut with
   ``--example-fly DIR``, otherwise the committed crops are reused), with a
   CellProfiler ``load_data.csv``.
2. Runs headless CellProfiler 5 (installed outside the repository with
   ``../shared/cellprofiler/install_cellprofiler.sh VENV``) on them with the
   CPJUMP1 pipeline variant that also saves the label images.
3. Stores CellProfiler's per-object and Image CSVs gzip-compressed and its
   label images (float32 ``label / 2**31``) as zlib-compressed uint16 TIFFs,
   plus ``provenance.json`` (CellProfiler, scikit-image, NumPy versions and the
   pipeline's MD5).

The tests (``tests/test_cellprofiler_reference.py``) and
``scripts/compare_cellprofiler.py`` read the result; CI never needs
CellProfiler. Nothing here reaches a shell: subprocess gets an argument list.
"""
from __future__ import annotations

import argparse
import csv
import gzip
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import tifffile

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hpc_profiler.config import CPJUMP1_CHANNELS  # noqa: E402
from hpc_profiler.synth import synthesize_site  # noqa: E402

#: (name, synth seed, n_cells of the 540 x 540 site, crop: row0, col0, size)
SITES = [
    ("synth1", 11, 90, (0, 0, 300)),
    ("synth2", 12, 90, (120, 200, 300)),
    ("synth3", 13, 110, (240, 100, 300)),
]
#: Real fluorescence fields: CellProfiler's ExampleFly images (Drosophila Kc167 cells; D = DNA,
#: F = actin, R = a third stain), 8-bit, from the CellProfiler repository (BSD-3-Clause;
#: cellprofiler/data/examples/ExampleFly/images at commit 7281de9a1a3091616ecdc1bcea8ef6f49878d4bd).
#: Stored as uint16 = 8-bit value * 257, which CellProfiler's and our division by 65535 map to
#: exactly value / 255. The five CPJUMP1 channels are filled with the three stains.
#: (name, source field, crop row0, col0, size)
REAL_SITES = [
    ("fly1", "01_POS002", 0, 0, 300),
    ("fly2", "01_POS002", 350, 350, 300),
]
FLY_CHANNELS = {"DNA": "D", "ER": "F", "RNA": "R", "AGP": "F", "Mito": "R"}
LABEL_SUFFIX = {"Nuclei": "nuclei_labels", "Cells": "cells_labels", "Cytoplasm": "cytoplasm_labels"}


def write_real_inputs(img_dir: Path, fly_dir: Path | None) -> list[dict]:
    """The real fields' crops: cut from ExampleFly's TIFFs when ``fly_dir`` is given, else
    the committed crops are used as they are; return their load_data rows."""
    rows = []
    for i, (name, field, r0, c0, size) in enumerate(REAL_SITES):
        row = {"Metadata_Plate": "REF", "Metadata_Well": name, "Metadata_Site": str(len(SITES) + i + 1)}
        for ch, stain in FLY_CHANNELS.items():
            fn = f"{name}_{ch}.tif"
            if fly_dir is not None:
                raw = tifffile.imread(fly_dir / f"{field}_{stain}.TIF")
                if raw.dtype != np.uint8:
                    raise ValueError(f"{fly_dir / f'{field}_{stain}.TIF'}: expected 8-bit, got {raw.dtype}")
                crop = raw[r0 : r0 + size, c0 : c0 + size].astype(np.uint16) * np.uint16(257)
                tifffile.imwrite(img_dir / fn, crop, compression="zlib")
            elif not (img_dir / fn).is_file():
                raise FileNotFoundError(f"{img_dir / fn}: missing; pass --example-fly DIR to cut it")
            row[f"FileName_{ch}"] = fn
        rows.append(row)
    return rows


def write_inputs(img_dir: Path) -> list[dict]:
    """Write the synthetic sites' TIFFs; return the load_data rows (file names only)."""
    img_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, (name, seed, n_cells, (r0, c0, size)) in enumerate(SITES):
        s = synthesize_site(seed, size=540, n_cells=n_cells, channels=list(CPJUMP1_CHANNELS))
        row = {"Metadata_Plate": "REF", "Metadata_Well": name, "Metadata_Site": str(i + 1)}
        for ch in CPJUMP1_CHANNELS:
            fn = f"{name}_{ch}.tif"
            tifffile.imwrite(img_dir / fn, s.images[ch][r0 : r0 + size, c0 : c0 + size], compression="zlib")
            row[f"FileName_{ch}"] = fn
        rows.append(row)
    return rows


def write_loaddata(path: Path, rows: list[dict], image_dir: Path) -> None:
    cols = ["Metadata_Plate", "Metadata_Well", "Metadata_Site"]
    for ch in CPJUMP1_CHANNELS:
        cols += [f"FileName_{ch}", f"PathName_{ch}"]
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=cols)
        w.writeheader()
        for r in rows:
            w.writerow({**r, **{f"PathName_{ch}": str(image_dir) for ch in CPJUMP1_CHANNELS}})


def label_tiff_to_uint16(path: Path) -> np.ndarray:
    """CellProfiler's float32 label image (``label / 2**31``) -> integer labels."""
    f = tifffile.imread(path).astype(np.float64)
    lab = np.rint(f * 2.0**31)
    if lab.max() > 65535 or lab.min() < 0:
        raise ValueError(f"{path}: labels outside 0..65535")
    return lab.astype(np.uint16)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cellprofiler", default="/work/cpvenv/bin/cellprofiler")
    ap.add_argument("--pipeline", default=str(ROOT.parent / "shared/cellprofiler/cpjump1_5ch_labels.cppipe"))
    ap.add_argument("--out", default=str(ROOT / "tests/data/cellprofiler"))
    ap.add_argument("--example-fly", help="folder of CellProfiler's ExampleFly images (to re-cut the real crops)")
    args = ap.parse_args(argv)
    out = Path(args.out)
    pipeline = Path(args.pipeline)
    if not pipeline.is_file():
        print(f"pipeline not found: {pipeline}", file=sys.stderr)
        return 2
    img_dir = out / "images"
    for name, *_ in SITES:
        for old in img_dir.glob(f"{name}_*.tif"):
            old.unlink()
    rows = write_inputs(img_dir)
    rows += write_real_inputs(img_dir, Path(args.example_fly) if args.example_fly else None)
    # committed load_data.csv: PathName relative to the reference folder
    write_loaddata(out / "load_data.csv", rows, Path("images"))
    cp_out = out / "cellprofiler"
    if cp_out.exists():
        shutil.rmtree(cp_out)
    (cp_out / "labels").mkdir(parents=True)
    with tempfile.TemporaryDirectory() as tmp:
        tin, tout = Path(tmp) / "in", Path(tmp) / "out"
        tin.mkdir()
        tout.mkdir()
        write_loaddata(tin / "load_data.csv", rows, img_dir.resolve())
        cmd = [args.cellprofiler, "-c", "-r", "-e", "imageio_reader", "-p", str(pipeline),
               "-i", str(tin), "-o", str(tout)]
        print(" ".join(cmd), flush=True)
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0:
            print(res.stdout[-4000:], res.stderr[-4000:], sep="\n", file=sys.stderr)
            return 1
        for table in ("Image", "Nuclei", "Cells", "Cytoplasm"):
            src = tout / f"{table}.csv"
            with open(src, "rb") as fi, gzip.GzipFile(cp_out / f"{table}.csv.gz", "wb", mtime=0) as fo:
                shutil.copyfileobj(fi, fo)
        for name in [x[0] for x in SITES] + [x[0] for x in REAL_SITES]:
            for obj, suffix in LABEL_SUFFIX.items():
                src = tout / f"{name}_DNA_{suffix}.tiff"
                dst = cp_out / "labels" / f"{name}_DNA_{suffix}.tif"
                tifffile.imwrite(dst, label_tiff_to_uint16(src), compression="zlib")
    versions = subprocess.run(
        [str(Path(args.cellprofiler).parent / "python"), "-c",
         "import importlib.metadata as m, json; print(json.dumps({p: m.version(p) for p in "
         "['cellprofiler-nightly', 'cellprofiler-core-nightly', 'cellprofiler-library-nightly', "
         "'centriole-nightly', 'scikit-image', 'numpy', 'scipy']}))"],
        capture_output=True, text=True, check=True,
    ).stdout
    prov = {
        "pipeline": pipeline.name,
        "pipeline_md5": hashlib.md5(pipeline.read_bytes()).hexdigest(),
        "command": "cellprofiler -c -r -e imageio_reader -p PIPELINE -i IN -o OUT",
        "versions": json.loads(versions),
        "sites": [{"name": n, "synth_seed": s, "n_cells": k, "crop_row_col_size": list(c)} for n, s, k, c in SITES],
        "inputs": "hpc_profiler.synth.synthesize_site(seed, size=540, n_cells, all 5 channels), cropped",
        "real_sites": [
            {"name": n,
             "source": "CellProfiler repository (BSD-3-Clause), commit 7281de9a1a3091616ecdc1bcea8ef6f49878d4bd, "
             f"cellprofiler/data/examples/ExampleFly/images/{f}_<D|F|R>.TIF (8-bit) * 257",
             "channels": FLY_CHANNELS, "crop_row_col_size": [r, c, z]}
            for n, f, r, c, z in REAL_SITES
        ],
    }
    (out / "provenance.json").write_text(json.dumps(prov, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
