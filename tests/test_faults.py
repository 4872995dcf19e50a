"""Faults on the real local Slurm (issue 20): the chain ends or resumes, it never hangs.

Accounting is disabled on the local Slurm (as in CI), so ``sacct`` fails and
only the driver's own liveness check (``squeue``/``scontrol``) can see a task
die. Each fault test bounds the time from the fault to a clean exit by
``BOUND_S`` (60 s) plus one polling interval, checks the message names the
sites (or the job and its log) and the Slurm state, then reruns and compares
the outputs with an undisturbed run of the same tiny synthetic batch
(2 plates x 4 wells x 1 site).

Faults are injected by ``tests/fault_hooks/sitecustomize.py`` (on
``PYTHONPATH`` of the driver, hence of the Slurm tasks and MPI ranks):
a task SIGKILLs itself half-way through writing a site file, or an MPI rank
SIGKILLs itself as ``MPI_Init`` starts; or by ``scancel`` of one array task.
"""
from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from hpc_profiler import orchestrate as orch
from hpc_profiler.workflow import watch
from hpc_profiler import sitefile, status
from hpc_profiler.config import load_config
from hpc_profiler.run import StageError, run_batch, run_mpi_stage

from fault_config import write_fault_config

HOOKS = Path(__file__).resolve().parent / "fault_hooks"
BOUND_S = 60.0
POLL_S = 2.0
CHANNELS = ["DNA", "ER", "RNA", "AGP", "Mito"]


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    from hpc_profiler.config import SynthConfig
    from hpc_profiler.synth import generate_batch

    root = tmp_path_factory.mktemp("faults")
    sc = SynthConfig(modalities=["compound"], replicate_plates=2, wells=4, sites_per_well=1, size=192,
                     cells_per_site=10, seed=5)
    generate_batch(sc, root / "synth", CHANNELS)
    return root


def _config(root: Path, name: str, partition=None, **executor) -> Path:
    return write_fault_config(root, name, POLL_S, partition, **executor)


@pytest.fixture(scope="module")
def reference(synth):
    """The undisturbed run, in this process (submitit's debug executor, no MPI)."""
    cfg = load_config(_config(synth, "reference", kind="debug"))
    res = run_batch(cfg, ranks=1, report=False, out=lambda s: None)
    assert res.failures == 0
    return cfg


def _site_names(root: Path) -> list:
    with open(root / "synth" / "load_data.csv") as fh:
        rows = list(csv.DictReader(fh))
    return [(r["Metadata_Plate"], r["Metadata_Well"], r["Metadata_Site"]) for r in rows]


def _prepare(synth, reference, name: str, partition, **executor):
    """A fresh output folder with the reference's illumination functions (illum is not under test here)."""
    cfg_path = _config(synth, name, partition=partition, **executor)
    cfg = load_config(cfg_path)
    shutil.copytree(reference.out / "illum", cfg.out / "illum")
    return cfg_path, cfg


def _env(**extra) -> dict:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join([str(HOOKS)] + [p for p in [env.get("PYTHONPATH")] if p])
    env.update({k: str(v) for k, v in extra.items()})
    return env


def _driver(cfg_path: Path, env: dict) -> subprocess.Popen:
    """``hpc-profiler run`` in its own session, its output to a file (a pipe nobody reads while the
    test waits on Slurm could fill and stall the driver)."""
    log = cfg_path.with_suffix(".driver.out")
    with open(log, "w") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "hpc_profiler", "run", str(cfg_path), "--no-mpi",
                                 "--no-report"], stdout=fh, stderr=subprocess.STDOUT, text=True, env=env,
                                start_new_session=True)
    proc.log_path = log
    return proc


def _output(proc: subprocess.Popen) -> str:
    return proc.log_path.read_text(errors="replace")


def _wait(proc: subprocess.Popen, timeout: float) -> str:
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        proc.wait()
        raise AssertionError(f"`hpc-profiler run` still running after {timeout:.0f} s:\n"
                             f"{_output(proc)[-4000:]}") from None
    return _output(proc)


def _until(pred, timeout: float, what: str, proc: subprocess.Popen = None, poll: float = 0.2):
    """Wait until ``pred()`` is true (the real state: files, the Slurm queue); fail naming ``what`` after
    ``timeout`` s, or at once when the driver ``proc`` has exited meanwhile."""
    deadline = time.time() + timeout
    while True:
        if pred():
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"`hpc-profiler run` exited ({proc.returncode}) while waiting for {what}:\n"
                                 f"{_output(proc)[-3000:]}")
        if time.time() > deadline:
            if proc is not None:
                os.killpg(proc.pid, 9)
            raise AssertionError(f"no {what} within {timeout:.0f} s")
        time.sleep(poll)


