"""Preflight: what `config check` and the stage commands catch before work starts.

Each failure mode checks the one-line message (naming the key and the file), the
exit status 2 and that no traceback is printed.
"""
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from hpc_profiler import cli
from hpc_profiler.backend import gpu_available
from hpc_profiler.config import CPJUMP1_CHANNELS, load_config
from hpc_profiler.preflight import preflight

HEADER = ["Metadata_Plate", "Metadata_Well", "Metadata_Site"] + [
    f"{k}_Orig{ch}" for ch in CPJUMP1_CHANNELS for k in ("FileName", "PathName")
]


def hp_process(*args):
    """The command in its own process (exit status as the shell sees it)."""
    # the timeout only guards against a hang: a loaded CI machine may take minutes to import
    return subprocess.run([sys.executable, "-m", "hpc_profiler", *args], capture_output=True, text=True, timeout=600)


@pytest.fixture
def hp(capsys):
    """The command in this process through :func:`hpc_profiler.cli.main` (fast on a 2-core machine)."""

    def call(*args):
        rc = cli.main(list(args))
        out = capsys.readouterr()
        return SimpleNamespace(returncode=rc, stdout=out.out, stderr=out.err)

    return call


def write_config(tmp_path, body: str, name="c.yaml") -> Path:
    p = tmp_path / name
    p.write_text(body)
    return p


def header_csv(tmp_path, columns=HEADER) -> Path:
    p = tmp_path / "load_data.csv"
    p.write_text(",".join(columns) + "\n")
    return p


def errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error: ")]


def test_missing_input_one_line_in_check_and_run(hp, tmp_path):
    cfg = write_config(tmp_path, "output_dir: out\ninput:\n  loaddata_csv: nope/load_data.csv\n")
    missing = tmp_path / "nope" / "load_data.csv"
    for args in (("config", "check", str(cfg)), ("run", str(cfg)), ("submit", "extract", str(cfg))):
        r = hp_process(*args) if args[0] == "run" else hp(*args)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        assert "Traceback" not in r.stderr and "ok (config hash" not in r.stdout
        assert errors(r.stderr) == [f"error: {cfg}: input.loaddata_csv: LoadData CSV {missing} does not exist"]
    assert not (tmp_path / "out").exists()  # nothing started


def test_channels_checked_against_loaddata_header(hp, tmp_path):
    header_csv(tmp_path, [c for c in HEADER if not c.endswith("OrigMito") and c != "Metadata_Site"])
    cfg = write_config(tmp_path, "output_dir: out\ninput:\n  loaddata_csv: load_data.csv\n")
    r = hp("config", "check", str(cfg))
    assert r.returncode == 2
    lines = errors(r.stderr)
    assert len(lines) == 2, r.stderr
    assert f"input.loaddata_csv: LoadData CSV {tmp_path / 'load_data.csv'} lacks column(s) ['Metadata_Site']" in lines[0]
    assert "channels: channel 'Mito' not found in LoadData CSV" in lines[1]
    assert "['FileName_OrigMito', 'PathName_OrigMito']" in lines[1]


@pytest.mark.skipif(gpu_available(), reason="a GPU backend is present here; the failure mode needs none")
def test_gpu_asked_without_one(hp, tmp_path):
    header_csv(tmp_path)
    cfg = write_config(tmp_path, "device: gpu\noutput_dir: out\ninput:\n  loaddata_csv: load_data.csv\n")
    for args in (("config", "check", str(cfg)), ("run", "--no-mpi", str(cfg))):
        r = hp(*args)
        assert r.returncode == 2, r.stderr
        lines = errors(r.stderr)
        assert len(lines) == 1 and "Traceback" not in r.stderr
        assert lines[0].startswith(f"error: {cfg}: device: 'gpu' asked for, but no GPU backend here (")
        assert lines[0].endswith("use device: auto or cpu")


def test_two_typos_reported_together(hp, tmp_path):
    cfg = write_config(tmp_path, "segmentation:\n  nuclei:\n    smoothing_scal: 3\n"
                                 "executor:\n  cpus_per_tsk: 2\ndevice: tpu\n")
    r = hp("config", "check", str(cfg))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    lines = errors(r.stderr)
    assert len(lines) == 3, r.stderr
    assert any(f"{cfg}: segmentation.nuclei.smoothing_scal: unknown key (did you mean 'smoothing_scale'?)" in s
               for s in lines)
    assert any(f"{cfg}: executor.cpus_per_tsk: unknown key (did you mean 'cpus_per_task'?)" in s for s in lines)
    assert any(f"{cfg}: device: expected one of" in s for s in lines)


def test_output_folder_under_a_file_is_not_writable(hp, tmp_path):
    header_csv(tmp_path)
    (tmp_path / "blocker").write_text("a file, not a folder")
    cfg = write_config(tmp_path, "output_dir: blocker/out\ninput:\n  loaddata_csv: load_data.csv\n")
    r = hp("config", "check", str(cfg))
    assert r.returncode == 2
    assert errors(r.stderr) == [
        f"error: {cfg}: output_dir: output folder {tmp_path / 'blocker' / 'out'}: "
        f"{tmp_path / 'blocker'} exists and is not a folder"
    ]


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes into a read-only folder")
def test_output_folder_read_only(hp, tmp_path):
    header_csv(tmp_path)
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        cfg = write_config(tmp_path, "output_dir: ro/out\ninput:\n  loaddata_csv: load_data.csv\n")
        r = hp("config", "check", str(cfg))
    finally:
        ro.chmod(0o755)
    assert r.returncode == 2
    (line,) = errors(r.stderr)
    assert f"output_dir: output folder {ro / 'out'} (its nearest existing parent {ro}) is not writable" in line


