"""Reduce and evaluate on MPI ranks: ``mpirun`` here, or one Slurm job, or this process.

The MPI stages run ``hpc-profiler <stage> CONFIG`` on ``ranks`` ranks:

* Slurm executor: one job of ``ranks`` tasks running ``srun --mpi=pmix
  --kill-on-bad-exit=1`` (a rank that dies ends the step instead of leaving the
  others in a collective until the time limit), its options from the same
  per-stage resources as the arrays (:func:`hpc_profiler.workflow.slurm.sbatch_options`),
  submitted only after the arrays it reads have settled (no ``afterok``
  dependency that could never be satisfied), watched with ``squeue``;
* otherwise ``mpirun -n ranks`` when mpirun and mpi4py are present, with the
  flag its MPI needs to end the job when a rank dies (:func:`mpi_launcher`);
* else the stage's function in this process. The code path is the same.

Every rank must reach its first barrier within ``executor.mpi_startup_timeout_s``
(:func:`hpc_profiler.mpi.get_comm`).
"""
from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Optional

from ..config import Config
from ..layout import Layout
from .slurm import sbatch_options
from .watch import NEVER_STARTS, slurm_job_end, slurm_job_info, slurm_queue


class StageError(RuntimeError):
    """A stage of the chain failed; the message names the stage and how it ran."""


def mpi_launcher(ranks: int) -> Optional[list]:
    """``mpirun -n R`` (with the flags its MPI needs to end the job on a lost rank) when mpi4py is
    importable and R > 1, else None.

    A rank that dies must end the whole job, the counterpart of ``srun
    --kill-on-bad-exit=1``. ``mpirun --version`` says which launcher this is
    (:func:`mpi_flavour`), and each is told what it needs:

    * Open MPI up to 4 (ORTE): ``--mca orte_abort_on_non_zero_status 1``;
    * Open MPI 5 (PRRTE): ``--prtemca prte_abort_on_non_zero_status 1``;
    * MPICH, Intel MPI (Hydra): nothing, Hydra kills the other ranks when one
      fails unless ``-disable-auto-cleanup`` is given; Open MPI's
      ``--oversubscribe`` is not passed (Hydra refuses it);
    * anything else: run as is, with a note on stderr that only the start-up
      watchdog (:func:`hpc_profiler.mpi.get_comm`) and the abort-on-error guard
      bound a lost rank.
    """
    if ranks <= 1 or shutil.which("mpirun") is None:
        return None
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return None
    flavour, major = mpi_flavour()
    cmd = ["mpirun", "-n", str(ranks)]
    if flavour == "openmpi":
        if ranks > (os.cpu_count() or 1):
            cmd.append("--oversubscribe")
        if major is not None and major >= 5:
            cmd += ["--prtemca", "prte_abort_on_non_zero_status", "1"]
        else:
            cmd += ["--mca", "orte_abort_on_non_zero_status", "1"]
    elif flavour != "hydra":
        global _UNKNOWN_SAID
        if not _UNKNOWN_SAID:
            _UNKNOWN_SAID = True
            print("note: `mpirun --version` names neither Open MPI nor MPICH/Intel MPI (Hydra); no flag is "
                  "passed to end the job when a rank dies, so only hpc-profiler's start-up watchdog "
                  "(executor.mpi_startup_timeout_s) and its abort on a rank's error bound a lost rank",
                  file=sys.stderr, flush=True)
    return cmd


_UNKNOWN_SAID = False