def _array_ids(cfg, stage: str = "extract") -> list:
    """The Slurm ids of every task of the stage's recorded batches (empty until the first is submitted)."""
    bdir = cfg.out / "batches"
    ids = []
    for b in sorted(bdir.glob(f"{stage}-*/batch.json")) if bdir.exists() else []:
        try:
            ids += orch.read_json(b)["job_ids"]
        except (OSError, ValueError, KeyError):
            continue
    return ids


def _queue(ids):
    """``squeue`` of these ids, or None when there are none yet or squeue does not answer."""
    return orch.slurm_queue(ids) if ids else None


def _queue_length(ids) -> int:
    q = _queue(ids)
    return -1 if q is None else len(q)


def _temps(out: Path) -> list:
    return [p for p in (out / "sites").rglob("*") if ".tmp" in p.name]


def _assert_same_outputs(cfg, ref) -> None:
    """Every site file and the well tables equal the undisturbed run's."""
    mine = sorted(p.relative_to(cfg.out) for p in (cfg.out / "sites").rglob("*.h5") if not p.name.startswith("."))
    theirs = sorted(p.relative_to(ref.out) for p in (ref.out / "sites").rglob("*.h5") if not p.name.startswith("."))
    assert mine == theirs and len(mine) == 8
    for rel in mine:
        a, b = sitefile.read_site_file(cfg.out / rel), sitefile.read_site_file(ref.out / rel)
        assert set(a.objects) == set(b.objects)
        for obj in a.objects:
            np.testing.assert_array_equal(a.objects[obj].values, b.objects[obj].values, err_msg=f"{rel} {obj}")
    for table in ("well_normalized.parquet", "well_feature_selected.parquet"):
        pa = pd.read_parquet(cfg.out / "profiles" / table).sort_values(["Metadata_Plate", "Metadata_Well"])
        pb = pd.read_parquet(ref.out / "profiles" / table).sort_values(["Metadata_Plate", "Metadata_Well"])
        pd.testing.assert_frame_equal(pa.reset_index(drop=True), pb.reset_index(drop=True))


def _status_failed(cfg_path) -> tuple[int, str]:
    import argparse
    import contextlib
    import io

    p = argparse.ArgumentParser()
    status.add_status_arguments(p)
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = status.main_status(p.parse_args([str(cfg_path), "--failed"]))
    return rc, buf.getvalue()


# ============================================================== unit: no Slurm needed
def test_sacct_warning_said_once_with_its_meaning(capsys, caplog):
    import logging

    orch.quiet_sacct_warnings()
    orch.quiet_sacct_warnings()  # idempotent: one filter
    log = logging.getLogger("submitit")
    orch._SacctWarningOnce.seen = False
    with caplog.at_level(logging.WARNING, logger="submitit"):
        for i in range(5):
            log.warning(f"Call #{i} - Bypassing sacct error Command '['sacct']' returned non-zero exit status 1., "
                        "status may be inaccurate.")
        log.warning("some other submitit warning")
    err = capsys.readouterr().err
    assert err.count("Bypassing sacct error") == 1 and err.count("note: sacct failed") == 1
    assert "accounting" in err and "squeue" in err
    assert "Bypassing sacct error" not in caplog.text  # none reaches submitit's handlers
    assert "some other submitit warning" in caplog.text  # other warnings pass
    assert sum(isinstance(f, orch._SacctWarningOnce) for f in log.filters) == 1


