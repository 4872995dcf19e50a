"""Checks that can be made before a stage starts work, all reported at once.

``hpc-profiler config check`` and the stage commands (``run``, ``submit``,
``reduce``, ``evaluate``) call :func:`preflight` after the config loads: it
looks at what can be known up front, so that a missing LoadData CSV or a GPU
that is not there stops the command in a second with one line per problem,
instead of a traceback half way through a batch:

* the input files and folders exist and are readable (local paths; a remote
  ``s3://`` gallery root is probed through fsspec with a short time limit);
* every configured channel has its ``FileName_Orig<Ch>``/``PathName_Orig<Ch>``
  columns in the LoadData CSV header (only the header is read);
* ``device: gpu`` has a GPU backend (CuPy + cuCIM + a device);
* more than one MPI rank asked for has ``mpirun`` and ``mpi4py``;
* the output folder is (or can be created) writable;
* ``reduce`` has site files to reduce, ``evaluate`` has its well table.

Each problem is one :class:`Problem` naming the config key and the file; the
caller prints ``error: <config>: <key>: <message>`` per problem and exits with
status 2. Nothing here creates, moves or deletes user files (the writability
probe is a temporary file removed at once).
"""
from __future__ import annotations

import csv
import os
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from .config import Config
from .layout import Layout

#: Stages that call :func:`preflight` before they start.
STAGES = ("check", "run", "submit", "reduce", "evaluate")
#: Seconds a remote existence probe may take before it is skipped (not an error).
REMOTE_PROBE_S = 10.0


@dataclass(frozen=True)
class Problem:
    """One thing that would make the stage fail: the config key and what is wrong."""

    key: str
    message: str
    fatal: bool = True

    def line(self, where: str) -> str:
        return f"{where}: {self.key}: {self.message}"


# ----------------------------------------------------------------------------- helpers
def _readable_file(path: Path, key: str, what: str) -> Optional[Problem]:
    if not path.exists():
        return Problem(key, f"{what} {path} does not exist")
    if not path.is_file():
        return Problem(key, f"{what} {path} is not a file")
    if not os.access(path, os.R_OK):
        return Problem(key, f"{what} {path} is not readable (permissions)")
    return None


def _readable_dir(path: Path, key: str, what: str) -> Optional[Problem]:
    if not path.exists():
        return Problem(key, f"{what} {path} does not exist")
    if not path.is_dir():
        return Problem(key, f"{what} {path} is not a folder")
    if not os.access(path, os.R_OK | os.X_OK):
        return Problem(key, f"{what} {path} is not readable (permissions)")
    return None


def _loaddata_header(path: Path, channels, key: str) -> list[Problem]:
    try:
        with open(path, newline="") as fh:
            header = next(csv.reader(fh), [])
    except (OSError, UnicodeDecodeError) as exc:
        return [Problem(key, f"cannot read LoadData CSV {path}: {getattr(exc, 'strerror', None) or exc}")]
    header = [h.strip() for h in header]
    out = []
    meta = [c for c in ("Metadata_Plate", "Metadata_Well", "Metadata_Site") if c not in header]
    if meta:
        out.append(Problem(key, f"LoadData CSV {path} lacks column(s) {meta}"))
    for ch in channels:
        cols = [c for c in (f"FileName_Orig{ch}", f"PathName_Orig{ch}") if c not in header]
        if cols:
            out.append(Problem("channels", f"channel {ch!r} not found in LoadData CSV {path}: no column(s) {cols}"))
    return out


def _remote_exists(url: str) -> Optional[bool]:
    """``storage.exists(url)`` within :data:`REMOTE_PROBE_S`; None when it did not answer in time."""
    from . import storage

    box: dict = {}

    def probe():
        box["ok"] = storage.exists(url)

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(REMOTE_PROBE_S)
    return box.get("ok")


def _writable_dir(path: Path, key: str) -> Optional[Problem]:
    """The folder exists and takes a file, or its nearest existing parent does."""
    p = path
    while not p.exists():
        if p.parent == p:
            break
        p = p.parent
    if not p.is_dir():
        return Problem(key, f"output folder {path}: {p} exists and is not a folder")
    try:
        fd, tmp = tempfile.mkstemp(prefix=".hpcp-write-test-", dir=p)
        os.close(fd)
        os.unlink(tmp)
    except OSError as exc:
        where = "" if p == path else f" (its nearest existing parent {p})"
        return Problem(key, f"output folder {path}{where} is not writable: {exc.strerror or exc}")
    return None


# ----------------------------------------------------------------------------- checks
def check_inputs(cfg: Config) -> list[Problem]:
    """Input files and folders (and the LoadData header) of ``cfg``."""
    inp = cfg.input
    out: list[Problem] = []
    if inp.loaddata_csv is not None:
        csv_path = cfg.path(inp.loaddata_csv)
        if "://" in str(csv_path):
            pass  # the LoadData reader opens local files only; manifest reports a URL here
        elif cfg.synth is not None and not Path(csv_path).exists():
            pass  # `run` generates the synthetic batch first
        else:
            p = _readable_file(Path(csv_path), "input.loaddata_csv", "LoadData CSV")
            out += [p] if p else _loaddata_header(Path(csv_path), cfg.channels, "input.loaddata_csv")
    elif inp.phenix_dir is not None:
        p = _readable_dir(Path(cfg.path(inp.phenix_dir)), "input.phenix_dir", "Phenix image folder")
        if p:
            out.append(p)
    elif inp.gallery is not None:
        root = inp.gallery.root
        if "://" in str(root):
            from .gallery import configure_storage

            configure_storage(cfg)
            if _remote_exists(str(root).rstrip("/")) is False:
                out.append(Problem("input.gallery.root", f"gallery root {root} does not exist or is not readable"))
        else:
            p = _readable_dir(Path(cfg.path(root)), "input.gallery.root", "gallery root")
            if p:
                out.append(p)
    elif cfg.synth is None:
        out.append(Problem("input", "no image source: set input.loaddata_csv, input.phenix_dir or input.gallery"))
    if inp.well_metadata_csv is not None:
        wm = Path(cfg.path(inp.well_metadata_csv))
        if not (cfg.synth is not None and not wm.exists()):
            p = _readable_file(wm, "input.well_metadata_csv", "well metadata CSV")
            if p:
                out.append(p)
    if inp.illum_dir is not None and "://" not in str(inp.illum_dir):
        p = _readable_dir(Path(cfg.path(inp.illum_dir)), "input.illum_dir", "illumination folder")
        if p:
            out.append(p)
    return out


