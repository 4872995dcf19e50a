"""Reduce stage: site files -> well profiles under MPI, checked against pycytominer.

The batch is seeded random single-cell data with realistic CellProfiler feature
names (``../shared/data/cellprofiler_reference`` when present, a built-in list
otherwise), written with :func:`hpc_profiler.sitefile.write_site_file`. The
reference is pycytominer (aggregate -> normalize -> feature_select) run on the
same single cells with the pipeline's configured parameters.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import yaml

from hpc_profiler import profiles as P
from hpc_profiler.config import load_config
from hpc_profiler.mpi import SerialComm
from hpc_profiler.reduce import ReduceError, main, reduce_batch
from hpc_profiler.sitefile import ObjectTable, site_file_path, write_site_file

REF_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "cellprofiler_reference"
COMPARTMENTS = ("Cells", "Cytoplasm", "Nuclei")
CHANNELS = ("DNA", "ER", "RNA", "AGP", "Mito")
NON_FEATURES = ("ImageNumber", "ObjectNumber", "Location_", "Parent_", "Children_", "Number_Object_Number")


# --------------------------------------------------------------------------- synthetic batch
def feature_names(per_compartment: int = 30, seed: int = 0) -> list[str]:
    """Realistic feature names: a seeded sample of the CellProfiler reference columns.

    Always includes blocklisted (``Nuclei_Correlation_Manders_*``), near-constant
    (``AreaShape_EulerNumber``) and integer (``Neighbors_NumberOfNeighbors_*``) features.
    """
    rng = np.random.default_rng(seed)
    names = []
    for comp in COMPARTMENTS:
        f = REF_DIR / f"{comp}_columns.txt"
        if f.exists():
            cols = [c.strip() for c in f.read_text().splitlines() if c.strip()]
        else:  # the same naming pattern, built in
            cols = [f"Intensity_{m}_{ch}" for m in ("MeanIntensity", "MedianIntensity", "StdIntensity")
                    for ch in CHANNELS]
            cols += [f"Texture_{t}_{ch}_{s}_00_256" for t in ("Contrast", "Entropy") for ch in CHANNELS
                     for s in (3, 5, 10)]
            cols += [f"Granularity_{k}_{ch}" for k in range(1, 17) for ch in CHANNELS]
            cols += ["AreaShape_Area", "AreaShape_EulerNumber", "Neighbors_NumberOfNeighbors_Adjacent"]
            cols += [f"Correlation_Manders_{a}_{b}" for a in CHANNELS for b in CHANNELS if a != b]
        cols = [c for c in cols if not c.startswith(NON_FEATURES)]
        cols = [c for c in cols if not any(bf in c for bf in ("Brightfield", "BFHigh", "BFLow"))]
        forced = ["AreaShape_EulerNumber"] + [c for c in cols if c.startswith("Neighbors_NumberOfNeighbors")][:1]
        if comp == "Nuclei":
            forced += ["Correlation_Manders_AGP_DNA", "Correlation_Manders_DNA_ER"]
        rest = sorted(set(cols) - set(forced))
        pick = forced + [rest[i] for i in sorted(rng.choice(len(rest), per_compartment - len(forced), replace=False))]
        names += [f"{comp}_{c}" for c in pick]
    return names


def well_name(i: int) -> str:
    return f"{'ABCDEFGHIJKLMNOP'[i // 24]}{i % 24 + 1:02d}"


def make_batch(root, cfg_hash: str, n_plates=2, n_wells=12, n_sites=2, cells_per_site=30, n_negcon=4, seed=0,
               per_compartment=30):
    """Write a seeded batch of site files under ``root/sites`` and its well metadata CSV.

    Returns ``(cells, metadata, csv_path)``: the single-cell table exactly as
    stored (float32 values), the per-well metadata, and the CSV path.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    names = feature_names(per_compartment, seed)
    nf = len(names)
    group = np.arange(nf) % 8
    base = rng.uniform(0.5, 100.0, nf)
    scale = rng.uniform(0.2, 2.0, nf) * base / 10 * rng.choice([-1.0, 1.0], nf)  # anti-correlated pairs too
    mix = rng.uniform(0.0, 1.2, nf)  # a second factor: correlations spread around the 0.9 threshold
    noise = rng.uniform(0.05, 1.0, nf) * base / 10
    euler = [i for i, n in enumerate(names) if n.endswith("EulerNumber")]
    counts_ = [i for i, n in enumerate(names) if "NumberOfNeighbors" in n]
    sparse = [i for i, n in enumerate(names) if "Granularity" in n][:2]
    holey = [i for i, n in enumerate(names) if "Texture" in n][:3]
    cells_frames, meta_rows = [], []
    for p in range(n_plates):
        plate = f"BR0011699{p + 1}"
        for w in range(n_wells):
            well = well_name(w)
            negcon = w < n_negcon
            factors = rng.normal(0, 0.15 if negcon else 1.0, 8)
            sparse_well = (not negcon) and rng.random() < 0.3
            meta_rows.append({
                "Metadata_Plate": plate, "Metadata_Well": well,
                "Metadata_broad_sample": "DMSO" if negcon else f"BRD-K{w:08d}-001-01-1",
                "Metadata_gene": "" if negcon else f"GENE{w % 5}",
                "Metadata_pert_type": "control" if negcon else "trt",
                "Metadata_control_type": "negcon" if negcon else "",
                "Metadata_modality": "compound", "Metadata_cell_type": "U2OS", "Metadata_timepoint": 24,
            })
            for s in range(1, n_sites + 1):
                n = 0 if (p == 0 and w == n_wells - 1 and s == n_sites) else int(rng.poisson(cells_per_site))
                effect = scale * (factors[group] + mix * factors[(group + 1) % 8])
                x = base + effect + noise * rng.standard_normal((n, nf))
                x[:, euler] = (rng.random((n, len(euler))) > 0.02).astype(float)
                x[:, counts_] = rng.poisson(3 + np.abs(factors[0]), (n, len(counts_)))
                if sparse_well:
                    x[:, sparse] = np.nan
                x[:, holey] = np.where(rng.random((n, len(holey))) < 0.1, np.nan, x[:, holey])
                x = x.astype(np.float32)
                objs = {}
                for comp in COMPARTMENTS:
                    idx = [i for i, nm in enumerate(names) if nm.startswith(comp + "_")]
                    objs[comp] = ObjectTable([names[i] for i in idx], x[:, idx], np.arange(1, n + 1))
                write_site_file(site_file_path(root, plate, well, s), plate=plate, well=well, site=s,
                                config_hash=cfg_hash, backend="numpy", objects=objs, image={"Count_Cells": n})
                df = pd.DataFrame(x, columns=names)
                df.insert(0, "ObjectNumber", np.arange(1, n + 1))
                df.insert(0, "Metadata_Site", str(s))
                df.insert(0, "Metadata_Well", well)
                df.insert(0, "Metadata_Plate", plate)
                cells_frames.append(df)
    meta = pd.DataFrame(meta_rows)
    csv = root / "well_metadata.csv"
    meta.to_csv(csv, index=False)
    return pd.concat(cells_frames, ignore_index=True), meta, csv


