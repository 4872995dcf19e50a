"""Orchestration (issue 5): submitit arrays on the real local Slurm, resume, faults, status.

The batch is tiny (2 plates x 2 wells x 3 sites of 128 px, LoadData CSV) so
the Slurm tests run in a couple of minutes on 2 cores. The uninterrupted run
(``finished_batch``) is the reference the interrupted runs are compared with,
site file by site file and value by value.
"""
from __future__ import annotations

import csv
import os
import pickle
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from hpc_profiler import manifest as manifest_mod
from hpc_profiler import orchestrate as orch
from hpc_profiler import sitefile, status
from hpc_profiler.config import CPJUMP1_CHANNELS, load_config

PLATES = ["PLATE1", "PLATE2"]
WELLS = ["B02", "B03"]
SITES = [1, 2, 3]
SIZE = 128
CORRUPT = ("PLATE2", "B02", 1, "ER")  # this channel's TIFF is truncated garbage
MISSING = ("PLATE2", "B03", 2, "Mito")  # this channel's TIFF does not exist


def _site_images(seed: int) -> dict:
    """Five 16-bit channels with a few round nuclei and larger cells around them."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    dna = np.zeros((SIZE, SIZE))
    cyto = np.zeros((SIZE, SIZE))
    for cy, cx in rng.uniform(24, SIZE - 24, size=(5, 2)):
        r2 = (yy - cy) ** 2 + (xx - cx) ** 2
        dna += 0.35 * np.exp(-r2 / (2 * 5.0**2))
        cyto += 0.04 * np.exp(-r2 / (2 * 13.0**2))
    out = {}
    for i, ch in enumerate(CPJUMP1_CHANNELS):
        base = dna if ch == "DNA" else cyto * (1 + 0.2 * i)
        img = 0.002 + base + rng.normal(0, 0.0015, size=base.shape)
        out[ch] = np.clip(img * 65535, 0, 65535).astype(np.uint16)
    return out


def make_batch(root: Path) -> dict:
    """Write the TIFFs and a LoadData CSV; return ``{"csv", "images", "bad": {...}}``."""
    import tifffile

    images = root / "images"
    rows = []
    bad = {}
    seed = 0
    for plate in PLATES:
        for well in WELLS:
            for site in SITES:
                seed += 1
                row = {"Metadata_Plate": plate, "Metadata_Well": well, "Metadata_Site": site}
                for ch, img in _site_images(seed).items():
                    name = f"{plate}_{well}_s{site}_{ch}.tiff"
                    path = images / plate / name
                    path.parent.mkdir(parents=True, exist_ok=True)
                    key = (plate, well, site, ch)
                    if key == CORRUPT:
                        tifffile.imwrite(path.with_suffix(".good"), img)
                        path.write_bytes(b"II*\x00" + b"\x07" * 40)
                        bad["corrupt"] = path
                    elif key == MISSING:
                        tifffile.imwrite(path.with_suffix(".good"), img)
                        bad["missing"] = path
                    else:
                        tifffile.imwrite(path, img)
                    row[f"FileName_Orig{ch}"] = name
                    row[f"PathName_Orig{ch}"] = str(path.parent)
                rows.append(row)
    csv_path = root / "load_data.csv"
    with open(csv_path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return {"csv": csv_path, "images": images, "bad": bad}


def fix_bad_files(batch: dict) -> None:
    for path in batch["bad"].values():
        shutil.copyfile(path.with_suffix(".good"), path)


def write_config(path: Path, csv_path: Path, out: Path, kind: str = "slurm", partition=None, sections=None,
                 **executor) -> Path:
    ex = {"kind": kind, "sites_per_task": 4, "cpus_per_task": 1, "mem_gb": 1, "time_min": 10,
          "array_parallelism": 2, "max_retries": 2}
    if partition:
        ex["partition"] = partition
    ex.update(executor)
    cfg = {
        "name": "orchtest",
        "device": "cpu",
        "output_dir": str(out),
        "input": {"loaddata_csv": str(csv_path)},
        # PLATE2 has 2 bad sites of 6: its illumination function is made from the other 4
        "illumination": {"median_filter_size": 10, "downsample": 2, "max_unreadable_fraction": 0.5},
        "features": {"families": ["AreaShape", "Intensity"], "zernike_degree": 3},
        "executor": ex,
    }
    for key, value in (sections or {}).items():
        cfg[key].update(value)
    path.write_text(yaml.safe_dump(cfg))
    return path


def all_keys() -> set:
    return {(p, w, s) for p in PLATES for w in WELLS for s in SITES}


def valid_keys(cfg) -> set:
    sites = manifest_mod.load_manifest(orch.manifest_path(cfg))
    return {(s.plate, s.well, s.site) for s in sites if orch.site_done(cfg, s)}


def temp_files(out: Path) -> list:
    return [p for p in out.rglob("*") if ".tmp" in p.name]


def site_files(out: Path) -> list:
    return sorted(p.relative_to(out) for p in (out / "sites").rglob("*.h5"))


def done_records(cfg, batch=None) -> list:
    return [r for r in orch.read_worklog(cfg, "extract")
            if r["status"] == "done" and (batch is None or r["batch"] == batch)]


def wait_until(pred, timeout: float, what: str, poll: float = 0.5):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if pred():
            return
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def run_status(cfg_path, failed=True):
    import argparse

    p = argparse.ArgumentParser()
    status.add_status_arguments(p)
    args = p.parse_args([str(cfg_path)] + (["--failed"] if failed else []))
    return status.main_status(args)


# ============================================================== fast unit tests
def test_chunk_ranges_cover_every_index_once():
    assert orch.chunk_ranges(10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert orch.chunk_ranges(0, 4) == []
    assert orch.chunk_ranges(3, 16) == [(0, 3)]
    with pytest.raises(ValueError):
        orch.chunk_ranges(3, 0)


def test_executor_resources_reach_the_sbatch_script(tmp_path):
    """cfg.executor -> submitit parameters -> the #SBATCH lines submitit writes."""
    cfg_path = write_config(tmp_path / "c.yaml", tmp_path / "x.csv", tmp_path / "out", kind="slurm",
                            partition="gpuq", account="lab", qos="high", gres="gpu:1", time_min=90,
                            cpus_per_task=4, mem_gb=16, array_parallelism=7,
                            extra_sbatch=["--constraint=a100", "#SBATCH --reservation big", "exclusive"])
    cfg = load_config(cfg_path)
    params = orch.submitit_parameters(cfg, "extract", "slurm")
    assert params["slurm_additional_parameters"] == {"constraint": "a100", "reservation": "big", "exclusive": True}
    ex = orch.make_executor(cfg, "extract", "slurm")._executor  # the real SlurmExecutor
    assert ex.max_num_timeout == cfg.executor.max_retries
    assert ex.parameters["array_parallelism"] == 7
    text = ex._make_submission_file_text("python -m x", "uid")  # the sbatch script submitit would send
    for line in ["#SBATCH --partition=gpuq", "#SBATCH --account=lab", "#SBATCH --qos=high",
                 "#SBATCH --gres=gpu:1", "#SBATCH --constraint=a100", "#SBATCH --reservation=big",
                 "#SBATCH --exclusive", "#SBATCH --cpus-per-task=4", "#SBATCH --mem=16GB",
                 "#SBATCH --time=90", "#SBATCH --job-name=orchtest-extract", "export OMP_NUM_THREADS=4"]:
        assert line in text, (line, text)
    with pytest.raises(orch.OrchestrationError, match="long option"):
        orch.parse_extra_sbatch(["-C a100"])