def check_device(cfg: Config) -> list[Problem]:
    """``device: gpu`` needs the GPU backend; ``auto`` and ``cpu`` always run."""
    if cfg.device != "gpu":
        return []
    from .backend import BackendUnavailable, gpu_backend

    try:
        gpu_backend()
    except BackendUnavailable as exc:
        return [Problem("device", f"'gpu' asked for, but no GPU backend here ({exc}); use device: auto or cpu")]
    return []


def mpi_available() -> Optional[str]:
    """None when ``mpirun`` and ``mpi4py`` are both usable, else what is missing."""
    missing = []
    if shutil.which("mpirun") is None:
        missing.append("mpirun not on PATH")
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        missing.append("mpi4py not installed")
    return "; ".join(missing) or None


def check_mpi(cfg: Config, ranks: Optional[int]) -> list[Problem]:
    """Ranks > 1 asked for on the command line need MPI (an error); from the
    config only (``executor.mpi_ranks``) a missing MPI is a note: ``run`` then
    runs reduce and evaluate in one process, with the same numbers."""
    if cfg.executor.kind == "slurm":
        return []  # the MPI stages run as an sbatch job with srun
    if ranks is None:  # the most any MPI stage asks for (executor.mpi_ranks or its executor.stages override)
        from .workflow.slurm import stage_resources

        n = max(stage_resources(cfg, s).mpi_ranks for s in ("reduce", "evaluate"))
    else:
        n = ranks
    if n <= 1:
        return []
    why = mpi_available()
    if why is None:
        return []
    if ranks is not None:
        return [Problem("executor.mpi_ranks", f"--ranks {n} needs MPI: {why}; use --ranks 1 or --no-mpi")]
    return [Problem("executor.mpi_ranks", f"{n} ranks configured but {why}: reduce and evaluate run in one process",
                    fatal=False)]


def check_output(cfg: Config) -> list[Problem]:
    p = _writable_dir(Path(cfg.out), "output_dir")
    return [p] if p else []


def check_stage_inputs(cfg: Config, stage: str, profiles: Optional[str] = None) -> list[Problem]:
    """What a later stage reads from the output folder: site files, the well table."""
    if stage == "reduce":
        # the layout of reduce.discover_site_files: sites/<plate>/<row>/*.h5 and packed/<plate>.h5
        layout = Layout.of(cfg)
        sites = layout.sites_dir
        if not any(sites.glob("*/*/*.h5")) and not any(layout.packed_dir.glob("*.h5")):
            return [Problem("output_dir", f"nothing to reduce: no site files under {sites} "
                                          f"(run `hpc-profiler submit extract` or `hpc-profiler run` first)")]
    if stage == "evaluate":
        if profiles:
            path, key = Path(profiles), "--profiles"
        else:
            from .evaluate.run import profiles_path

            path, key = profiles_path(cfg), "evaluate.profiles"
        p = _readable_file(path, key, "well table")
        if p:
            return [Problem(key, p.message + " (run `hpc-profiler reduce` first)")]
    return []


def preflight(cfg: Config, stage: str = "check", *, ranks: Optional[int] = None,
              profiles: Optional[str] = None) -> list[Problem]:
    """Every problem found for ``stage`` (one of :data:`STAGES`), fatal ones first.

    ``check`` and ``run`` check inputs, device, MPI and the output folder;
    ``submit`` the same without MPI; ``reduce`` its site files and the output
    folder; ``evaluate`` its well table (``profiles`` overrides the path) and
    the output folder.
    """
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; known: {STAGES}")
    out: list[Problem] = []
    if stage in ("check", "run", "submit"):
        out += check_inputs(cfg)
        out += check_device(cfg)
    if stage in ("check", "run"):
        out += check_mpi(cfg, ranks)
    if stage == "reduce" and cfg.input.well_metadata_csv is not None:
        p = _readable_file(Path(cfg.path(cfg.input.well_metadata_csv)), "input.well_metadata_csv",
                           "well metadata CSV")
        if p:
            out.append(p)
    out += check_output(cfg)
    out += check_stage_inputs(cfg, stage, profiles)
    return sorted(out, key=lambda p: not p.fatal)


def report(cfg: Config, problems: list[Problem], file=None) -> int:
    """Print ``error:``/``note:`` lines; 2 when any problem is fatal, else 0."""
    import sys

    file = sys.stderr if file is None else file
    where = cfg.source or "<config>"
    for p in problems:
        print(f"{'error' if p.fatal else 'note'}: {p.line(where)}", file=file)
    return 2 if any(p.fatal for p in problems) else 0