def write_config(path, out, meta_csv, **reduce_opts) -> Path:
    cfg = {"name": "reduce-test", "output_dir": str(out), "input": {"well_metadata_csv": str(meta_csv)}}
    if reduce_opts:
        cfg["reduce"] = reduce_opts
    Path(path).write_text(yaml.safe_dump(cfg))
    return Path(path)


def run_dir(base, batch, name, copy=False, **reduce_opts) -> Path:
    """An output folder whose ``sites`` is the batch's (linked, or copied to be damaged)."""
    out = Path(base) / name
    out.mkdir(parents=True)
    if copy:
        shutil.copytree(batch["root"] / "sites", out / "sites")
    else:
        (out / "sites").symlink_to(batch["root"] / "sites", target_is_directory=True)
    return write_config(out / "config.yaml", out, batch["csv"], **reduce_opts)


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    root = tmp_path_factory.mktemp("reduce_batch")
    cfg_hash = load_config(write_config(root / "hash.yaml", root, root / "x.csv")).hash()
    cells, meta, csv = make_batch(root, cfg_hash)
    return {"root": root, "cells": cells, "meta": meta, "csv": csv}


@pytest.fixture(scope="module")
def serial_run(batch, tmp_path_factory):
    cfg_path = run_dir(tmp_path_factory.mktemp("serial"), batch, "out", also_mean=True, csv=True)
    cfg = load_config(cfg_path)
    paths = reduce_batch(cfg, SerialComm())
    return cfg, paths


def read(paths, name):
    return pd.read_parquet(paths[name])