def test_tasks_carry_paths_not_the_manifest(tmp_path):
    """A pickled task is the same few hundred bytes for 12 or 12,000 sites."""
    cfg = load_config(write_config(tmp_path / "c.yaml", tmp_path / "x.csv", tmp_path / "out"))
    task = orch.StageTask(cfg, "extract", str(tmp_path / "sites.parquet"), "b1")
    blob = pickle.dumps(task)
    assert b"sites.parquet" in blob and len(blob) < 20000


def test_requeues_bounded_by_max_retries(tmp_path):
    """StageTask.checkpoint resubmits the same range max_retries times, then declines (submitit stops)."""
    cfg = load_config(write_config(tmp_path / "c.yaml", tmp_path / "x.csv", tmp_path / "out", max_retries=2))
    task = orch.StageTask(cfg, "extract", str(tmp_path / "sites.parquet"), "b1")
    first = task.checkpoint(4, 8)
    assert first.args == (4, 8) and first.function is task
    assert task.checkpoint(4, 8) is not None
    assert task.checkpoint(4, 8) is None
    assert task.requeues == 2


def test_throughput_uses_the_latest_batch_span():
    recs = [  # batch b1 long ago; b2: 3 sites done between t=1000 and t=1010 (one skipped, one failed)
        {"status": "done", "start": 0.0, "end": 5.0, "batch": "b1"},
        {"status": "done", "start": 1000.0, "end": 1004.0, "batch": "b2"},
        {"status": "done", "start": 1004.0, "end": 1007.0, "batch": "b2"},
        {"status": "done", "start": 1006.0, "end": 1010.0, "batch": "b2"},
        {"status": "skipped", "start": 1010.0, "end": 1010.0, "batch": "b2"},
        {"status": "failed", "start": 1010.0, "end": 1020.0, "batch": "b2"},
    ]
    assert status.throughput(recs) == pytest.approx(3 / 10 * 3600)
    assert status.throughput([r for r in recs if r["status"] != "done"]) is None


