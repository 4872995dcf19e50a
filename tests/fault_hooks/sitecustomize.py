"""Fault injection for tests/test_faults.py, active only through environment variables.

tests/test_faults.py puts this folder first on ``PYTHONPATH`` of the processes
it starts (the driver, and through ``sbatch``'s exported environment the Slurm
tasks and MPI ranks), so Python imports this module at start-up.

``HPCP_TEST_KILL_WRITING=<site file name>`` with ``HPCP_TEST_KILL_MARKER=<path>``
    The task writing that site file SIGKILLs itself once its temporary file
    is on disk but before the rename, after cutting the file to half its size:
    a task killed in the middle of writing a site file. The marker file is
    created first (exclusively), so only the first writer dies and its mtime
    is the time of the fault.
``HPCP_TEST_KILL_RANK=<rank>`` (with ``HPCP_TEST_KILL_MARKER``)
    That MPI rank SIGKILLs itself when it imports ``mpi4py.MPI``, i.e. when
    ``MPI_Init`` starts: a rank lost before ``MPI_Init`` completes.
``HPCP_TEST_HOLD_ARRAY_TASK=<array index>``
    That Slurm array task (of any stage) sleeps up to 10 min as its Python
    starts, before it does any work, so a test can ``scancel`` it while it is
    surely running; a task of a few tiny sites otherwise finishes between
    ``squeue`` saying RUNNING and the ``scancel``.
"""
import importlib.abc
import importlib.machinery
import os
import signal
import sys

_WRITE = os.environ.get("HPCP_TEST_KILL_WRITING")
_RANK = os.environ.get("HPCP_TEST_KILL_RANK")
_MARKER = os.environ.get("HPCP_TEST_KILL_MARKER")
_HOLD = os.environ.get("HPCP_TEST_HOLD_ARRAY_TASK")
_GO = os.environ.get("HPCP_TEST_KILL_GO")


def _claim() -> bool:
    """True for a process that may die: creates the marker, or with ``HPCP_TEST_KILL_TIMES=n`` the
    first of ``marker``, ``marker.2``, ... ``marker.n`` that does not exist yet."""
    if not _MARKER:
        return False
    for i in range(1, int(os.environ.get("HPCP_TEST_KILL_TIMES", "1")) + 1):
        try:
            os.close(os.open(_MARKER if i == 1 else f"{_MARKER}.{i}", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            return True
        except FileExistsError:
            continue
    return False


def _die() -> None:
    if _GO:
        import time

        deadline = time.time() + 600
        while not os.path.exists(_GO) and time.time() < deadline:
            time.sleep(0.05)
        os.utime(_MARKER)  # the marker's mtime is the time of the fault
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def _patch_sitefile(module) -> None:
    from contextlib import contextmanager
    from pathlib import Path

    orig = module.atomic_path

    @contextmanager
    def atomic_path(path, suffix=""):
        with orig(path, suffix) as tmp:
            yield tmp
            if _WRITE and Path(path).name == _WRITE and _claim():
                size = Path(tmp).stat().st_size
                os.truncate(tmp, size // 2)  # the writer is half-way through
                _die()

    module.atomic_path = atomic_path


def _this_rank():
    for var in ("OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK"):
        if var in os.environ:
            return os.environ[var]
    if int(os.environ.get("SLURM_STEP_NUM_TASKS", "1")) > 1:
        return os.environ.get("SLURM_PROCID")
    return None


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "mpi4py.MPI" and _RANK is not None and _this_rank() == _RANK and _claim():
            _die()
        if name == "hpc_profiler.sitefile" and _WRITE:
            spec = importlib.machinery.PathFinder.find_spec(name, path)
            if spec is None:
                return None
            exec_module = spec.loader.exec_module

            def exec_and_patch(module):
                exec_module(module)
                _patch_sitefile(module)

            spec.loader.exec_module = exec_and_patch
            return spec
        return None


if _WRITE or _RANK is not None:
    sys.meta_path.insert(0, _Finder())
if _HOLD is not None and os.environ.get("SLURM_ARRAY_TASK_ID") == _HOLD:
    import time

    time.sleep(600)
