"""scripts/compare_runs.py: outputs compared by content, a changed value or a missing file reported."""
from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
from script_module import SCRIPTS, load_script

SCRIPT = SCRIPTS / "compare_runs.py"


def _load():
    return load_script("compare_runs")


def _run(root: Path) -> Path:
    site = root / "sites" / "P1" / "B" / "P1_B03_s1.h5"
    site.parent.mkdir(parents=True)
    with h5py.File(site, "w") as f:
        f.create_dataset("objects/Cells/features", data=np.arange(6, dtype=np.float32).reshape(2, 3))
        f.attrs["config_hash"] = "abc"
        f.attrs["seconds_total"] = 1.0
    (root / "profiles").mkdir()
    pd.DataFrame({"Metadata_Well": ["B03", "B04"], "Cells_X": [1.0, np.nan]}).to_parquet(
        root / "profiles" / "well_aggregated.parquet")
    (root / "evaluate").mkdir()
    pd.DataFrame({"average_precision": [0.5, 0.25]}).to_parquet(root / "evaluate" / "queries.parquet")
    return root


def test_same_runs_are_same_and_differences_are_named(tmp_path):
    cr = _load()
    a = _run(tmp_path / "a")
    b = tmp_path / "b"
    shutil.copytree(a, b)
    with h5py.File(b / "sites" / "P1" / "B" / "P1_B03_s1.h5", "a") as f:
        f.attrs["seconds_total"] = 2.0  # a timing: not a difference
    lines: list = []
    assert cr.compare(a, b, out=lines.append) == 0, lines
    assert "site files 1/1" in lines[-1] and "profiles 1/1" in lines[-1] and "evaluate 1/1" in lines[-1]

    with h5py.File(b / "sites" / "P1" / "B" / "P1_B03_s1.h5", "a") as f:
        f["objects/Cells/features"][1, 2] = 5.5
    pd.DataFrame({"Metadata_Well": ["B03", "B04"], "Cells_X": [1.0, 2.0]}).to_parquet(
        b / "profiles" / "well_aggregated.parquet")
    (b / "evaluate" / "queries.parquet").unlink()
    lines = []
    assert cr.compare(a, b, out=lines.append) == 3
    text = "\n".join(lines)
    assert "P1_B03_s1.h5: objects/Cells/features: max abs difference 0.5" in text
    assert "well_aggregated.parquet: Cells_X" in text
    assert "evaluate/queries.parquet: only in A" in text