def test_remove_stale_temps_only_touches_that_files_temporaries(tmp_path):
    target = tmp_path / "P_A01_s1.h5"
    stale = [tmp_path / ".P_A01_s1.h5.0a1b2c.tmp.h5", tmp_path / ".P_A01_s1.h5.ffee.tmp"]
    keep = [tmp_path / ".P_A01_s10.h5.0a1b2c.tmp.h5", tmp_path / "P_A01_s1.h5.bak", target]
    for p in stale + keep:
        p.write_bytes(b"x")
    assert orch.remove_stale_temps(target) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in keep)


def test_cli_dry_run_and_task_count(tmp_path, capsys):
    import argparse

    batch = make_batch(tmp_path / "data")
    cfg_path = write_config(tmp_path / "c.yaml", batch["csv"], tmp_path / "out", kind="debug", sites_per_task=5)
    p = argparse.ArgumentParser()
    orch.add_submit_arguments(p)
    assert orch.main_submit(p.parse_args(["extract", str(cfg_path), "--dry-run"])) == 0
    assert "12 sites, 0 done, 12 would run in 3 task(s)" in capsys.readouterr().out
    assert not (tmp_path / "out").exists()  # a dry run writes nothing
    p = argparse.ArgumentParser()
    orch.add_run_task_arguments(p)
    assert orch.main_run_task(p.parse_args([str(cfg_path), "--stage", "extract", "--count"])) == 0
    assert orch.main_run_task(p.parse_args([str(cfg_path), "--stage", "illum", "--count"])) == 0
    assert capsys.readouterr().out.split() == ["3", "2"]
    assert orch.main_run_task(p.parse_args([str(cfg_path), "--stage", "extract", "--task-id", "7"])) == 2
    assert "task id 7 outside 0..2" in capsys.readouterr().err