# --------------------------------------------------------------------------- pycytominer reference
def pycytominer_reference(cells, meta, cfg):
    pcm = pytest.importorskip("pycytominer")
    rc, fs = cfg.reduce, cfg.reduce.feature_select
    agg = pcm.aggregate(cells, strata=P.STRATA, operation=rc.aggregate, compute_object_count=True,
                        object_feature="ObjectNumber")
    ann = agg.merge(meta, on=P.STRATA, how="left")
    norm = pd.concat([
        pcm.normalize(plate_df, features="infer", meta_features="infer", method=rc.normalize_method,
                      samples="Metadata_control_type == 'negcon'", mad_robustize_epsilon=rc.mad_robustize_epsilon)
        for _, plate_df in ann.groupby("Metadata_Plate", sort=True)
    ])
    sel = pcm.feature_select(norm, features="infer", operation=list(fs.operations), freq_cut=fs.freq_cut,
                             unique_cut=fs.unique_cut, min_variance=fs.min_variance,
                             corr_threshold=fs.corr_threshold, corr_method=fs.corr_method, na_cutoff=fs.na_cutoff)
    return agg, norm, sel


def assert_same_table(ours, ref, what, rtol=1e-6, atol=1e-6):
    key = P.STRATA
    ours = ours.sort_values(key).reset_index(drop=True)
    ref = ref.sort_values(key).reset_index(drop=True)
    wells = [list(t[key].astype(str).itertuples(index=False)) for t in (ours, ref)]
    assert wells[0] == wells[1], f"{what}: different wells"
    fo, fr = P.feature_columns(ours), P.feature_columns(ref)
    assert set(fo) == set(fr), f"{what}: feature sets differ: only ours {sorted(set(fo) - set(fr))[:5]}, " \
                               f"only pycytominer {sorted(set(fr) - set(fo))[:5]}"
    np.testing.assert_allclose(ours[fr].to_numpy(float), ref[fr].to_numpy(float), rtol=rtol, atol=atol,
                               equal_nan=True, err_msg=what)


def test_serial_reduce_matches_pycytominer(batch, serial_run):
    cfg, paths = serial_run
    agg_ref, norm_ref, sel_ref = pycytominer_reference(batch["cells"], batch["meta"], cfg)
    agg = read(paths, "well_aggregated")
    assert_same_table(agg, agg_ref, "aggregate (median)")
    np.testing.assert_array_equal(agg.sort_values(P.STRATA)[P.COUNT_COLUMN].to_numpy(),
                                  agg_ref.sort_values(P.STRATA)[P.COUNT_COLUMN].to_numpy())
    assert_same_table(read(paths, "well_normalized"), norm_ref, "normalize (mad_robustize, negcon)")
    sel = read(paths, "well_feature_selected")
    assert_same_table(sel, sel_ref, "feature_select")
    # the data exercise every operation: something was dropped and blocklisted names are gone
    n_all, n_sel = len(P.feature_columns(agg)), len(P.feature_columns(sel))
    assert 0 < n_sel < n_all - 5
    assert not [c for c in P.feature_columns(sel) if "Correlation_Manders" in c and c.startswith("Nuclei")]
    assert not [c for c in P.feature_columns(sel) if c.endswith("EulerNumber")]


def test_mean_table_matches_pycytominer(batch, serial_run):
    pcm = pytest.importorskip("pycytominer")
    _, paths = serial_run
    ref = pcm.aggregate(batch["cells"], strata=P.STRATA, operation="mean", compute_object_count=True,
                        object_feature="ObjectNumber")
    assert_same_table(read(paths, "well_aggregated_mean"), ref, "aggregate (mean)", rtol=1e-9, atol=1e-9)


def test_outputs_layout(serial_run, batch):
    cfg, paths = serial_run
    outdir = Path(cfg.out) / "profiles"
    for name in ("well_aggregated", "well_normalized", "well_feature_selected"):
        df = pd.read_parquet(outdir / f"{name}.parquet")
        meta = P.metadata_columns(df)
        assert list(df.columns[: len(meta)]) == meta, f"{name}: Metadata_ columns are not first"
        assert {"Metadata_control_type", "Metadata_broad_sample", P.COUNT_COLUMN} <= set(meta)
        csv = pd.read_csv(outdir / f"{name}.csv")
        assert list(csv.columns) == list(df.columns)
    assert not [p for p in outdir.iterdir() if p.name.startswith(".")], "temporary files left behind"
    summary = json.loads((outdir / "reduce_summary.json").read_text())
    assert summary["sites"] == len(list((Path(cfg.out) / "sites").glob("*/*/*.h5")))
    assert summary["cells"] == len(batch["cells"])