def test_slurm_job_end_words(monkeypatch):
    infos = {
        "1": {"JobState": "CANCELLED", "Reason": "None", "ExitCode": "0:15"},
        "2": {"JobState": "OUT_OF_MEMORY", "Reason": "OutOfMemory", "ExitCode": "0:125"},
        "3": {"JobState": "FAILED", "Reason": "NonZeroExitCode", "ExitCode": "1:0"},
        "4": {},
    }
    monkeypatch.setattr(watch, "slurm_job_info", lambda j: infos[j])
    assert orch.slurm_job_end("1") == "CANCELLED, killed by signal 15 (SIGTERM)"
    assert orch.slurm_job_end("2") == "OUT_OF_MEMORY, reason OutOfMemory, killed by signal 125"
    assert orch.slurm_job_end("3") == "FAILED, reason NonZeroExitCode, exit code 1"
    infos["5"] = {"JobState": "FAILED", "Reason": "NonZeroExitCode", "ExitCode": "137:0"}
    assert orch.slurm_job_end("5") == ("FAILED, reason NonZeroExitCode, exit code 137: a process of the task "
                                       "was killed by signal 9 (SIGKILL)")
    assert "left the Slurm queue" in orch.slurm_job_end("4")
    # the states the issue lists, as scontrol shows them (a time limit is named as such, not "exit 1")
    infos.update({"6": {"JobState": "TIMEOUT", "Reason": "TimeLimit", "ExitCode": "0:15"},
                  "7": {"JobState": "NODE_FAIL", "Reason": "NodeDown", "ExitCode": "0:0"},
                  "8": {"JobState": "PREEMPTED", "Reason": "None", "ExitCode": "0:15"}})
    assert orch.slurm_job_end("6") == "TIMEOUT, reason TimeLimit, killed by signal 15 (SIGTERM)"
    assert orch.slurm_job_end("7") == "NODE_FAIL, reason NodeDown"
    assert orch.slurm_job_end("8") == "PREEMPTED, killed by signal 15 (SIGTERM)"


