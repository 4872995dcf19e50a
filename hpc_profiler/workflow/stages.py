"""The stages of a batch as objects behind one protocol: illum, extract, reduce, evaluate, report.

Each :class:`Stage` says what work exists and what of it is done
(:meth:`Stage.state`), how to run what is not done (:meth:`Stage.run`,
which returns the stage's :class:`StageLine`) and what it writes
(:meth:`Stage.outputs`). ``hpc-profiler run`` walks :data:`STAGES` in order;
``hpc-profiler status`` asks them. Like submitit's executors behind
``AutoExecutor``, the caller never branches on which stage it holds.

* illum, extract - Slurm (or local) arrays of what is not done
  (:func:`hpc_profiler.workflow.submit.submit_stage`); items whose tasks died
  are resubmitted, and items still lost end the chain (:class:`StageError`);
* reduce, evaluate - MPI stages (:func:`hpc_profiler.workflow.mpijob.run_mpi_stage`),
  skipped when their stamp (``_stage.json``) holds the digest of their inputs
  as they are now: the completion ledger and the config hash for reduce
  (:func:`site_files_digest`), the profile table and the evaluate settings for
  evaluate (:func:`profiles_digest`);
* report - the QC pictures and ``index.html``.
"""
from __future__ import annotations

from abc import ABC, abstractmethod

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from ..config import Config, to_dict
from ..layout import Layout
from .mpijob import StageError, run_mpi_stage
from .records import list_failures
from .slurm import stage_resources
from .submit import submit_stage


@dataclass
class StageLine:
    """One stage's line of the ``run`` output: items, cells, seconds, rate, failures."""

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


@dataclass
class RunContext:
    """What a run passes to each stage: how jobs run, the batch's sites, where lines go, the result so far."""

    kind: str
    sites: list
    ranks: Optional[int] = None  # None: each MPI stage's executor.mpi_ranks (with its executor.stages override)
    report: bool = True
    out: object = print
    result: RunResult = field(default_factory=RunResult)


class Stage(ABC):
    """The protocol (see the module docstring)."""

    name = ""
    unit = ""

    @abstractmethod
    def run(self, cfg: Config, ctx: RunContext) -> Optional[StageLine]:
        """Run what is not done; the stage's summary line, or None when it was skipped."""

    @abstractmethod
    def state(self, cfg: Config) -> str:
        """``up to date``, ``out of date`` or ``not run``."""

    @abstractmethod
    def outputs(self, layout: Layout) -> list[Path]:
        """The files and folders the stage writes."""


# ----------------------------------------------------------------------------- arrays
class ArrayStage(Stage):
    """illum or extract: submit what is not done as an array and wait for it."""

    def __init__(self, name: str, unit: str):
        self.name, self.unit = name, unit

    def cells(self, cfg: Config, ctx: RunContext, sub) -> Optional[int]:
        """Cells of the items this run scheduled (``sub``: the :class:`SubmitResult`); None: not counted."""
        return None

    def run(self, cfg, ctx):
        t0 = time.perf_counter()
        sub = submit_stage(cfg, self.name, wait=True, kind=ctx.kind, notify=ctx.out)
        dt = time.perf_counter() - t0
        fails = len(list_failures(cfg, self.name))
        note = f"({sub.n_done} of {sub.n_total} already done)" if sub.n_done else ""
        if sub.retries:
            note += f" ({sub.retries} resubmission(s) of lost tasks' items)"
        line = StageLine(self.name, sub.n_scheduled, self.unit, dt, fails, self.cells(cfg, ctx, sub),
                         skipped=sub.n_scheduled == 0, note=note.strip())
        ctx.result.failures += fails
        if sub.lost:
            ctx.out(str(line))
            # tasks that died (killed, cancelled, node failure) even after the retries: the chain ends
            # here rather than reduce a batch with holes that a rerun would fill
            raise StageError(sub.lost_summary() + f"\nrerun `hpc-profiler run {cfg.source}` to resume")
        return line

    def state(self, cfg):
        res = submit_stage(cfg, self.name, dry_run=True)
        return "not run" if res.n_done == 0 and res.n_total else ("up to date" if not res.n_scheduled else "out of date")