def test_missing_well_metadata_is_named(batch, tmp_path):
    meta = batch["meta"]
    short = meta[~((meta.Metadata_Plate == "BR00116992") & (meta.Metadata_Well == "A07"))]
    csv = tmp_path / "short.csv"
    short.to_csv(csv, index=False)
    out = tmp_path / "out"
    out.mkdir()
    (out / "sites").symlink_to(batch["root"] / "sites")
    cfg = load_config(write_config(tmp_path / "c.yaml", out, csv))
    with pytest.raises(ValueError, match="BR00116992/A07"):
        reduce_batch(cfg, SerialComm())


def test_wells_go_whole_to_balanced_ranks(batch):
    from hpc_profiler.reduce import assign_wells, discover_site_files, group_wells, inspect_site_file

    chash = load_config(write_config(batch["root"] / "h2.yaml", batch["root"], batch["csv"])).hash()
    records = [inspect_site_file(p, chash) for p in discover_site_files(batch["root"])]
    assert all(r["ok"] for r in records)
    keys, paths, weights = group_wells(records)
    cells = batch["cells"].groupby(P.STRATA).size()
    assert weights == [int(cells.get(k, 0)) for k in keys]  # cell counts read from the files
    for n in (1, 2, 3, 4):
        parts = assign_wells(weights, n)
        assert sorted(i for part in parts for i in part) == list(range(len(keys)))  # each well on one rank
        loads = [sum(weights[i] + 1 for i in part) for part in parts]
        assert max(loads) - min(loads) <= max(weights) + 1
    assert inspect_site_file(batch["root"] / "nope.h5", chash)["reason"] == "missing"
    assert "stale" in inspect_site_file(Path(paths[0][0]), "0" * 16)["reason"]


def test_site_without_objects_counts_zero_cells(batch, tmp_path):
    from hpc_profiler.reduce import reduce_wells

    chash = load_config(write_config(tmp_path / "h.yaml", tmp_path, batch["csv"])).hash()
    empty = write_site_file(site_file_path(tmp_path, "BR00116991", "A01", 9), plate="BR00116991", well="A01",
                            site=9, config_hash=chash, backend="numpy", objects={}, image={})
    full = sorted((batch["root"] / "sites" / "BR00116991" / "A").glob("BR00116991_A01_*.h5"))
    part = reduce_wells([(("BR00116991", "A01"), [str(empty)] + [str(p) for p in full])])
    ref = reduce_wells([(("BR00116991", "A01"), [str(p) for p in full])])
    assert part["sites"] == len(full) + 1 and part["count"][0] == ref["count"][0]
    np.testing.assert_array_equal(part["values"], ref["values"])


def damage(out: Path) -> tuple[Path, Path]:
    """Make one site file unreadable past validation, and one not HDF5 at all."""
    files = sorted((out / "sites").glob("*/*/*.h5"))
    broken, garbage = files[3], files[-2]
    with h5py.File(broken, "a") as f:
        del f["objects/Cells/feature_names"]
    garbage.write_bytes(b"this is not an HDF5 file")
    return broken, garbage


def test_serial_invalid_file_fails_with_name(batch, tmp_path, capsys):
    cfg_path = run_dir(tmp_path, batch, "out", copy=True)
    broken, garbage = damage(tmp_path / "out")
    assert main([str(cfg_path), "--no-mpi"]) == 1
    assert garbage.name in capsys.readouterr().err
    garbage.unlink()
    with pytest.raises(ReduceError, match=broken.name):
        reduce_batch(load_config(cfg_path), SerialComm())


# --------------------------------------------------------------------------- MPI
def reduce_cmd(mpirun, cfg_path, *extra):
    return [mpirun.python, "-m", "hpc_profiler.reduce", str(cfg_path), *extra]


@pytest.mark.mpi
def test_well_table_identical_for_1_2_4_ranks(batch, serial_run, mpirun, tmp_path):
    _, serial_paths = serial_run
    for n, over in ((2, False), (4, True)):
        cfg_path = run_dir(tmp_path, batch, f"n{n}", also_mean=True)
        proc = mpirun(reduce_cmd(mpirun, cfg_path), n=n, oversubscribe=over, timeout=180)
        assert "well_feature_selected" in proc.stdout
        out = tmp_path / f"n{n}" / "profiles"
        summary = json.loads((out / "reduce_summary.json").read_text())
        assert summary["ranks"] == n and all(r["wells"] > 0 for r in summary["per_rank"])
        for name in ("well_aggregated", "well_aggregated_mean", "well_normalized", "well_feature_selected"):
            pd.testing.assert_frame_equal(pd.read_parquet(out / f"{name}.parquet"), read(serial_paths, name),
                                          check_exact=False, rtol=1e-12, atol=1e-12, obj=f"{name} ({n} ranks)")