def test_local_faults_recorded_then_cleared(tmp_path, capsys):
    """In-process (debug executor): bad inputs -> failure table naming the files; fix -> resume clears it."""
    batch = make_batch(tmp_path / "data")
    cfg_path = write_config(tmp_path / "c.yaml", batch["csv"], tmp_path / "out", kind="debug",
                            sites_per_task=6,  # the Slurm tests cover illum; keep this one quick
                            sections={"illumination": {"enabled": False}, "features": {"families": ["Intensity"]}})
    cfg = load_config(cfg_path)
    res = orch.submit_stage(cfg, "extract", wait=True)
    assert (res.n_total, res.n_scheduled, res.n_tasks) == (12, 12, 2)
    assert sum(r["done"] for r in res.results) == 10 and sum(r["failed"] for r in res.results) == 2
    fails = orch.list_failures(cfg, "extract")
    by_site = {(f["plate"], f["well"], f["site"]): f for f in fails}
    assert set(by_site) == {("PLATE2", "B02", "1"), ("PLATE2", "B03", "2")}
    assert str(batch["bad"]["corrupt"]) in by_site[("PLATE2", "B02", "1")]["message"]
    assert str(batch["bad"]["missing"]) in by_site[("PLATE2", "B03", "2")]["message"]
    assert all(f["error_type"] in ("SiteInputError", "ImageReadError") for f in fails)
    assert valid_keys(cfg) == all_keys() - {("PLATE2", "B02", 1), ("PLATE2", "B03", 2)}
    st = status.collect_status(cfg)
    assert (st.totals.done, st.totals.failed, st.totals.pending) == (10, 2, 0)
    capsys.readouterr()
    assert run_status(cfg_path, failed=True) == 1  # non-zero while anything failed, naming the files
    text = capsys.readouterr().out
    assert str(batch["bad"]["corrupt"]) in text and str(batch["bad"]["missing"]) in text

    fix_bad_files(batch)
    res2 = orch.submit_stage(cfg, "extract", wait=True)
    assert res2.n_scheduled == 2 and sum(r["done"] for r in res2.results) == 2
    assert orch.list_failures(cfg, "extract") == []
    assert valid_keys(cfg) == all_keys()
    assert orch.submit_stage(cfg, "extract", dry_run=True).n_scheduled == 0
    assert temp_files(tmp_path / "out") == []
    assert run_status(cfg_path) == 0


# ============================================================== real local Slurm
@pytest.fixture(scope="module")
def slurm_data(local_slurm, tmp_path_factory):
    root = tmp_path_factory.mktemp("orch")
    return {"root": root, "batch": make_batch(root / "data"), "partition": local_slurm.partition}


@pytest.fixture(scope="module")
def finished_batch(slurm_data):
    """The uninterrupted reference run on Slurm, with the two bad sites fixed and resumed."""
    root, batch = slurm_data["root"], slurm_data["batch"]
    cfg_path = write_config(root / "a.yaml", batch["csv"], root / "out_a", partition=slurm_data["partition"])
    cfg = load_config(cfg_path)

    r_illum = orch.submit_stage(cfg, "illum", wait=True)
    assert (r_illum.n_scheduled, r_illum.n_tasks) == (2, 2)
    assert all(isinstance(r, dict) and r["done"] == 1 for r in r_illum.results), r_illum.results
    r1 = orch.submit_stage(cfg, "extract", wait=True)
    assert r1.kind == "slurm" and len({j.split("_")[0] for j in r1.job_ids}) == 1  # one array job
    assert (r1.n_scheduled, r1.n_tasks) == (12, 3)
    assert all(isinstance(r, dict) for r in r1.results), r1.results
    failures_before = orch.list_failures(cfg, "extract")
    status_before = run_status(cfg_path)

    fix_bad_files(batch)
    r2 = orch.submit_stage(cfg, "extract", wait=True)  # PLATE2's function (from 4 of 6 sites) still serves
    return {"cfg": cfg, "cfg_path": cfg_path, "out": root / "out_a", "r1": r1, "r2": r2,
            "failures_before": failures_before, "status_before": status_before}


