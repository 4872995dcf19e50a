"""``hpc-profiler run``: the whole path, illum -> extract -> reduce -> evaluate -> report.

Each stage is resumable and skipped when its outputs are valid:

* illum and extract go through :func:`orchestrate.submit_stage`, which
  schedules only plates/sites whose files do not validate (local executor on a
  laptop, Slurm array jobs when ``sbatch`` is on the PATH or the config says so);
* reduce and evaluate write a stamp (``_stage.json``) with the digest of their
  inputs (the set of site files and the config hash; the profile table); a
  rerun with the same inputs skips them;
* the MPI stages run under ``mpirun -n executor.mpi_ranks`` when Open MPI and
  mpi4py are present (``srun --mpi=pmix --kill-on-bad-exit=1`` in a Slurm job
  when the executor is Slurm, submitted only after the extraction array has
  settled, so no dependency can be left unsatisfiable), else in this process;
  the code path is the same. A rank that dies, or does not reach the first
  barrier within ``executor.mpi_startup_timeout_s``, ends the stage with an
  error naming the job, its log and its Slurm state;
* tasks of illum/extract that die without a result are resubmitted
  ``executor.max_retries`` times (:func:`orchestrate.submit_stage`); if some
  are still lost the chain ends with a summary of their sites and Slurm states
  (exit 1), and a rerun resumes.

It prints one line per stage (items, cells, seconds, items/s, failures), then
the benchmark summary table and the paths of the plots.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from .config import Config, ConfigError, load_config_or_report


class StageError(RuntimeError):
    """A stage of the chain failed; the message names the stage and how it ran."""


@dataclass
class StageLine:
    stage: str
    items: int
    unit: str
    seconds: float
    failures: int = 0
    cells: Optional[int] = None
    skipped: bool = False
    note: str = ""

    def __str__(self) -> str:
        rate = f"{self.items / self.seconds:.2f} {self.unit}/s" if self.seconds > 0 and self.items else "-"
        cells = f", {self.cells} cells" if self.cells is not None else ""
        state = " (up to date, skipped)" if self.skipped else ""
        note = f" {self.note}" if self.note else ""
        return (f"[{self.stage:8s}] {self.items} {self.unit}{cells}, {self.seconds:.1f} s, {rate}, "
                f"{self.failures} failure(s){state}{note}")


@dataclass
class RunResult:
    lines: list = field(default_factory=list)
    summary: object = None
    plots: list = field(default_factory=list)
    index: Optional[Path] = None
    failures: int = 0


# ----------------------------------------------------------------------------- input
def ensure_input(cfg: Config) -> Optional[Path]:
    """Generate the configured synthetic batch when its LoadData CSV is missing."""
    if cfg.synth is None or cfg.input.loaddata_csv is None:
        return None
    csv = Path(cfg.path(cfg.input.loaddata_csv))
    if csv.exists():
        return None
    from .synth import generate_batch

    t0 = time.perf_counter()
    batch = generate_batch(cfg.synth, csv.parent, cfg.channels)
    produced = Path(getattr(batch, "load_data_csv", csv.parent / "load_data.csv"))
    if produced.resolve() != csv.resolve():
        raise ConfigError(
            f"{cfg.source}: input.loaddata_csv: the synthetic batch wrote {produced}, but the config reads {csv}"
        )
    print(f"[synth   ] generated the synthetic batch in {csv.parent} ({time.perf_counter() - t0:.1f} s)", flush=True)
    return csv.parent


# ----------------------------------------------------------------------------- stamps
def _digest(items) -> str:
    h = hashlib.sha256()
    for it in items:
        h.update(str(it).encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


def site_files_digest(cfg: Config) -> str:
    """Digest of the finished sites and the config hash, from the completion ledger.

    Every site finished, redone or packed appends a record to a ledger file,
    so the ledger files' names, sizes and mtimes
    (:func:`hpc_profiler.ledger.ledger_signature`: one listing and a stat per
    array task) change whenever the site files do, without a stat of each of
    370,000 site files.
    """
    from .ledger import ledger_signature

    return _digest([cfg.hash(), *ledger_signature(cfg)])


def stamp_path(cfg: Config, stage: str) -> Path:
    return Path(cfg.out) / ("profiles" if stage == "reduce" else "evaluate") / "_stage.json"


def stage_is_current(cfg: Config, stage: str, digest: str) -> bool:
    p = stamp_path(cfg, stage)
    try:
        stamp = json.loads(p.read_text())
    except (OSError, ValueError):
        return False
    outputs_ok = all(Path(q).exists() for q in stamp.get("outputs", []))
    return stamp.get("digest") == digest and outputs_ok


def write_stamp(cfg: Config, stage: str, digest: str, outputs) -> None:
    from .storage import write_bytes

    p = stamp_path(cfg, stage)
    payload = {"stage": stage, "digest": digest, "outputs": [str(o) for o in outputs], "time": time.time()}
    write_bytes(str(p), json.dumps(payload, indent=1).encode())


def profiles_digest(cfg: Config) -> str:
    from .evaluate.run import profiles_path

    p = Path(profiles_path(cfg))
    if not p.exists():
        return ""
    st = p.stat()
    return _digest([cfg.hash(), p.name, st.st_size, st.st_mtime_ns, json.dumps(_eval_cfg(cfg), sort_keys=True)])


def _eval_cfg(cfg: Config) -> dict:
    from .config import to_dict

    return to_dict(cfg.evaluate)


# ----------------------------------------------------------------------------- MPI stages
def mpi_launcher(ranks: int) -> Optional[list]:
    """``mpirun -n R`` when Open MPI and mpi4py are usable and R > 1, else None.

    Open MPI 4 is told explicitly to end the whole job when a rank exits
    non-zero or is killed (``orte_abort_on_non_zero_status``, its default,
    the counterpart of ``srun --kill-on-bad-exit=1``).
    """
    if ranks <= 1 or shutil.which("mpirun") is None:
        return None
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return None
    cmd = ["mpirun", "-n", str(ranks)]
    if ranks > (os.cpu_count() or 1):
        cmd.append("--oversubscribe")
    if _open_mpi_major() == 4:
        cmd += ["--mca", "orte_abort_on_non_zero_status", "1"]
    return cmd


def _open_mpi_major() -> Optional[int]:
    try:
        out = subprocess.run(["mpirun", "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    m = re.search(r"Open MPI\)?\s+(\d+)\.", out)
    return int(m.group(1)) if m else None


def _mpi_env(cfg: Config) -> dict:
    from .mpi import STARTUP_TIMEOUT_ENV

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


def run_mpi_stage(cfg: Config, stage: str, ranks: int, kind: str) -> tuple[str, float]:
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
    ``logs/<stage>_mpirun_<time>.out``), else this process. Every rank must
    reach its first barrier within ``executor.mpi_startup_timeout_s``
    (:func:`hpc_profiler.mpi.get_comm`).
    """
    args = [sys.executable, "-m", "hpc_profiler", stage, str(cfg.source)]
    env = _mpi_env(cfg)
    logs = Path(cfg.out) / "logs"
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
    t0 = time.perf_counter()
    if stage == "reduce":
        from .reduce import reduce_batch

        reduce_batch(cfg)
    else:
        from .evaluate.run import evaluate_batch

        evaluate_batch(cfg)
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