@pytest.mark.mpi
def test_unreadable_site_file_stops_all_ranks(batch, mpirun, tmp_path):
    cfg_path = run_dir(tmp_path, batch, "out", copy=True)
    broken, garbage = damage(tmp_path / "out")
    # a file that passes validation but fails when a rank reads it
    garbage.unlink()
    proc = mpirun(reduce_cmd(mpirun, cfg_path), n=2, oversubscribe=False, timeout=90, check=False)
    assert proc.returncode != 0
    assert broken.name in proc.stderr, proc.stderr
    assert not (tmp_path / "out" / "profiles" / "well_aggregated.parquet").exists()
    # a file that is not HDF5: found while validating
    garbage.write_bytes(b"not hdf5")
    proc = mpirun(reduce_cmd(mpirun, cfg_path), n=4, oversubscribe=True, timeout=90, check=False)
    assert proc.returncode != 0
    assert garbage.name in proc.stderr, proc.stderr


@pytest.mark.mpi
def test_skip_invalid_records_and_skips(batch, mpirun, tmp_path):
    cfg_path = run_dir(tmp_path, batch, "out", copy=True)
    broken, garbage = damage(tmp_path / "out")
    proc = mpirun(reduce_cmd(mpirun, cfg_path, "--skip-invalid"), n=2, oversubscribe=False, timeout=120)
    out = tmp_path / "out" / "profiles"
    skipped = pd.read_csv(out / "skipped_site_files.csv")
    assert sorted(Path(p).name for p in skipped.path) == sorted([broken.name, garbage.name]), proc.stdout
    assert set(skipped.stage) == {"read", "validate"}
    # the remaining cells, aggregated by pycytominer
    pcm = pytest.importorskip("pycytominer")
    cells = batch["cells"]
    gone = np.zeros(len(cells), dtype=bool)
    for f in (broken, garbage):
        plate, well, site = f.stem.split("_")
        gone |= (cells.Metadata_Plate == plate) & (cells.Metadata_Well == well) & (cells.Metadata_Site == site[1:])
    ref = pcm.aggregate(cells[~gone], strata=P.STRATA, operation="median", compute_object_count=True,
                        object_feature="ObjectNumber")
    ours = pd.read_parquet(out / "well_aggregated.parquet")
    assert_same_table(ours, ref, "aggregate after --skip-invalid")
    np.testing.assert_array_equal(ours.sort_values(P.STRATA)[P.COUNT_COLUMN].to_numpy(),
                                  ref.sort_values(P.STRATA)[P.COUNT_COLUMN].to_numpy())


@pytest.mark.slurm
@pytest.mark.mpi
@pytest.mark.slow
def test_sbatch_script_runs_the_reduction(batch, serial_run, local_slurm, repo_root, tmp_path):
    if shutil.which("mpirun") is None:
        pytest.skip("mpirun not on PATH (apt-get install openmpi-bin)")
    _, serial_paths = serial_run
    cfg_path = run_dir(tmp_path, batch, "out", also_mean=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "OMPI_", "PMIX_", "PMI_"))}
    env.update(CONFIG=str(cfg_path), PYTHON=sys.executable)
    proc = subprocess.run(
        ["sbatch", "--wait", "--ntasks=2", "--mem-per-cpu=1G", "--time=10", f"--partition={local_slurm.partition}",
         f"--output={tmp_path / 'job_%j.out'}", "--export=ALL", str(repo_root / "slurm" / "reduce_mpi.sbatch")],
        capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path,
    )
    logs = "\n".join(p.read_text() for p in tmp_path.glob("job_*.out"))
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}\n{logs}"
    out = tmp_path / "out" / "profiles"
    assert json.loads((out / "reduce_summary.json").read_text())["ranks"] == 2, logs
    for name in ("well_aggregated", "well_feature_selected"):
        pd.testing.assert_frame_equal(pd.read_parquet(out / f"{name}.parquet"), read(serial_paths, name),
                                      check_exact=False, rtol=1e-12, atol=1e-12, obj=f"{name} (sbatch)")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
