"""Shared pytest fixtures for the cluster-facing tests.

Fixtures (names are stable; other test files may use them)
-----------------------------------------------------------
repo_root : pathlib.Path
    Session. The repository root (the folder holding ``setup.cfg``).
local_slurm : LocalSlurm
    Session. A real single-node Slurm on this machine, started (idempotently)
    with ``scripts/start_local_slurm.sh``. Skips with the reason when
    ``sbatch`` is not on PATH, or when we are not root and no running cluster
    answers ``sinfo``. Fails (does not skip) when we are root and the script
    itself fails, because then the infrastructure is broken. Attributes:
    ``conf`` (slurm.conf path), ``node`` (node name), ``partition``,
    ``state_dir`` (state/log folder), ``cpus``.
mpirun : callable
    Function scope. ``mpirun(cmd, n=2, timeout=120, oversubscribe=True,
    env=None, cwd=None, check=True) -> subprocess.CompletedProcess`` runs the
    argument list ``cmd`` as ``mpirun -n N [--oversubscribe] cmd`` with the
    variables OpenMPI needs to run as root, captures text stdout/stderr and
    raises ``AssertionError`` with both when the exit code is non-zero
    (``check=True``) or the timeout passes. Skips with the reason when
    ``mpirun`` or ``mpi4py`` is missing.

Nothing here is autouse and no hook changes the collection or the outcome of
other tests.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]

#: OpenMPI refuses to start as root without these.
MPI_ROOT_ENV = {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}


@dataclass(frozen=True)
class LocalSlurm:
    """Where the local test cluster lives."""

    conf: Path
    node: str
    partition: str
    state_dir: Path
    cpus: int


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """The repository root."""
    return REPO_ROOT


def _sinfo_node() -> tuple[str, str, str, int] | None:
    """(node, state, partition, cpus) of the first node sinfo reports, or None."""
    try:
        out = subprocess.run(
            ["sinfo", "-h", "-N", "-o", "%N|%T|%P|%c"], capture_output=True, text=True, timeout=20
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0 or not out.stdout.strip():
        return None
    node, state, part, cpus = out.stdout.strip().splitlines()[0].split("|")
    return node, state, part.rstrip("*"), int(cpus)


@pytest.fixture(scope="session")
def local_slurm() -> LocalSlurm:
    """A running single-node Slurm (see the module docstring)."""
    if shutil.which("sbatch") is None:
        pytest.skip("Slurm not installed (no sbatch on PATH): run scripts/start_local_slurm.sh as root")
    state_dir = Path(os.environ.get("HPC_SLURM_DIR", "/tmp/hpc-profiler-slurm"))
    if os.geteuid() == 0:
        script = REPO_ROOT / "scripts" / "start_local_slurm.sh"
        proc = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            pytest.fail(f"{script} failed (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    info = _sinfo_node()
    if info is None:
        pytest.skip("no local Slurm answers sinfo and we are not root to start it (scripts/start_local_slurm.sh)")
    node, state, part, cpus = info
    if not state.startswith(("idle", "mix", "alloc", "compl")):
        pytest.skip(f"local Slurm node {node} is {state}, not usable")
    conf = Path(os.environ.get("SLURM_CONF", "/etc/slurm/slurm.conf"))
    return LocalSlurm(conf=conf, node=node, partition=part, state_dir=state_dir, cpus=cpus)


@pytest.fixture
def mpirun():
    """Run a command under ``mpirun -n N`` (see the module docstring)."""
    exe = shutil.which("mpirun")
    if exe is None:
        pytest.skip("mpirun not on PATH (apt-get install openmpi-bin)")
    if importlib.util.find_spec("mpi4py") is None:
        pytest.skip("mpi4py not installed (pip install mpi4py)")

    def run(cmd, n=2, timeout=120, oversubscribe=True, env=None, cwd=None, check=True):
        full_env = dict(os.environ)
        full_env.update(MPI_ROOT_ENV)
        # a stray launcher environment (e.g. inside an sbatch job) must not
        # leak into the nested mpirun
        for var in ("OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_SIZE"):
            full_env.pop(var, None)
        full_env.update(env or {})
        args = [exe, "-n", str(n)]
        if oversubscribe:
            args.append("--oversubscribe")
        args += [str(c) for c in cmd]
        try:
            proc = subprocess.run(
                args, capture_output=True, text=True, timeout=timeout, env=full_env, cwd=cwd
            )
        except subprocess.TimeoutExpired as exc:
            raise AssertionError(
                f"{' '.join(args)} timed out after {timeout}s\nstdout:\n{exc.stdout}\nstderr:\n{exc.stderr}"
            ) from None
        if check and proc.returncode != 0:
            raise AssertionError(
                f"{' '.join(args)} exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
            )
        return proc

    run.python = sys.executable
    return run