class IllumStage(ArrayStage):
    def __init__(self):
        super().__init__("illum", "plates")

    def outputs(self, layout):
        return sorted(layout.illum_root.glob("*_illum.h5")) if layout.illum_root.exists() else []


class ExtractStage(ArrayStage):
    def __init__(self):
        super().__init__("extract", "sites")

    def cells(self, cfg, ctx, sub):
        # the sites this run extracted (its line's count), not every finished site: an up-to-date
        # batch of 370,000 sites would open 370,000 files to print one number
        listed = sub.batch_dir / "sites.parquet" if sub.batch_dir is not None else None
        if not sub.n_scheduled or listed is None or not listed.exists():
            return None
        from .. import manifest as manifest_mod

        return count_cells(Layout.of(cfg), manifest_mod.load_manifest(listed))

    def outputs(self, layout):
        return sorted(layout.sites_dir.glob("*/*/*.h5")) if layout.sites_dir.exists() else []


def count_cells(layout: Layout, sites) -> int:
    """Cells over all finished site files (from the Image_Count_Cells measurement)."""
    from .. import sitefile

    total = 0
    for s in sites:
        p = layout.site_of(s)
        if p.exists():
            try:
                total += int(sitefile.read_site_file(p, objects=[]).image.get("Image_Count_Cells", 0))
            except OSError:
                pass
    return total


# ----------------------------------------------------------------------------- stamped MPI stages
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
    from ..ledger import ledger_signature

    return _digest([cfg.hash(), *ledger_signature(cfg)])


def profiles_digest(cfg: Config) -> str:
    """Digest of the profile table evaluate reads (name, size, mtime), the config hash and the evaluate settings."""
    from ..evaluate.run import profiles_path

    p = Path(profiles_path(cfg))
    if not p.exists():
        return ""
    st = p.stat()
    return _digest([cfg.hash(), p.name, st.st_size, st.st_mtime_ns, json.dumps(to_dict(cfg.evaluate), sort_keys=True)])


def stage_is_current(cfg: Config, stage: str, digest: str) -> bool:
    try:
        stamp = json.loads(Layout.of(cfg).stamp(stage).read_text())
    except (OSError, ValueError):
        return False
    outputs_ok = all(Path(q).exists() for q in stamp.get("outputs", []))
    return stamp.get("digest") == digest and outputs_ok


def write_stamp(cfg: Config, stage: str, digest: str, outputs) -> None:
    from .._atomic import write_bytes_atomic

    payload = {"stage": stage, "digest": digest, "outputs": [str(o) for o in outputs], "time": time.time()}
    write_bytes_atomic(Layout.of(cfg).stamp(stage), json.dumps(payload, indent=1).encode())


def _rows(path) -> int:
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path).metadata.num_rows
    except Exception:
        return 0


class StampedStage(Stage):
    """An MPI stage run when the digest of its inputs differs from its stamp's."""

    @abstractmethod
    def digest(self, cfg: Config) -> str:
        """The digest of the stage's inputs; the stage reruns when it differs from its stamp's."""

    @abstractmethod
    def in_process(self, cfg: Config) -> None:
        """Run the stage in this process (no MPI job)."""

    @abstractmethod
    def items(self, cfg: Config) -> int:
        """How many items (wells, tasks) the stage covers, for its summary line."""

    def run(self, cfg, ctx):
        digest = self.digest(cfg)
        if stage_is_current(cfg, self.name, digest):
            return StageLine(self.name, 0, self.unit, 0.0, skipped=True)
        ranks = ctx.ranks if ctx.ranks is not None else stage_resources(cfg, self.name).mpi_ranks
        how, dt = run_mpi_stage(cfg, self.name, ranks, ctx.kind, in_process=self.in_process)
        write_stamp(cfg, self.name, digest, self.outputs(Layout.of(cfg)))
        return StageLine(self.name, self.items(cfg), self.unit, dt, note=f"[{how}]")

    def state(self, cfg):
        stamp = Layout.of(cfg).stamp(self.name)
        if not stamp.exists():
            return "not run"
        return "up to date" if stage_is_current(cfg, self.name, self.digest(cfg)) else "out of date"