@pytest.mark.slurm
def test_slurm_bad_sites_recorded_others_complete(finished_batch, capsys):
    fb = finished_batch
    assert sum(r["done"] for r in fb["r1"].results) == 10
    assert sum(r["failed"] for r in fb["r1"].results) == 2
    fails = {(f["plate"], f["well"], f["site"]): f for f in fb["failures_before"]}
    assert set(fails) == {("PLATE2", "B02", "1"), ("PLATE2", "B03", "2")}
    # the failure names the file and the Slurm array task that met it
    assert "PLATE2_B02_s1_ER.tiff" in fails[("PLATE2", "B02", "1")]["message"]
    assert "PLATE2_B03_s2_Mito.tiff" in fails[("PLATE2", "B03", "2")]["message"]
    assert all(f["task"].startswith(fb["r1"].job_ids[0].split("_")[0] + "_") for f in fails.values())
    assert fb["status_before"] == 1


@pytest.mark.slurm
def test_slurm_batch_completes_resume_and_dry_run(finished_batch, capsys):
    fb = finished_batch
    cfg, out = fb["cfg"], fb["out"]
    assert fb["r2"].n_scheduled == 2 and sum(r["done"] for r in fb["r2"].results) == 2
    assert valid_keys(cfg) == all_keys()
    files = site_files(out)
    assert len(files) == len(set(files)) == 12
    # every site worked on exactly once across both submissions
    keys = [r["key"] for r in done_records(cfg)]
    assert len(keys) == len(set(keys)) == 12
    assert orch.list_failures(cfg, "extract") == []
    assert temp_files(out) == []
    assert orch.submit_stage(cfg, "extract", dry_run=True).n_scheduled == 0
    # PLATE2's function was made while 2 of its sites were unreadable; they are fixed now, so
    # the illum stage would redo it (its stamp covers the unreadable files)
    assert orch.submit_stage(cfg, "illum", dry_run=True).n_scheduled == 1
    capsys.readouterr()
    # ... and until it does, status counts those two illum rows as failures
    assert run_status(fb["cfg_path"]) == 1
    text = capsys.readouterr().out
    assert "illumination: 2 site(s) with unreadable images left out of plates PLATE2" in text
    assert "PLATE1" in text and "PLATE2" in text and "sites/h" in text


def _copy_illum(src_cfg, dst_cfg):
    shutil.copytree(src_cfg.out / "illum", dst_cfg.out / "illum")


def _assert_same_results(cfg, ref_cfg, plates=tuple(PLATES)):
    mine = [rel for rel in site_files(cfg.out) if rel.parts[1] in plates]
    assert mine == [rel for rel in site_files(ref_cfg.out) if rel.parts[1] in plates]
    for rel in mine:
        a = sitefile.read_site_file(cfg.out / rel)
        b = sitefile.read_site_file(ref_cfg.out / rel)
        assert set(a.objects) == set(b.objects)
        for obj in a.objects:
            x, y = a.objects[obj].values, b.objects[obj].values
            assert a.objects[obj].names == b.objects[obj].names and x.shape == y.shape, f"{rel} {obj}"
            differ = ~((x == y) | (np.isnan(x) & np.isnan(y)))
            cols = [a.objects[obj].names[c] for c in np.flatnonzero(differ.any(axis=0))]
            assert not cols, f"{rel} {obj}: features differ from the uninterrupted run: {cols[:10]}"


def _squeue_empty(job_id: str) -> bool:
    out = subprocess.run(["squeue", "-h", "-j", job_id], capture_output=True, text=True)
    return out.returncode != 0 or not out.stdout.strip()


