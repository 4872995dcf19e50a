"""End to end (issue 8): synthetic batch -> illum -> extract -> reduce -> evaluate -> report.

The same small batch runs three ways and must give the same final tables:
1. a single process (submitit's debug executor, reduce and evaluate without MPI): the reference;
2. through the real local Slurm (array jobs) and ``mpirun -n 2`` for the MPI stages;
3. interrupted (the ``hpc-profiler run`` process killed mid-extraction) and started again:
   finished site files are not redone and the numbers equal the reference.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from hpc_profiler.config import load_config
from hpc_profiler.run import run_batch

pytestmark = pytest.mark.slow


def _config(root: Path, synth_dir: Path, name: str, **executor) -> Path:
    cfg = {
        "name": name,
        "device": "cpu",
        "output_dir": str(root / name),
        "input": {
            "loaddata_csv": str(synth_dir / "load_data.csv"),
            "well_metadata_csv": str(synth_dir / "well_metadata.csv"),
        },
        "illumination": {"downsample": 2, "median_filter_size": 25},
        "executor": {"kind": "local", "sites_per_task": 8, "mpi_ranks": 2, "cpus_per_task": 1, "mem_gb": 2, **executor},
        "evaluate": {"null_size": 2000},
    }
    p = root / f"{name}.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    from hpc_profiler.config import SynthConfig
    from hpc_profiler.synth import generate_batch

    root = tmp_path_factory.mktemp("e2e")
    synth_dir = root / "synth"
    sc = SynthConfig(modalities=["compound", "crispr"], replicate_plates=2, wells=8, sites_per_well=1,
                     size=256, cells_per_site=24, seed=3)
    generate_batch(sc, synth_dir, ["DNA", "ER", "RNA", "AGP", "Mito"])
    return root, synth_dir


@pytest.fixture(scope="module")
def reference(batch):
    root, synth_dir = batch
    cfg = load_config(_config(root, synth_dir, "reference", kind="debug"))
    res = run_batch(cfg, ranks=1, report=True, out=lambda s: None)
    assert res.failures == 0
    return cfg, res


def _tables(cfg):
    prof = pd.read_parquet(Path(cfg.out) / "profiles" / "well_feature_selected.parquet")
    prof = prof.sort_values(["Metadata_Plate", "Metadata_Well"]).reset_index(drop=True)
    ev = Path(cfg.out) / "evaluate"
    queries = sorted(ev.glob("*quer*.parquet"))
    q = pd.concat([pd.read_parquet(p) for p in queries]) if queries else None
    return prof, q


def _assert_same(a, b):
    pa, qa = a
    pb, qb = b
    assert list(pa.columns) == list(pb.columns)
    meta = [c for c in pa.columns if c.startswith("Metadata_")]
    pd.testing.assert_frame_equal(pa[meta], pb[meta])
    feats = [c for c in pa.columns if not c.startswith("Metadata_")]
    np.testing.assert_allclose(pa[feats].to_numpy(float), pb[feats].to_numpy(float), rtol=1e-6, atol=1e-9, equal_nan=True)
    if qa is not None or qb is not None:
        num = [c for c in qa.columns if c in ("average_precision", "ap", "AP")]
        assert len(qa) == len(qb)
        for c in num:
            np.testing.assert_allclose(np.sort(qa[c].to_numpy(float)), np.sort(qb[c].to_numpy(float)), atol=1e-12)


def test_reference_run_writes_everything(reference):
    cfg, res = reference
    out = Path(cfg.out)
    assert len(list((out / "sites").rglob("*.h5"))) == 32
    selected = pd.read_parquet(out / "profiles" / "well_feature_selected.parquet")
    feats = [c for c in selected.columns if not c.startswith("Metadata_")]
    assert feats and not selected[feats].isna().any().any()  # the main output has no NaN (issue 18)
    assert res.summary is not None and len(res.summary) > 0
    assert {"fraction_retrieved"} <= set(res.summary.columns)
    names = {Path(p).name for p in res.plots}
    assert {"outlines_montage.png", "plate_heatmaps.png", "illumination.png"} <= names
    assert res.index is not None and res.index.exists()
    from hpc_profiler.status import collect_status

    st = collect_status(cfg)
    assert st.totals.done == 32 and st.totals.pending == 0 and not st.failures
    assert st.stages == {"reduce": "up to date", "evaluate": "up to date"}
    # a rerun finds everything up to date
    again = run_batch(cfg, ranks=1, report=False, out=lambda s: None)
    assert all(line.skipped for line in again.lines), [str(x) for x in again.lines]


@pytest.mark.slurm
@pytest.mark.mpi
def test_slurm_and_mpirun_equal_single_process(batch, reference, local_slurm, mpirun):
    root, synth_dir = batch
    cfg = load_config(_config(root, synth_dir, "slurm", kind="slurm", time_min=20))
    res = run_batch(cfg, ranks=2, report=False, out=lambda s: None)
    assert res.failures == 0
    notes = " ".join(line.note for line in res.lines)
    assert "slurm job of 2 ranks" in notes or "mpirun -n 2" in notes
    _assert_same(_tables(cfg), _tables(reference[0]))


def test_interrupted_run_resumes_without_redoing_sites(batch, reference):
    root, synth_dir = batch
    # progress lines every 0.5 s: the output is a pipe, as under Slurm or nohup (issue 18)
    cfgp = _config(root, synth_dir, "interrupted", kind="local", sites_per_task=4, progress_interval_s=0.5)
    cfg = load_config(cfgp)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "hpc_profiler", "run", str(cfgp), "--no-mpi", "--no-report"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    # the output is read while the run goes on (a full pipe would block it), line by line
    lines: list = []

    def read_lines():
        for raw in proc.stdout:
            lines.append(raw)

    reader = threading.Thread(target=read_lines, daemon=True)
    reader.start()
    progress = re.compile(rb"^extract: (\d+)/32 sites \(\d+%\), [0-9.]+ sites/s, ETA ")
    sites = Path(cfg.out) / "sites"
    # generous: on a loaded 2-core machine the first sites wait for the workers' start and numba's compilation
    deadline = time.time() + 900
    while time.time() < deadline:
        done = [p for p in sites.rglob("*.h5") if not p.name.startswith(".")] if sites.exists() else []
        if len(done) >= 6 and any(progress.match(x) for x in list(lines)):
            break
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    assert proc.poll() is None, "the run ended before it could be interrupted:\n" + b"".join(lines).decode()[-2000:]
    os.killpg(proc.pid, signal.SIGKILL)  # the run and its local workers, as a Ctrl-C on a shell would
    proc.wait(timeout=60)
    reader.join(timeout=60)
    # a run whose output is not a terminal printed site-by-site progress during extract
    printed = b"".join(lines).decode(errors="replace")
    counts = [int(m) for m in re.findall(r"^extract: (\d+)/32 sites \(\d+%\), [0-9.]+ sites/s, ETA ", printed, re.M)]
    assert counts and max(counts) >= 1, printed[-2000:]
    assert counts == sorted(counts), counts
    time.sleep(0.5)
    finished = {p: p.stat().st_mtime_ns for p in sites.rglob("*.h5") if not p.name.startswith(".")}
    assert 6 <= len(finished) < 32
    res = run_batch(cfg, ranks=1, report=False, out=lambda s: None)
    assert res.failures == 0
    after = {p: p.stat().st_mtime_ns for p in sites.rglob("*.h5") if not p.name.startswith(".")}
    assert len(after) == 32
    assert all(after[p] == t for p, t in finished.items()), "a finished site file was rewritten"
    assert not list(sites.rglob(".*.tmp.h5")), "temporary files left behind"
    _assert_same(_tables(cfg), _tables(reference[0]))