@pytest.mark.parametrize("version, flags, oversubscribe", [
    ("mpirun (Open MPI) 4.1.4\n\nReport bugs to http://www.open-mpi.org/community/help/",
     ["--mca", "orte_abort_on_non_zero_status", "1"], True),
    ("mpirun (Open MPI) 3.1.6\n", ["--mca", "orte_abort_on_non_zero_status", "1"], True),
    ("mpirun (Open MPI) 5.0.3\n\nReport bugs to https://www.open-mpi.org/community/help/",
     ["--prtemca", "prte_abort_on_non_zero_status", "1"], True),
    ("HYDRA build details:\n    Version:                                 4.0.2\n", [], False),
    ("Intel(R) MPI Library for Linux* OS, Version 2021.6 Build 20220227 (id: 28877f3f32)\n", [], False),
    ("some-launcher 1.0\n", [], False),
], ids=["openmpi4", "openmpi3", "openmpi5", "mpich", "intelmpi", "unknown"])
def test_mpirun_gets_the_abort_flag_its_mpi_needs(tmp_path, monkeypatch, capsys, version, flags, oversubscribe):
    """Each launcher is told to end the job when a rank dies (Open MPI 4 and 5 by different names; Hydra
    does it by default and refuses Open MPI's flags); an unknown one is named on stderr."""
    pytest.importorskip("mpi4py")
    from hpc_profiler.workflow import mpijob

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "version.txt").write_text(version)
    fake = bin_dir / "mpirun"
    fake.write_text(f"#!/bin/sh\ncat {bin_dir / 'version.txt'}\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(mpijob, "_UNKNOWN_SAID", False)
    ranks = (os.cpu_count() or 1) + 1  # more ranks than CPUs: Open MPI needs --oversubscribe
    cmd = mpijob.mpi_launcher(ranks)
    assert cmd[:3] == ["mpirun", "-n", str(ranks)]
    assert ("--oversubscribe" in cmd) == oversubscribe
    assert [c for c in cmd[3:] if c != "--oversubscribe"] == flags
    err = capsys.readouterr().err
    assert ("neither Open MPI nor MPICH" in err) == version.startswith("some-launcher"), err
    assert mpijob.mpi_launcher(1) is None


def test_mpi_job_has_no_dependency_and_kills_the_step_on_a_lost_rank(tmp_path, monkeypatch):
    """The reduce/evaluate job is submitted without any --dependency (only after the arrays settled), its
    srun ends the step when a rank dies, and the start-up timeout reaches the ranks."""
    from hpc_profiler.workflow import mpijob

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "sbatch"
    fake.write_text(f"#!/bin/sh\nprintf '%s\\n' \"$@\" > {tmp_path / 'args.txt'}\n"
                    f"env > {tmp_path / 'env.txt'}\necho '4242;cluster'\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    cfg = load_config(_config(tmp_path, "deps", mpi_startup_timeout_s=33))
    job = mpijob.submit_mpi_job(cfg, "reduce", 2, mpijob.mpi_args(cfg, "reduce"), mpijob._mpi_env(cfg),
                                cfg.out / "logs")
    assert job == "4242"
    args = (tmp_path / "args.txt").read_text().splitlines()
    assert not [a for a in args if a.startswith(("--dependency", "-d"))] and "--dependency" not in " ".join(args), args
    wrap = next(a for a in args if a.startswith("--wrap="))
    assert "srun --mpi=pmix --kill-on-bad-exit=1 " in wrap and f"--output={cfg.out / 'logs'}/reduce_%j.out" in args
    assert "HPC_PROFILER_MPI_STARTUP_TIMEOUT_S=33" in (tmp_path / "env.txt").read_text().splitlines()


def test_mpi_job_errors_name_the_job_its_log_and_the_slurm_state(tmp_path, monkeypatch):
    """What the driver says when the reduce job ends at its time limit, or can never start (the Slurm
    queries replaced by their answers; scancel by a recorder)."""
    from hpc_profiler.workflow import mpijob

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "scancel").write_text(f"#!/bin/sh\necho \"$@\" >> {tmp_path / 'scancel.txt'}\n")
    (bin_dir / "scancel").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    cfg = load_config(_config(tmp_path, "msg"))
    logs = cfg.out / "logs"
    logs.mkdir(parents=True)
    (logs / "reduce_99.out").write_text("rank 0 reading sites\nslurmstepd: error: *** JOB 99 CANCELLED DUE TO "
                                        "TIME LIMIT ***\n")
    monkeypatch.setattr(mpijob, "submit_mpi_job", lambda *a, **k: "99")
    monkeypatch.setattr(mpijob, "slurm_queue", lambda ids: {})
    info = {"JobState": "TIMEOUT", "Reason": "TimeLimit", "ExitCode": "0:15"}
    monkeypatch.setattr(mpijob, "slurm_job_info", lambda j: info)
    monkeypatch.setattr(watch, "slurm_job_info", lambda j: info)
    monkeypatch.setattr(mpijob.shutil, "which", lambda exe: f"/usr/bin/{exe}")
    with pytest.raises(StageError) as err:
        run_mpi_stage(cfg, "reduce", 2, "slurm")
    msg = str(err.value)
    assert msg.startswith("reduce: Slurm job 99 TIMEOUT, reason TimeLimit, killed by signal 15 (SIGTERM); "
                          f"log {logs / 'reduce_99.out'}:"), msg
    assert "CANCELLED DUE TO TIME LIMIT" in msg
    monkeypatch.setattr(mpijob, "slurm_queue", lambda ids: {"99": ("PENDING", "DependencyNeverSatisfied")})
    with pytest.raises(StageError) as err:
        run_mpi_stage(cfg, "reduce", 2, "slurm")
    assert "Slurm job 99 can never start (DependencyNeverSatisfied); cancelled it" in str(err.value)
    assert (tmp_path / "scancel.txt").read_text().split() == ["99"]


@pytest.mark.slow
def test_status_eta_only_while_jobs_run(reference, monkeypatch):
    """No ETA when nothing is queued or running: pending sites will not finish by themselves."""
    victim = next((reference.out / "sites").rglob("*.h5"))
    moved = victim.with_name(victim.name + ".away")
    victim.rename(moved)
    try:
        monkeypatch.setattr(status, "squeue_states", lambda ids: [])
        st = status.collect_status(reference)
        assert st.totals.pending == 1 and st.throughput_per_hour and st.eta_s is None
        assert "ETA -" in status.format_status(st)
        monkeypatch.setattr(status, "squeue_states", lambda ids: [("123_4", "RUNNING")])
        st = status.collect_status(reference)
        assert st.eta_s == pytest.approx(3600.0 / st.throughput_per_hour)
    finally:
        moved.rename(victim)


# ============================================================== real local Slurm
@pytest.mark.slow
@pytest.mark.slurm
def test_task_killed_while_writing_a_site_ends_run_then_rerun_completes(synth, reference, local_slurm):
    """The task writing site 3 is SIGKILLed half-way through the file. It waits at that point until the
    other tasks have left the queue (however slowly a loaded machine runs them), so the time from the
    fault to the driver's exit is the time the driver takes to see the death."""
    cfg_path, cfg = _prepare(synth, reference, "kill_write", local_slurm.partition)
    plate, well, site = _site_names(synth)[2]
    marker, go = synth / "kill_write.killed", synth / "kill_write.go"
    t0 = time.time()
    proc = _driver(cfg_path, _env(HPCP_TEST_KILL_WRITING=sitefile.site_file_name(plate, well, site),
                                  HPCP_TEST_KILL_MARKER=marker, HPCP_TEST_KILL_GO=go))
    _until(marker.exists, 600, "task half-way through the site file", proc)
    _until(lambda: _queue_length(_array_ids(cfg)) == 1, 600, "the other tasks leaving the queue", proc)
    go.touch()
    out = _wait(proc, BOUND_S + POLL_S + 120)
    t_end = time.time()
    assert proc.returncode == 1, out[-3000:]
    assert t_end - marker.stat().st_mtime <= BOUND_S + POLL_S, out[-3000:]
    assert f"{plate}/{well}/{site}" in out and "SIGKILL" in out, out[-3000:]
    assert "Bypassing sacct error" not in out and out.count("note: sacct failed") <= 1, out[-3000:]
    assert _temps(cfg.out), "the fault did not land in the middle of a site file write"
    fails = {(f["plate"], f["well"], f["site"]): f for f in orch.list_failures(cfg, "extract")}
    assert (plate, well, site) in fails and fails[(plate, well, site)]["error_type"] == "TaskLostError"
    assert "SIGKILL" in fails[(plate, well, site)]["message"]
    assert not (cfg.out / "profiles").exists()  # the chain ended before reduce
    rc, text = _status_failed(cfg_path)
    assert rc == 1 and f"{plate}/{well}/{site}" in text and "SIGKILL" in text, text
    print(f"kill mid-write: run ended {t_end - marker.stat().st_mtime:.1f} s after the fault "
          f"({t_end - t0:.1f} s in all)")

    res = run_batch(cfg, ranks=1, report=False, out=lambda s: None)  # the rerun resumes
    assert res.failures == 0 and orch.list_failures(cfg, "extract") == []
    assert _temps(cfg.out) == []
    _assert_same_outputs(cfg, reference)


@pytest.mark.slow
@pytest.mark.slurm
def test_scancel_of_one_array_task_ends_run_then_rerun_completes(synth, reference, local_slurm):
    cfg_path, cfg = _prepare(synth, reference, "scancel", local_slurm.partition, array_parallelism=2)
    proc = _driver(cfg_path, _env(HPCP_TEST_HOLD_ARRAY_TASK=1))  # task 1 waits to be cancelled
    _until(lambda: len(_array_ids(cfg)) == 4, 300, "extract array", proc)
    victim = _array_ids(cfg)[1]
    # the held task runs and the others are gone: the time to the exit is the driver's alone
    _until(lambda: _queue(_array_ids(cfg)) == {victim: ("RUNNING", "None")}, 600,
           f"task {victim} running alone", proc)
    subprocess.run(["scancel", victim], check=True)
    t_fault = time.time()
    out = _wait(proc, BOUND_S + POLL_S + 120)
    t_end = time.time()
    assert t_end - t_fault <= BOUND_S + POLL_S, out[-3000:]
    assert proc.returncode == 1, out[-3000:]
    assert f"task {victim}" in out and "CANCELLED" in out, out[-3000:]
    fails = [f for f in orch.list_failures(cfg, "extract") if f["task"] == victim]
    assert fails and all("CANCELLED" in f["message"] for f in fails)
    for f in fails:
        assert f"{f['plate']}/{f['well']}/{f['site']}" in out
    print(f"scancel: run ended {t_end - t_fault:.1f} s after the fault")

    res = run_batch(cfg, ranks=1, report=False, out=lambda s: None)
    assert res.failures == 0 and orch.list_failures(cfg, "extract") == []
    _assert_same_outputs(cfg, reference)


@pytest.mark.slow
@pytest.mark.slurm
def test_lost_task_resubmitted_once_with_max_retries_1(synth, reference, local_slurm):
    cfg_path, cfg = _prepare(synth, reference, "retry", local_slurm.partition, max_retries=1)
    plate, well, site = _site_names(synth)[5]
    marker = synth / "retry.killed"
    proc = _driver(cfg_path, _env(HPCP_TEST_KILL_WRITING=sitefile.site_file_name(plate, well, site),
                                  HPCP_TEST_KILL_MARKER=marker))
    out = _wait(proc, 600)
    assert marker.exists(), out[-3000:]
    assert proc.returncode == 0, out[-3000:]
    assert out.count("resubmitting") == 1 and "retry 1 of 1" in out, out[-3000:]
    extract = [ln for ln in out.splitlines() if ln.startswith("[extract")]
    assert extract and "1 resubmission(s)" in extract[0], out[-3000:]
    assert orch.list_failures(cfg, "extract") == []
    # the second submission held only the lost task's sites
    batches = sorted((orch.read_json(b) for b in (cfg.out / "batches").glob("extract-*/batch.json")),
                     key=lambda r: r["created"])
    assert [b["n_scheduled"] for b in batches[:1]] == [8] and len(batches) == 2
    from hpc_profiler import manifest as manifest_mod

    again = manifest_mod.load_manifest(cfg.out / "batches" / batches[1]["batch"] / "sites.parquet")
    keys = {(s.plate, s.well, str(s.site)) for s in again}
    assert (plate, well, site) in keys and len(keys) <= 2  # the killed task's unfinished sites, no others
    _assert_same_outputs(cfg, reference)


@pytest.mark.slow
@pytest.mark.slurm
def test_task_lost_again_after_its_retry_ends_the_run_with_a_summary(synth, reference, local_slurm):
    """max_retries: 1 and the site's task dies both times: one resubmission, then exit 1 with the summary
    (task, Slurm state, sites, log), the sites in the failure table; never a wait on a dependency."""
    cfg_path, cfg = _prepare(synth, reference, "retry_lost", local_slurm.partition, max_retries=1)
    plate, well, site = _site_names(synth)[4]
    marker = synth / "retry_lost.killed"
    proc = _driver(cfg_path, _env(HPCP_TEST_KILL_WRITING=sitefile.site_file_name(plate, well, site),
                                  HPCP_TEST_KILL_MARKER=marker, HPCP_TEST_KILL_TIMES=2))
    out = _wait(proc, 600)
    assert marker.exists() and Path(f"{marker}.2").exists(), out[-3000:]
    assert proc.returncode == 1, out[-3000:]
    assert out.count("resubmitting") == 1 and "retry 1 of 1" in out, out[-3000:]
    assert "task(s) ended without a result after 1 retry (executor.max_retries)" in out, out[-3000:]
    summary = [ln for ln in out.splitlines() if ln.strip().startswith("task ") and f"{plate}/{well}/{site}" in ln]
    assert summary and "SIGKILL" in summary[0] and "; log " in summary[0], out[-3000:]
    fails = {(f["plate"], f["well"], f["site"]): f for f in orch.list_failures(cfg, "extract")}
    assert (plate, well, site) in fails and "SIGKILL" in fails[(plate, well, site)]["message"]
    assert not (cfg.out / "profiles").exists()
    batches = list((cfg.out / "batches").glob("extract-*/batch.json"))
    assert len(batches) == 2


def _mpi_inputs(synth, reference, name, partition):
    cfg_path, cfg = _prepare(synth, reference, name, partition)
    shutil.copytree(reference.out / "sites", cfg.out / "sites")
    return cfg_path, cfg


@pytest.mark.slow
@pytest.mark.slurm
@pytest.mark.mpi
def test_rank_killed_in_mpi_init_under_srun_ends_the_job(synth, reference, local_slurm, mpirun, monkeypatch):
    cfg_path, cfg = _mpi_inputs(synth, reference, "rank_srun", local_slurm.partition)
    marker = synth / "rank_srun.killed"
    for k, v in _env(HPCP_TEST_KILL_RANK=0, HPCP_TEST_KILL_MARKER=marker).items():
        monkeypatch.setenv(k, v)
    t0 = time.time()
    with pytest.raises(StageError) as info:
        run_mpi_stage(cfg, "reduce", 2, "slurm")
    t_end = time.time()
    msg = str(info.value)
    assert marker.exists(), msg
    assert t_end - marker.stat().st_mtime <= BOUND_S + POLL_S, msg
    job = msg.split("Slurm job ")[1].split()[0]
    assert f"log {cfg.out / 'logs' / f'reduce_{job}.out'}" in msg, msg
    assert "FAILED" in msg or "signal" in msg, msg
    print(msg)
    print(f"srun rank kill: stage ended {t_end - marker.stat().st_mtime:.1f} s after the fault ({t_end - t0:.1f} s)")

    monkeypatch.delenv("HPCP_TEST_KILL_RANK")
    t1 = time.time()
    how, seconds = run_mpi_stage(cfg, "reduce", 2, "slurm")  # the rerun completes
    wall = time.time() - t1
    rerun_job = how.split("job ")[-1].rstrip(")")
    start, end, rc = (float(x) for x in (cfg.out / "logs" / f"reduce_{rerun_job}.time").read_text().split())
    # the stage time is the srun inside the job, as the job wrote it: not the queue wait, not our polling
    assert "slurm job of 2 ranks" in how and rc == 0 and seconds == pytest.approx(end - start) and seconds <= wall
    for table in ("well_normalized.parquet", "well_feature_selected.parquet"):
        pd.testing.assert_frame_equal(pd.read_parquet(cfg.out / "profiles" / table),
                                      pd.read_parquet(reference.out / "profiles" / table))


@pytest.mark.slow
@pytest.mark.mpi
def test_rank_killed_in_mpi_init_under_mpirun_ends_the_stage(synth, reference, mpirun, monkeypatch):
    cfg_path, cfg = _mpi_inputs(synth, reference, "rank_mpirun", None)
    marker = synth / "rank_mpirun.killed"
    for k, v in _env(HPCP_TEST_KILL_RANK=0, HPCP_TEST_KILL_MARKER=marker, **mpirun_env()).items():
        monkeypatch.setenv(k, v)
    with pytest.raises(StageError) as info:
        run_mpi_stage(cfg, "reduce", 2, "local")
    t_end = time.time()
    msg = str(info.value)
    assert marker.exists(), msg
    assert t_end - marker.stat().st_mtime <= BOUND_S + POLL_S, msg
    assert "mpirun" in msg and f"log {cfg.out / 'logs'}" in msg, msg
    print(f"mpirun rank kill: stage ended {t_end - marker.stat().st_mtime:.1f} s after the fault")

    monkeypatch.delenv("HPCP_TEST_KILL_RANK")
    how, _seconds = run_mpi_stage(cfg, "reduce", 2, "local")
    assert how == "mpirun -n 2"
    pd.testing.assert_frame_equal(pd.read_parquet(cfg.out / "profiles" / "well_feature_selected.parquet"),
                                  pd.read_parquet(reference.out / "profiles" / "well_feature_selected.parquet"))


def mpirun_env() -> dict:
    return {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}


@pytest.mark.slow
@pytest.mark.mpi
def test_rank_that_misses_the_first_barrier_is_killed_by_the_startup_watchdog(mpirun):
    """Rank 1 never reaches MPI start-up: rank 0 waits at the first barrier only
    HPC_PROFILER_MPI_STARTUP_TIMEOUT_S seconds, then its watchdog kills it and mpirun ends the job."""
    code = ("import os, time\n"
            "from hpc_profiler import mpi\n"
            "if os.environ['OMPI_COMM_WORLD_RANK'] == '1':\n"
            "    time.sleep(300)\n"
            "mpi.get_comm()\n"
            "print('passed the barrier', flush=True)\n")
    t0 = time.time()
    proc = mpirun([mpirun.python, "-c", code], n=2, timeout=120, check=False,
                  env={"HPC_PROFILER_MPI_STARTUP_TIMEOUT_S": "3"})
    dt = time.time() - t0
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert "passed the barrier" not in proc.stdout
    assert "[rank 0] error: MPI start-up (MPI_Init and the first barrier) did not complete within 3 s" in proc.stderr, \
        proc.stderr
    assert dt <= 3 + BOUND_S, dt  # the fault is the 3 s timeout passing; the bound after it
    # with the ranks in step, the barrier is passed and the watchdog stays silent (a generous timeout:
    # a loaded machine may take a while to start two Pythons)
    proc = mpirun([mpirun.python, "-c", code.replace("== '1'", "== 'none'")], n=2, timeout=300,
                  env={"HPC_PROFILER_MPI_STARTUP_TIMEOUT_S": "120"})
    assert proc.stdout.count("passed the barrier") == 2 and "start-up" not in proc.stderr


@pytest.mark.slow
@pytest.mark.slurm
def test_status_shows_dead_tasks_as_failures_without_a_driver(synth, reference, local_slurm):
    """`submit` without --wait, then the array is cancelled: status alone finds the dead tasks."""
    cfg_path, cfg = _prepare(synth, reference, "status_dead", local_slurm.partition, array_parallelism=1)
    r = orch.submit_stage(cfg, "extract")
    array = r.job_ids[0].split("_")[0]
    _until(lambda: any(x["status"] == "done" for x in orch.read_worklog(cfg, "extract")), 600, "first site done")
    subprocess.run(["scancel", array], check=True)
    _until(lambda: orch.slurm_queue(r.job_ids) == {}, 120, f"array {array} leaving the queue", poll=0.5)
    st = status.collect_status(cfg)
    done = st.totals.done
    assert 1 <= done < 8 and st.totals.failed == 8 - done and st.totals.pending == 0
    assert st.eta_s is None and not st.running_jobs
    assert all(f["error_type"] == "TaskLostError" and "CANCELLED" in f["message"] for f in st.failures)
    assert {f["task"] for f in st.failures} <= set(r.job_ids)
    rc, text = _status_failed(cfg_path)
    assert rc == 1 and "ETA -" in text and "CANCELLED" in text, text
    # resubmitted, the same sites are pending in the new batch (not failed) and then done
    r2 = orch.submit_stage(cfg, "extract", wait=True)
    assert r2.n_scheduled == 8 - done and not r2.lost
    st = status.collect_status(cfg)
    assert (st.totals.done, st.totals.failed, st.totals.pending) == (8, 0, 0) and not st.failures


@pytest.mark.slow
@pytest.mark.slurm
def test_status_shows_a_dead_illum_task_as_a_failed_plate_without_a_driver(synth, local_slurm, monkeypatch):
    """`submit illum` without --wait, task 1 (one plate) is cancelled while it runs: `status` alone names
    that plate's illumination as failed with the Slurm state; the other plate's functions are there."""
    cfg_path = _config(synth, "status_illum", partition=local_slurm.partition)
    cfg = load_config(cfg_path)
    for k, v in _env(HPCP_TEST_HOLD_ARRAY_TASK=1).items():  # sbatch passes the environment to the tasks
        monkeypatch.setenv(k, v)
    r = orch.submit_stage(cfg, "illum")
    assert len(r.job_ids) == 2
    victim = r.job_ids[1]
    _until(lambda: orch.slurm_queue(r.job_ids) == {victim: ("RUNNING", "None")}, 600, f"task {victim} running alone")
    subprocess.run(["scancel", victim], check=True)
    _until(lambda: orch.slurm_queue(r.job_ids) == {}, 120, f"task {victim} leaving the queue", poll=0.5)
    st = status.collect_status(cfg)
    dead = [f for f in st.failures if f["stage"] == "illum"]
    assert len(dead) == 1 and dead[0]["task"] == victim and dead[0]["error_type"] == "TaskLostError", st.failures
    assert "CANCELLED" in dead[0]["message"], dead[0]
    lost_plate = dead[0]["plate"]
    assert {p.plate: p.illum for p in st.plates} == {p.plate: p.plate != lost_plate for p in st.plates}
    assert st.eta_s is None and not st.running_jobs
    rc, text = _status_failed(cfg_path)
    assert rc == 1 and f"illumination failed for plates: {lost_plate}" in text and "CANCELLED" in text, text
    assert f"[illum] {lost_plate}: TaskLostError: task {victim} ended without a result: CANCELLED" in text, text
    # resubmitted (no hold now), the plate's functions are written and status is clean
    monkeypatch.delenv("HPCP_TEST_HOLD_ARRAY_TASK")
    r2 = orch.submit_stage(cfg, "illum", wait=True)
    assert r2.n_scheduled == 1 and not r2.lost
    st = status.collect_status(cfg)
    assert not [f for f in st.failures if f["stage"] == "illum"] and all(p.illum for p in st.plates)


@pytest.mark.slow
@pytest.mark.slurm
def test_task_waiting_on_a_dependency_that_can_never_be_satisfied_is_failed(tmp_path, local_slurm):
    """A job held by `afterok` on a failed job would pend forever (DependencyNeverSatisfied, even
    without accounting): the driver's watch cancels it and reports it within the bound."""
    import submitit

    bad = subprocess.run(["sbatch", "--parsable", f"--partition={local_slurm.partition}", "--mem=100M",
                          "--time=2", f"--output={tmp_path / 'bad.out'}", "--wrap=exit 3"],
                         capture_output=True, text=True, check=True).stdout.strip().split(";")[0]
    _until(lambda: orch.slurm_queue([bad]) == {}, 600, f"job {bad} to fail", poll=0.5)
    ex = submitit.AutoExecutor(folder=tmp_path / "logs" / "%j", cluster="slurm")
    ex.update_parameters(timeout_min=2, mem_gb=0.2, cpus_per_task=1, slurm_partition=local_slurm.partition,
                         slurm_additional_parameters={"dependency": f"afterok:{bad}"})
    job = ex.submit(abs, -1)
    t0 = time.time()
    (res,) = watch.wait_for([job], kind="slurm", poll_s=POLL_S)
    dt = time.time() - t0
    assert isinstance(res, watch.TaskLostError), res
    assert "DependencyNeverSatisfied" in res.reason and "cancelled by hpc-profiler" in res.reason, res.reason
    assert res.task == str(job.job_id) and res.log
    assert dt <= BOUND_S + POLL_S, dt
    _until(lambda: orch.slurm_queue([job.job_id]) == {}, 60, f"job {job.job_id} cancelled", poll=0.5)
    print(f"dependency never satisfied: reported {dt:.1f} s after submission")
