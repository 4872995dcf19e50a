"""MPI communicator, or a one-process stand-in with the same methods.

Reduce and evaluate are written once against this object: under ``mpirun``
(or ``srun``) with mpi4py they get ``MPI.COMM_WORLD``; without MPI (mpi4py
missing, or a plain ``python`` start) they get :class:`SerialComm`, whose
collective calls are the identities of a world of size 1. The code path is the
same, not a copy.

Bounded start-up: a rank lost while the job starts (killed inside
``MPI_Init``, a node that never comes up) would leave the others waiting in
``MPI_Init`` or their first collective until the Slurm time limit. So
:func:`get_comm` starts each rank under a watchdog: unless the rank has passed
``MPI_Init`` and a first barrier within ``$HPC_PROFILER_MPI_STARTUP_TIMEOUT_S``
seconds (``executor.mpi_startup_timeout_s``, which ``hpc-profiler run``
exports; default 120), the watchdog prints why on stderr and kills the rank,
which ends the job (``srun --kill-on-bad-exit=1``, ``mpirun``'s abort on a
failed rank). The watchdog is a separate small process, not a thread: a rank
stuck inside ``MPI_Init`` may never release Python's interpreter lock.
"""
from __future__ import annotations

import os
import subprocess
import sys
import traceback
from contextlib import contextmanager

_LAUNCHER_VARS = (
    "OMPI_COMM_WORLD_SIZE",
    "PMI_SIZE",
    "PMIX_RANK",
    "MPI_LOCALNRANKS",
    "SLURM_STEP_NUM_TASKS",
)


class SerialComm:
    """The part of ``mpi4py.MPI.Comm`` we use, for a single process."""

    rank = 0
    size = 1

    def Get_rank(self):
        return 0

    def Get_size(self):
        return 1

    def bcast(self, obj, root=0):
        return obj

    def gather(self, obj, root=0):
        return [obj]

    def allgather(self, obj):
        return [obj]

    def scatter(self, objs, root=0):
        return objs[0]

    def allreduce(self, obj, op=None):
        return obj

    def barrier(self):
        return None

    def Abort(self, errorcode=1):  # pragma: no cover - exits the process
        os._exit(errorcode)


def launched_by_mpi() -> bool:
    """True when a launcher (mpirun, srun) started this process as a rank."""
    return any(v in os.environ for v in _LAUNCHER_VARS[:4]) or int(os.environ.get("SLURM_STEP_NUM_TASKS", "1")) > 1


def get_comm(use_mpi: bool | None = None):
    """``MPI.COMM_WORLD`` when running under an MPI launcher, else :class:`SerialComm`.

    ``use_mpi=True`` forces mpi4py (ImportError if missing), ``False`` forces
    the serial stand-in, ``None`` decides from the environment. The first
    call under MPI initialises MPI and passes a barrier within the start-up
    timeout (see the module docstring), or the rank is killed.
    """
    if use_mpi is None:
        use_mpi = launched_by_mpi()
    if not use_mpi:
        return SerialComm()
    return _world()


STARTUP_TIMEOUT_ENV = "HPC_PROFILER_MPI_STARTUP_TIMEOUT_S"
DEFAULT_STARTUP_TIMEOUT_S = 120.0
_STARTED = False

# the watchdog: waits on its stdin; closed in time -> exits quietly, else kills the rank
_WATCHDOG = """
import os, select, signal, sys
pid, timeout, who = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
ready, _, _ = select.select([sys.stdin], [], [], timeout)
if not ready:
    sys.stderr.write(who + " error: MPI start-up (MPI_Init and the first barrier) did not complete within "
                     + sys.argv[2] + " s (executor.mpi_startup_timeout_s): another rank probably died while "
                     "starting; killing this rank so the job ends\\n")
    sys.stderr.flush()
    os.kill(pid, signal.SIGKILL)
"""


def startup_timeout_s() -> float:
    """Seconds a rank may take to pass ``MPI_Init`` and the first barrier (``$HPC_PROFILER_MPI_STARTUP_TIMEOUT_S``)."""
    raw = os.environ.get(STARTUP_TIMEOUT_ENV, "")
    try:
        value = float(raw)
    except ValueError:
        return DEFAULT_STARTUP_TIMEOUT_S
    return value if value > 0 else DEFAULT_STARTUP_TIMEOUT_S


def _rank_name() -> str:
    env = os.environ
    rank = next((env[v] for v in ("OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK", "SLURM_PROCID") if v in env), "?")
    job = env.get("SLURM_JOB_ID")
    return f"[rank {rank}" + (f", Slurm job {job}" if job else "") + "]"


def _world():
    """``MPI.COMM_WORLD``, initialised under the start-up watchdog on the first call."""
    global _STARTED
    if _STARTED:
        from mpi4py import MPI

        return MPI.COMM_WORLD
    timeout = startup_timeout_s()
    dog = subprocess.Popen([sys.executable, "-c", _WATCHDOG, str(os.getpid()), f"{timeout:g}", _rank_name()],
                           stdin=subprocess.PIPE, close_fds=True)
    try:
        from mpi4py import MPI  # MPI_Init runs here

        comm = MPI.COMM_WORLD
        comm.Barrier()
    finally:
        dog.stdin.close()  # in time: the watchdog exits without a word
        try:
            dog.wait(timeout=10)
        except subprocess.TimeoutExpired:  # pragma: no cover - a watchdog that does not exit
            dog.kill()
    _STARTED = True
    return comm


@contextmanager
def abort_on_error(comm):
    """Turn an exception on any rank into a clean stop of all ranks.

    A rank that fails prints its traceback to stderr, then calls ``Abort`` so
    the other ranks, possibly blocked in a collective, exit instead of hanging.
    """
    try:
        yield
    except SystemExit:
        raise
    except BaseException as exc:
        if comm.Get_size() > 1:
            sys.stderr.write(f"[rank {comm.Get_rank()}] error: {exc}\n")
            traceback.print_exc(file=sys.stderr)
            sys.stderr.flush()
            comm.Abort(1)
        raise


def split_balanced(weights, n_parts: int) -> list[list[int]]:
    """Assign items with ``weights`` to ``n_parts`` parts, balancing total weight.

    Greedy longest-processing-time: heaviest first, each to the lightest part.
    Deterministic (ties broken by item index, then part index). Returns the item
    indices of each part, sorted.
    """
    import heapq

    order = sorted(range(len(weights)), key=lambda i: (-float(weights[i]), i))
    heap = [(0.0, p) for p in range(n_parts)]
    parts: list[list[int]] = [[] for _ in range(n_parts)]
    for i in order:
        load, p = heapq.heappop(heap)
        parts[p].append(i)
        heapq.heappush(heap, (load + float(weights[i]), p))
    return [sorted(p) for p in parts]