class ReduceStage(StampedStage):
    name, unit = "reduce", "wells"

    def digest(self, cfg):
        return site_files_digest(cfg)

    def in_process(self, cfg):
        from ..reduce import reduce_batch

        reduce_batch(cfg)

    def items(self, cfg):
        from ..evaluate.run import profiles_path

        return _rows(profiles_path(cfg))

    def outputs(self, layout):
        return sorted(layout.profiles_dir.glob("well_*.parquet"))


class EvaluateStage(StampedStage):
    name, unit = "evaluate", "tasks"

    def digest(self, cfg):
        return profiles_digest(cfg)

    def in_process(self, cfg):
        from ..evaluate.run import evaluate_batch

        evaluate_batch(cfg)

    def items(self, cfg):
        return len(cfg.evaluate.tasks)

    def outputs(self, layout):
        return sorted(layout.evaluate_dir.glob("*.parquet"))

    def run(self, cfg, ctx):
        line = super().run(cfg, ctx)
        ctx.result.summary = read_summary(Layout.of(cfg))
        return line


def read_summary(layout: Layout):
    import pandas as pd

    p = layout.evaluate_dir / "summary.parquet"
    return pd.read_parquet(p) if p.exists() else None


# ----------------------------------------------------------------------------- report
class ReportStage(Stage):
    """QC pictures (montage, plate heat maps, illumination), the evaluate plots and ``index.html``."""

    name, unit = "report", "pictures"

    def run(self, cfg, ctx):
        if not ctx.report:
            return None
        ctx.result.plots, ctx.result.index = qc_report(cfg, ctx.sites)
        return None  # the pictures are listed at the end of the run, not as a stage line

    def state(self, cfg):
        return "up to date" if Layout.of(cfg).report.exists() else "not run"

    def outputs(self, layout):
        return [layout.report, *sorted(layout.qc_dir.glob("*.png"))]


def montage_sites(sites, n: int = 4) -> list:
    """The sites the outline montage shows: the middle site of ``n`` plates spread over the sorted
    plate names, so a batch of several modalities shows each of them rather than ``n`` replicates."""
    plates = sorted({s.plate for s in sites})
    if not plates:
        return []
    spread = sorted({round(i * (len(plates) - 1) / max(n - 1, 1)) for i in range(n)})
    pick = []
    for plate in (plates[i] for i in spread):
        ps = [s for s in sites if s.plate == plate]
        pick.append(ps[len(ps) // 2])
    return pick


def qc_report(cfg: Config, sites) -> tuple[list, Optional[Path]]:
    """QC pictures (montage, plate heat maps, illumination) and the index page."""
    import pandas as pd

    from .. import report

    layout = Layout.of(cfg)
    qc = layout.qc_dir
    pics = []
    plates = sorted({s.plate for s in sites})
    pics.append(report.outline_montage(montage_sites(sites), cfg, qc / "outlines_montage.png", max_sites=4))
    agg = layout.profile("well_aggregated.parquet")
    if agg.exists():
        pics.append(report.plate_heatmaps(pd.read_parquet(agg), qc / "plate_heatmaps.png"))
    pics.append(report.illumination_figure([layout.illum(p) for p in plates], qc / "illumination.png",
                                            channels=cfg.channels))
    ev = layout.evaluate_dir
    pics += sorted(ev.glob("*.png")) if ev.exists() else []
    pics = [p for p in pics if p]
    tables = sorted(layout.profiles_dir.glob("*.parquet")) + sorted(ev.glob("*.parquet") if ev.exists() else [])
    index = report.write_index(layout.root, f"hpc_profiler: {cfg.name}", pics, tables)
    return pics, index


#: The chain, in order.
STAGES: dict[str, Stage] = {s.name: s for s in (IllumStage(), ExtractStage(), ReduceStage(), EvaluateStage(),
                                                ReportStage())}
