"""MPI communicator, or a one-process stand-in with the same methods.

Reduce and evaluate are written once against this object: under ``mpirun``
(or ``srun``) with mpi4py they get ``MPI.COMM_WORLD``; without MPI (mpi4py
missing, or a plain ``python`` start) they get :class:`SerialComm`, whose
collective calls are the identities of a world of size 1. The code path is the
same, not a copy.
"""
from __future__ import annotations

import os
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
    the serial stand-in, ``None`` decides from the environment.
    """
    if use_mpi is None:
        use_mpi = launched_by_mpi()
    if not use_mpi:
        return SerialComm()
    from mpi4py import MPI

    return MPI.COMM_WORLD


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
