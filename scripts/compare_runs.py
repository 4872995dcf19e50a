"""Compare two runs' outputs by content: ``python scripts/compare_runs.py DIR_A DIR_B``.

DIR_A and DIR_B are two ``output_dir`` folders of the same batch (e.g. main's
demo and a branch's). Compared, file by file under the same relative path:

* site files (``sites/**/*.h5``) and illumination functions (``illum/*.h5``):
  every dataset (features, feature names, object numbers, parents, image
  measurements, label images), bit for bit; attributes that record a run
  (seconds, time, backend, version) are not compared, the rest are;
* ``profiles/*.parquet`` and ``evaluate/*.parquet``: columns, dtypes and
  values, bit for bit (NaN equal to NaN).

Prints one line per difference (a file on one side only, a dataset or column
that differs, with the largest difference) and a summary; exit status 0 when
everything compared is identical, 1 otherwise.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

#: attributes that describe the run, not the result (and every ``seconds*`` timing)
#: (``inputs_digest``: the sha1 of the input files' absolute paths, so it differs between two checkouts of the
#: same batch in two folders)
RUN_ATTRS = {"seconds", "time", "backend", "version", "created", "inputs_digest"}


def _files(root: Path, pattern: str) -> set:
    return {str(p.relative_to(root)) for p in root.glob(pattern) if not p.name.startswith(".")}


def _arrays_equal(a: np.ndarray, b: np.ndarray) -> tuple[bool, str]:
    if a.shape != b.shape or a.dtype != b.dtype:
        return False, f"shape/dtype {a.shape} {a.dtype} vs {b.shape} {b.dtype}"
    if a.dtype.kind in "fc":
        same = np.array_equal(a, b, equal_nan=True)
        if not same:
            diff = np.abs(a.astype(np.float64) - b.astype(np.float64))
            return False, f"max abs difference {np.nanmax(diff):.3g} at {int(np.sum(~np.isclose(a, b, equal_nan=True)))} value(s)"
        return True, ""
    same = np.array_equal(a, b)
    return same, "" if same else f"{int(np.sum(a != b)) if a.shape else 1} value(s) differ"


def compare_h5(pa: Path, pb: Path) -> list[str]:
    out = []
    with h5py.File(pa, "r") as fa, h5py.File(pb, "r") as fb:
        names_a, names_b = [], []
        fa.visit(names_a.append)
        fb.visit(names_b.append)
        for name in sorted(set(names_a) ^ set(names_b)):
            out.append(f"{name}: only in {'A' if name in names_a else 'B'}")
        for name in sorted(set(names_a) & set(names_b)):
            oa, ob = fa[name], fb[name]
            if isinstance(oa, h5py.Dataset) and isinstance(ob, h5py.Dataset):
                same, why = _arrays_equal(oa[()] if oa.shape else np.asarray(oa[()]),
                                          ob[()] if ob.shape else np.asarray(ob[()]))
                if not same:
                    out.append(f"{name}: {why}")
        for key in sorted(k for k in set(fa.attrs) | set(fb.attrs) if k not in RUN_ATTRS and not k.startswith("seconds")):
            va, vb = fa.attrs.get(key), fb.attrs.get(key)
            if not np.array_equal(np.asarray(va), np.asarray(vb)):
                out.append(f"attribute {key}: {va!r} vs {vb!r}")
    return out


def compare_parquet(pa: Path, pb: Path) -> list[str]:
    a, b = pd.read_parquet(pa), pd.read_parquet(pb)
    if list(a.columns) != list(b.columns):
        only = sorted(set(a.columns) ^ set(b.columns))
        return [f"columns differ ({len(a.columns)} vs {len(b.columns)}; not in both: {only[:5]})"]
    if len(a) != len(b):
        return [f"rows {len(a)} vs {len(b)}"]
    out = []
    for col in a.columns:
        x, y = a[col], b[col]
        if x.dtype != y.dtype:
            out.append(f"{col}: dtype {x.dtype} vs {y.dtype}")
            continue
        if x.dtype.kind in "fciub":
            same, why = _arrays_equal(x.to_numpy(), y.to_numpy())
        else:
            same = x.fillna("\0nan").astype(str).equals(y.fillna("\0nan").astype(str))
            why = "" if same else f"{int((x.astype(str) != y.astype(str)).sum())} value(s) differ"
        if not same:
            out.append(f"{col}: {why}")
    return out


def compare(a: Path, b: Path, out=print) -> int:
    """Compare two output folders; returns the number of files that differ or exist on one side only."""
    bad = 0
    counts = {}
    for what, pattern, fn in (("site files", "sites/*/*/*.h5", compare_h5), ("illumination", "illum/*.h5", compare_h5),
                              ("profiles", "profiles/*.parquet", compare_parquet),
                              ("evaluate", "evaluate/*.parquet", compare_parquet)):
        fa, fb = _files(a, pattern), _files(b, pattern)
        for rel in sorted(fa ^ fb):
            out(f"{rel}: only in {'A' if rel in fa else 'B'}")
            bad += 1
        same = 0
        for rel in sorted(fa & fb):
            diffs = fn(a / rel, b / rel)
            if diffs:
                bad += 1
                for d in diffs[:10]:
                    out(f"{rel}: {d}")
                if len(diffs) > 10:
                    out(f"{rel}: ... {len(diffs) - 10} more")
            else:
                same += 1
        counts[what] = (same, len(fa | fb))
    out("identical: " + ", ".join(f"{what} {s}/{n}" for what, (s, n) in counts.items()))
    if not any(n for _, n in counts.values()):
        out("nothing to compare: are these output folders?")
        return 1
    return bad


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("dir_a", type=Path)
    p.add_argument("dir_b", type=Path)
    args = p.parse_args(argv)
    bad = compare(args.dir_a, args.dir_b)
    print("SAME" if bad == 0 else f"DIFFERENT: {bad} file(s)")
    return 0 if bad == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