def _run_mpi_slurm(cfg: Config, stage: str, ranks: int, args: list, env: dict, logs: Path) -> tuple[str, float]:
    from .orchestrate import NEVER_STARTS, slurm_job_end, slurm_job_info, slurm_queue

    logs.mkdir(parents=True, exist_ok=True)
    ex = cfg.executor
    cmd = ["sbatch", "--parsable", f"--job-name=hpcp-{stage}", f"--ntasks={ranks}",
           f"--time={ex.time_min}", f"--mem-per-cpu={max(1, int(ex.mem_gb * 1024 / max(ranks, 1)))}M",
           f"--output={logs}/{stage}_%j.out"]
    for opt, val in (("partition", ex.partition), ("account", ex.account), ("qos", ex.qos)):
        if val:
            cmd.append(f"--{opt}={val}")
    timing = _shell_quote(str(logs / stage)) + '_"$SLURM_JOB_ID".time'
    srun = " ".join(["srun", "--mpi=pmix", "--kill-on-bad-exit=1", *map(_shell_quote, args)])
    # the job writes when its srun started and ended, so the stage time is the work, not our polling
    cmd.append(f"--wrap=t0=$(date +%s.%N); {srun}; rc=$?; echo \"$t0 $(date +%s.%N) $rc\" > {timing}; exit $rc")
    try:
        out = subprocess.run(cmd, check=True, env=env, capture_output=True, text=True)
    except subprocess.CalledProcessError as exc:
        raise StageError(f"{stage}: sbatch refused the job (exit {exc.returncode}): {exc.stderr.strip()}") from exc
    job = out.stdout.strip().split(";")[0]
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
    import shlex

    return shlex.quote(str(s))