@pytest.mark.slurm
def test_slurm_scancel_half_way_then_resubmit_runs_only_missing(slurm_data, finished_batch):
    root = slurm_data["root"]
    cfg = load_config(write_config(root / "b.yaml", slurm_data["batch"]["csv"], root / "out_b",
                                   partition=slurm_data["partition"], sites_per_task=2, array_parallelism=2))
    _copy_illum(finished_batch["cfg"], cfg)
    r1 = orch.submit_stage(cfg, "extract")
    array_id = r1.job_ids[0].split("_")[0]
    wait_until(lambda: len(valid_keys(cfg)) >= 3, 240, "3 finished sites before the scancel")
    subprocess.run(["scancel", array_id], check=True)
    wait_until(lambda: _squeue_empty(array_id), 60, f"array {array_id} to leave the queue")
    finished = valid_keys(cfg)
    assert 3 <= len(finished) < 12

    r2 = orch.submit_stage(cfg, "extract", wait=True)
    assert (r2.n_scheduled, r2.n_done) == (12 - len(finished), len(finished))
    assert all(isinstance(r, dict) for r in r2.results), r2.results
    second = {tuple(r["key"].split("/")) for r in done_records(cfg, r2.batch)}
    assert second == {(p, w, str(s)) for p, w, s in all_keys() - finished}  # only the missing ones ran
    keys = [r["key"] for r in done_records(cfg)]
    assert len(keys) == len(set(keys))  # nothing done twice
    assert valid_keys(cfg) == all_keys()
    assert temp_files(cfg.out) == []
    _assert_same_results(cfg, finished_batch["cfg"])


def _start_requeued_now(job_id: str) -> None:
    """Let a requeued job start at once: Slurm defers a requeued job by 2 minutes (its BeginTime; `scontrol update` calls it StartTime)."""

    def requeued_and_pending():
        out = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True).stdout
        return "Restarts=1" in out and "JobState=PENDING" in out

    wait_until(requeued_and_pending, 120, f"job {job_id} to be requeued")
    # slurmd revokes the old incarnation's credential with a time stamp in whole seconds; a
    # restart within the same second is killed as "Job credential revoked" (Slurm's own 2 minute
    # hold avoids that), so let a few seconds pass before starting it
    time.sleep(3)
    subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], check=True, capture_output=True)


@pytest.mark.slurm
def test_slurm_task_killed_mid_site_is_requeued_and_completes(slurm_data, finished_batch):
    root = slurm_data["root"]
    cfg = load_config(write_config(root / "c.yaml", slurm_data["batch"]["csv"], root / "out_c",
                                   partition=slurm_data["partition"], sites_per_task=12))
    _copy_illum(finished_batch["cfg"], cfg)
    r = orch.submit_stage(cfg, "extract")
    (job,) = r.jobs
    wait_until(lambda: len(done_records(cfg)) >= 2, 240, "2 finished sites before the preemption", poll=0.1)
    # freeze the task so the signal lands while it is still in its sites, not after its last one
    subprocess.run(["scancel", "--signal=STOP", job.job_id], check=True, capture_output=True)
    try:
        done_before = {x["key"] for x in done_records(cfg)}
        job._interrupt(timeout=False)  # what Slurm does on preemption: SIGTERM, then USR2 to submitit
    finally:
        subprocess.run(["scancel", "--signal=CONT", job.job_id], check=True, capture_output=True)
    _start_requeued_now(job.job_id)
    result = job.result()  # submitit follows the requeued task to its end
    assert isinstance(result, dict) and result["failed"] == 0, result
    # a task whose tiny sites all finish between SIGCONT and the signal's handling leaves its result before the
    # requeue: the requeued run then skips everything, later; read its work log only once the job left the queue
    wait_until(lambda: _squeue_empty(job.job_id), 240, f"requeued job {job.job_id} to leave the queue")
    info = subprocess.run(["scontrol", "show", "job", job.job_id], capture_output=True, text=True).stdout
    assert "Restarts=1" in info, info  # requeued exactly once
    recs = orch.read_worklog(cfg, "extract")
    skipped = {x["key"] for x in recs if x["status"] == "skipped"}
    assert len(done_before) < 12 and done_before <= skipped  # the requeued task went on after what was done
    keys = [x["key"] for x in recs if x["status"] == "done"]
    assert len(keys) == len(set(keys))  # no site done twice
    assert valid_keys(cfg) == all_keys()
    assert temp_files(cfg.out) == []
    _assert_same_results(cfg, finished_batch["cfg"])


