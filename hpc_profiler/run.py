"""``hpc-profiler run``: the whole path, illum -> extract -> reduce -> evaluate -> report.

Each stage is resumable and skipped when its outputs are valid:

* illum and extract go through :func:`orchestrate.submit_stage`, which
  schedules only plates/sites whose files do not validate (local executor on a
  laptop, Slurm array jobs when ``sbatch`` is on the PATH or the config says so);
* reduce and evaluate write a stamp (``_stage.json``) with the digest of their
  inputs (the set of site files and the config hash; the profile table); a
  rerun with the same inputs skips them;
* the MPI stages run under ``mpirun -n executor.mpi_ranks`` when Open MPI and
  mpi4py are present (``srun --mpi=pmix`` in a Slurm job submitted with an
  ``afterok`` dependency on the extraction array when the executor is Slurm),
  else in this process; the code path is the same.

It prints one line per stage (items, cells, seconds, items/s, failures), then
the benchmark summary table and the paths of the plots.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
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
    """``mpirun -n R`` when Open MPI and mpi4py are usable and R > 1, else None."""
    if ranks <= 1 or shutil.which("mpirun") is None:
        return None
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return None
    cmd = ["mpirun", "-n", str(ranks)]
    if ranks > (os.cpu_count() or 1):
        cmd.append("--oversubscribe")
    return cmd


def _mpi_env() -> dict:
    env = dict(os.environ)
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        env.setdefault("OMPI_ALLOW_RUN_AS_ROOT", "1")
        env.setdefault("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
    return env


def run_mpi_stage(cfg: Config, stage: str, ranks: int, kind: str, after_job: Optional[str] = None) -> str:
    """Run ``hpc-profiler <stage> CONFIG`` on ``ranks`` MPI ranks; returns how it ran.

    Slurm executor: one ``sbatch --wait`` job of ``ranks`` tasks running
    ``srun --mpi=pmix`` (with ``--dependency=afterok:<after_job>`` when given).
    Otherwise ``mpirun -n ranks`` when available, else this process.
    """
    args = [sys.executable, "-m", "hpc_profiler", stage, str(cfg.source)]
    if kind == "slurm" and shutil.which("sbatch"):
        logs = Path(cfg.out) / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        ex = cfg.executor
        cmd = ["sbatch", "--wait", "--parsable", f"--job-name=hpcp-{stage}", f"--ntasks={ranks}",
               f"--time={ex.time_min}", f"--mem-per-cpu={max(1, int(ex.mem_gb * 1024 / max(ranks, 1)))}M",
               f"--output={logs}/{stage}_%j.out"]
        for opt, val in (("partition", ex.partition), ("account", ex.account), ("qos", ex.qos)):
            if val:
                cmd.append(f"--{opt}={val}")
        if after_job:
            cmd.append(f"--dependency=afterok:{after_job}")
        wrap = " ".join(["srun", "--mpi=pmix", *map(_shell_quote, args)])
        cmd.append(f"--wrap={wrap}")
        try:
            subprocess.run(cmd, check=True, env=_mpi_env(), stdout=subprocess.DEVNULL)
        except subprocess.CalledProcessError as exc:
            raise StageError(f"{stage}: the Slurm job failed (exit {exc.returncode}); see {logs}/{stage}_*.out") from exc
        return f"slurm job of {ranks} ranks"
    launcher = mpi_launcher(ranks)
    if launcher:
        try:
            subprocess.run([*launcher, *args], check=True, env=_mpi_env())
        except subprocess.CalledProcessError as exc:
            raise StageError(f"{stage}: `{' '.join(launcher)} ... {stage}` failed (exit {exc.returncode}); "
                             "its error is printed above") from exc
        return f"mpirun -n {ranks}"
    if stage == "reduce":
        from .reduce import reduce_batch

        reduce_batch(cfg)
    else:
        from .evaluate.run import evaluate_batch

        evaluate_batch(cfg)
    return "1 process"


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
    pics.append(report.illumination_figure([pipeline.illum_path(cfg, p) for p in plates], qc / "illumination.png"))
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
        sub = orchestrate.submit_stage(cfg, stage, wait=True, kind=kind)
        dt = time.perf_counter() - t0
        fails = len(orchestrate.list_failures(cfg, stage))
        cells = None
        if stage == "extract":
            cells = count_cells(cfg, sites)
        line = StageLine(stage, sub.n_scheduled, unit, dt, fails, cells, skipped=sub.n_scheduled == 0,
                         note=f"({sub.n_done} of {sub.n_total} already done)" if sub.n_done else "")
        res.lines.append(line)
        res.failures += fails
        out(str(line))
        if stage == "extract":
            last_job = sub.job_ids[0].split("_")[0] if sub.job_ids else None

    # reduce
    t0 = time.perf_counter()
    digest = site_files_digest(cfg)
    if stage_is_current(cfg, "reduce", digest):
        line = StageLine("reduce", 0, "wells", 0.0, skipped=True)
    else:
        how = run_mpi_stage(cfg, "reduce", ranks, kind, after_job=last_job)
        outputs = sorted((Path(cfg.out) / "profiles").glob("well_*.parquet"))
        write_stamp(cfg, "reduce", digest, outputs)
        line = StageLine("reduce", _rows(profiles_path(cfg)), "wells", time.perf_counter() - t0, note=f"[{how}]")
    res.lines.append(line)
    out(str(line))

    # evaluate
    t0 = time.perf_counter()
    digest = profiles_digest(cfg)
    if stage_is_current(cfg, "evaluate", digest):
        line = StageLine("evaluate", 0, "tasks", 0.0, skipped=True)
    else:
        how = run_mpi_stage(cfg, "evaluate", ranks, kind)
        outputs = sorted((Path(cfg.out) / "evaluate").glob("*.parquet"))
        write_stamp(cfg, "evaluate", digest, outputs)
        line = StageLine("evaluate", len(cfg.evaluate.tasks), "tasks", time.perf_counter() - t0, note=f"[{how}]")
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