# ----------------------------------------------------------------------------- report
def qc_report(cfg: Config, sites) -> tuple[list, Optional[Path]]:
    """QC pictures (montage, plate heat maps, illumination) and the index page."""
    import pandas as pd

    from . import pipeline, report

    qc = Path(cfg.out) / "qc"
    pics = []
    plates = sorted({s.plate for s in sites})
    pick = []
    for plate in plates[:4]:
        ps = [s for s in sites if s.plate == plate]
        if ps:
            pick.append(ps[len(ps) // 2])
    pics.append(report.outline_montage(pick, cfg, qc / "outlines_montage.png", max_sites=4))
    agg = Path(cfg.out) / "profiles" / "well_aggregated.parquet"
    if agg.exists():
        pics.append(report.plate_heatmaps(pd.read_parquet(agg), qc / "plate_heatmaps.png"))
    pics.append(report.illumination_figure([pipeline.illum_path(cfg, p) for p in plates], qc / "illumination.png",
                                            channels=cfg.channels))
    ev = Path(cfg.out) / "evaluate"
    pics += sorted(ev.glob("*.png")) if ev.exists() else []
    pics = [p for p in pics if p]
    tables = sorted((Path(cfg.out) / "profiles").glob("*.parquet")) + sorted(ev.glob("*.parquet") if ev.exists() else [])
    index = report.write_index(Path(cfg.out), f"hpc_profiler: {cfg.name}", pics, tables)
    return pics, index


# ----------------------------------------------------------------------------- driver
def run_batch(cfg: Config, *, kind: Optional[str] = None, ranks: Optional[int] = None,
              report: bool = True, out=print) -> RunResult:
    """Run every stage of ``cfg`` that is not up to date; see the module docstring."""
    from . import orchestrate
    from .evaluate.run import profiles_path

    res = RunResult()
    ensure_input(cfg)
    kind = orchestrate.resolve_kind(cfg, kind)
    ranks = cfg.executor.mpi_ranks if ranks is None else ranks
    sites = orchestrate.load_or_build_manifest(cfg, rebuild=True)

    for stage, unit in (("illum", "plates"), ("extract", "sites")):
        t0 = time.perf_counter()
        sub = orchestrate.submit_stage(cfg, stage, wait=True, kind=kind, notify=out)
        dt = time.perf_counter() - t0
        fails = len(orchestrate.list_failures(cfg, stage))
        cells = None
        if stage == "extract":
            cells = count_cells(cfg, sites)
        note = f"({sub.n_done} of {sub.n_total} already done)" if sub.n_done else ""
        if sub.retries:
            note += f" ({sub.retries} resubmission(s) of lost tasks' items)"
        line = StageLine(stage, sub.n_scheduled, unit, dt, fails, cells, skipped=sub.n_scheduled == 0,
                         note=note.strip())
        res.lines.append(line)
        res.failures += fails
        out(str(line))
        if sub.lost:
            # tasks that died (killed, cancelled, node failure) even after the retries: the chain ends
            # here rather than reduce a batch with holes that a rerun would fill
            raise StageError(sub.lost_summary() + f"\nrerun `hpc-profiler run {cfg.source}` to resume")

    # reduce: submitted only now that the arrays have settled (every site done or failed for good)
    digest = site_files_digest(cfg)
    if stage_is_current(cfg, "reduce", digest):
        line = StageLine("reduce", 0, "wells", 0.0, skipped=True)
    else:
        how, dt = run_mpi_stage(cfg, "reduce", ranks, kind)
        outputs = sorted((Path(cfg.out) / "profiles").glob("well_*.parquet"))
        write_stamp(cfg, "reduce", digest, outputs)
        line = StageLine("reduce", _rows(profiles_path(cfg)), "wells", dt, note=f"[{how}]")
    res.lines.append(line)
    out(str(line))

    # evaluate
    digest = profiles_digest(cfg)
    if stage_is_current(cfg, "evaluate", digest):
        line = StageLine("evaluate", 0, "tasks", 0.0, skipped=True)
    else:
        how, dt = run_mpi_stage(cfg, "evaluate", ranks, kind)
        outputs = sorted((Path(cfg.out) / "evaluate").glob("*.parquet"))
        write_stamp(cfg, "evaluate", digest, outputs)
        line = StageLine("evaluate", len(cfg.evaluate.tasks), "tasks", dt, note=f"[{how}]")
    res.lines.append(line)
    out(str(line))

    res.summary = read_summary(cfg)
    if report:
        res.plots, res.index = qc_report(cfg, sites)
    return res


def count_cells(cfg: Config, sites) -> int:
    """Cells over all finished site files (from the Image_Count_Cells measurement)."""
    from . import pipeline, sitefile

    total = 0
    for s in sites:
        p = pipeline.site_path(cfg, s)
        if p.exists():
            try:
                total += int(sitefile.read_site_file(p, objects=[]).image.get("Image_Count_Cells", 0))
            except OSError:
                pass
    return total


def _rows(path) -> int:
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path).metadata.num_rows
    except Exception:
        return 0


def read_summary(cfg: Config):
    import pandas as pd

    p = Path(cfg.out) / "evaluate" / "summary.parquet"
    return pd.read_parquet(p) if p.exists() else None


def format_summary(summary) -> str:
    if summary is None or len(summary) == 0:
        return "(no benchmark summary)"
    import pandas as pd

    with pd.option_context("display.max_columns", 20, "display.width", 140, "display.float_format", "{:.3f}".format):
        return summary.to_string(index=False)


# ----------------------------------------------------------------------------- CLI
def add_run_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("config", help="config file (YAML)")
    parser.add_argument("--executor", choices=["auto", "slurm", "local", "debug"], default=None,
                        help="override executor.kind (auto: Slurm when sbatch is on PATH, else local)")
    parser.add_argument("--ranks", type=int, default=None, help="MPI ranks for reduce/evaluate (default executor.mpi_ranks)")
    parser.add_argument("--no-mpi", action="store_true", help="run reduce and evaluate in this process")
    parser.add_argument("--no-report", action="store_true", help="skip the QC pictures")
    return parser


def main_run(args) -> int:
    """``hpc-profiler run CONFIG``: 0 when everything finished, 1 when some item failed."""
    cfg = load_config_or_report(args.config)
    if cfg is None:
        return 2
    ranks = 1 if args.no_mpi else args.ranks
    t0 = time.perf_counter()
    try:
        res = run_batch(cfg, kind=args.executor, ranks=ranks, report=not args.no_report)
    except StageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print()
    print("Benchmark summary (fraction retrieved = share of classes with q < "
          f"{cfg.evaluate.q_threshold}):")
    print(format_summary(res.summary))
    print()
    if res.plots:
        print("Plots:")
        for p in res.plots:
            print(f"  {p}")
    if res.index:
        print(f"QC index: {res.index}")
    print(f"Done in {time.perf_counter() - t0:.1f} s; outputs in {cfg.out}")
    if res.failures:
        print(f"{res.failures} item(s) failed: see `hpc-profiler status {args.config} --failed`", file=sys.stderr)
        return 1
    return 0