@pytest.mark.slurm
def test_plain_sbatch_templates_illum_then_extract(slurm_data, finished_batch, repo_root):
    """slurm/illum_array.sbatch then slurm/extract_array.sbatch (afterok), as their headers say."""
    root = slurm_data["root"]
    cfg_path = write_config(root / "d.yaml", slurm_data["batch"]["csv"], root / "out_d",
                            partition=slurm_data["partition"], sites_per_task=6)
    cfg = load_config(cfg_path)
    cli = [sys.executable, "-m", "hpc_profiler"]
    env = dict(os.environ, HPC_PROFILER=" ".join(cli))

    def count(stage):
        out = subprocess.run(cli + ["run-task", "--stage", stage, "--count", str(cfg_path)],
                             capture_output=True, text=True, check=True)
        return int(out.stdout.strip())

    assert (count("illum"), count("extract")) == (2, 2)
    (root / "logs").mkdir(exist_ok=True)
    common = ["sbatch", "--parsable", "--array=0-1", "--mem=1G", f"--partition={slurm_data['partition']}"]
    jid = subprocess.run(common + [str(repo_root / "slurm" / "illum_array.sbatch"), str(cfg_path)],
                         cwd=root, env=env, capture_output=True, text=True, check=True).stdout.strip()
    jid2 = subprocess.run(common + [f"--dependency=afterok:{jid}", str(repo_root / "slurm" / "extract_array.sbatch"),
                                    str(cfg_path)], cwd=root, env=env, capture_output=True, text=True,
                          check=True).stdout.strip()
    wait_until(lambda: _squeue_empty(jid) and _squeue_empty(jid2), 240, f"sbatch arrays {jid}, {jid2}")
    logs = "\n".join(p.read_text() for p in sorted((root / "logs").glob("*.out")))
    assert valid_keys(cfg) == all_keys(), logs[-3000:]
    assert orch.list_failures(cfg, "extract") == [] and orch.list_failures(cfg, "illum") == []
    # PLATE2's illumination here includes the two sites that were bad in the reference run
    _assert_same_results(cfg, finished_batch["cfg"], plates=["PLATE1"])


def test_lost_task_sites_recorded_with_the_slurm_state(tmp_path):
    """A task without a result: its unfinished sites get TaskLostError records naming its state; a
    site the task itself recorded in this batch keeps its own error; a task with counts adds nothing."""
    from hpc_profiler.manifest import Site

    cfg = load_config(write_config(tmp_path / "c.yaml", tmp_path / "x.csv", tmp_path / "out"))
    sites = [Site("P1", "A01", i, {"DNA": f"/x/{i}.tif"}) for i in (1, 2, 3)]
    own = orch.record_failure(cfg, "extract", ValueError("bad TIFF /x/2.tif"), plate="P1", well="A01", site=2,
                              batch="b1")

    class FakeJob:
        def __init__(self, jid):
            self.job_id = jid

    lost = orch.TaskLostError("7_0", "CANCELLED, killed by signal 9 (SIGKILL)", "/logs/7_0/7_0_0_log.err")
    results = [lost, {"done": 1, "skipped": 0, "failed": 0}]
    out = orch._record_lost_tasks(cfg, "extract", "b1", results, [sites[:2], sites[2:]],
                                  [FakeJob("7_0"), FakeJob("7_1")])
    assert out == [lost] and lost.items == ["P1/A01/1", "P1/A01/2"]
    recs = {f["site"]: f for f in orch.list_failures(cfg, "extract")}
    assert set(recs) == {"1", "2"}
    assert recs["1"]["error_type"] == "TaskLostError" and recs["1"]["task"] == "7_0"
    assert "CANCELLED" in recs["1"]["message"] and "7_0_0_log.err" in recs["1"]["message"]
    assert recs["2"]["error_type"] == "ValueError" and recs["2"]["path"] == str(own)
    res = orch.SubmitResult("extract", "b1", "slurm", 3, 0, 3, 2, False, retries=1, lost=out)
    text = res.lost_summary()
    assert "2 site(s) not done: 1 task(s) ended without a result after 1 retry" in text
    assert "task 7_0: CANCELLED, killed by signal 9 (SIGKILL); site(s) P1/A01/1, P1/A01/2" in text