def mpi_flavour() -> tuple[str, Optional[int]]:
    """(``openmpi`` | ``hydra`` | ``unknown``, major version or None), from ``mpirun --version``."""
    try:
        out = subprocess.run(["mpirun", "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown", None
    text = out.stdout + out.stderr
    m = re.search(r"Open MPI\)?\s+v?(\d+)\.", text)
    if m:
        return "openmpi", int(m.group(1))
    if "Open MPI" in text or "OpenRTE" in text:
        return "openmpi", None
    if "HYDRA" in text.upper() or "Intel(R) MPI" in text:
        m = re.search(r"Version:\s+(\d+)", text)
        return "hydra", int(m.group(1)) if m else None
    return "unknown", None


def _mpi_env(cfg: Config) -> dict:
    from ..mpi import STARTUP_TIMEOUT_ENV

    env = dict(os.environ)
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        env.setdefault("OMPI_ALLOW_RUN_AS_ROOT", "1")
        env.setdefault("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
    env[STARTUP_TIMEOUT_ENV] = f"{float(cfg.executor.mpi_startup_timeout_s):g}"
    return env


def _tail(path, n: int = 8) -> str:
    try:
        lines = Path(path).read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join("    " + line for line in lines[-n:])


def run_mpi_stage(cfg: Config, stage: str, ranks: int, kind: str,
                  in_process: Optional[Callable[[Config], object]] = None) -> tuple[str, float]:
    """Run ``hpc-profiler <stage> CONFIG`` on ``ranks`` MPI ranks; returns (how it ran, seconds of work).

    Slurm executor: one job of ``ranks`` tasks running ``srun --mpi=pmix
    --kill-on-bad-exit=1`` (a rank that dies ends the step instead of leaving
    the others in a collective until the time limit), submitted only now, after
    the arrays it reads have settled: there is no ``afterok`` dependency that
    could never be satisfied. The driver watches the job with ``squeue`` and,
    when it ends other than COMPLETED, raises :class:`StageError` naming the
    job id, its log file and its Slurm state and reason (``scontrol``). The
    seconds are those of the ``srun`` inside the job, not of the polling.
    Otherwise ``mpirun -n ranks`` when available (output also written to
    ``logs/<stage>_mpirun_<time>.out``), else ``in_process(cfg)``. Every rank must
    reach its first barrier within ``executor.mpi_startup_timeout_s``
    (:func:`hpc_profiler.mpi.get_comm`).
    """
    args = mpi_args(cfg, stage)
    env = _mpi_env(cfg)
    logs = Layout.of(cfg).logs
    if kind == "slurm" and shutil.which("sbatch"):
        return _run_mpi_slurm(cfg, stage, ranks, args, env, logs)
    launcher = mpi_launcher(ranks)
    if launcher:
        logs.mkdir(parents=True, exist_ok=True)
        log = logs / f"{stage}_mpirun_{time.strftime('%Y%m%d-%H%M%S')}.out"
        t0 = time.perf_counter()
        rc = _run_tee([*launcher, *args], env, log)
        dt = time.perf_counter() - t0
        if rc != 0:
            how = f"killed by signal {-rc}" if rc < 0 else f"exit {rc}"
            raise StageError(f"{stage}: `{' '.join(launcher)} ... {stage}` failed ({how}) after {dt:.1f} s; "
                             f"log {log}:\n{_tail(log)}")
        return f"mpirun -n {ranks}", dt
    if in_process is None:
        raise StageError(f"{stage}: no MPI launcher and no in-process function to run it")
    t0 = time.perf_counter()
    in_process(cfg)
    return "1 process", time.perf_counter() - t0


def _run_tee(cmd: list, env: dict, log: Path) -> int:
    """Run ``cmd``, copying its output (stdout and stderr together) to our stderr and to ``log``."""
    with open(log, "wb") as fh:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        for line in proc.stdout:
            fh.write(line)
            fh.flush()
            sys.stderr.buffer.write(line)
            sys.stderr.flush()
        return proc.wait()


def mpi_args(cfg: Config, stage: str) -> list:
    """The command every rank runs: ``python -m hpc_profiler <stage> CONFIG``."""
    return [sys.executable, "-m", "hpc_profiler", stage, str(cfg.source)]


def submit_mpi_job(cfg: Config, stage: str, ranks: int, args: list, env: dict, logs: Path) -> str:
    """Submit ``stage``'s MPI job (``sbatch`` with :func:`hpc_profiler.workflow.slurm.sbatch_options`); its id."""
    logs.mkdir(parents=True, exist_ok=True)
    cmd = ["sbatch", "--parsable", *sbatch_options(cfg, stage, ranks, log=f"{logs}/{stage}_%j.out")]
    timing = _shell_quote(str(logs / stage)) + '_"$SLURM_JOB_ID".time'
    srun = " ".join(["srun", "--mpi=pmix", "--kill-on-bad-exit=1", *map(_shell_quote, args)])
    # the job writes when its srun started and ended, so the stage time is the work, not our polling
    cmd.append(f"--wrap=t0=$(date +%s.%N); {srun}; rc=$?; echo \"$t0 $(date +%s.%N) $rc\" > {timing}; exit $rc")
    try:
        out = subprocess.run(cmd, check=True, env=env, capture_output=True, text=True)
    except subprocess.CalledProcessError as exc:
        raise StageError(f"{stage}: sbatch refused the job (exit {exc.returncode}): {exc.stderr.strip()}") from exc
    return out.stdout.strip().split(";")[0]


def _run_mpi_slurm(cfg: Config, stage: str, ranks: int, args: list, env: dict, logs: Path) -> tuple[str, float]:
    ex = cfg.executor
    job = submit_mpi_job(cfg, stage, ranks, args, env, logs)
    log = logs / f"{stage}_{job}.out"
    poll = min(float(ex.poll_interval_s), 2.0)
    while True:
        queue = slurm_queue([job])
        if queue is not None and job not in queue:
            break
        if queue and queue[job][1] in NEVER_STARTS:
            subprocess.run(["scancel", job], capture_output=True)
            raise StageError(f"{stage}: Slurm job {job} can never start ({queue[job][1]}); cancelled it")
        time.sleep(poll)
    info = slurm_job_info(job)
    state = info.get("JobState")
    t_start = t_end = rc = None
    try:
        t_start, t_end, rc = (float(x) for x in (logs / f"{stage}_{job}.time").read_text().split())
    except (OSError, ValueError):
        pass
    if state not in (None, "COMPLETED") or rc != 0:
        raise StageError(f"{stage}: Slurm job {job} {slurm_job_end(job)}; log {log}:\n{_tail(log)}")
    return f"slurm job of {ranks} ranks (job {job})", t_end - t_start


def _shell_quote(s: str) -> str:
    return shlex.quote(str(s))