def test_all_problems_at_once(hp, tmp_path):
    (tmp_path / "blocker").write_text("x")
    cfg = write_config(tmp_path, "output_dir: blocker/out\ninput:\n  loaddata_csv: missing.csv\n"
                                 "  well_metadata_csv: meta.csv\n  illum_dir: illum\n")
    cfg_obj = load_config(cfg)
    keys = [p.key for p in preflight(cfg_obj, "check") if p.fatal]
    assert keys == ["input.loaddata_csv", "input.well_metadata_csv", "input.illum_dir", "output_dir"]
    r = hp("config", "check", str(cfg))
    assert r.returncode == 2 and len(errors(r.stderr)) == 4


def test_missing_synth_input_is_fine_when_synth_generates_it(hp, tmp_path):
    cfg = write_config(tmp_path, "output_dir: out\ninput:\n  loaddata_csv: synth/load_data.csv\n"
                                 "  well_metadata_csv: synth/well_metadata.csv\nsynth:\n  wells: 4\n")
    r = hp("config", "check", str(cfg))
    assert r.returncode == 0, r.stderr
    assert f"{cfg}: ok (config hash" in r.stdout


def test_explicit_ranks_without_mpi_is_an_error(tmp_path, monkeypatch):
    from hpc_profiler import preflight as pf

    header_csv(tmp_path)
    cfg = load_config(write_config(tmp_path, "output_dir: out\ninput:\n  loaddata_csv: load_data.csv\n"))
    monkeypatch.setattr(pf.shutil, "which", lambda name: None)  # as on a machine without Open MPI
    (p,) = pf.preflight(cfg, "run", ranks=4)
    assert p.fatal and p.key == "executor.mpi_ranks" and "--ranks 4 needs MPI: mpirun not on PATH" in p.message
    (p,) = pf.preflight(cfg, "run")  # the configured default: a note, run goes on in one process
    assert not p.fatal and "2 ranks configured" in p.message
    assert pf.preflight(cfg, "run", ranks=1) == []


def test_reduce_with_nothing_to_reduce(hp, tmp_path):
    cfg = write_config(tmp_path, "output_dir: out\n")
    r = hp("reduce", str(cfg))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert errors(r.stderr) == [f"error: {cfg}: output_dir: nothing to reduce: no site files under "
                                f"{tmp_path / 'out' / 'sites'} (run `hpc-profiler submit extract` or "
                                f"`hpc-profiler run` first)"]


def test_reduce_with_nothing_to_reduce_under_mpirun(tmp_path, mpirun):
    cfg = write_config(tmp_path, "output_dir: out\n")
    r = mpirun([sys.executable, "-m", "hpc_profiler", "reduce", str(cfg)], n=2, check=False, timeout=600)
    assert r.returncode != 0
    assert "MPI_ABORT" not in r.stdout + r.stderr and "Traceback" not in r.stderr
    assert len([s for s in errors(r.stderr) if "nothing to reduce" in s]) == 1  # rank 0 speaks


def test_evaluate_without_well_table(hp, tmp_path):
    cfg = write_config(tmp_path, "output_dir: out\n")
    r = hp("evaluate", str(cfg))
    table = tmp_path / "out" / "profiles" / "well_feature_selected.parquet"
    assert r.returncode == 2
    assert errors(r.stderr) == [f"error: {cfg}: evaluate.profiles: well table {table} does not exist "
                                f"(run `hpc-profiler reduce` first)"]


def test_unexpected_error_is_one_line_and_debug_shows_traceback(tmp_path, monkeypatch, capsys):
    from hpc_profiler import run as run_mod

    header_csv(tmp_path)
    cfg = write_config(tmp_path, "output_dir: out\ninput:\n  loaddata_csv: load_data.csv\n")

    def boom(*a, **k):
        raise RuntimeError("site r01c01f01: boom\nsecond line")

    monkeypatch.setattr(run_mod, "run_batch", boom)
    assert cli.main(["run", "--no-mpi", str(cfg)]) == 1
    err = capsys.readouterr().err
    assert errors(err) == ["error: RuntimeError: site r01c01f01: boom ... (run with --debug for the traceback)"]
    with pytest.raises(RuntimeError, match="boom"):
        cli.main(["--debug", "run", "--no-mpi", str(cfg)])


def test_run_task_started_by_slurm_keeps_the_traceback(monkeypatch):
    from hpc_profiler import orchestrate

    def boom(args):
        raise RuntimeError("task failed")

    monkeypatch.setattr(orchestrate, "main_run_task", boom)
    with pytest.raises(RuntimeError, match="task failed"):
        cli.main(["run-task", "--stage", "extract", "--task-id", "0", "c.yaml"])
