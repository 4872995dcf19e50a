"""Time from each fault of issue 20 to a clean exit, on the local Slurm, beside the issue's bound.

    python scripts/bench_faults.py [--workdir DIR] [--poll 2]

Needs a running Slurm (``scripts/start_local_slurm.sh``; accounting disabled
is the case of interest), Open MPI's ``mpirun`` and mpi4py. Builds a tiny
synthetic batch (2 plates x 4 wells x 1 site) and an undisturbed run of it in
this process (debug executor), then injects, one after the other:

* SIGKILL of an extract task half-way through writing a site file (the
  driver ``hpc-profiler run`` must end non-zero naming the site and SIGKILL);
* ``scancel`` of one running extract task (must end non-zero, CANCELLED);
* SIGKILL of MPI rank 0 as ``MPI_Init`` starts, reduce under ``srun`` in a
  Slurm job and under ``mpirun`` (the stage must fail naming the job and log);
* a rank that never reaches the first barrier (``mpirun``; the start-up
  watchdog, ``executor.mpi_startup_timeout_s`` = 5 s here, must end it);
* a job held by ``afterok`` on a failed job (DependencyNeverSatisfied; the
  driver's watch must cancel and report it).

The faults come from ``tests/fault_hooks/sitecustomize.py`` (put on the
children's ``PYTHONPATH``), as in ``tests/test_faults.py``. The array faults
land once the other tasks of the array have left the queue, so the time
measures how fast the driver sees the death, not the others' work. Prints one
line per fault: seconds from the fault to the clean exit, the bound (60 s +
one polling interval; for the watchdog, counted from its timeout) and whether the
exit and its message were right. Exit code 1 when any fault missed its bound
or its message.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


REPO = Path(__file__).resolve().parents[1]
HOOKS = REPO / "tests" / "fault_hooks"
sys.path.insert(0, str(REPO / "tests"))
from fault_config import write_fault_config  # noqa: E402  (the config tests/test_faults.py runs)
BOUND_S = 60.0
CHANNELS = ["DNA", "ER", "RNA", "AGP", "Mito"]


def _until(pred, timeout: float, what: str, poll: float = 0.2) -> None:
    deadline = time.time() + timeout
    while not pred():
        if time.time() > deadline:
            raise RuntimeError(f"no {what} within {timeout:.0f} s")
        time.sleep(poll)


def _env(**extra) -> dict:
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    env["PYTHONPATH"] = os.pathsep.join([str(HOOKS)] + [p for p in [env.get("PYTHONPATH")] if p])
    env.update({k: str(v) for k, v in extra.items()})
    return env


def _partition() -> str:
    out = subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, text=True, check=True).stdout
    return out.split()[0].rstrip("*")


class Bench:
    def __init__(self, root: Path, poll: float):
        from hpc_profiler.config import SynthConfig, load_config
        from hpc_profiler.run import run_batch
        from hpc_profiler.synth import generate_batch

        self.root, self.poll, self.partition = root, poll, _partition()
        generate_batch(SynthConfig(modalities=["compound"], replicate_plates=2, wells=4, sites_per_well=1, size=192,
                                   cells_per_site=10, seed=5), root / "synth", CHANNELS)
        self.ref = load_config(write_fault_config(root, "reference", poll, kind="debug"))
        t0 = time.time()
        res = run_batch(self.ref, ranks=1, report=False, out=lambda s: None)
        assert res.failures == 0
        print(f"undisturbed run (debug executor, in this process): {time.time() - t0:.1f} s", flush=True)
        self.rows = []

    def prepare(self, name: str, sites: bool = False, **executor):
        from hpc_profiler.config import load_config

        path = write_fault_config(self.root, name, self.poll, partition=self.partition, **executor)
        cfg = load_config(path)
        shutil.copytree(self.ref.out / "illum", cfg.out / "illum")
        if sites:
            shutil.copytree(self.ref.out / "sites", cfg.out / "sites")
        return path, cfg

    def report(self, fault: str, seconds: float, bound: float, ok: bool, note: str) -> None:
        self.rows.append((fault, seconds, bound, ok and seconds <= bound))
        print(f"{fault:<50} {seconds:>7.1f} s  bound {bound:>5.0f} s  "
              f"{'ok' if ok and seconds <= bound else 'MISSED'}  {note}", flush=True)

    # ------------------------------------------------------------------ array faults
    def _driver(self, path: Path, env: dict):
        log = path.with_suffix(".driver.out")
        with open(log, "w") as fh:
            proc = subprocess.Popen([sys.executable, "-m", "hpc_profiler", "run", str(path), "--no-mpi",
                                     "--no-report"], stdout=fh, stderr=subprocess.STDOUT, env=env)
        return proc, log

    @staticmethod
    def _ids(cfg) -> list:
        from hpc_profiler.workflow.records import read_json

        return [j for b in sorted((cfg.out / "batches").glob("extract-*/batch.json")) for j in read_json(b)["job_ids"]]

    def _queue(self, cfg):
        from hpc_profiler.workflow.watch import slurm_queue

        ids = self._ids(cfg) if (cfg.out / "batches").exists() else []
        return slurm_queue(ids) if ids else None

    def kill_mid_write(self) -> None:
        from hpc_profiler import sitefile

        path, cfg = self.prepare("kill_write")
        with open(self.root / "synth" / "load_data.csv") as fh:
            import csv

            row = list(csv.DictReader(fh))[2]
        key = (row["Metadata_Plate"], row["Metadata_Well"], row["Metadata_Site"])
        marker, go = self.root / "kill_write.killed", self.root / "kill_write.go"
        proc, log = self._driver(path, _env(HPCP_TEST_KILL_WRITING=sitefile.site_file_name(*key),
                                            HPCP_TEST_KILL_MARKER=marker, HPCP_TEST_KILL_GO=go))
        _until(marker.exists, 600, "task half-way through its site file")
        _until(lambda: (q := self._queue(cfg)) is not None and len(q) == 1, 600, "other tasks leaving the queue")
        go.touch()
        rc = proc.wait(timeout=600)
        dt = time.time() - marker.stat().st_mtime
        out = log.read_text()
        ok = rc == 1 and "/".join(key) in out and "SIGKILL" in out
        self.report("SIGKILL of an array task mid-write", dt, BOUND_S + self.poll, ok, f"exit {rc}")

    def scancel_one_task(self) -> None:
        path, cfg = self.prepare("scancel", array_parallelism=2)
        proc, log = self._driver(path, _env(HPCP_TEST_HOLD_ARRAY_TASK=1))
        _until(lambda: len(self._ids(cfg)) == 4 if (cfg.out / "batches").exists() else False, 300, "extract array")
        victim = self._ids(cfg)[1]
        _until(lambda: self._queue(cfg) == {victim: ("RUNNING", "None")}, 600, f"task {victim} running alone")
        subprocess.run(["scancel", victim], check=True)
        t_fault = time.time()
        rc = proc.wait(timeout=600)
        dt = time.time() - t_fault
        out = log.read_text()
        ok = rc == 1 and f"task {victim}" in out and "CANCELLED" in out
        self.report("scancel of one array task", dt, BOUND_S + self.poll, ok, f"exit {rc}")

    # ------------------------------------------------------------------ MPI faults
    def rank_killed_in_mpi_init(self, kind: str) -> None:
        from hpc_profiler.run import StageError, run_mpi_stage

        name = f"rank_{kind}"
        path, cfg = self.prepare(name, sites=True)
        marker = self.root / f"{name}.killed"
        saved = dict(os.environ)
        os.environ.update(_env(HPCP_TEST_KILL_RANK=0, HPCP_TEST_KILL_MARKER=marker))
        msg = ""
        try:
            run_mpi_stage(cfg, "reduce", 2, kind)
        except StageError as exc:
            msg = str(exc)
        finally:
            os.environ.clear()
            os.environ.update(saved)
        dt = time.time() - marker.stat().st_mtime if marker.exists() else float("nan")
        where = "srun, Slurm job" if kind == "slurm" else "mpirun"
        ok = marker.exists() and f"log {cfg.out / 'logs'}" in msg and ("Slurm job" in msg if kind == "slurm"
                                                                       else "mpirun" in msg)
        self.report(f"SIGKILL of rank 0 in MPI_Init ({where})", dt, BOUND_S + self.poll, ok,
                    msg.splitlines()[0][:90] if msg else "no error raised")

    def rank_missing_the_barrier(self) -> None:
        from hpc_profiler.workflow.mpijob import mpi_launcher

        code = ("import os, time\nfrom hpc_profiler import mpi\n"
                "if os.environ.get('OMPI_COMM_WORLD_RANK', os.environ.get('PMI_RANK')) == '1':\n"
                "    time.sleep(600)\nmpi.get_comm()\n")
        timeout = 5.0
        t0 = time.time()
        proc = subprocess.run([*mpi_launcher(2), sys.executable, "-c", code],
                              capture_output=True, text=True, timeout=600,
                              env=_env(HPC_PROFILER_MPI_STARTUP_TIMEOUT_S=timeout))
        dt = time.time() - t0 - timeout  # the fault: the start-up timeout passing without the barrier
        ok = proc.returncode != 0 and "did not complete within 5 s" in proc.stderr
        self.report("rank never reaching the first barrier (5 s)", dt, BOUND_S + self.poll, ok,
                    f"mpirun exit {proc.returncode} (seconds after the 5 s timeout)")

    def dependency_never_satisfied(self) -> None:
        import submitit

        from hpc_profiler.workflow.watch import TaskLostError, slurm_queue, wait_for

        folder = self.root / "dependency"
        folder.mkdir(exist_ok=True)
        bad = subprocess.run(["sbatch", "--parsable", f"--partition={self.partition}", "--mem=100M", "--time=2",
                              f"--output={folder / 'bad.out'}", "--wrap=exit 3"],
                             capture_output=True, text=True, check=True).stdout.strip().split(";")[0]
        _until(lambda: slurm_queue([bad]) == {}, 600, f"job {bad} to fail", poll=0.5)
        ex = submitit.AutoExecutor(folder=folder / "%j", cluster="slurm")
        ex.update_parameters(timeout_min=2, mem_gb=0.2, cpus_per_task=1, slurm_partition=self.partition,
                             slurm_additional_parameters={"dependency": f"afterok:{bad}"})
        job = ex.submit(abs, -1)
        t0 = time.time()
        (res,) = wait_for([job], kind="slurm", poll_s=self.poll)
        dt = time.time() - t0
        ok = isinstance(res, TaskLostError) and "DependencyNeverSatisfied" in res.reason
        self.report("afterok on a failed job (never satisfied)", dt, BOUND_S + self.poll, ok,
                    f"{res.reason if ok else res!r} (from submission)")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", help="where the batch and runs go (default: a temporary folder, removed)")
    p.add_argument("--poll", type=float, default=2.0, help="executor.poll_interval_s (default 2)")
    a = p.parse_args(argv)
    if shutil.which("sbatch") is None or shutil.which("mpirun") is None:
        print("needs Slurm (sbatch) and mpirun on PATH: scripts/start_local_slurm.sh", file=sys.stderr)
        return 2
    tmp = None if a.workdir else tempfile.mkdtemp(prefix="bench_faults_")
    root = Path(a.workdir or tmp)
    root.mkdir(parents=True, exist_ok=True)
    try:
        bench = Bench(root, a.poll)
        print(f"{'fault':<50} {'to exit':>9}  {'bound':>11}", flush=True)
        bench.kill_mid_write()
        bench.scancel_one_task()
        bench.rank_killed_in_mpi_init("slurm")
        bench.rank_killed_in_mpi_init("local")
        bench.rank_missing_the_barrier()
        bench.dependency_never_satisfied()
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0 if all(ok for *_rest, ok in bench.rows) else 1


if __name__ == "__main__":
    sys.exit(main())
