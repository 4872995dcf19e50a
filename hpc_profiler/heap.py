"""Keep freed memory in the process: glibc ``mallopt`` for array-heavy ranks.

An evaluate rank allocates and frees arrays of pairs (millions of
``(query, candidate)`` entries, 12 MB per int64 column at issue 15's set) phase
after phase. glibc's default allocator serves such sizes from fresh
``mmap`` regions and hands freed memory back to the kernel (``munmap``, heap
trimming), so the next array of the same size is fresh memory again, which the
kernel faults in page by page: system time that every rank pays in full
whatever its share of the work. On a virtual machine whose guest returns
freed pages to its host (virtio-balloon free page reporting, the 2-core
Firecracker VM of our CI) a fault costs several microseconds; one rank's AP
phase on issue 15's set took 17,000-18,000 faults and 0.05-0.3 s of system
time of its 0.3-0.5 s.

:func:`retain_freed_memory` sets three documented ``mallopt`` parameters
(``man 3 mallopt``): allocations up to 32 MB come from the heap
(``M_MMAP_THRESHOLD``; 32 MB is glibc's ceiling on 64-bit), freed heap memory
stays in the process (``M_TRIM_THRESHOLD``) and the heap grows 64 MB at a time
(``M_TOP_PAD``), so a freed array's pages serve the next one without faults
(8,200 faults instead of 17,300-18,300 for that same AP phase, measured with
``getrusage``). The cost: the process keeps its peak heap until it exits,
the right trade for a short-lived rank; larger arrays are still mapped and
returned. Standard-library ``ctypes`` only; glibc only (elsewhere, e.g. musl
or macOS, nothing is changed and the call returns False). The same parameters
can be set for any program with glibc's ``MALLOC_*_`` environment variables;
``HPC_PROFILER_RETAIN_FREED_MEMORY=0`` (:data:`ENV`) turns this off.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os

#: ``mallopt`` parameter numbers from glibc's ``<malloc.h>``.
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3

#: Largest ``M_MMAP_THRESHOLD`` glibc accepts on 64-bit (``DEFAULT_MMAP_THRESHOLD_MAX``).
MMAP_THRESHOLD = 32 << 20
TOP_PAD = 64 << 20
TRIM_THRESHOLD = 2**31 - 1  # an int: never trim in practice

#: Set to ``0`` to leave glibc's defaults (e.g. to compare, as ``scripts/bench_evaluate.py --heap-ab`` does).
ENV = "HPC_PROFILER_RETAIN_FREED_MEMORY"

_done: bool | None = None


def retain_freed_memory() -> bool:
    """Make glibc keep freed memory for reuse (see the module docstring); True when the settings took.

    Idempotent; safe to call from any process. Returns False, changing
    nothing, where the C library is not glibc or :data:`ENV` is ``0``.
    """
    global _done
    if _done is not None:
        return _done
    _done = False
    if os.environ.get(ENV, "1").strip() == "0":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
        libc.gnu_get_libc_version  # glibc only: other C libraries' mallopt take other numbers, if any
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _done = all(mallopt(param, value) == 1 for param, value in (
        (M_MMAP_THRESHOLD, MMAP_THRESHOLD), (M_TRIM_THRESHOLD, TRIM_THRESHOLD), (M_TOP_PAD, TOP_PAD)))
    return _done
